"""Crop / paste-back, box smoothing and expansion, the detector's post-processing, and a real YOLO run."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_prep.constants import REAL_SIZES
from gating.crop import (
    Detector,
    clip_boxes,
    crop,
    crop_resize,
    expand_boxes,
    full_box,
    paste,
    paste_resize,
    smooth_boxes,
)


def _boxes_for(h: int, w: int) -> list[tuple[int, int, int, int]]:
    return [
        (0, 0, w, h),  # whole image
        (0, 0, 1, 1),  # one pixel in the corner
        (0, 0, w // 2, h // 3),  # top-left corner
        (w - 17, h - 5, w, h),  # bottom-right corner
        (w // 4, 0, w - 3, h),  # full height
        (0, h // 5, w, h // 5 + 7),  # full width
        (13, 29, w - 41, h - 2),  # interior
    ]


@pytest.mark.parametrize("wh", REAL_SIZES)
def test_paste_of_crop_is_exact_inside_and_zero_outside(wh):
    w, h = wh
    rng = np.random.default_rng(w * 1000 + h)
    x = rng.random((3, h, w)).astype(np.float32) + 0.01  # strictly positive everywhere
    for box in _boxes_for(h, w):
        x0, y0, x1, y1 = box
        c = crop(x, box)
        assert c.shape == (3, y1 - y0, x1 - x0)
        back = paste(c, box, (h, w))
        assert back.shape == x.shape and back.dtype == x.dtype
        inside = np.zeros((h, w), bool)
        inside[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(back[:, inside], x[:, inside])
        assert (back[:, ~inside] == 0).all()
        assert int((back > 0).sum()) == 3 * (x1 - x0) * (y1 - y0)
        # torch tensors and 2D images take the same path
        tb = paste(torch.from_numpy(c[0].copy()), box, (h, w))
        np.testing.assert_array_equal(tb.numpy(), back[0])


def test_crop_resize_paste_resize_round_trip():
    h, w = 310, 360
    box = (40, 20, 300, 290)  # 260 x 270 (w x h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h])  # smooth ramps survive bilinear resizing
    small = crop_resize(img, box, (128, 128))
    assert small.shape == (2, 128, 128) and small.dtype == np.float32
    back = paste_resize(small, box, (h, w))
    assert back.shape == (2, h, w)
    assert (back[:, :20] == 0).all() and (back[:, :, 300:] == 0).all() and (back[:, :, :40] == 0).all()
    inner = back[:, 25:285, 45:295]
    assert np.abs(inner - img[:, 25:285, 45:295]).max() < 0.01
    tback = paste_resize(torch.from_numpy(small), box, (h, w))
    assert tback.shape == (2, h, w)
    assert torch.allclose(tback, torch.from_numpy(back), atol=2e-3)
    # masks: nearest keeps values binary
    m = np.zeros((h, w), np.uint8)
    m[100:200, 100:200] = 1
    mm = crop_resize(m, box, (64, 64), interpolation=0)
    assert set(np.unique(mm).tolist()) == {0, 1}


def test_bad_boxes_raise():
    x = np.zeros((10, 12))
    for box in [(0, 0, 13, 10), (-1, 0, 5, 5), (5, 5, 5, 8), (0, 0, 4)]:
        with pytest.raises(ValueError, match="box"):
            crop(x, box)
    with pytest.raises(ValueError, match="does not fit"):
        paste(np.zeros((3, 3)), (0, 0, 4, 4), (10, 12))


def test_expand_and_clip_boxes():
    assert expand_boxes(np.array([10, 10, 20, 30]), (40, 40), 0.1, 2).tolist() == [7, 6, 23, 34]
    # touching the border: clipped, never outside
    assert expand_boxes(np.array([0, 5, 40, 38]), (40, 40), 0.2, 4).tolist() == [0, 0, 40, 40]
    # a degenerate box grows to min_size around its centre and stays inside
    b = clip_boxes(np.array([[38.2, 1.0, 38.4, 1.5]]), (40, 50), min_size=8)
    assert b.tolist() == [[34, 0, 42, 8]]
    assert full_box((310, 360)).tolist() == [0, 0, 360, 310]


def test_smooth_boxes_median_and_gaps():
    raw = np.array([[10, 10, 50, 50], [12, 10, 52, 50], [90, 90, 99, 99], [11, 10, 51, 50], [0, 0, 0, 0]], float)
    found = np.array([True, True, True, True, False])
    s, ok = smooth_boxes(raw, found, 1)
    assert ok.all()
    # the outlier on slice 2 is replaced by the median of slices 1-3
    assert s[2].tolist() == [12, 10, 52, 50]
    # slice 4 (nothing found) takes the median of slices 3 (found) only
    assert s[4].tolist() == [11, 10, 51, 50]
    s0, ok0 = smooth_boxes(raw, found, 0)
    assert ok0.tolist() == found.tolist() and s0[2].tolist() == [90, 90, 99, 99]


class _Boxes(SimpleNamespace):
    def __len__(self):
        return len(self.conf)


class _FakeYOLO:
    """Stands in for ultralytics.YOLO: returns the boxes ``(x0, y0, x1, y1, conf)`` listed per image."""

    def __init__(self, per_image):
        self.per_image = list(per_image)
        self.calls = []

    def predict(self, images, **kw):
        self.calls.append(len(images))
        out = []
        for _ in images:
            boxes = self.per_image.pop(0)
            if boxes is None:
                out.append(SimpleNamespace(boxes=_Boxes(xyxy=torch.zeros(0, 4), conf=torch.zeros(0))))
            else:
                xyxy = torch.tensor([b[:4] for b in boxes], dtype=torch.float32)
                out.append(SimpleNamespace(boxes=_Boxes(xyxy=xyxy, conf=torch.tensor([b[4] for b in boxes]))))
        return out


def _fake(per_image):
    return _FakeYOLO(per_image)


def test_detector_batches_smooths_expands_and_falls_back(caplog):
    h, w = 60, 80
    vol = np.random.default_rng(0).integers(0, 1000, size=(6, h, w)).astype(np.uint16)
    per_image = [
        [(10, 10, 50, 40, 0.9), (0, 0, 80, 60, 0.3)],  # highest confidence wins
        [(12, 10, 52, 40, 0.8)],
        None,  # nothing: median of neighbours
        [(11, 11, 51, 41, 0.7)],
        None,
        None,  # last slice: only slice 4 (none) and 5 (none) in its +-1 window -> whole image
    ]
    fake = _fake(per_image)
    det = Detector(model=fake, smooth_k=1, margin_frac=0.0, margin_px=2, min_size=4)
    with caplog.at_level(logging.INFO, logger="gating.crop"):
        boxes = det.predict_boxes(vol, batch_size=4, case_day="case1_day0")
    assert fake.calls == [4, 2]
    assert boxes.dtype == np.int64 and boxes.shape == (6, 4)
    assert boxes[0].tolist() == [9, 8, 53, 42]  # median of slices 0-1 (11, 10, 51, 40), +2 px
    assert boxes[2].tolist() == [9, 8, 54, 43]  # median of slices 1, 3 (11.5, 10.5, 51.5, 40.5) +2, rounded outward
    assert boxes[4].tolist() == [9, 9, 53, 43]  # only slice 3 in the window
    assert boxes[5].tolist() == [0, 0, w, h]
    assert det.last_stats == {"slices": 6, "detected": 3, "fallback": 1}
    assert "1 of 6 slices of case1_day0" in caplog.text
    # nothing found on the whole case-day: all whole-image boxes and a warning
    det2 = Detector(model=_fake([None] * 3), smooth_k=2)
    with caplog.at_level(logging.WARNING, logger="gating.crop"):
        b2 = det2.predict_boxes(vol[:3], case_day="case9_day9")
    assert (b2 == np.array([0, 0, w, h])).all()
    assert det2.last_stats["fallback"] == 3
    assert "no box on any of the 3 slices of case9_day9" in caplog.text


def test_detector_load_refuses_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_yolo.py"):
        Detector.load(tmp_path / "best.pt")


def test_missing_export_names_the_command(tmp_path):
    from gating.yolo_train import parse_overrides, train_detector

    with pytest.raises(FileNotFoundError, match="python -m data_prep export yolo --work WORK --fold K"):
        train_detector(tmp_path / "exports" / "yolo" / "data.yaml", tmp_path / "run")
    (tmp_path / "exports" / "yolo").mkdir(parents=True)
    (tmp_path / "exports" / "yolo" / "data.yaml").write_text("path: /x\nfold: 1\n")
    with pytest.raises(ValueError, match="model YAML"):
        train_detector(tmp_path / "exports" / "yolo" / "data.yaml", tmp_path / "run", model="yolov8n.pt")
    with pytest.raises(ValueError, match="did you mean epochs"):
        parse_overrides(["epoch=3"])
    assert parse_overrides(["lr0=0.005", "mosaic=0"]) == {"lr0": 0.005, "mosaic": 0}


def test_train_detector_folds_checks_every_run_folder_first(toy_work, tmp_path):
    from gating.yolo_train import train_detector_folds

    (tmp_path / "runs" / "fold_1" / "weights").mkdir(parents=True)
    (tmp_path / "runs" / "fold_1" / "weights" / "best.pt").write_bytes(b"x")
    yolo = toy_work / "exports" / "yolo"
    before = sorted(p.name for p in yolo.iterdir()) if yolo.exists() else None
    with pytest.raises(ValueError, match="fold_1 already holds a trained detector; pass --overwrite or --resume"):
        train_detector_folds(toy_work, "all", work_dir=tmp_path / "runs")
    # fold 0 was neither exported nor trained: the refusal came before any work
    assert not (tmp_path / "runs" / "fold_0").exists()
    assert (sorted(p.name for p in yolo.iterdir()) if yolo.exists() else None) == before
    with pytest.raises(FileNotFoundError, match="cannot resume: .*fold_0/weights/last.pt"):
        train_detector_folds(toy_work, "all", work_dir=tmp_path / "runs", resume=True)


@pytest.mark.slow
def test_yolo_trains_one_epoch_and_predicts_boxes_inside(yolo_export, tmp_path):
    from gating_fixtures import make_body_volume

    from gating.yolo_train import train_detector

    best = train_detector(yolo_export, tmp_path / "run", imgsz=64, epochs=1, batch=8, workers=0, device="cpu")
    assert best.is_file() and best.name in ("best.pt", "last.pt")
    assert os.environ["YOLO_OFFLINE"] == "1"
    assert Path(os.environ["YOLO_CONFIG_DIR"]).is_dir() and not os.environ["YOLO_CONFIG_DIR"].startswith(
        str(Path.home() / ".config")
    )
    # a second training into the same folder needs --overwrite
    with pytest.raises(ValueError, match="overwrite"):
        train_detector(yolo_export, tmp_path / "run", imgsz=64, epochs=1)
    det = Detector.load(best, "cpu", conf=0.0001, min_size=8)
    assert det.imgsz == 64
    vol, _ = make_body_volume(np.random.default_rng(3), 5, 64, 80)
    boxes = det.predict_boxes(vol, batch_size=2)
    assert boxes.shape == (5, 4) and boxes.dtype == np.int64
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 64).all()
    assert (boxes[:, 2] - boxes[:, 0] >= 8).all() and (boxes[:, 3] - boxes[:, 1] >= 8).all()
    assert det.last_stats["slices"] == 5
    assert det.last_stats["detected"] + det.last_stats["fallback"] >= 5 - det.last_stats["detected"]
    raw, found = det.predict_raw(vol, batch_size=5)
    assert found.any(), "with conf 1e-4 an untrained head still proposes boxes"
    assert (raw[found] >= -1).all() and (raw[found][:, [0, 2]] <= 81).all() and (raw[found][:, [1, 3]] <= 65).all()


def _load_tool(name):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_yolo_cli_on_an_unprepared_work_names_the_command(tmp_path, caplog):
    """The tool makes each fold's YOLO export itself; a WORK folder without splits is named with its command."""
    tool = _load_tool("train_yolo")
    with caplog.at_level(logging.ERROR):
        rc = tool.main(["--work", str(tmp_path), "--fold", "2", "--work-dir", str(tmp_path / "run")])
    assert rc == 2
    assert f"python -m data_prep splits --work {tmp_path}" in caplog.text and "prepare" in caplog.text
    assert not (tmp_path / "run").exists()


def test_boxes_for_a_work_folder(toy_work, tmp_path):
    import pandas as pd

    from gating.crop import predict_boxes_work

    manifest = pd.read_csv(toy_work / "manifest.csv")
    n_cd = manifest["case_day"].nunique()
    # case-day 1 gets a box on every slice, all others nothing
    per_image = []
    for cd, rows in manifest.groupby("case_day", sort=False):
        per_image += [[(5, 6, 30, 40, 0.9)] if cd == "case1_day0" else None] * len(rows)
    det = Detector(model=_fake(per_image), smooth_k=1, margin_frac=0.0, margin_px=0, min_size=1)
    totals = predict_boxes_work(det, toy_work, tmp_path / "boxes.csv", batch_size=7)
    assert totals == {"slices": 96, "detected": 16, "fallback": 80, "case_days_without_box": n_cd - 1}
    df = pd.read_csv(tmp_path / "boxes.csv")
    assert df.columns.tolist() == ["id", "x0", "y0", "x1", "y1", "fallback"]
    assert df["id"].tolist() == manifest["id"].tolist()
    one = df[df["id"].str.startswith("case1_day0_")]
    assert (one[["x0", "y0", "x1", "y1"]].to_numpy() == [5, 6, 30, 40]).all() and (one["fallback"] == 0).all()
    rest = df[~df["id"].str.startswith("case1_day0_")]
    assert (rest[["x0", "y0", "x1", "y1"]].to_numpy() == [0, 0, 48, 48]).all() and (rest["fallback"] == 1).all()
