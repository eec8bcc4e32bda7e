"""Inference with an ensemble spec: crop -> gate -> 2.5D segmenters on kept slices -> 3D -> fuse -> post-process,
streaming one case-day (volume) at a time (memory bounded by one volume), written in the input's format.

Two inputs (:func:`infer`): a Kaggle test tree (``data_root``: PNG scans -> ``submission.csv``, RLE rows), or a
prepared WORK folder of any format (``work=``: its volumes, every image channel): a Kaggle WORK gives the same
``submission.csv``; any other format gives one prediction per volume written by the format's module
(``data_prep.readers.{format}.write_prediction``, :mod:`evaluation.predictions`) into the output folder, with
``predictions.json`` listing them (resumable: a listed volume is skipped unless ``overwrite``).

The fuse -> gate -> post-process rule is :func:`ensembles.core.ensemble`, the function the search scores with
(exclusive classes: one class per pixel); this module loads the models, runs them on each volume and writes the
results. ``tools/infer.py`` is its command line.

Model loading goes through :data:`LOADERS` (``kind -> (spec_model, checkpoint, device) -> predictor``), so the
pipeline is testable with any object that has the contract's ``predict_volume`` / ``predict_boxes``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.io import atomic_write_text
from common.probmaps import ProbWriter, check_probs
from common.viz import save_overlay
from data_prep.dataset import KAGGLE, DatasetInfo
from data_prep.layout import read_layout, read_scan
from data_prep.work import case_day_ids, check_work, read_dataset, read_manifest
from ensembles import core
from ensembles.spec import ModelSpec, Spec
from evaluation.predictions import PredictionIndex, index_meta, prediction_format
from gating.classifier import SliceClassifier
from gating.crop import Detector
from inference.engine import Engine, EngineModel
from inference.overlap import Background, in_memory, prefetch
from inference.parts import KEEP, ROWS, PartPlan, PartStore, file_digest, missing_message, pending, spec_digest
from inference.predict import load_channels, volume_spacing
from inference.submission import encode_rows, order_rows, read_sample
from segmenters.mm.inference import Segmenter
from segmenters.monai.inference import Segmenter3D

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# model loading


def _load_25d(m: ModelSpec, checkpoint: Path, device: str) -> Any:
    return Segmenter.load(str(m.config), str(checkpoint), device)


def _load_3d(m: ModelSpec, checkpoint: Path, device: str) -> Any:
    return Segmenter3D.load(str(m.config), str(checkpoint), device)


def _load_classifier(m: ModelSpec, checkpoint: Path, device: str) -> Any:
    return SliceClassifier.load(str(checkpoint), device, config=str(m.config) if m.config else None)


def _load_detector(m: ModelSpec, checkpoint: Path, device: str) -> Any:
    return Detector.load(str(checkpoint), device, **m.options)


#: kind -> loader(model spec, checkpoint, device) -> predictor object.
LOADERS: dict[str, Callable[[ModelSpec, Path, str], Any]] = {
    "2.5d": _load_25d,
    "3d": _load_3d,
    "classifier": _load_classifier,
    "detector": _load_detector,
}


@dataclass
class LoadedModel:
    """A spec model with one loaded predictor per fold checkpoint."""

    spec: ModelSpec
    folds: list[tuple[Path, Any]]


def load_models(spec: Spec, device: str = "cpu", loaders: dict[str, Callable] | None = None) -> list[LoadedModel]:
    """Check every file, then load every model of ``spec`` (one predictor per checkpoint), in spec order."""
    spec.check_files()
    loaders = {**LOADERS, **(loaders or {})}
    out = []
    for m in spec.models:
        if m.role == "segment" and m.kind in ("2.5d", "3d") and m.weight == 0:
            logger.info("skipping %s: its weight is 0", m.name)
            continue
        preds = []
        for ck in m.checkpoints:
            logger.info("loading %s (%s) from %s", m.name, m.kind, ck)
            preds.append((ck, loaders[m.kind](m, ck, device)))
        out.append(LoadedModel(m, preds))
    return out


def check_model_classes(models: Sequence[LoadedModel], classes: Sequence[str]) -> None:
    """Refuse a loaded segmenter or classifier whose ``classes`` (when it exposes them) differ from the data's.

    Raises:
        ValueError: naming the model, its checkpoint and both class lists.
    """
    for lm in models:
        if lm.spec.kind == "detector":
            continue
        for ck, p in lm.folds:
            got = getattr(p, "classes", None)
            if got is not None and tuple(got) != tuple(classes):
                raise ValueError(
                    f"model {lm.spec.name!r} ({ck}) predicts classes {list(got)}, the data has {list(classes)}; "
                    "use models trained on this dataset"
                )


# --------------------------------------------------------------------------------------------------------------
# one case-day


def _group_mean(
    models: Sequence[LoadedModel], call: Callable[[LoadedModel, Any], Any], shape: tuple[int, ...], case_day: str
) -> np.ndarray:
    """Weighted mean over models (weights normalised) of their fold means (the classifiers' presence
    probabilities), each output checked for shape and NaN, naming the checkpoint."""
    weights = core.normalise_weights(
        [lm.spec.weight for lm in models], len(models), "weights of " + ", ".join(lm.spec.name for lm in models)
    )
    out = np.zeros(shape, np.float32)
    for lm, w in zip(models, weights):
        for ck, p in lm.folds:
            a = np.asarray(call(lm, p), dtype=np.float32)
            where = f"model {lm.spec.name!r} ({ck}) on {case_day}"
            if a.shape != shape:
                raise ValueError(f"{where}: returned shape {a.shape}, expected {shape}")
            check_probs(a, where)
            out += np.float32(w / len(lm.folds)) * a
    return out


@dataclass
class CaseDayResult:
    """What :func:`predict_case_day` returns."""

    probs: np.ndarray  # float32 (D, C, H, W), fused and gated
    keep: np.ndarray  # bool (D, C)
    masks: np.ndarray  # bool (D, C, H, W)
    boxes: np.ndarray | None  # int (D, 4)


def model_device(models: Sequence[LoadedModel], default: str = "cpu") -> torch.device:
    """The device the loaded segmenters run on (their ``device``), else ``default``."""
    for lm in models:
        for _, p in lm.folds:
            dev = getattr(p, "device", None)
            if isinstance(dev, torch.device | str):
                return torch.device(dev)
    return torch.device(default)


def make_engine(
    spec: Spec,
    models: Sequence[LoadedModel],
    batch_size: int | None = None,
    exclusive_classes: bool = False,
    device: str | torch.device | None = None,
) -> Engine:
    """The :class:`inference.engine.Engine` of a loaded spec (segmenters and gate U-Nets; the detector and the
    classifiers stay with :func:`predict_case_day`)."""
    members = [
        EngineModel(
            lm.spec.name,
            lm.spec.kind,
            lm.spec.role,
            lm.spec.weight,
            tuple(lm.spec.tta),
            tuple(lm.spec.planes),
            [p for _, p in lm.folds],
            [str(ck) for ck, _ in lm.folds],
        )
        for lm in models
        if lm.spec.kind in core.GROUPS
    ]
    return Engine(
        members,
        spec.gate,
        spec.fusion,
        spec.thresholds,
        spec.post,
        device if device is not None else model_device(models),
        batch_size or spec.batch_size,
        exclusive_classes,
    )


def predict_case_day(
    spec: Spec,
    models: Sequence[LoadedModel],
    volume: np.ndarray,
    spacing: tuple[float, ...] | None = None,
    batch_size: int | None = None,
    case_day: str = "",
    exclusive_classes: bool = False,
    engine: Engine | None = None,
) -> CaseDayResult:
    """Run the whole ensemble on one case-day (volume).

    Args:
        spec: the validated spec, for the data's classes (``C = len(spec.classes)``).
        models: :func:`load_models` output for ``spec``.
        volume: uint16 ``(D, H, W)``, or ``(K, D, H, W)`` for ``K`` image channels; z in manifest order.
        spacing: ``(sy, sx)`` mm (Kaggle) or ``(sz, sy, sx)`` mm, for 3D models that resample and other planes.
        batch_size: slices per forward pass (default: the spec's).
        case_day: named in errors and logs.
        exclusive_classes: one class per pixel (the dataset's ``label_kind`` is ``exclusive``).
        engine: the :func:`make_engine` of ``spec`` and ``models`` (made here when None; a run over many case-days
            makes it once).

    Returns:
        A :class:`CaseDayResult`.
    """
    bs = batch_size or spec.batch_size
    if volume.ndim not in (3, 4):
        raise ValueError(f"{case_day}: volume must be (D, H, W) or (K, D, H, W), got shape {volume.shape}")
    d, h, w = volume.shape[-3:]
    c = len(spec.classes)
    by = {lm.spec.name: lm for lm in models}

    # crop boxes: the union of the folds' boxes
    boxes = None
    for lm in models:
        if lm.spec.kind == "detector":
            for _, det in lm.folds:
                b = np.asarray(det.predict_boxes(volume, bs, case_day=case_day), dtype=np.int64)
                if b.shape != (d, 4):
                    raise ValueError(
                        f"detector {lm.spec.name!r} on {case_day}: boxes of shape {b.shape}, expected ({d}, 4)"
                    )
                boxes = (
                    b
                    if boxes is None
                    else np.concatenate(
                        [np.minimum(boxes[:, :2], b[:, :2]), np.maximum(boxes[:, 2:], b[:, 2:])], axis=1
                    )
                )

    cls_probs = None
    if spec.gate["method"] == "classifier":
        classifiers = [by[m.name] for m in spec.by_kind("classifier")]
        cls_probs = _group_mean(classifiers, lambda lm, p: p.predict_volume(volume, bs), (d, c), case_day)
    engine = engine or make_engine(spec, models, bs, exclusive_classes)
    probs, keep, masks = engine.predict(volume, spacing, c, case_day, boxes=boxes, cls_probs=cls_probs)
    return CaseDayResult(probs, keep, masks, boxes)


# --------------------------------------------------------------------------------------------------------------
# the test tree


def check_tree(manifest: pd.DataFrame, tree: Path) -> None:
    """Refuse a tree with slices missing inside a case-day (naming the folder and the slice numbers)."""
    for cd, g in manifest.groupby("case_day", sort=False):
        s = g["slice"].to_numpy()
        if len(s) and (s.max() - s.min() + 1) != len(s):
            have = set(s.tolist())
            missing = [x for x in range(int(s.min()), int(s.max()) + 1) if x not in have]
            folder = Path(g["path"].iloc[0]).parent
            raise ValueError(
                f"{folder}: case-day {cd} lacks slice(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} between "
                f"{int(s.min())} and {int(s.max())}; restore them (the 2.5D stacks and the 3D models need every "
                "slice)"
            )


def _read_volume(paths: Sequence[str], hw: tuple[int, int], pool: ThreadPoolExecutor | None) -> np.ndarray:
    if pool is None:
        return np.stack([read_scan(p, hw) for p in paths])
    return np.stack(list(pool.map(lambda p: read_scan(p, hw), paths)))


#: One input volume: ``(key, slice ids in z order, volume loader, spacing for the models)``.
Item = tuple[str, list[str], Callable[[], np.ndarray], tuple[float, ...]]


class _Outputs:
    """What every run writes besides its predictions: ``--save-probs`` (fused probabilities, and ``keep.csv``
    assembled from the per-case-day ``keep`` parts, so that it survives a resume) and overlay pictures."""

    def __init__(
        self,
        spec: Spec,
        classes: Sequence[str],
        save_probs: str | os.PathLike | None,
        overlays: int,
        overlay_dir: Path,
        overwrite: bool,
        parts: Any = None,
    ) -> None:
        self.classes, self.save_probs, self.overlays, self.overlay_dir = (
            list(classes),
            save_probs,
            overlays,
            overlay_dir,
        )
        self.parts = parts  # inference.parts.PartStore: the keep rows of each case-day go there
        self.writer = None
        if save_probs:
            meta = {"kind": "ensemble", "config": spec.source, "checkpoint": None, "fold": None, "tta": []}
            self.writer = ProbWriter(save_probs, {**meta, "classes": self.classes}, overwrite=overwrite, resume=True)
        self.keep_rows: list[tuple] = []
        self.n_over = 0

    def add(self, key: str, ids: list[str], volume: np.ndarray, res: CaseDayResult) -> None:
        if self.writer is not None:
            self.writer.add(key, ids, res.probs)
            rows = [(sid, *map(int, k)) for sid, k in zip(ids, res.keep)]
            if self.parts is not None:
                self.parts.write(key, rows, ["id", *self.classes], table=KEEP)
            else:
                self.keep_rows.extend(rows)
        if self.n_over < self.overlays:
            z = int(np.argmax(res.masks.sum(axis=(1, 2, 3))))
            image = volume[0, z] if volume.ndim == 4 else volume[z]
            self.overlay_dir.mkdir(parents=True, exist_ok=True)
            save_overlay(
                self.overlay_dir / f"{ids[z]}.png", image, None, res.masks[z], title=ids[z], classes=self.classes
            )
            self.n_over += 1

    def finish(self, keys: Sequence[str] | None = None) -> None:
        """Write ``meta.json`` of the probabilities (listing ``keys``, from their keep parts: the processes of
        ``--num-parts`` each listed only their own) and ``keep.csv`` in ``keys`` order."""
        if self.writer is None:
            return
        if self.parts is not None and keys is not None:
            kdf = self.parts.assemble(keys, KEEP)
            for key in keys:
                self.writer.case_days[key] = self.parts.read(key, KEEP)["id"].tolist()
        else:
            kdf = pd.DataFrame(self.keep_rows, columns=["id", *self.classes])
        self.writer.finish()
        atomic_write_text(Path(self.save_probs) / "keep.csv", kdf.to_csv(index=False, lineterminator="\n"))


def _read_item(item: Item) -> np.ndarray:
    """The volume of an :data:`Item`, read into memory (in the loader thread)."""
    return in_memory(item[2]())


@dataclass(frozen=True)
class _RunOptions:
    """What :func:`infer` and :func:`infer_work` hand on to :func:`_run` unchanged (their arguments of these names)."""

    batch_size: int | None
    device: str
    loaders: dict[str, Callable] | None
    save_probs: str | os.PathLike | None
    overlays: int
    overwrite: bool
    parts: Any


def _run(
    spec: Spec,
    keys: Sequence[str],
    items: Callable[[Sequence[str]], Iterable[Item]],
    out: Path,
    store_meta: dict[str, Any],
    write_result: Callable[[Any, str, list[str], CaseDayResult], None],
    classes: Sequence[str],
    exclusive_classes: bool,
    opts: _RunOptions,
    extra_done: Callable[[Any, str], bool] | None = None,
) -> tuple[Any, _Outputs, list[str], list[str]]:
    """Predict this process's share of ``keys`` (:class:`inference.parts.PartPlan` ``opts.parts``) that the parts
    folder does not hold yet, one case-day at a time: ``write_result(store, key, ids, result)`` writes its part as
    soon as it is predicted. No model is loaded when nothing is left (or for ``--merge``).

    Returns:
        ``(store, outputs, missing, predicted)``: the :class:`inference.parts.PartStore`, the ``--save-probs`` and
        overlay writer (not finished), the case-days of ``keys`` still without a part after this run, and those
        this run predicted (in ``keys`` order).
    """
    parts, batch_size, save_probs = opts.parts, opts.batch_size, opts.save_probs
    mine = parts.mine(keys)
    single = parts.num_parts == 1
    tables = (ROWS, KEEP) if save_probs else (ROWS,)
    wipe = opts.overwrite and not parts.merge
    store = PartStore(parts.folder(out), store_meta, tables, overwrite=wipe, clear_keys=None if single else mine)

    def done(k: str) -> bool:
        return store.done(k) and (extra_done is None or extra_done(store, k))

    todo = [] if parts.merge else [k for k in mine if not done(k)]
    if len(todo) < len(mine):
        logger.info(
            "%d of %d case-day(s) already predicted in %s (skipped)", len(mine) - len(todo), len(mine), store.folder
        )
    overlay_dir = out.with_name(out.stem + "_overlays")
    outputs = _Outputs(spec, classes, save_probs, opts.overlays, overlay_dir, wipe and single, store)
    if todo:
        models = load_models(spec, opts.device, opts.loaders)
        check_model_classes(models, classes)
        engine = make_engine(spec, models, batch_size or spec.batch_size, exclusive_classes)  # once per run

        def save(key: str, ids: list[str], volume: np.ndarray, res: CaseDayResult) -> None:
            outputs.add(key, ids, volume, res)
            write_result(store, key, ids, res)

        # the next case-day is read while this one computes; its results are encoded and written while the next
        # one computes (a part is whole or absent: a kill loses at most the case-days in flight)
        with Background(depth=2) as writer:
            for (key, ids, _, spacing), volume in prefetch(items(todo), _read_item):
                res = predict_case_day(spec, models, volume, spacing, batch_size, key, exclusive_classes, engine)
                writer.submit(save, key, ids, volume, res)
    missing = [k for k in keys if not done(k)]
    if missing and parts.merge:
        raise ValueError(missing_message(store.folder, missing, len(keys)))
    return store, outputs, missing, todo


def infer(
    data_root: str | os.PathLike | None,
    spec: Spec,
    out: str | os.PathLike,
    split: str = "test",
    sample_submission: str | os.PathLike | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    save_probs: str | os.PathLike | None = None,
    overlays: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    loaders: dict[str, Callable] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    skip_empty: bool = False,
    work: str | os.PathLike | None = None,
    parts: Any = None,
) -> pd.DataFrame:
    """Predict a Kaggle test tree (``data_root``) or a prepared WORK folder (``work``) with the ensemble ``spec``.

    Each case-day's result is written, as soon as it is predicted, to a parts folder (``{out}.parts/`` unless
    ``parts.parts_dir``; :mod:`inference.parts`); a rerun predicts only the case-days without a part, and the final
    output is assembled from the parts (byte-identical to an uninterrupted run's).

    Args:
        data_root: folder holding ``{split}/`` (and usually ``sample_submission.csv``); None with ``work``.
        spec: validated spec (:func:`ensembles.spec.load_spec`); its classes must be the data's.
        out: a Kaggle tree or Kaggle WORK: the submission CSV (written atomically, at the end: never half a
            submission); a WORK of another format: the folder of predictions (one file per volume, written by the
            format's module, and ``predictions.json``).
        split: sub-folder of scans (``data_root`` only).
        sample_submission: row order (default ``data_root/sample_submission.csv`` when present; header-only or
            absent -> manifest order).
        batch_size: slices per forward pass (default: the spec's).
        workers: threads reading PNGs (0: none).
        save_probs: folder for the fused probabilities (probability-map layout, float16) and ``keep.csv``.
        overlays: number of overlay PNGs (one per case-day, its slice with the largest predicted area) written
            beside ``out`` in ``{out stem}_overlays/``.
        device: torch device for the models.
        overwrite: replace an existing ``out`` and start over (the parts of this process's case-days are removed;
            a folder: predict every volume again).
        loaders: overrides of :data:`LOADERS` (tests).
        progress: wrapper of the case-day iterator (``tqdm``).
        skip_empty: skip case-day folders whose ``scans/`` holds no scan (counted in the log) instead of
            refusing the tree.
        work: a prepared WORK folder to predict instead of ``data_root`` (:func:`infer_work`).
        parts: an :class:`inference.parts.PartPlan` (``--num-parts``, ``--part-id``, ``--parts-dir``,
            ``--merge``); default: one process predicts every case-day.

    Returns:
        The submission DataFrame (``id, class, predicted``); for a folder of volumes, ``key, path, skipped``. A
        process that ends while other parts are missing writes no output and returns no rows, with ``attrs``
        ``missing`` (case-days) and ``predicted`` (:func:`inference.parts.pending`).

    Raises:
        FileExistsError, FileNotFoundError (missing checkpoint, tree), ValueError (bad tree, sample ids absent
        from the tree, NaN in a probability map, classes of the spec or a model that differ from the data's, a
        parts folder of another spec, ``--merge`` with case-days missing), each naming the file.
    """
    parts = parts or PartPlan()
    if work is not None:
        if data_root is not None:
            raise ValueError(f"give a Kaggle tree (--data-root {data_root}) or a WORK folder (--work {work}), not both")
        return infer_work(
            work,
            spec,
            out,
            sample_submission,
            batch_size,
            save_probs,
            overlays,
            device,
            overwrite,
            loaders,
            progress,
            parts=parts,
        )
    if data_root is None:
        raise ValueError("give a Kaggle tree (--data-root) or a prepared WORK folder (--work)")
    spec = spec.for_classes(KAGGLE.classes)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    root = Path(data_root)
    manifest = read_layout(root, split, check_images=True)
    empty = list(manifest.attrs.get("empty_scan_dirs", []))
    if empty and not skip_empty:
        raise ValueError(
            f"{len(empty)} case-day folder(s) hold no scans: {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}"
            "; restore their scans, remove the folders, or pass --skip-empty to predict the other case-days"
        )
    if empty:
        logger.warning("skipped %d empty case-day folder(s): %s", len(empty), ", ".join(empty))
    check_tree(manifest, root / split)
    sample_path = Path(sample_submission) if sample_submission else root / "sample_submission.csv"
    if sample_submission and not sample_path.is_file():
        raise FileNotFoundError(f"sample submission {sample_path} not found")
    sample = read_sample(sample_path)
    _check_sample(sample, set(manifest["id"]), sample_path, root / split)
    case_days = list(dict.fromkeys(manifest["case_day"]))  # manifest order: case, day (numeric)
    pool = ThreadPoolExecutor(max_workers=workers) if workers and workers > 0 else None

    def items(keys: Sequence[str]) -> Iterable[Item]:
        it: Iterable[str] = progress(keys) if progress else keys
        for cd in it:
            g = manifest[manifest["case_day"] == cd]
            h, w = int(g["height"].iloc[0]), int(g["width"].iloc[0])
            if (g["height"] != h).any() or (g["width"] != w).any():
                raise ValueError(f"{Path(g['path'].iloc[0]).parent}: slices of {cd} differ in size; expected one size")
            paths = g["path"].tolist()
            spacing = (float(g["px_h"].iloc[0]), float(g["px_w"].iloc[0]))
            yield cd, g["id"].tolist(), partial(_read_volume, paths, (h, w), pool), spacing

    opts = _RunOptions(batch_size, device, loaders, save_probs, overlays, overwrite, parts)
    try:
        return _submission(spec, case_days, items, out, KAGGLE.classes, False, sample, sample_path, opts)
    finally:
        if pool is not None:
            pool.shutdown()


#: The columns of a submission (and of its parts).
SUBMISSION_COLUMNS = ["id", "class", "predicted"]


def _submission(
    spec: Spec,
    keys: Sequence[str],
    items: Callable[[Sequence[str]], Iterable[Item]],
    out: Path,
    classes: Sequence[str],
    exclusive_classes: bool,
    sample: pd.DataFrame | None,
    sample_path: Path | None,
    opts: _RunOptions,
) -> pd.DataFrame:
    """Predict ``keys`` into submission parts (:func:`_run`) and, when every part is there, write the submission
    ``out`` from them (:func:`_write_submission`); a process whose other parts are missing returns
    :func:`inference.parts.pending`."""
    meta = {
        "output": "submission",
        "spec": spec_digest(spec),
        "classes": list(classes),
        "sample": file_digest(sample_path),
    }

    def write_rows(store: Any, key: str, ids: list[str], res: CaseDayResult) -> None:
        store.write(key, encode_rows(ids, res.masks, classes), SUBMISSION_COLUMNS)

    store, outputs, missing, predicted = _run(
        spec, keys, items, out, meta, write_rows, classes, exclusive_classes, opts
    )
    if missing or not opts.parts.finish:
        return pending(SUBMISSION_COLUMNS, missing, predicted, store.folder)
    outputs.finish(keys)
    return _write_submission(store, keys, sample, str(sample_path or "manifest order"), out)


def _check_sample(sample: pd.DataFrame | None, ids: set[str], sample_path: Path, where: Path) -> None:
    if sample is not None and len(sample):
        absent = sorted(set(sample["id"]) - ids)
        if absent:
            raise ValueError(
                f"{sample_path}: {len(absent)} id(s) are not in {where}: {', '.join(absent[:5])}"
                + (" ..." if len(absent) > 5 else "")
                + "; give the sample submission of this tree"
            )


def _write_submission(
    store: Any, keys: Sequence[str], sample: pd.DataFrame | None, source: str, out: Path
) -> pd.DataFrame:
    """The submission from the parts of ``keys`` (``store``: :class:`inference.parts.PartStore`), in ``keys``
    order, then in ``sample`` order when given (:func:`inference.submission.order_rows`); written atomically."""
    rows = store.assemble(keys)
    sub = order_rows(rows.reindex(columns=SUBMISSION_COLUMNS), sample, source)
    atomic_write_text(out, sub.to_csv(index=False, lineterminator="\n"), overwrite=True)
    logger.info("wrote %s: %d rows, %d case-days", out, len(sub), len(keys))
    return sub


# --------------------------------------------------------------------------------------------------------------
# a prepared WORK folder


def infer_work(
    work: str | os.PathLike,
    spec: Spec,
    out: str | os.PathLike,
    sample_submission: str | os.PathLike | None = None,
    batch_size: int | None = None,
    save_probs: str | os.PathLike | None = None,
    overlays: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    loaders: dict[str, Callable] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    parts: Any = None,
) -> pd.DataFrame:
    """Predict every volume of a prepared WORK folder (``python -m data_prep prepare``, any format) and write the
    predictions in the input's format.

    The models get every image channel (:func:`inference.predict.load_channels`: ``(D, H, W)`` or
    ``(K, D, H, W)``) and the spacing of :func:`inference.predict.volume_spacing`; the classes and the label kind
    come from ``WORK/dataset.json`` (exclusive classes: one class per pixel). Each volume's result is recorded in
    the parts folder (``{out}.parts/``, :mod:`inference.parts`) as soon as it is written: a rerun, or another
    ``--part-id``, predicts only the volumes without one.

    Args:
        work: the WORK folder.
        spec: the ensemble spec (taken for the WORK's classes: :meth:`ensembles.spec.Spec.for_classes`).
        out: a Kaggle WORK: the submission CSV (as :func:`infer` writes it from a tree; rows in
            ``sample_submission`` order when given, else manifest order); any other format: the output folder
            (its ``predictions.json`` is written by the process that finds every volume done).
        overwrite: a CSV: replace it; a folder: predict every volume again (else the volumes done are skipped:
            an interrupted run resumes).
        parts: an :class:`inference.parts.PartPlan` (default: one process, every volume).
        Others: as :func:`infer`.

    Returns:
        The submission (Kaggle), or a DataFrame ``key, path, skipped`` (one row per volume); no rows while other
        parts are missing (:func:`inference.parts.pending`).

    Raises:
        FileNotFoundError: WORK not prepared, a missing checkpoint or channel file. FileExistsError: ``out`` exists
            (a CSV) or holds other files (a folder), without ``overwrite``. ValueError: classes of the spec or a
            model that differ from the WORK's, no writer for the format, a parts folder of another run, ``--merge``
            with volumes missing.
    """
    parts = parts or PartPlan()
    work = check_work(work, need_masks=False, need_splits=False)
    info = read_dataset(work)
    spec = spec.for_classes(info.classes)
    manifest = read_manifest(work)
    groups = case_day_ids(manifest)
    first = manifest.drop_duplicates("case_day").set_index("case_day")
    out = Path(out)
    exclusive_classes = info.label_kind == "exclusive"
    keys = list(groups)

    def items(todo: Sequence[str]) -> Iterable[Item]:
        it: Iterable[str] = progress(todo) if progress else todo
        for key in it:
            spacing = volume_spacing(info, key, first.loc[[key]])
            yield key, groups[key], partial(_load_checked, work, key, info, len(groups[key])), spacing

    opts = _RunOptions(batch_size, device, loaders, save_probs, overlays, overwrite, parts)
    if info.format == "kaggle":
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        sample_path = Path(sample_submission) if sample_submission else None
        if sample_path is not None and not sample_path.is_file():
            raise FileNotFoundError(f"sample submission {sample_path} not found")
        sample = read_sample(sample_path)
        _check_sample(sample, set(manifest["id"]), sample_path or Path("sample"), work)
        return _submission(spec, keys, items, out, info.classes, exclusive_classes, sample, sample_path, opts)

    fmt = prediction_format(info.format)
    single = parts.num_parts == 1 and not parts.merge
    # one process: the index is rewritten after each volume (as before); several: only the final step writes it
    index = PredictionIndex(out, index_meta(info, spec.source), overwrite=overwrite and single)
    if not single and not index.path.is_file():
        index.write()  # an empty index marks the folder as ours for the other parts
    meta = {"output": "volumes", "spec": spec_digest(spec), **index_meta(info, "")}

    def write_volume(store: Any, key: str, ids: list[str], res: CaseDayResult) -> None:
        path = Path(fmt.write_prediction(res.masks, info, key, out, probs=res.probs))
        if single:
            index.add(key, path)
        store.write(key, [(key, path.resolve().relative_to(out.resolve()).as_posix())], ["key", "path"])

    def file_of(store: Any, key: str) -> str:
        return str(store.read(key)["path"].iloc[0])

    store, outputs, missing, predicted = _run(
        spec, keys, items, out, meta, write_volume, info.classes, exclusive_classes, opts,
        extra_done=lambda st, k: (out / file_of(st, k)).exists(),
    )  # fmt: skip
    if missing or not parts.finish:
        return pending(["key", "path", "skipped"], missing, predicted, store.folder)
    outputs.finish(keys)
    index.volumes = {k: file_of(store, k) for k in keys}
    index.write()
    logger.info("wrote %d prediction(s) to %s (%s format)", len(predicted), out, info.format)
    done = set(predicted)
    return pd.DataFrame(
        [(k, str(out / index.volumes[k]), k not in done) for k in keys],
        columns=["key", "path", "skipped"],
    )


def _load_checked(work: Path, key: str, info: DatasetInfo, depth: int) -> np.ndarray:
    volume = np.asarray(load_channels(work, key, info))
    if volume.shape[-3] != depth:
        raise ValueError(f"{work}/volumes/{key}.npy has {volume.shape[-3]} slices, manifest.csv lists {depth}")
    return volume
