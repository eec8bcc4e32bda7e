"""Per-slice, per-class keep decisions from presence probabilities (the classifier gate).

Pure numpy functions: no model, no file. A gate turns presence probabilities ``(D, C)`` of one
case-day (z in manifest order) into keep decisions ``bool (D, C)``; the segmenters' probability
maps of a slice and class that the gate drops are emptied by the ensembles.

Three rules, applied in this order by :func:`gate_decisions`:

1. optional smoothing along z: the mean over the ``±k`` neighbouring slices (the window is cut at
   the volume ends, so the first slice averages over ``k + 1`` values);
2. per-class thresholds: a class is kept where the (smoothed) probability is ``>=`` its threshold;
3. optional "at least ``n`` consecutive slices": runs of kept slices shorter than ``n`` are dropped.

:func:`presence_from_masks` is the 1st place's gate: presence from segmenter probability maps (a class
is present when more than ``min_pixels`` pixels exceed ``pixel_thr``). :func:`search_thresholds` picks
per-class thresholds on out-of-fold predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "check_thresholds",
    "gate_decisions",
    "min_run_filter",
    "pixel_counts",
    "presence_from_masks",
    "search_thresholds",
    "smooth_z",
]

Objective = Callable[[np.ndarray, np.ndarray], float]


def check_thresholds(thresholds: float | Sequence[float] | np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class thresholds as ``float64 (n_classes,)``, checked to lie in ``[0, 1]``.

    Args:
        thresholds: one float for every class, or one per class.
        n_classes: number of classes ``C``.

    Raises:
        ValueError: a threshold outside ``[0, 1]`` or not finite, or the wrong number of thresholds.

    >>> check_thresholds(0.5, 3).tolist()
    [0.5, 0.5, 0.5]
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(n_classes, float(thr))
    if thr.shape != (n_classes,):
        raise ValueError(f"expected one threshold or {n_classes} (one per class), got {thr.tolist()}")
    bad = ~np.isfinite(thr) | (thr < 0) | (thr > 1)
    if bad.any():
        raise ValueError(f"gate thresholds must be in [0, 1], got {thr.tolist()}")
    return thr


def _check_probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"{name} must be (D, C) presence probabilities of one case-day, got shape {p.shape}")
    p = p.astype(np.float64, copy=False)
    if p.size and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise ValueError(f"{name} must be probabilities in [0, 1] without NaN (apply a sigmoid to logits first)")
    return p


def smooth_z(probs: np.ndarray, k: int) -> np.ndarray:
    """Mean over the ``±k`` neighbouring slices along axis 0, the window cut at both ends.

    Args:
        probs: ``(D, C)`` values of one case-day, z in manifest order.
        k: half window (0 returns a float64 copy).

    Returns:
        ``float64 (D, C)``.

    >>> smooth_z(np.array([[0.0], [0.0], [0.9], [0.0]]), 1)[:, 0].round(2).tolist()
    [0.0, 0.3, 0.3, 0.45]
    """
    if k < 0:
        raise ValueError(f"smoothing half window k must be >= 0, got {k}")
    p = np.asarray(probs, dtype=np.float64)
    if k == 0 or p.shape[0] == 0:
        return p.copy()
    d = p.shape[0]
    csum = np.concatenate([np.zeros((1,) + p.shape[1:]), np.cumsum(p, axis=0)], axis=0)
    lo = np.clip(np.arange(d) - k, 0, d)
    hi = np.clip(np.arange(d) + k + 1, 0, d)
    counts = (hi - lo).reshape((d,) + (1,) * (p.ndim - 1))
    return (csum[hi] - csum[lo]) / counts


def min_run_filter(keep: np.ndarray, min_consecutive: int) -> np.ndarray:
    """Drop runs of True shorter than ``min_consecutive`` along axis 0, per column.

    Args:
        keep: ``bool (D, C)``.
        min_consecutive: minimal run length (1 keeps everything).

    Returns:
        ``bool (D, C)``.

    >>> min_run_filter(np.array([[1], [0], [1], [1], [0]], bool), 2)[:, 0].tolist()
    [False, False, True, True, False]
    """
    if min_consecutive < 1:
        raise ValueError(f"min_consecutive must be >= 1, got {min_consecutive}")
    keep = np.asarray(keep, dtype=bool)
    if min_consecutive == 1:
        return keep.copy()
    out = np.zeros_like(keep)
    for c in range(keep.shape[1]):
        col = keep[:, c].astype(np.int8)
        edges = np.diff(np.concatenate([[0], col, [0]]))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        for s, e in zip(starts, ends):
            if e - s >= min_consecutive:
                out[s:e, c] = True
    return out


def gate_decisions(
    probs: np.ndarray,
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
    smooth: int = 0,
    min_consecutive: int = 1,
) -> np.ndarray:
    """Keep decisions per slice and class from presence probabilities of one case-day.

    Args:
        probs: ``(D, C)`` presence probabilities in ``[0, 1]``, z in manifest order.
        thresholds: one threshold for all classes or one per class, each in ``[0, 1]``;
            a class is kept where the (smoothed) probability is ``>=`` its threshold.
        smooth: half window ``k`` of the mean over ``±k`` slices along z (0: none).
        min_consecutive: keep only runs of at least this many consecutive kept slices.

    Returns:
        ``bool (D, C)``.

    Raises:
        ValueError: thresholds outside ``[0, 1]``, probabilities outside ``[0, 1]``, a bad shape.

    >>> gate_decisions(np.array([[0.2, 0.9, 0.6]]), thresholds=[0.1, 0.95, 0.5]).tolist()
    [[True, False, True]]
    """
    p = _check_probs(probs)
    thr = check_thresholds(thresholds, p.shape[1])
    p = smooth_z(p, smooth)
    # Tolerate float rounding of the running mean (a constant 0.3 must pass a 0.3 threshold).
    keep = p >= thr[None, :] - 1e-12
    return min_run_filter(keep, min_consecutive)


def pixel_counts(probs: np.ndarray, pixel_thr: float = 0.6) -> np.ndarray:
    """Number of pixels above ``pixel_thr`` per slice and class.

    Args:
        probs: ``(D, C, H, W)`` probability maps (numpy or anything ``np.asarray`` takes).
        pixel_thr: pixel threshold in ``[0, 1]`` (strictly greater counts).

    Returns:
        ``int64 (D, C)``.
    """
    if not 0.0 <= pixel_thr <= 1.0:
        raise ValueError(f"pixel_thr must be in [0, 1], got {pixel_thr}")
    p = np.asarray(probs)
    if p.ndim != 4:
        raise ValueError(f"probs must be (D, C, H, W) probability maps, got shape {p.shape}")
    return (p > pixel_thr).sum(axis=(2, 3), dtype=np.int64)


def presence_from_masks(
    probs: np.ndarray, pixel_thr: float = 0.6, min_pixels: int = 12, as_float: bool = False
) -> np.ndarray:
    """The 1st place's gate: a class is present on a slice when more than ``min_pixels`` pixels exceed ``pixel_thr``.

    Use it on the (mean) probability maps of the gate segmenters, then feed the result to the ensembles
    (as keep decisions directly, or with ``as_float=True`` through :func:`gate_decisions` for smoothing).

    Args:
        probs: ``(D, C, H, W)`` probability maps in ``[0, 1]``.
        pixel_thr: pixel threshold (default 0.6, the 1st place's).
        min_pixels: a class is kept when strictly more pixels than this exceed ``pixel_thr`` (default 12).
        as_float: return ``float32`` 0/1 instead of ``bool``.

    Returns:
        ``bool (D, C)`` (or ``float32 (D, C)`` of 0/1).

    >>> m = np.zeros((1, 3, 8, 8), np.float32); m[0, 1, :2, :7] = 0.7   # 14 pixels of class 1
    >>> presence_from_masks(m).tolist()
    [[False, True, False]]
    """
    if min_pixels < 0:
        raise ValueError(f"min_pixels must be >= 0, got {min_pixels}")
    keep = pixel_counts(probs, pixel_thr) > min_pixels
    return keep.astype(np.float32) if as_float else keep


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.sum(pred & truth))
    denom = float(pred.sum() + truth.sum())
    return 1.0 if denom == 0 else 2.0 * tp / denom


def _accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(pred == truth)) if pred.size else 1.0


OBJECTIVES: dict[str, Objective] = {"f1": _f1, "accuracy": _accuracy}


def search_thresholds(
    probs: np.ndarray,
    truth: np.ndarray,
    grid: Sequence[float] | np.ndarray | None = None,
    objective: str | Objective = "f1",
    return_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Per-class thresholds that maximise ``objective`` on out-of-fold predictions.

    Each class is searched independently over ``grid``; ties go to the smallest threshold (keep more:
    a missed organ costs more than a false positive the segmenter leaves empty).

    Args:
        probs: ``(N, C)`` presence probabilities (slices of any number of case-days).
        truth: ``(N, C)`` presence, bool or 0/1.
        grid: candidate thresholds in ``[0, 1]`` (default ``0.05, 0.10, ..., 0.95``).
        objective: ``"f1"``, ``"accuracy"`` or a callable ``f(pred bool (N,), truth bool (N,)) -> float``
            to maximise (e.g. a competition-metric proxy).
        return_scores: also return the best objective value per class.

    Returns:
        ``float64 (C,)`` thresholds, and ``float64 (C,)`` scores when ``return_scores``.

    Raises:
        ValueError: shapes differ, grid values outside ``[0, 1]``, unknown objective.

    >>> p = np.array([[0.1], [0.4], [0.6], [0.9]]); t = np.array([[0], [0], [1], [1]])
    >>> search_thresholds(p, t, grid=[0.3, 0.5, 0.7]).tolist()
    [0.5]
    """
    p = _check_probs(probs)
    t = np.asarray(truth)
    if t.shape != p.shape:
        raise ValueError(f"truth must have the shape of probs {p.shape}, got {t.shape}")
    t = t.astype(bool)
    g = np.round(np.arange(0.05, 0.951, 0.05), 10) if grid is None else np.asarray(grid, dtype=np.float64).ravel()
    if g.size == 0:
        raise ValueError("grid must hold at least one threshold")
    check_thresholds(g, g.size)
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)} or a callable, got {objective!r}")
        fn = OBJECTIVES[objective]
    else:
        fn = objective
    g = np.sort(g)
    n_classes = p.shape[1]
    best_thr = np.empty(n_classes)
    best_score = np.empty(n_classes)
    for c in range(n_classes):
        scores = np.array([fn(p[:, c] >= thr, t[:, c]) for thr in g], dtype=np.float64)
        i = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
        best_thr[c], best_score[c] = g[i], scores[i]
    return (best_thr, best_score) if return_scores else best_thr
