"""File side of the ensembles: label / submission tables to mask volumes, probability folders, atomic writes.

The pure fusion and post-processing steps live in :mod:`ensembles.core`; the metric in :mod:`ensembles.metric`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.io import atomic_save_npy, atomic_write_text
from data_prep.constants import CLASSES, SLICE_ID_RE, case_day_of
from data_prep.rle import rle_decode

logger = logging.getLogger(__name__)

SUBMISSION_COLUMNS: tuple[str, ...] = ("id", "class", "predicted")


def _first(items: Sequence[Any], n: int = 5) -> str:
    items = list(items)
    more = f" ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


# --------------------------------------------------------------------------------------------------------------
# tables


def read_rle_table(path: str | os.PathLike | pd.DataFrame, column: str | None = None) -> pd.DataFrame:
    """Read a label or submission table into one row per slice id with one RLE column per class.

    Args:
        path: ``train.csv`` (``id,class,segmentation``), a submission (``id,class,predicted``), ``.csv.gz`` too,
            or a DataFrame with those columns.
        column: the RLE column; ``None`` picks ``segmentation`` or ``predicted``, whichever exists.

    Returns:
        DataFrame ``id, large_bowel, small_bowel, stomach`` (``""`` when empty), ids in first-seen order;
        ``attrs["source"]`` names the file.

    Raises:
        FileNotFoundError, ValueError (wrong columns, unknown classes, duplicated rows), naming the file.
    """
    if isinstance(path, pd.DataFrame):
        df, where = path.copy(), "DataFrame"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found; expected a CSV with columns id,class,segmentation|predicted")
        where = str(p)
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    if column is None:
        column = next((c for c in ("segmentation", "predicted") if c in df.columns), None)
    if column is None or column not in df.columns or "id" not in df.columns or "class" not in df.columns:
        raise ValueError(
            f"{where}: expected columns id,class and segmentation (labels) or predicted (submission), "
            f"got {list(df.columns)}"
        )
    df = df[["id", "class", column]].fillna("").astype(str)
    unknown = sorted(set(df["class"]) - set(CLASSES))
    if unknown:
        raise ValueError(f"{where}: unknown class name(s) {unknown}; expected only {list(CLASSES)}")
    bad = df.loc[~df["id"].str.match(SLICE_ID_RE.pattern), "id"].unique().tolist()
    if bad:
        raise ValueError(f"{where}: {len(bad)} id(s) not of the form case{{N}}_day{{D}}_slice_{{SSSS}}: {_first(bad)}")
    dup = df.duplicated(["id", "class"])
    if dup.any():
        rows = (df.loc[dup, "id"] + "/" + df.loc[dup, "class"]).tolist()
        raise ValueError(f"{where}: {len(rows)} (id, class) pair(s) appear more than once: {_first(rows)}")
    ids = pd.unique(df["id"])
    wide = df.pivot(index="id", columns="class", values=column).reindex(index=ids, columns=list(CLASSES)).fillna("")
    wide = wide.reset_index()
    wide.columns.name = None
    wide.attrs["source"] = where
    return wide


def shapes_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """Reduce a manifest (``read_layout`` or ``scan_manifest.csv``) to ``id, case_day, height, width``, sorted in
    z order (case, day, slice)."""
    need = {"id", "height", "width"}
    if not need <= set(manifest.columns):
        raise ValueError(f"manifest needs columns {sorted(need)}, got {list(manifest.columns)}")
    m = manifest[["id", "height", "width"]].copy()
    parts = m["id"].str.extract(SLICE_ID_RE.pattern).astype(int)
    m["case_day"] = m["id"].map(case_day_of)
    m = m.assign(_c=parts["case"], _d=parts["day"], _s=parts["slice"]).sort_values(["_c", "_d", "_s"], kind="stable")
    return m.drop(columns=["_c", "_d", "_s"]).reset_index(drop=True)


def decode_case_day(
    rles: Sequence[Sequence[str]], height: int, width: int, ids: Sequence[str] | None = None
) -> np.ndarray:
    """Decode the RLE strings of one case-day into masks.

    Args:
        rles: ``D`` rows of ``C`` strings (``""`` = empty), z order.
        height, width: image size.
        ids: slice ids, named in RLE errors.

    Returns:
        bool ``(D, C, H, W)``.
    """
    d = len(rles)
    c = len(rles[0]) if d else len(CLASSES)
    out = np.zeros((d, c, height, width), dtype=bool)
    for z, row in enumerate(rles):
        for k, rle in enumerate(row):
            if rle:
                out[z, k] = rle_decode(rle, (height, width), row_id=None if ids is None else f"{ids[z]}/{CLASSES[k]}")
    return out


class RLEVolumes(Mapping):
    """A lazy ``{case_day: bool (D, C, H, W)}`` mapping over an RLE table, decoded one case-day at a time.

    Args:
        table: output of :func:`read_rle_table`.
        manifest: :func:`shapes_manifest` output (sizes and z order); slices of a case-day absent from ``table``
            are empty.
        case_days: keys to expose (default: the case-days of ``table``).
    """

    def __init__(self, table: pd.DataFrame, manifest: pd.DataFrame, case_days: Sequence[str] | None = None):
        self.source = table.attrs.get("source", "table")
        self._rle = table.set_index("id")[list(CLASSES)]
        self._groups = {k: g for k, g in manifest.groupby("case_day", sort=False)}
        keys = sorted(set(table["id"].map(case_day_of))) if case_days is None else list(case_days)
        missing = [k for k in keys if k not in self._groups]
        if missing:
            raise ValueError(f"{self.source}: case-day(s) {_first(missing)} are not in the scan tree/manifest")
        self._keys = sorted(keys)

    def rles(self, case_day: str) -> tuple[list[str], int, int, list[list[str]]]:
        """``(ids, H, W, rows of C strings)`` of one case-day, z order."""
        g = self._groups[case_day]
        ids = g["id"].tolist()
        rows = self._rle.reindex(ids).fillna("").to_numpy().tolist()
        return ids, int(g["height"].iloc[0]), int(g["width"].iloc[0]), rows

    def __getitem__(self, case_day: str) -> np.ndarray:
        ids, h, w, rows = self.rles(case_day)
        return decode_case_day(rows, h, w, ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


# --------------------------------------------------------------------------------------------------------------
# atomic writes


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    """A DataFrame as a GitHub Markdown table (floats formatted, NaN as ``-``)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "-" if np.isnan(v) else floatfmt.format(v)
        return str(v)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# probability folders (docs/contracts.md "Probability maps")


class ProbDir:
    """One probability folder: ``meta.json`` + ``{case_day}.npy`` float16 ``(D, 3, H, W)``.

    Raises (on open): FileNotFoundError without ``meta.json``; ValueError on a malformed one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found; a probability folder holds meta.json and one {{case_day}}.npy per case-day "
                "(written by tools/test.py, tools/infer_3d.py)"
            )
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path} is not valid JSON: {e}") from None
        cds = self.meta.get("case_days")
        if not isinstance(cds, dict) or not cds:
            raise ValueError(f"{meta_path}: 'case_days' must map case-day -> [slice ids in z order], got {cds!r}")
        self.case_days: dict[str, list[str]] = {k: list(v) for k, v in cds.items()}

    def load(self, case_day: str) -> np.ndarray:
        """Probabilities of one case-day as float32 ``(D, 3, H, W)``; checked for shape, range and NaN."""
        if case_day not in self.case_days:
            raise KeyError(f"{self.path}: no case-day {case_day} in meta.json")
        f = self.path / f"{case_day}.npy"
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found although {self.path / 'meta.json'} lists {case_day}")
        arr = np.load(f, mmap_mode="r")
        d = len(self.case_days[case_day])
        if arr.ndim != 4 or arr.shape[0] != d or arr.shape[1] != len(CLASSES):
            raise ValueError(f"{f}: shape {arr.shape}, expected ({d}, {len(CLASSES)}, H, W) as meta.json lists")
        out = np.asarray(arr, dtype=np.float32)
        check_probs(out, str(f))
        return out


def check_probs(probs: np.ndarray, where: str) -> None:
    """Raise ValueError naming ``where`` when ``probs`` holds NaN/inf or values outside ``[0, 1]``."""
    if not np.isfinite(probs).all():
        bad = np.argwhere(~np.isfinite(probs))[0].tolist()
        raise ValueError(f"{where}: probability map holds NaN or inf (first at index {bad}); re-run that model")
    if probs.size and (probs.min() < 0 or probs.max() > 1):
        raise ValueError(
            f"{where}: probabilities outside [0, 1] (min {float(probs.min())}, max {float(probs.max())}); "
            "expected sigmoid outputs"
        )


def write_prob_dir(
    out: str | os.PathLike, case_day: str, probs: np.ndarray, ids: Sequence[str], meta: dict[str, Any]
) -> None:
    """Add one case-day to a probability folder (float16 ``.npy`` + meta.json updated), atomically."""
    out = Path(out)
    atomic_save_npy(out / f"{case_day}.npy", probs.astype(np.float16))
    meta_path = out / "meta.json"
    cur = json.loads(meta_path.read_text()) if meta_path.is_file() else dict(meta, case_days={})
    cur.setdefault("case_days", {})[case_day] = list(ids)
    cur["case_days"] = dict(sorted(cur["case_days"].items()))
    atomic_write_text(meta_path, json.dumps(cur, indent=1))
