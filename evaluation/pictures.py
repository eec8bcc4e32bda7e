"""Pictures of a case-day: the image, the truth and a prediction (a probability folder or a submission).

:func:`visualize_case_day` writes a montage and per-slice overlays (``common.viz``) of one case-day of a Kaggle
tree; ``tools/visualize.py`` is its command line, and the demo draws its pictures with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from common.probmaps import ProbDir
from common.viz import save_montage, save_overlay
from data_prep.constants import CLASSES
from data_prep.layout import read_layout, read_rle_table, read_scan
from data_prep.rle import decode_case_day

logger = logging.getLogger(__name__)


def masks_from_table(table_path: str, ids: list[str], hw: tuple[int, int]) -> np.ndarray:
    """Masks ``bool (D, C, H, W)`` of the slices ``ids`` from a train.csv or submission (missing ids are empty)."""
    table = read_rle_table(table_path).set_index("id")
    rows = [list(table.loc[i]) if i in table.index else [""] * len(CLASSES) for i in ids]
    return decode_case_day(rows, hw[0], hw[1], ids=ids)


def pick_slices(masks: np.ndarray, n: int, per_class: bool = False) -> list[int]:
    """Indices (sorted) of the ``n`` slices with the most foreground of ``masks`` bool ``(D, C, H, W)``, or with
    ``per_class`` the ``n`` slices with the most of each class (slices without that class left out)."""
    area = masks.reshape(masks.shape[0], masks.shape[1], -1).sum(-1)  # (D, C)
    if not per_class:
        return sorted(np.argsort(-area.sum(1), kind="stable")[:n].tolist())
    picked: set[int] = set()
    for c in range(area.shape[1]):
        order = np.argsort(-area[:, c], kind="stable")[:n]
        picked.update(int(z) for z in order if area[z, c] > 0)
    return sorted(picked)


def visualize_case_day(
    data_root: str,
    split: str,
    case_day: str,
    out: str,
    truth: str | None = None,
    pred: str | None = None,
    probs: str | None = None,
    threshold: float = 0.5,
    slices: int = 6,
    per_class: bool = False,
) -> list[Path]:
    """Write a montage and per-slice overlays of one case-day; returns the files written."""
    manifest = read_layout(data_root, split=split, check_images=False)
    rows = manifest[manifest["case_day"] == case_day]
    if rows.empty:
        known = sorted(manifest["case_day"].unique())[:5]
        raise ValueError(f"{data_root}/{split}: no case-day {case_day!r}; some that exist: {known}")
    ids = rows["id"].tolist()
    hw = (int(rows["height"].iloc[0]), int(rows["width"].iloc[0]))
    volume = np.stack([read_scan(p, hw) for p in rows["path"]])
    truth_m = masks_from_table(truth, ids, hw) if truth else None
    if probs:
        folder = ProbDir(probs)
        if folder.case_days.get(case_day) != ids:
            raise ValueError(f"{probs}: slices of {case_day} differ from the tree's ({len(ids)} slices)")
        pred_m = folder.load(case_day) > threshold
    elif pred:
        pred_m = masks_from_table(pred, ids, hw)
    else:
        pred_m = None
    out_dir = Path(out)
    shown = pred_m if pred_m is not None else truth_m
    written = []
    if shown is not None:
        written.append(save_montage(out_dir / f"{case_day}_montage.png", volume, shown, title=case_day))
    ref = truth_m if truth_m is not None else shown
    chosen = pick_slices(ref, slices, per_class) if ref is not None else list(range(min(slices, len(ids))))
    for z in chosen:
        written.append(
            save_overlay(
                out_dir / f"{ids[z]}.png",
                volume[z],
                None if truth_m is None else truth_m[z],
                None if pred_m is None else pred_m[z],
                title=ids[z],
            )
        )
    return written
