"""Generated volumes and WORK folders for the gating tests (importable by name: ``from gating_fixtures import ...``).

:func:`make_toy_work` is a toy "separable" data set: class ``c`` is present on a slice exactly when a bright blob
sits in the image region that belongs to ``c`` (the c-th vertical strip), so a classifier can learn it in a few
iterations.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from train_helpers import write_toy_splits

from data_prep.dataset import KAGGLE, DatasetInfo, VolumeInfo
from data_prep.exports import export_classifier
from data_prep.work import save_mask, save_volume, write_dataset, write_manifest


def make_body_volume(rng: np.random.Generator, depth: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """uint16 (D, H, W) with a bright noisy ellipse ("body") per slice, and its box int (D, 4)."""
    vol = rng.integers(0, 60, size=(depth, h, w)).astype(np.uint16)
    boxes = np.zeros((depth, 4), dtype=np.int64)
    cx, cy = w // 2 + rng.integers(-w // 10, w // 10 + 1), h // 2 + rng.integers(-h // 10, h // 10 + 1)
    ax, ay = int(w * rng.uniform(0.25, 0.38)), int(h * rng.uniform(0.22, 0.35))
    for z in range(depth):
        img = np.zeros((h, w), np.uint8)
        cv2.ellipse(img, (int(cx), int(cy)), (ax, ay), 0, 0, 360, 255, -1)
        vol[z][img > 0] += rng.integers(800, 1200, size=int((img > 0).sum())).astype(np.uint16)
        ys, xs = np.nonzero(img)
        boxes[z] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return vol, boxes


def make_toy_work(
    root: Path,
    n_cases: int = 6,
    depth: int = 16,
    size: tuple[int, int] = (48, 48),
    seed: int = 0,
    n_folds: int = 3,
    dataset: DatasetInfo = KAGGLE,
) -> Path:
    """A WORK folder (manifest.csv, volumes, masks, splits/splits.json, exports/classifier.csv, exports/boxes.csv).

    Class c of the ``C`` classes of ``dataset`` is present on a slice <=> a bright 6x6 blob in the c-th vertical strip
    (of ``C``) of the image, on every image channel of ``dataset`` (channel ``k > 0``: another background, blobs of
    ``3000 - 500 k``). A dataset other than the Kaggle one (the default, no ``dataset.json``) is written to
    ``WORK/dataset.json``.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    n = dataset.num_classes
    strip = w // n
    rows, cls_rows = [], []
    case_days = []
    volumes = {}
    for case in range(1, n_cases + 1):
        cd = f"case{case}_day0"
        case_days.append((case, cd))
        vol = rng.integers(50, 300, size=(depth, h, w)).astype(np.uint16)
        masks = np.zeros((depth, n, h, w), np.uint8)
        present = np.zeros((depth, n), bool)
        for c in range(n):  # one run of slices per class, as organs are
            a = int(rng.integers(0, depth - 4))
            present[a : a + int(rng.integers(3, depth // 2 + 1)), c] = True
        for z in range(depth):
            for c in range(n):
                if present[z, c]:
                    x0 = c * strip + int(rng.integers(1, max(2, strip - 7)))
                    y0 = int(rng.integers(2, h - 8))
                    vol[z, y0 : y0 + 6, x0 : x0 + 6] = 3000
                    masks[z, c, y0 : y0 + 6, x0 : x0 + 6] = 1
        save_volume(root, cd, vol)
        for k in range(1, dataset.num_channels):
            other = rng.integers(50, 300, size=(depth, h, w)).astype(np.uint16)
            other[masks.any(axis=1)] = 3000 - 500 * k
            save_volume(root, cd, other, channel=k)
        save_mask(root, cd, dataset.pack(masks))
        volumes[cd] = VolumeInfo(shape=(depth, h, w), spacing=(3.0, 1.5, 1.5), group=str(case))
        for z in range(depth):
            sid = f"{cd}_slice_{z + 1:04d}"
            area = masks[z].sum(axis=(1, 2))
            rows.append(
                dict(
                    id=sid,
                    case=case,
                    day=0,
                    slice=z + 1,
                    case_day=cd,
                    path=f"/nonexistent/{sid}.png",
                    width=w,
                    height=h,
                    px_w=1.5,
                    px_h=1.5,
                    z=z,
                    depth=depth,
                    **{f"has_{c}": int(area[i] > 0) for i, c in enumerate(dataset.classes)},
                    **{f"area_{c}": int(area[i]) for i, c in enumerate(dataset.classes)},
                )
            )
            presence = {c: int(area[i] > 0) for i, c in enumerate(dataset.classes)}
            cls_rows.append(dict(id=sid, case_day=cd, z=z, **presence))
    manifest = pd.DataFrame(rows)
    write_manifest(root, manifest)
    write_toy_splits(root, manifest, n_folds)
    if dataset != KAGGLE:
        write_dataset(root, dataset.with_volumes(volumes))
    export_classifier(root)
    return root
