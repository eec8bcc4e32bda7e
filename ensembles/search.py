"""Search fusion weights, per-class thresholds, weak-class floors and minimum component sizes on out-of-fold
probability maps with the competition metric, and write the tuned spec and a report.

Coordinate ascent: each step evaluates a set of candidates in one pass over the case-days (each case-day's
probabilities are read once per step): thresholds, then weights model by model (then the 2.5D/3D split), then
thresholds again, weak-class floors and component sizes, each chosen per class from the per-class score (under
the ``per_class`` Hausdorff the score decomposes by class; under ``union`` one value is shared by all classes).

OOF folders follow docs/contracts.md "Probability maps"; a model's folds may be split over several folders
(one per fold). Every model must cover the same case-days; otherwise the search refuses, naming the folders.
The classes are the folders' (``meta.json`` ``classes``, the same in every folder); the truth is a Kaggle label
table (``train.csv``: the Kaggle layout's classes) or the masks of the WORK folder the maps were predicted from
(any dataset; exclusive classes are searched with the one-class-per-pixel rule that inference applies).
"""

from __future__ import annotations

import copy
import logging
import os
from collections import ChainMap
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
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
from data_prep.work import check_work, has_mask, load_mask, read_dataset
from ensembles import core
from ensembles.spec import Spec
from evaluation.metric import DEFAULT_EMPTY, DEFAULT_HAUSDORFF, ScoreResult, aggregate, score_case_day
from gating.classifier import read_cls_probs

logger = logging.getLogger(__name__)

THRESHOLD_GRID: tuple[float, ...] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
FLOOR_GRID: tuple[float, ...] = (0.0, 0.4, 0.5, 0.6)
COMPONENT_GRID: tuple[int, ...] = (0, 10, 25, 50, 100)
WEIGHT_FACTORS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
GROUP_2D_GRID: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
GATE_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: The steps of the coordinate ascent, in order; ``steps=`` picks a subset.
STEPS: tuple[str, ...] = ("thresholds", "gate", "weights", "floor", "min_component")


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


def _apply(
    params: Params,
    probs: dict[str, np.ndarray],
    kinds: dict[str, str],
    cls_probs: np.ndarray | None,
    gate_probs: np.ndarray | None,
    fused: dict[tuple, np.ndarray | None] | None = None,
) -> np.ndarray:
    """Final masks of one candidate on one case-day: :func:`ensembles.core.ensemble`, as inference runs it.

    ``fused``: the case-day's last fused map, by its fusion weights, read and replaced (the candidates of a step
    that share their weights, all of them but in the weights step, are fused once; one map is held at a time).
    """
    d, c = next(iter(probs.values())).shape[:2]
    keep = None
    if cls_probs is not None or gate_probs is not None:
        keep = core.gate_keep(params.gate, (d, c), cls_probs=cls_probs, gate_probs=gate_probs)
    post = {"max_prob_floor": params.floor, "min_component": params.min_component}
    post["component_mode"] = params.component_mode
    shape = next(iter(probs.values())).shape
    fused = {} if fused is None else fused
    key = (tuple(params.weights[n] for n in probs), params.weight_2d, params.weight_3d)
    if key not in fused:
        fused.clear()
        maps = [core.ModelMap(n, kinds[n], params.weights[n], p) for n, p in probs.items()]
        fused[key] = core.fuse_models(maps, params.weight_2d, params.weight_3d)
    return core.gate_and_post(fused[key], shape, keep, params.thresholds, post, params.exclusive)[1]


def _eval_task(args: tuple) -> tuple[list, dict]:
    """Score the candidates on one case-day; returns the scores and the distances it computed (the ones in
    ``known`` are read, not computed again)."""
    cd, files, kinds, gate_files, gate_weights, cls_probs, truth_src, ids, hw, cands, empty, hausdorff, known = args
    new: dict = {}
    cache = ChainMap(new, known)  # writes go to ``new``
    probs = {name: ProbDir(path).load(cd) for name, path in files.items()}
    gate_probs = None
    if gate_files:
        gate_probs = core.fuse([ProbDir(p).load(cd) for p in gate_files], gate_weights)
    truth = _truth_masks(truth_src, cd, ids, hw)
    fused: dict = {}
    scores = [
        score_case_day(
            cd, _apply(p, probs, kinds, cls_probs, gate_probs, fused), truth, empty, hausdorff, distances=cache
        )
        for p in cands
    ]
    return scores, new


def _truth_masks(src: tuple, cd: str, ids: list[str], hw: tuple[int, int]) -> np.ndarray:
    """bool ``(D, C, H, W)`` true masks of one case-day: ``("rle", rows)`` decodes Kaggle RLE rows, ``("work",
    work, num_classes, label_kind)`` unpacks the WORK mask."""
    if src[0] == "rle":
        return decode_case_day(src[1], hw[0], hw[1], ids)
    _, work, n, kind = src
    return unpack_masks(np.asarray(load_mask(work, cd)), n, kind).astype(bool)


def _params_key(p: Params) -> tuple:
    """Equal keys for equal candidates (the search proposes the same point more than once)."""
    gate = tuple(sorted((k, _flat(v) if isinstance(v, (list, tuple, np.ndarray)) else v) for k, v in p.gate.items()))
    return (
        tuple(sorted(p.weights.items())),
        p.weight_2d,
        p.weight_3d,
        _flat(p.thresholds),
        _flat(p.floor),
        _flat(p.min_component),
        p.component_mode,
        gate,
        p.exclusive,
    )


def _flat(a: Any) -> tuple:
    return tuple(np.asarray(a).ravel().tolist())


class Evaluator:
    """Evaluates candidate :class:`Params` on the OOF case-days (one pass per call).

    Candidates already scored are not scored again, and each case-day keeps a cache of the Hausdorff distances
    of the class volumes it has seen (``evaluation.metric.score_case_day(distances=)``): most candidates of a
    step change the masks of a few classes only, and the distance is most of the cost.

    Args:
        spec: the spec to start from (taken for the folders' classes: :meth:`ensembles.spec.Spec.for_classes`).
        oof: :func:`parse_oof` output.
        truth: a Kaggle label table (:func:`data_prep.layout.read_rle_table`), or the WORK folder the maps were
            predicted from (its masks are the truth, its ``dataset.json`` gives the classes and the label kind).
        manifest: image sizes for RLE labels (default: the maps' shapes).
        empty, hausdorff: metric conventions. workers: processes (0: this one).
        cls_probs: out-of-fold presence probabilities of the classifier gate (``id`` + class columns).
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
    ):
        self.empty, self.hausdorff, self.workers = empty, hausdorff, workers
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
            elif manifest is not None:
                m = manifest[manifest["case_day"] == cd]
                self.hw[cd] = (int(m["height"].iloc[0]), int(m["width"].iloc[0]))
            else:
                shape = np.load(Path(self.where[seg[0]][cd]) / f"{cd}.npy", mmap_mode="r").shape
                self.hw[cd] = (int(shape[2]), int(shape[3]))
        #: candidates scored (distinct), and the scores by candidate key
        self.n_evals = 0
        self._scores: dict[tuple, ScoreResult] = {}
        self._distances: dict[str, dict] = {cd: {} for cd in self.case_days}

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

    def _score(self, cands: list[Params]) -> list[ScoreResult]:
        def tasks():
            for cd in self.case_days:
                ids = self.ids[cd]
                if self.work is None:
                    src: tuple = ("rle", self.truth.reindex(ids).fillna("").to_numpy().tolist())
                else:
                    src = ("work", str(self.work), len(self.classes), self.label_kind)
                files = {n: self.where[n][cd] for n in self.models}
                gates = [self.where[n][cd] for n in self.gate_models]
                gate_w = [self.spec.model(n).weight for n in self.gate_models]
                cls = None if self.cls_probs is None else self.cls_probs.loc[ids].to_numpy(np.float64)
                yield (
                    cd,
                    files,
                    self.kinds,
                    gates,
                    gate_w,
                    cls,
                    src,
                    ids,
                    self.hw[cd],
                    list(cands),
                    self.empty,
                    self.hausdorff,
                    self._distances[cd],
                )

        if self.workers and self.workers > 1:
            with ProcessPoolExecutor(self.workers) as ex:
                done = list(ex.map(_eval_task, tasks()))
        else:
            done = [_eval_task(t) for t in tasks()]
        per_cd = []
        for cd, (scores, new) in zip(self.case_days, done):
            per_cd.append(scores)
            self._distances[cd].update(new)
        self.n_evals += len(cands)
        return [aggregate([r[i] for r in per_cd], self.empty, self.hausdorff, self.classes) for i in range(len(cands))]


def _class_scores(res: ScoreResult) -> np.ndarray:
    pc = res.per_class.set_index("class")
    s = np.array([pc.loc[c, "score"] for c in res.classes], dtype=np.float64)
    return np.where(np.isnan(s), res.score, s)


def _pick_per_class(results: list[ScoreResult], values: list, current_index: int) -> list:
    """For each class the value of the best candidate (ties keep the current one)."""
    scores = np.stack([_class_scores(r) for r in results])  # (K, C)
    out = []
    for c in range(scores.shape[1]):
        best = current_index
        for k in range(len(values)):
            if scores[k, c] > scores[best, c] + 1e-12:
                best = k
        out.append(values[best][c] if np.ndim(values[best]) else values[best])
    return out


def search(
    spec: Spec, ev: Evaluator, log: Callable[[str], None] = logger.info, steps: Sequence[str] = STEPS
) -> tuple[Params, ScoreResult, ScoreResult]:
    """Coordinate ascent from the spec's values over ``steps`` (a subset of :data:`STEPS`).

    Returns:
        ``(tuned params, score before, score after)``.
    """
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown search step(s) {unknown}; known: {', '.join(STEPS)}")
    spec = spec.for_classes(ev.classes)
    n = len(ev.classes)
    cur = Params.from_spec(spec, ev.models, ev.exclusive)
    before = ev([cur])[0]
    best_score = before.score
    log(f"start: score {best_score:.5f}")

    def post_step(cur: Params, best_score: float, attr: str, grid: Sequence) -> tuple[Params, float]:
        values = [getattr(cur, attr)] + [np.full(n, v) for v in grid]
        cands = []
        for v in values:
            p = copy.deepcopy(cur)
            setattr(p, attr, np.asarray(v).astype(getattr(cur, attr).dtype))
            cands.append(p)
        res = ev(cands)
        picked = np.asarray(_pick_per_class(res, values, 0)).astype(getattr(cur, attr).dtype)
        trial = copy.deepcopy(cur)
        setattr(trial, attr, picked)
        r = ev([trial])[0]
        if r.score > best_score + 1e-12:
            cur, best_score = trial, r.score
        log(f"{attr}: {getattr(cur, attr).tolist()} -> score {best_score:.5f}")
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
        trial.gate["thresholds"] = [float(x) for x in _pick_per_class(res, values, 0)]
        r = ev([trial])[0]
        if r.score > best_score + 1e-12:
            cur, best_score = trial, r.score
        log(f"gate thresholds: {cur.gate['thresholds']} -> score {best_score:.5f}")
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
            k = int(np.argmax([r.score for r in res]))
            if res[k].score > best_score + 1e-12:
                cur, best_score = cands[k], res[k].score
            log(f"weight {name}: {cur.weights[name]:.3f} -> score {best_score:.5f}")
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
        k = int(np.argmax([r.score for r in res]))
        if res[k].score > best_score + 1e-12:
            cur, best_score = cands[k], res[k].score
        log(f"2.5d/3d split: {cur.weight_2d:.2f}/{cur.weight_3d:.2f} -> score {best_score:.5f}")
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
) -> tuple[Spec, ScoreResult, ScoreResult]:
    """Parse the OOF folders, search, write ``out`` (tuned spec YAML, naming its classes) and
    ``{out stem}_report.{md,csv}``.

    The truth is ``truth_csv`` (Kaggle labels, e.g. ``train.csv``) or the masks of ``work`` (the WORK folder the
    maps were predicted from: any dataset); give exactly one.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if (truth_csv is None) == (work is None):
        raise ValueError("give the truth as a label table (--truth train.csv) or as the WORK folder (--work), one")
    cls_items = [i for i in oof_items if i.split("=", 1)[-1].endswith(".csv")]
    oof = parse_oof(spec, [i for i in oof_items if i not in cls_items])
    truth = read_rle_table(truth_csv) if truth_csv is not None else work
    ev = Evaluator(
        spec,
        oof,
        truth,
        shapes_manifest(manifest) if manifest is not None else None,
        empty,
        hausdorff,
        workers,
        cls_probs=read_classifier_oof(spec, cls_items, folder_classes(oof)),
    )
    params, before, after = search(ev.spec, ev, log, steps)
    tuned = tuned_spec(ev.spec, params)
    header = (
        f"# tuned from {spec.source} on {len(ev.case_days)} OOF case-days: score {before.score:.5f} -> "
        f"{after.score:.5f} (empty={empty}, hausdorff={hausdorff})\n"
    )
    atomic_write_text(out, header + tuned.dump(), overwrite=True)
    b = before.per_class.set_index("class")
    a = after.per_class.set_index("class")
    rep = pd.DataFrame(
        {
            "class": list(b.index),
            "dice_before": b["dice"].to_numpy(),
            "dice_after": a["dice"].to_numpy(),
            "hausdorff_before": b["hausdorff"].to_numpy(),
            "hausdorff_after": a["hausdorff"].to_numpy(),
            "score_before": b["score"].to_numpy(),
            "score_after": a["score"].to_numpy(),
        }
    )
    stem = out.with_name(out.stem + "_report")
    atomic_write_text(stem.with_suffix(".csv"), rep.to_csv(index=False), overwrite=True)
    md = (
        f"# Search report\n\nspec {spec.source} -> {out}; {len(ev.case_days)} case-days; {ev.n_evals} evaluations\n\n"
        f"score {before.score:.5f} -> **{after.score:.5f}**\n\n"
        + markdown_table(rep)
        + "\n## Tuned values\n\n```yaml\n"
        + tuned.dump()
        + "```\n"
    )
    atomic_write_text(stem.with_suffix(".md"), md, overwrite=True)
    return tuned, before, after
