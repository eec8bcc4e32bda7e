"""Small generated fixtures for the gating tests, following docs/contracts.md exactly.

The WORK fixture is a toy "separable" data set: class ``c`` is present on a slice exactly when a bright
blob sits in the image region that belongs to ``c`` (left / middle / right third), so a classifier can
learn it in a few iterations.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from gating_fixtures import make_body_volume
from train_helpers import write_toy_splits

from data_prep.constants import CLASSES
from data_prep.exports import export_classifier
from data_prep.volumes import pack_mask, to_uint8
from data_prep.work import save_mask, save_volume, write_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_yolo_export(root: Path, n_train: int = 16, n_val: int = 6, size: int = 64, seed: int = 0) -> Path:
    """A tiny ultralytics detection export (one class, one box per image) and its data.yaml."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            vol, boxes = make_body_volume(rng, 1, size, size)
            cv2.imwrite(str(root / "images" / split / f"img_{i:03d}.png"), to_uint8(vol[0]))
            x0, y0, x1, y1 = boxes[0]
            cx, cy, bw, bh = (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size
            (root / "labels" / split / f"img_{i:03d}.txt").write_text(f"0 {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n")
    data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val", "names": {0: "body"}, "fold": 0}
    (root / "data.yaml").write_text(json.dumps(data))
    return root / "data.yaml"


def make_toy_work(
    root: Path, n_cases: int = 6, depth: int = 16, size: tuple[int, int] = (48, 48), seed: int = 0, n_folds: int = 3
) -> Path:
    """A WORK folder (manifest.csv, volumes, masks, splits/splits.json, exports/classifier.csv, exports/boxes.csv).

    Class c is present on a slice <=> a bright 6x6 blob in the c-th vertical third of the image.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    rows, cls_rows = [], []
    case_days = []
    for case in range(1, n_cases + 1):
        cd = f"case{case}_day0"
        case_days.append((case, cd))
        vol = rng.integers(50, 300, size=(depth, h, w)).astype(np.uint16)
        masks = np.zeros((depth, 3, h, w), np.uint8)
        present = np.zeros((depth, 3), bool)
        for c in range(3):  # one run of slices per class, as organs are
            a = int(rng.integers(0, depth - 4))
            present[a : a + int(rng.integers(3, depth // 2 + 1)), c] = True
        for z in range(depth):
            for c in range(3):
                if present[z, c]:
                    x0 = c * (w // 3) + int(rng.integers(1, w // 3 - 7))
                    y0 = int(rng.integers(2, h - 8))
                    vol[z, y0 : y0 + 6, x0 : x0 + 6] = 3000
                    masks[z, c, y0 : y0 + 6, x0 : x0 + 6] = 1
        save_volume(root, cd, vol)
        save_mask(root, cd, pack_mask(masks))
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
                    **{f"has_{c}": int(area[i] > 0) for i, c in enumerate(CLASSES)},
                    **{f"area_{c}": int(area[i]) for i, c in enumerate(CLASSES)},
                )
            )
            cls_rows.append(dict(id=sid, case_day=cd, z=z, **{c: int(area[i] > 0) for i, c in enumerate(CLASSES)}))
    manifest = pd.DataFrame(rows)
    write_manifest(root, manifest)
    write_toy_splits(root, manifest, n_folds)
    export_classifier(root)
    return root


@pytest.fixture(scope="session")
def toy_work(tmp_path_factory) -> Path:
    return make_toy_work(tmp_path_factory.mktemp("toy_work"))


@pytest.fixture(scope="session")
def toy_work_2folds(tmp_path_factory) -> Path:
    """The toy set with 4 cases in 2 folds (runs over every fold)."""
    return make_toy_work(tmp_path_factory.mktemp("toy_work_2folds"), n_cases=4, n_folds=2)


@pytest.fixture(scope="session")
def yolo_export(tmp_path_factory) -> Path:
    return write_yolo_export(tmp_path_factory.mktemp("yolo_export"))
