"""Training killed with SIGKILL while a checkpoint is being written and in the middle of an iteration, for the
2.5D segmenter, the slice classifier and the 3D segmenter, all on the shared engine (tools/train.py, mmengine; the
3D reference run goes through its tools/train_3d.py alias). Each next run with ``--resume`` continues from the last
complete checkpoint; the half-written checkpoint is never picked up (checkpoints are written to a temporary file and
renamed).

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
from train_helpers import read_scalars

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


#: --cfg-options of the tiny classifier runs: 32x32, 6 iterations, a checkpoint every 2, validation at the end
#: (the warm-up of 5 iterations changes the lr at every iteration the chain crosses); no dropout, drop-path or
#: augmentation, so that nothing random is drawn during training and a resumed chain can equal an uninterrupted run.
CLS_OPTS = [
    "img_size=(32,32)", "train_dataloader.batch_size=4", "train_cfg.max_iters=6", "train_cfg.val_interval=6",
    "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1", "randomness.seed=0",
    "model.drop_rate=0.0", "model.drop_path_rate=0.0", "train_dataloader.dataset.aug=None",
]  # fmt: skip


def _train_lrs(wd: Path) -> list[dict[int, float]]:
    """``{iteration: lr}`` logged by each run of ``wd`` (one dict per run folder, in time order)."""
    return [{r["iter"]: r["lr"] for r in rows if "loss" in r} for rows in read_scalars(wd)]


def test_classifier_killed_in_save_and_in_iteration_resumes(work, tmp_path):
    """The slice classifier on the shared engine (tools/train.py).

    Asserted: what mmengine restores exactly: the iteration, the optimizer state (AdamW's step counters go on from
    the checkpoint), the lr schedule (a resumed run logs the lr of the run it continues, iteration for iteration),
    the message hub (the loss history holds each iteration once, the killed iterations' values never), and the
    final weights equal to an uninterrupted run's, tensor for tensor. mmengine re-seeds at start and replays the data
    order (InfiniteSampler, skipping the trained batches); the RNG states that dropout, drop-path and the
    augmentations draw from mid-run are not in a checkpoint, so the runs here have none of them (``CLS_OPTS``).
    """
    cfg = str(REPO / "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py")
    ref, wd = tmp_path / "ref", tmp_path / "run"
    opts = ["--cfg-options", *CLS_OPTS]
    # the uninterrupted reference run
    assert_ok(_run_tool(tmp_path, "train.py", [cfg, "--work", str(work), "--work-dir", str(ref), "--device", "cpu",
                                               *opts], name="ref.py"))  # fmt: skip
    args = [cfg, "--work", str(work), "--work-dir", str(wd), "--device", "cpu"]
    # A: killed while writing iter_4.pth
    assert_killed(_run_tool(tmp_path, "train.py", [*args, *opts], KILL_IN_SAVE.format(part="iter_", n=2)))
    assert (wd / "iter_2.pth").is_file() and not (wd / "iter_4.pth").exists()
    assert (wd / "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    (leftover,) = _tmp_files(wd)
    assert leftover.name.startswith(".iter_4.pth.")
    _assert_corrupt(leftover)
    assert not (wd / "done.json").exists()
    ck2 = torch.load(wd / "iter_2.pth", weights_only=True)  # the project's checkpoints need no unpickling
    # B: resumed at 2 (the temporary file is never picked up), killed in iteration 5
    r = _run_tool(tmp_path, "train.py", [*args, "--resume", *opts], KILL_IN_ITER.format(n=3))
    assert_killed(r)
    assert re.search(r"resumed from \S*iter_2.pth at iteration 2\b", r.stdout + r.stderr)
    assert (wd / "last_checkpoint").read_text().strip().endswith("iter_4.pth")
    ck4 = torch.load(wd / "iter_4.pth", weights_only=True)
    # C: resumed at 4, finishes (iter_2.pth is then removed: the last two checkpoints are kept)
    r = _run_tool(tmp_path, "train.py", [*args, "--resume", *opts])
    assert_ok(r)
    assert re.search(r"resumed from \S*iter_4.pth at iteration 4\b", r.stdout + r.stderr)
    assert json.loads((wd / "done.json").read_text())["iterations"] == 6
    # A logged 1-4 (killed writing iteration 4's checkpoint), B restarted at 3 and logged 3-4 (killed in 5),
    # C restarted at 5
    assert train_iters(wd) == [[1, 2, 3, 4], [3, 4], [5, 6]]
    lr_a, lr_b, lr_c = _train_lrs(wd)
    assert lr_b == {3: lr_a[3], 4: lr_a[4]} and lr_a[3] != lr_a[4]  # the scheduler went on where it stopped
    assert lr_a[1] < lr_a[2] < lr_b[3] < lr_b[4] < lr_c[5]  # the warm-up went on (a restart would give lr_a[1])
    ck6 = torch.load(wd / "iter_6.pth", weights_only=True)
    assert [ck["meta"]["iter"] for ck in (ck2, ck4, ck6)] == [2, 4, 6]
    want = torch.load(ref / "iter_6.pth", weights_only=True)["state_dict"]
    assert ck6["state_dict"].keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(ck6["state_dict"][k], v), f"{k} differs from the uninterrupted run"
    for n, ck in ((2, ck2), (4, ck4), (6, ck6)):
        assert {int(s["step"]) for s in ck["optimizer"]["state"].values()} == {n}
        assert [s["_global_step"] for s in ck["param_schedulers"]] == [n, n]  # warm-up, cosine
    losses = [ck["message_hub"]["log_scalars"]["train/loss"]["log_history"] for ck in (ck2, ck4, ck6)]
    assert [len(h) for h in losses] == [2, 4, 6]
    assert losses[2][:4] == losses[1] and losses[1][:2] == losses[0]  # continued, never rewritten
    best = torch.load(wd / "best.pth", weights_only=True)  # inference weights load without unpickling code
    assert best["meta"]["iter"] == 6 and (wd / "oof" / "cls_probs.csv").is_file()


# ---------------------------------------------------------------------------------------------------------------
# 3D segmenter


def test_3d_killed_in_save_and_in_iteration_resumes(work, tmp_path):
    """The 3D segmenter on the shared engine (tools/train.py; the uninterrupted reference run goes through the
    tools/train_3d.py alias), with two patch-size stages: 32x32x16 patches, then 48x48x16 from iteration 3 (B crosses
    the switch after its resume, C resumes inside the second stage).

    Asserted as for the 2.5D chain: the last complete checkpoint is ``last_checkpoint``, the half-written temporary
    file is never picked up, each run resumes where the previous one stopped and the project's checkpoints load with
    ``weights_only=True``. Beyond it: the final weights equal the uninterrupted run's, weight for weight. mmengine
    does not restore the random state of the data pipeline (MONAI's crop and flip generators, the dataloader
    workers' RNGs) nor the position in the sampler's stream; the 3D data does not need it: every draw of
    CaseDayPatchSampler carries its own seed, and PatchStageHook restarts the stream at the resumed iteration (on
    CPU, with one thread and no dropout, the rest of the state is in the checkpoint).
    """
    cfg = tmp_path / "segresnet_2stages.py"
    cfg.write_text(
        f"_base_ = [{str(REPO / 'mmcfg/monai3d/segresnet-tiny_1xb2-40_synth-32x32x16.py')!r}]\n"
        "custom_hooks = [dict(type='TrainingCurveHook', keys=('seg3d/score', 'seg3d/dice')), "
        "dict(type='PatchStageHook', stages=[dict(roi_size=(32, 32, 16), begin=0), "
        "dict(roi_size=(48, 48, 16), begin=3)])]\n"
    )
    opts = [
        "--cfg-options", "train_cfg.max_iters=6", "train_cfg.val_interval=6", "default_hooks.checkpoint.interval=2",
        "default_hooks.logger.interval=1", "randomness.seed=0",
    ]  # fmt: skip
    ref, wd = tmp_path / "ref", tmp_path / "run"
    base = [str(cfg), "--work", str(work), "--device", "cpu"]
    alias = str(REPO / "tools" / "train_3d.py")
    code = f"import runpy\nsys.argv = [{alias!r}, *{[*base, '--work-dir', str(ref), *opts]!r}]\n"
    assert_ok(run_driver(code + f"runpy.run_path({alias!r}, run_name='__main__')\n", tmp_path, "ref.py"))
    args = [*base, "--work-dir", str(wd)]
    # A: killed while writing iter_4.pth
    assert_killed(_run_tool(tmp_path, "train.py", [*args, *opts], KILL_IN_SAVE.format(part="iter_", n=2)))
    assert (wd / "iter_2.pth").is_file() and not (wd / "iter_4.pth").exists()
    assert (wd / "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    (leftover,) = _tmp_files(wd)
    assert leftover.name.startswith(".iter_4.pth.")
    _assert_corrupt(leftover)
    assert not (wd / "done.json").exists()
    # B: resumed at 2 (the temporary file is never picked up), switches to 48x48x16 at 3, killed in iteration 5
    r = _run_tool(tmp_path, "train.py", [*args, "--resume", *opts], KILL_IN_ITER.format(n=3))
    assert_killed(r)
    assert re.search(r"resumed from \S*iter_2.pth at iteration 2\b", r.stdout + r.stderr)
    assert "PatchStageHook: patches (48, 48, 16) from iteration 3" in r.stdout + r.stderr
    assert (wd / "last_checkpoint").read_text().strip().endswith("iter_4.pth")
    # C: resumed at 4, inside the second stage, finishes
    r = _run_tool(tmp_path, "train.py", [*args, "--resume", *opts])
    assert_ok(r)
    assert re.search(r"resumed from \S*iter_4.pth at iteration 4\b", r.stdout + r.stderr)
    assert "PatchStageHook: patches (48, 48, 16) from iteration 4" in r.stdout + r.stderr
    assert json.loads((wd / "done.json").read_text())["iterations"] == 6
    # A logged 1-4 (killed writing iteration 4's checkpoint), B restarted at 3 and logged 3-4 (killed in 5),
    # C restarted at 5
    assert train_iters(wd) == [[1, 2, 3, 4], [3, 4], [5, 6]]
    got = torch.load(wd / "iter_6.pth", weights_only=True)  # the project's checkpoints need no unpickling
    want = torch.load(ref / "iter_6.pth", weights_only=True)
    assert got["meta"]["iter"] == want["meta"]["iter"] == 6
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for k, v in want["state_dict"].items():
        assert torch.equal(got["state_dict"][k], v), f"{k} differs from the uninterrupted run"
    best = torch.load(wd / "best.pth", weights_only=True)  # best by seg3d/score, validated at 6
    assert best["meta"]["iter"] == 6 and (wd / "best.pth").resolve().name.startswith("best_seg3d_score_iter_6")


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
