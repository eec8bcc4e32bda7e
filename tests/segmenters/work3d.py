"""A tiny WORK folder written through data_prep.work (docs/contracts.md), with synthetic 3D anatomy, for the 3D
segmenters' tests: volumes (one per image channel), masks (bit field or label map), manifest.csv, splits/splits.json,
prepare.json, dataset.json (for a dataset other than the Kaggle one) and the 3D export of every fold
(data_prep.exports.export_3d).

Each case-day holds one bright ellipsoid per class (overlapping classes may overlap; exclusive ones: a later class
covers an earlier one) on a noisy background, so a small network can learn them in a few iterations. The real
pipeline makes WORK with ``python -m data_prep prepare`` / ``export 3d``; this module only mirrors the files those
write.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from train_helpers import write_toy_splits

from data_prep.constants import slice_id
from data_prep.dataset import KAGGLE, DatasetInfo, VolumeInfo
from data_prep.exports import export_3d
from data_prep.work import manifest_path, save_mask, save_volume, write_dataset, write_manifest

#: Class intensities (uint16) of the synthetic anatomy, in class order (the first three: the Kaggle classes').
_INTENSITY = (1400, 2200, 3000, 3800, 4600, 5400)


def synth_case_day(
    depth: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    empty: bool = False,
    dataset: DatasetInfo = KAGGLE,
) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
    """One synthetic case-day: ``(volume uint16 (D, H, W), mask (D, H, W))`` (the WORK mask of ``dataset``: a bit
    field or a label map); for ``K > 1`` image channels the volume is a list of ``K`` ``(D, H, W)`` arrays, channel
    ``k`` showing class ``c`` with the intensity of class ``(c + k) % C``.

    Ellipsoids span about a third of each axis; ``empty=True`` gives noise and an all-zero mask.
    """
    n = dataset.num_classes
    vol = rng.normal(400, 60, size=(depth, height, width)).clip(0, None)
    masks = np.zeros((depth, n, height, width), dtype=np.uint8)
    if not empty:
        zz, yy, xx = np.meshgrid(
            np.arange(depth) / max(depth - 1, 1),
            np.arange(height) / max(height - 1, 1),
            np.arange(width) / max(width - 1, 1),
            indexing="ij",
        )
        for c in range(n):
            center = rng.uniform(0.3, 0.7, size=3)
            radius = rng.uniform(0.12, 0.22, size=3)
            inside = ((zz - center[0]) / radius[0]) ** 2 + ((yy - center[1]) / radius[1]) ** 2 + (
                (xx - center[2]) / radius[2]
            ) ** 2 <= 1.0
            masks[:, c][inside] = 1
    mask = dataset.pack(masks)
    masks = dataset.unpack(mask)  # exclusive classes: what the label map keeps
    vols = []
    for k in range(dataset.num_channels):
        v = vol if k == 0 else rng.normal(400, 60, size=(depth, height, width)).clip(0, None)
        for c in range(n):
            v[masks[:, c] > 0] += _INTENSITY[(c + k) % n]
        vols.append(v.astype(np.uint16))
    return (vols[0] if len(vols) == 1 else vols), mask


def make_synthetic_work(
    root: str | os.PathLike,
    n_cases: int = 5,
    days_per_case: int = 1,
    sizes: Sequence[tuple[int, int]] = ((48, 48),),
    depths: Sequence[int] = (16,),
    n_folds: int = 5,
    seed: int = 0,
    spacing: tuple[float, float, float] = (3.0, 1.5, 1.5),
    dataset: DatasetInfo = KAGGLE,
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
        spacing: ``(z, y, x)`` mm written to the 3D datalist and ``px_h``/``px_w`` of the manifest (and, for a
            dataset other than the Kaggle one, to ``dataset.json``).
        dataset: the classes, label kind and image channels (default the Kaggle layout, without ``dataset.json``).

    Returns:
        ``Path(root)``.
    """
    import pandas as pd

    root = Path(root)
    if manifest_path(root).exists():
        raise FileExistsError(f"{manifest_path(root)} exists; choose an empty folder")
    rng = np.random.default_rng(seed)
    rows = []
    volumes = {}
    k = 0
    for case in range(1, n_cases + 1):
        for day in range(days_per_case):
            w, h = sizes[k % len(sizes)]
            depth = depths[k % len(depths)]
            k += 1
            cd = f"case{case}_day{day}"
            vol, mask = synth_case_day(depth, h, w, rng, dataset=dataset)
            for ch, v in enumerate(vol if isinstance(vol, list) else [vol]):
                save_volume(root, cd, v, channel=ch)
            save_mask(root, cd, mask)
            volumes[cd] = VolumeInfo(shape=(depth, h, w), spacing=spacing, group=str(case))
            bits = dataset.unpack(mask)
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
                for c, name in enumerate(dataset.classes):
                    area = int(bits[z, c].sum())
                    row[f"has_{name}"] = int(area > 0)
                    row[f"area_{name}"] = area
                rows.append(row)
    df = pd.DataFrame(rows)
    if dataset != KAGGLE:
        write_dataset(root, dataset.with_volumes(volumes))
    write_manifest(root, df)
    write_toy_splits(root, df, n_folds, seed)
    export_3d(root, z_spacing=spacing[0])
    return root
