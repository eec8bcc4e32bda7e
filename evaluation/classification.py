"""Metrics of the slice classifier: presence AUC / F1, and the gate score that selects its best checkpoint.

The **gate score** is the competition score of a perfect segmenter behind the gate: on a slice the gate keeps
for a class, the segmenter draws the true mask; a kept slice whose class is absent counts as a false positive
(Dice 0: a real segmenter fires on most slices it is shown, which is why the gate exists); a dropped slice whose
class is present is a miss (Dice 0, and its pixels are missing from the 3D Hausdorff); a dropped empty slice is
right (Dice 1 under ``empty="one"``). So the score rewards exactly what a gate adds to an ensemble, on the
competition's scale: 1.0 for a perfect gate, the "all empty" score for a gate that drops everything.

>>> truth = np.zeros((2, 3, 4, 4), bool); truth[0, 0, 1:3, 1:3] = True
>>> keep = truth.any(axis=(2, 3))
>>> rec = gate_score(keep, truth)
>>> aggregate([rec]).score
1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluation.metric import DEFAULT_EMPTY, DEFAULT_HAUSDORFF, CaseDayScore, aggregate, class_names, score_case_day

__all__ = ["aggregate", "classification_metrics", "gate_score"]


def classification_metrics(
    probs: np.ndarray, truth: np.ndarray, thr: float = 0.5, classes: Sequence[str] | None = None
) -> dict[str, float]:
    """Per-class AUC and F1 (at ``thr``) and their means; AUC is NaN for a class with one label value only.

    Args:
        probs: ``(N, C)`` presence probabilities.
        truth: ``(N, C)`` 0/1 presence.
        thr: decision threshold for F1.
        classes: the ``C`` class names (None: the Kaggle layout's, ``C`` must be 3).

    Returns:
        ``auc_{class}``, ``f1_{class}``, ``mean_auc``, ``mean_f1``.
    """
    from sklearn.metrics import f1_score, roc_auc_score

    probs, truth = np.asarray(probs), np.asarray(truth)
    if probs.shape != truth.shape or probs.ndim != 2:
        raise ValueError(f"probs and truth must be (N, C) of one shape, got {probs.shape} and {truth.shape}")
    names = class_names(classes, probs.shape[1], "classification_metrics")
    out: dict[str, float] = {}
    aucs, f1s = [], []
    for c, name in enumerate(names):
        t = truth[:, c].astype(int)
        auc = float(roc_auc_score(t, probs[:, c])) if 0 < t.sum() < len(t) else float("nan")
        f1 = float(f1_score(t, probs[:, c] >= thr, zero_division=1.0))
        out[f"auc_{name}"], out[f"f1_{name}"] = auc, f1
        aucs.append(auc)
        f1s.append(f1)
    out["mean_auc"] = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")
    out["mean_f1"] = float(np.mean(f1s))
    return out


def gate_score(
    keep: np.ndarray,
    truth: np.ndarray,
    case_day: str = "",
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
) -> CaseDayScore:
    """The gate score of one case-day (see the module docstring); combine case-days with :func:`aggregate`.

    Args:
        keep: bool ``(D, C)``: the gate's decision per slice and class.
        truth: bool ``(D, C, H, W)`` true masks.
        case_day: carried along.
        empty, hausdorff: conventions of :func:`evaluation.metric.score_case_day`.

    Returns:
        A :class:`evaluation.metric.CaseDayScore`.
    """
    keep = np.asarray(keep, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if keep.shape != truth.shape[:2]:
        raise ValueError(f"{case_day}: keep must be (D, C) = {truth.shape[:2]}, got {keep.shape}")
    rec = score_case_day(case_day, truth & keep[:, :, None, None], truth, empty, hausdorff)
    present = truth.reshape(truth.shape[0], truth.shape[1], -1).any(axis=2)
    right_empty = 1.0 if empty == "one" else np.nan
    dice = np.where(present, keep.astype(np.float64), np.where(keep, 0.0, right_empty))
    valid = ~np.isnan(dice)
    rec.dice_sum = np.where(valid, dice, 0.0).sum(axis=0)
    rec.dice_count = valid.sum(axis=0).astype(np.float64)
    return rec
