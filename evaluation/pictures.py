"""Pictures of a case-day (a volume): the image, the truth and a prediction, for any number of classes.

:func:`visualize_case_day` writes a montage and per-slice overlays (``common.viz``, with a legend of the class
names) of one case-day of a Kaggle tree (truth and prediction: RLE tables or a probability folder);
:func:`visualize_volume` does the same for one volume of a prepared WORK folder of any format (truth: its masks;
prediction: a folder of predictions in the input's format, a submission for a Kaggle WORK, or a probability
folder). ``tools/visualize.py`` is their command line, and the demo draws its pictures with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.probmaps import ProbDir
from common.viz import save_montage, save_overlay
from data_prep.dataset import KAGGLE
from data_prep.layout import read_layout, read_rle_table, read_scan
from data_prep.rle import decode_case_day
from data_prep.work import case_day_ids, check_work, has_mask, load_mask, load_volume, read_dataset, read_manifest
from evaluation.predictions import prediction_files, prediction_format

logger = logging.getLogger(__name__)


def masks_from_table(table_path: str, ids: list[str], hw: tuple[int, int]) -> np.ndarray:
    """Masks ``bool (D, 3, H, W)`` of the slices ``ids`` from a train.csv or submission (the Kaggle layout's
    classes; missing ids are empty)."""
    table = read_rle_table(table_path).set_index("id")
    rows = [list(table.loc[i]) if i in table.index else [""] * len(KAGGLE.classes) for i in ids]
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
    """Write a montage and per-slice overlays of one case-day of a Kaggle tree; returns the files written."""
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
        pred_m = _from_probs(probs, case_day, ids, threshold)
    elif pred:
        pred_m = masks_from_table(pred, ids, hw)
    else:
        pred_m = None
    return draw_volume(out, case_day, ids, volume, truth_m, pred_m, KAGGLE.classes, slices, per_class)


def _from_probs(probs: str | os.PathLike, key: str, ids: list[str], threshold: float) -> np.ndarray:
    folder = ProbDir(probs)
    if folder.case_days.get(key) != ids:
        raise ValueError(f"{probs}: slices of {key} differ from the data's ({len(ids)} slices)")
    return folder.load(key) > threshold


def visualize_volume(
    work: str | os.PathLike,
    key: str,
    out: str | os.PathLike,
    pred: str | os.PathLike | None = None,
    probs: str | os.PathLike | None = None,
    threshold: float = 0.5,
    slices: int = 6,
    per_class: bool = False,
) -> list[Path]:
    """Write a montage and per-slice overlays of volume ``key`` of a prepared WORK folder (any format).

    Args:
        work: the WORK folder (``python -m data_prep prepare``).
        key: the volume (case-day) key.
        out: folder for the PNGs.
        pred: predictions: a folder in the WORK's input format (``tools/infer.py --work WORK --out DIR``), or for a
            Kaggle WORK a submission CSV.
        probs: instead of ``pred``, a probability folder (thresholded at ``threshold``).
        slices, per_class: which slices get an overlay (:func:`pick_slices`).

    Returns:
        The files written. The truth panel is WORK's mask when the volume has one.

    Raises:
        ValueError: unknown key (some known ones named), a prediction of another shape. FileNotFoundError: WORK
            not prepared, no prediction file for ``key``.
    """
    work = check_work(work, need_masks=False, need_splits=False)
    info = read_dataset(work)
    groups = case_day_ids(read_manifest(work))
    if key not in groups:
        raise ValueError(f"{work}: no volume {key!r}; some that exist: {sorted(groups)[:5]}")
    ids = groups[key]
    volume = np.asarray(load_volume(work, key))
    truth_m = info.unpack(np.asarray(load_mask(work, key))).astype(bool) if has_mask(work, key) else None
    pred_m = None
    if probs is not None:
        pred_m = _from_probs(probs, key, ids, threshold)
    elif pred is not None:
        if info.format == "kaggle":
            pred_m = masks_from_table(str(pred), ids, volume.shape[1:])
        else:
            files = prediction_files(pred)
            if key not in files:
                raise FileNotFoundError(f"{pred}: no prediction of volume {key!r}")
            pred_m = np.asarray(prediction_format(info.format).read_prediction(files[key], info, key), dtype=bool)
    want = (volume.shape[0], info.num_classes, *volume.shape[1:])
    if pred_m is not None and pred_m.shape != want:
        raise ValueError(f"{pred or probs}: the prediction of {key} has shape {pred_m.shape}, expected {want}")
    return draw_volume(out, key, ids, volume, truth_m, pred_m, info.classes, slices, per_class)


def draw_volume(
    out: str | os.PathLike,
    key: str,
    ids: Sequence[str],
    volume: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray | None,
    classes: Sequence[str],
    slices: int = 6,
    per_class: bool = False,
) -> list[Path]:
    """The pictures of one volume: ``{out}/{key}_montage.png`` (the prediction, else the truth, coloured) and
    ``{out}/{slice id}.png`` overlays (image | truth | prediction) of the chosen slices.

    Args:
        volume: ``(D, H, W)`` grayscale; truth, pred: bool ``(D, C, H, W)`` or None; classes: the ``C`` names
            (the legend).
    """
    out_dir = Path(out)
    shown = pred if pred is not None else truth
    written = []
    if shown is not None:
        written.append(save_montage(out_dir / f"{key}_montage.png", volume, shown, title=key, classes=classes))
    ref = truth if truth is not None else shown
    chosen = pick_slices(ref, slices, per_class) if ref is not None else list(range(min(slices, len(ids))))
    for z in chosen:
        written.append(
            save_overlay(
                out_dir / f"{ids[z]}.png",
                volume[z],
                None if truth is None else truth[z],
                None if pred is None else pred[z],
                title=ids[z],
                classes=classes if shown is not None else None,
            )
        )
    return written
