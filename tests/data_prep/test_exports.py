"""Exports: crop-box rule on known shapes, classifier table, YOLO dataset, 3D datalists."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_prep.constants import CLASSES
from data_prep.exports import (
    body_box,
    boxes_table,
    classifier_table,
    export_3d,
    export_boxes,
    export_classifier,
    export_yolo,
    yolo_label,
)
from data_prep.prepare import prepare
from data_prep.rle import rle_encode
from data_prep.work import read_manifest, read_splits

H, W = 96, 128
YY, XX = np.mgrid[:H, :W]
# semi-axes 40.5 x 30.5 px: x 24..104, y 18..78; the tips are 9 px wide, so the opening keeps them
ELLIPSE = ((XX - 64) / 40.5) ** 2 + ((YY - 48) / 30.5) ** 2 <= 1
ELLIPSE_BOX = (24, 18, 105, 79)


def body_image(seed: int = 0, bridge: bool = True) -> np.ndarray:
    """uint16 (H, W): a noisy ellipse 'body', two 'arms' beside it joined by 1-pixel bridges."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(H, W)).astype(np.float64)
    img[ELLIPSE] = 900 + rng.integers(0, 200, size=int(ELLIPSE.sum()))
    img[28:68, 4:16] = 1100  # arms
    img[28:68, 112:124] = 1100
    if bridge:
        img[48, 16:25] = 1000  # thin contacts arm-body
        img[47, 104:112] = 1000
    return img.astype(np.uint16)


def test_body_box_of_a_known_ellipse_without_arms():
    ys, xs = np.nonzero(ELLIPSE)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == ELLIPSE_BOX
    assert body_box(body_image()) == (*ELLIPSE_BOX, False)
    assert body_box(body_image(seed=3, bridge=False)) == (*ELLIPSE_BOX, False)
    assert body_box(np.zeros((H, W), np.uint16)) == (0, 0, W, H, True)
    speck = np.zeros((H, W), np.uint16)
    speck[10:13, 10:13] = 500  # too small to be a body: whole image
    assert body_box(speck) == (0, 0, W, H, True)


def test_body_box_when_the_body_fills_the_frame_and_an_organ_is_bright():
    big = ((XX - 64) / 72.5) ** 2 + ((YY - 48) / 60.5) ** 2 <= 1  # only the corners are background
    img = np.where(big, 300, 5).astype(np.uint16)
    img[30:60, 50:80] = 900  # an organ 3x brighter than the body: Otsu alone would take it for the body
    assert body_box(img) == (0, 0, W, H, False)
    img[:, :4] = 5  # background strips at the sides
    img[:, -3:] = 5
    assert body_box(img) == (4, 0, W - 3, H, False)


def test_yolo_label_values():
    assert yolo_label(ELLIPSE_BOX, W, H) == "0 0.503906 0.505208 0.632812 0.635417"
    assert yolo_label((0, 0, W, H), W, H) == "0 0.500000 0.500000 1.000000 1.000000"


def make_body_tree(root: Path, n_cases: int = 5, depth: int = 6) -> None:
    rows = []
    for case in range(1, n_cases + 1):
        cd = f"case{case}_day0"
        scans = root / "train" / f"case{case}" / cd / "scans"
        scans.mkdir(parents=True)
        for z in range(depth):
            cv2.imwrite(str(scans / f"slice_{z + 1:04d}_{W}_{H}_1.63_1.63.png"), body_image(seed=case * 10 + z))
            m = np.zeros((3, H, W), np.uint8)
            if z >= 2:
                m[0, 40:50, 50:60] = 1
            if z == 3:
                m[2, 30:35, 70:80] = 1
            for c, name in enumerate(CLASSES):
                rows.append((f"{cd}_slice_{z + 1:04d}", name, rle_encode(m[c])))
    pd.DataFrame(rows, columns=["id", "class", "segmentation"]).to_csv(root / "train.csv", index=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_body_tree(root)
    w = tmp_path_factory.mktemp("work")
    prepare(root, w, n_folds=5, faulty_case_days=["case2_day0"])
    return w


def test_classifier_table(work):
    path = export_classifier(work)
    t = pd.read_csv(path)
    assert list(t.columns) == ["id", "case_day", "z", "fold", *CLASSES]
    row = t.set_index("id").loc["case4_day0_slice_0004"]
    assert (row["z"], row["large_bowel"], row["small_bowel"], row["stomach"]) == (3, 1, 0, 1)
    assert t.set_index("id").loc["case4_day0_slice_0002", list(CLASSES)].tolist() == [0, 0, 0]
    splits = read_splits(work)
    for f in splits["folds"]:
        assert set(t.loc[t["fold"] == f["fold"], "id"]) == set(f["val"])
    assert t[list(CLASSES)].sum().tolist() == [5 * 4, 0, 5 * 1]
    mtime = path.stat().st_mtime_ns
    assert export_classifier(work) == path and path.stat().st_mtime_ns == mtime  # same content: untouched
    assert classifier_table(read_manifest(work), splits).equals(t)


def test_boxes_and_yolo(work):
    boxes = pd.read_csv(export_boxes(work))
    assert len(boxes) == 30
    assert (boxes[["x0", "y0", "x1", "y1"]].to_numpy() == np.array(ELLIPSE_BOX)).all()
    assert boxes["fallback"].sum() == 0
    assert boxes_table(work, workers=2).equals(boxes)

    data_yaml = export_yolo(work, fold=1)
    root = data_yaml.parent
    text = data_yaml.read_text()
    assert f"path: {root.resolve()}\n" in text and "train: images/train" in text and "0: body" in text
    f = read_splits(work)["folds"][1]
    val = {p.stem for p in (root / "images" / "val").glob("*.png")}
    train = {p.stem for p in (root / "images" / "train").glob("*.png")}
    assert val == set(f["val"]) and train == set(f["train"]["all"])
    assert not any(i.startswith("case2_day0") for i in train)  # fault list
    sid = sorted(val)[0]
    img = cv2.imread(str(root / "images" / "val" / f"{sid}.png"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.shape == (H, W) and img.max() == 255
    assert (root / "labels" / "val" / f"{sid}.txt").read_text() == yolo_label(ELLIPSE_BOX, W, H) + "\n"
    assert export_yolo(work, fold=1) == data_yaml  # same fold: no-op
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_yolo(work, fold=2)
    export_yolo(work, fold=2, overwrite=True, step=2)
    assert json.loads((root / "export.json").read_text())["fold"] == 2
    assert all(int(p.stem[-4:]) % 2 == 1 for p in (root / "images" / "train").glob("*.png"))  # z even
    with pytest.raises(ValueError, match=r"fold must be in \[0, 4\]"):
        export_yolo(work, fold=5, overwrite=True)


def test_datalists(work):
    paths = export_3d(work)
    assert [p.parent.name for p in paths] == [f"fold_{k}" for k in range(5)]
    splits = read_splits(work)
    for k, p in enumerate(paths):
        d = json.loads(p.read_text())
        val_cds = {f"case{c}_day0" for c in splits["folds"][k]["val_cases"]}
        assert {e["case_day"] for e in d["validation"]} == val_cds
        assert {e["case_day"] for e in d["training"]} == {f"case{c}_day0" for c in range(1, 6)} - val_cds - {
            "case2_day0"
        }
        e = d["validation"][0]
        assert e["spacing"] == [3.0, 1.63, 1.63] and e["shape"] == [6, H, W]
        assert Path(e["image"]).is_file() and Path(e["label"]).is_file() and Path(e["image"]).is_absolute()
        assert np.load(e["image"], mmap_mode="r").shape == (6, H, W)
