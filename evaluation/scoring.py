"""Score a submission (or any RLE table) against labels: the file side of :mod:`evaluation.metric`.

Case-days are decoded and scored one at a time (memory bounded), optionally in a process pool.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from common.io import atomic_write_text, markdown_table
from data_prep.constants import CLASSES, case_day_of
from data_prep.layout import RLEVolumes, read_layout, read_rle_table, shapes_manifest
from data_prep.rle import decode_case_day
from evaluation.metric import DEFAULT_EMPTY, DEFAULT_HAUSDORFF, CaseDayScore, ScoreResult, aggregate, score_case_day

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
    return aggregate(records, empty, hausdorff, CLASSES)


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
