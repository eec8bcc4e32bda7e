"""A tiny config trains on the synthetic WORK folder on CPU, resumes, and tools/test.py writes probability maps
that match the manifest; tools/dist_train.sh runs 2 processes over gloo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from seg_fixtures import REPO, TINY_UPERNET
from train_helpers import dist_train, load_tool, read_scalars

import segmenters.mm  # noqa: F401  (mmcv-lite shim before mmseg)

pytestmark = pytest.mark.usefixtures("mmseg_scope")

OPTS = [
    "img_size=(64,64)",
    "train_dataloader.batch_size=4",
    "train_cfg.val_interval=5",
    "default_hooks.checkpoint.interval=5",
    "default_hooks.logger.interval=1",
    "param_scheduler=[]",
    "randomness.seed=0",
]


_tool = load_tool  # the tests below call it by this name


def _scalars(work_dir) -> list[dict]:
    """The logged rows of every run of ``work_dir``, in time order (a resumed run's after the first)."""
    return [row for run in read_scalars(work_dir) for row in run]


@pytest.fixture(scope="module")
def trained(seg_work, tmp_path_factory):
    wd = tmp_path_factory.mktemp("segtrain") / "fold_0"
    args = [str(TINY_UPERNET), "--work", str(seg_work), "--work-dir", str(wd), "--cfg-options", *OPTS]
    assert _tool("train").main([*args, "train_cfg.max_iters=10"]) == 0
    return wd, args


def test_training_lowers_loss_and_validates(trained) -> None:
    wd, _ = trained
    rows = _scalars(wd)
    train = [r for r in rows if "loss" in r]
    assert [r["iter"] for r in train] == list(range(1, 11))
    first = np.mean([r["loss"] for r in train[:3]])
    last = np.mean([r["loss"] for r in train[-3:]])
    assert last < first
    vals = [r for r in rows if "gi/score" in r]
    assert len(vals) == 2  # at iterations 5 and 10
    for v in vals:
        assert 0.0 <= v["gi/dice"] <= 1.0 and 0.0 <= v["gi/score"] <= 1.0
        assert {"gi/dice_large_bowel", "gi/dice_small_bowel", "gi/dice_stomach"} <= set(v)
    best = list(wd.glob("best_gi_score_iter_*.pth"))
    assert len(best) == 1
    assert (wd / "best.pth").resolve() == best[0].resolve()  # the stable name points at the best
    assert (wd / "iter_10.pth").is_file() and (wd / "last_checkpoint").read_text().strip().endswith("iter_10.pth")
    assert (wd / "training_curve.png").stat().st_size > 1000
    assert json.loads((wd / "done.json").read_text())["iterations"] == 10
    state = torch.load(best[0], weights_only=True)["state_dict"]  # inference loads weights only
    assert any(k.startswith("backbone.") for k in state)


def test_existing_run_needs_resume_or_overwrite(trained, capsys) -> None:
    wd, args = trained
    assert _tool("train").main([*args, "train_cfg.max_iters=14"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_continues_from_last_iteration(trained) -> None:
    wd, args = trained
    assert _tool("train").main([*args, "train_cfg.max_iters=14", "--resume"]) == 0
    iters = [r["iter"] for r in _scalars(wd) if "loss" in r]
    assert iters == list(range(1, 11)) + [11, 12, 13, 14]  # the second run started at 11
    assert (wd / "iter_14.pth").is_file()
    assert json.loads((wd / "done.json").read_text())["iterations"] == 14


def test_test_tool_writes_maps_matching_manifest(trained, seg_work, tmp_path) -> None:
    wd, _ = trained
    ckpt = (wd / "last_checkpoint").read_text().strip()
    out = tmp_path / "oof"
    args = [
        str(TINY_UPERNET),
        ckpt,
        "--fold",
        "0",
        "--work",
        str(seg_work),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--cfg-options",
        "img_size=(64,64)",
    ]
    assert _tool("test").main(args) == 0
    meta = json.loads((out / "meta.json").read_text())
    man = pd.read_csv(seg_work / "manifest.csv")
    assert meta["kind"] == "2.5d" and meta["fold"] == 0 and meta["tta"] == ["hflip"]
    assert list(meta["case_days"]) == ["case10_day1"]
    for cd, ids in meta["case_days"].items():
        rows = man[man["case_day"] == cd].sort_values("z")
        assert ids == rows["id"].tolist()
        probs = np.load(out / f"{cd}.npy")
        assert probs.dtype == np.float16
        assert probs.shape == (len(rows), 3, int(rows["height"].iloc[0]), int(rows["width"].iloc[0]))
        assert 0.0 <= float(probs.min()) and float(probs.max()) <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0 and "score" in metrics
    assert _tool("test").main(args) == 2  # no silent overwrite


def test_test_tool_resumes_byte_identical_and_runs_other_planes(trained, seg_work, tmp_path, capsys) -> None:
    wd, _ = trained
    ckpt = (wd / "last_checkpoint").read_text().strip()
    base = [str(TINY_UPERNET), ckpt, "--work", str(seg_work), "--device", "cpu", "--batch-size", "5"]
    opts = ["--cfg-options", "img_size=(64,64)"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert _tool("test").main([*base, "--tta", "hflip,rot90", "--out", str(full), *opts]) == 0
    meta = json.loads((full / "meta.json").read_text())
    keys = list(meta["case_days"])
    assert len(keys) >= 2 and meta["tta"] == ["hflip", "rot90"] and "planes" not in meta
    # what a kill after all but the last case-day leaves: their maps, meta.json listing them, no metrics.json
    shutil.copytree(full, part)
    (part / "metrics.json").unlink()
    (part / f"{keys[-1]}.npy").unlink()
    cut = {**meta, "case_days": {k: v for k, v in meta["case_days"].items() if k != keys[-1]}}
    (part / "meta.json").write_text(json.dumps(cut, indent=1) + "\n")
    capsys.readouterr()
    assert _tool("test").main([*base, "--tta", "hflip,rot90", "--out", str(part), *opts]) == 2  # not silently
    assert _tool("test").main([*base, "--tta", "hflip,rot90", "--out", str(part), "--resume", *opts]) == 0
    assert json.loads(capsys.readouterr().out)["resumed"] == len(keys) - 1
    for name in [*(f"{k}.npy" for k in keys), "meta.json", "metrics.json"]:
        assert (part / name).read_bytes() == (full / name).read_bytes(), name
    # --resume with other settings is refused (named), and unknown TTA / planes are errors
    assert _tool("test").main([*base, "--tta", "vflip", "--out", str(part), "--resume", *opts]) == 2
    assert "other settings" in capsys.readouterr().err
    assert _tool("test").main([*base, "--tta", "rot45", "--out", str(tmp_path / "x"), *opts]) == 2
    assert "rot45" in capsys.readouterr().err
    # the model along the axial and coronal axes: maps on the axial grid, the mean of the two planes' maps
    planes = tmp_path / "planes"
    two = [*base, "--tta", "none", "--planes", "axial,coronal", "--out", str(planes), *opts]
    assert _tool("test").main(two) == 0
    axial = tmp_path / "axial"
    assert _tool("test").main([*base, "--tta", "none", "--out", str(axial), *opts]) == 0
    coronal = tmp_path / "coronal"
    assert _tool("test").main([*base, "--tta", "none", "--planes", "coronal", "--out", str(coronal), *opts]) == 0
    assert json.loads((planes / "meta.json").read_text())["planes"] == ["axial", "coronal"]
    for k in keys:
        a, c, both = (np.load(d / f"{k}.npy").astype(np.float32) for d in (axial, coronal, planes))
        assert a.shape == c.shape == both.shape and np.abs(a - c).max() > 1e-3
        np.testing.assert_allclose(both, (a + c) / 2, atol=2e-3)


def test_segmenter_keep_and_boxes(trained, seg_work) -> None:
    from data_prep.work import load_volume
    from segmenters.mm.inference import Segmenter

    wd, _ = trained
    seg = Segmenter.load(TINY_UPERNET, wd / "iter_10.pth", "cpu", cfg_options={"img_size": (64, 64)})
    vol = load_volume(seg_work, "case11_day1")
    keep = np.ones(len(vol), bool)
    keep[[0, 5]] = False
    boxes = np.tile(np.array([8, 4, 72, 60]), (len(vol), 1))
    probs = seg.predict_volume(vol, keep=keep, boxes=boxes, tta=(), batch_size=5)
    assert probs.shape == (12, 3, 80, 96) and probs.dtype == np.float32
    assert not probs[[0, 5]].any() and probs[1].any()
    assert not probs[:, :, :4].any() and not probs[:, :, 60:].any() and not probs[..., 72:].any()
    full = seg.predict_volume(vol[:3], tta=("hflip",))
    assert full.shape == (3, 3, 80, 96) and (full > 0).all()


@pytest.mark.slow
def test_dist_train_two_cpu_processes(seg_work, tmp_path) -> None:
    wd = tmp_path / "dist"
    opts = ["img_size=(64,64)", "train_dataloader.batch_size=2", "train_cfg.max_iters=3", "train_cfg.val_interval=3"]
    opts += ["default_hooks.checkpoint.interval=3"]
    dist_train(TINY_UPERNET, 2, ["--work", str(seg_work), "--work-dir", str(wd), "--cfg-options", *opts], timeout=240)
    assert sorted(p.name for p in wd.glob("iter_*.pth")) == ["iter_3.pth"]
    log = next(wd.glob("*/*.log")).read_text()
    assert "Distributed training: True" in log and "GPU number: 2" in log
    assert "Iter(val) [1/1]" in log  # 12 val slices, batch 8, split over 2 ranks


def test_train_folds_skips_finished_folds(seg_work, tmp_path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, WORK_DIRS=str(tmp_path), CUDA_VISIBLE_DEVICES="")
    cmd = [
        str(REPO / "tools" / "train_folds.sh"),
        str(TINY_UPERNET),
        "1",
        "1",
        "--work",
        str(seg_work),
        "--cfg-options",
        "img_size=(64,64)",
        "train_cfg.max_iters=2",
        "train_cfg.val_interval=2",
        "default_hooks.checkpoint.interval=2",
    ]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    wd = tmp_path / TINY_UPERNET.stem / "fold_1"
    assert json.loads((wd / "done.json").read_text())["fold"] == 1
    assert not (tmp_path / TINY_UPERNET.stem / "fold_0").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "fold 1: finished" in again.stdout and "training ->" not in again.stdout


def test_a_shortened_schedule_drops_schedulers_that_would_begin_after_the_end(seg_work, tmp_path) -> None:
    from training.train import build_train_cfg

    cfg = build_train_cfg(
        REPO / "mmcfg/unet/unet_effb4_2xb16-20k_gitract-384x384.py",
        0,
        work=seg_work,
        work_dir=tmp_path / "wd",
        cfg_options={"train_cfg.max_iters": 300},
    )
    assert [s["type"] for s in cfg.param_scheduler] == ["LinearLR"]  # PolyLR would begin at 500
    full = build_train_cfg(REPO / "mmcfg/unet/unet_effb4_2xb16-20k_gitract-384x384.py", 0, work=seg_work)
    assert [s["type"] for s in full.param_scheduler] == ["LinearLR", "PolyLR"]
