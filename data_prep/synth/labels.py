"""Label-driven mode: :func:`render_from_labels` paints images around given masks.

The masks come from a ``train.csv`` (e.g. the real labels), sizes and spacings from a scan manifest
(:func:`_read_scan_manifest`); the files are those of the shape-model mode, with real anatomy at real scale.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from data_prep.constants import CLASSES
from data_prep.layout import read_labels, validate_rles
from data_prep.synth.output import _prepare_out, _write_csv
from data_prep.synth.workers import CaseDayTask, _render_label_task, _run_tasks

logger = logging.getLogger(__name__)


_MANIFEST_ALIASES = {"px_w_mm": "px_w", "px_h_mm": "px_h"}


def _read_scan_manifest(manifest: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    if isinstance(manifest, pd.DataFrame):
        df, where = manifest.copy(), "manifest DataFrame"
    else:
        p = Path(manifest)
        if not p.is_file():
            raise FileNotFoundError(
                f"scan manifest {p} not found; expected a CSV with id,case,day,slice,width,height,px_w_mm,px_h_mm"
            )
        df, where = pd.read_csv(p), str(p)
    df = df.rename(columns=_MANIFEST_ALIASES)
    need = ["id", "case", "day", "slice", "width", "height", "px_w", "px_h"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; expected {need}")
    df["case_day"] = "case" + df["case"].astype(str) + "_day" + df["day"].astype(str)
    return df.sort_values(["case", "day", "slice"], kind="stable").reset_index(drop=True)


def render_from_labels(
    out: str | os.PathLike,
    labels: str | os.PathLike | pd.DataFrame,
    manifest: str | os.PathLike | pd.DataFrame,
    case_days: Sequence[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Render a ``train/`` tree whose masks are given, and copy their labels to ``OUT/train.csv``.

    Args:
        out: output folder; must not already hold a dataset unless ``overwrite``.
        labels: ``train.csv`` path (``.csv.gz`` too) or DataFrame (``id,class,segmentation``).
        manifest: scan manifest path or DataFrame: ``id, case, day, slice, width, height, px_w_mm, px_h_mm``
            (or ``px_w, px_h``); file names are made from them (other columns, e.g. ``kaggle_path``, are ignored).
        case_days: keys ``case{N}_day{D}`` to render (default: all of the manifest).
        seed: random seed of the rendering (the masks are the labels').
        overwrite: replace an existing dataset in ``out``.
        workers: processes.
        progress: show a tqdm bar.

    Returns:
        Summary ``{"out", "case_days", "slices"}``.

    Raises:
        FileNotFoundError: a missing input file. ValueError: wrong columns, unknown case-days, malformed RLE
        (names the row id). FileExistsError: ``out`` holds a dataset and not ``overwrite``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    lab = read_labels(labels).set_index("id")
    man = _read_scan_manifest(manifest)
    if case_days is not None:
        known = set(man["case_day"])
        unknown = [cd for cd in case_days if cd not in known]
        if unknown:
            hints = {cd: difflib.get_close_matches(cd, sorted(known), n=2) for cd in unknown[:3]}
            raise ValueError(f"case-day(s) not in the manifest: {unknown[:5]}; close matches: {hints}")
        man = man[man["case_day"].isin(set(case_days))].reset_index(drop=True)
    if man.empty:
        raise ValueError("nothing to render: the manifest (after --case-days) has no slices")
    missing = ~man["id"].isin(lab.index)
    if missing.any():
        logger.warning("%d manifest slices have no label rows; they are rendered with empty masks", int(missing.sum()))
    rles = lab.reindex(man["id"])[list(CLASSES)].fillna("")
    # Validate every RLE against its slice's size before anything is written (errors name row and file).
    check = pd.concat([man[["id", "width", "height"]], rles.reset_index(drop=True)], axis=1)
    validate_rles(check, lab.attrs.get("source", "labels"))
    out_p = Path(out).resolve()
    _prepare_out(out_p, overwrite)
    tasks = []
    for cd, idx in man.groupby("case_day", sort=False).indices.items():
        g = man.iloc[idx]
        sizes = g[["width", "height", "px_w"]].drop_duplicates()
        if len(sizes) != 1:
            raise ValueError(f"{cd}: slices of one case-day have different sizes or spacings in the manifest")
        w, h, px = int(g["width"].iloc[0]), int(g["height"].iloc[0]), float(g["px_w"].iloc[0])
        tasks.append(
            CaseDayTask(
                str(out_p),
                "train",
                int(g["case"].iloc[0]),
                int(g["day"].iloc[0]),
                len(g),
                w,
                h,
                px,
                seed,
                slices=tuple(int(s) for s in g["slice"]),
                rles=tuple(map(tuple, rles.iloc[idx].to_numpy().tolist())),
            )
        )
    counts = _run_tasks(_render_label_task, tasks, workers, progress, "render")
    long = rles.set_axis(man["id"].to_numpy()).rename_axis("id").reset_index()
    long = long.melt(id_vars="id", value_vars=list(CLASSES), var_name="class", value_name="segmentation")
    order = {c: i for i, c in enumerate(CLASSES)}
    long["_z"] = long["id"].map({sid: i for i, sid in enumerate(man["id"])})
    long["_c"] = long["class"].map(order)
    long = long.sort_values(["_z", "_c"], kind="stable")[["id", "class", "segmentation"]]
    _write_csv(long, out_p / "train.csv")
    summary = {"out": str(out_p), "case_days": len(tasks), "slices": int(sum(counts))}
    logger.info("rendered %s", summary)
    return summary
