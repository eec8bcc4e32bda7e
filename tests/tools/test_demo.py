"""The demo pipeline at its smallest size: every step runs, every artefact exists, the submission is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from data_prep.constants import CLASSES
from data_prep.layout import read_layout
from data_prep.rle import rle_decode

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_tiny(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "tools/demo.py", "--size", "tiny", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # the submission: 3 rows per test slice, in manifest order and class order, RLE valid for each image size
    test = read_layout(out / "data", "test", check_images=False)
    sub = pd.read_csv(out / "submission.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["id", "class", "predicted"]
    assert len(sub) == 3 * len(test)
    assert sub["id"].tolist() == [i for i in test["id"] for _ in CLASSES]
    assert sub["class"].tolist() == list(CLASSES) * len(test)
    hw = test.set_index("id")[["height", "width"]]
    for row in sub.itertuples(index=False):
        h, w = hw.loc[row.id]
        rle_decode(row.predicted, (int(h), int(w)), row_id=row.id)  # raises on malformed RLE

    # the scores: every model alone, the ensemble with and without the gate, and "all empty"
    scores = pd.read_csv(out / "scores.csv")
    assert scores["model"].tolist() == ["ensemble", "ensemble, no gate", "unet", "upernet", "seg3d", "all empty"]
    assert scores["score"].between(0, 1).all()
    empty = scores.set_index("model").loc["all empty"]
    assert empty["1-hausdorff"] == 0.0  # every truth case-day has some organ, so an empty prediction gets distance 1
    assert "| ensemble |" in (out / "scores.md").read_text()

    # pictures and the tuned ensemble
    pics = sorted(p.name for p in (out / "pictures").glob("*.png"))
    assert {"curve_unet.png", "curve_upernet.png", "curve_cls.png", "curve_seg3d.png"} <= set(pics)
    assert any(p.startswith("case") for p in pics), pics
    assert (out / "ensemble_tuned.yaml").is_file() and (out / "ensemble_tuned_report.md").is_file()

    # the viewer's static report of the test case-days, scored as the score table scores the submission
    report = out / "report"
    assert (report / "index.html").is_file() and (report / "static" / "vendor" / "niivue.umd.js").is_file()
    table = pd.read_csv(report / "scores.csv")
    assert sorted(table["case"]) == sorted(test["case_day"].unique())
    assert table["score"].between(0, 1).all() and len(list((report / "curves").glob("*.png"))) >= 4

    # a second run finds every step done and changes nothing
    before = (out / "submission.csv").read_bytes()
    r2 = subprocess.run(
        [sys.executable, "tools/demo.py", "--size", "tiny", "--out", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert r2.returncode == 0 and "done earlier, skipped" in r2.stderr + r2.stdout
    assert (out / "submission.csv").read_bytes() == before
