"""Search fusion weights, per-class thresholds, gate thresholds, weak-class floors and minimum component sizes on
out-of-fold probability maps, and write the tuned spec and a report.

Coordinate ascent over :data:`STEPS`: thresholds, then the classifier gate's thresholds, then weights model by
model (then the 2.5D/3D split), then thresholds again, weak-class floors and component sizes, each chosen per class
from the per-class value of the objective (under the ``per_class`` Hausdorff the competition score decomposes by
class; under ``union`` one value is shared by all classes). The objective (``objective=``, one of
:data:`evaluation.metric.OBJECTIVES`) is the competition score (the default), the mean 3D DSC or the mean NSD at a
tolerance in mm.

The evaluation is incremental (:class:`Evaluator`): the truth is decoded once per case-day, fused maps are kept
(sparse) between the steps that do not change the weights, and a candidate re-scores only the classes whose
setting it changes; every score equals :func:`evaluation.metric.score_case_day` on the full masks of
:func:`ensembles.core.ensemble`, the rule inference runs. Case-days are split over persistent worker processes
(``workers``), each with its own caches under a memory budget (``cache_mb``).

OOF folders follow docs/contracts.md "Probability maps"; a model's folds may be split over several folders
(one per fold). Every model must cover the same case-days; otherwise the search refuses, naming the folders.
The classes are the folders' (``meta.json`` ``classes``, the same in every folder); the truth is a Kaggle label
table (``train.csv``: the Kaggle layout's classes) or the masks of the WORK folder the maps were predicted from
(any dataset; exclusive classes are searched with the one-class-per-pixel rule that inference applies).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import multiprocessing as mp
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.io import atomic_write_text, markdown_table
from common.probmaps import ProbDir
from data_prep.dataset import KAGGLE, unpack_masks
from data_prep.layout import read_rle_table, shapes_manifest
from data_prep.rle import decode_case_day
from data_prep.work import check_work, has_mask, load_mask, read_dataset, read_manifest
from ensembles import core
from ensembles.spec import Spec
from evaluation.metric import (
    DEFAULT_EMPTY,
    DEFAULT_HAUSDORFF,
    OBJECTIVES,
    CaseDayScore,
    ScoreResult,
    TruthDistances,
    aggregate,
    hausdorff_distance,
    objective_scores,
)
from evaluation.scoring import kaggle_spacings
from evaluation.surface import default_tolerance, mask_surface, surface_scores, volume_diagonal

logger = logging.getLogger(__name__)

THRESHOLD_GRID: tuple[float, ...] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
FLOOR_GRID: tuple[float, ...] = (0.0, 0.4, 0.5, 0.6)
COMPONENT_GRID: tuple[int, ...] = (0, 10, 25, 50, 100)
WEIGHT_FACTORS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
GROUP_2D_GRID: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
GATE_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: The steps of the coordinate ascent, in order; ``steps=`` picks a subset.
STEPS: tuple[str, ...] = ("thresholds", "gate", "weights", "floor", "min_component")
#: Memory budget of the evaluation caches (MiB, all workers together); what does not fit is recomputed.
DEFAULT_CACHE_MB: float = 2048.0
#: Fused maps are kept for thresholds from this level up (the lowest of :data:`THRESHOLD_GRID`); a candidate with
#: a lower threshold fuses again and keeps the map from its own threshold up.
_LEVEL: float = min(THRESHOLD_GRID)
#: Margin under the level for the support of the fused maps (far above the float32 rounding of a fusion).
_MARGIN: float = 1e-3
#: The tolerance of records without an NSD (objective ``dsc``): one NaN object, so that the result lists it once.
_NO_TOLERANCE: float = float("nan")
#: Fused maps kept per case-day (the latest weight settings).
_FUSED_PER_CASE_DAY: int = 2


@dataclass
class Params:
    """One point of the search space."""

    weights: dict[str, float]
    weight_2d: float
    weight_3d: float
    thresholds: np.ndarray
    floor: np.ndarray
    min_component: np.ndarray
    component_mode: str = "2d"
    gate: dict = field(default_factory=dict)
    #: exclusive classes: one class per pixel after the thresholds (fixed by the data, not searched)
    exclusive: bool = False

    @classmethod
    def from_spec(cls, spec: Spec, models: Sequence[str], exclusive: bool = False) -> Params:
        """The spec's values, per class for ``spec.classes``."""
        n = len(spec.classes)
        return cls(
            weights={m: spec.model(m).weight for m in models},
            weight_2d=spec.fusion["weight_2d"],
            weight_3d=spec.fusion["weight_3d"],
            thresholds=core.per_class(spec.thresholds, n, "thresholds"),
            floor=core.per_class(spec.post["max_prob_floor"], n, "max_prob_floor"),
            min_component=core.per_class(spec.post["min_component"], n, "min_component").astype(int),
            component_mode=spec.post["component_mode"],
            gate=dict(spec.gate),
            exclusive=exclusive,
        )


def parse_oof(spec: Spec, items: Sequence[str]) -> dict[str, list[ProbDir]]:
    """``NAME=DIR`` or ``DIR`` arguments -> ``{model name: [ProbDir, ...]}``.

    A bare ``DIR`` is matched to the one spec model whose config file name equals the ``config`` in its
    meta.json; use ``NAME=DIR`` otherwise.

    Raises:
        ValueError: unknown model name (close matches), unmatched folder, a model whose folders overlap.
    """
    out: dict[str, list[ProbDir]] = {}
    for item in items:
        if "=" in item and not Path(item).exists():
            name, d = item.split("=", 1)
            spec.model(name)  # raises with close matches
            pd_ = ProbDir(d)
        else:
            pd_ = ProbDir(item)
            cfg = Path(str(pd_.meta.get("config", ""))).name
            hits = [m.name for m in spec.models if m.config is not None and m.config.name == cfg]
            if len(hits) != 1:
                raise ValueError(
                    f"{item}: cannot tell which spec model it belongs to (meta.json config {cfg!r} matches "
                    f"{hits or 'no model'}); pass it as NAME=DIR"
                )
            name = hits[0]
        out.setdefault(name, []).append(pd_)
    for name, dirs in out.items():
        seen: dict[str, Path] = {}
        for d in dirs:
            for cd in d.case_days:
                if cd in seen:
                    raise ValueError(f"model {name!r}: case-day {cd} is in both {seen[cd]} and {d.path}")
                seen[cd] = d.path
    return out


def item_path(item: str) -> str:
    """The path of an ``--oof`` argument (``NAME=PATH`` or ``PATH``)."""
    return item.split("=", 1)[1] if "=" in item and not Path(item).exists() else item


def classes_of_items(items: Sequence[str]) -> tuple[str, ...] | None:
    """The classes of the first probability folder among ``--oof`` arguments (to load the spec for them), or None
    when there is none."""
    for item in items:
        path = item_path(item)
        if not path.endswith(".csv"):
            cls = ProbDir(path).classes
            return tuple(cls) if cls else KAGGLE.classes
    return None


def folder_classes(oof: dict[str, list[ProbDir]]) -> tuple[str, ...]:
    """The classes of the probability folders (``meta.json`` ``classes``; a folder without them is of the Kaggle
    layout); refuses folders whose classes differ, naming two of them."""
    first: tuple[Path, tuple[str, ...]] | None = None
    for dirs in oof.values():
        for d in dirs:
            cls = tuple(d.classes) if d.classes else KAGGLE.classes
            if first is None:
                first = (d.path, cls)
            elif cls != first[1]:
                raise ValueError(
                    f"probability folders of different classes: {first[0]} has {list(first[1])}, {d.path} has "
                    f"{list(cls)}; every model must be predicted on the same dataset"
                )
    if first is None:
        raise ValueError("no probability folder given")
    return first[1]


def read_classifier_oof(
    spec: Spec, items: Sequence[str], classes: Sequence[str] = KAGGLE.classes
) -> pd.DataFrame | None:
    """``NAME=cls_probs.csv`` arguments of the spec's classifiers -> the mean presence probability per slice
    (``id`` and one column per class of ``classes``).

    A classifier's folds may be split over several CSVs (one per fold); they are concatenated, then the
    classifiers are averaged. Returns None when no item is given.
    """
    if not items:
        return None
    from gating.classifier import read_cls_probs  # torch: imported only when a classifier gate is searched

    per_model: dict[str, list[pd.DataFrame]] = {}
    for item in items:
        name, path = item.split("=", 1) if "=" in item else ("", item)
        if not name:
            names = [m.name for m in spec.models if m.kind == "classifier"]
            if len(names) != 1:
                raise ValueError(f"{item}: name the classifier it belongs to as NAME=CSV (spec classifiers: {names})")
            name = names[0]
        if spec.model(name).kind != "classifier":
            raise ValueError(f"{item}: model {name!r} is a {spec.model(name).kind} model, not a classifier")
        per_model.setdefault(name, []).append(read_cls_probs(path, classes=classes))
    frames = []
    for name, dfs in per_model.items():
        df = pd.concat(dfs, ignore_index=True)
        dup = df["id"][df["id"].duplicated()].tolist()
        if dup:
            raise ValueError(f"classifier {name!r}: slice ids in more than one CSV, e.g. {dup[:3]}")
        frames.append(df.set_index("id")[list(classes)])
    common = sorted(set.intersection(*[set(f.index) for f in frames]))
    return (sum(f.loc[common] for f in frames) / len(frames)).reset_index()


def check_same_case_days(oof: dict[str, list[ProbDir]]) -> list[str]:
    """The common sorted case-days; refuses (naming the folders) when models cover different sets."""
    sets = {n: set().union(*[set(d.case_days) for d in dirs]) for n, dirs in oof.items()}
    ref_name = next(iter(sets))
    for n, s in sets.items():
        if s != sets[ref_name]:
            a = sorted(sets[ref_name] - s)[:5]
            b = sorted(s - sets[ref_name])[:5]
            raise ValueError(
                f"OOF folders cover different case-days: {[str(d.path) for d in oof[ref_name]]} ({ref_name}) and "
                f"{[str(d.path) for d in oof[n]]} ({n}) differ: only in the first {a}, only in the second {b}. "
                "Every model must be predicted on the same case-days (as nnU-Net's ensembling requires)"
            )
    return sorted(sets[ref_name])


# ------------------------------------------------------------------------------------------ one candidate's masks


class _Support:
    """One case-day's model maps where they can matter: the voxels where some model's probability exceeds
    ``level`` (less a margin), with every model's values there (float32, exact).

    The fused map is a convex combination of the models' maps, so a voxel over ``level`` in the fused map of *any*
    weights is over ``level - margin`` in some model's map (the margin, :data:`_MARGIN`, covers the float32
    rounding of the fusion, a few 1e-7). Masks at thresholds ``>= level`` under any weights thus come from these
    voxels alone, fused with :func:`ensembles.core.fuse_models` itself on the gathered values (elementwise, so the
    same floats as the dense fusion): the weights step fuses a few percent of the voxels, and reads no map.
    A class whose support is not sparse (over a quarter of its voxels: very noisy maps, a threshold near 0) is
    marked dense and fused from the maps.

    Attributes:
        level: float32; valid for thresholds ``>= level``.
        shape: ``(D, C, H, W)``.
        parts: per class ``(idx int32 (n,) flat indices into (D, H, W), vals float32 (M, n))``, or None (dense).
    """

    __slots__ = ("level", "shape", "parts", "nbytes")

    def __init__(self, level: float, shape: Sequence[int], parts: list) -> None:
        self.level, self.shape, self.parts = np.float32(level), tuple(int(v) for v in shape), parts
        self.nbytes = int(sum(p[0].nbytes + p[1].nbytes for p in parts if p is not None))

    @classmethod
    def build(cls, maps: Sequence[np.ndarray], level: float) -> _Support:
        """From the models' float ``(D, C, H, W)`` maps (in fusion order)."""
        shape = maps[0].shape
        d, c, h, w = shape
        cut = np.float32(level - _MARGIN)
        idx_type = np.int32 if d * h * w < 2**31 else np.int64
        parts: list = []
        plane = h * w
        flat = [np.asarray(m, dtype=np.float32).reshape(-1) for m in maps]  # views of C-contiguous maps
        for k in range(c):
            top = np.array(maps[0][:, k], dtype=np.float32)
            for m in maps[1:]:
                np.maximum(top, m[:, k], out=top)
            idx = np.flatnonzero(top > cut)
            if idx.size * 4 > top.size:
                parts.append(None)
                continue
            at = (idx // plane) * (c * plane) + k * plane + idx % plane  # the same voxels in (D, C, H, W)
            parts.append((idx.astype(idx_type), np.stack([f[at] for f in flat]).astype(np.float32, copy=False)))
        return cls(level, shape, parts)

    def usable(self, t_min: float) -> bool:
        """Whether masks at every threshold ``>= t_min`` come from this support."""
        return bool(np.float32(t_min) >= self.level)


class _Fused:
    """One case-day's fused map at one set of weights, on its :class:`_Support` (dense for dense classes).

    Attributes:
        level, shape: the support's.
        parts: per class ``(idx, fused values float32 (n,))`` or the dense float32 ``(D, H, W)`` fused volume.
        peak: float32 ``(D, C)``: each (slice, class) maximum of the fused map, exact wherever a mask at a threshold
            ``>= level`` is non-empty (the only slices where the weak-class floor can act); 0 elsewhere.
    """

    __slots__ = ("level", "shape", "parts", "peak", "nbytes")

    def __init__(self, support: _Support, parts: list, peak: np.ndarray) -> None:
        self.level, self.shape, self.parts, self.peak = support.level, support.shape, parts, peak
        sizes = [sum(a.nbytes for a in p) if isinstance(p, tuple) else p.nbytes for p in parts]
        self.nbytes = int(peak.nbytes + sum(sizes))

    @classmethod
    def build(
        cls,
        support: _Support,
        models: Sequence[core.ModelMap],
        weight_2d: float,
        weight_3d: float,
        maps: Callable[[], Sequence[np.ndarray]],
    ) -> _Fused:
        """Fuse ``models`` (their ``probs`` are ignored: the support's values are fused) with the group weights;
        ``maps()`` gives the models' full maps, called only when a class is dense."""
        d, c, h, w = support.shape
        peak = np.zeros((d, c), np.float32)
        parts: list = []
        dense = None
        for k, part in enumerate(support.parts):
            if part is None:
                if dense is None:
                    full = [core.ModelMap(m.name, m.kind, m.weight, a) for m, a in zip(models, maps())]
                    dense = core.fuse_models(full, weight_2d, weight_3d)
                    if dense is None:
                        dense = np.zeros(support.shape, np.float32)
                vol = np.ascontiguousarray(dense[:, k])
                peak[:, k] = vol.reshape(d, -1).max(axis=1) if vol.size else 0
                parts.append(vol)
                continue
            idx, vals = part
            gathered = [core.ModelMap(m.name, m.kind, m.weight, vals[i][None]) for i, m in enumerate(models)]
            f = core.fuse_models(gathered, weight_2d, weight_3d)
            fv = np.zeros(idx.size, np.float32) if f is None else f[0]
            if idx.size:
                z = idx // (h * w)
                starts = np.flatnonzero(np.r_[True, z[1:] != z[:-1]])
                peak[z[starts], k] = np.maximum.reduceat(fv, starts)
            parts.append((idx, fv))
        return cls(support, parts, peak)

    def usable(self, t_min: float) -> bool:
        """Whether masks at every threshold ``>= t_min`` come from this map."""
        return bool(np.float32(t_min) >= self.level)

    def selected(self, k: int, t: float) -> np.ndarray:
        """Flat indices into ``(D, H, W)`` where class ``k``'s fused value is over ``t`` (float32 comparison, as
        :func:`ensembles.core.threshold`)."""
        t32 = np.float32(t)
        if t32 < self.level:
            raise RuntimeError(f"threshold {t} under the level {self.level} the support was kept at")
        part = self.parts[k]
        if isinstance(part, tuple):
            return part[0][part[1] > t32]
        return np.flatnonzero(part > t32)

    def dense(self) -> np.ndarray:
        """float32 ``(D, C, H, W)``: the fused values on the support, zeros elsewhere (enough for
        :func:`ensembles.core.exclusive`, which reads the probabilities of masked voxels only)."""
        d, c, h, w = self.shape
        out = np.zeros((d, c, h * w), np.float32)
        for k, part in enumerate(self.parts):
            if isinstance(part, tuple):
                idx, vals = part
                z, i = np.divmod(idx, h * w)
                out[z, k, i] = vals
            else:
                out[:, k] = part.reshape(d, h * w)
        return out.reshape(d, c, h, w)


def _check_post(p: Params, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class thresholds, floors and component sizes of ``p``, checked as the core functions check them."""
    t = core.per_class(p.thresholds, n, "thresholds")
    if ((t < 0) | (t > 1)).any():
        raise ValueError(f"thresholds must lie in [0, 1], got {t.tolist()}")
    floor = core.per_class(p.floor, n, "max_prob_floor")
    sizes = core.per_class(p.min_component, n, "min_component").astype(np.int64)
    return t, floor, sizes


def _class_masks(fz: _Fused, keep: np.ndarray | None, p: Params, classes: Sequence[int]) -> dict[int, np.ndarray]:
    """The final masks of ``classes`` for candidate ``p``, each as the sorted int64 flat indices of its voxels in
    ``(D, H, W)`` (:func:`_dense` makes the volume): the channels of :func:`ensembles.core.gate_and_post` on the
    dense fused map.

    Why class by class gives the same voxels: the gate multiplies dropped (slice, class) pairs by 0 and kept ones by
    1, so after the threshold (``>= 0``) it is ``& keep``; the weak-class floor compares each (slice, class) peak of
    the gated map with the floor, which matters only on kept slices with a masked voxel, where the peak is the fused
    one; small components are removed class by class (:func:`_remove_small`). Only exclusive classes couple: their
    one-class-per-pixel rule runs on all thresholded classes at once.
    """
    d, n, h, w = fz.shape
    plane = h * w
    t, floor, sizes = _check_post(p, n)
    out: dict[int, np.ndarray] = {}
    if p.exclusive and n > 1:
        masks = np.zeros((d, n, plane), dtype=bool)
        for k in range(n):
            sel = fz.selected(k, t[k])
            masks[sel // plane, k, sel % plane] = True
        masks = masks.reshape(d, n, h, w)
        if keep is not None:
            masks &= keep[:, :, None, None]
        masks = core.exclusive(masks, fz.dense())
        for k in classes:
            out[k] = np.flatnonzero(masks[:, k])
    else:
        for k in classes:
            sel = fz.selected(k, t[k])
            if keep is not None:
                sel = sel[keep[:, k][sel // plane]]
            out[k] = sel.astype(np.int64)
    for k in classes:
        idx = out[k]
        if floor[k] > 0 and idx.size:
            strong = fz.peak[:, k].astype(np.float64) >= floor[k]
            if not strong.all():
                idx = idx[strong[idx // plane]]
        if sizes[k] > 1 and idx.size:
            idx = _remove_small(idx, (d, h, w), int(sizes[k]), p.component_mode)
        out[k] = idx
    return out


def _remove_small(idx: np.ndarray, shape: tuple[int, int, int], size: int, mode: str) -> np.ndarray:
    """:func:`ensembles.core.remove_small` of the volume ``shape`` whose voxels are the sorted flat indices ``idx``;
    the kept voxels' sorted flat indices. In ``"2d"`` mode it runs on the slices from the first to the last one with
    a voxel (the same slices, so the same calls: ``cc3d.dust`` is not invariant to cropping a slice, it misses some
    components of slices taller than wide); in ``"3d"`` mode on the whole volume."""
    plane = shape[1] * shape[2]
    z0, z1 = (int(idx[0] // plane), int(idx[-1] // plane) + 1) if mode == "2d" else (0, shape[0])
    box = _dense(idx - z0 * plane, (z1 - z0, *shape[1:]))
    kept = core.remove_small(box[:, None], [size], mode)[:, 0]
    return np.flatnonzero(kept) + z0 * plane


def _dense(idx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """bool volume of ``shape`` with the flat indices ``idx`` set."""
    out = np.zeros(int(np.prod(shape)), dtype=bool)
    out[idx] = True
    return out.reshape(shape)


def _digest(idx: np.ndarray) -> bytes:
    """16 bytes naming a mask by its sorted int64 flat indices (equal masks of a case-day, equal digests)."""
    return hashlib.blake2b(np.ascontiguousarray(idx, dtype=np.int64).tobytes(), digest_size=16).digest()


def _apply(
    params: Params,
    probs: dict[str, np.ndarray],
    kinds: dict[str, str],
    cls_probs: np.ndarray | None,
    gate_probs: np.ndarray | None,
) -> np.ndarray:
    """Final masks bool ``(D, C, H, W)`` of one candidate on one case-day, computed the way the search computes
    them (on the maps' support, class by class); equal to :func:`ensembles.core.ensemble`, which inference runs.

    Args:
        params: the candidate.
        probs: ``{model name: float (D, C, H, W)}``, in fusion order.
        kinds: ``{model name: "2.5d" | "3d"}``.
        cls_probs: float ``(D, C)`` classifier presence probabilities (gate ``classifier``), or None.
        gate_probs: float ``(D, C, H, W)`` gate U-Net probabilities (gate ``unet_count``), or None.
    """
    shape = next(iter(probs.values())).shape
    keep = None
    if cls_probs is not None or gate_probs is not None:
        keep = core.gate_keep(params.gate, shape[:2], cls_probs=cls_probs, gate_probs=gate_probs)
    maps = list(probs.values())
    support = _Support.build(maps, min(_LEVEL, float(np.min(params.thresholds))))
    models = [core.ModelMap(n, kinds[n], params.weights[n], p) for n, p in probs.items()]
    fz = _Fused.build(support, models, params.weight_2d, params.weight_3d, lambda: maps)
    masks = _class_masks(fz, keep, params, range(shape[1]))
    vol = (shape[0], *shape[2:])
    return np.stack([_dense(masks[k], vol) for k in range(shape[1])], axis=1)


def _truth_masks(src: tuple, cd: str, ids: Sequence[str], hw: tuple[int, int]) -> np.ndarray:
    """bool ``(D, C, H, W)`` true masks of one case-day: ``("rle", rows)`` decodes Kaggle RLE rows, ``("work",
    work, num_classes, label_kind)`` unpacks the WORK mask."""
    if src[0] == "rle":
        return decode_case_day(src[1], hw[0], hw[1], list(ids))
    _, work, n, kind = src
    return unpack_masks(np.asarray(load_mask(work, cd)), n, kind).astype(bool)


def _params_key(p: Params) -> tuple:
    """Equal keys for equal candidates (the search proposes the same point more than once)."""
    return (
        tuple(sorted(p.weights.items())),
        p.weight_2d,
        p.weight_3d,
        _flat(p.thresholds),
        _flat(p.floor),
        _flat(p.min_component),
        p.component_mode,
        _gate_key(p.gate),
        p.exclusive,
    )


def _gate_key(gate: dict) -> tuple:
    return tuple(sorted((k, _flat(v) if isinstance(v, (list, tuple, np.ndarray)) else v) for k, v in gate.items()))


def _flat(a: Any) -> tuple:
    return tuple(np.asarray(a).ravel().tolist())


# ------------------------------------------------------------------------------------ the incremental evaluation


@dataclass(eq=False)
class _Job:
    """What scoring one case-day needs (small, sent to a worker once)."""

    case_day: str
    files: dict[str, str]  # model -> its folder holding this case-day
    gate_files: list[str]
    gate_weights: list[float]
    cls: np.ndarray | None  # float64 (D, C) classifier presence probabilities
    truth: tuple  # ("rle", rows) | ("work", work, num_classes, label_kind)
    ids: list[str]
    hw: tuple[int, int]
    spacing: tuple[float, float, float] | None = None

    @property
    def size(self) -> int:
        return len(self.ids) * self.hw[0] * self.hw[1]


class _Truth:
    """One case-day's truth, decoded once: per-slice counts (kept always) and the class volumes packed 8 voxels a
    byte (kept within the cache budget)."""

    def __init__(self, masks: np.ndarray) -> None:
        d, c, h, w = masks.shape
        self.shape = (d, h, w)
        self.counts = np.count_nonzero(masks.reshape(d, c, -1), axis=2).astype(np.int64)  # (D, C)
        self.packed = [np.packbits(masks[:, k].reshape(-1)) for k in range(c)]
        self.union = np.packbits(masks.any(axis=1).reshape(-1))
        self.surfaces: dict[int, Any] = {}
        self.distances: dict[int, TruthDistances] = {}
        self.distance_bytes = 0
        self.nbytes = sum(a.nbytes for a in self.packed) + self.union.nbytes + self.counts.nbytes

    def _unpack(self, packed: np.ndarray) -> np.ndarray:
        n = int(np.prod(self.shape))
        return np.unpackbits(packed, count=n).view(bool).reshape(self.shape)

    def volume(self, k: int) -> np.ndarray:
        """bool ``(D, H, W)`` of class ``k`` (a new array)."""
        return self._unpack(self.packed[k])

    def union_volume(self) -> np.ndarray:
        """bool ``(D, H, W)``: any class."""
        return self._unpack(self.union)


@dataclass
class _ClassResult:
    """The score pieces of one class volume of one case-day (reused by every candidate giving the same volume)."""

    inter: np.ndarray  # int32 (D,) per-slice |P ∩ T|
    pred: np.ndarray  # int32 (D,) per-slice |P|
    distance: float  # normalised Hausdorff distance when both volumes are non-empty, else nan
    surface: np.ndarray | None = None  # float64 (4,) [dsc, nsd, hd95, assd] (objectives that need them)


class _CaseDayWork:
    """What one case-day holds while one batch of candidates is scored on it: its maps, read at most once."""

    def __init__(self, shard: _Shard, job: _Job) -> None:
        self.shard, self.job = shard, job
        self._maps: dict[str, np.ndarray] | None = None
        self._gate: np.ndarray | None = None
        self.truth: _Truth | None = None
        # the support and the last fused map (when the cache has no room for them)
        self.support: _Support | None = None
        self.fused: tuple[tuple, _Fused] | None = None

    def maps(self) -> dict[str, np.ndarray]:
        """The models' float32 ``(D, C, H, W)`` maps, in fusion order (checked by :meth:`ProbDir.load`)."""
        if self._maps is None:
            job = self.job
            self._maps = {n: self.shard.folder(path).load(job.case_day) for n, path in job.files.items()}
            self.shard.stats["maps_read"] += len(self._maps)
            first, arr = next(iter(self._maps.items()))
            want = (len(job.ids), self.shard.n_classes, *job.hw)
            if arr.shape != want:
                raise ValueError(
                    f"{job.case_day}: the probability maps in {job.files[first]} are of shape {arr.shape}, the "
                    f"truth is {want} (D, C, H, W); the maps must be predicted at the images' full size"
                )
        return self._maps

    def gate_probs(self) -> np.ndarray:
        """float32 ``(D, C, H, W)``: the mean of the gate U-Nets' maps."""
        if self._gate is None:
            job = self.job
            gates = [self.shard.folder(p).load(job.case_day) for p in job.gate_files]
            self._gate = core.fuse(gates, job.gate_weights)
        return self._gate


class _Shard:
    """Scores candidates on a fixed set of case-days, keeping between calls what candidates share.

    Kept (per case-day): the truth (decoded once; per-slice counts always, the volumes packed within the budget),
    the gate's decisions per gate setting, the fused maps of the two latest weight settings (as :class:`_Fused`,
    within the budget), and, for every class, the key of each candidate's class setting -> the digest of the
    volume it gave -> that volume's score pieces (:class:`_ClassResult`; a few hundred bytes each). A candidate
    whose class settings were all seen costs no map, no mask and no distance: only the sums of the metric.
    A candidate that changes one class's setting computes that class's mask alone (except exclusive classes,
    coupled by their one-class-per-pixel rule, and the ``union`` Hausdorff, which needs every class), and a mask
    seen before under another setting reuses its scores.

    What does not fit the budget is recomputed when needed (the truth decoded again, the fused map fused again
    from the models' maps on disk), so memory stays bounded whatever the number of case-days.
    """

    def __init__(
        self,
        jobs: Sequence[_Job],
        models: Sequence[str],
        kinds: dict[str, str],
        n_classes: int,
        empty: str,
        hausdorff: str,
        objective: str,
        tolerance: float | None,
        budget_bytes: int,
    ) -> None:
        self.jobs = list(jobs)
        self.models, self.kinds, self.n_classes = list(models), dict(kinds), n_classes
        self.empty, self.hausdorff, self.objective, self.tolerance = empty, hausdorff, objective, tolerance
        self.budget, self.used = int(budget_bytes), 0
        self.stats: Counter = Counter()
        self._dirs: dict[str, ProbDir] = {}
        self._counts: dict[str, np.ndarray] = {}  # case-day -> int64 (D, C) true per-slice counts
        self._truth: dict[str, _Truth] = {}
        self._support: dict[str, _Support] = {}
        self._fused: dict[str, OrderedDict] = {}
        self._keep: dict[tuple, np.ndarray | None] = {}
        self._digest: dict[tuple, bytes] = {}
        self._results: dict[tuple, _ClassResult] = {}
        self._union: dict[tuple, float] = {}

    # -------------------------------------------------------------------------------------------- the caches

    def folder(self, path: str) -> ProbDir:
        """The probability folder at ``path``, opened once (its ``meta.json`` lists every case-day)."""
        if path not in self._dirs:
            self._dirs[path] = ProbDir(path)
        return self._dirs[path]

    def _truth_of(self, work: _CaseDayWork) -> _Truth:
        if work.truth is None:
            cd = work.job.case_day
            t = self._truth.get(cd)
            if t is None:
                job = work.job
                t = _Truth(_truth_masks(job.truth, cd, job.ids, job.hw))
                self.stats["truth_decoded"] += 1
                self._counts[cd] = t.counts
                self._store(self._truth, cd, t)
            work.truth = t
        return work.truth

    def _true_counts(self, work: _CaseDayWork) -> np.ndarray:
        cd = work.job.case_day
        if cd not in self._counts:
            self._truth_of(work)
        return self._counts[cd]

    def _store(self, table: dict, key: Any, value: Any) -> None:
        """Keep ``value`` in ``table`` if the budget has room (else it is recomputed when needed again)."""
        if self.used + value.nbytes <= self.budget:
            table[key] = value
            self.used += value.nbytes

    def _support_of(self, work: _CaseDayWork, t_min: float) -> _Support:
        cd = work.job.case_day
        sup = self._support.get(cd)
        if sup is None and work.support is not None:
            sup = work.support
        if sup is not None and sup.usable(t_min):
            return sup
        if cd in self._support:  # kept for a higher level: replaced
            self.used -= self._support.pop(cd).nbytes
        maps = work.maps()
        sup = _Support.build([maps[n] for n in self.models], min(_LEVEL, t_min))
        self.stats["supports"] += 1
        work.support = sup
        self._store(self._support, cd, sup)
        return sup

    def _fused_of(self, work: _CaseDayWork, p: Params, wkey: tuple, t_min: float) -> _Fused:
        cd = work.job.case_day
        lru = self._fused.setdefault(cd, OrderedDict())
        fz = lru.get(wkey)
        if fz is not None and fz.usable(t_min):
            lru.move_to_end(wkey)
            return fz
        if work.fused is not None and work.fused[0] == wkey and work.fused[1].usable(t_min):
            return work.fused[1]
        sup = self._support_of(work, t_min)
        models = [core.ModelMap(n, self.kinds[n], p.weights[n], np.empty(0)) for n in self.models]
        fz = _Fused.build(sup, models, p.weight_2d, p.weight_3d, lambda: [work.maps()[n] for n in self.models])
        self.stats["fused"] += 1
        work.fused = (wkey, fz)
        old = lru.pop(wkey, None)
        if old is not None:
            self.used -= old.nbytes
        while len(lru) >= _FUSED_PER_CASE_DAY:
            self.used -= lru.popitem(last=False)[1].nbytes
        self._store(lru, wkey, fz)
        return fz

    def _keep_of(self, work: _CaseDayWork, p: Params) -> np.ndarray | None:
        job = work.job
        if job.cls is None and not job.gate_files:
            return None
        key = (job.case_day, _gate_key(p.gate))
        if key not in self._keep:
            gate_probs = work.gate_probs if job.gate_files else None
            shape = (len(job.ids), self.n_classes)
            self._keep[key] = core.gate_keep(p.gate, shape, cls_probs=job.cls, gate_probs=gate_probs)
        return self._keep[key]

    # ------------------------------------------------------------------------------------------- the scores

    def _class_result(self, work: _CaseDayWork, k: int, idx: np.ndarray) -> _ClassResult:
        """The score pieces of class ``k``'s volume given by its sorted flat voxel indices ``idx``."""
        truth = self._truth_of(work)
        tv = truth.volume(k)
        d = tv.shape[0]
        plane = tv[0].size
        pred = np.bincount(idx // plane, minlength=d)
        inter = np.bincount(idx[tv.reshape(-1)[idx]] // plane, minlength=d)
        dist = float("nan")
        mask = None
        if self.hausdorff == "per_class" and idx.size and truth.counts[:, k].any():
            mask = _dense(idx, tv.shape)
            dist = self._truth_distances(work, truth, k, tv).distance(mask, idx)
            self.stats["hausdorff"] += 1
        surface = None
        if self.objective != "competition":
            mask = _dense(idx, tv.shape) if mask is None else mask
            surface = self._surface(work, truth, k, mask, tv, int(inter.sum()), int(idx.size))
        return _ClassResult(inter.astype(np.int32), pred.astype(np.int32), dist, surface)

    def _truth_distances(self, work: _CaseDayWork, truth: _Truth, k: int, tv: np.ndarray) -> TruthDistances:
        """Class ``k``'s :class:`TruthDistances` (made once per case-day and class, kept with its truth)."""
        td = truth.distances.get(k)
        if td is None:
            td = truth.distances[k] = TruthDistances(tv)
        kept = self._truth.get(work.job.case_day) is truth
        before = truth.distance_bytes
        truth.distance_bytes = sum(d.nbytes for d in truth.distances.values())
        if kept:  # counted in the budget with its truth
            self.used += truth.distance_bytes - before
        return td

    def _surface(
        self, work: _CaseDayWork, truth: _Truth, k: int, mask: np.ndarray, tv: np.ndarray, inter: int, pred: int
    ) -> np.ndarray:
        """float64 ``(4,)`` ``[dsc, nsd, hd95, assd]`` of one class volume, as :func:`evaluation.metric.score_case_day`
        gives them (the truth's surface made once per case-day and class). Objective ``dsc``: the DSC alone, from
        the voxel counts (no surface, no spacing; the other three NaN)."""
        t = int(truth.counts[:, k].sum())
        if self.objective == "dsc":
            dsc = (1.0 if self.empty == "one" else np.nan) if pred == 0 and t == 0 else 2.0 * inter / (pred + t)
            return np.array([dsc, np.nan, np.nan, np.nan])
        sp = work.job.spacing
        if sp is None:
            raise RuntimeError(f"{work.job.case_day}: no voxel spacing for objective {self.objective!r}")
        if pred == 0 and t == 0:
            return np.array([1.0, 1.0, 0.0, 0.0]) if self.empty == "one" else np.full(4, np.nan)
        if pred == 0 or t == 0:
            diag = volume_diagonal(tv.shape, sp)
            return np.array([0.0, 0.0, diag, diag])
        ts = truth.surfaces.get(k)
        if ts is None:
            ts = truth.surfaces[k] = mask_surface(tv, sp)
            if self._truth.get(work.job.case_day) is truth:  # kept with its truth: counted in the budget
                self.used += sum(v.nbytes for v in vars(ts).values() if isinstance(v, np.ndarray))
        self.stats["surfaces"] += 1
        return surface_scores(mask, tv, sp, self._tolerance(work), truth_surface=ts, empty=self.empty)

    def _tolerance(self, work: _CaseDayWork) -> float:
        """The NSD tolerance (mm) of a case-day: the given one, else one voxel."""
        if self.objective != "nsd":
            return _NO_TOLERANCE
        return default_tolerance(work.job.spacing) if self.tolerance is None else float(self.tolerance)

    def score(self, cands: Sequence[Params]) -> list[list[CaseDayScore]]:
        """``[case-day][candidate]`` records of this shard's case-days, in their order."""
        return [self._score_case_day(job, cands) for job in self.jobs]

    def _score_case_day(self, job: _Job, cands: Sequence[Params]) -> list[CaseDayScore]:
        work = _CaseDayWork(self, job)
        return [self._score_one(work, p) for p in cands]

    def _score_one(self, work: _CaseDayWork, p: Params) -> CaseDayScore:
        cd, n = work.job.case_day, self.n_classes
        keep = self._keep_of(work, p)
        wkey = (tuple(float(p.weights[m]) for m in self.models), float(p.weight_2d), float(p.weight_3d))
        t = core.per_class(p.thresholds, n, "thresholds")
        if p.exclusive and n > 1:
            up = (None if keep is None else keep.tobytes(), _flat(t))
            ups = [up] * n
        else:
            ups = [(None if keep is None else keep[:, k].tobytes(), float(t[k])) for k in range(n)]
        floor = core.per_class(p.floor, n, "max_prob_floor")
        sizes = core.per_class(p.min_component, n, "min_component")
        ckeys = [(cd, k, wkey, ups[k], float(floor[k]), int(sizes[k]), p.component_mode) for k in range(n)]
        digests = [self._digest.get(ck) for ck in ckeys]
        union_key = (cd, tuple(ckeys))
        need_union = self.hausdorff == "union" and union_key not in self._union
        todo = list(range(n)) if need_union else [k for k in range(n) if digests[k] is None]
        masks: dict[int, np.ndarray] = {}
        if todo:
            t_min = float(np.min(t)) if p.exclusive else float(np.min(t[todo]))
            fz = self._fused_of(work, p, wkey, t_min)
            masks = _class_masks(fz, keep, p, todo)
            self.stats["masks"] += len(todo)
            for k in todo:
                dig = _digest(masks[k])
                self._digest[ckeys[k]] = digests[k] = dig
                rk = (cd, k, dig)
                if rk not in self._results:
                    self._results[rk] = self._class_result(work, k, masks[k])
        else:
            self.stats["cached_candidates"] += 1
        res = [self._results[(cd, k, digests[k])] for k in range(n)]
        if need_union:
            truth = self._truth_of(work)
            union = np.unique(np.concatenate([masks[k] for k in range(n)]))
            ukey = (cd, "union", _digest(union))
            if ukey not in self._union:
                self._union[ukey] = hausdorff_distance(_dense(union, truth.shape), truth.union_volume())
                self.stats["hausdorff"] += 1
            self._union[union_key] = self._union[ukey]
        return self._record(work, p, res, self._union.get(union_key))

    def _record(self, work: _CaseDayWork, p: Params, res: list[_ClassResult], union: float | None) -> CaseDayScore:
        """The :func:`evaluation.metric.score_case_day` record from the class pieces, with its arithmetic."""
        i_cnt = np.stack([r.inter for r in res], axis=1).astype(np.int64)
        p_cnt = np.stack([r.pred for r in res], axis=1).astype(np.int64)
        t_cnt = self._true_counts(work)
        total = p_cnt + t_cnt
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = 2.0 * i_cnt / total
        dice[total == 0] = 1.0 if self.empty == "one" else np.nan
        valid = ~np.isnan(dice)
        dice_sum = np.where(valid, dice, 0.0).sum(axis=0)
        dice_count = valid.sum(axis=0).astype(np.float64)
        if self.hausdorff == "union":
            dist = np.array([union])
        else:
            p_any, t_any = p_cnt.sum(axis=0) > 0, t_cnt.sum(axis=0) > 0
            dist = np.empty(len(res))
            for k, r in enumerate(res):
                if not p_any[k] and not t_any[k]:
                    dist[k] = np.nan
                elif p_any[k] != t_any[k]:
                    dist[k] = 1.0
                else:
                    dist[k] = r.distance
        if self.empty == "one":
            dist = np.where(np.isnan(dist), 0.0, dist)
        rec = CaseDayScore(work.job.case_day, dice_sum, dice_count, dist, len(work.job.ids))
        if self.objective != "competition":
            rec.surface = np.stack([r.surface for r in res])
            rec.tolerance = self._tolerance(work)
        return rec

    def info(self) -> dict[str, int]:
        """Counters (maps read, fusions, masks, distances, ...) and the cache's bytes."""
        return {**self.stats, "cache_bytes": self.used}


def _worker(conn: Any, shard_args: tuple) -> None:
    """A worker process: builds its shard, then answers ``(method, args)`` messages until ``None``."""
    shard = _Shard(*shard_args)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        method, args = msg
        try:
            conn.send(("ok", getattr(shard, method)(*args)))
        except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
            try:
                conn.send(("error", e))
            except Exception:  # an exception that does not pickle
                conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))


class _Workers:
    """Persistent worker processes, one per shard of case-days; each keeps its own caches between calls."""

    def __init__(self, shard_args: Sequence[tuple]) -> None:
        methods = mp.get_all_start_methods()
        # fork: the parent's imports and the jobs are inherited, a worker starts in milliseconds
        ctx = mp.get_context("fork" if "fork" in methods else None)
        self.conns, self.procs = [], []
        for args in shard_args:
            a, b = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(b, args), daemon=True)
            proc.start()
            b.close()
            self.conns.append(a)
            self.procs.append(proc)

    def call(self, method: str, *args: Any) -> list:
        """Every worker's answer, in shard order; a worker's exception is raised here."""
        for c in self.conns:
            c.send((method, args))
        out, error = [], None
        for c, proc in zip(self.conns, self.procs):
            try:
                status, value = c.recv()
            except EOFError:
                status, value = (
                    "error",
                    RuntimeError(
                        f"search worker {proc.pid} died (exit code {proc.exitcode}); if it ran out of memory, "
                        "give fewer --workers or a smaller cache budget (cache_mb)"
                    ),
                )
            if status == "error" and error is None:
                error = value
            out.append(value)
        if error is not None:
            raise error
        return out

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
                c.close()
            except (OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        self.conns, self.procs = [], []


def _split(jobs: Sequence[_Job], n: int) -> list[list[_Job]]:
    """``n`` shards of about equal voxel counts (largest first onto the lightest shard), each in case-day order."""
    shards: list[list[_Job]] = [[] for _ in range(n)]
    load = [0] * n
    for job in sorted(jobs, key=lambda j: -j.size):
        i = int(np.argmin(load))
        shards[i].append(job)
        load[i] += job.size
    order = {j.case_day: i for i, j in enumerate(jobs)}
    return [sorted(s, key=lambda j: order[j.case_day]) for s in shards if s]


class Evaluator:
    """Scores candidate :class:`Params` on the OOF case-days, incrementally.

    Candidates already scored are not scored again. Each case-day is scored by a shard (:class:`_Shard`) that
    keeps what candidates share: the truth, decoded once; the models' maps where they can exceed the lowest
    threshold (:class:`_Support`, a few percent of the voxels), from which any weights are fused without reading
    a map; per class, the volume each class setting gave and that volume's score pieces (per-slice Dice counts,
    Hausdorff distance, surface scores). A candidate that differs from those seen in one class's threshold, gate
    threshold, floor or minimum component size computes that class's mask and scores alone; the score is then
    summed from the per-class pieces with :func:`evaluation.metric.score_case_day`'s arithmetic, so every score
    equals that function's on the full masks of :func:`ensembles.core.ensemble`.

    With ``workers >= 2`` the case-days are split into that many shards of about equal size, each in a
    persistent worker process (started at the first call, stopped by :meth:`close` or ``with``) holding its own
    caches; the candidates of a call go to every worker at once and only the per-case-day records come back.

    Memory: a shard keeps the packed truth, the support and the fused maps of the two latest weight settings of
    its case-days while its share of ``cache_mb`` lasts, first come first kept (the search visits every case-day
    in each call, a cycle under which a least-recently-used cache would evict each entry just before its next
    use); a case-day that did not fit is recomputed when a call needs it (its truth decoded, its maps read and
    fused again, as the search did before for every call), never spilled to disk: re-reading the float16 maps
    costs about what reading a spilled fused map would. At 1/4 of the real size the 274 UW-Madison case-days take
    about 0.7 GB; at full size about 11 GB, so a budget of 2 GB keeps about a fifth of them. The class pieces
    (a few hundred bytes per distinct class volume and case-day) are always kept.

    Args:
        spec: the spec to start from (taken for the folders' classes: :meth:`ensembles.spec.Spec.for_classes`).
        oof: :func:`parse_oof` output.
        truth: a Kaggle label table (:func:`data_prep.layout.read_rle_table`), or the WORK folder the maps were
            predicted from (its masks are the truth, its ``dataset.json`` gives the classes and the label kind).
        manifest: image sizes for RLE labels (a manifest with ``id, height, width``, and the pixel spacing
            ``px_h, px_w`` for the surface objectives; default: the maps' shapes).
        empty, hausdorff: metric conventions. workers: processes (0 or 1: this one).
        cls_probs: out-of-fold presence probabilities of the classifier gate (``id`` + class columns).
        cache_mb: memory budget of the caches in MiB, all workers together (what does not fit is recomputed).
        objective: what :func:`search` maximises (:data:`OBJECTIVES`); ``"dsc"`` and ``"nsd"`` make every record
            carry the surface scores of :func:`evaluation.metric.score_case_day` (``competition`` computes none).
        tolerance: the NSD tolerance in mm (None: one voxel of each case-day,
            :func:`evaluation.surface.default_tolerance`).
    """

    def __init__(
        self,
        spec: Spec,
        oof: dict[str, list[ProbDir]],
        truth: pd.DataFrame | str | os.PathLike,
        manifest: pd.DataFrame | None = None,
        empty: str = DEFAULT_EMPTY,
        hausdorff: str = DEFAULT_HAUSDORFF,
        workers: int = 0,
        cls_probs: pd.DataFrame | None = None,
        cache_mb: float = DEFAULT_CACHE_MB,
        objective: str = "competition",
        tolerance: float | None = None,
    ):
        self.empty, self.hausdorff, self.workers = empty, hausdorff, workers
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        if tolerance is not None and not (np.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"tolerance must be a distance >= 0 in mm, got {tolerance!r}")
        self.cache_mb = cache_mb
        #: what the search maximises, and the NSD tolerance in mm (None: one voxel of each case-day)
        self.objective, self.tolerance = check_objective(objective), tolerance
        self.classes = folder_classes(oof)
        self.work: Path | None = None
        self.exclusive = False
        self.label_kind = "overlapping"
        if isinstance(truth, pd.DataFrame):
            if self.classes != KAGGLE.classes:
                raise ValueError(
                    f"a label table ({truth.attrs.get('source', 'RLE labels')}) holds the Kaggle layout's classes "
                    f"{list(KAGGLE.classes)}, the probability folders have {list(self.classes)}; give the WORK "
                    "folder they were predicted from as the truth (--work)"
                )
        else:
            self.work = check_work(truth, need_masks=True, need_splits=False)
            info = read_dataset(self.work)
            if info.classes != self.classes:
                raise ValueError(
                    f"{self.work}: the dataset has classes {list(info.classes)}, the probability folders "
                    f"{list(self.classes)}; give the WORK folder they were predicted from"
                )
            self.label_kind = info.label_kind
            self.exclusive = info.label_kind == "exclusive"
        self.spec = spec = spec.for_classes(self.classes)
        #: out-of-fold presence probabilities (id + class columns) for a classifier gate, else None
        self.cls_probs = cls_probs.set_index("id")[list(self.classes)] if cls_probs is not None else None
        if self.cls_probs is not None and spec.gate["method"] != "classifier":
            raise ValueError(f"classifier OOF probabilities given, but the spec's gate is {spec.gate['method']!r}")
        seg = [m.name for m in spec.models if m.kind in ("2.5d", "3d") and m.role == "segment"]
        missing = [n for n in seg if n not in oof]
        if missing:
            raise ValueError(f"no OOF folder given for spec model(s) {missing}; pass NAME=DIR for each")
        self.models = seg
        gate_names = [m.name for m in spec.by_kind("2.5d", role="gate")]
        self.gate_models = [n for n in gate_names if n in oof] if spec.gate["method"] == "unet_count" else []
        if spec.gate["method"] != "none" and not self.gate_models and self.cls_probs is None:
            logger.warning(
                "gate %r not applied in the search (its OOF predictions were not given)", spec.gate["method"]
            )
        used = {n: oof[n] for n in seg + self.gate_models}
        self.case_days = check_same_case_days(used)
        self.kinds = {n: spec.model(n).kind for n in seg}
        self.where = {n: {cd: str(d.path) for d in dirs for cd in d.case_days} for n, dirs in used.items()}
        ref = used[seg[0]]
        self.ids = {cd: d.case_days[cd] for d in ref for cd in d.case_days}
        if self.cls_probs is not None:
            missing = sorted({i for cd in self.case_days for i in self.ids[cd]} - set(self.cls_probs.index))
            if missing:
                raise ValueError(
                    f"classifier OOF probabilities lack {len(missing)} slice(s) of the OOF case-days, e.g. "
                    f"{missing[:3]}; predict them with the classifier of the same folds"
                )
        self.truth = truth.set_index("id")[list(self.classes)] if self.work is None else None
        pixel = kaggle_spacings(manifest) if manifest is not None and self.objective == "nsd" else {}
        if manifest is not None and "case_day" not in manifest.columns:
            manifest = shapes_manifest(manifest)
        sizes = None
        if manifest is not None:
            first = manifest.groupby("case_day", sort=False)[["height", "width"]].first()
            sizes = {cd: (int(r.height), int(r.width)) for cd, r in first.iterrows()}
        self.hw: dict[str, tuple[int, int]] = {}
        for cd in self.case_days:
            if self.work is not None:
                if not has_mask(self.work, cd):
                    raise ValueError(f"{self.work}: no mask of {cd} (the OOF folders list it); is it the right WORK?")
                shape = load_mask(self.work, cd).shape
                if shape[0] != len(self.ids[cd]):
                    raise ValueError(
                        f"{self.work}: {cd} has {shape[0]} slices, the OOF folders list {len(self.ids[cd])}"
                    )
                self.hw[cd] = (int(shape[1]), int(shape[2]))
            elif sizes is not None:
                if cd not in sizes:
                    raise ValueError(f"the manifest has no slice of {cd} (the OOF folders list it)")
                self.hw[cd] = sizes[cd]
            else:
                shape = np.load(Path(self.where[seg[0]][cd]) / f"{cd}.npy", mmap_mode="r").shape
                self.hw[cd] = (int(shape[2]), int(shape[3]))
        #: voxel spacing (sz, sy, sx) mm per case-day (the surface objectives), else None
        self.spacing = self._spacings(pixel) if self.objective == "nsd" else None
        #: candidates scored (distinct), and the scores by candidate key
        self.n_evals = 0
        self._scores: dict[tuple, ScoreResult] = {}
        jobs = [self._job(cd) for cd in self.case_days]
        n = max(1, min(int(workers), len(jobs)))
        self._shards = _split(jobs, n)
        budget = int(cache_mb * 2**20) // len(self._shards)
        self._shard_args = [
            (s, self.models, self.kinds, len(self.classes), empty, hausdorff, self.objective, self.tolerance, budget)
            for s in self._shards
        ]
        self._local: _Shard | None = None
        self._pool: _Workers | None = None

    def _spacings(self, kaggle: dict[str, tuple[float, float, float]]) -> dict[str, tuple[float, float, float]]:
        """Each case-day's voxel spacing (mm): the WORK's ``dataset.json`` (the Kaggle layout's default with WORK's
        manifest's pixel spacing), or ``kaggle`` (:func:`evaluation.scoring.kaggle_spacings` of the label
        manifest)."""
        need = f"objective {self.objective!r} scores surfaces in mm and needs each case-day's voxel spacing"
        out = {}
        if self.work is not None:
            info = read_dataset(self.work)
            if not all(cd in info.volumes for cd in self.case_days):
                kaggle = kaggle_spacings(read_manifest(self.work))
            for cd in self.case_days:
                px = kaggle[cd][1:] if cd in kaggle else None
                try:
                    out[cd] = tuple(float(v) for v in info.spacing(cd, px))
                except KeyError:
                    raise ValueError(
                        f"{self.work}: {need}, but {cd} has none (neither in dataset.json nor as pixel spacing in "
                        f"the manifest); prepare the WORK again (python -m data_prep prepare) to record it"
                    ) from None
            return out
        missing = [cd for cd in self.case_days if cd not in kaggle]
        if missing:
            raise ValueError(
                f"{need}: the labels give none, and the manifest has no pixel spacing of {missing[:3]}; pass the "
                "Kaggle tree (--data-root: the scan file names give it) or a manifest with columns px_h, px_w (mm; "
                "or px_h_mm, px_w_mm) (--manifest), or the WORK folder as the truth (--work)"
            )
        return {cd: kaggle[cd] for cd in self.case_days}

    def tolerance_text(self) -> str:
        """The NSD tolerance in words (``"2 mm"``, or one voxel with its range in mm)."""
        if self.tolerance is not None:
            return f"{self.tolerance:g} mm"
        if not self.spacing:
            return "1 voxel"
        tols = sorted({default_tolerance(sp) for sp in self.spacing.values()})
        mm = f"{tols[0]:g} mm" if len(tols) == 1 else f"{tols[0]:g}-{tols[-1]:g} mm"
        return f"1 voxel = {mm}"

    def _job(self, cd: str) -> _Job:
        ids = self.ids[cd]
        if self.work is None:
            src: tuple = ("rle", self.truth.reindex(ids).fillna("").to_numpy().tolist())
        else:
            src = ("work", str(self.work), len(self.classes), self.label_kind)
        return _Job(
            case_day=cd,
            files={n: self.where[n][cd] for n in self.models},
            gate_files=[self.where[n][cd] for n in self.gate_models],
            gate_weights=[self.spec.model(n).weight for n in self.gate_models],
            cls=None if self.cls_probs is None else self.cls_probs.loc[ids].to_numpy(np.float64),
            truth=src,
            ids=list(ids),
            hw=self.hw[cd],
            spacing=None if self.spacing is None else self.spacing[cd],
        )

    def __call__(self, cands: Sequence[Params]) -> list[ScoreResult]:
        keys = [_params_key(p) for p in cands]
        todo: dict[tuple, Params] = {}
        for k, p in zip(keys, cands):
            if k not in self._scores:
                todo.setdefault(k, p)
        if todo:
            for k, r in zip(todo, self._score(list(todo.values()))):
                self._scores[k] = r
        return [self._scores[k] for k in keys]

    def _call(self, method: str, *args: Any) -> list:
        """``method`` of every shard, in shard order (in this process, or in the workers)."""
        if len(self._shards) == 1 and self.workers <= 1:
            if self._local is None:
                self._local = _Shard(*self._shard_args[0])
            return [getattr(self._local, method)(*args)]
        if self._pool is None:
            self._pool = _Workers(self._shard_args)
        return self._pool.call(method, *args)

    def _score(self, cands: list[Params]) -> list[ScoreResult]:
        by_cd: dict[str, list[CaseDayScore]] = {}
        for shard, recs in zip(self._shards, self._call("score", cands)):
            for job, r in zip(shard, recs):
                by_cd[job.case_day] = r
        per_cd = [by_cd[cd] for cd in self.case_days]
        self.n_evals += len(cands)
        return [aggregate([r[i] for r in per_cd], self.empty, self.hausdorff, self.classes) for i in range(len(cands))]

    def stats(self) -> dict[str, int]:
        """What the shards did so far, summed: ``maps_read`` (model maps loaded), ``fused`` (fusions),
        ``truth_decoded``, ``masks`` (class masks built), ``hausdorff`` (distances computed),
        ``cached_candidates`` (candidate x case-day pairs answered from the caches), ``cache_bytes``."""
        if self._local is None and self._pool is None:
            return {}
        total: Counter = Counter()
        for s in self._call("info"):
            total.update(s)
        return dict(total)

    def close(self) -> None:
        """Stop the worker processes (a later call starts them again, with empty caches)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def check_objective(objective: str) -> str:
    """``objective`` when it is one of :data:`evaluation.metric.OBJECTIVES`, else ValueError."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    return objective


def objective_values(res: ScoreResult, objective: str = "competition") -> tuple[float, np.ndarray]:
    """What the search maximises: the overall value of ``objective`` and its per-class values float64 ``(C,)``
    (a class without a value, e.g. under the ``union`` Hausdorff, takes the overall one)."""
    if objective == "competition":
        pc = res.per_class.set_index("class")
        overall, per = res.score, np.array([pc.loc[c, "score"] for c in res.classes], dtype=np.float64)
    else:
        overall, per = objective_scores(res, objective)
        per = np.asarray(per, dtype=np.float64)
    return float(overall), np.where(np.isnan(per), overall, per)


def _pick_per_class(results: list[ScoreResult], values: list, current_index: int, objective: str) -> list:
    """For each class the value of the best candidate (ties keep the current one)."""
    scores = np.stack([objective_values(r, objective)[1] for r in results])  # (K, C)
    out = []
    for c in range(scores.shape[1]):
        best = current_index
        for k in range(len(values)):
            if scores[k, c] > scores[best, c] + 1e-12:
                best = k
        out.append(values[best][c] if np.ndim(values[best]) else values[best])
    return out


def search(
    spec: Spec,
    ev: Evaluator,
    log: Callable[[str], None] = logger.info,
    steps: Sequence[str] = STEPS,
    objective: str | None = None,
) -> tuple[Params, ScoreResult, ScoreResult]:
    """Coordinate ascent from the spec's values over ``steps`` (a subset of :data:`STEPS`), maximising
    ``objective`` (default: the evaluator's, :attr:`Evaluator.objective`; ``"competition"`` always works, the
    surface objectives need an evaluator made for them).

    Returns:
        ``(tuned params, score before, score after)``.
    """
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown search step(s) {unknown}; known: {', '.join(STEPS)}")
    objective = ev.objective if objective is None else objective
    check_objective(objective)
    if objective not in ("competition", ev.objective):
        raise ValueError(
            f"objective {objective!r}: the evaluator scores {ev.objective!r}; make it with objective={objective!r}"
        )
    label = "score" if objective == "competition" else objective

    def value(r: ScoreResult) -> float:
        return objective_values(r, objective)[0]

    spec = spec.for_classes(ev.classes)
    n = len(ev.classes)
    cur = Params.from_spec(spec, ev.models, ev.exclusive)
    before = ev([cur])[0]
    best_score = value(before)
    log(f"start: {label} {best_score:.5f}")

    def post_step(cur: Params, best_score: float, attr: str, grid: Sequence) -> tuple[Params, float]:
        values = [getattr(cur, attr)] + [np.full(n, v) for v in grid]
        cands = []
        for v in values:
            p = copy.deepcopy(cur)
            setattr(p, attr, np.asarray(v).astype(getattr(cur, attr).dtype))
            cands.append(p)
        res = ev(cands)
        picked = np.asarray(_pick_per_class(res, values, 0, objective)).astype(getattr(cur, attr).dtype)
        trial = copy.deepcopy(cur)
        setattr(trial, attr, picked)
        r = value(ev([trial])[0])
        if r > best_score + 1e-12:
            cur, best_score = trial, r
        log(f"{attr}: {getattr(cur, attr).tolist()} -> {label} {best_score:.5f}")
        return cur, best_score

    # thresholds first (weights compared at a sensible threshold), then weights, then all post-processing
    if "thresholds" in steps:
        cur, best_score = post_step(cur, best_score, "thresholds", THRESHOLD_GRID)
    if ev.cls_probs is not None and "gate" in steps:
        # classifier-gate thresholds, per class (0.0 keeps every slice: the gate can only help)
        now = core.per_class(cur.gate.get("thresholds", 0.5), n, "gate thresholds")
        values = [now] + [np.full(n, v) for v in GATE_GRID]
        cands = [copy.deepcopy(cur) for _ in values]
        for p, v in zip(cands, values):
            p.gate["thresholds"] = [float(x) for x in v]
        res = ev(cands)
        trial = copy.deepcopy(cur)
        trial.gate["thresholds"] = [float(x) for x in _pick_per_class(res, values, 0, objective)]
        r = value(ev([trial])[0])
        if r > best_score + 1e-12:
            cur, best_score = trial, r
        log(f"gate thresholds: {cur.gate['thresholds']} -> {label} {best_score:.5f}")
    # weights, model by model
    if len(ev.models) > 1 and "weights" in steps:
        for name in ev.models:
            base = cur.weights[name] if cur.weights[name] > 0 else 1.0 / len(ev.models)
            cands = []
            for f in WEIGHT_FACTORS:
                p = copy.deepcopy(cur)
                p.weights[name] = base * f
                if sum(p.weights.values()) > 0:
                    cands.append(p)
            res = ev(cands)
            vals = [value(r) for r in res]
            k = int(np.argmax(vals))
            if vals[k] > best_score + 1e-12:
                cur, best_score = cands[k], vals[k]
            log(f"weight {name}: {cur.weights[name]:.3f} -> {label} {best_score:.5f}")
    if (
        "weights" in steps
        and any(ev.kinds[n] == "3d" for n in ev.models)
        and any(ev.kinds[n] == "2.5d" for n in ev.models)
    ):
        cands = []
        for w2 in GROUP_2D_GRID:
            p = copy.deepcopy(cur)
            p.weight_2d, p.weight_3d = w2, 1.0 - w2
            cands.append(p)
        res = ev(cands)
        vals = [value(r) for r in res]
        k = int(np.argmax(vals))
        if vals[k] > best_score + 1e-12:
            cur, best_score = cands[k], vals[k]
        log(f"2.5d/3d split: {cur.weight_2d:.2f}/{cur.weight_3d:.2f} -> {label} {best_score:.5f}")
    for attr, grid in (("thresholds", THRESHOLD_GRID), ("floor", FLOOR_GRID), ("min_component", COMPONENT_GRID)):
        if attr in steps and (attr != "thresholds" or len(steps) > 1):  # thresholds again after the others
            cur, best_score = post_step(cur, best_score, attr, grid)
    after = ev([cur])[0]
    return cur, before, after


def tuned_spec(spec: Spec, p: Params) -> Spec:
    """A copy of ``spec`` (for its classes, which it names) with the searched values."""
    s = copy.deepcopy(spec)
    s.classes_named = True
    n = len(s.classes)
    for m in s.models:
        if m.name in p.weights:
            m.weight = round(float(p.weights[m.name]), 6)
    s.fusion = {"weight_2d": round(float(p.weight_2d), 6), "weight_3d": round(float(p.weight_3d), 6)}
    if p.gate.get("method") == "classifier":
        s.gate = dict(s.gate, thresholds=[round(float(v), 6) for v in core.per_class(p.gate["thresholds"], n, "gate")])
    s.thresholds = [round(float(v), 6) for v in p.thresholds]
    s.post = {
        "max_prob_floor": [round(float(v), 6) for v in p.floor],
        "min_component": [int(v) for v in p.min_component],
        "component_mode": p.component_mode,
    }
    s.name = f"{spec.name}_tuned"
    return s


def run_search(
    spec: Spec,
    oof_items: Sequence[str],
    truth_csv: str | os.PathLike | None,
    out: str | os.PathLike,
    manifest: pd.DataFrame | None = None,
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
    workers: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = logger.info,
    steps: Sequence[str] = STEPS,
    work: str | os.PathLike | None = None,
    objective: str = "competition",
    tolerance: float | None = None,
    cache_mb: float = DEFAULT_CACHE_MB,
) -> tuple[Spec, ScoreResult, ScoreResult]:
    """Parse the OOF folders, search, write ``out`` (tuned spec YAML, naming its classes) and
    ``{out stem}_report.{md,csv}``.

    The truth is ``truth_csv`` (Kaggle labels, e.g. ``train.csv``) or the masks of ``work`` (the WORK folder the
    maps were predicted from: any dataset); give exactly one. ``objective``: what the search maximises (one of
    :data:`evaluation.metric.OBJECTIVES`); ``tolerance``: the NSD tolerance in mm (None: one voxel,
    :func:`evaluation.surface.default_tolerance`). The surface objectives need each case-day's voxel spacing: from
    the WORK's ``dataset.json``, or for Kaggle labels from ``manifest``'s pixel spacing (``px_h, px_w`` as
    :func:`data_prep.layout.read_layout` gives them, or ``px_h_mm, px_w_mm``) and the Kaggle slice thickness.
    ``workers``, ``cache_mb``: see :class:`Evaluator`.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if (truth_csv is None) == (work is None):
        raise ValueError("give the truth as a label table (--truth train.csv) or as the WORK folder (--work), one")
    check_objective(objective)
    cls_items = [i for i in oof_items if i.split("=", 1)[-1].endswith(".csv")]
    oof = parse_oof(spec, [i for i in oof_items if i not in cls_items])
    truth = read_rle_table(truth_csv) if truth_csv is not None else work
    cls_probs = read_classifier_oof(spec, cls_items, folder_classes(oof))
    with Evaluator(
        spec,
        oof,
        truth,
        manifest,
        empty,
        hausdorff,
        workers,
        cls_probs=cls_probs,
        cache_mb=cache_mb,
        objective=objective,
        tolerance=tolerance,
    ) as ev:
        params, before, after = search(ev.spec, ev, log, steps)
    tuned = tuned_spec(ev.spec, params)
    what = f"empty={empty}, hausdorff={hausdorff}"
    goal = ""
    if objective != "competition":
        tol = f" (tolerance {ev.tolerance_text()})" if objective == "nsd" else ""
        goal = (
            f"{objective} {objective_values(before, objective)[0]:.5f} -> "
            f"{objective_values(after, objective)[0]:.5f}{tol}; "
        )
    header = (
        f"# tuned from {spec.source} on {len(ev.case_days)} OOF case-days: {goal}score {before.score:.5f} -> "
        f"{after.score:.5f} ({what})\n"
    )
    atomic_write_text(out, header + tuned.dump(), overwrite=True)
    b = before.per_class.set_index("class")
    a = after.per_class.set_index("class")
    cols: dict[str, Any] = {"class": list(b.index)}
    if objective != "competition":
        for when, res in (("before", before), ("after", after)):
            overall, per = objective_values(res, objective)
            cols[f"{objective}_{when}"] = [*per.tolist(), overall]
    for key in ("dice", "hausdorff", "score"):
        cols[f"{key}_before"] = b[key].to_numpy()
        cols[f"{key}_after"] = a[key].to_numpy()
    rep = pd.DataFrame(cols)
    stem = out.with_name(out.stem + "_report")
    atomic_write_text(stem.with_suffix(".csv"), rep.to_csv(index=False), overwrite=True)
    aim = {"competition": "the competition score", "dsc": "the mean 3D DSC"}.get(
        objective, f"the mean NSD at {ev.tolerance_text()}"
    )
    md = (
        f"# Search report\n\nspec {spec.source} -> {out}; {len(ev.case_days)} case-days; {ev.n_evals} evaluations\n\n"
        f"objective: {aim} ({what})\n\n{goal}score {before.score:.5f} -> **{after.score:.5f}**\n\n"
        + markdown_table(rep)
        + "\n## Tuned values\n\n```yaml\n"
        + tuned.dump()
        + "```\n"
    )
    atomic_write_text(stem.with_suffix(".md"), md, overwrite=True)
    return tuned, before, after
