"""The layout reader: a good tree read to values, and each bad input with its message."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_prep import layout
from data_prep.constants import CLASSES
from data_prep.layout import LayoutWarning, png_header, read_labels, read_layout, read_scan
from data_prep.rle import RLEError, rle_encode

W, H = 8, 6


def _scan(root: Path, case: int, day: int, slc: int, w: int = W, h: int = H, px: str = "1.50", **kw) -> Path:
    """Write a uint16 scan (value = slice number * 100) named for (w, h) unless told otherwise."""
    folder = root / "train" / f"case{case}" / f"case{case}_day{day}" / "scans"
    folder.mkdir(parents=True, exist_ok=True)
    img_w, img_h = kw.get("img_w", w), kw.get("img_h", h)
    img = np.full((img_h, img_w), slc * 100, kw.get("dtype", np.uint16))
    path = folder / f"slice_{slc:04d}_{w}_{h}_{px}_{px}.png"
    assert cv2.imwrite(str(path), img)
    return path


def _tree(root: Path) -> Path:
    """case2 (day1: slices 1-3), case10 (day0: slices 1-2, 276x276-style spacing 1.63)."""
    for s in (1, 2, 3):
        _scan(root, 2, 1, s)
    for s in (1, 2):
        _scan(root, 10, 0, s, px="1.63")
    return root


def _labels(ids: list[str], stomach: dict[str, str] | None = None) -> pd.DataFrame:
    stomach = stomach or {}
    rows = [(i, c, stomach.get(i, "") if c == "stomach" else "") for i in ids for c in CLASSES]
    return pd.DataFrame(rows, columns=["id", "class", "segmentation"])


ALL_IDS = [f"case2_day1_slice_000{s}" for s in (1, 2, 3)] + [f"case10_day0_slice_000{s}" for s in (1, 2)]


def test_good_tree_values(tmp_path: Path) -> None:
    _tree(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean tree warns about nothing
        df = read_layout(tmp_path, strict=True)
    assert list(df.columns) == list(layout.MANIFEST_COLUMNS)
    assert df["id"].tolist() == ALL_IDS  # numeric order: case2 before case10
    assert df["case"].tolist() == [2, 2, 2, 10, 10]
    assert df["day"].tolist() == [1, 1, 1, 0, 0]
    assert df["slice"].tolist() == [1, 2, 3, 1, 2]
    assert df["case_day"].tolist() == ["case2_day1"] * 3 + ["case10_day0"] * 2
    assert (df["width"] == W).all() and (df["height"] == H).all()
    assert df["px_w"].tolist() == [1.5, 1.5, 1.5, 1.63, 1.63] and df["px_h"].tolist() == df["px_w"].tolist()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert Path(df["path"][3]).name == "slice_0001_8_6_1.63_1.63.png"
    img = read_scan(df["path"][2], expected_hw=(H, W))
    assert img.dtype == np.uint16 and img.shape == (H, W) and int(img[0, 0]) == 300


def test_labels_joined(tmp_path: Path) -> None:
    _tree(tmp_path)
    m = np.zeros((H, W), np.uint8)
    m[2, 3:6] = 1
    lab = _labels(ALL_IDS, {"case10_day0_slice_0002": rle_encode(m)})
    csv = tmp_path / "train.csv"
    lab.to_csv(csv, index=False)
    for given in (csv, lab):
        df = read_layout(tmp_path, labels=given, strict=True)
        assert list(df.columns) == [*layout.MANIFEST_COLUMNS, *CLASSES]
        assert df["stomach"].tolist() == ["", "", "", "", "20 3"]
        assert (df[["large_bowel", "small_bowel"]] == "").all().all()


def test_missing_tree_and_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_layout(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        read_layout(tmp_path, split="train")
    assert str(tmp_path / "train") in str(err.value) and "other" in str(err.value)


def test_empty_tree(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="holds no scans"):
        read_layout(tmp_path)


def test_names_off_pattern_are_listed(tmp_path: Path) -> None:
    _tree(tmp_path)
    scans = tmp_path / "train" / "case2" / "case2_day1" / "scans"
    (scans / "slice_1_8_6.png").write_bytes(b"")
    (scans / "notes.txt").write_text("x")
    (tmp_path / "train" / "case2" / "case3_day0").mkdir()  # case-day of another case
    (scans / ".DS_Store").write_text("hidden files are ignored")
    with pytest.raises(ValueError) as err:
        read_layout(tmp_path)
    msg = str(err.value)
    assert msg.startswith("3 path(s)")
    for name in ("slice_1_8_6.png", "notes.txt", "case3_day0"):
        assert name in msg
    assert ".DS_Store" not in msg


def test_missing_scans_folder(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "train" / "case4" / "case4_day2").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"case4_day2/scans \(missing scans/ folder\)"):
        read_layout(tmp_path)


def test_png_size_differs_from_name(tmp_path: Path) -> None:
    _tree(tmp_path)
    bad = _scan(tmp_path, 2, 1, 4, img_w=9, img_h=6)
    with pytest.raises(ValueError) as err:
        read_layout(tmp_path)
    assert "1 scan(s)" in str(err.value) and bad.name in str(err.value)
    assert "name says 8x6, image is 9x6" in str(err.value)
    df = read_layout(tmp_path, check_images=False)  # the check can be skipped; read_scan still catches it
    with pytest.raises(ValueError, match=r"is 6x9 \(HxW\); expected 6x8"):
        read_scan(df["path"][3], expected_hw=(H, W))


def test_not_a_png(tmp_path: Path) -> None:
    _tree(tmp_path)
    junk = tmp_path / "train" / "case2" / "case2_day1" / "scans" / "slice_0004_8_6_1.50_1.50.png"
    junk.write_bytes(b"GIF89a not a png at all, long enough to fill a header")
    with pytest.raises(ValueError, match="not a PNG"):
        read_layout(tmp_path)
    with pytest.raises(ValueError, match="slice_0004_8_6_1.50_1.50.png"):
        png_header(junk)


def test_truncated_png(tmp_path: Path) -> None:
    path = _scan(tmp_path, 1, 0, 1, w=64, h=48)
    data = path.read_bytes()
    assert png_header(path) == (64, 48, 16, 0)
    path.write_bytes(data[: len(data) // 2])
    assert png_header(path) == (64, 48, 16, 0)  # the header is intact, the image is not
    with pytest.raises(ValueError, match=r"cannot be decoded \(truncated"):
        read_scan(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_scan(tmp_path / "missing.png")


def test_color_png_rejected(tmp_path: Path) -> None:
    _tree(tmp_path)
    folder = tmp_path / "train" / "case2" / "case2_day1" / "scans"
    rgb = folder / "slice_0004_8_6_1.50_1.50.png"
    cv2.imwrite(str(rgb), np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match="not 8- or 16-bit single-channel grayscale.*colour type 2"):
        read_layout(tmp_path)
    with pytest.raises(ValueError, match="single-channel"):
        read_scan(rgb)


def test_eight_bit_scans_accepted_with_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    p8 = _scan(tmp_path, 2, 1, 2, dtype=np.uint8)  # replaces the 16-bit slice 2: value 200 as uint8
    with pytest.warns(LayoutWarning, match="1 of 5 scans are 8-bit"):
        df = read_layout(tmp_path)
    assert len(df) == 5
    monkeypatch.setattr(layout, "_warned_8bit", False)
    with pytest.warns(LayoutWarning, match="8-bit"):
        img = read_scan(p8)
    assert img.dtype == np.uint16 and int(img.max()) == 200  # values unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process
        read_scan(p8)


def test_duplicate_slice_numbers(tmp_path: Path) -> None:
    _tree(tmp_path)
    _scan(tmp_path, 2, 1, 3, w=9, img_w=9)
    with pytest.raises(ValueError, match="share a slice number"):
        read_layout(tmp_path)


def test_slice_gap_warns_or_fails_when_strict(tmp_path: Path) -> None:
    _tree(tmp_path)
    _scan(tmp_path, 2, 1, 6)  # slices 4 and 5 missing
    with pytest.warns(LayoutWarning, match=r"1 case-day\(s\) have missing slices.*case2_day1 lacks slice\(s\) 4, 5"):
        df = read_layout(tmp_path)
    assert df["slice"].tolist() == [1, 2, 3, 6, 1, 2]
    with pytest.raises(ValueError, match="case2_day1 lacks slice"):
        read_layout(tmp_path, strict=True)


def test_label_scan_mismatch_counts(tmp_path: Path) -> None:
    _tree(tmp_path)
    ids = ALL_IDS[:-1] + ["case5_day0_slice_0001", "case5_day0_slice_0002"]  # one scan unlabelled, two orphan ids
    lab = _labels(ids, {"case2_day1_slice_0002": "1 4"})
    with pytest.warns(LayoutWarning) as rec:
        df = read_layout(tmp_path, labels=lab)
    msg = str(rec[0].message)
    assert "2 id(s) of labels DataFrame have no scan" in msg and "case5_day0_slice_0001" in msg
    assert "1 scan(s)" in msg and "case10_day0_slice_0002" in msg
    assert len(df) == 5 and df.loc[4, "stomach"] == "" and df.loc[1, "stomach"] == "1 4"
    with pytest.raises(ValueError, match="strict mode"):
        read_layout(tmp_path, labels=lab, strict=True)


def test_bad_rle_in_labels_names_row_and_file(tmp_path: Path) -> None:
    _tree(tmp_path)
    csv = tmp_path / "train.csv"
    # 40 + 10 > 48 = H * W: fine for a bigger image, not for this slice.
    _labels(ALL_IDS, {"case2_day1_slice_0003": "40 10"}).to_csv(csv, index=False)
    with pytest.raises(RLEError) as err:
        read_layout(tmp_path, labels=csv)
    msg = str(err.value)
    assert str(csv) in msg and "case2_day1_slice_0003/stomach" in msg and "past the image end (48 pixels)" in msg
    _labels(ALL_IDS, {"case10_day0_slice_0001": "3 2 x 1"}).to_csv(csv, index=False)
    with pytest.raises(RLEError) as err:
        read_layout(tmp_path, labels=csv)
    assert "non-integer value 'x'" in str(err.value) and "case10_day0_slice_0001/stomach" in str(err.value)


def test_read_labels_wide_and_errors(tmp_path: Path) -> None:
    csv = tmp_path / "train.csv"
    csv.write_text(
        "id,class,segmentation\n"
        "case1_day0_slice_0001,large_bowel,1 2\n"
        "case1_day0_slice_0001,stomach,\n"
        "case1_day0_slice_0002,small_bowel,5 1\n"
    )
    wide = read_labels(csv)
    assert list(wide.columns) == ["id", *CLASSES]
    assert wide["id"].tolist() == ["case1_day0_slice_0001", "case1_day0_slice_0002"]
    assert wide.loc[0].tolist()[1:] == ["1 2", "", ""]  # absent class rows are empty
    assert wide.loc[1].tolist()[1:] == ["", "5 1", ""]
    assert wide.attrs["source"] == str(csv)

    with pytest.raises(FileNotFoundError, match="nope.csv not found"):
        read_labels(tmp_path / "nope.csv")
    (tmp_path / "cols.csv").write_text("id,cls,rle\ncase1_day0_slice_0001,stomach,\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['class', 'segmentation'\]"):
        read_labels(tmp_path / "cols.csv")
    (tmp_path / "cls.csv").write_text("id,class,segmentation\ncase1_day0_slice_0001,liver,\n")
    with pytest.raises(ValueError, match=r"unknown class name\(s\) \['liver'\]"):
        read_labels(tmp_path / "cls.csv")
    (tmp_path / "ids.csv").write_text("id,class,segmentation\nslice7,stomach,\n")
    with pytest.raises(ValueError, match="not of the form.*slice7"):
        read_labels(tmp_path / "ids.csv")
    (tmp_path / "dup.csv").write_text(
        "id,class,segmentation\ncase1_day0_slice_0001,stomach,\ncase1_day0_slice_0001,stomach,1 1\n"
    )
    with pytest.raises(ValueError, match="appear more than once: case1_day0_slice_0001/stomach"):
        read_labels(tmp_path / "dup.csv")
    nan = pd.DataFrame({"id": ["case1_day0_slice_0001"], "class": ["stomach"], "segmentation": [np.nan]})
    assert read_labels(nan).loc[0, "stomach"] == ""


def test_real_slices(real_slices_root: Path) -> None:
    """The two real 16-bit scans in the Kaggle layout, with their label rows."""
    df = read_layout(real_slices_root, labels=real_slices_root / "train.csv", strict=True)
    assert df["id"].tolist() == ["case2_day2_slice_0081", "case55_day0_slice_0051"]
    assert (df["width"] == 266).all() and (df["height"] == 266).all()
    assert df.loc[0, "large_bowel"].startswith("18536 6 18800 12")
    assert df.loc[1, "large_bowel"] == "" and df.loc[1, "stomach"] != ""
    img = read_scan(df.loc[1, "path"], expected_hw=(266, 266))
    assert img.dtype == np.uint16 and int(img.max()) == 10081
