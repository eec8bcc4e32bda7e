"""Shared helpers of the fault-injection tests: tiny synthetic data, subprocess drivers with bounded timeouts.

Faults are injected from outside the library: a small Python driver runs the real entry point in a subprocess
after monkeypatching one function so that the process kills itself (``SIGKILL``) at a deterministic point (the
N-th call of a function, half-way through writing a file). Library code has no test hooks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
#: Every subprocess is bounded; a hung run fails the test instead of hanging the suite.
TIMEOUT_S = 180

#: Prepended to every driver: a ``die()`` that SIGKILLs this process, and
#: ``kill_on_call(obj, name, n)`` that replaces ``obj.name`` by a wrapper killing the process at its n-th call.
DRIVER_PRELUDE = textwrap.dedent(
    """
    import os, signal, sys

    def die():
        sys.stdout.flush(); sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def kill_on_call(obj, name, n, before=True):
        orig = getattr(obj, name)
        count = [0]
        def wrapper(*a, **k):
            count[0] += 1
            if count[0] == n and before:
                die()
            out = orig(*a, **k)
            if count[0] == n:
                die()
            return out
        setattr(obj, name, wrapper)
        return count
    """
)


def env() -> dict[str, str]:
    """Environment of the subprocesses: few threads (2 shared cores), offline (the project is installed)."""
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", YOLO_OFFLINE="1", PYTHONHASHSEED="0")
    return e


def run(cmd: list[str], cwd: Path = REPO, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``cmd`` with a bounded timeout; output captured as text."""
    return subprocess.run(cmd, cwd=str(cwd), env=env(), capture_output=True, text=True, timeout=timeout)


def run_driver(code: str, tmp: Path, name: str = "driver.py", timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Write ``DRIVER_PRELUDE + code`` to ``tmp/name`` and run it with Python; returns the finished process."""
    path = tmp / name
    path.write_text(DRIVER_PRELUDE + textwrap.dedent(code))
    return run([PY, str(path)], timeout=timeout)


def assert_killed(r: subprocess.CompletedProcess) -> None:
    """The driver died of SIGKILL (not of an exception, not by finishing)."""
    tail = f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert r.returncode == -signal.SIGKILL, f"expected SIGKILL, got rc={r.returncode}\n{tail}"


def assert_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"


def synth(
    out: Path, cases: int = 5, test_cases: int = 2, slices: int = 12, sizes: str = "64x64", seed: int = 1
) -> Path:
    """A synthetic Kaggle-layout data root (``python -m data_prep synth``)."""
    from data_prep.synth import synthesize

    w, h = (int(v) for v in sizes.split("x"))
    synthesize(out, cases=cases, seed=seed, test_cases=test_cases, slices=slices, sizes=[(w, h)])
    return out


#: --cfg-options of the tiny 2.5D runs: 64x64, 6 iterations, a checkpoint every 2, no validation before the end.
SEG_OPTS = [
    "img_size=(64,64)", "train_dataloader.batch_size=2", "train_cfg.max_iters=6", "train_cfg.val_interval=100",
    "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1", "param_scheduler=[]",
    "randomness.seed=0",
]  # fmt: skip


def train_iters(wd: Path) -> list[list[int]]:
    """Training iterations logged by each run (one list per run folder, in time order)."""
    out = []
    for f in sorted(wd.glob("*/vis_data/scalars.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out.append([r["iter"] for r in rows if "loss" in r])
    return out
