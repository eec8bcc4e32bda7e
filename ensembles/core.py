"""The fusion core: pure functions on one case-day's arrays, no file IO; arrays in, arrays out.

weighted mean of probability maps (models within their group, then the 2.5D and 3D groups) -> the gate's keep
masks -> per-class thresholds -> (exclusive classes: one class per pixel) -> emptying weak classes ->
small-component removal. Every function is generic in the number of classes ``C``. :func:`ensemble` is that
whole rule in one function: the search (:mod:`ensembles.search`) scores its candidates with it and inference
(:mod:`inference.pipeline`) predicts with it, so the two cannot disagree.

>>> import numpy as np
>>> a = np.full((2, 3, 4, 4), 0.2, np.float32); b = np.full((2, 3, 4, 4), 0.8, np.float32)
>>> round(float(fuse([a, b], [1, 3])[0, 0, 0, 0]), 6)
0.65
>>> masks = threshold(fuse([a, b], [1, 3]), 0.5)
>>> int(masks.sum())
96
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import cc3d
import numpy as np

from gating.gate import gate_decisions, presence_from_masks


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
        _add_scaled(out, p, wi, name)
    return out


def _add_scaled(out: np.ndarray, probs: np.ndarray, weight: float, name: str) -> None:
    """``out += weight * probs`` in float32, slice by slice (no temporary of the whole map: large fresh arrays
    cost more in page faults than the arithmetic); NaN/inf in ``probs`` raise naming ``name``."""
    w = np.float32(weight)
    for i in np.ndindex(out.shape[:1]):
        pf = np.asarray(probs[i], dtype=np.float32)
        if not np.isfinite(pf).all():
            raise ValueError(f"{name}: probability map holds NaN or inf")
        out[i] += w * pf


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
        _add_scaled(self._sum, probs, weight, name)
        self._w += float(weight)

    @property
    def weight(self) -> float:
        """The sum of the weights added so far."""
        return self._w

    def result(self) -> np.ndarray:
        """float32 weighted mean; raises ValueError when nothing (or only weight 0) was added.

        The mean is divided in place: the accumulator hands its array over and starts empty again.
        """
        if self._sum is None or self._w <= 0:
            raise ValueError("nothing to fuse: no input with a positive weight")
        out, w = self._sum, self._w
        self._sum, self._w, self._first = None, 0.0, ""
        out /= np.float32(w)
        return out


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


def exclusive(masks: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One class per pixel, for exclusive classes (a label map): of the classes over their threshold at a pixel,
    only the most probable is kept (ties: the first in class order).

    Args:
        masks: bool ``(D, C, H, W)`` thresholded masks.
        probs: ``(D, C, H, W)`` the masks came from.

    Returns:
        bool ``(D, C, H, W)`` (a new array) with at most one class set per pixel.

    >>> p = np.array([[[[0.6]], [[0.9]], [[0.2]]]], np.float32)  # (1, 3, 1, 1)
    >>> exclusive(p > 0.5, p)[0, :, 0, 0].tolist()
    [False, True, False]
    """
    if masks.shape != probs.shape:
        raise ValueError(f"masks {masks.shape} and probabilities {probs.shape} differ in shape")
    out = np.zeros(masks.shape, dtype=bool)
    idx = np.arange(masks.shape[1])[:, None, None]
    for z in range(masks.shape[0]):  # slice by slice: no (D, C, H, W) float temporary
        m = np.asarray(masks[z], dtype=bool)
        if not m.any():
            continue
        # probabilities lie in [0, 1]: + 1 puts every masked class above every unmasked one
        best = ((np.asarray(probs[z], dtype=np.float32) + np.float32(1)) * m).argmax(axis=0)  # (H, W)
        np.logical_and(m, idx == best[None], out=out[z])
    return out


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
    exclusive_classes: bool = False,
) -> np.ndarray:
    """Probabilities to final masks: threshold, one class per pixel (exclusive classes), empty weak classes, remove
    small components.

    Args:
        probs: float ``(D, C, H, W)`` fused (and gated) probabilities.
        thresholds, max_prob_floor, min_component, component_mode: see :func:`threshold`, :func:`empty_weak`,
            :func:`remove_small`.
        exclusive_classes: the classes are exclusive (``label_kind == "exclusive"``): :func:`exclusive` after the
            thresholds.

    Returns:
        bool ``(D, C, H, W)``.
    """
    masks = threshold(probs, thresholds)
    if exclusive_classes and probs.shape[1] > 1:
        masks = exclusive(masks, probs)
    if np.any(per_class(max_prob_floor, probs.shape[1], "max_prob_floor") > 0):
        masks = empty_weak(masks, probs, max_prob_floor)
    if np.any(per_class(min_component, probs.shape[1], "min_component") > 1):
        masks = remove_small(masks, min_component, component_mode)
    return masks


#: The fusion groups, in order: a model's ``kind`` names its group.
GROUPS: tuple[str, ...] = ("2.5d", "3d")


@dataclass
class ModelMap:
    """One segmenter's contribution to :func:`fuse_models`.

    Attributes:
        name: named in errors.
        kind: its group, ``"2.5d"`` or ``"3d"``.
        weight: its weight inside the group (``>= 0``; normalised over the group).
        probs: float ``(D, C, H, W)`` in ``[0, 1]``, or a function returning it: called only when the weight and
            the group's weight are positive (inference runs a model only when it counts).
    """

    name: str
    kind: str
    weight: float
    probs: np.ndarray | Callable[[], np.ndarray]

    def load(self) -> np.ndarray:
        """The map (calling ``probs`` when it is a function)."""
        return self.probs() if callable(self.probs) else self.probs


def fuse_models(maps: Iterable[ModelMap], weight_2d: float, weight_3d: float) -> np.ndarray | None:
    """Weighted mean of segmenter maps: within each group (``kind``) with the models' weights, then across the groups
    with ``weight_2d`` / ``weight_3d`` (both normalised over what is present).

    A model of weight 0, and every model of a group of weight 0, is left out without computing its map; a group
    whose models all weigh 0 is left out. Each map is added once, with its share of the whole, into one running
    sum: memory holds the sum and one map at a time.

    Returns:
        float32 ``(D, C, H, W)``, or None when nothing has a positive weight (the ensemble predicts nothing).

    Raises:
        ValueError: unknown kind, negative weight, shapes that differ, NaN in a map (named).
    """
    maps = list(maps)
    shares = model_shares([(m.name, m.kind, m.weight) for m in maps], weight_2d, weight_3d)
    fused = WeightedMean()
    for m in maps:
        if shares.get(m.name, 0.0) > 0:
            fused.add(m.load(), shares[m.name], m.name)
    return fused.result() if fused.weight > 0 else None


def model_shares(models: Iterable[tuple[str, str, float]], weight_2d: float, weight_3d: float) -> dict[str, float]:
    """Each segmenter's share of the fused map (the weights of :func:`fuse_models`; the inference engine
    accumulates with them).

    Args:
        models: ``(name, kind, weight)`` per model (kind ``2.5d`` or ``3d``; names unique).
        weight_2d, weight_3d: the groups' weights.

    Returns:
        ``{name: share}`` for the models that count (share > 0); the shares sum to 1 (empty: nothing counts).

    Raises:
        ValueError: unknown kind, negative or non-finite weight (named).

    >>> shares = model_shares([("a", "2.5d", 1.0), ("b", "2.5d", 3.0), ("c", "3d", 1.0)], 0.6, 0.4)
    >>> {k: round(v, 6) for k, v in shares.items()}
    {'a': 0.15, 'b': 0.45, 'c': 0.4}
    """
    group_w = {"2.5d": float(weight_2d), "3d": float(weight_3d)}
    for g, w in group_w.items():
        if not (np.isfinite(w) and w >= 0):
            raise ValueError(f"the {g} group: weight must be finite and >= 0, got {w}")
    models = [(str(n), str(k), float(w)) for n, k, w in models]
    for name, kind, w in models:
        if kind not in group_w:
            raise ValueError(f"model {name!r}: kind {kind!r} is not a fusion group {GROUPS}")
        if not (np.isfinite(w) and w >= 0):
            raise ValueError(f"model {name!r}: weight must be finite and >= 0, got {w}")
    # a model's share: its weight within its group times its group's share of the present groups
    within = {g: sum(w for _, k, w in models if k == g) for g in GROUPS}
    present = {g: group_w[g] for g in GROUPS if within[g] > 0 and group_w[g] > 0}
    total = sum(present.values())
    return {n: present[k] / total * w / within[k] for n, k, w in models if w > 0 and k in present}


def gate_keep(
    gate: Mapping,
    shape: tuple[int, int],
    cls_probs: np.ndarray | None = None,
    gate_probs: np.ndarray | Callable[[], np.ndarray] | None = None,
) -> np.ndarray:
    """The gate's decision per slice and class.

    Args:
        gate: the spec's gate section: ``method`` ``none`` | ``classifier`` (``thresholds``, ``smooth``,
            ``min_consecutive``) | ``unet_count`` (``pixel_thr``, ``min_pixels``).
        shape: ``(D, C)``.
        cls_probs: float ``(D, C)`` presence probabilities of the classifier(s) (method ``classifier``).
        gate_probs: float ``(D, C, H, W)`` mean probabilities of the gate U-Nets, or a function returning them
            (method ``unet_count``).

    Returns:
        bool ``(D, C)``.

    Raises:
        ValueError: unknown method, or the input its method needs is missing.
    """
    method = gate.get("method", "none")
    if method == "none":
        return np.ones(shape, dtype=bool)
    if method == "classifier":
        if cls_probs is None:
            raise ValueError("gate method 'classifier' needs the classifier's presence probabilities")
        keep = gate_decisions(
            cls_probs, gate.get("thresholds", 0.5), gate.get("smooth", 0), gate.get("min_consecutive", 1)
        )
    elif method == "unet_count":
        if gate_probs is None:
            raise ValueError("gate method 'unet_count' needs the gate U-Nets' probabilities")
        probs = gate_probs() if callable(gate_probs) else gate_probs
        keep = presence_from_masks(probs, gate.get("pixel_thr", 0.6), gate.get("min_pixels", 12))
    else:
        raise ValueError(f"unknown gate method {method!r}; expected none, classifier or unet_count")
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != tuple(shape):
        raise ValueError(f"gate decisions of shape {keep.shape}, expected {tuple(shape)}")
    return keep


def ensemble(
    maps: Iterable[ModelMap],
    shape: tuple[int, int, int, int],
    fusion: Mapping,
    keep: np.ndarray | None,
    thresholds: float | Sequence[float],
    post: Mapping,
    exclusive_classes: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole rule on one case-day: fuse -> gate -> threshold -> post-process.

    Args:
        maps: the segmenters (:class:`ModelMap`), in any order.
        shape: ``(D, C, H, W)`` of the case-day's maps.
        fusion: ``{"weight_2d", "weight_3d"}``.
        keep: bool ``(D, C)`` or ``(D,)`` gate decisions (:func:`gate_keep`), or None to keep everything.
        thresholds: one pixel threshold or one per class.
        post: ``{"max_prob_floor", "min_component", "component_mode"}``.
        exclusive_classes: one class per pixel (the dataset's ``label_kind`` is ``exclusive``).

    Returns:
        ``(probs float32 (D, C, H, W), masks bool (D, C, H, W))``: fused and gated probabilities (zeros when every
        weight is 0) and the final masks.
    """
    fused = fuse_models(maps, fusion["weight_2d"], fusion["weight_3d"])
    return gate_and_post(fused, shape, keep, thresholds, post, exclusive_classes)


def gate_and_post(
    fused: np.ndarray | None,
    shape: tuple[int, int, int, int],
    keep: np.ndarray | None,
    thresholds: float | Sequence[float],
    post: Mapping,
    exclusive_classes: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The rule of :func:`ensemble` after the fusion (the search fuses once per set of weights and calls this for
    each candidate). ``fused`` (from :func:`fuse_models`, None: nothing had a weight) is not modified.
    """
    probs = np.zeros(shape, np.float32) if fused is None else fused
    if probs.shape != tuple(shape):
        raise ValueError(f"fused maps of shape {probs.shape}, expected {tuple(shape)}")
    if keep is not None:
        probs = apply_keep(probs, keep)
    masks = postprocess(
        probs, thresholds, post["max_prob_floor"], post["min_component"], post["component_mode"], exclusive_classes
    )
    return probs, masks
