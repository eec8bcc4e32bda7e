"""tools/infer.py and ensembles.pipeline on a tiny synthetic test tree.

The fast tests use stand-in models with the contract's predict_volume / predict_boxes (an "oracle" that knows the
test truth, a constant, a NaN one) injected through ``loaders``; the end-to-end test with real tiny models trained
for a few iterations is in ``test_infer_real_models`` (marked slow).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from data_prep.constants import CLASSES
from data_prep.layout import RLEVolumes, read_layout, read_rle_table, read_scan, shapes_manifest
from data_prep.rle import rle_decode
from ensembles.spec import load_spec
from inference.pipeline import infer

REPO = Path(__file__).resolve().parents[2]


def _key(volume: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(volume).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "data"
    cmd = [
        sys.executable,
        "-m",
        "data_prep",
        "synth",
        "--out",
        str(out),
        "--cases",
        "1",
        "--seed",
        "3",
        "--test-cases",
        "2",
        "--slices",
        "10",
        "--sizes",
        "64x48",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def truth_by_volume(synth) -> dict[str, np.ndarray]:
    man = read_layout(synth, "test")
    vols = RLEVolumes(read_rle_table(synth / "test_truth.csv"), shapes_manifest(man))
    out = {}
    for cd, g in man.groupby("case_day"):
        vol = np.stack([read_scan(p) for p in g["path"]])
        out[_key(vol)] = vols[cd]
    return out


class FakeSeg:
    """2.5D / 3D stand-in: 'oracle' returns value * truth, 'const' a constant, 'nan' NaN somewhere."""

    def __init__(self, mode: str, value: float, truth: dict, calls: list):
        self.mode, self.value, self.truth, self.calls = mode, value, truth, calls

    def _probs(self, volume):
        t = self.truth[_key(volume)]
        if self.mode == "oracle":
            p = self.value * t.astype(np.float32)
        else:
            p = np.full(t.shape, self.value, np.float32)
        return p

    def predict_volume(self, volume, keep=None, boxes=None, tta=("hflip",), batch_size=16, spacing=None):
        self.calls.append({"keep": None if keep is None else np.asarray(keep).copy(), "tta": tuple(tta or ())})
        p = self._probs(volume)
        if keep is not None:
            p[~np.asarray(keep, bool)] = 0
        if self.mode == "nan":
            z = int(np.argmax(keep)) if keep is not None else 0
            p[z, 0, 0, 0] = np.nan
        return p


class Fake3D(FakeSeg):
    def predict_volume(self, volume, spacing=None, tta=("flip",)):
        self.calls.append({"spacing": spacing})
        return self._probs(volume)


class FakeCls:
    def __init__(self, truth):
        self.truth = truth

    def predict_volume(self, volume, batch_size=32):
        return self.truth[_key(volume)].any(axis=(2, 3)).astype(np.float32)


class FakeDet:
    def predict_boxes(self, volume, batch_size=32, case_day=""):
        d, h, w = volume.shape
        return np.tile(np.array([0, 0, w, h]), (d, 1))


def _loaders(truth, calls):
    def seg(m, ck, device):
        cfg = json.loads(Path(ck).read_text())
        return FakeSeg(cfg["mode"], cfg["value"], truth, calls.setdefault(m.name, []))

    def seg3(m, ck, device):
        cfg = json.loads(Path(ck).read_text())
        return Fake3D(cfg["mode"], cfg["value"], truth, calls.setdefault(m.name, []))

    return {
        "2.5d": seg,
        "3d": seg3,
        "classifier": lambda m, ck, d: FakeCls(truth),
        "detector": lambda m, ck, d: FakeDet(),
    }


def _spec(tmp: Path, modes: dict[str, tuple[str, float]], **over) -> Path:
    models = []
    for name, (mode, value) in modes.items():
        kind = "3d" if name.startswith("m3") else "2.5d"
        for f in (0, 1):
            (tmp / f"{name}_{f}.json").write_text(json.dumps({"mode": mode, "value": value}))
            (tmp / f"{name}.py").write_text("")
        models.append(
            {
                "name": name,
                "kind": kind,
                "config": f"{name}.py",
                "checkpoints": f"{name}_{{fold}}.json",
                "tta": ["hflip"],
                "weight": 3.0 if mode == "oracle" else 1.0,
            }
        )
    (tmp / "cls_0.pth").write_text("")
    (tmp / "det.pt").write_text("")
    models.append({"name": "cls", "kind": "classifier", "config": "m2a.py", "checkpoints": ["cls_0.pth"]})
    models.append({"name": "det", "kind": "detector", "checkpoints": ["det.pt"]})
    spec = {
        "name": "fake",
        "folds": [0, 1],
        "models": models,
        "gate": {"method": "classifier", "thresholds": 0.5},
        "fusion": {"weight_2d": 0.6, "weight_3d": 0.4},
        "thresholds": 0.5,
        "post": {"max_prob_floor": 0.5, "min_component": 0},
    }
    spec.update(over)
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_infer_rows_order_roundtrip_and_score(synth, truth_by_volume, tmp_path):
    spec_path = _spec(tmp_path, {"m2a": ("oracle", 0.9), "m2b": ("const", 0.2), "m3a": ("oracle", 0.8)})
    spec = load_spec(spec_path, root=tmp_path)
    calls: dict = {}
    out = tmp_path / "sub.csv"
    sub = infer(
        synth, spec, out, split="test", loaders=_loaders(truth_by_volume, calls), save_probs=tmp_path / "p", overlays=2
    )
    man = read_layout(synth, "test")
    # exactly 3 rows per slice, manifest order (the sample submission is header-only), classes in order
    assert len(sub) == 3 * len(man)
    assert sub["id"].tolist()[::3] == man["id"].tolist()
    assert sub["class"].tolist() == list(CLASSES) * len(man)
    csv = pd.read_csv(out, keep_default_na=False)
    assert list(csv.columns) == ["id", "class", "predicted"] and len(csv) == len(sub)
    # the gate: 2.5D models ran only on the slices the classifier kept
    gate_keep = {cd: v.any(axis=(1, 2, 3)) for cd, v in zip(sorted(truth_by_volume), truth_by_volume.values())}
    assert all(c["keep"] is not None for c in calls["m2a"])
    kept = sorted(int(c["keep"].sum()) for c in calls["m2a"][::2])
    assert kept == sorted(int(k.sum()) for k in gate_keep.values())
    assert calls["m2a"][0]["tta"] == ("hflip",) and calls["m3a"][0]["spacing"] == (1.5, 1.5)
    # RLE decodes back to the fused masks (saved probabilities, thresholded as the spec says)
    keep = pd.read_csv(tmp_path / "p" / "keep.csv")
    assert len(keep) == len(man)
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    for cd, ids in meta["case_days"].items():
        probs = np.load(tmp_path / "p" / f"{cd}.npy").astype(np.float32)
        masks = probs > 0.5
        rows = csv[csv["id"].isin(set(ids))]
        for i, r in enumerate(rows.itertuples(index=False)):
            z, c = divmod(i, 3)
            assert (rle_decode(r.predicted, probs.shape[2:]) == masks[z, c]).all()
    assert len(list((tmp_path / "sub_overlays").glob("*.png"))) == 2
    # the oracle dominates: the score is exactly 1 (python -m ensembles score)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensembles",
            "-q",
            "score",
            "--truth",
            str(synth / "test_truth.csv"),
            "--pred",
            str(out),
            "--data-root",
            str(synth),
            "--split",
            "test",
            "--out",
            str(tmp_path / "score.json"),
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "score.json").read_text())["score"] == pytest.approx(1.0, abs=1e-12)
    # deterministic: a rerun gives a byte-identical file
    first = out.read_bytes()
    infer(synth, spec, out, split="test", loaders=_loaders(truth_by_volume, {}), overwrite=True)
    assert out.read_bytes() == first
    with pytest.raises(FileExistsError, match="--overwrite"):
        infer(synth, spec, out, split="test", loaders=_loaders(truth_by_volume, {}))


def test_infer_sample_order_and_absent_ids(synth, truth_by_volume, tmp_path):
    spec = load_spec(
        _spec(tmp_path, {"m2a": ("oracle", 0.9)}, fusion={"weight_2d": 1.0, "weight_3d": 0.0}), root=tmp_path
    )
    man = read_layout(synth, "test")
    sample = pd.DataFrame([(i, c, "") for i in man["id"][::-1] for c in CLASSES], columns=["id", "class", "predicted"])
    sample.to_csv(tmp_path / "sample.csv", index=False)
    sub = infer(
        synth,
        spec,
        tmp_path / "a.csv",
        sample_submission=tmp_path / "sample.csv",
        loaders=_loaders(truth_by_volume, {}),
    )
    assert sub["id"].tolist() == sample["id"].tolist()
    extra = pd.concat([sample, pd.DataFrame([("case999_day1_slice_0001", "stomach", "")], columns=sample.columns)])
    extra.to_csv(tmp_path / "sample2.csv", index=False)
    with pytest.raises(ValueError, match=r"sample2.csv: 1 id\(s\) are not in .*case999_day1_slice_0001"):
        infer(
            synth,
            spec,
            tmp_path / "b.csv",
            sample_submission=tmp_path / "sample2.csv",
            loaders=_loaders(truth_by_volume, {}),
        )
    assert not (tmp_path / "b.csv").exists()


def test_infer_bad_inputs(synth, truth_by_volume, tmp_path):
    spec_path = _spec(tmp_path, {"m2a": ("oracle", 0.9), "m2n": ("nan", 0.3)})
    spec = load_spec(spec_path, root=tmp_path)
    # NaN in a probability map: names the model, its checkpoint and the case-day; nothing is written
    with pytest.raises(ValueError, match=r"model 'm2n' \(.*m2n_0.json\) on case\d+_day\d+.*NaN"):
        infer(synth, spec, tmp_path / "nan.csv", loaders=_loaders(truth_by_volume, {}))
    assert not (tmp_path / "nan.csv").exists()
    # missing checkpoint
    (tmp_path / "m2a_1.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model 'm2a': checkpoint .*m2a_1.json not found"):
        infer(synth, spec, tmp_path / "x.csv", loaders=_loaders(truth_by_volume, {}))
    # a slice missing inside a case-day
    broken = tmp_path / "broken"
    shutil.copytree(synth, broken)
    scans = sorted((broken / "test").glob("case*/case*/scans"))[0]
    victim = sorted(scans.glob("*.png"))[4]
    victim.unlink()
    spec2 = load_spec(_spec(tmp_path, {"m2a": ("oracle", 0.9)}), root=tmp_path)
    with pytest.raises(ValueError, match=f"{scans}.*lacks slice"):
        infer(broken, spec2, tmp_path / "y.csv", loaders=_loaders(truth_by_volume, {}))


def test_tools_infer_cli_errors(synth, tmp_path):
    spec = _spec(tmp_path, {"m2a": ("oracle", 0.9)})
    raw = yaml.safe_load(spec.read_text())
    raw["post"]["min_componet"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    r = subprocess.run(
        [
            sys.executable,
            "tools/infer.py",
            "--data-root",
            str(synth),
            "--spec",
            str(bad),
            "--out",
            str(tmp_path / "s.csv"),
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO),
    )
    assert r.returncode != 0 and "unknown key 'min_componet'" in r.stderr and "'min_component'" in r.stderr
    (tmp_path / "m2a_0.json").unlink()
    r = subprocess.run(
        [
            sys.executable,
            "tools/infer.py",
            "--data-root",
            str(synth),
            "--spec",
            str(spec),
            "--out",
            str(tmp_path / "s.csv"),
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO),
    )
    assert r.returncode != 0 and "m2a_0.json not found" in r.stderr
    assert not (tmp_path / "s.csv").exists()


# ----------------------------------------------------------------------------------------------------------------
# end to end with real tiny models (the projects' tiny configs, weights freshly initialised and saved as
# checkpoints exactly as the trainers write them: a state dict)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    import torch

    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    from gating.crop import yolo_offline_env
    from training.config import build_model

    configs = {
        "seg.pth": "mmcfg/unet/unet_effb0_1xb4-40_gitract-128x128.py",
        "seg3d.pth": "mmcfg/monai3d/segresnet-tiny_1xb2-40_synth-32x32x16.py",
        "cls.pth": "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py",
    }
    for name, config in configs.items():  # any kind is built from its config, as tools/train.py builds it
        torch.save({"state_dict": build_model(REPO / config).state_dict()}, out / name)
    yolo_offline_env(out / "yolo")
    from ultralytics import YOLO

    YOLO("yolov8n.yaml").save(str(out / "det.pt"))
    return out


@pytest.mark.slow
def test_infer_real_models_end_to_end(synth, tiny_checkpoints, tmp_path):
    import importlib.util

    ck = tiny_checkpoints
    spec = {
        "name": "tiny_real",
        "folds": [0],
        "batch_size": 8,
        "models": [
            {"name": "det", "kind": "detector", "checkpoints": [str(ck / "det.pt")], "options": {"imgsz": 64}},
            {
                "name": "cls",
                "kind": "classifier",
                "config": "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py",
                "checkpoints": [str(ck / "cls.pth")],
            },
            {
                "name": "unet",
                "kind": "2.5d",
                "config": "mmcfg/unet/unet_effb0_1xb4-40_gitract-128x128.py",
                "checkpoints": [str(ck / "seg.pth")],
                "tta": ["hflip"],
            },
            {
                "name": "segres",
                "kind": "3d",
                "config": "mmcfg/monai3d/segresnet-tiny_1xb2-40_synth-32x32x16.py",
                "checkpoints": [str(ck / "seg3d.pth")],
                "tta": ["flip"],
            },
        ],
        "gate": {"method": "classifier", "thresholds": 0.3},
        "fusion": {"weight_2d": 0.6, "weight_3d": 0.4},
        "thresholds": 0.4,
        "post": {"max_prob_floor": 0.45, "min_component": 5},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    mod_spec = importlib.util.spec_from_file_location("tools_infer", REPO / "tools" / "infer.py")
    tools_infer = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(tools_infer)
    out = tmp_path / "submission.csv"
    args = [
        "--data-root",
        str(synth),
        "--split",
        "test",
        "--spec",
        str(tmp_path / "spec.yaml"),
        "--root",
        str(REPO),
        "--out",
        str(out),
        "--no-progress",
        "--save-probs",
        str(tmp_path / "probs"),
        "--overlays",
        "1",
    ]
    assert tools_infer.main(args) == 0
    man = read_layout(synth, "test")
    sub = pd.read_csv(out, keep_default_na=False)
    assert len(sub) == 3 * len(man)
    assert sub["id"].tolist()[::3] == man["id"].tolist() and sub["class"].tolist() == list(CLASSES) * len(man)
    assert len(list((tmp_path / "submission_overlays").glob("*.png"))) == 1
    # the rows decode back to the saved fused probabilities, post-processed as the spec says
    from ensembles.core import postprocess

    meta = json.loads((tmp_path / "probs" / "meta.json").read_text())
    for cd, ids in meta["case_days"].items():
        probs = np.load(tmp_path / "probs" / f"{cd}.npy").astype(np.float32)
        masks = postprocess(probs, 0.4, 0.45, 5, "2d")
        rows = sub[sub["id"].isin(set(ids))]
        for i, r in enumerate(rows.itertuples(index=False)):
            z, c = divmod(i, 3)
            got = rle_decode(r.predicted, probs.shape[2:])
            # float16 storage may flip pixels within 1e-3 of the threshold; none elsewhere
            border = np.abs(probs[z, c] - 0.4) < 1e-3
            assert (got[~border] == masks[z, c][~border]).all()
    # a score from `python -m ensembles score`
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensembles",
            "-q",
            "score",
            "--truth",
            str(synth / "test_truth.csv"),
            "--pred",
            str(out),
            "--data-root",
            str(synth),
            "--split",
            "test",
            "--out",
            str(tmp_path / "score.json"),
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO),
    )
    assert r.returncode == 0, r.stderr
    score = json.loads((tmp_path / "score.json").read_text())
    assert 0.0 <= score["score"] <= 1.0 and len(score["per_case_day"]) == man["case_day"].nunique()
    # deterministic: a rerun writes a byte-identical file
    first = out.read_bytes()
    assert tools_infer.main([*args[:-4], "--overwrite"]) == 0
    assert out.read_bytes() == first
