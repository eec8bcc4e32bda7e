"""The fusion core: pure functions on one case-day's arrays, no file IO.

weighted mean of probability maps -> gate keep masks -> per-class thresholds -> emptying weak classes ->
small-component removal -> RLE rows -> submission order.

>>> import numpy as np
>>> a = np.full((2, 3, 4, 4), 0.2, np.float32); b = np.full((2, 3, 4, 4), 0.8, np.float32)
>>> round(float(fuse([a, b], [1, 3])[0, 0, 0, 0]), 6)
0.65
>>> masks = threshold(fuse([a, b], [1, 3]), 0.5)
>>> int(masks.sum())
96
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np
import pandas as pd

from data_prep.constants import CLASSES
from data_prep.rle import rle_encode


def normalise_weights(weights: Sequence[float] | None, n: int, what: str = "weights") -> np.ndarray:
    """Weights as float64 ``(n,)`` summing to 1.

    Args:
        weights: ``n`` non-negative finite numbers with a positive sum, or None for equal weights.
        n: number of inputs.
        what: named in errors.

    Raises:
        ValueError: wrong count, negative or non-finite values, zero sum.
    """
    if n < 1:
        raise ValueError(f"nothing to fuse: {what} for 0 inputs")
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{what}: expected {n} values (one per input), got {len(w)}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{what} must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError(f"{what} sum to 0; give at least one a positive weight, got {w.tolist()}")
    return w / w.sum()


def fuse(
    probs: Sequence[np.ndarray], weights: Sequence[float] | None = None, names: Sequence[str] | None = None
) -> np.ndarray:
    """Weighted mean of probability maps, accumulated in float32.

    Args:
        probs: ``n`` arrays of the same shape, typically float16/float32 ``(D, C, H, W)`` in ``[0, 1]``.
        weights: ``n`` non-negative weights (normalised to sum 1), or None for the plain mean.
        names: names of the inputs, used in errors.

    Returns:
        float32 array of the common shape.

    Raises:
        ValueError: empty input, shapes differ (both named), bad weights, NaN/inf in an input (named).
    """
    probs = list(probs)
    w = normalise_weights(weights, len(probs))
    names = list(names) if names is not None else [f"input {i}" for i in range(len(probs))]
    shape = probs[0].shape
    out = np.zeros(shape, dtype=np.float32)
    for p, wi, name in zip(probs, w, names):
        if p.shape != shape:
            raise ValueError(f"cannot fuse {name} of shape {p.shape} with {names[0]} of shape {shape}")
        if wi == 0:
            continue
        pf = np.asarray(p, dtype=np.float32)
        if not np.isfinite(pf).all():
            raise ValueError(f"{name}: probability map holds NaN or inf")
        out += np.float32(wi) * pf
    return out


class WeightedMean:
    """Running weighted mean of probability maps (float32), so that fusing ``n`` inputs holds two arrays, not ``n``.

    >>> acc = WeightedMean()
    >>> acc.add(np.zeros((1, 3, 2, 2), np.float16), 1.0); acc.add(np.ones((1, 3, 2, 2), np.float32), 3.0)
    >>> float(acc.result()[0, 0, 0, 0])
    0.75
    """

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self._w = 0.0
        self._first = ""

    def add(self, probs: np.ndarray, weight: float = 1.0, name: str = "input") -> None:
        """Add one map with a weight ``>= 0``; shape and finiteness are checked (errors name ``name``)."""
        if not (np.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name}: weight must be finite and >= 0, got {weight}")
        if self._sum is not None and probs.shape != self._sum.shape:
            raise ValueError(f"cannot fuse {name} of shape {probs.shape} with {self._first} of shape {self._sum.shape}")
        if self._sum is None:
            self._sum = np.zeros(probs.shape, np.float32)
            self._first = name
        if weight == 0:
            return
        pf = np.asarray(probs, dtype=np.float32)
        if not np.isfinite(pf).all():
            raise ValueError(f"{name}: probability map holds NaN or inf")
        self._sum += np.float32(weight) * pf
        self._w += float(weight)

    def result(self) -> np.ndarray:
        """float32 weighted mean; raises ValueError when nothing (or only weight 0) was added."""
        if self._sum is None or self._w <= 0:
            raise ValueError("nothing to fuse: no input with a positive weight")
        return self._sum / np.float32(self._w)


def apply_keep(probs: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """Zero the slices (``keep`` bool ``(D,)``) or slice-classes (bool ``(D, C)``) a gate drops.

    Args:
        probs: ``(D, C, H, W)``.
        keep: None (keep all), bool ``(D,)`` or ``(D, C)``.

    Returns:
        A new array of the same dtype and shape.
    """
    if keep is None:
        return probs.copy()
    keep = np.asarray(keep, dtype=bool)
    d, c = probs.shape[:2]
    if keep.shape == (d,):
        keep = np.repeat(keep[:, None], c, axis=1)
    if keep.shape != (d, c):
        raise ValueError(f"keep must be bool (D,) or (D, C) = ({d},) or ({d}, {c}), got {keep.shape}")
    return probs * keep[:, :, None, None].astype(probs.dtype)


def per_class(value: float | Sequence[float], n: int, what: str) -> np.ndarray:
    """A scalar or ``n`` values as float64 ``(n,)``."""
    v = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if v.shape == (1,):
        v = np.repeat(v, n)
    if v.shape != (n,):
        raise ValueError(f"{what}: expected one value or {n} (one per class), got {v.tolist()}")
    return v


def threshold(probs: np.ndarray, thresholds: float | Sequence[float]) -> np.ndarray:
    """Binary masks: ``probs > threshold`` per class.

    Args:
        probs: ``(D, C, H, W)``.
        thresholds: one value or ``C`` values in ``[0, 1]``.

    Returns:
        bool ``(D, C, H, W)``.
    """
    t = per_class(thresholds, probs.shape[1], "thresholds")
    if ((t < 0) | (t > 1)).any():
        raise ValueError(f"thresholds must lie in [0, 1], got {t.tolist()}")
    return probs > t.astype(np.float32)[None, :, None, None]


def empty_weak(masks: np.ndarray, probs: np.ndarray, floor: float | Sequence[float]) -> np.ndarray:
    """Empty every (slice, class) whose maximum probability is under ``floor`` (the 1st place's 0.5 rule).

    Args:
        masks: bool ``(D, C, H, W)``.
        probs: ``(D, C, H, W)`` the masks came from.
        floor: one value or ``C`` values; 0 disables.

    Returns:
        bool ``(D, C, H, W)`` (a new array).
    """
    f = per_class(floor, probs.shape[1], "max_prob_floor")
    peak = probs.reshape(probs.shape[0], probs.shape[1], -1).max(axis=2) if probs.size else np.zeros(probs.shape[:2])
    strong = peak >= f[None, :]
    return masks & strong[:, :, None, None]


def remove_small(masks: np.ndarray, min_size: int | Sequence[int], mode: str = "2d") -> np.ndarray:
    """Remove connected components with fewer than ``min_size`` pixels (voxels).

    Args:
        masks: bool ``(D, C, H, W)``.
        min_size: one value or ``C`` values; 0 or 1 disables.
        mode: ``"2d"``: per slice, 8-connectivity; ``"3d"``: per case-day, 26-connectivity (connected-components-3d).

    Returns:
        bool ``(D, C, H, W)`` (a new array).
    """
    if mode not in ("2d", "3d"):
        raise ValueError(f"component mode must be '2d' or '3d', got {mode!r}")
    sizes = per_class(min_size, masks.shape[1], "min_component").astype(np.int64)
    if (sizes < 0).any():
        raise ValueError(f"min_component sizes must be >= 0, got {sizes.tolist()}")
    out = masks.copy()
    for c, n in enumerate(sizes):
        if n <= 1:
            continue
        if mode == "3d":
            vol = np.ascontiguousarray(out[:, c])
            if vol.any():
                out[:, c] = cc3d.dust(vol, threshold=int(n), connectivity=26, in_place=False)
            continue
        for z in np.flatnonzero(out[:, c].any(axis=(1, 2))):
            sl = np.ascontiguousarray(out[z, c])
            out[z, c] = cc3d.dust(sl, threshold=int(n), connectivity=8, in_place=False)
    return out


def postprocess(
    probs: np.ndarray,
    thresholds: float | Sequence[float] = 0.5,
    max_prob_floor: float | Sequence[float] = 0.0,
    min_component: int | Sequence[int] = 0,
    component_mode: str = "2d",
) -> np.ndarray:
    """Probabilities to final masks: threshold, empty weak classes, remove small components.

    Args:
        probs: float ``(D, C, H, W)`` fused (and gated) probabilities.
        thresholds, max_prob_floor, min_component, component_mode: see :func:`threshold`, :func:`empty_weak`,
            :func:`remove_small`.

    Returns:
        bool ``(D, C, H, W)``.
    """
    masks = threshold(probs, thresholds)
    if np.any(per_class(max_prob_floor, probs.shape[1], "max_prob_floor") > 0):
        masks = empty_weak(masks, probs, max_prob_floor)
    if np.any(per_class(min_component, probs.shape[1], "min_component") > 1):
        masks = remove_small(masks, min_component, component_mode)
    return masks


def encode_rows(ids: Sequence[str], masks: np.ndarray, classes: Sequence[str] = CLASSES) -> list[tuple[str, str, str]]:
    """Submission rows of one case-day: ``(id, class, rle)``, three per slice in class order.

    Args:
        ids: ``D`` slice ids, z order.
        masks: bool ``(D, C, H, W)``.

    Returns:
        ``D * C`` tuples.
    """
    if len(ids) != masks.shape[0] or masks.shape[1] != len(classes):
        raise ValueError(f"{len(ids)} ids and {len(classes)} classes do not match masks of shape {masks.shape}")
    return [(sid, cls, rle_encode(masks[z, c])) for z, sid in enumerate(ids) for c, cls in enumerate(classes)]


def order_rows(rows: pd.DataFrame, sample: pd.DataFrame | None, source: str = "sample_submission.csv") -> pd.DataFrame:
    """Put submission rows in ``sample_submission`` order (or keep their order when it is header-only / None).

    Args:
        rows: DataFrame ``id, class, predicted`` covering every slice predicted.
        sample: the sample submission (``id, class`` columns, may be empty).
        source: named in errors.

    Returns:
        DataFrame ``id, class, predicted`` in the sample's order (exactly its rows) or ``rows``' order.

    Raises:
        ValueError: ids/classes of the sample that were not predicted (absent from the tree), named.
    """
    if sample is None or len(sample) == 0:
        return rows.reset_index(drop=True)
    key = ["id", "class"]
    merged = sample[key].merge(rows, on=key, how="left", indicator=True)
    missing = merged.loc[merged["_merge"] == "left_only", "id"].unique().tolist()
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} id(s) are not in the test tree: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
            + "; give the sample_submission.csv that belongs to this tree"
        )
    return merged.drop(columns="_merge").reset_index(drop=True)
