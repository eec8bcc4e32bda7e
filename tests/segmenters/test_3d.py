"""3D segmenters (MONAI): preprocessing, WORK reading, loss, and the training loop (loss goes down, resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.constants import REPO_ROOT

mmengine = pytest.importorskip("mmengine")
pytest.importorskip("monai")

from segmenters.monai3d_synth import make_synthetic_work  # noqa: E402
from segmenters.monai3d_train import lr_factor, parse_stages, train_3d  # noqa: E402

from segmenters.monai.volumes import (  # noqa: E402
    DiceBCELoss,
    build_model,
    check_roi,
    dice_per_class,
    fold_case_days,
    load_3d_datalist,
    normalize_intensity,
    preprocess_image,
    preprocess_label,
    read_splits,
    target_hw,
)

TINY = REPO_ROOT / "mmcfg" / "monai3d" / "segresnet-tiny_1xb2-40_synth-32x32x16.py"
CONFIGS = sorted((REPO_ROOT / "mmcfg" / "monai3d").glob("*.py"))


def tiny_cfg(**train) -> dict:
    cfg = mmengine.Config.fromfile(str(TINY)).to_dict()
    cfg["train"].update(train)
    return cfg


@pytest.fixture(autouse=True)
def one_thread():
    """Two busy cores: OpenMP with 2 threads is ~40x slower on tiny 3D convolutions here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return make_synthetic_work(tmp_path_factory.mktemp("w3d") / "work", n_cases=5, depths=(16, 12), seed=0)


# ------------------------------------------------------------------------------------------------ pure functions


def test_normalize_intensity_modes():
    v = np.array([[[0, 100], [200, 400]]], dtype=np.uint16)
    assert normalize_intensity(v, "max").ravel().tolist() == [0.0, 0.25, 0.5, 1.0]
    p = normalize_intensity(v, "percentile", (0.0, 100.0))
    assert p.dtype == np.float32 and p.ravel().tolist() == [0.0, 0.25, 0.5, 1.0]
    z = normalize_intensity(v, "zscore")
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1.0) < 1e-5
    assert not normalize_intensity(np.full((2, 3, 3), 7, np.uint16), "percentile").any()
    with pytest.raises(ValueError, match="norm mode"):
        normalize_intensity(v, "minmax")


def test_target_hw_and_preprocess_shapes():
    assert target_hw((310, 360), {"mode": "size", "size": (256, 256)}) == (256, 256)
    assert target_hw((310, 360), {"mode": "none"}) == (310, 360)
    assert target_hw((310, 360), {"mode": "spacing", "pixdim": (3.0, 3.0)}, (3.0, 1.5, 1.5)) == (155, 180)
    with pytest.raises(ValueError, match="spacing"):
        target_hw((310, 360), {"mode": "spacing", "pixdim": (3.0, 3.0)})
    cfg = {"data": {"resample": {"mode": "size", "size": (40, 24)}, "norm": {"mode": "max"}}}
    vol = np.zeros((7, 31, 17), np.uint16)
    vol[:, 10:20, 5:9] = 1000
    x = preprocess_image(vol, cfg)
    assert tuple(x.shape) == (1, 40, 24, 7) and x.dtype == torch.float32
    assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0
    mask = np.zeros((7, 31, 17), np.uint8)
    mask[2, 10:20, 5:9] = 0b101  # large bowel + stomach
    y = preprocess_label(mask, (40, 24))
    assert tuple(y.shape) == (3, 40, 24, 7)
    assert y[0, :, :, 2].sum() > 0 and y[1].sum() == 0 and torch.equal(y[0], y[2])
    assert y[:, :, :, [0, 1, 3, 4, 5, 6]].sum() == 0  # depth untouched


def test_check_roi_and_models():
    seg = {"type": "SegResNet", "blocks_down": (1, 2, 2, 4)}
    assert check_roi((224, 224, 80), seg) == (224, 224, 80)
    with pytest.raises(ValueError, match="multiple of"):
        check_roi((224, 224, 84), seg)
    dyn = {"type": "DynUNet", "strides": [1, 2, 2, 2, (2, 2, 1)]}
    assert check_roi((160, 160, 80), dyn) == (160, 160, 80)
    with pytest.raises(ValueError, match=r"\(16, 16, 8\)"):
        check_roi((168, 160, 80), dyn)
    with pytest.raises(ValueError, match="out_channels"):
        build_model({"type": "SegResNet", "out_channels": 2})
    with pytest.raises(ValueError, match="unknown model type"):
        build_model({"type": "SegResNett"})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_configs_load_and_build(path):
    cfg = mmengine.Config.fromfile(str(path)).to_dict()
    stages = parse_stages(cfg)
    model = build_model(cfg["model"])
    assert sum(p.numel() for p in model.parameters()) > 1000
    check_roi(cfg["infer"]["roi_size"], cfg["model"])
    h, w, d = stages[-1][0]
    assert path.name.endswith(f"-{h}x{w}x{d}.py")


def test_dice_bce_loss_values():
    loss = DiceBCELoss(lambda_dice=1.0, lambda_bce=1.0)
    t = torch.zeros(1, 3, 4, 4, 4)
    t[:, 0, :2] = 1
    good = torch.where(t > 0, 20.0, -20.0)
    assert float(loss(good, t)) < 0.01
    bad = -good
    assert float(loss(bad, t)) > 10.0
    deep = torch.stack([good, bad], dim=1)  # (B, S, C, ...): head 0 weighs 1, head 1 weighs 0.5
    expect = (float(loss(good, t)) + 0.5 * float(loss(bad, t))) / 1.5
    assert float(loss(deep, t)) == pytest.approx(expect, rel=1e-5)


def test_dice_per_class():
    p = torch.zeros(3, 10)
    t = torch.zeros(3, 10)
    p[0, :4] = 1
    t[0, 2:6] = 1  # 2 * 2 / (4 + 4)
    t[1, :3] = 1  # pred empty -> 0
    d = dice_per_class(p, t)
    assert d[0] == pytest.approx(0.5) and d[1] == 0.0 and math.isnan(d[2])


def test_lr_factor():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)


# ------------------------------------------------------------------------------------------------ WORK folder


def test_folds_match_splits(work):
    splits = read_splits(work)
    train, val = fold_case_days(splits, 0)
    assert val == ["case1_day0"]
    assert train == ["case2_day0", "case3_day0", "case4_day0", "case5_day0"]
    assert fold_case_days(splits, 3) == (["case1_day0", "case2_day0", "case3_day0", "case5_day0"], ["case4_day0"])
    entries = load_3d_datalist(work, 0)
    assert sorted(entries) == [f"case{i}_day0" for i in range(1, 6)]
    assert np.load(entries["case2_day0"]["image"]).shape == (12, 48, 48)
    with pytest.raises(ValueError, match="fold 7"):
        fold_case_days(splits, 7)


def test_missing_export_names_the_commands(tmp_path, work):
    with pytest.raises(FileNotFoundError, match="python -m data_prep prepare"):
        load_3d_datalist(tmp_path)
    (tmp_path / "manifest.csv").write_text((work / "manifest.csv").read_text())
    with pytest.raises(FileNotFoundError, match="python -m data_prep export 3d"):
        load_3d_datalist(tmp_path)


def test_reads_contract_datalist_and_faulty_days_drop(tmp_path, work):
    """A single exports/3d/datalist.json is read too; faulty case-days absent from train['all'] are not trained."""
    root = tmp_path / "exports" / "3d"
    root.mkdir(parents=True)
    raw = json.loads((work / "exports" / "3d" / "fold_0" / "datalist.json").read_text())
    for e in raw["training"] + raw["validation"]:
        e["image"] = str(Path(e["image"]).relative_to(work))
    (root / "datalist.json").write_text(json.dumps(raw))
    (tmp_path / "volumes").symlink_to(work / "volumes")
    entries = load_3d_datalist(tmp_path)
    assert Path(entries["case3_day0"]["image"]) == tmp_path / "volumes" / "case3_day0.npy"
    splits = read_splits(work)
    splits["folds"][0]["train"]["all"] = [i for i in splits["folds"][0]["train"]["all"] if "case3_day0" not in i]
    assert "case3_day0" not in fold_case_days(splits, 0)[0]


# ------------------------------------------------------------------------------------------------ training


def test_train_loss_goes_down_and_writes_run(work, tmp_path):
    cfg = tiny_cfg(stages=[{"roi_size": (32, 32, 16), "iters": 24}], log_interval=4, val_interval=12)
    out = tmp_path / "run"
    res = train_3d(cfg, work, 0, out, config_text="# tiny\n")
    losses = [r["loss"] for r in res["history"] if "loss" in r]
    assert res["iter"] == 24 and len(losses) == 6
    assert losses[-1] < losses[0] - 0.05, losses
    vals = [r["val_dice"] for r in res["history"] if "val_dice" in r]
    assert len(vals) == 2 and all(0.0 <= v <= 1.0 for v in vals)
    assert res["best_score"] == pytest.approx(max(vals))
    for name in ("last.pth", "best.pth", "log.csv", "curve.png", "config.py"):
        assert (out / name).is_file(), name
    lines = (out / "log.csv").read_text().splitlines()
    assert lines[0].startswith("iter,stage,lr,loss,val_dice") and len(lines) == 1 + 6
    from common.engine import load_weights

    sd = load_weights(out / "best.pth")  # weights_only=True works on best.pth
    model = build_model(cfg["model"])
    model.load_state_dict(sd)
    with pytest.raises(FileExistsError, match="--resume"):
        train_3d(cfg, work, 0, out)


def test_resume_continues_from_saved_iteration(work, tmp_path):
    out = tmp_path / "run"
    cfg4 = tiny_cfg(stages=[{"roi_size": (32, 32, 16), "iters": 4}], log_interval=2, val_interval=100)
    with pytest.raises(FileNotFoundError, match="last.pth"):
        train_3d(cfg4, work, 0, out, resume=True)
    train_3d(cfg4, work, 0, out)
    ck = torch.load(out / "last.pth", weights_only=False)
    assert ck["iter"] == 4
    cfg8 = tiny_cfg(stages=[{"roi_size": (32, 32, 16), "iters": 8}], log_interval=2, val_interval=100)
    res = train_3d(cfg8, work, 0, out, resume=True)
    assert res["iter"] == 8
    assert [r["iter"] for r in res["history"] if "loss" in r] == [2, 4, 6, 8]
    ck = torch.load(out / "last.pth", weights_only=False)
    assert ck["iter"] == 8
    steps = {int(s["step"]) for s in ck["optimizer"]["state"].values()}
    assert steps == {8}  # the optimizer state went on from step 4
    assert ck["scheduler"]["last_epoch"] == 8


def test_two_stage_schedule_and_small_volumes(work, tmp_path):
    """Stages switch patch size; a patch deeper and wider than every volume (12/16 slices, 48 px) is padded."""
    cfg = tiny_cfg(
        stages=[{"roi_size": (32, 32, 16), "iters": 2}, {"roi_size": (64, 64, 24), "iters": 2}],
        log_interval=1,
        val_interval=4,
    )
    res = train_3d(cfg, work, 1, tmp_path / "run")
    assert [r["stage"] for r in res["history"]] == [0, 0, 1, 1]
    assert not math.isnan(res["history"][-1]["val_dice"])
