"""Synthetic data: the Kaggle layout read back, realistic statistics, determinism, overwrite rules, CLI."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_prep.constants import CLASSES, REAL_SIZES
from data_prep.layout import read_labels, read_layout, read_scan
from data_prep.rle import RLEError, rle_decode, rle_encode
from data_prep.synth import register, render_from_labels, scan_name, synthesize
from data_prep.synth.shapes import _plan


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_reads_back_through_the_layout_reader(synth_root: Path, synth_kw: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no missing rows, no gaps, no 8-bit scans
        train = read_layout(synth_root, labels=synth_root / "train.csv", strict=True)
        test = read_layout(synth_root, split="test", labels=synth_root / "test_truth.csv", strict=True)
    assert sorted(p.name for p in synth_root.iterdir()) == [
        "sample_submission.csv",
        "test",
        "test_truth.csv",
        "train",
        "train.csv",
    ]
    assert (synth_root / "sample_submission.csv").read_text() == "id,class,predicted\n"
    assert set(train["case"]).isdisjoint(set(test["case"]))
    assert train["case"].nunique() == synth_kw["cases"] and test["case"].nunique() == synth_kw["test_cases"]
    days = train.groupby("case")["day"].nunique()
    assert days.between(1, 3).all()
    assert (train.groupby("case_day").size() == synth_kw["slices"]).all()
    assert set(zip(train["width"], train["height"], strict=True)) <= set(synth_kw["sizes"])
    assert (train["px_w"] == 1.5).all()
    # train.csv: three rows per slice in CLASSES order, manifest order.
    raw = pd.read_csv(synth_root / "train.csv", dtype=str, keep_default_na=False)
    assert raw["class"].tolist() == list(CLASSES) * len(train)
    assert raw["id"].tolist()[::3] == train["id"].tolist()
    img = read_scan(train["path"][0], expected_hw=(train["height"][0], train["width"][0]))
    assert img.dtype == np.uint16


def test_class_presence_and_overlap_within_bounds(synth_root: Path) -> None:
    """Per-slice presence near the real data's (large 0.37, small 0.29, stomach 0.22, any 0.43)."""
    df = read_layout(synth_root, labels=synth_root / "train.csv")
    pres = df[list(CLASSES)] != ""
    frac = pres.mean()
    assert 0.2 <= frac["large_bowel"] <= 0.65
    assert 0.1 <= frac["small_bowel"] <= 0.55
    assert 0.05 <= frac["stomach"] <= 0.45
    assert 0.3 <= pres.any(axis=1).mean() <= 0.7  # about half of the slices are empty
    assert (pres.sum(axis=1) >= 2).mean() >= 0.1  # many slices hold two or more classes
    # Every case-day starts and ends empty, and the organs start on different slices.
    for _, g in df.groupby("case_day"):
        p = (g[list(CLASSES)] != "").to_numpy()
        assert not p[0].any() and not p[-1].any()
        first = [int(np.argmax(p[:, c])) if p[:, c].any() else -1 for c in range(3)]
        assert len(set(first)) >= 2


def test_intensities_are_tied_to_organs(synth_root: Path) -> None:
    """Per image (scaled by its own 99th percentile): stomach bright, small bowel bright, large bowel dark."""
    df = read_layout(synth_root, labels=synth_root / "train.csv")
    means: dict[str, list[float]] = {c: [] for c in CLASSES}
    body: list[float] = []
    for r in df.itertuples():
        img = read_scan(r.path).astype(np.float32)
        img /= np.percentile(img, 99)
        masks = [rle_decode(getattr(r, c), (r.height, r.width)) > 0 for c in CLASSES]
        for c, m in zip(CLASSES, masks, strict=True):
            if m.sum() >= 10:
                means[c].append(float(img[m].mean()))
        if any(m.any() for m in masks):
            fg = img > 0.15
            rest = fg & ~np.logical_or.reduce(masks)
            body.append(float(np.median(img[rest])))
    lb, sb, st = (float(np.mean(means[c])) for c in CLASSES)
    bg = float(np.mean(body))
    assert min(len(v) for v in means.values()) >= 5
    assert lb < bg - 0.1
    assert sb > bg + 0.15 and st > bg + 0.2


def test_plan_matches_the_real_data() -> None:
    plan = _plan(cases=60, test_cases=10, seed=3, slices=None, sizes=list(REAL_SIZES))
    df = pd.DataFrame(plan, columns=["split", "case", "day", "depth", "w", "h", "px"])
    assert set(zip(df["w"], df["h"], strict=True)) == set(REAL_SIZES)
    assert set(df["depth"]) == {144, 80}
    assert df.groupby("case")["depth"].nunique().max() == 1
    assert df.groupby("case")["day"].nunique().between(1, 3).all()
    assert set(df.loc[df["w"] == 276, "px"]) == {1.63} and set(df.loc[df["w"] != 276, "px"]) == {1.5}
    assert set(df.loc[df["split"] == "train", "case"]).isdisjoint(df.loc[df["split"] == "test", "case"])
    assert df.groupby("split")["case"].nunique().to_dict() == {"test": 10, "train": 60}
    assert scan_name(7, 360, 310, 1.5) == "slice_0007_360_310_1.50_1.50.png"


def test_same_seed_same_bytes_any_workers(tmp_path: Path) -> None:
    kw = dict(cases=2, seed=11, test_cases=1, slices=6, sizes=[(64, 56)])
    synthesize(tmp_path / "a", **kw)
    synthesize(tmp_path / "b", workers=2, **kw)
    synthesize(tmp_path / "c", **{**kw, "seed": 12})
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert len(a) > 10 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)
    assert a != c


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    kw = dict(cases=1, seed=1, slices=4, sizes=[(48, 40)])
    out = tmp_path / "data"
    synthesize(out, test_cases=1, **kw)
    (out / "mine.txt").write_text("user file")
    with pytest.raises(FileExistsError, match=r"already holds a dataset.*--overwrite"):
        synthesize(out, **kw)
    synthesize(out, overwrite=True, **kw)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["mine.txt", "train", "train.csv"]  # the stale test/ tree is gone, the user's file stays
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(cases=0), "cases must be >= 1"),
        (dict(cases=1, slices=0), "slices must be >= 1"),
        (dict(cases=1, workers=0), "workers must be >= 1"),
        (dict(cases=1, sizes=[(16, 16)]), "at least 32x32"),
        (dict(cases=1, sizes=[]), "sizes is empty"),
    ],
)
def test_bad_arguments(tmp_path: Path, kw: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        synthesize(tmp_path / "x", seed=0, **kw)


def _label_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two case-days of 3 slices at 64x48; a stomach square on case3_day1 slice 2."""
    man, lab = [], []
    m = np.zeros((48, 64), np.uint8)
    m[20:30, 30:40] = 1
    for case, day in ((3, 1), (12, 0)):
        for s in (1, 2, 3):
            sid = f"case{case}_day{day}_slice_{s:04d}"
            man.append((sid, case, day, s, 64, 48, 1.5, 1.5, f"train/case{case}/case{case}_day{day}/scans/x{s}.png"))
            for c in CLASSES:
                rle = rle_encode(m) if (c == "stomach" and sid == "case3_day1_slice_0002") else ""
                lab.append((sid, c, rle))
    man_df = pd.DataFrame(man, columns=["id", "case", "day", "slice", "width", "height", "px_w_mm", "px_h_mm", "k"])
    return pd.DataFrame(lab, columns=["id", "class", "segmentation"]), man_df.drop(columns="k")


def test_render_from_labels(tmp_path: Path) -> None:
    lab, man = _label_inputs()
    out = tmp_path / "r"
    summary = render_from_labels(out, lab, man, seed=5)
    assert summary["case_days"] == 2 and summary["slices"] == 6
    df = read_layout(out, labels=out / "train.csv", strict=True)
    assert df["id"].tolist() == man["id"].tolist()
    assert pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False).equals(lab)
    r = df.iloc[1]
    img = read_scan(r["path"]).astype(np.float32)
    m = rle_decode(r["stomach"], (48, 64)) > 0
    assert m.sum() == 100
    ring = cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~m
    assert img[m].mean() > 1.5 * img[ring].mean()  # the organ is painted where its mask is
    only = tmp_path / "only"
    assert render_from_labels(only, lab, man, case_days=["case12_day0"])["slices"] == 3
    assert read_labels(only / "train.csv")["id"].str.startswith("case12_day0").all()


def test_render_from_labels_errors(tmp_path: Path) -> None:
    lab, man = _label_inputs()
    with pytest.raises(ValueError, match=r"not in the manifest: \['case3_day2'\].*case3_day1"):
        render_from_labels(tmp_path / "a", lab, man, case_days=["case3_day2"])
    bad = lab.copy()
    bad.loc[4, "segmentation"] = "3070 10"  # past the end of a 64x48 slice (3072 pixels)
    with pytest.raises(RLEError, match="labels DataFrame: .*case3_day1_slice_0002/small_bowel"):
        render_from_labels(tmp_path / "b", bad, man)
    assert not (tmp_path / "b").exists()  # checked before anything is written
    with pytest.raises(ValueError, match=r"missing column\(s\) \['height'\]"):
        render_from_labels(tmp_path / "c", lab, man.drop(columns="height"))
    with pytest.raises(FileNotFoundError, match="scan manifest"):
        render_from_labels(tmp_path / "d", lab, tmp_path / "none.csv")


def test_real_case_day_rendered(tmp_path: Path, real_labels_path: Path, real_manifest_path: Path) -> None:
    out = tmp_path / "real"
    render_from_labels(out, real_labels_path, real_manifest_path, case_days=["case123_day20"], seed=1)
    df = read_layout(out, labels=out / "train.csv", strict=True)
    assert len(df) == 144 and df["case_day"].unique().tolist() == ["case123_day20"]
    r = df.set_index("id").loc["case123_day20_slice_0065"]
    assert int(rle_decode(r["stomach"], (r["height"], r["width"])).sum()) == 156


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = _parser().parse_args(
        ["synth", "--out", str(out), "--cases", "1", "--seed", "4", "--slices", "5", "--sizes", "48x40"]
    )
    assert args.func(args) == 0
    df = read_layout(out, labels=out / "train.csv", strict=True)
    assert len(df) % 5 == 0 and set(df["width"]) == {48} and set(df["height"]) == {40}
    for bad in (
        ["--cases", "1", "--labels", "x.csv"],
        ["--labels", "x.csv", "--manifest", "m.csv", "--cases", "2"],
        [],
    ):
        args = _parser().parse_args(["synth", "--out", str(tmp_path / "e"), *bad])
        with pytest.raises(SystemExit):
            args.func(args)
    with pytest.raises(SystemExit):
        _parser().parse_args(["synth", "--out", "x", "--sizes", "48by40"])
