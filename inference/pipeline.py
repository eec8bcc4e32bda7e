"""Inference from a test tree to ``submission.csv``: crop -> gate -> 2.5D segmenters on kept slices -> 3D ->
fuse -> post-process -> RLE -> CSV, streaming one case-day at a time (memory bounded by one case-day).

The fuse -> gate -> post-process rule is :func:`ensembles.core.ensemble`, the function the search scores with;
this module loads the models, runs them on each case-day's volume and writes the results. ``tools/infer.py`` is
its command line.

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

from common.io import atomic_write_text
from common.probmaps import ProbWriter, check_probs
from common.viz import save_overlay
from data_prep.constants import CLASSES
from data_prep.layout import read_layout, read_scan
from ensembles import core
from ensembles.spec import ModelSpec, Spec
from gating.classifier import SliceClassifier
from gating.crop import Detector
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


# --------------------------------------------------------------------------------------------------------------
# one case-day


def _checked(arr: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    if a.shape != shape:
        raise ValueError(f"{where}: returned shape {a.shape}, expected {shape}")
    check_probs(a, where)
    return a


def _model_mean(lm: LoadedModel, call: Callable[[Any], Any], shape: tuple[int, ...], case_day: str) -> np.ndarray:
    """Mean over the folds of one model (each output checked for shape and NaN, naming the checkpoint); a running
    mean, so memory holds two maps whatever the number of folds."""
    acc = core.WeightedMean()
    for ck, p in lm.folds:
        where = f"model {lm.spec.name!r} ({ck}) on {case_day}"
        acc.add(_checked(call(p), shape, where), 1.0, where)
    return acc.result()


def _group_mean(
    models: Sequence[LoadedModel], call: Callable[[LoadedModel, Any], Any], shape: tuple[int, ...], case_day: str
) -> np.ndarray:
    """Weighted mean over models (weights normalised) of their fold means, accumulated model by model."""
    core.normalise_weights(
        [lm.spec.weight for lm in models], len(models), "weights of " + ", ".join(lm.spec.name for lm in models)
    )
    acc = core.WeightedMean()
    for lm in models:
        acc.add(_model_mean(lm, lambda p, lm=lm: call(lm, p), shape, case_day), lm.spec.weight, lm.spec.name)
    return acc.result()


@dataclass
class CaseDayResult:
    """What :func:`predict_case_day` returns."""

    probs: np.ndarray  # float32 (D, C, H, W), fused and gated
    keep: np.ndarray  # bool (D, C)
    masks: np.ndarray  # bool (D, C, H, W)
    boxes: np.ndarray | None  # int (D, 4)


def predict_case_day(
    spec: Spec,
    models: Sequence[LoadedModel],
    volume: np.ndarray,
    spacing: tuple[float, float] | None = None,
    batch_size: int | None = None,
    case_day: str = "",
) -> CaseDayResult:
    """Run the whole ensemble on one case-day.

    Args:
        spec: the validated spec.
        models: :func:`load_models` output for ``spec``.
        volume: uint16 ``(D, H, W)``, z in manifest order.
        spacing: ``(sy, sx)`` mm (for 3D models that resample).
        batch_size: slices per forward pass (default: the spec's).
        case_day: named in errors and logs.

    Returns:
        A :class:`CaseDayResult`.
    """
    bs = batch_size or spec.batch_size
    d, h, w = volume.shape
    c = len(CLASSES)
    shape = (d, c, h, w)
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

    # gate
    cls_probs = None
    if spec.gate["method"] == "classifier":
        classifiers = [by[m.name] for m in spec.by_kind("classifier")]
        cls_probs = _group_mean(classifiers, lambda lm, p: p.predict_volume(volume, bs), (d, c), case_day)
    gate_unets = [by[m.name] for m in spec.by_kind("2.5d", role="gate") if m.name in by]
    keep = core.gate_keep(
        spec.gate,
        (d, c),
        cls_probs=cls_probs,
        gate_probs=lambda: _group_mean(
            gate_unets,
            lambda lm, p: p.predict_volume(volume, keep=None, boxes=boxes, tta=tuple(lm.spec.tta), batch_size=bs),
            shape,
            case_day,
        ),
    )
    slice_keep = keep.any(axis=1)

    def run_25d(lm: LoadedModel) -> np.ndarray:
        if not slice_keep.any():  # the gate dropped every slice: nothing to run
            return np.zeros(shape, np.float32)
        return _model_mean(
            lm,
            lambda p: p.predict_volume(volume, keep=slice_keep, boxes=boxes, tta=tuple(lm.spec.tta), batch_size=bs),
            shape,
            case_day,
        )

    def run_3d(lm: LoadedModel) -> np.ndarray:
        return _model_mean(lm, lambda p: p.predict_volume(volume, spacing, tta=tuple(lm.spec.tta)), shape, case_day)

    maps = [
        core.ModelMap(
            lm.spec.name, lm.spec.kind, lm.spec.weight, partial(run_25d if lm.spec.kind == "2.5d" else run_3d, lm)
        )
        for lm in models
        if lm.spec.role == "segment" and lm.spec.kind in core.GROUPS
    ]
    probs, masks = core.ensemble(maps, shape, spec.fusion, keep, spec.thresholds, spec.post)
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


def infer(
    data_root: str | os.PathLike,
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
) -> pd.DataFrame:
    """Write ``out`` (a submission CSV) for the ``split/`` tree of ``data_root`` with the ensemble ``spec``.

    Args:
        data_root: folder holding ``{split}/`` (and usually ``sample_submission.csv``).
        spec: validated spec (:func:`ensembles.spec.load_spec`).
        out: the CSV to write (atomically, at the end: never half a submission).
        split: sub-folder of scans.
        sample_submission: row order (default ``data_root/sample_submission.csv`` when present; header-only or
            absent -> manifest order).
        batch_size: slices per forward pass (default: the spec's).
        workers: threads reading PNGs (0: none).
        save_probs: folder for the fused probabilities (probability-map layout, float16) and ``keep.csv``.
        overlays: number of overlay PNGs (one per case-day, its slice with the largest predicted area) written
            beside ``out`` in ``{out stem}_overlays/``.
        device: torch device for the models.
        overwrite: replace an existing ``out``.
        loaders: overrides of :data:`LOADERS` (tests).
        progress: wrapper of the case-day iterator (``tqdm``).
        skip_empty: skip case-day folders whose ``scans/`` holds no scan (counted in the log) instead of
            refusing the tree.

    Returns:
        The submission DataFrame (``id, class, predicted``).

    Raises:
        FileExistsError, FileNotFoundError (missing checkpoint, tree), ValueError (bad tree, sample ids absent
        from the tree, NaN in a probability map), each naming the file.
    """
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
    if sample is not None and len(sample):
        absent = sorted(set(sample["id"]) - set(manifest["id"]))
        if absent:
            raise ValueError(
                f"{sample_path}: {len(absent)} id(s) are not in {root / split}: {', '.join(absent[:5])}"
                + (" ..." if len(absent) > 5 else "")
                + "; give the sample submission of this tree"
            )
    models = load_models(spec, device, loaders)
    case_days = list(dict.fromkeys(manifest["case_day"]))  # manifest order: case, day (numeric)
    rows: list[tuple[str, str, str]] = []
    overlay_dir = out.with_name(out.stem + "_overlays")
    n_over = 0
    keep_rows = []
    writer = None
    if save_probs:
        meta = {"kind": "ensemble", "config": spec.source, "checkpoint": None, "fold": None, "tta": []}
        writer = ProbWriter(save_probs, {**meta, "classes": list(CLASSES)}, overwrite=overwrite, resume=True)
    pool = ThreadPoolExecutor(max_workers=workers) if workers and workers > 0 else None
    try:
        it: Iterable[str] = progress(case_days) if progress else case_days
        for cd in it:
            g = manifest[manifest["case_day"] == cd]
            h, w = int(g["height"].iloc[0]), int(g["width"].iloc[0])
            if (g["height"] != h).any() or (g["width"] != w).any():
                raise ValueError(f"{Path(g['path'].iloc[0]).parent}: slices of {cd} differ in size; expected one size")
            volume = _read_volume(g["path"].tolist(), (h, w), pool)
            spacing = (float(g["px_h"].iloc[0]), float(g["px_w"].iloc[0]))
            res = predict_case_day(spec, models, volume, spacing, batch_size, cd)
            ids = g["id"].tolist()
            rows.extend(encode_rows(ids, res.masks))
            if writer is not None:
                writer.add(cd, ids, res.probs)
                keep_rows.extend((sid, *map(int, k)) for sid, k in zip(ids, res.keep))
            if n_over < overlays:
                area = res.masks.sum(axis=(1, 2, 3))
                z = int(np.argmax(area))
                overlay_dir.mkdir(parents=True, exist_ok=True)
                save_overlay(overlay_dir / f"{ids[z]}.png", volume[z], None, res.masks[z], title=ids[z])
                n_over += 1
    finally:
        if pool is not None:
            pool.shutdown()
    sub = order_rows(pd.DataFrame(rows, columns=["id", "class", "predicted"]), sample, str(sample_path))
    if writer is not None:
        writer.finish()
        kdf = pd.DataFrame(keep_rows, columns=["id", *CLASSES])
        atomic_write_text(Path(save_probs) / "keep.csv", kdf.to_csv(index=False))
    atomic_write_text(out, sub.to_csv(index=False, lineterminator="\n"), overwrite=True)
    logger.info("wrote %s: %d rows, %d case-days", out, len(sub), len(case_days))
    return sub
