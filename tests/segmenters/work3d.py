"""A tiny WORK folder written through data_prep.work (docs/contracts.md), with synthetic 3D anatomy, for the 3D
segmenters' tests: volumes, bit-field masks, manifest.csv, splits/splits.json, prepare.json and the 3D export of
every fold (data_prep.exports.export_3d).

Each case-day holds three bright ellipsoids (one per class, stomach and large bowel may overlap) on a noisy
background, so a small network can learn them in a few iterations. The real pipeline makes WORK with
``python -m data_prep prepare`` / ``export 3d``; this module only mirrors the files those write.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from train_helpers import write_toy_splits

from data_prep.constants import CLASSES, slice_id
from data_prep.exports import export_3d
from data_prep.work import manifest_path, save_mask, save_volume, write_manifest

#: Class intensities (uint16) of the synthetic anatomy, in CLASSES order.
_INTENSITY = (1400, 2200, 3000)


def synth_case_day(
    depth: int, height: int, width: int, rng: np.random.Generator, empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case-day: ``(volume uint16 (D, H, W), mask uint8 (D, H, W) bit field)``.

    Ellipsoids span about a third of each axis; ``empty=True`` gives noise and an all-zero mask.
    """
    vol = rng.normal(400, 60, size=(depth, height, width)).clip(0, None)
    mask = np.zeros((depth, height, width), dtype=np.uint8)
    if not empty:
        zz, yy, xx = np.meshgrid(
            np.arange(depth) / max(depth - 1, 1),
            np.arange(height) / max(height - 1, 1),
            np.arange(width) / max(width - 1, 1),
            indexing="ij",
        )
        for c in range(len(CLASSES)):
            center = rng.uniform(0.3, 0.7, size=3)
            radius = rng.uniform(0.12, 0.22, size=3)
            inside = ((zz - center[0]) / radius[0]) ** 2 + ((yy - center[1]) / radius[1]) ** 2 + (
                (xx - center[2]) / radius[2]
            ) ** 2 <= 1.0
            mask[inside] |= np.uint8(1 << c)
            vol[inside] += _INTENSITY[c]
    return vol.astype(np.uint16), mask


def make_synthetic_work(
    root: str | os.PathLike,
    n_cases: int = 5,
    days_per_case: int = 1,
    sizes: Sequence[tuple[int, int]] = ((48, 48),),
    depths: Sequence[int] = (16,),
    n_folds: int = 5,
    seed: int = 0,
    spacing: tuple[float, float, float] = (3.0, 1.5, 1.5),
) -> Path:
    """Write a WORK folder with ``n_cases * days_per_case`` synthetic case-days and return its path.

    Args:
        root: the WORK folder to create (must not hold a manifest yet).
        n_cases: cases; fold ``k`` validates on cases ``k, k + n_folds, ...`` (grouped by case).
        days_per_case: case-days per case.
        sizes: ``(W, H)`` slice sizes, cycled over case-days (the Kaggle convention: width first).
        depths: slice counts, cycled over case-days.
        n_folds: folds in splits.json.
        seed: random seed.
        spacing: ``(z, y, x)`` mm written to the 3D datalist and ``px_h``/``px_w`` of the manifest.

    Returns:
        ``Path(root)``.
    """
    import pandas as pd

    root = Path(root)
    if manifest_path(root).exists():
        raise FileExistsError(f"{manifest_path(root)} exists; choose an empty folder")
    rng = np.random.default_rng(seed)
    rows = []
    k = 0
    for case in range(1, n_cases + 1):
        for day in range(days_per_case):
            w, h = sizes[k % len(sizes)]
            depth = depths[k % len(depths)]
            k += 1
            cd = f"case{case}_day{day}"
            vol, mask = synth_case_day(depth, h, w, rng)
            save_volume(root, cd, vol)
            save_mask(root, cd, mask)
            for z in range(depth):
                row = {
                    "id": slice_id(case, day, z + 1),
                    "case": case,
                    "day": day,
                    "slice": z + 1,
                    "case_day": cd,
                    "path": "",
                    "width": w,
                    "height": h,
                    "px_w": spacing[2],
                    "px_h": spacing[1],
                    "z": z,
                    "depth": depth,
                }
                for c, name in enumerate(CLASSES):
                    area = int(((mask[z] >> c) & 1).sum())
                    row[f"has_{name}"] = int(area > 0)
                    row[f"area_{name}"] = area
                rows.append(row)
    df = pd.DataFrame(rows)
    write_manifest(root, df)
    write_toy_splits(root, df, n_folds, seed)
    export_3d(root, z_spacing=spacing[0])
    return root
