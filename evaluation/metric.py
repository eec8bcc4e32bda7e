"""The competition metric: ``0.4 * Dice + 0.6 * (1 - Hausdorff)``, exact and fast.

A leaf of the training and inference stages (numpy, scipy, pandas and ``data_prep.dataset`` only): every
validation hook, the search and the scoring command import it. Also here: :func:`slice_dice_table`, the Dice
summaries that validation logs beside the score, and :func:`dsc_3d_table`, the plain 3D Dice per volume and class.
Given a voxel spacing, :func:`score_case_day` adds the field's metrics in mm per class (DSC, NSD at a tolerance,
HD95, ASSD: :mod:`evaluation.surface`), :func:`aggregate` their means and spreads, and :func:`objective_scores`
turns a result into the number a search maximises.

Every function is generic in the number of classes ``C``; the ones that name classes take ``classes`` (the
dataset's, ``read_dataset(work).classes``); left out, ``C`` must be 3 and the names are the Kaggle layout's.

Definitions (the competition's metric, as ``docs/contracts.md`` restates it):

- **Dice** per slice and class: ``2|X ∩ Y| / (|X| + |Y|)``, averaged over every (slice, class) pair.
- **Hausdorff** per case-day on the 3D stack of slices (``z`` = slice index in manifest order): voxel
  coordinates ``(z, y, x)`` divided by the volume shape ``(D, H, W)`` (the unit cube), the symmetric Hausdorff
  distance between the two voxel sets, divided by ``sqrt(3)``; averaged over case-days (and classes).
  Reported as ``1 - distance`` so that, like Dice, higher is better.

Two empty-case conventions exist in public code; both are here (``empty=``):

- ``"one"`` (the **default**: the convention of the competition's public metric notebook as issue 6 describes
  it; the notebook itself could not be consulted here): a (slice, class) pair with both masks empty has Dice 1;
  a (case-day, class) with both volumes empty has distance 0 (Hausdorff score 1). Predicting nothing on an
  empty slice is then a perfect answer; most slices are empty, so the convention moves the score a lot.
- ``"skip"``: pairs with both empty are left out of the means (nan-mean).

In both, one empty and the other not gives Dice 0 and distance 1.

Two Hausdorff variants exist (``hausdorff=``): ``"per_class"`` (the **default**, our choice: one 3D distance per
case-day and class, matching the per-class rows of the submission, so confusing two organs is penalised) and
``"union"`` (the classes OR-ed into one mask before the 3D distance, one value per case-day).

Speed: the directed distance ``h(A, B) = max_{a in A} min_{b in B} |a - b|`` only needs the points of ``A \\ B``
(the others are at distance 0) and only the surface voxels of ``B`` (the 6-connected boundary: the nearest
voxel of ``B`` to a point outside ``B`` always has a face neighbour outside ``B``, since stepping one voxel
toward the query point along an axis where they differ would get strictly closer). The nearest surface voxel
comes from a KD-tree (``scipy.spatial.cKDTree``), never from all pairs. Query points ``k`` in-plane steps from
``B`` are within ``k * max(1/H, 1/W)`` of it, so whole rings of them are skipped once a larger distance is known
(exact). The result equals ``scipy.spatial.distance.directed_hausdorff`` on the normalised coordinates to
rounding (< 1e-12).

>>> import numpy as np
>>> t = np.zeros((4, 3, 8, 8), bool); t[1:3, 0, 2:5, 2:5] = True
>>> r = score_volumes({"case1_day0": t}, {"case1_day0": t})
>>> round(r.score, 6), round(r.dice, 6), round(r.hausdorff, 6)
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from data_prep.dataset import KAGGLE
from evaluation.surface import (
    DEFAULT_PERCENTILE,
    SURFACE_METRICS,
    Surface,
    default_tolerance,
    mask_surface,
    surface_scores,
    volume_diagonal,
)

EMPTY_CONVENTIONS: tuple[str, ...] = ("one", "skip")
HAUSDORFF_VARIANTS: tuple[str, ...] = ("per_class", "union")
#: Defaults, documented in the module docstring.
DEFAULT_EMPTY: str = "one"
DEFAULT_HAUSDORFF: str = "per_class"
#: What :func:`objective_scores` (and the ensemble search) can maximise.
OBJECTIVES: tuple[str, ...] = ("competition", "dsc", "nsd")
DICE_WEIGHT: float = 0.4
HAUSDORFF_WEIGHT: float = 0.6
_SQRT3 = math.sqrt(3.0)


def class_names(classes: Sequence[str] | None, n: int, where: str = "scores") -> tuple[str, ...]:
    """The names of ``n`` class channels: ``classes`` (checked for length) or, when None, the Kaggle layout's
    three.

    Raises:
        ValueError: ``len(classes) != n``, or no names for ``n != 3`` channels.

    >>> class_names(None, 3)
    ('large_bowel', 'small_bowel', 'stomach')
    """
    if classes is None:
        if n != len(KAGGLE.classes):
            raise ValueError(
                f"{where}: {n} classes, but no class names were given; pass classes= (the dataset's, "
                "data_prep.work.read_dataset(work).classes)"
            )
        return KAGGLE.classes
    classes = tuple(str(c) for c in classes)
    if len(classes) != n:
        raise ValueError(f"{where}: {n} class channels, but {len(classes)} class names {list(classes)}")
    return classes


def _check_options(empty: str, hausdorff: str) -> None:
    if empty not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty must be one of {EMPTY_CONVENTIONS}, got {empty!r}")
    if hausdorff not in HAUSDORFF_VARIANTS:
        raise ValueError(f"hausdorff must be one of {HAUSDORFF_VARIANTS}, got {hausdorff!r}")


def _count_rows(x: np.ndarray) -> np.ndarray:
    """Non-zero count of each ``(H, W)`` plane of a bool ``(..., H, W)`` array, as int64 ``(...)``.

    ``np.count_nonzero`` on a whole contiguous plane is several times faster than a bool ``sum`` over axes.
    """
    lead = x.shape[:-2]
    flat = np.ascontiguousarray(x).reshape(-1, x.shape[-2] * x.shape[-1])
    return np.fromiter((np.count_nonzero(r) for r in flat), dtype=np.int64, count=len(flat)).reshape(lead)


def _dice_from_counts(inter: np.ndarray, total: np.ndarray, empty: str) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2.0 * inter / total
    dice[total == 0] = 1.0 if empty == "one" else np.nan
    return dice


def dice_per_slice(pred: np.ndarray, truth: np.ndarray, empty: str = DEFAULT_EMPTY) -> np.ndarray:
    """Dice of every (slice, class) pair.

    Args:
        pred: bool ``(D, C, H, W)`` (or ``(D, H, W)`` for one class).
        truth: same shape as ``pred``.
        empty: ``"one"`` (both empty -> 1.0) or ``"skip"`` (both empty -> NaN).

    Returns:
        float64 ``(D, C)`` (or ``(D,)``).
    """
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth shapes differ: {pred.shape} vs {truth.shape}")
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    inter = _count_rows(pred & truth)
    total = _count_rows(pred) + _count_rows(truth)
    return _dice_from_counts(inter, total, empty)


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive-exclusive bounding box ``(lo, hi)`` of a non-empty 3D mask, from its axis projections."""
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    plane = mask[zs[0] : zs[-1] + 1].any(axis=0)
    ys = np.flatnonzero(plane.any(axis=1))
    xs = np.flatnonzero(plane.any(axis=0))
    return np.array([zs[0], ys[0], xs[0]]), np.array([zs[-1] + 1, ys[-1] + 1, xs[-1] + 1])


def _surface(mask: np.ndarray) -> np.ndarray:
    """Indices ``(N, 3)`` of the voxels of ``mask`` with a face neighbour outside it (the volume border counts
    as outside, a harmless superset)."""
    if not mask.any():
        return np.zeros((0, 3), dtype=np.int64)
    lo, hi = _bbox(mask)
    crop = np.zeros(tuple(hi - lo + 2), dtype=bool)
    crop[1:-1, 1:-1, 1:-1] = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    inner = crop[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for step in (-1, 1):
            sl = [slice(1, -1)] * 3
            sl[axis] = slice(1 + step, crop.shape[axis] - 1 + step)
            inner &= crop[tuple(sl)]
    surf = crop[1:-1, 1:-1, 1:-1] & ~inner
    return np.argwhere(surf) + lo


#: In-plane rings (Manhattan steps to B) used to skip query points that cannot hold the maximum.
_RINGS = 4


def _dilate_inplane(m: np.ndarray) -> np.ndarray:
    """One step of in-plane 4-neighbour dilation of a ``(D, H, W)`` mask."""
    out = m.copy()
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    out[:, :, 1:] |= m[:, :, :-1]
    out[:, :, :-1] |= m[:, :, 1:]
    return out


def _directed(a: np.ndarray, b: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> float:
    """Exact ``max_{p in a} min_{q in b} |p - q|`` (normalised coordinates) for two masks cropped at offset ``lo``.

    Only points of ``a \\ b`` are queried, against the surface of ``b`` in a KD-tree. Points ``k`` in-plane
    4-steps from ``b`` are within ``k * max(1/H, 1/W)`` of it; rings are visited from the outside in and a ring
    whose bound cannot beat the distance found so far is skipped with every ring inside it (exact pruning).
    """
    a_only = a & ~b
    if not a_only.any():
        return 0.0
    step = float(max(1.0 / scale[1], 1.0 / scale[2]))
    rings = []
    reach = b
    for _ in range(_RINGS):
        grown = _dilate_inplane(reach)
        rings.append(grown & ~reach & a_only)
        reach = grown
    far = a_only & ~reach
    tree = cKDTree((_surface(b) + lo) / scale, balanced_tree=False, compact_nodes=False)

    def query(mask: np.ndarray) -> float:
        pts = (np.argwhere(mask) + lo) / scale
        return float(tree.query(pts, k=1)[0].max()) if len(pts) else 0.0

    best = query(far)
    for k in range(_RINGS, 0, -1):
        if k * step <= best:
            break
        best = max(best, query(rings[k - 1]))
    return best


def hausdorff_distance(pred: np.ndarray, truth: np.ndarray) -> float:
    """Normalised symmetric 3D Hausdorff distance of two masks, in ``[0, 1]``.

    Coordinates are voxel indices divided by the shape ``(D, H, W)``; the distance is divided by ``sqrt(3)``.

    Args:
        pred: bool ``(D, H, W)``.
        truth: bool ``(D, H, W)``.

    Returns:
        The distance; ``1.0`` when exactly one mask is empty, ``nan`` when both are (the caller applies the
        empty-case convention).
    """
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"expected two (D, H, W) masks of the same shape, got {pred.shape} and {truth.shape}")
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    has_p, has_t = bool(pred.any()), bool(truth.any())
    if not has_p and not has_t:
        return float("nan")
    if has_p != has_t:
        return 1.0
    scale = np.asarray(pred.shape, dtype=np.float64)
    # work inside the bounding box of both masks (every nearest point lies in it); coordinates are shifted back
    # by ``lo`` before any distance
    lo, hi = _bbox(pred | truth)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pred, truth = pred[box], truth[box]
    return max(_directed(pred, truth, lo, scale), _directed(truth, pred, lo, scale)) / _SQRT3


class TruthDistances:
    """The competition's Hausdorff distance of many predictions against one fixed truth, sharing the work.

    For a search that scores hundreds of candidate masks against the same truth: the truth's surface tree is built
    once, and the distance of every predicted-only voxel to the truth (the expensive half, ``h(P, T)``) is kept
    once queried, so a candidate pays only for the voxels no earlier candidate predicted. The other half,
    ``h(T, P)``, depends on the prediction's surface and is computed as :func:`hausdorff_distance` does. Results
    are equal to :func:`hausdorff_distance` to rounding (the same coordinates and nearest distances).

    Args:
        truth: bool ``(D, H, W)``, non-empty.
    """

    def __init__(self, truth: np.ndarray) -> None:
        truth = np.asarray(truth, dtype=bool)
        if truth.ndim != 3 or not truth.any():
            raise ValueError(f"expected a non-empty (D, H, W) truth mask, got shape {truth.shape}")
        self.truth = truth
        self.flat = truth.reshape(-1)
        self.scale = np.asarray(truth.shape, dtype=np.float64)
        self.tree = cKDTree(_surface(truth) / self.scale, balanced_tree=False, compact_nodes=False)
        self._idx = np.zeros(0, dtype=np.int64)  # sorted flat indices of predicted-only voxels seen so far
        self._dist = np.zeros(0, dtype=np.float64)  # their normalised distances to the truth

    @property
    def nbytes(self) -> int:
        """Bytes held (the truth, the tree's points, the kept distances)."""
        return self.truth.nbytes + self.tree.data.nbytes + self._idx.nbytes + self._dist.nbytes

    def _to_truth(self, idx: np.ndarray) -> float:
        """``max`` over the voxels ``idx`` (sorted flat indices, none in the truth) of their distance to it."""
        if idx.size == 0:
            return 0.0
        pos = np.minimum(np.searchsorted(self._idx, idx), max(self._idx.size - 1, 0))
        known = self._idx[pos] == idx if self._idx.size else np.zeros(idx.size, dtype=bool)
        best = float(self._dist[pos[known]].max()) if known.any() else 0.0
        new = idx[~known]
        if new.size:
            pts = np.stack(np.unravel_index(new, self.truth.shape), axis=1) / self.scale
            d = self.tree.query(pts, k=1)[0]
            best = max(best, float(d.max()))
            at = np.searchsorted(self._idx, new)
            self._idx = np.insert(self._idx, at, new)
            self._dist = np.insert(self._dist, at, d)
        return best

    def distance(self, pred: np.ndarray, idx: np.ndarray | None = None) -> float:
        """:func:`hausdorff_distance` ``(pred, truth)``.

        Args:
            pred: bool ``(D, H, W)``.
            idx: the sorted flat indices of ``pred``'s voxels, when the caller has them (saves a pass).
        """
        pred = np.asarray(pred, dtype=bool)
        if pred.shape != self.truth.shape:
            raise ValueError(f"expected a mask of shape {self.truth.shape}, got {pred.shape}")
        if idx is None:
            idx = np.flatnonzero(pred)
        if idx.size == 0:
            return 1.0
        lo, hi = _bbox(pred | self.truth)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        back = _directed(self.truth[box], pred[box], lo, self.scale)
        return max(self._to_truth(idx[~self.flat[idx]]), back) / _SQRT3


def hausdorff_reference(pred: np.ndarray, truth: np.ndarray) -> float:
    """The plain reference: ``scipy.spatial.distance.directed_hausdorff`` on all normalised voxel coordinates.

    Same conventions as :func:`hausdorff_distance` (``nan`` both empty, ``1.0`` one empty). Slow; for tests and
    benchmarks.
    """
    from scipy.spatial.distance import directed_hausdorff

    pa, ta = np.argwhere(pred), np.argwhere(truth)
    if len(pa) == 0 and len(ta) == 0:
        return float("nan")
    if len(pa) == 0 or len(ta) == 0:
        return 1.0
    scale = np.asarray(pred.shape, dtype=np.float64)
    pa, ta = pa / scale, ta / scale
    return max(directed_hausdorff(pa, ta, seed=0)[0], directed_hausdorff(ta, pa, seed=0)[0]) / _SQRT3


def mask_digest(mask: np.ndarray) -> bytes:
    """A 16-byte digest of a bool mask's shape and voxels (equal masks, equal digests)."""
    h = hashlib.blake2b(repr(mask.shape).encode(), digest_size=16)
    h.update(np.packbits(np.asarray(mask, dtype=bool), axis=None).tobytes())
    return h.digest()


def _cached(
    fn: Callable[[np.ndarray, np.ndarray], float], distances: MutableMapping[tuple[int, bytes], float] | None
) -> Callable[..., float]:
    """``fn(pred, truth, key)`` that looks the distance up in ``distances`` first (``None``: no cache)."""

    def dist(pred: np.ndarray, truth: np.ndarray, key: int) -> float:
        if distances is None:
            return fn(pred, truth)
        k = (key, mask_digest(pred))
        if k not in distances:
            distances[k] = fn(pred, truth)
        return distances[k]

    return dist


@dataclass
class CaseDayScore:
    """Raw per-case-day numbers, aggregated by :func:`aggregate`.

    Attributes:
        case_day: the key.
        dice_sum, dice_count: per class, sum and count of the defined slice Dice values (float64 ``(C,)``).
        distance: per class (``per_class``) or one value (``union``): normalised Hausdorff distance, ``nan`` when
            skipped.
        n_slices: depth ``D``.
        counts: int64 ``(D, C, 3)``: per slice and class the intersection, predicted and true pixel counts (for
            :func:`slice_dice_table`; None when not kept).
        surface: float64 ``(C, 4)``: per class ``[dsc, nsd, hd95, assd]`` (:data:`SURFACE_METRICS`, distances in mm)
            when scored with a spacing, else None.
        tolerance: the NSD tolerance in mm of ``surface`` (None without).
    """

    case_day: str
    dice_sum: np.ndarray
    dice_count: np.ndarray
    distance: np.ndarray
    n_slices: int
    counts: np.ndarray | None = None
    surface: np.ndarray | None = None
    tolerance: float | None = None


def score_case_day(
    case_day: str,
    pred: np.ndarray,
    truth: np.ndarray,
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
    reference: bool = False,
    distances: MutableMapping[tuple[int, bytes], float] | None = None,
    spacing: Sequence[float] | None = None,
    tolerance: float | None = None,
    surfaces: MutableMapping[tuple, Surface | np.ndarray] | None = None,
) -> CaseDayScore:
    """Score one case-day.

    Args:
        case_day: its key (only carried along).
        pred: bool ``(D, C, H, W)`` predicted masks, z in manifest order.
        truth: bool ``(D, C, H, W)`` ground truth.
        empty: ``"one"`` or ``"skip"``.
        hausdorff: ``"per_class"`` or ``"union"``.
        reference: use the slow all-pairs reference for the Hausdorff (tests, benchmarks).
        distances: a cache of Hausdorff distances for this ``truth`` and ``hausdorff`` variant, read and filled:
            key ``(class index, digest of the predicted volume)`` (class ``-1``: the union). A search scores many
            candidates whose masks of one class are often the same; the distance is then computed once. Never
            share one cache between two truths or variants.
        spacing: ``(sz, sy, sx)`` voxel sides in mm; when given, the record also gets ``surface``, the field's
            metrics per class (:func:`evaluation.surface.surface_scores`: DSC, NSD, HD95, ASSD; both empty and one
            empty as ``empty`` says), and ``tolerance``. None (the default): nothing of it is computed.
        tolerance: the NSD tolerance in mm (None: one voxel, :func:`evaluation.surface.default_tolerance`).
        surfaces: a cache for a search, read and filled, for this ``truth`` and ``spacing`` only: ``("truth", c)``
            -> the :class:`evaluation.surface.Surface` of class ``c``'s true volume; ``(c, digest of the predicted
            volume, tolerance, empty)`` -> its four scores.

    Returns:
        A :class:`CaseDayScore`.
    """
    _check_options(empty, hausdorff)
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 4:
        raise ValueError(
            f"{case_day}: expected pred and truth of the same shape (D, C, H, W), got {pred.shape} and {truth.shape}"
        )
    p_cnt, t_cnt, i_cnt = _count_rows(pred), _count_rows(truth), _count_rows(pred & truth)
    dice = _dice_from_counts(i_cnt, p_cnt + t_cnt, empty)
    valid = ~np.isnan(dice)
    dice_sum = np.where(valid, dice, 0.0).sum(axis=0)
    dice_count = valid.sum(axis=0).astype(np.float64)
    fn = _cached(hausdorff_reference if reference else hausdorff_distance, distances)
    if hausdorff == "union":
        dist = np.array([fn(pred.any(axis=1), truth.any(axis=1), key=-1)])
    else:
        # contiguous per-class volumes; classes empty in both skip the volume work
        p_any, t_any = p_cnt.sum(axis=0) > 0, t_cnt.sum(axis=0) > 0
        dist = np.empty(pred.shape[1])
        for c in range(pred.shape[1]):
            if not p_any[c] and not t_any[c]:
                dist[c] = np.nan
            elif p_any[c] != t_any[c]:
                dist[c] = 1.0
            else:
                dist[c] = fn(np.ascontiguousarray(pred[:, c]), np.ascontiguousarray(truth[:, c]), key=c)
    if empty == "one":
        dist = np.where(np.isnan(dist), 0.0, dist)
    counts = np.stack([i_cnt, p_cnt, t_cnt], axis=-1)
    rec = CaseDayScore(case_day, dice_sum, dice_count, dist, pred.shape[0], counts)
    if spacing is not None:
        one_voxel = default_tolerance(spacing)  # checks the spacing
        tau = one_voxel if tolerance is None else float(tolerance)
        if not (math.isfinite(tau) and tau >= 0):
            raise ValueError(f"{case_day}: the NSD tolerance must be a distance >= 0 in mm, got {tolerance!r}")
        rec.tolerance = tau
        rec.surface = _surface_table(pred, truth, counts, spacing, tau, empty, surfaces)
    return rec


def _surface_table(
    pred: np.ndarray,
    truth: np.ndarray,
    counts: np.ndarray,
    spacing: Sequence[float],
    tolerance: float,
    empty: str,
    cache: MutableMapping[tuple, Surface | np.ndarray] | None,
) -> np.ndarray:
    """float64 ``(C, 4)`` :func:`evaluation.surface.surface_scores` of each class of bool ``(D, C, H, W)`` volumes;
    ``counts`` (``(D, C, 3)`` per slice: intersection, predicted, true) settles the empty classes without a scan."""
    sp = tuple(float(v) for v in spacing)
    totals = counts.sum(axis=0)  # (C, 3)
    out = np.empty((pred.shape[1], len(SURFACE_METRICS)))
    diag = volume_diagonal(truth[:, 0].shape, sp)
    for c in range(pred.shape[1]):
        n_p, n_t = totals[c, 1], totals[c, 2]
        if n_p == 0 and n_t == 0:
            out[c] = [1.0, 1.0, 0.0, 0.0] if empty == "one" else np.nan
            continue
        if n_p == 0 or n_t == 0:
            out[c] = [0.0, 0.0, diag, diag]
            continue
        p_c, t_c = pred[:, c], truth[:, c]
        zs = np.flatnonzero(counts[:, c, 1:].any(axis=1))  # the slices with voxels of either: all that is read
        z_range = (int(zs[0]), int(zs[-1]) + 1)
        key = None
        if cache is not None:
            key = (c, mask_digest(p_c), float(tolerance), empty)
            if key in cache:
                out[c] = cache[key]
                continue
            ts = cache.get(("truth", c))
            if ts is None:
                t_zs = np.flatnonzero(counts[:, c, 2])
                ts = cache[("truth", c)] = mask_surface(t_c, sp, (int(t_zs[0]), int(t_zs[-1]) + 1))
        else:
            ts = None
        out[c] = surface_scores(
            p_c, t_c, sp, tolerance, DEFAULT_PERCENTILE, truth_surface=ts, empty=empty, z_range=z_range
        )
        if key is not None:
            cache[key] = out[c].copy()
    return out


@dataclass
class ScoreResult:
    """The metric over a set of case-days.

    Attributes:
        score: ``0.4 * dice + 0.6 * hausdorff``.
        dice: mean Dice over all (slice, class) pairs that count.
        hausdorff: ``1 - mean normalised distance`` over all (case-day, class) pairs (``per_class``) or case-days
            (``union``) that count.
        per_class: DataFrame with columns ``class, dice, hausdorff, score`` (one row per class, then ``all``;
            under ``union`` the class rows have ``hausdorff`` and ``score`` NaN, the distance not being per class).
        per_case_day: DataFrame with columns ``case_day, n_slices, dice, hausdorff, score`` and
            ``dice_{class}``, ``hausdorff_{class}`` (``per_class``).
        empty, hausdorff_variant: the options used.
        classes: the class names, in channel order.
        dsc_3d: None, or (volumes scored as volumes: :func:`dsc_3d_table`) one row per case-day (volume) with
            ``case_day`` and ``dsc_{class}``, the plain 3D Dice of each class.
        tolerances: the NSD tolerances (mm) the records were scored with, distinct and sorted; empty when they
            have no surface metrics. With them, ``per_class`` has ``dsc, nsd, hd95, assd`` (mean over case-days;
            the ``all`` row: over every (case-day, class)) and their standard deviations ``dsc_sd, ...`` (sample,
            ``ddof=1``; NaN for fewer than two values), and ``per_case_day`` has ``dsc_{class}, nsd_{class},
            hd95_{class}, assd_{class}``, their means over the classes ``dsc, nsd, hd95, assd`` and ``tolerance``.
        percentile: the robust Hausdorff percentile of ``hd95`` (None without surface metrics).
    """

    score: float
    dice: float
    hausdorff: float
    per_class: pd.DataFrame
    per_case_day: pd.DataFrame
    empty: str = DEFAULT_EMPTY
    hausdorff_variant: str = DEFAULT_HAUSDORFF
    classes: tuple[str, ...] = field(default=KAGGLE.classes)
    dsc_3d: pd.DataFrame | None = None
    tolerances: tuple[float, ...] = ()
    percentile: float | None = None

    @property
    def has_surface(self) -> bool:
        """Whether the records carried the surface metrics (DSC, NSD, HD95, ASSD)."""
        return bool(self.tolerances)

    def to_dict(self) -> dict:
        """JSON-ready summary (NaN as None); ``dsc_3d`` only when it was computed, the tolerances (mm) and the
        Hausdorff percentile only with surface metrics."""

        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        out = {
            "score": clean(self.score),
            "dice": clean(self.dice),
            "hausdorff": clean(self.hausdorff),
            "empty": self.empty,
            "hausdorff_variant": self.hausdorff_variant,
            "per_class": [{k: clean(v) for k, v in r.items()} for r in self.per_class.to_dict("records")],
            "per_case_day": [{k: clean(v) for k, v in r.items()} for r in self.per_case_day.to_dict("records")],
        }
        if self.dsc_3d is not None:
            out["dsc_3d"] = [{k: clean(v) for k, v in r.items()} for r in self.dsc_3d.to_dict("records")]
        if self.has_surface:
            out["tolerance_mm"] = list(self.tolerances)
            out["hausdorff_percentile"] = self.percentile
        return out


def _combine(dice: float, haus: float) -> float:
    return DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * haus


def _ratio(s: float, n: float) -> float:
    return float(s / n) if n > 0 else float("nan")


def aggregate(
    records: Iterable[CaseDayScore],
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
    classes: Sequence[str] | None = None,
) -> ScoreResult:
    """Combine per-case-day records into a :class:`ScoreResult` (nan-means as the convention says).

    Args:
        records: :func:`score_case_day` outputs, all of the same ``C``.
        empty, hausdorff: the conventions they were scored with.
        classes: the ``C`` class names (None: the Kaggle layout's, ``C`` must be 3).
    """
    _check_options(empty, hausdorff)
    records = list(records)
    if not records:
        raise ValueError("nothing to score: no case-days")
    n_cls = len(records[0].dice_sum)
    odd = [r.case_day for r in records if len(r.dice_sum) != n_cls]
    if odd:
        raise ValueError(f"case-days scored with different class counts: {odd[:3]} vs {records[0].case_day}")
    classes = class_names(classes, n_cls)
    dsum = np.zeros(n_cls)
    dcnt = np.zeros(n_cls)
    dists = []
    rows = []
    for r in records:
        dsum += r.dice_sum
        dcnt += r.dice_count
        dists.append(r.distance)
        d_all = _ratio(r.dice_sum.sum(), r.dice_count.sum())
        h_all = 1.0 - float(np.nanmean(r.distance)) if not np.isnan(r.distance).all() else float("nan")
        row = {"case_day": r.case_day, "n_slices": r.n_slices, "dice": d_all, "hausdorff": h_all}
        row["score"] = _combine(d_all, h_all)
        for c, name in enumerate(classes):
            row[f"dice_{name}"] = _ratio(r.dice_sum[c], r.dice_count[c])
            if hausdorff == "per_class":
                row[f"hausdorff_{name}"] = 1.0 - float(r.distance[c])
        rows.append(row)
    dists = np.stack(dists)  # (N, C) or (N, 1)
    dice = _ratio(dsum.sum(), dcnt.sum())
    haus = 1.0 - float(np.nanmean(dists)) if not np.isnan(dists).all() else float("nan")
    cls_rows = []
    for c, name in enumerate(classes):
        d_c = _ratio(dsum[c], dcnt[c])
        if hausdorff == "per_class" and not np.isnan(dists[:, c]).all():
            h_c = 1.0 - float(np.nanmean(dists[:, c]))
        else:
            h_c = float("nan")
        cls_rows.append({"class": name, "dice": d_c, "hausdorff": h_c, "score": _combine(d_c, h_c)})
    cls_rows.append({"class": "all", "dice": dice, "hausdorff": haus, "score": _combine(dice, haus)})
    per_class, per_case_day = pd.DataFrame(cls_rows), pd.DataFrame(rows)
    tolerances = _surface_columns(records, classes, per_class, per_case_day)
    return ScoreResult(
        score=_combine(dice, haus),
        dice=dice,
        hausdorff=haus,
        per_class=per_class,
        per_case_day=per_case_day,
        empty=empty,
        hausdorff_variant=hausdorff,
        classes=tuple(classes),
        tolerances=tolerances,
        percentile=DEFAULT_PERCENTILE if tolerances else None,
    )


def _nan_stats(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of the non-NaN values; NaN when there are none (the mean)
    or fewer than two (the deviation)."""
    v = values[~np.isnan(values)]
    mean = float(v.mean()) if len(v) else float("nan")
    return mean, float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def _surface_columns(
    records: Sequence[CaseDayScore], classes: Sequence[str], per_class: pd.DataFrame, per_case_day: pd.DataFrame
) -> tuple[float, ...]:
    """Adds the surface metrics' columns (:class:`ScoreResult`) in place when the records have them; returns the
    distinct tolerances (``()`` without)."""
    have = [r.surface is not None for r in records]
    if not any(have):
        return ()
    if not all(have):
        missing = [r.case_day for r in records if r.surface is None]
        raise ValueError(f"case-days scored without a spacing among ones with: {missing[:3]}; score all or none")
    table = np.stack([r.surface for r in records])  # (N, C, 4)
    for m, name in enumerate(SURFACE_METRICS):
        stats = [_nan_stats(table[:, c, m]) for c in range(len(classes))] + [_nan_stats(table[:, :, m].ravel())]
        per_class[name] = [s[0] for s in stats]
        per_class[f"{name}_sd"] = [s[1] for s in stats]
    for m, name in enumerate(SURFACE_METRICS):
        for c, cls in enumerate(classes):
            per_case_day[f"{name}_{cls}"] = table[:, c, m]
    with np.errstate(invalid="ignore"):
        for m, name in enumerate(SURFACE_METRICS):
            vals = table[:, :, m]
            cnt = (~np.isnan(vals)).sum(axis=1)
            per_case_day[name] = np.where(cnt > 0, np.nansum(vals, axis=1) / np.maximum(cnt, 1), np.nan)
    per_case_day["tolerance"] = [r.tolerance for r in records]
    return tuple(sorted({float(r.tolerance) for r in records}))


def objective_scores(res: ScoreResult, objective: str) -> tuple[float, np.ndarray]:
    """The number a search maximises, overall and per class (higher is better).

    Args:
        res: an :func:`aggregate` result.
        objective: ``"competition"`` (``res.score`` and the per-class ``score`` column), ``"dsc"`` (the mean 3D
            DSC over every (case-day, class), and per class its mean over case-days) or ``"nsd"`` (the same for NSD
            at the tolerance the records were scored with); :data:`OBJECTIVES`.

    Returns:
        ``(overall, per_class)``: a float and float64 ``(C,)`` in class order.

    Raises:
        ValueError: an unknown objective, or ``dsc`` / ``nsd`` for records scored without a spacing.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    rows = res.per_class[res.per_class["class"] != "all"]
    column = "score" if objective == "competition" else objective
    if column not in res.per_class.columns:
        raise ValueError(
            f"objective {objective!r} needs the surface metrics: score the case-days with a voxel spacing "
            "(score_case_day(spacing=...))"
        )
    overall = (
        res.score
        if objective == "competition"
        else float(res.per_class.loc[res.per_class["class"] == "all", column].iloc[0])
    )
    return float(overall), rows[column].to_numpy(dtype=np.float64)


def score_volumes(
    pred: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
    classes: Sequence[str] | None = None,
) -> ScoreResult:
    """Score predicted masks against the truth, case-day by case-day (sorted keys).

    ``pred`` and ``truth`` may be lazy mappings: one case-day is read at a time.

    Args:
        pred: ``{case_day: bool (D, C, H, W)}``.
        truth: same keys, same shapes.
        empty: ``"one"`` (default) or ``"skip"``, see the module docstring.
        hausdorff: ``"per_class"`` (default) or ``"union"``.
        classes: class names of the ``C`` channels (None: the Kaggle layout's, ``C`` must be 3).

    Returns:
        A :class:`ScoreResult`.

    Raises:
        ValueError: key sets differ (the difference is named), shapes differ, unknown option.
    """
    _check_options(empty, hausdorff)
    pk, tk = set(pred.keys()), set(truth.keys())
    if pk != tk:
        raise ValueError(
            f"pred and truth cover different case-days: only in pred {sorted(pk - tk)[:5]}, "
            f"only in truth {sorted(tk - pk)[:5]}"
        )
    records = [score_case_day(k, pred[k], truth[k], empty, hausdorff) for k in sorted(pk)]
    return aggregate(records, empty, hausdorff, classes)


def slice_dice_table(
    inter: np.ndarray, psum: np.ndarray, gsum: np.ndarray, classes: Sequence[str] | None = None
) -> dict[str, float]:
    """Dice summaries from per-slice, per-class pixel counts.

    Args:
        inter, psum, gsum: ``(S, C)`` intersections, predicted and true pixel counts.
        classes: the ``C`` class names (None: the Kaggle layout's, ``C`` must be 3).

    Returns:
        ``dice`` (both empty = 1, the competition's convention), ``dice_skip`` (both-empty pairs skipped) and
        ``dice_{class}`` (per class, both-empty slices skipped; nan when a class never appears).

    >>> t = slice_dice_table(np.array([[1, 0, 0]]), np.array([[2, 0, 1]]), np.array([[2, 0, 0]]))
    >>> round(t["dice"], 4), round(t["dice_skip"], 4), t["dice_small_bowel"]
    (0.5, 0.25, nan)
    """
    n = len(classes) if classes is not None else int(np.shape(inter)[-1]) if np.ndim(inter) else 0
    names = class_names(classes, n, "slice_dice_table")
    inter, psum, gsum = (np.asarray(a, dtype=np.float64).reshape(-1, n) for a in (inter, psum, gsum))
    denom = psum + gsum
    empty = denom == 0
    d = np.where(empty, 1.0, 2 * inter / np.where(empty, 1, denom))
    out = {"dice": float(d.mean()) if d.size else float("nan")}
    out["dice_skip"] = float(d[~empty].mean()) if (~empty).any() else float("nan")
    for c, name in enumerate(names):
        sel = ~empty[:, c]
        out[f"dice_{name}"] = float(d[sel, c].mean()) if sel.any() else float("nan")
    return out


def case_day_metrics(
    records: Sequence[CaseDayScore],
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
    classes: Sequence[str] | None = None,
) -> tuple[dict[str, float], ScoreResult]:
    """What validation logs for whole case-days: the Dice table of :func:`slice_dice_table` over every slice of
    ``records`` (from :func:`score_case_day`) and ``score``, ``hausdorff``, ``dice_3d`` (the score's Dice part) of
    :func:`aggregate`; also returns the :class:`ScoreResult`. ``classes``: the class names (None: the Kaggle
    layout's)."""
    c = np.concatenate([r.counts for r in records])
    metrics = slice_dice_table(c[..., 0], c[..., 1], c[..., 2], classes)
    res = aggregate(records, empty, hausdorff, classes)
    metrics.update(score=float(res.score), hausdorff=float(res.hausdorff), dice_3d=float(res.dice))
    return metrics, res


def dsc_3d(counts: np.ndarray, empty: str = DEFAULT_EMPTY) -> np.ndarray:
    """The plain 3D Dice of each class of one volume, ``2 |P ∩ T| / (|P| + |T|)`` over all its voxels.

    Args:
        counts: int ``(D, C, 3)`` per slice and class the intersection, predicted and true voxel counts
            (:attr:`CaseDayScore.counts`).
        empty: both empty -> 1.0 (``"one"``) or NaN (``"skip"``).

    Returns:
        float64 ``(C,)``.

    >>> dsc_3d(np.array([[[2, 3, 3], [0, 0, 0]], [[1, 1, 2], [0, 1, 0]]]))
    array([0.66666667, 0.        ])
    """
    tot = np.asarray(counts, dtype=np.int64).sum(axis=0)  # (C, 3)
    return _dice_from_counts(tot[:, 0].astype(np.float64), (tot[:, 1] + tot[:, 2]).astype(np.float64), empty)


def dsc_3d_table(
    records: Sequence[CaseDayScore], classes: Sequence[str] | None = None, empty: str = DEFAULT_EMPTY
) -> pd.DataFrame:
    """One row per volume (``case_day``) with ``dsc_{class}``, the plain 3D Dice of each class (:func:`dsc_3d`);
    the DSC per organ per case that volume datasets (nnU-Net's) report. Records need their ``counts``."""
    rows = []
    for r in records:
        if r.counts is None:
            raise ValueError(f"{r.case_day}: no voxel counts kept; score it with score_case_day")
        names = class_names(classes, r.counts.shape[1], "dsc_3d_table")
        rows.append({"case_day": r.case_day, **{f"dsc_{n}": float(v) for n, v in zip(names, dsc_3d(r.counts, empty))}})
    return pd.DataFrame(rows)


def channel_classes(classes: Sequence[str] | None, dataset_meta: Mapping | None) -> tuple[str, ...]:
    """The class names of a metric's channels: ``classes`` when given, else the dataset's (``dataset_meta``'s
    ``classes``, as mmengine gives evaluators), else the Kaggle layout's."""
    if classes:
        return tuple(classes)
    meta = dataset_meta or {}
    return tuple(meta["classes"]) if meta.get("classes") else KAGGLE.classes
