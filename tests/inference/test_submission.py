"""Submission rows: RLE per slice and class, and the sample submission's order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_prep.constants import CLASSES
from data_prep.rle import rle_decode
from inference.submission import encode_rows, order_rows


def test_encode_rows_decode_back():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 3, 6, 7)) > 0.6
    masks[1, 2] = False
    ids = [f"case9_day1_slice_{i:04d}" for i in range(1, 5)]
    rows = encode_rows(ids, masks)
    assert len(rows) == 12
    assert [r[1] for r in rows[:3]] == list(CLASSES) and [r[0] for r in rows[::3]] == ids
    assert rows[1 * 3 + 2][2] == ""
    for i, (_sid, _cls, rle) in enumerate(rows):
        z, c = divmod(i, 3)
        assert (rle_decode(rle, (6, 7)) == masks[z, c]).all()


def test_order_rows():
    rows = pd.DataFrame(
        [(f"case1_day0_slice_000{z}", c, f"{z}{c[0]}") for z in (1, 2) for c in CLASSES],
        columns=["id", "class", "predicted"],
    )
    sample = rows[["id", "class"]].iloc[::-1].reset_index(drop=True)
    out = order_rows(rows, sample)
    assert out["id"].tolist() == sample["id"].tolist() and out["predicted"].tolist()[0] == "2s"
    assert order_rows(rows, sample.iloc[:0])["id"].tolist() == rows["id"].tolist()
    bad = pd.concat([sample, pd.DataFrame([("case7_day0_slice_0001", "stomach")], columns=["id", "class"])])
    with pytest.raises(ValueError, match="sample_submission.csv: 1 id.*case7_day0_slice_0001"):
        order_rows(rows, bad)
