"""The RLE codec: hand-computed strings, round trips at every real size, malformed input, the real labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_prep.constants import CLASSES, REAL_SIZES
from data_prep.rle import RLEError, rle_area, rle_decode, rle_encode, rle_runs


def test_hand_computed_row_major_one_indexed() -> None:
    m = np.zeros((3, 4), np.uint8)
    m[0, 1] = 1  # pixel 2 in row-major order (column-major would make it pixel 4)
    m[1, 3] = m[2, 0] = 1  # a run that wraps from the end of row 1 into row 2: pixels 8 and 9
    assert rle_encode(m) == "2 1 8 2"
    assert rle_encode(np.ones((2, 3), bool)) == "1 6"
    assert rle_encode(np.zeros((5, 5))) == ""
    last = np.zeros((4, 4), np.uint8)
    last[3, 3] = 255  # any non-zero value is foreground
    assert rle_encode(last) == "16 1"
    dec = rle_decode("2 1 8 2", (3, 4))
    assert dec.dtype == np.uint8 and dec.shape == (3, 4)
    assert np.array_equal(dec, m)
    assert rle_area("2 1 8 2", 12) == 3


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan")])
def test_empty_inputs_decode_to_zeros(empty: object) -> None:
    out = rle_decode(empty, (4, 6))
    assert out.shape == (4, 6) and out.sum() == 0
    assert rle_area(empty, 24) == 0


@pytest.mark.parametrize("size", REAL_SIZES)
def test_round_trip_random_masks_every_real_size(size: tuple[int, int]) -> None:
    w, h = size
    rng = np.random.default_rng(w * 1000 + h)
    yy, xx = np.mgrid[0:h, 0:w]
    for density in (0.01, 0.3, 0.9):
        noise = rng.random((h, w)) < density
        disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 5) ** 2
        for m in (noise, disc, noise | disc):
            s = rle_encode(m)
            back = rle_decode(s, (h, w))
            assert np.array_equal(back, m.astype(np.uint8))
            assert rle_area(s, h * w) == int(m.sum())
            starts, lengths = rle_runs(s, h * w)
            assert (starts[1:] > starts[:-1] + lengths[:-1]).all()  # runs are maximal: never adjacent


@pytest.mark.parametrize(
    ("rle", "size", "words"),
    [
        ("1 2 3", 20, "odd number"),
        ("1 a", 20, "non-integer value 'a'"),
        ("1.5 2", 20, "non-integer value '1.5'"),
        ("0 3", 20, "start below 1"),
        ("-2 3", 20, "start below 1"),
        ("4 0", 20, "length not positive"),
        ("18 5", 20, "past the image end (20 pixels)"),
        ("1 5 3 2", 20, "overlapping"),
        ("10 2 1 2", 20, "unsorted"),
    ],
)
def test_malformed_rle_names_the_row(rle: str, size: int, words: str) -> None:
    row = "case9_day4_slice_0033/stomach"
    with pytest.raises(RLEError) as err:
        rle_decode(rle, (size // 5, 5), row_id=row)
    assert words in str(err.value)
    assert row in str(err.value)
    assert isinstance(err.value, ValueError)


def test_touching_runs_are_valid_input() -> None:
    # Pixels 1-5 then 6-7: valid (the encoder never writes it, it merges them).
    starts, lengths = rle_runs("1 5 6 2", 20, "x")
    assert starts.tolist() == [0, 5] and lengths.tolist() == [5, 2]
    assert rle_encode(rle_decode("1 5 6 2", (4, 5))) == "1 7"


def test_non_string_rle_is_rejected() -> None:
    with pytest.raises(RLEError, match="must be a string.*case1_day0_slice_0001"):
        rle_runs(12, 20, "case1_day0_slice_0001")


def test_real_labels(real_labels_path, real_manifest_path) -> None:
    """The real train.csv: known counts, a known mask area, and encode(decode(s)) == s for every non-empty row."""
    labels = pd.read_csv(real_labels_path, dtype=str, keep_default_na=False)
    man = pd.read_csv(real_manifest_path, usecols=["id", "width", "height"])
    assert len(labels) == 115_488 and len(man) == 38_496
    nonempty = labels[labels["segmentation"] != ""].merge(man, on="id", how="left", validate="many_to_one")
    assert nonempty["width"].notna().all()
    counts = nonempty["class"].value_counts().to_dict()
    assert counts == {"large_bowel": 14_085, "small_bowel": 11_201, "stomach": 8_627}
    assert set(counts) == set(CLASSES)

    row = nonempty[(nonempty["id"] == "case123_day20_slice_0065") & (nonempty["class"] == "stomach")].iloc[0]
    mask = rle_decode(row["segmentation"], (int(row["height"]), int(row["width"])), row_id=row["id"])
    assert int(mask.sum()) == 156

    bad = []
    for rid, cls, s, w, h in zip(
        nonempty["id"], nonempty["class"], nonempty["segmentation"], nonempty["width"], nonempty["height"], strict=True
    ):
        if rle_encode(rle_decode(s, (h, w), row_id=rid)) != s:
            bad.append(f"{rid}/{cls}")
    assert bad == []
