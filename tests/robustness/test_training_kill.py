"""Training killed with SIGKILL while a checkpoint is being written and in the middle of an iteration, for the
2.5D segmenter (tools/train.py, mmengine), the slice classifier (tools/train_cls.py) and the 3D segmenter
(tools/train_3d.py). Each next run with ``--resume`` continues from the last complete checkpoint; the
half-written checkpoint is never picked up (checkpoints are written to a temporary file and renamed).

Each chain, 6 iterations with a checkpoint every 2:
  run A: dies half-way through writing the iteration-4 checkpoint      -> the iteration-2 checkpoint is the last
  run B: --resume, dies in iteration 5 (after its forward pass)        -> resumed at 2; iteration 4 saved
  run C: --resume, finishes                                            -> resumed at 4; reaches 6
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from robust_helpers import REPO, SEG_OPTS, assert_killed, assert_ok, run_driver, train_iters

#: Kill the process half-way through writing the n-th checkpoint whose path contains ``part``: the real
#: ``atomic_torch_save`` runs, its ``torch.save`` writes half of the bytes into the temporary file, then SIGKILL.
KILL_IN_SAVE = """
import io, torch
_save, _n = torch.save, [0]
def _half_save(obj, f, *a, **k):
    name = os.readlink(f"/proc/self/fd/{{f.fileno()}}") if hasattr(f, "fileno") else str(f)
    if {part!r} in os.path.basename(name):
        _n[0] += 1
        if _n[0] == {n}:
            buf = io.BytesIO(); _save(obj, buf, *a, **k); data = buf.getvalue()
            f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
            die()
    return _save(obj, f, *a, **k)
torch.save = _half_save
"""
#: Kill the process in the n-th training iteration of this run, after its forward pass, before its backward pass.
KILL_IN_ITER = """
import torch
kill_on_call(torch.Tensor, "backward", {n})
"""
RUN_TOOL = """
import importlib.util
spec = importlib.util.spec_from_file_location("tool", {tool!r})
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
sys.exit(mod.main({args!r}))
"""


def _run_tool(tmp: Path, tool: str, args: list[str], patch: str = "", name: str = "drv.py"):
    code = patch + RUN_TOOL.format(tool=str(REPO / "tools" / tool), args=args)
    return run_driver(code, tmp, name)


@pytest.fixture(scope="module")
def work(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared WORK (manifest, volumes, masks, splits) with the classifier and 3D exports."""
    from data_prep.exports import export_3d, export_classifier
    from data_prep.prepare import prepare

    w = tmp_path_factory.mktemp("train_work") / "work"
    prepare(synth_root, w)
    export_classifier(w)
    export_3d(w, fold=0)
    return w


def _tmp_files(d: Path) -> list[Path]:
    return sorted(d.glob(".*.tmp"))


def _assert_corrupt(path: Path) -> None:
    """The leftover temporary file really is a half-written checkpoint (so picking it up would have failed)."""
    with pytest.raises(Exception):  # noqa: B017,PT011 - torch raises RuntimeError or EOFError or pickle errors
        torch.load(path, weights_only=False)


# ---------------------------------------------------------------------------------------------------------------
# classifier


CLS_ARGS = [
    "--device", "cpu", "--cfg-options", "schedule.max_iters=6", "schedule.ckpt_interval=2",
    "schedule.val_interval=6", "schedule.warmup_iters=0", "schedule.log_interval=1", "data.batch_size=4",
]  # fmt: skip


def test_classifier_killed_in_save_and_in_iteration_resumes_exactly(work, tmp_path):
    cfg = str(REPO / "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py")
    ref, wd = tmp_path / "ref", tmp_path / "run"
    base = [cfg, "--work", str(work)]
    assert_ok(_run_tool(tmp_path, "train_cls.py", [*base, "--work-dir", str(ref), *CLS_ARGS]))
    args = [*base, "--work-dir", str(wd), *CLS_ARGS]
    # A: killed while writing the second last.pth (iteration 4)
    assert_killed(_run_tool(tmp_path, "train_cls.py", args, KILL_IN_SAVE.format(part="last.pth", n=2)))
    assert torch.load(wd / "last.pth", weights_only=False)["iteration"] == 2
    (leftover,) = _tmp_files(wd)
    _assert_corrupt(leftover)
    # B: resumed at 2, killed in iteration 5
    r = _run_tool(tmp_path, "train_cls.py", [*args, "--resume"], KILL_IN_ITER.format(n=3))
    assert_killed(r)
    assert re.search(r"resumed from .*last.pth at iteration 2\b", r.stderr)
    assert torch.load(wd / "last.pth", weights_only=False)["iteration"] == 4
    # C: resumed at 4, finishes; the result is the uninterrupted run's, weight for weight
    r = _run_tool(tmp_path, "train_cls.py", [*args, "--resume"])
    assert_ok(r)
    assert re.search(r"resumed from .*last.pth at iteration 4\b", r.stderr)
    got, want = torch.load(wd / "last.pth", weights_only=False), torch.load(ref / "last.pth", weights_only=False)
    assert got["iteration"] == want["iteration"] == 6
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for k, v in want["state_dict"].items():
        assert torch.equal(got["state_dict"][k], v), f"{k} differs from the uninterrupted run"
    best = torch.load(wd / "best.pth", weights_only=True)  # inference weights load without unpickling code
    assert best["meta"]["iteration"] == 6


# ---------------------------------------------------------------------------------------------------------------
# 3D segmenter


def test_3d_killed_in_save_and_in_iteration_resumes(work, tmp_path):
    cfg = tmp_path / "segresnet_6it.py"
    cfg.write_text(
        f"_base_ = [{str(REPO / 'mmcfg/monai3d/segresnet-tiny_1xb2-40_synth-32x32x16.py')!r}]\n"
        "train = dict(stages=[dict(roi_size=(32, 32, 16), iters=6)], checkpoint_interval=2, val_interval=6, "
        "log_interval=1)\n"
    )
    wd = tmp_path / "run"
    args = [str(cfg), "--work", str(work), "--work-dir", str(wd), "--device", "cpu"]
    assert_killed(_run_tool(tmp_path, "train_3d.py", args, KILL_IN_SAVE.format(part="last.pth", n=2)))
    assert torch.load(wd / "last.pth", weights_only=False)["iter"] == 2
    (leftover,) = _tmp_files(wd)
    _assert_corrupt(leftover)
    r = _run_tool(tmp_path, "train_3d.py", [*args, "--resume"], KILL_IN_ITER.format(n=3))
    assert_killed(r)
    assert re.search(r"resumed from .*last.pth at iteration 2\b", r.stderr)
    assert torch.load(wd / "last.pth", weights_only=False)["iter"] == 4
    r = _run_tool(tmp_path, "train_3d.py", [*args, "--resume"])
    assert_ok(r)
    assert re.search(r"resumed from .*last.pth at iteration 4\b", r.stderr)
    ck = torch.load(wd / "last.pth", weights_only=False)
    assert ck["iter"] == 6
    # the history has every iteration exactly once: nothing of the killed iterations leaked in
    assert [row["iter"] for row in ck["history"]] == [1, 2, 3, 4, 5, 6]
    log = (wd / "log.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in log[1:]] == [1, 2, 3, 4, 5, 6]
    assert torch.load(wd / "best.pth", weights_only=True)["meta"]["iter"] == 6


# ---------------------------------------------------------------------------------------------------------------
# 2.5D segmenter (mmengine Runner)


def test_25d_killed_in_save_and_in_iteration_resumes(work, tmp_path):
    cfg = str(REPO / "mmcfg/upernet/upernet_convnext-atto_1xb4-40_gitract-128x128.py")
    wd = tmp_path / "run"
    args = [cfg, "--work", str(work), "--work-dir", str(wd), "--cfg-options", *SEG_OPTS]
    # A: killed while writing iter_4.pth
    assert_killed(_run_tool(tmp_path, "train.py", args, KILL_IN_SAVE.format(part="iter_", n=2)))
    assert (wd / "iter_2.pth").is_file() and not (wd / "iter_4.pth").exists()
    assert (wd / "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    (leftover,) = _tmp_files(wd)
    assert leftover.name.startswith(".iter_4.pth.")
    _assert_corrupt(leftover)
    assert not (wd / "done.json").exists()
    # B: resumed at 2, killed in iteration 5
    r = _run_tool(
        tmp_path,
        "train.py",
        [*args[: -len(SEG_OPTS) - 1], "--resume", "--cfg-options", *SEG_OPTS],
        KILL_IN_ITER.format(n=3),
    )
    assert_killed(r)
    assert re.search(r"resumed from \S*iter_2.pth at iteration 2\b", r.stdout + r.stderr)
    assert (wd / "last_checkpoint").read_text().strip().endswith("iter_4.pth")
    # C: resumed at 4, finishes
    r = _run_tool(tmp_path, "train.py", [*args[: -len(SEG_OPTS) - 1], "--resume", "--cfg-options", *SEG_OPTS])
    assert_ok(r)
    assert re.search(r"resumed from \S*iter_4.pth at iteration 4\b", r.stdout + r.stderr)
    assert json.loads((wd / "done.json").read_text())["iterations"] == 6
    runs = train_iters(wd)
    # A logged 1-4 (killed writing iteration 4's checkpoint), B restarted at 3 and logged 3-4 (killed in 5),
    # C restarted at 5
    assert runs == [[1, 2, 3, 4], [3, 4], [5, 6]], runs
    ck = torch.load(wd / "iter_6.pth", weights_only=True)  # the project's checkpoints need no unpickling
    assert ck["meta"]["iter"] == 6
