"""Score predictions against labels: the file side of :mod:`evaluation.metric`.

Two kinds of files: the Kaggle layout's RLE tables (a submission against ``train.csv``: :func:`score_files`) and
folders of label volumes in a WORK's input format (predictions of ``tools/infer.py --work`` against the format's
label files: :func:`score_folders`, which adds the plain 3D Dice per volume and class). Case-days (volumes) are
read and scored one at a time (memory bounded), optionally in a process pool.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import atomic_write_text, markdown_table
from data_prep.constants import case_day_of
from data_prep.dataset import KAGGLE, DatasetInfo
from data_prep.layout import RLEVolumes, read_layout, read_rle_table, shapes_manifest
from data_prep.rle import decode_case_day
from evaluation.metric import (
    DEFAULT_EMPTY,
    DEFAULT_HAUSDORFF,
    CaseDayScore,
    ScoreResult,
    aggregate,
    dsc_3d_table,
    score_case_day,
)
from evaluation.predictions import prediction_files, prediction_format

logger = logging.getLogger(__name__)


def _score_task(args: tuple) -> CaseDayScore:
    cd, ids, h, w, truth_rows, pred_rows, empty, hausdorff = args
    truth = decode_case_day(truth_rows, h, w, ids)
    pred = decode_case_day(pred_rows, h, w, ids)
    return score_case_day(cd, pred, truth, empty, hausdorff)


def score_tables(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    manifest: pd.DataFrame,
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
    workers: int = 0,
    progress: Callable | None = None,
) -> ScoreResult:
    """Score an RLE table against another, case-day by case-day.

    Args:
        truth: :func:`data_prep.layout.read_rle_table` of the labels; its case-days are scored (every slice of them
            in ``manifest``; a slice with no label rows is empty).
        pred: same for the prediction; it must cover every slice id of the scored case-days.
        manifest: ids, sizes and z order (:func:`data_prep.layout.shapes_manifest` or ``read_layout`` output).
        empty, hausdorff: metric options (:mod:`evaluation.metric`).
        workers: processes (0: in this process).
        progress: optional wrapper of the iterator (e.g. ``tqdm``) with ``total=``.

    Returns:
        A :class:`evaluation.metric.ScoreResult`.

    Raises:
        ValueError: prediction rows missing (named), case-days absent from the manifest.
    """
    manifest = shapes_manifest(manifest)
    truth_v = RLEVolumes(truth, manifest)
    keys = list(truth_v)
    scored_ids = manifest.loc[manifest["case_day"].isin(set(keys)), "id"]
    missing = sorted(set(scored_ids) - set(pred["id"]))
    if missing:
        src = pred.attrs.get("source", "prediction")
        raise ValueError(
            f"{src}: {len(missing)} slice id(s) of the scored case-days have no rows: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    pred_v = RLEVolumes(pred, manifest, case_days=keys)

    def tasks():
        for cd in keys:
            ids, h, w, trows = truth_v.rles(cd)
            _, _, _, prows = pred_v.rles(cd)
            yield (cd, ids, h, w, trows, prows, empty, hausdorff)

    if workers and workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            it = ex.map(_score_task, tasks(), chunksize=2)
            records = list(progress(it, total=len(keys)) if progress else it)
    else:
        it = map(_score_task, tasks())
        records = list(progress(it, total=len(keys)) if progress else it)
    return aggregate(records, empty, hausdorff, KAGGLE.classes)


def manifest_for(
    data_root: str | os.PathLike | None, split: str, manifest_csv: str | os.PathLike | None = None
) -> pd.DataFrame:
    """Sizes and z order from a scan tree (``read_layout``) or a manifest CSV (``id, width, height`` columns)."""
    if manifest_csv is not None:
        p = Path(manifest_csv)
        if not p.is_file():
            raise FileNotFoundError(f"manifest {p} not found")
        return shapes_manifest(pd.read_csv(p))
    if data_root is None:
        raise ValueError("give --data-root (the scan tree gives image sizes and slice order) or --manifest")
    return shapes_manifest(read_layout(data_root, split, check_images=False))


def write_report(result: ScoreResult, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out`` (JSON) and the same name with ``.md`` (Markdown tables), atomically."""
    out = Path(out)
    atomic_write_text(out, json.dumps(result.to_dict(), indent=1))
    md = out.with_suffix(".md")
    text = (
        f"# Score\n\nscore **{result.score:.5f}** (dice {result.dice:.5f}, 1 - hausdorff {result.hausdorff:.5f}; "
        f"empty={result.empty}, hausdorff={result.hausdorff_variant})\n\n## Per class\n\n"
        + markdown_table(result.per_class)
        + "\n## Per case-day\n\n"
        + markdown_table(result.per_case_day)
    )
    if result.dsc_3d is not None:
        text += "\n## 3D Dice per volume and class\n\n" + markdown_table(result.dsc_3d)
    atomic_write_text(md, text)
    return out, md


def score_files(
    truth_csv: str | os.PathLike | pd.DataFrame,
    pred_csv: str | os.PathLike | pd.DataFrame,
    data_root: str | os.PathLike | None = None,
    split: str = "train",
    manifest_csv: str | os.PathLike | None = None,
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
    workers: int = 0,
    case_days: Sequence[str] | None = None,
    progress: Callable | None = None,
) -> ScoreResult:
    """:func:`score_tables` from files (labels ``train.csv``-like, prediction a submission)."""
    truth = read_rle_table(truth_csv)
    pred = read_rle_table(pred_csv)
    manifest = manifest_for(data_root, split, manifest_csv)
    if case_days is not None:
        keep = set(case_days)
        truth = truth[truth["id"].map(case_day_of).isin(keep)]
    else:
        # score only the case-days of the truth that exist in this tree (train.csv covers more than a test tree)
        have = set(manifest["case_day"])
        sel = truth["id"].map(case_day_of).isin(have)
        if not sel.any():
            raise ValueError(f"none of the case-days of {truth.attrs.get('source')} is in the scan tree ({split}/)")
        if not sel.all():
            logger.info("scoring %d of %d labelled ids (those in the tree)", int(sel.sum()), len(truth))
        src = truth.attrs.get("source")
        truth = truth[sel]
        truth.attrs["source"] = src
    return score_tables(truth, pred, manifest, empty, hausdorff, workers, progress)


# ---------------------------------------------------------------------------------------------- folders of volumes


def _volume_task(args: tuple) -> CaseDayScore:
    key, truth_path, pred_path, info, fmt, empty, hausdorff = args
    mod = fmt if not isinstance(fmt, str) else prediction_format(fmt)
    truth = np.asarray(mod.read_prediction(truth_path, info, key), dtype=bool)
    pred = np.asarray(mod.read_prediction(pred_path, info, key), dtype=bool)
    want = (truth.ndim == 4) and truth.shape[1] == info.num_classes
    if not want:
        raise ValueError(f"{truth_path}: read as shape {truth.shape}, expected (D, {info.num_classes}, H, W)")
    if pred.shape != truth.shape:
        raise ValueError(f"{pred_path}: shape {pred.shape} differs from its labels {truth_path}: {truth.shape}")
    return score_case_day(key, pred, truth, empty, hausdorff)


def score_folders(
    truth_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    info: DatasetInfo,
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
    workers: int = 0,
    progress: Callable | None = None,
) -> ScoreResult:
    """Score a folder of predicted label volumes against a folder of true ones, volume by volume.

    Both are read with the format module of ``info.format`` (``read_prediction``, :mod:`evaluation.predictions`),
    matched by volume key (file name without its ending; ``predictions.json`` when present). The competition
    score's Hausdorff uses the same normalised definition on each volume's shape ``(D, H, W)``.

    Args:
        truth_dir: the labels (e.g. an nnU-Net ``labelsTr``), one file per volume; every one is scored.
        pred_dir: the predictions (``tools/infer.py --work WORK --out DIR``); must hold every truth volume.
        info: the WORK's dataset description (``data_prep.work.read_dataset(work)``): classes, label kind,
            geometry of each volume.
        empty, hausdorff: metric options (:mod:`evaluation.metric`).
        workers: processes (0: this one).
        progress: optional wrapper of the iterator (e.g. ``tqdm``) with ``total=``.

    Returns:
        A :class:`evaluation.metric.ScoreResult` with ``dsc_3d`` (3D Dice per volume and class) and a ``dsc_3d``
        column in ``per_class`` (its mean over the volumes; the ``all`` row: the mean over the classes).

    Raises:
        ValueError: a truth volume without prediction (named), a volume unknown to ``info``, shapes that differ.
        FileNotFoundError: a missing folder.
    """
    truth = prediction_files(truth_dir)
    pred = prediction_files(pred_dir)
    missing = sorted(set(truth) - set(pred))
    if missing:
        raise ValueError(
            f"{pred_dir}: no prediction for {len(missing)} volume(s) of {truth_dir}: "
            + ", ".join(str(truth[k].name) for k in missing[:5])
            + (" ..." if len(missing) > 5 else "")
        )
    if info.volumes:
        unknown = sorted(set(truth) - set(info.volumes))
        if unknown:
            raise ValueError(
                f"{truth[unknown[0]]}: volume {unknown[0]!r} is not in the dataset description (dataset.json of "
                "--work); give the WORK these volumes were prepared in"
            )
    extra = sorted(set(pred) - set(truth))
    if extra:
        logger.info("%d prediction(s) without labels are not scored, e.g. %s", len(extra), extra[:3])
    keys = sorted(truth)
    fmt = prediction_format(info.format)
    use_fmt: object = info.format if workers and workers > 1 else fmt
    tasks = [(k, truth[k], pred[k], info, use_fmt, empty, hausdorff) for k in keys]
    if workers and workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            it = ex.map(_volume_task, tasks)
            records = list(progress(it, total=len(keys)) if progress else it)
    else:
        it = map(_volume_task, tasks)
        records = list(progress(it, total=len(keys)) if progress else it)
    res = aggregate(records, empty, hausdorff, info.classes)
    table = dsc_3d_table(records, info.classes, empty)
    means = [float(np.nanmean(table[f"dsc_{c}"])) if table[f"dsc_{c}"].notna().any() else np.nan for c in info.classes]
    overall = float(np.nanmean(means)) if not np.isnan(means).all() else np.nan
    res.per_class["dsc_3d"] = [*means, overall]
    res.dsc_3d = table
    return res
