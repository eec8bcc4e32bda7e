"""Slice choice of the case-day pictures (evaluation.pictures, tools/visualize.py), and the overlay files they write
for a synthetic case-day."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.pictures import pick_slices, visualize_case_day

REPO = Path(__file__).resolve().parents[2]


def test_pick_slices_by_area_and_per_class():
    m = np.zeros((6, 3, 4, 4), bool)
    m[1, 0, :2] = True  # class 0: 8 px on z=1
    m[4, 0, :1] = True  # class 0: 4 px on z=4
    m[2, 1, :3] = True  # class 1: 12 px on z=2
    m[5, 2, :1, :1] = True  # class 2: 1 px on z=5
    assert pick_slices(m, 2) == [1, 2]  # the two largest totals
    assert pick_slices(m, 1, per_class=True) == [1, 2, 5]  # the largest of each class
    assert pick_slices(m, 2, per_class=True) == [1, 2, 4, 5]  # classes 1 and 2 have one slice each


def test_visualize_case_day_writes_montage_and_overlays(tmp_path):
    import subprocess

    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "data_prep", "synth", "--out", str(data), "--cases", "1", "--seed", "3"]
    subprocess.run([*cmd, "--slices", "10", "--sizes", "64x64"], cwd=REPO, check=True, capture_output=True)
    labels = pd.read_csv(data / "train.csv", keep_default_na=False)
    cd = labels["id"].iloc[0].rsplit("_slice_", 1)[0]
    files = visualize_case_day(str(data), "train", cd, str(tmp_path / "pics"), truth=str(data / "train.csv"), slices=2)
    names = [f.name for f in files]
    assert names[0] == f"{cd}_montage.png"
    assert len(names) == 3 and all(n.startswith(cd) and n.endswith(".png") for n in names)
    assert all(f.stat().st_size > 1000 for f in files)
