"""The dataset's files: scan names, atomic writes, the output folder and the CSVs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from common.io import atomic_write

#: Files and folders a synthetic dataset consists of (the only paths ``overwrite`` removes).
DATASET_ENTRIES: tuple[str, ...] = ("train", "train.csv", "test", "test_truth.csv", "sample_submission.csv")


def scan_name(slc: int, width: int, height: int, spacing: float) -> str:
    """Kaggle scan file name, e.g. ``slice_0001_266_266_1.50_1.50.png``."""
    return f"slice_{slc:04d}_{width}_{height}_{spacing:.2f}_{spacing:.2f}.png"


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), fsync=False)


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to write over an existing dataset unless ``overwrite``; then remove only dataset entries."""
    existing = [out / n for n in DATASET_ENTRIES if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a dataset ({', '.join(p.name for p in existing)}); "
            "pass overwrite=True (--overwrite) to replace it, or choose another --out"
        )
    for p in existing:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    _atomic_write(path, df.to_csv(index=False, lineterminator="\n").encode())
