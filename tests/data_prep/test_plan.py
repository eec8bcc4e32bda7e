"""The planner: fingerprint figures on a hand-made WORK, decisions from made-up fingerprints (with their why), the
CLI's files and its refusal to overwrite, and one generated 2.5D and 3D config trained on a generated CT dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.__main__ import main as data_prep_main
from data_prep.dataset import DatasetInfo, VolumeInfo
from data_prep.fingerprint import fingerprint, fingerprint_markdown, membership
from data_prep.plan import (
    FIRST_PLACE_MODELS,
    config_text,
    ensemble_spec,
    fit_batch,
    generated_name,
    make_plan,
    memory_mb,
    read_base,
)
from data_prep.work import (
    save_mask,
    save_volume,
    write_dataset,
    write_manifest,
    write_prepare_json,
    write_splits_json,
)

REPO = Path(__file__).resolve().parents[2]
TINY_UNET = "mmcfg/unet/unet_effb0_1xb4-40_gitract-128x128.py"
TINY_3D = "mmcfg/monai3d/segresnet-tiny_1xb2-40_synth-32x32x16.py"
TINY_CLS = "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py"
TINY = (TINY_UNET, TINY_3D, TINY_CLS)


# ------------------------------------------------------------------------------------------- a hand-made WORK


def _write_work(root: Path, label_kind: str = "overlapping", tail: int = 1) -> Path:
    """Two volumes, two overlapping classes ``a``, ``b`` (or exclusive: ``b`` painted over ``a``):

    - ``v1`` (6 x 10 x 12, spacing 3 x 1 x 1 mm, offset -1024): ``a`` on slices 1-3, rows 2-5, cols 3-7 (60 voxels);
      ``b`` on slices 2-3, rows 4-7, cols 6-9 (32 voxels); 8 voxels in both; image 100, ``a`` 2000, ``b`` 3000;
    - ``v2`` (4 x 10 x 12, spacing 2 x 0.5 x 0.5 mm, offset -2048): ``a`` on slice 0, rows 0-1, cols 0-1 (4 voxels),
      value 1524.
    """
    info = DatasetInfo(classes=("a", "b"), label_kind=label_kind, intensity="CT", channels=("CT",), format="nnunet")
    m1 = np.zeros((6, 2, 10, 12), np.uint8)
    m1[1:4, 0, 2:6, 3:8] = 1
    m1[2:4, 1, 4:8, 6:10] = 1
    m2 = np.zeros((4, 2, 10, 12), np.uint8)
    m2[0, 0, 0:2, 0:2] = 1
    img1 = np.full((6, 10, 12), 100, np.uint16)
    img1[m1[:, 0] > 0] = 2000
    img1[m1[:, 1] > 0] = 3000
    img2 = np.full((4, 10, 12), 100, np.uint16)
    img2[m2[:, 0] > 0] = 1524
    vols = {
        "v1": VolumeInfo(shape=(6, 10, 12), spacing=(3.0, 1.0, 1.0), group="g1", offset=-1024.0),
        "v2": VolumeInfo(shape=(4, 10, 12), spacing=(2.0, 0.5, 0.5), group="g2", offset=-2048.0),
    }
    rows = []
    for key, img, m in (("v1", img1, m1), ("v2", img2, m2)):
        save_volume(root, key, img)
        save_mask(root, key, info.pack(m))
        v = vols[key]
        for z in range(v.shape[0]):
            row = dict(id=f"{key}_slice_{z:04d}", case=v.group, day=0, slice=z, case_day=key, path="/none",
                       width=12, height=10, px_w=v.spacing[2], px_h=v.spacing[1], z=z, depth=v.shape[0])  # fmt: skip
            for c, name in enumerate(info.classes):
                area = int(info.unpack(info.pack(m))[z, c].sum())
                row[f"has_{name}"], row[f"area_{name}"] = int(area > 0), area
            rows.append(row)
    man = pd.DataFrame(rows)
    write_manifest(root, man)
    write_dataset(root, info.with_volumes(vols))
    ids = man["id"].tolist()
    folds = [
        {"fold": k, "val_cases": [g], "val": [i for i in ids if i.startswith(v)],
         "train": {x: [i for i in ids if not i.startswith(v)] for x in ("all", "notail", "noanno")}}
        for k, (g, v) in enumerate((("g1", "v1"), ("g2", "v2")))
    ]  # fmt: skip
    splits = {"version": 1, "n_folds": 2, "seed": 0, "method": "group", "tail": tail, "tail_before": 0}
    write_splits_json(root, {**splits, "faulty_case_days": [], "folds": folds})
    write_prepare_json(root, {"version": 1, "status": "done", "args": {}, "labels": True, "n_slices": len(man)})
    return root


@pytest.fixture(scope="module")
def hand_work(tmp_path_factory) -> Path:
    return _write_work(tmp_path_factory.mktemp("hand") / "work")


def test_membership_of_mask_values() -> None:
    assert membership(np.array([0, 1, 2, 3], np.uint8), 2, "overlapping").astype(int).tolist() == [
        [0, 0], [1, 0], [0, 1], [1, 1]]  # fmt: skip
    assert membership(np.array([0, 1, 2], np.uint8), 2, "exclusive").astype(int).tolist() == [[0, 0], [1, 0], [0, 1]]
    big = np.array([1 << 40], np.uint64)  # a 64-class bit field
    assert np.flatnonzero(membership(big, 64, "overlapping")[0]).tolist() == [40]


def test_fingerprint_values_by_hand(hand_work) -> None:
    fp = fingerprint(hand_work, workers=2)
    assert fp["volumes"] == 2 and fp["labelled_slices"] == 10 and fp["groups"] == 2
    assert fp["shape"]["median"] == [5.0, 10.0, 12.0] and fp["spacing"]["median"] == [2.5, 0.75, 0.75]
    assert fp["spacing"]["min"] == [2.0, 0.5, 0.5] and fp["spacing"]["max"] == [3.0, 1.0, 1.0]
    assert fp["anisotropy"]["median"] == pytest.approx(3.5)  # v1 3 / 1, v2 2 / 0.5
    assert fp["size_mm"]["median"] == [pytest.approx(13.0), pytest.approx(7.5), pytest.approx(9.0)]
    a, b = fp["classes"]
    assert (a["voxels"], a["slices"], a["volumes"], a["groups"]) == (64, 4, 2, 2)
    assert (b["voxels"], b["slices"], b["volumes"], b["groups"]) == (32, 2, 1, 1)
    assert a["voxel_fraction"] == pytest.approx(64 / 1200) and a["slice_fraction"] == pytest.approx(0.4)
    assert a["extent_px"] == [3.0, 3.5] and a["extent_mm"] == [2.5, 3.0]  # v1 4 x 5 px at 1 mm, v2 2 x 2 at 0.5 mm
    assert b["extent_px"] == [4.0, 4.0] and b["extent_slices"] == 2.0
    assert fp["overlap"]["matrix"][0][1] == pytest.approx(8 / 32) and fp["overlap"]["max"] == pytest.approx(0.25)
    assert fp["overlap"]["pairs"] == [{"a": "a", "b": "b", "voxels": 8, "fraction": 0.25}]
    assert fp["empty"]["slices"] == 6 and fp["empty"]["slice_fraction"] == pytest.approx(0.6)
    assert fp["empty"]["slice_class_fraction"] == pytest.approx(14 / 20)  # 5 + 1 of 20 (slice, class) pairs hold one
    assert fp["tail"] == {"tail": 1, "slices": 2, "fraction": 0.2, "outside_annotated_fraction": 0.6}
    assert fp["foreground_box"]["area_fraction"]["median"] == pytest.approx((42 / 120 + 4 / 120) / 2)
    assert fp["foreground_box"]["height_fraction"]["max"] == pytest.approx(0.6)  # rows 2-7 of v1
    # intensities: every foreground voxel sampled (88 < 10,000): 52 x 2000 (a only), 32 x 3000 (b), 4 x 1524 (v2)
    stored = np.array([2000.0] * 52 + [3000.0] * 32 + [1524.0] * 4)
    source = np.array([976.0] * 52 + [1976.0] * 32 + [-524.0] * 4)
    it = fp["intensity"]
    assert it["on"] == "foreground" and it["kind"] == "CT" and it["uniform_mapping"] is False
    got = it["channels"][0]
    for units, ref in (("stored", stored), ("source", source)):
        for q in (0.5, 50.0, 99.5):
            assert got[units][f"p{q:g}"] == pytest.approx(np.percentile(ref, q))
        assert got[units]["mean"] == pytest.approx(ref.mean()) and got[units]["std"] == pytest.approx(ref.std())
    assert got["stored"]["mean"] == pytest.approx(206096 / 88)
    assert fp["splits"] == {"n_folds": 2}
    md = fingerprint_markdown(fp)
    assert "| a | 5.33 | 4 | 40.00 | 2 | 2 |" in md and "empty slices / empty (slice, class) | 0.6 / 0.7" in md
    # a subsample is deterministic and bounded
    small = fingerprint(hand_work, samples=10)
    assert len(small["intensity"]["channels"]) == 1 and small == fingerprint(hand_work, samples=10)


def test_fingerprint_of_exclusive_labels(tmp_path) -> None:
    fp = fingerprint(_write_work(tmp_path / "work", label_kind="exclusive"))
    a, b = fp["classes"]
    assert (a["voxels"], b["voxels"]) == (60 - 8 + 4, 32)  # b painted over a
    assert fp["overlap"]["max"] == 0.0 and fp["overlap"]["pairs"] == []
    assert fp["empty"]["slice_fraction"] == pytest.approx(0.6)


def test_fingerprint_of_a_kaggle_work_without_dataset_json(synth_root, tmp_path) -> None:
    work = tmp_path / "work"
    assert data_prep_main(["-q", "prepare", "--data-root", str(synth_root), "--out", str(work), "--folds", "2"]) == 0
    (work / "dataset.json").unlink()  # a WORK prepared before descriptions existed: the Kaggle description
    fp = fingerprint(work)
    man = pd.read_csv(work / "manifest.csv")
    assert fp["dataset"]["classes"] == ["large_bowel", "small_bowel", "stomach"] and fp["dataset"]["intensity"] == "MR"
    assert fp["volumes"] == man["case_day"].nunique() and fp["slices"] == len(man)
    assert fp["spacing"]["median"][0] == 3.0  # KAGGLE_Z_SPACING_MM
    for k, name in zip(fp["classes"], ["large_bowel", "small_bowel", "stomach"]):
        assert k["slices"] == int(man[f"has_{name}"].sum()) and k["voxels"] == int(man[f"area_{name}"].sum())
    empty = (man[[f"has_{c}" for c in ("large_bowel", "small_bowel", "stomach")]].sum(axis=1) == 0).mean()
    assert fp["empty"]["slice_fraction"] == pytest.approx(empty)


def test_a_work_without_labels_is_fingerprinted_and_planned(hand_work, tmp_path) -> None:
    work = tmp_path / "work"
    shutil.copytree(hand_work, work)
    shutil.rmtree(work / "masks")  # as `prepare --split test` leaves it
    fp = fingerprint(work)
    assert fp["labelled_volumes"] == 0 and fp["intensity"]["on"] == "all"
    # every voxel sampled: v1 72 x 100 + 52 x 2000 + 32 x 3000 (of 120 x 6 = 720: 636 x 100), v2 476 x 100 + 4 x 1524
    assert fp["intensity"]["channels"][0]["stored"]["p50"] == 100.0
    d = make_plan(fp, models=TINY)["decisions"]
    assert (d["crop"]["value"], d["gate"]["value"]) == (False, False) and d["gate"]["why"].startswith("no labels")
    assert (
        "clip to the whole-volume (no labels) 0.5/99.5" in d["norm_2d"]["why"]
        and "on all voxels" in d["norm_2d"]["why"]
    )


# ----------------------------------------------------------------------------------- decisions from fingerprints


def made_up(**kw) -> dict:
    """A UW-Madison-like fingerprint (MR, 3 x 1.5 x 1.5 mm, 144 x 266 x 266, 57 % empty slices); ``kw`` replaces
    top-level keys, ``spacing=(sz, sy, sx)`` and ``shape=(D, H, W)`` set both."""
    spacing, shape = kw.pop("spacing", (3.0, 1.5, 1.5)), kw.pop("shape", (144, 266, 266))
    stored = {"p0.5": 66.0, "p50": 1020.0, "p99.5": 10736.0, "mean": 2040.0, "std": 2350.0}
    fp = {
        "work": "/data/work",
        "dataset": {"name": "uwmgi", "intensity": "MR", "classes": ["large_bowel", "small_bowel", "stomach"]},
        "labelled_volumes": 274,
        "groups": 85,
        "spacing": {"median": list(spacing), "p10": list(spacing)},
        "size_mm": {"median": [s * p for s, p in zip(shape, spacing)]},
        "anisotropy": {"median": max(spacing) / min(spacing)},
        "in_plane": {"median_px": [float(shape[1]), float(shape[2])]},
        "intensity": {"on": "foreground", "uniform_mapping": True, "mappings": [],
                      "channels": [{"name": "MR", "stored": stored, "source": stored}]},
        "classes": [{"name": n, "extent_px": e, "volumes": 274}
                    for n, e in (("large_bowel", [87, 184]), ("small_bowel", [71, 142]), ("stomach", [84, 86]))],
        "empty": {"slice_fraction": 0.57, "slice_class_fraction": 0.71},
        "tail": {"fraction": 0.035},
        "foreground_box": {"area_fraction": {"median": 0.22}},
        "body_box": {"area_fraction": {"median": 0.68}, "height_px": {"median": 217.0}, "width_px": {"median": 246.0}},
        "splits": {"n_folds": 5},
    }  # fmt: skip
    fp.update(kw)
    return fp


def test_uw_madison_like_data_lands_near_the_first_place() -> None:
    plan = make_plan(made_up(), out=REPO / "mmcfg" / "generated" / "uwmgi")
    d = plan["decisions"]
    assert d["img_size"]["value"] == [384, 384] and 320 <= d["img_size"]["value"][0] <= 448
    assert "body box 217x246 px" in d["img_size"]["why"] and "stomach 85 px" in d["img_size"]["why"]
    assert d["stack"]["value"] == {"stride": 2, "channels": 3} and "[i-2, i, i+2]" in d["stack"]["why"]
    assert d["crop"]["value"] is True and "foreground box 22%" in d["crop"]["why"]
    assert d["gate"]["value"] is True and "71% of the (slice, class) pairs" in d["gate"]["why"]
    assert d["norm_2d"]["value"] == "max" and d["norm_3d"]["value"]["mode"] == "percentile"
    assert d["spacing_3d"]["value"] == [3.0, 1.5, 1.5] and d["folds"]["value"] == 5
    assert d["split_variants"]["value"] == ["all", "notail", "noanno"]
    seg3d = next(m for m in plan["models"] if m["kind"] == "3d")
    h, w, depth = seg3d["patch"]
    assert h % 16 == w % 16 == depth % 16 == 0 and abs(h * w * depth / (224 * 224 * 80) - 1) < 0.1
    assert 192 <= h <= 240 and 64 <= depth <= 112
    assert seg3d["batch_size"] * seg3d["num_samples"] == 4  # the base's 2 x 2 patches fit 24 GB
    names = [m["name"] for m in plan["models"]]
    assert "unet_effb4_1xb16-20k_uwmgi-384x384" in names and "cls_efficientnet-b0_1xb32-8k_uwmgi-256x256" in names
    unet = next(m for m in plan["models"] if m["arch"] == "unet/efficientnet_b4")
    assert "split_variant" not in unet  # noanno exists here: the base's variant stays
    text = config_text(plan, unet)
    assert '_base_ = ["../../unet/unet_effb4_2xb16-20k_gitract-384x384.py"]' in text.replace("'", '"')
    assert "img_size = (384, 384)" in text and "stack = dict(stride=2, channels=3, norm='max')" in text
    assert "boxes = '/data/work/exports/boxes.csv'" in text and "train_dataloader = dict(batch_size=16)" in text


def test_ct_normalisation_and_thin_slices() -> None:
    ct = {"p0.5": 900.0, "p50": 1080.0, "p99.5": 1300.0, "mean": 1090.5, "std": 45.25}
    fp = made_up(
        spacing=(1.0, 0.8, 0.8),
        shape=(200, 512, 512),
        dataset={"name": "liver", "intensity": "CT", "classes": ["liver"]},
        intensity={"on": "foreground", "uniform_mapping": True, "mappings": [],
                   "channels": [{"name": "CT", "stored": ct, "source": {**ct, "p0.5": -124.0, "p99.5": 276.0}}]},
        classes=[{"name": "liver", "extent_px": [200, 220], "volumes": 10}],
    )  # fmt: skip
    d = make_plan(fp, models=TINY)["decisions"]
    want = {"mode": "ct", "clip": [900.0, 1300.0], "mean": 1090.5, "std": 45.25}
    assert d["norm_2d"]["value"] == want and d["norm_3d"]["value"] == want
    assert (
        "p0.5 900, p99.5 1300, mean 1090.5, std 45.2" in d["norm_2d"]["why"]
        and "CT (dataset.json)" in d["norm_2d"]["why"]
    )
    # 1 mm slices (anisotropy 1.25 < 2): two neighbours each side, stride round(6 / (2 x 1)) = 3
    assert d["stack"]["value"] == {"stride": 3, "channels": 5} and "[i-6, i-3, i, i+3, i+6]" in d["stack"]["why"]


def test_no_notail_or_noanno_without_empty_slices_and_folds_capped_by_groups() -> None:
    fp = made_up(empty={"slice_fraction": 0.0, "slice_class_fraction": 0.2}, tail={"fraction": 0.0}, groups=3,
                 splits=None)  # fmt: skip
    plan = make_plan(fp, models=[FIRST_PLACE_MODELS[0], FIRST_PLACE_MODELS[4], FIRST_PLACE_MODELS[7]])
    d = plan["decisions"]
    assert d["split_variants"]["value"] == ["all"] and "notail = all" in d["split_variants"]["why"]
    assert d["folds"]["value"] == 3 and "3 groups" in d["folds"]["why"]
    unet, upernet = plan["models"]
    assert unet["split_variant"] == "all" and "trains on noanno" in unet["why"]["split_variant"]
    assert upernet["split_variant"] == "all" and "trains on notail" in upernet["why"]["split_variant"]
    # 20 % empty (slice, class) pairs: no gate, so the classifier is not planned
    assert d["gate"]["value"] is False and plan["skipped"][0]["why"].startswith("gate off: 20%")
    assert ensemble_spec(plan)["gate"] == {"method": "none"} and ensemble_spec(plan)["folds"] == [0, 1, 2]
    assert make_plan(made_up(groups=3), models=TINY)["decisions"]["folds"]["value"] == 3  # splits say 5: capped


def test_crop_off_when_the_foreground_fills_the_image() -> None:
    fp = made_up(foreground_box={"area_fraction": {"median": 0.8}})
    plan = make_plan(fp, models=TINY)
    d = plan["decisions"]
    assert d["crop"]["value"] is False and "foreground box 80%" in d["crop"]["why"]
    assert "(no crop)" in d["img_size"]["why"] and d["img_size"]["value"] == [416, 416]  # 266 x 1.51 = 401 -> 416
    assert not any(m["kind"] == "detector" for m in ensemble_spec(plan)["models"])
    unet = next(m for m in plan["models"] if m["kind"] == "2.5d")
    assert "boxes =" not in config_text(plan, unet)


def test_batch_sizes_and_patches_shrink_with_gpu_memory() -> None:
    big, small = (make_plan(made_up(), gpu_memory_gb=g) for g in (24, 8))
    for a, b in zip(big["models"], small["models"]):
        assert b["batch_size"] <= a["batch_size"]
    by_arch = {m["arch"]: m for m in small["models"]}
    assert by_arch["unet/efficientnet_b7"]["batch_size"] == 4  # 998 + 4 x 837 MB <= 0.85 x 8 GB < 998 + 8 x 837
    assert "of 6.8 GB (85% of 8 GB)" in by_arch["unet/efficientnet_b7"]["why"]["batch_size"]
    p_big = next(m for m in big["models"] if m["kind"] == "3d")["patch"]
    p_small = next(m for m in small["models"] if m["kind"] == "3d")["patch"]
    assert np.prod(p_small) < np.prod(p_big)
    assert memory_mb("3d", "SegResNet/32", 4, np.prod(p_small))[0] <= 0.85 * 8 * 1024
    assert fit_batch("2.5d", "unet/efficientnet_b4", 384 * 384, 0.85 * 24 * 1024, 16)[0] == 16
    # an architecture the table does not know takes its kind's largest figure, and says so
    mb, source = memory_mb("2.5d", "unet/mystery", 1, 384 * 384)
    assert "not in the table" in source and mb == pytest.approx(
        memory_mb("2.5d", "unet/efficientnet_b7", 1, 384 * 384)[0]
    )


def test_anisotropic_target_spacing_takes_the_10th_percentile() -> None:
    fp = made_up(spacing=(5.0, 0.8, 0.8), shape=(30, 512, 512))
    fp["spacing"]["p10"] = [4.0, 0.7, 0.7]
    d = make_plan(fp, models=TINY)["decisions"]
    assert d["spacing_3d"]["value"] == [4.0, 0.8, 0.8] and "the 10th percentile 4 mm" in d["spacing_3d"]["why"]


def test_names_and_bases() -> None:
    assert generated_name("segresnet_1xb2-20k_uwmgi-224x224x80", 1, (208, 208, 96), "ct") == (
        "segresnet_1xb1-20k_ct-208x208x96"
    )
    assert generated_name("odd_name", 4, (64, 64), "ct") == "odd_name_ct-64x64"
    base = read_base(REPO / TINY_3D)
    assert (base["kind"], base["arch"], base["batch_size"], base["num_samples"]) == ("3d", "SegResNet/4", 2, 1)
    assert read_base(REPO / FIRST_PLACE_MODELS[5])["arch"] == "upernet/convnext_base"
    with pytest.raises(FileNotFoundError, match="base config not found"):
        read_base(REPO / "mmcfg" / "nope.py")


# ---------------------------------------------------------------------------------------------- the command line


def test_cli_writes_the_plan_and_refuses_to_overwrite(hand_work, tmp_path, capsys) -> None:
    work = tmp_path / "work"
    shutil.copytree(hand_work, work)
    out = tmp_path / "gen"
    args = ["-q", "plan", "--work", str(work), "--out", str(out), "--gpu-memory", "12", "--models", *TINY]
    assert data_prep_main(args) == 0
    printed = capsys.readouterr().out.split()
    plan = json.loads((work / "plan" / "plan.json").read_text())
    assert plan["gpu_memory_gb"] == 12.0 and {Path(p).name for p in printed} >= {
        "fingerprint.json", "fingerprint.md", "plan.json", "plan.md", "ensemble.yaml", "README.md"}  # fmt: skip
    assert len(list(out.glob("*.py"))) == 3  # the gate is on (70 % empty pairs): the classifier too
    assert "| crop |" in (work / "plan" / "plan.md").read_text() and "```bash" in (out / "README.md").read_text()
    assert json.loads((work / "plan" / "fingerprint.json").read_text())["classes"][0]["voxels"] == 64
    before = {p: p.read_text() for p in out.iterdir()}
    assert data_prep_main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert {p: p.read_text() for p in out.iterdir()} == before
    assert data_prep_main([*args, "--overwrite"]) == 0
    import yaml

    spec = yaml.safe_load((out / "ensemble.yaml").read_text())
    assert spec["classes"] == ["a", "b"] and [m["kind"] for m in spec["models"]] == ["detector", "2.5d", "3d",
                                                                                       "classifier"]  # fmt: skip


# ------------------------------------------------------------------------ generated configs train as generated

OPTS_25D = {
    "train_cfg.max_iters": 2,
    "train_cfg.val_interval": 2,
    "default_hooks.checkpoint.interval": 2,
    "default_hooks.logger.interval": 1,
    "param_scheduler": [],
    "custom_hooks": [],
}
OPTS_3D = {
    "train_cfg.max_iters": 2,
    "train_cfg.val_interval": 2,
    "default_hooks.checkpoint.interval": 2,
    "default_hooks.logger.interval": 1,
    "model.test_cfg.tta": (),
}


def test_generated_configs_train_and_carry_the_plan(tmp_path) -> None:
    import torch
    from mmengine.config import Config

    from data_prep.synth.nnunet import synthesize_nnunet
    from training.train import train

    raw = synthesize_nnunet(tmp_path / "raw", cases=5, shape=(16, 40, 40), spacing=(2.5, 0.8, 0.8), seed=1)
    work, out = tmp_path / "work", tmp_path / "gen"
    assert data_prep_main(["-q", "prepare", "--data-root", str(raw), "--out", str(work)]) == 0
    assert data_prep_main(["-q", "plan", "--work", str(work), "--out", str(out), "--models", *TINY]) == 0
    plan = json.loads((work / "plan" / "plan.json").read_text())
    d = plan["decisions"]
    assert d["norm_2d"]["value"]["mode"] == "ct" and d["crop"]["value"] is True
    assert data_prep_main(["-q", "export", "boxes", "--work", str(work)]) == 0
    assert data_prep_main(["-q", "export", "3d", "--work", str(work), "--fold", "0"]) == 0
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    trained = []
    try:
        for m in (x for x in plan["models"] if x["kind"] in ("2.5d", "3d")):
            trained.append(m["kind"])
            opts = OPTS_25D if m["kind"] == "2.5d" else OPTS_3D
            (wd,) = train(m["config"], fold=0, work_dir=tmp_path / "runs" / m["kind"], cfg_options=opts)
            ck = torch.load(wd / "best.pth", weights_only=True)
            cfg = Config.fromstring(ck["meta"]["cfg"], ".py")
            if m["kind"] == "2.5d":
                assert list(cfg.img_size) == m["img_size"] == d["img_size"]["value"]
                load = cfg.train_dataloader.dataset.pipeline[0]
                assert (load.stride, load.channels) == (d["stack"]["value"]["stride"], d["stack"]["value"]["channels"])
                assert dict(load.norm) == d["norm_2d"]["value"] and cfg.boxes == str(work / "exports" / "boxes.csv")
                assert cfg.train_dataloader.batch_size == m["batch_size"]
            else:
                assert dict(cfg.train_dataloader.dataset.norm) == d["norm_3d"]["value"]
                assert list(cfg.resample.spacing) == d["spacing_3d"]["value"] and cfg.resample.mode == "spacing"
                assert list(cfg.model.test_cfg.roi_size) == m["patch"]
                assert "percentiles" not in cfg.norm and "size" not in cfg.resample  # the base's keys are gone
    finally:
        torch.set_num_threads(n)
    assert trained == ["2.5d", "3d"]


def test_plan_tool_without_cuda_keeps_the_table(hand_work, tmp_path, caplog, monkeypatch) -> None:
    import torch
    from train_helpers import load_tool

    from data_prep.plan import rebatch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    work = tmp_path / "work"
    shutil.copytree(hand_work, work)
    tool = load_tool("plan")
    assert tool.main(["--work", str(work), "--out", str(tmp_path / "gen"), "--models", *TINY, "--measure"]) == 0
    assert "no CUDA device: the batch sizes stay the memory table's" in caplog.text
    plan = json.loads((work / "plan" / "plan.json").read_text())
    assert [m["batch_size"] for m in plan["models"]] == [4, 2, 16]  # the tiny bases' (their memory fits 24 GB)
    # a measured batch renames the config and says why
    new = rebatch(plan, 0, 2, "measured")
    assert (
        new["models"][0]["name"].startswith("unet_effb0_1xb2-40_")
        and new["models"][0]["why"]["batch_size"] == "measured"
    )
    assert plan["models"][0]["batch_size"] == 4  # the input is not changed
