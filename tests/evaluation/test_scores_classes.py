"""Evaluation for any class list: score tables named by the dataset's classes, the 3D Dice per volume, folders of
label volumes scored by file name, the palette and pictures for 1 to 30 classes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from common.viz import CLASS_COLORS, blend, class_colors, save_montage, save_overlay
from data_prep.work import read_dataset
from evaluation.classification import classification_metrics
from evaluation.metric import (
    aggregate,
    dsc_3d,
    score_case_day,
    score_volumes,
    slice_dice_table,
)
from evaluation.pictures import visualize_volume
from evaluation.predictions import PREDICTION_FORMATS, PredictionIndex, prediction_files
from evaluation.scoring import score_folders, write_report

REPO = Path(__file__).resolve().parents[2]
_fx = importlib.util.spec_from_file_location("nclass_fixtures", REPO / "tests" / "inference" / "nclass_fixtures.py")
fx = importlib.util.module_from_spec(_fx)
_fx.loader.exec_module(fx)
FIVE = fx.FIVE


def test_tables_take_the_class_names():
    t = np.zeros((2, 5, 4, 4), bool)
    t[0, 4, :2, :2] = True  # 4 px of pancreas on slice 0
    p = t.copy()
    p[0, 4, 2, 2] = True  # one false positive pixel: Dice 8/9 on that slice
    res = score_volumes({"v": p}, {"v": t}, classes=FIVE)
    assert res.per_class["class"].tolist() == [*FIVE, "all"]
    pc = res.per_class.set_index("class")
    assert pc.loc["pancreas", "dice"] == pytest.approx((8 / 9 + 1) / 2)  # slice 1: both empty -> 1
    assert pc.loc["liver", "dice"] == 1.0 and "dice_spleen" in res.per_case_day.columns
    with pytest.raises(ValueError, match="5 classes, but no class names were given; pass classes="):
        score_volumes({"v": p}, {"v": t})
    with pytest.raises(ValueError, match="5 class channels, but 2 class names"):
        aggregate([score_case_day("v", p, t)], classes=("a", "b"))
    tab = slice_dice_table(np.array([[0, 0, 0, 0, 4]]), np.array([[0, 0, 0, 0, 5]]), np.array([[0, 0, 0, 0, 4]]), FIVE)
    assert tab["dice_pancreas"] == pytest.approx(8 / 9) and np.isnan(tab["dice_liver"])
    assert tab["dice"] == pytest.approx((4 + 8 / 9) / 5)
    m = classification_metrics(np.array([[0.9] * 5, [0.1] * 5]), np.array([[1] * 5, [0] * 5]), classes=FIVE)
    assert m["auc_pancreas"] == 1.0 and m["f1_liver"] == 1.0 and m["mean_f1"] == 1.0


def test_dsc_3d_by_hand():
    # class 0: |P ∩ T| = 2 + 1, |P| = 3 + 1, |T| = 3 + 2 -> 6 / 9; class 1: empty in both -> 1 (or NaN with skip)
    counts = np.array([[[2, 3, 3], [0, 0, 0]], [[1, 1, 2], [0, 0, 0]]])
    assert dsc_3d(counts).tolist() == pytest.approx([6 / 9, 1.0])
    assert np.isnan(dsc_3d(counts, "skip")[1])


def test_score_folders_matches_keys_and_hand_values(tmp_path, monkeypatch):
    fmt = fx.fake_format()
    monkeypatch.setitem(PREDICTION_FORMATS, "slices", fmt)
    work, truth = fx.make_work(tmp_path / "work", keys=("v1", "v2"), shape=(3, 6, 6))
    info = read_dataset(work)
    truth_dir = fx.write_truth_folder(work, tmp_path / "truth", fmt)
    pred = {k: t.copy() for k, t in truth.items()}
    pred["v2"][:, 1] = False  # kidney_l missed in v2: 3D Dice 0 there (it has some)
    assert truth["v2"][:, 1].any()
    index = PredictionIndex(tmp_path / "pred", {"format": "slices"})
    for k, p in pred.items():
        index.add(k, fmt.write_prediction(p, info, k, tmp_path / "pred"))
    assert prediction_files(tmp_path / "pred") == {k: tmp_path / "pred" / f"{k}.npy" for k in pred}
    res = score_folders(truth_dir, tmp_path / "pred", info)
    tab = res.dsc_3d.set_index("case_day")
    assert tab.loc["v1"].tolist() == [1.0] * 5 and tab.loc["v2", "dsc_kidney_l"] == 0.0
    assert tab.loc["v2"].drop("dsc_kidney_l").tolist() == [1.0] * 4
    pc = res.per_class.set_index("class")
    assert pc.loc["kidney_l", "dsc_3d"] == 0.5 and pc.loc["all", "dsc_3d"] == pytest.approx(0.9)
    assert pc.loc["liver", "score"] == 1.0 and pc.loc["kidney_l", "hausdorff"] == pytest.approx(0.5)
    js, md = write_report(res, tmp_path / "score.json")
    assert "3D Dice per volume and class" in md.read_text() and '"dsc_3d"' in js.read_text()
    # a truth volume without prediction is named
    (tmp_path / "pred" / "v2.npy").unlink()
    (tmp_path / "pred" / "predictions.json").unlink()
    with pytest.raises(ValueError, match=r"no prediction for 1 volume\(s\) of .*truth: v2.npy"):
        score_folders(truth_dir, tmp_path / "pred", info)


def test_palette_distinct_and_stable():
    assert class_colors(3) == CLASS_COLORS and class_colors(30)[:5] == class_colors(5)
    cols = class_colors(30)
    assert len(set(cols)) == 30 and all(0 <= v <= 1 for c in cols for v in c)
    # the closest two of 30 colours still differ visibly
    a = np.array(cols)
    d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1)) + np.eye(30) * 9
    assert d.min() > 0.05
    img = np.zeros((2, 2), np.uint16)
    m = np.zeros((5, 2, 2), bool)
    m[4, 0, 0] = True
    rgb = blend(img, m, alpha=0.5)
    assert rgb[0, 0] == pytest.approx(0.5 * np.array(class_colors(5)[4])) and (rgb[1, 1] == 0).all()


@pytest.mark.parametrize("n", [1, 5, 30])
def test_pictures_for_any_number_of_classes(tmp_path, n):
    rng = np.random.default_rng(n)
    vol = rng.integers(0, 1000, (4, 12, 12)).astype(np.uint16)
    masks = rng.random((4, n, 12, 12)) > 0.8
    names = [f"organ_{i}" for i in range(n)]
    a = save_overlay(tmp_path / "o.png", vol[0], masks[0], masks[1], title="s", classes=names)
    b = save_montage(tmp_path / "m.png", vol, masks, classes=names)
    assert a.stat().st_size > 1000 and b.stat().st_size > 1000
    with pytest.raises(ValueError, match="class names"):
        save_overlay(tmp_path / "x.png", vol[0], masks[0], None, classes=names + ["extra"])


def test_visualize_volume_of_a_work(tmp_path, monkeypatch):
    fmt = fx.fake_format()
    monkeypatch.setitem(PREDICTION_FORMATS, "slices", fmt)
    work, truth = fx.make_work(tmp_path / "work", keys=("v1",), shape=(4, 10, 12))
    info = read_dataset(work)
    fmt.write_prediction(truth["v1"], info, "v1", tmp_path / "pred")
    files = visualize_volume(work, "v1", tmp_path / "pics", pred=tmp_path / "pred", slices=2)
    assert [f.name for f in files][0] == "v1_montage.png" and len(files) == 3
    assert all(f.name.startswith("v1") and f.stat().st_size > 1000 for f in files)
    with pytest.raises(ValueError, match="no volume 'v9'"):
        visualize_volume(work, "v9", tmp_path / "pics")
