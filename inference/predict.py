"""Probability maps of a WORK folder: one trained model over a fold's val case-days (out-of-fold predictions, the
input of the ensemble search) or over every case-day (test time). ``tools/test.py`` (2.5D) and
``tools/infer_3d.py`` (3D) are its command lines; both write through the same loop.

Output (docs/contracts.md, "Probability maps", written by :class:`common.probmaps.ProbWriter`):
``{out}/{case_day}.npy`` float16 ``(D, C, H, W)``, ``{out}/meta.json`` (``classes``: the WORK's, from its
``dataset.json``) and, when the WORK folder has masks, ``{out}/metrics.json``: the maps thresholded at
``threshold`` (one class per pixel for exclusive classes) and scored with :mod:`evaluation.metric` (competition
score, its Dice and Hausdorff parts, the per-slice Dice table, per class).

Models see what WORK holds: uint16 ``(D, H, W)`` for one image channel, ``(K, D, H, W)`` for ``K`` channels
(:func:`load_channels`), and the spacing of :func:`volume_spacing`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.probmaps import ProbDir, ProbWriter
from data_prep.constants import REPO_ROOT, default_work_dir
from data_prep.dataset import DatasetInfo
from data_prep.work import (
    case_day_ids,
    check_work,
    fold_case_days,
    has_mask,
    load_mask,
    load_volume,
    parse_folds,
    read_dataset,
    read_manifest,
    read_splits,
)
from ensembles.core import exclusive
from evaluation.metric import case_day_metrics, score_case_day
from inference.overlap import Background, in_memory, prefetch
from training.config import config_name

logger = logging.getLogger(__name__)

#: ``predict(case_day, volume uint16 (D, H, W) or (K, D, H, W), spacing mm (:func:`volume_spacing`))
#: -> float32 (D, C, H, W)``.
Predict = Callable[[str, np.ndarray, tuple[float, ...]], np.ndarray]


def load_channels(work: str | os.PathLike, key: str, info: DatasetInfo) -> np.ndarray:
    """The image of volume ``key``: uint16 ``(D, H, W)`` (a memmap) for one channel, ``(K, D, H, W)`` for
    ``K = info.num_channels`` channels (channel ``k`` from ``volumes/{key}_ch{k}.npy``).

    Raises:
        FileNotFoundError: a channel file is missing (named). ValueError: channels of different shapes.
    """
    if info.num_channels == 1:
        return load_volume(work, key)
    chans = [np.asarray(load_volume(work, key, k)) for k in range(info.num_channels)]
    if len({c.shape for c in chans}) > 1:
        raise ValueError(f"{work}/volumes: the channels of {key} differ in shape: {[c.shape for c in chans]}")
    return np.stack(chans)


def volume_spacing(info: DatasetInfo, key: str, manifest_rows: Any) -> tuple[float, ...]:
    """The spacing models are given: ``(sy, sx)`` mm for the Kaggle layout (as always), ``(sz, sy, sx)`` mm of the
    dataset description otherwise (the in-plane spacing of the manifest when the volume is not described)."""
    sy, sx = spacing_of(manifest_rows)
    if info.format == "kaggle":
        return sy, sx
    return tuple(float(v) for v in info.spacing(key, (sy, sx)))


def default_out_dir(config: str | os.PathLike, fold: int | None) -> Path:
    """``work_dirs/{config}/fold_{k}/oof`` (a fold's val side) or ``work_dirs/{config}/test`` (no fold)."""
    base = REPO_ROOT / "work_dirs" / config_name(config)
    return base / f"fold_{fold}" / "oof" if fold is not None else base / "test"


def select_case_days(
    work: str | os.PathLike, fold: int | str | None = None, case_days: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """``{case_day: [slice ids in z order]}``: the val case-days of ``fold``, or ``case_days``, or every case-day.

    Raises:
        FileNotFoundError: WORK not prepared (or no splits with a fold). ValueError: unknown fold or case-day.
    """
    work = check_work(work, need_masks=False, need_splits=fold is not None)
    manifest = read_manifest(work)
    if fold is not None:
        splits = read_splits(work)
        (k,) = parse_folds(fold, int(splits.get("n_folds", len(splits["folds"]))))
        case_days = fold_case_days(splits, k)[1]
    return case_day_ids(manifest, case_days)


def spacing_of(manifest_rows: Any) -> tuple[float, float]:
    """In-plane spacing ``(sy, sx)`` mm of a case-day's manifest rows."""
    return float(manifest_rows["px_h"].iloc[0]), float(manifest_rows["px_w"].iloc[0])


def check_classes(model: Any, work: str | os.PathLike, checkpoint: str | os.PathLike) -> None:
    """Refuse a model whose ``classes`` (when it exposes them) differ from the WORK's (both named)."""
    got = getattr(model, "classes", None)
    want = read_dataset(work).classes
    if got is not None and tuple(got) != tuple(want):
        raise ValueError(
            f"{checkpoint} predicts classes {list(got)}, {work}/dataset.json has {list(want)}; use a model trained on "
            "this dataset"
        )


def write_work_maps(
    predict: Predict,
    work: str | os.PathLike,
    out: str | os.PathLike,
    groups: Mapping[str, Sequence[str]],
    meta: Mapping[str, Any],
    overwrite: bool = False,
    threshold: float = 0.5,
    progress: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Predict every case-day of ``groups`` and write the probability folder ``out`` (and ``metrics.json``).

    The next case-day is read while one computes, and the maps are written while the next computes
    (:mod:`inference.overlap`). The metrics score the maps as written (float16), so a resumed folder's metrics
    equal an uninterrupted run's.

    Args:
        predict: the model (see :data:`Predict`).
        work: the WORK folder.
        out: the probability folder.
        groups: ``{case_day: [slice ids in z order]}`` (:func:`select_case_days`).
        meta: ``meta.json`` content (kind, config, checkpoint, fold, tta; ``classes`` is set here: the WORK's).
        overwrite: replace an existing folder's maps.
        threshold: for the metrics only (the maps are written unthresholded).
        progress: tqdm over case-days.
        resume: continue a folder written with the same ``meta`` (after a kill): its case-days are read back,
            not predicted again.

    Returns:
        ``{"out", "case_days", "slices", "resumed" (case-days read back), "metrics" (when the WORK has masks)}``.

    Raises:
        FileExistsError: ``out`` holds maps and neither ``overwrite`` nor ``resume``. ValueError: a volume whose
            depth differs from the manifest's, or a model output of the wrong shape.
    """
    work = Path(work)
    info = read_dataset(work)
    writer = ProbWriter(out, {**dict(meta), "classes": list(info.classes)}, overwrite=overwrite, resume=resume)
    manifest = read_manifest(work).set_index("id")
    items: Any = list(groups.items())
    resumed = [cd for cd, _ in items if writer.done(cd)]
    if resumed:
        logger.info("%s: %d of %d case-day(s) already written (resumed)", out, len(resumed), len(items))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="case-days", unit="case-day")
    records: dict[str, Any] = {}

    def read(item: tuple[str, Sequence[str]]) -> np.ndarray | None:
        cd, ids = item
        if writer.done(cd):
            return None
        return in_memory(load_channels(work, cd, info))

    written = ProbDir(out) if resumed else None  # the maps of the resumed case-days, as written

    def save(cd: str, ids: Sequence[str], probs: np.ndarray | None) -> None:
        if probs is not None:
            writer.add(cd, ids, probs)
        if has_mask(work, cd):
            truth = info.unpack(np.asarray(load_mask(work, cd))).astype(bool)
            # scored as written (float16), so a resumed folder's metrics equal an uninterrupted run's
            scored = written.load(cd) if probs is None else probs.astype(np.float16).astype(np.float32)
            pred = scored > threshold
            if info.label_kind == "exclusive":  # one class per pixel, as the ensemble rule predicts them
                pred = exclusive(pred, scored)
            records[cd] = score_case_day(cd, pred, truth)

    with Background(depth=2) as background:
        for (cd, ids), vol in prefetch(items, read):
            probs = None
            if vol is not None:
                d, h, w = vol.shape[-3:]
                if d != len(ids):
                    raise ValueError(f"{work}/volumes/{cd}.npy has {d} slices, manifest.csv lists {len(ids)}")
                spacing = volume_spacing(info, cd, manifest.loc[list(ids[:1])])
                probs = np.asarray(predict(cd, vol, spacing), dtype=np.float32)
                want = (d, info.num_classes, h, w)
                if probs.shape != want:
                    raise ValueError(
                        f"{cd}: the model returned shape {probs.shape}, expected {want} ({info.num_classes} classes "
                        f"of {work}/dataset.json: {list(info.classes)})"
                    )
            background.submit(save, cd, ids, probs)
    records = [records[cd] for cd in groups if cd in records]
    summary: dict[str, Any] = dict(
        out=str(out), case_days=len(groups), slices=sum(len(v) for v in groups.values()), resumed=len(resumed)
    )
    metrics = None
    if records:
        metrics, res = case_day_metrics(records, classes=info.classes)
        metrics["threshold"] = threshold
        metrics["per_class"] = res.to_dict()["per_class"]
        metrics = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in metrics.items()}
        summary["metrics"] = metrics
        logger.info("%s: score %.4f (dice %.4f) at threshold %s", out, res.score, res.dice, threshold)
    writer.finish(metrics)
    logger.info("wrote %d probability maps to %s", len(groups), out)
    return summary


def predict_work(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike,
    work: str | os.PathLike | None = None,
    fold: int | str | None = None,
    out: str | os.PathLike | None = None,
    tta: Sequence[str] = ("hflip",),
    device: str = "cpu",
    batch_size: int = 16,
    boxes: str | os.PathLike | None = None,
    threshold: float = 0.5,
    overwrite: bool = False,
    cfg_options: dict[str, Any] | None = None,
    progress: bool = False,
    planes: Sequence[str] = ("axial",),
    resume: bool = False,
) -> dict[str, Any]:
    """Probability maps of a 2.5D segmenter (``tools/test.py``): a fold's val side, or the whole WORK folder.

    The model runs on the inference engine's device path (:func:`inference.engine.run_25d`): each case-day's
    volume goes to the device once, its stacks are made there in batches, TTA are tensor ops.

    Args:
        config, checkpoint: the model (:meth:`segmenters.mm.inference.Segmenter.load`).
        work: data_prep's WORK folder (default ``default_work_dir()``).
        fold: ``K``: that fold's val case-days (out-of-fold predictions); None: every case-day (test time).
        out: output folder (default :func:`default_out_dir`).
        tta: names of :data:`ensembles.spec.TTA_25D` averaged with the plain prediction.
        device, batch_size: where and how many slices per forward pass.
        boxes: optional crop-box CSV (``id, x0, y0, x1, y1``).
        threshold: for the metrics only.
        overwrite: replace an existing output folder's maps.
        cfg_options: config overrides.
        progress: tqdm over case-days.
        planes: the planes the model runs along, their maps averaged (:data:`ensembles.spec.PLANES`; one plane per
            folder lets the search weigh the planes as models).
        resume: continue a folder of the same settings (:func:`write_work_maps`).

    Returns:
        The summary of :func:`write_work_maps`.
    """
    import torch

    from ensembles.spec import check_planes, check_tta_25d
    from gating.crop import read_boxes
    from inference.device_ops import volume_to_device
    from inference.engine import Job, run_25d
    from segmenters.mm.inference import Segmenter

    tta, planes = check_tta_25d(tta, "--tta"), check_planes(planes, "--planes")
    work = Path(work or default_work_dir())
    groups = select_case_days(work, fold)
    k = None if fold is None else parse_folds(fold, int(read_splits(work).get("n_folds", 5)))[0]
    out = Path(out) if out else default_out_dir(config, k)
    box_map = read_boxes(boxes) if boxes else {}
    seg = Segmenter.load(config, checkpoint, device, cfg_options)
    check_classes(seg, work, checkpoint)

    @torch.inference_mode()
    def predict(cd: str, vol: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        d, h, w = vol.shape[-3:]
        bx = None
        if box_map:
            bx = np.array([box_map.get(i, (0, 0, w, h)) for i in groups[cd]], np.int64)
        acc = torch.zeros((d, len(seg.classes), h, w), dtype=torch.float32, device=seg.device)
        job = Job(seg, acc, 1.0, tta, planes, f"{checkpoint}")
        run_25d(volume_to_device(vol, seg.device), [job], None, bx, spacing, batch_size, where=cd)
        return acc.cpu().numpy()

    meta = dict(kind="2.5d", config=str(config), checkpoint=str(checkpoint), fold=k, tta=list(tta))
    if planes != ("axial",):
        meta["planes"] = list(planes)
    return write_work_maps(predict, work, out, groups, meta, overwrite, threshold, progress, resume)


def predict_work_3d(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike,
    work: str | os.PathLike | None = None,
    fold: int | str | None = None,
    out: str | os.PathLike | None = None,
    tta: Sequence[str] | None = None,
    device: str = "cpu",
    case_days: Sequence[str] | None = None,
    threshold: float = 0.5,
    overwrite: bool = False,
    progress: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Probability maps of a 3D segmenter (``tools/infer_3d.py``): a fold's val side, ``case_days``, or every
    case-day of the WORK folder.

    Args:
        config, checkpoint: the model (:meth:`segmenters.monai.inference.Segmenter3D.load`).
        work: data_prep's WORK folder (default ``default_work_dir()``).
        fold: ``K``: that fold's val case-days; None: ``case_days`` or every case-day.
        out: output folder (default ``{checkpoint dir}/oof`` with a fold, else ``{checkpoint dir}/test``).
        tta: 3D TTA names (None: the config's).
        device: where the model runs.
        case_days: restrict to these (without ``fold``).
        threshold, overwrite, progress, resume: as :func:`write_work_maps` (the same loop: reading, computing
            and writing overlap; a killed run resumes).

    Returns:
        The summary of :func:`write_work_maps`.
    """
    from segmenters.monai.inference import Segmenter3D

    work = Path(work or default_work_dir())
    groups = select_case_days(work, fold, case_days)
    k = None if fold is None else parse_folds(fold, int(read_splits(work).get("n_folds", 5)))[0]
    out = Path(out) if out else Path(checkpoint).parent / ("oof" if k is not None else "test")
    seg = Segmenter3D.load(config, checkpoint, device)
    check_classes(seg, work, checkpoint)

    def predict(cd: str, vol: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        return seg.predict_volume(np.asarray(vol), spacing, tta)

    used_tta = list(tta if tta is not None else seg.default_tta)
    meta = dict(kind="3d", config=str(config), checkpoint=str(checkpoint), fold=k, tta=used_tta)
    return write_work_maps(predict, work, out, groups, meta, overwrite, threshold, progress, resume)
