"""Cross-validation folds grouped by case, their training variants, and the report of what each filter dropped.

Folds: ``GroupKFold(n_folds)`` over slices grouped by case (a case never appears in two folds). GroupKFold is
deterministic, so the seed shuffles the order of the cases before it assigns them (the groups are relabelled
by their rank in a seeded permutation); ``method="stratified_group"`` uses
``StratifiedGroupKFold(shuffle=True, random_state=seed)`` on "the slice has a mask in any class". The ``case``
column is the patient group: the case number of the Kaggle layout (``val_cases`` are integers), a string for the
other formats (``val_cases`` are strings). The classes are the dataset's (``WORK/dataset.json``), any number:
:func:`write_splits` reads them; the functions on a bare manifest take ``classes`` (default the Kaggle classes).

Training variants (validation lists are never filtered):

- ``all``: every training slice;
- ``notail``: drops the ``tail`` slices right after the last annotated slice of each case-day (reason ``tail``)
  and, with ``tail_before > 0``, that many slices right before the first annotated one (reason ``head``);
  a case-day with no annotation at all loses nothing;
- ``noanno``: drops slices with no mask in any class (reason ``noanno``).

The fault list (reason ``fault``) drops whole case-days from every training variant.

The splits are written once to ``WORK/splits/splits.json`` and only read afterwards: :func:`write_splits`
refuses to change an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.io import atomic_write_text, markdown_table
from data_prep.constants import (
    CLASSES,
    DEFAULT_FAULTY_CASE_DAYS,
    DEFAULT_FOLDS,
    DEFAULT_SEED,
    DEFAULT_TAIL,
    SPLIT_VARIANTS,
)
from data_prep.work import read_dataset, read_manifest, read_splits, splits_path, write_splits_json

logger = logging.getLogger(__name__)

SPLITS_VERSION = 1
SPLIT_METHODS = ("group", "stratified_group")
#: Reasons in ``dropped.csv``, and the variants each one filters.
DROP_REASONS = {"fault": SPLIT_VARIANTS, "tail": ("notail",), "head": ("notail",), "noanno": ("noanno",)}


def _normalise_method(method: str) -> str:
    aliases = {"group": "group", "stratified": "stratified_group", "stratified_group": "stratified_group"}
    if method not in aliases:
        raise ValueError(f"split method must be one of {sorted(aliases)}, got {method!r}")
    return aliases[method]


def presence(manifest: pd.DataFrame, classes: Sequence[str] | None = None) -> np.ndarray:
    """Per-slice presence of each class.

    Args:
        manifest: a WORK manifest (``has_{class}`` columns) or a Kaggle layout manifest with labels (one RLE
            column per class; a non-empty string means present).
        classes: the dataset's classes (``read_dataset(work).classes``); default the Kaggle classes.

    Returns:
        bool ``(N, C)`` in the order of ``classes``.
    """
    if classes is None:
        classes = CLASSES
    has = [f"has_{c}" for c in classes]
    if all(c in manifest.columns for c in has):
        return manifest[has].to_numpy().astype(bool).reshape(len(manifest), len(has))
    if all(c in manifest.columns for c in classes):
        rle = manifest[list(classes)].fillna("").astype(str)
        return np.stack([rle[c].str.strip().str.len().to_numpy() > 0 for c in classes], axis=1)
    raise ValueError(
        f"manifest has no labels: expected columns {has} (WORK/manifest.csv) or {list(classes)} (RLE). "
        "Splits need labels (train.csv of the Kaggle layout, label volumes of the other formats)."
    )


def _group_values(cases: np.ndarray) -> list[int | str]:
    """Groups as JSON values: integers stay integers (the Kaggle case numbers), anything else becomes a string."""
    if cases.dtype.kind in "iu":
        return [int(c) for c in cases]
    return [str(c) for c in cases]


def _z_within_case_day(manifest: pd.DataFrame) -> np.ndarray:
    if "z" in manifest.columns:
        return manifest["z"].to_numpy(dtype=np.int64)
    return manifest.groupby("case_day", sort=False)["slice"].rank(method="first").to_numpy(dtype=np.int64) - 1


def _drop_masks(
    manifest: pd.DataFrame,
    tail: int,
    tail_before: int,
    faulty_case_days: Iterable[str],
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """z of every row and, per reason, a bool ``(N,)`` of the rows that filter drops."""
    if tail < 0 or tail_before < 0:
        raise ValueError(f"tail and tail_before must be >= 0, got tail={tail}, tail_before={tail_before}")
    faulty = set(faulty_case_days)
    pres = presence(manifest, classes).any(axis=1)
    z = _z_within_case_day(manifest)
    case_day = manifest["case_day"].to_numpy()
    frame = pd.DataFrame({"case_day": case_day, "z": z, "pos": pres})
    annotated = frame[frame["pos"]].groupby("case_day")["z"].agg(["min", "max"])
    first = frame["case_day"].map(annotated["min"]).to_numpy(dtype=np.float64)  # NaN: no annotation
    last = frame["case_day"].map(annotated["max"]).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        reasons = {
            "fault": frame["case_day"].isin(faulty).to_numpy(),
            "tail": (z > last) & (z <= last + tail),
            "head": (z < first) & (z >= first - tail_before),
            "noanno": ~pres,
        }
    return z, reasons


def drop_table(
    manifest: pd.DataFrame,
    tail: int = DEFAULT_TAIL,
    tail_before: int = 0,
    faulty_case_days: Iterable[str] = DEFAULT_FAULTY_CASE_DAYS,
    classes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Which slices each training filter drops, and why.

    Each filter is applied to the whole manifest independently, so a slice may appear once per reason.

    Args:
        manifest: one row per slice with ``id, case_day`` (and ``z`` or ``slice``) and labels (see
            :func:`presence`).
        tail: slices dropped right after the last annotated slice of each case-day (``notail``).
        tail_before: slices dropped right before the first annotated slice (``notail``); 0 disables.
        faulty_case_days: case-days dropped from every training variant.
        classes: the dataset's classes (:func:`presence`).

    Returns:
        DataFrame ``id, case_day, z, reason`` with reason in ``fault, tail, head, noanno``, sorted by manifest
        order then reason.
    """
    z, reasons = _drop_masks(manifest, tail, tail_before, faulty_case_days, classes)
    case_day = manifest["case_day"].to_numpy()
    rows = []
    order = np.arange(len(manifest))
    for rank, (reason, hit) in enumerate(reasons.items()):
        idx = np.flatnonzero(hit)
        rows.append(
            pd.DataFrame(
                {
                    "id": manifest["id"].to_numpy()[idx],
                    "case_day": case_day[idx],
                    "z": z[idx],
                    "reason": reason,
                    "_order": order[idx],
                    "_rank": rank,
                }
            )
        )
    out = pd.concat(rows, ignore_index=True).sort_values(["_order", "_rank"], kind="stable")
    return out.drop(columns=["_order", "_rank"]).reset_index(drop=True)


def assign_folds(
    manifest: pd.DataFrame,
    n_folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    method: str = "group",
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Validation fold of every slice, grouped by case.

    Args:
        manifest: one row per slice with ``case`` (and labels for ``method="stratified_group"``).
        n_folds: number of folds (>= 2, at most the number of cases).
        seed: shuffles the case order (``group``) or seeds StratifiedGroupKFold.
        method: ``"group"`` or ``"stratified_group"`` (alias ``"stratified"``).
        classes: the dataset's classes (:func:`presence`; stratification only).

    Returns:
        int64 ``(N,)``: the fold in which each slice is validated.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold  # noqa: PLC0415 - 3 s of import, once

    method = _normalise_method(method)
    cases = manifest["case"].to_numpy()
    unique = np.unique(cases)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if len(unique) < n_folds:
        raise ValueError(f"{n_folds} folds need at least {n_folds} cases, the manifest has {len(unique)}")
    rng = np.random.default_rng(seed)
    rank = {c: i for i, c in enumerate(rng.permutation(unique).tolist())}
    groups = np.array([rank[c] for c in cases.tolist()], dtype=np.int64)
    x = np.zeros((len(cases), 1))
    if method == "group":
        splitter = GroupKFold(n_splits=n_folds)
        y = None
    else:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        y = presence(manifest, classes).any(axis=1).astype(np.int64)
    fold = np.full(len(cases), -1, dtype=np.int64)
    for k, (_, val_idx) in enumerate(splitter.split(x, y, groups)):
        fold[val_idx] = k
    return fold


def make_splits(
    manifest: pd.DataFrame,
    n_folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    method: str = "group",
    tail: int = DEFAULT_TAIL,
    tail_before: int = 0,
    faulty_case_days: Sequence[str] = DEFAULT_FAULTY_CASE_DAYS,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Folds and training variants as the ``splits.json`` dict (see docs/contracts.md).

    Args:
        manifest: one row per slice, in manifest order, with ``id, case, case_day`` (and ``z`` or ``slice``)
            and labels (``has_{class}`` or RLE class columns).
        n_folds, seed, method: see :func:`assign_folds`.
        tail, tail_before, faulty_case_days: see :func:`drop_table`.
        classes: the dataset's classes (:func:`presence`; default the Kaggle classes).

    Returns:
        ``{"version", "n_folds", "seed", "method", "tail", "tail_before", "faulty_case_days", "folds": [{"fold",
        "val_cases", "val", "train": {"all", "notail", "noanno"}}]}``; id lists keep manifest order.
    """
    method = _normalise_method(method)
    faulty = sorted(set(faulty_case_days))
    unknown = sorted(set(faulty) - set(manifest["case_day"]))
    if unknown:
        logger.warning("fault list names case-days absent from the manifest: %s", ", ".join(unknown))
    fold = assign_folds(manifest, n_folds, seed, method, classes)
    _, masks = _drop_masks(manifest, tail, tail_before, faulty, classes)
    ids = manifest["id"].to_numpy()
    dropped = {v: np.logical_or.reduce([masks[r] for r in rs]) for v, rs in _variant_reasons()}
    folds = []
    for k in range(n_folds):
        val = fold == k
        train = {v: ids[~val & ~dropped[v]].tolist() for v in SPLIT_VARIANTS}
        val_cases = sorted(_group_values(np.unique(manifest["case"].to_numpy()[val])))
        folds.append({"fold": k, "val_cases": val_cases, "val": ids[val].tolist(), "train": train})
    return {
        "version": SPLITS_VERSION,
        "n_folds": int(n_folds),
        "seed": int(seed),
        "method": method,
        "tail": int(tail),
        "tail_before": int(tail_before),
        "faulty_case_days": faulty,
        "folds": folds,
    }


def _variant_reasons() -> list[tuple[str, list[str]]]:
    return [(v, [r for r, vs in DROP_REASONS.items() if v in vs]) for v in SPLIT_VARIANTS]


def report_table(splits: dict[str, Any], manifest: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Counts per fold and variant (``classes``: the dataset's, :func:`presence`).

    Returns:
        DataFrame ``fold, variant, train_slices, train_positive, train_case_days, train_cases, val_slices,
        val_positive, val_case_days, val_cases, dropped`` (``dropped``: training slices the variant removed).
    """
    pos = pd.Series(presence(manifest, classes).any(axis=1), index=manifest["id"].to_numpy())
    cd = pd.Series(manifest["case_day"].to_numpy(), index=manifest["id"].to_numpy())
    case = pd.Series(manifest["case"].to_numpy(), index=manifest["id"].to_numpy())
    rows = []
    for f in splits["folds"]:
        val = f["val"]
        n_train_all = int(len(manifest) - len(val))
        for v in SPLIT_VARIANTS:
            tr = f["train"][v]
            rows.append(
                {
                    "fold": f["fold"],
                    "variant": v,
                    "train_slices": len(tr),
                    "train_positive": int(pos.loc[tr].sum()),
                    "train_case_days": int(cd.loc[tr].nunique()),
                    "train_cases": int(case.loc[tr].nunique()),
                    "val_slices": len(val),
                    "val_positive": int(pos.loc[val].sum()),
                    "val_case_days": int(cd.loc[val].nunique()),
                    "val_cases": len(f["val_cases"]),
                    "dropped": n_train_all - len(tr),
                }
            )
    return pd.DataFrame(rows)


def report_markdown(splits: dict[str, Any], table: pd.DataFrame, drops: pd.DataFrame, n_slices: int) -> str:
    """The human-readable report: settings, what each filter dropped, counts per fold and variant."""
    per_reason = drops.groupby("reason").agg(slices=("id", "size"), case_days=("case_day", "nunique"))
    per_reason = per_reason.reindex(list(DROP_REASONS), fill_value=0).reset_index()
    per_reason["variants"] = [", ".join(DROP_REASONS[r]) for r in per_reason["reason"]]
    lines = [
        "# Splits report",
        "",
        f"- slices: {n_slices}; folds: {splits['n_folds']} ({splits['method']}, by case), seed {splits['seed']}",
        f"- notail: tail {splits['tail']} after the last annotated slice, {splits['tail_before']} before the first",
        f"- fault list (dropped from every training variant): {', '.join(splits['faulty_case_days']) or 'none'}",
        "- validation lists are never filtered; `dropped.csv` lists every dropped slice with its reason",
        "",
        "## Slices dropped by each filter (whole manifest)",
        "",
        markdown_table(per_reason).rstrip("\n"),
        "",
        "## Counts per fold and variant",
        "",
        markdown_table(table).rstrip("\n"),
        "",
    ]
    return "\n".join(lines)


def _settings(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("version", "n_folds", "seed", "method", "tail", "tail_before", "faulty_case_days")}


def write_splits(
    work: str | os.PathLike,
    manifest: pd.DataFrame | None = None,
    n_folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    method: str = "group",
    tail: int = DEFAULT_TAIL,
    tail_before: int = 0,
    faulty_case_days: Sequence[str] = DEFAULT_FAULTY_CASE_DAYS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Make the splits once and write ``splits.json``, ``report.md``, ``report.csv`` and ``dropped.csv``.

    If ``splits.json`` exists with the same settings and the same slice ids, nothing is written and the existing
    splits are returned (the file is only ever read after its first write). Other settings raise unless
    ``overwrite``.

    Args:
        work: the WORK folder.
        manifest: the slices; default ``WORK/manifest.csv``.
        n_folds, seed, method, tail, tail_before, faulty_case_days: see :func:`make_splits`.
        overwrite: replace existing splits made with other settings.

    Returns:
        The splits dict.

    Raises:
        FileExistsError: splits exist with other settings or other slices, and ``overwrite`` is False.
    """
    work = Path(work)
    if manifest is None:
        manifest = read_manifest(work)
    method = _normalise_method(method)
    wanted = {
        "version": SPLITS_VERSION,
        "n_folds": int(n_folds),
        "seed": int(seed),
        "method": method,
        "tail": int(tail),
        "tail_before": int(tail_before),
        "faulty_case_days": sorted(set(faulty_case_days)),
    }
    path = splits_path(work)
    if path.is_file():
        existing = read_splits(work)
        same_ids = sorted(i for f in existing.get("folds", []) for i in f.get("val", [])) == sorted(manifest["id"])
        if _settings(existing) == wanted and same_ids:
            logger.info("splits up to date: %s", path)
            return existing
        if not overwrite:
            what = "other slices" if _settings(existing) == wanted else f"settings {_settings(existing)}"
            raise FileExistsError(
                f"{path} exists with {what}; wanted {wanted}. Splits are written once: pass --overwrite "
                "(overwrite=True) to replace them; models trained on the old folds no longer match."
            )
    classes = read_dataset(work).classes
    splits = make_splits(manifest, n_folds, seed, method, tail, tail_before, wanted["faulty_case_days"], classes)
    drops = drop_table(manifest, tail, tail_before, wanted["faulty_case_days"], classes)
    table = report_table(splits, manifest, classes)
    out = path.parent
    atomic_write_text(out / "dropped.csv", drops.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(out / "report.csv", table.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(out / "report.md", report_markdown(splits, table, drops, len(manifest)))
    write_splits_json(work, splits)
    logger.info("wrote %s (%d folds, %d slices)", path, n_folds, len(manifest))
    return splits
