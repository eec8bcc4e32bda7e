"""``tools/train_folds.sh`` killed between folds, then its fold process killed in the middle of a fold: each rerun
trains only the unfinished folds (a finished fold is not touched; an interrupted one resumes).

The kill points are exact: ``train_folds.sh`` runs ``$PYTHON``; here that is a small wrapper script that, for the
fold named in its instructions file, SIGKILLs the script that launched it (between folds) or runs the training
under a driver that SIGKILLs itself in iteration 3 (mid-fold).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from robust_helpers import DRIVER_PRELUDE, PY, REPO, SEG_OPTS, TIMEOUT_S, env, train_iters

WRAPPER = """#!/usr/bin/env bash
# $PYTHON for train_folds.sh in the fault tests: reads "FOLD MODE" from {plan}; MODE between|iter|none
read -r KFOLD MODE < {plan}
FOLD=""
args=("$@")
for ((i = 0; i < ${{#args[@]}}; i++)); do
    if [ "${{args[$i]}}" = "--fold" ]; then FOLD=${{args[$((i + 1))]}}; fi
done
if [ "$FOLD" = "$KFOLD" ] && [ "$MODE" = between ]; then
    kill -KILL $PPID
    kill -KILL $$
fi
if [ "$FOLD" = "$KFOLD" ] && [ "$MODE" = iter ]; then
    exec {py} {driver} "$@"
fi
exec {py} "$@"
"""
#: Runs the script given as argv[1] with argv[2:], SIGKILLing itself before the backward pass of iteration 3.
ITER_DRIVER = """
import runpy, torch
kill_on_call(torch.Tensor, "backward", 3)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _fold_files(wd: Path) -> dict[str, tuple[int, bytes]]:
    """Checkpoints and done.json of a fold: name -> (mtime_ns, bytes)."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(wd.glob("*.pth")) + [wd / "done.json"]}


@pytest.fixture(scope="module")
def work(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_prep.prepare import prepare

    w = tmp_path_factory.mktemp("folds_work") / "work"
    prepare(synth_root, w)
    return w


def test_train_folds_killed_between_and_inside_folds(work, tmp_path):
    plan, driver, wrapper = tmp_path / "plan.txt", tmp_path / "iter_driver.py", tmp_path / "python.sh"
    driver.write_text(DRIVER_PRELUDE + ITER_DRIVER)
    wrapper.write_text(WRAPPER.format(plan=plan, py=PY, driver=driver))
    wrapper.chmod(0o755)
    opts = [o.replace("max_iters=6", "max_iters=4") for o in SEG_OPTS]
    config = REPO / "mmcfg/upernet/upernet_convnext-atto_1xb4-40_gitract-128x128.py"
    cmd = ["bash", str(REPO / "tools/train_folds.sh"), str(config), "1", "0,1", "--work", str(work),
           "--cfg-options", *opts]  # fmt: skip
    e = {**env(), "PYTHON": str(wrapper), "WORK_DIRS": str(tmp_path / "wd")}
    base = tmp_path / "wd" / config.stem
    f0, f1 = base / "fold_0", base / "fold_1"

    def launch(mode: str) -> subprocess.CompletedProcess:
        plan.write_text(f"1 {mode}\n")
        return subprocess.run(cmd, cwd=str(REPO), env=e, capture_output=True, text=True, timeout=TIMEOUT_S)

    # 1: fold 0 trains; the script is SIGKILLed as fold 1 starts
    r = launch("between")
    assert r.returncode == -signal.SIGKILL, r.stdout[-2000:] + r.stderr[-3000:]
    assert json.loads((f0 / "done.json").read_text())["iterations"] == 4
    assert not f1.exists() or not list(f1.glob("*.pth"))
    fold0 = _fold_files(f0)
    # 2: rerun: fold 0 is skipped; fold 1 starts and its process is killed in iteration 3 (iter_2.pth written)
    r = launch("iter")
    assert r.returncode == 1 and "fold 1 failed; stopping" in r.stderr, r.stdout[-2000:] + r.stderr[-3000:]
    assert "fold 0: finished" in r.stdout and "skipped" in r.stdout
    assert (f1 / "iter_2.pth").is_file() and not (f1 / "done.json").exists()
    assert _fold_files(f0) == fold0
    # 3: rerun: fold 0 skipped again, fold 1 resumed from iteration 2 and finished
    r = launch("none")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "fold 0: finished" in r.stdout and "fold 1: interrupted run found, resuming" in r.stdout
    assert "all folds done: 0,1" in r.stdout
    assert _fold_files(f0) == fold0  # the finished fold was not touched
    assert json.loads((f1 / "done.json").read_text())["iterations"] == 4
    assert train_iters(f1) == [[1, 2], [3, 4]]
    assert os.environ.get("PYTHON") != str(wrapper)  # the wrapper was only given to the subprocesses
