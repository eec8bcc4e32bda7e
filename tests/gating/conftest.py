"""Small generated fixtures for the gating tests, following docs/contracts.md exactly.

The WORK fixtures are toy "separable" data sets (:func:`gating_fixtures.make_toy_work`): class ``c`` is present on a
slice exactly when a bright blob sits in the image region that belongs to ``c`` (left / middle / right third), so a
classifier can learn it in a few iterations.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from gating_fixtures import make_body_volume, make_toy_work

from data_prep.volumes import to_uint8

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
