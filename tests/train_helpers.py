"""Helpers of the training tests: finish a toy WORK (splits, prepare.json), load a tool by path, read a run's
logged scalars, launch 2 CPU processes."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd

from data_prep.work import write_prepare_json, write_splits_json

REPO = Path(__file__).resolve().parents[1]


def write_toy_splits(root: Path, manifest: pd.DataFrame, n_folds: int, seed: int = 42) -> None:
    """``splits.json`` and ``prepare.json`` of a toy WORK whose manifest is written: fold ``k`` validates the cases
    ``c`` with ``(c - 1) % n_folds == k`` (every variant trains on all the others; no fault list)."""
    folds = []
    for k in range(n_folds):
        val_cases = [int(c) for c in manifest["case"].unique() if (c - 1) % n_folds == k]
        is_val = manifest["case"].isin(val_cases)
        val, train = manifest.loc[is_val, "id"].tolist(), manifest.loc[~is_val, "id"].tolist()
        folds.append(
            {"fold": k, "val_cases": val_cases, "val": val, "train": {"all": train, "notail": train, "noanno": train}}
        )
    splits = {"version": 1, "n_folds": n_folds, "seed": seed, "method": "group", "tail": 5, "tail_before": 0}
    write_splits_json(root, {**splits, "faulty_case_days": [], "folds": folds})
    args = {"data_root": "synthetic", "split": "train", "labels": "synthetic", "stride": 2, "channels": 3}
    write_prepare_json(root, {"version": 1, "status": "done", "args": args, "labels": True, "n_slices": len(manifest)})


def load_tool(name: str) -> ModuleType:
    """``tools/{name}.py`` as a module (the tools are scripts: nothing imports them)."""
    spec = importlib.util.spec_from_file_location(f"_test_tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_scalars(work_dir: Path) -> list[list[dict]]:
    """The rows of ``vis_data/scalars.json`` of each run in ``work_dir`` (one list per run, in time order)."""
    runs = []
    for f in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        runs.append([json.loads(line) for line in f.read_text().splitlines() if line.strip()])
    return runs


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_train(config: Path, nproc: int, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``tools/dist_train.sh CONFIG NPROC ARGS`` on CPU (gloo), one thread per process, on a free port."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [str(REPO / "tools" / "dist_train.sh"), str(config), str(nproc), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
