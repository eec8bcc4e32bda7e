"""Score predictions against labels: the file side of :mod:`evaluation.metric`.

Two kinds of files: the Kaggle layout's RLE tables (a submission against ``train.csv``: :func:`score_files`) and
folders of label volumes in a WORK's input format (predictions of ``tools/infer.py --work`` against the format's
label files: :func:`score_folders`, which adds the plain 3D Dice per volume and class). Case-days (volumes) are
read and scored one at a time (memory bounded), optionally in a process pool. With ``surface=True`` the field's
metrics in mm come beside the competition score (DSC, NSD at a tolerance, HD95, ASSD per class and case:
:mod:`evaluation.surface`), from each volume's spacing: the Kaggle layout's ``(3.0, px_h, px_w)`` (its file names
give the pixel spacing, the slice thickness is :data:`data_prep.dataset.KAGGLE_Z_SPACING_MM`), a WORK's
``dataset.json`` for folders. :func:`write_report` writes the one table of a run.
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
from data_prep.dataset import KAGGLE, KAGGLE_Z_SPACING_MM, DatasetInfo
from data_prep.layout import RLEVolumes, read_layout, read_rle_table, shapes_manifest
from data_prep.rle import decode_case_day
from evaluation.metric import (
    DEFAULT_EMPTY,
    DEFAULT_HAUSDORFF,
    SURFACE_METRICS,
    CaseDayScore,
    ScoreResult,
    aggregate,
    dsc_3d_table,
    score_case_day,
)
from evaluation.predictions import prediction_files, prediction_format

logger = logging.getLogger(__name__)


def _score_task(args: tuple) -> CaseDayScore:
    cd, ids, h, w, truth_rows, pred_rows, empty, hausdorff, spacing, tolerance = args
    truth = decode_case_day(truth_rows, h, w, ids)
    pred = decode_case_day(pred_rows, h, w, ids)
    return score_case_day(cd, pred, truth, empty, hausdorff, spacing=spacing, tolerance=tolerance)


#: Pixel spacing columns (mm) of a manifest: ``read_layout`` and WORK's manifest, or the scan manifest of the labels.
PIXEL_COLUMNS: tuple[tuple[str, str], ...] = (("px_h", "px_w"), ("px_h_mm", "px_w_mm"))


def kaggle_spacings(manifest: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """``{case_day: (3.0, px_h, px_w)}`` mm from a manifest's pixel spacing (``px_h, px_w`` as
    :func:`data_prep.layout.read_layout` gives them, or ``px_h_mm, px_w_mm``; the first slice of each case-day);
    ``{}`` when it has none.

    >>> kaggle_spacings(pd.DataFrame({"id": ["case1_day0_slice_0001"], "px_h": [1.5], "px_w": [1.63]}))
    {'case1_day0': (3.0, 1.5, 1.63)}
    """
    cols = next(((h, w) for h, w in PIXEL_COLUMNS if {h, w} <= set(manifest.columns)), None)
    if cols is None:
        return {}
    cd = manifest["case_day"] if "case_day" in manifest.columns else manifest["id"].map(case_day_of)
    first = manifest.assign(_cd=cd).groupby("_cd", sort=False)[list(cols)].first()
    return {str(k): (KAGGLE_Z_SPACING_MM, float(h), float(w)) for k, (h, w) in zip(first.index, first.to_numpy())}


def score_tables(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    manifest: pd.DataFrame,
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
    workers: int = 0,
    progress: Callable | None = None,
    surface: bool = False,
    tolerance: float | None = None,
) -> ScoreResult:
    """Score an RLE table against another, case-day by case-day.

    Args:
        truth: :func:`data_prep.layout.read_rle_table` of the labels; its case-days are scored (every slice of them
            in ``manifest``; a slice with no label rows is empty).
        pred: same for the prediction; it must cover every slice id of the scored case-days.
        manifest: ids, sizes and z order (:func:`data_prep.layout.shapes_manifest` or ``read_layout`` output); for
            ``surface``, also the pixel spacing (``px_h, px_w`` or ``px_h_mm, px_w_mm``, :func:`kaggle_spacings`).
        empty, hausdorff: metric options (:mod:`evaluation.metric`).
        workers: processes (0: in this process).
        progress: optional wrapper of the iterator (e.g. ``tqdm``) with ``total=``.
        surface: also the surface metrics per class and case-day (DSC, NSD, HD95, ASSD in mm, voxel spacing
            ``(3.0, px_h, px_w)``); off by default (the competition score alone is faster).
        tolerance: the NSD tolerance in mm (None: one voxel, the largest side: 3 mm for the Kaggle layout).

    Returns:
        A :class:`evaluation.metric.ScoreResult`.

    Raises:
        ValueError: prediction rows missing (named), case-days absent from the manifest, ``surface`` without the
            pixel spacing of a case-day.
    """
    spacings = kaggle_spacings(manifest) if surface else {}
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
    if surface:
        no_px = [k for k in keys if k not in spacings]
        if no_px:
            raise ValueError(
                f"surface metrics need each case-day's pixel spacing (manifest columns px_h, px_w in mm); none for "
                f"{', '.join(no_px[:3])}{' ...' if len(no_px) > 3 else ''}: give the scan tree (--data-root) or a "
                "manifest with them, or leave the surface metrics out (--no-surface)"
            )

    def tasks():
        for cd in keys:
            ids, h, w, trows = truth_v.rles(cd)
            _, _, _, prows = pred_v.rles(cd)
            yield (cd, ids, h, w, trows, prows, empty, hausdorff, spacings.get(cd), tolerance)

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
    """Sizes and z order from a scan tree (``read_layout``) or a manifest CSV (``id, width, height`` columns):
    :func:`data_prep.layout.shapes_manifest`'s columns, and ``px_h, px_w`` (mm) when the source has the pixel
    spacing (the scan tree always; a CSV with ``px_h, px_w`` or ``px_h_mm, px_w_mm``)."""
    if manifest_csv is not None:
        p = Path(manifest_csv)
        if not p.is_file():
            raise FileNotFoundError(f"manifest {p} not found")
        full = pd.read_csv(p)
    elif data_root is None:
        raise ValueError("give --data-root (the scan tree gives image sizes and slice order) or --manifest")
    else:
        full = read_layout(data_root, split, check_images=False)
    out = shapes_manifest(full)
    spacing = kaggle_spacings(full)
    if spacing:
        px = out["case_day"].map(spacing)
        out["px_h"], out["px_w"] = px.str[1], px.str[2]
    return out


#: Column formats of the report table: competition numbers and overlaps 4 decimals, distances (mm) 2.
_DIGITS = {"score": 4, "dice": 4, "dsc": 4, "nsd": 4, "hd95": 2, "assd": 2}


def score_table(result: ScoreResult) -> pd.DataFrame:
    """The one table of a run, as numbers: a row per class, the ``all`` row (every (case-day, class)), then a row
    per case-day (its means over the classes).

    Columns: ``row`` (class or case-day), ``kind`` (``class``, ``all``, ``case_day``), ``score`` (competition),
    ``dice`` (per-slice Dice), and with surface metrics ``dsc, dsc_sd, nsd, nsd_sd, hd95, hd95_sd, assd, assd_sd``
    (means and sample standard deviations over case-days; case-day rows have no ``_sd``).
    """
    pc, pcd = result.per_class, result.per_case_day
    rows = pd.DataFrame(
        {"row": pc["class"], "kind": ["class"] * (len(pc) - 1) + ["all"], "score": pc["score"], "dice": pc["dice"]}
    )
    cases = pd.DataFrame({"row": pcd["case_day"], "kind": "case_day", "score": pcd["score"], "dice": pcd["dice"]})
    if result.has_surface:
        for m in SURFACE_METRICS:
            rows[m], rows[f"{m}_sd"] = pc[m].to_numpy(), pc[f"{m}_sd"].to_numpy()
            cases[m], cases[f"{m}_sd"] = pcd[m].to_numpy(), np.nan
    return pd.concat([rows, cases], ignore_index=True)


def _cell(v: float, sd: float | None, digits: int) -> str:
    if v is None or np.isnan(v):
        return "-"
    out = f"{v:.{digits}f}"
    return out if sd is None or np.isnan(sd) else f"{out} ± {sd:.{digits}f}"


def _tolerance_text(result: ScoreResult) -> str:
    return ", ".join(f"{t:g}" for t in result.tolerances)


def report_markdown(result: ScoreResult, max_cases: int | None = None) -> str:
    """The report as Markdown: a header (the competition score, the empty convention, the Hausdorff variant, the
    NSD tolerance τ in mm and the HD95 definition) and :func:`score_table` as one table (``mean ± sd`` for the
    classes and ``all``); ``max_cases`` case-day rows at most (None: all)."""
    tab = score_table(result)
    empty = {
        "one": "both empty counts as a match (Dice 1, distance 0)",
        "skip": "pairs empty in both are left out",
    }[result.empty]
    lines = [
        "# Score",
        "",
        f"Competition score **{result.score:.5f}** = 0.4 · Dice {result.dice:.5f} + 0.6 · (1 - Hausdorff) "
        f"{result.hausdorff:.5f}. Empty convention `{result.empty}`: {empty}; Hausdorff `"
        f"{result.hausdorff_variant}` (normalised 3D, per case-day).",
    ]
    cols = ["score", "dice"]
    head = ["class / case-day", "score", "dice (slices)"]
    if result.has_surface:
        tau = _tolerance_text(result)
        lines += [
            "",
            f"Surface metrics in mm from the voxel spacing: DSC (3D), NSD at τ = {tau} mm (surface Dice), HD95 "
            f"(the {result.percentile:g}th-percentile robust Hausdorff over area-weighted surfels, the larger "
            "direction), ASSD (mean of the two average surface distances). One mask empty and the other not: NSD 0, "
            "HD95 and ASSD the volume's diagonal. Classes and `all`: mean ± sd over case-days; case-days: mean over "
            "the classes.",
        ]
        cols += list(SURFACE_METRICS)
        head += ["DSC", f"NSD@{tau}mm", "HD95 (mm)", "ASSD (mm)"]
    top, cases = tab[tab["kind"] != "case_day"], tab[tab["kind"] == "case_day"]
    shown = cases if max_cases is None else cases.head(max_cases)
    lines += ["", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in pd.concat([top, shown]).to_dict("records"):
        name = f"**{r['row']}**" if r["kind"] == "all" else str(r["row"])
        cells = [_cell(r[c], r.get(f"{c}_sd"), _DIGITS[c]) for c in cols]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    if len(shown) < len(cases):
        lines.append(f"\n... {len(cases) - len(shown)} more case-days in the JSON and CSV")
    return "\n".join(lines) + "\n"


def write_report(result: ScoreResult, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out`` (JSON: :meth:`ScoreResult.to_dict`), the same name with ``.md`` (:func:`report_markdown`) and
    with ``.csv`` (:func:`score_table`), atomically; returns the JSON and Markdown paths. Volume datasets
    (``result.dsc_3d``) add their 3D Dice per volume and class below the table."""
    out = Path(out)
    atomic_write_text(out, json.dumps(result.to_dict(), indent=1))
    atomic_write_text(out.with_suffix(".csv"), score_table(result).to_csv(index=False))
    md = out.with_suffix(".md")
    text = report_markdown(result)
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
    surface: bool = False,
    tolerance: float | None = None,
) -> ScoreResult:
    """:func:`score_tables` from files (labels ``train.csv``-like, prediction a submission); ``surface`` and
    ``tolerance`` as there (the scan tree gives the pixel spacing)."""
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
    return score_tables(truth, pred, manifest, empty, hausdorff, workers, progress, surface, tolerance)


# ---------------------------------------------------------------------------------------------- folders of volumes


def _volume_task(args: tuple) -> CaseDayScore:
    key, truth_path, pred_path, info, fmt, empty, hausdorff, spacing, tolerance = args
    mod = fmt if not isinstance(fmt, str) else prediction_format(fmt)
    truth = np.asarray(mod.read_prediction(truth_path, info, key), dtype=bool)
    pred = np.asarray(mod.read_prediction(pred_path, info, key), dtype=bool)
    want = (truth.ndim == 4) and truth.shape[1] == info.num_classes
    if not want:
        raise ValueError(f"{truth_path}: read as shape {truth.shape}, expected (D, {info.num_classes}, H, W)")
    if pred.shape != truth.shape:
        raise ValueError(f"{pred_path}: shape {pred.shape} differs from its labels {truth_path}: {truth.shape}")
    return score_case_day(key, pred, truth, empty, hausdorff, spacing=spacing, tolerance=tolerance)


def score_folders(
    truth_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    info: DatasetInfo,
    empty: str = DEFAULT_EMPTY,
    hausdorff: str = DEFAULT_HAUSDORFF,
    workers: int = 0,
    progress: Callable | None = None,
    surface: bool = False,
    tolerance: float | None = None,
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
        surface: also the surface metrics per class and volume (DSC, NSD, HD95, ASSD in mm) from each volume's
            spacing in ``info`` (``dataset.json``).
        tolerance: the NSD tolerance in mm (None: one voxel of each volume, its largest side).

    Returns:
        A :class:`evaluation.metric.ScoreResult` with ``dsc_3d`` (3D Dice per volume and class) and a ``dsc_3d``
        column in ``per_class`` (its mean over the volumes; the ``all`` row: the mean over the classes).

    Raises:
        ValueError: a truth volume without prediction (named), a volume unknown to ``info``, shapes that differ,
            ``surface`` for a volume without spacing in ``info``.
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
    spacings: dict[str, tuple[float, float, float] | None] = {k: None for k in keys}
    if surface:
        no_geometry = [k for k in keys if k not in info.volumes]
        if no_geometry:
            raise ValueError(
                f"{truth[no_geometry[0]]}: surface metrics need the voxel spacing of volume {no_geometry[0]!r}, and "
                "the dataset description (dataset.json of --work) has none; give the WORK these volumes were "
                "prepared in, or leave the surface metrics out (--no-surface)"
            )
        spacings = {k: info.volumes[k].spacing for k in keys}
    fmt = prediction_format(info.format)
    use_fmt: object = info.format if workers and workers > 1 else fmt
    tasks = [(k, truth[k], pred[k], info, use_fmt, empty, hausdorff, spacings[k], tolerance) for k in keys]
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
