"""The WORK folder: the one module that reads and writes it (docs/contracts.md, "WORK folder").

Every stage finds its data through these functions: paths, ``prepare.json``, ``manifest.csv``, the case-day
volumes and bit-field masks, ``splits/splits.json`` and the fold arithmetic on it. Nothing else in the project
opens those files by name, so the layout can change in one place. Test fixtures write WORK folders through
the writers here too (:func:`write_prepare_json`, :func:`write_manifest`, :func:`save_volume`,
:func:`save_mask`, :func:`write_splits_json`).

>>> parse_folds("all", 3), parse_folds(2, 3)
([0, 1, 2], [2])
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.io import atomic_save_npy, atomic_write_text
from data_prep.constants import DEFAULT_FOLDS, SPLIT_VARIANTS, case_day_of
from data_prep.dataset import KAGGLE, DatasetInfo

PREPARE_JSON = "prepare.json"
DATASET_JSON = "dataset.json"
MANIFEST_CSV = "manifest.csv"
VOLUMES_DIR = "volumes"
MASKS_DIR = "masks"
SPLITS_DIR = "splits"
EXPORTS_DIR = "exports"
#: Per-volume records of an unfinished ``prepare`` of a volume format (removed when it is done).
PROGRESS_DIR = ".progress"
#: The planner's fingerprint and plan (``python -m data_prep plan``); stale once the data changes.
PLAN_DIR = "plan"
#: What ``prepare`` makes in WORK (cleared by its ``overwrite``); nothing else there is touched.
OWNED: tuple[str, ...] = (
    PREPARE_JSON, DATASET_JSON, MANIFEST_CSV, VOLUMES_DIR, MASKS_DIR, SPLITS_DIR, EXPORTS_DIR, PROGRESS_DIR,
    PLAN_DIR,
)  # fmt: skip
#: The command that makes a WORK folder, named in every "not prepared" error.
PREPARE_HINT = "python -m data_prep prepare --data-root DATA_ROOT --out {work}"


def prepare_hint(work: str | os.PathLike) -> str:
    """The prepare command for ``work``, for error messages."""
    return PREPARE_HINT.format(work=work)


# ----------------------------------------------------------------------------------------------------------- paths


def plan_dir(work: str | os.PathLike) -> Path:
    """``WORK/plan/``: the planner's fingerprint and plan."""
    return Path(work) / PLAN_DIR


def volume_path(work: str | os.PathLike, case_day: str, channel: int = 0) -> Path:
    """``WORK/volumes/{case_day}.npy`` (channel 0) or ``{case_day}_ch{k}.npy`` (channel k): uint16 ``(D, H, W)``."""
    name = f"{case_day}.npy" if channel == 0 else f"{case_day}_ch{int(channel)}.npy"
    return Path(work) / VOLUMES_DIR / name


def mask_path(work: str | os.PathLike, case_day: str) -> Path:
    """``WORK/masks/{case_day}.npy``: ``(D, H, W)`` bit field or label map (:mod:`data_prep.dataset`)."""
    return Path(work) / MASKS_DIR / f"{case_day}.npy"


def progress_path(work: str | os.PathLike, key: str) -> Path:
    """``WORK/.progress/{key}.json``: the record of a finished volume while ``prepare`` runs (resume)."""
    return Path(work) / PROGRESS_DIR / f"{key}.json"


def manifest_path(work: str | os.PathLike) -> Path:
    """``WORK/manifest.csv``."""
    return Path(work) / MANIFEST_CSV


def splits_path(work: str | os.PathLike) -> Path:
    """``WORK/splits/splits.json``."""
    return Path(work) / SPLITS_DIR / "splits.json"


def exports_dir(work: str | os.PathLike) -> Path:
    """``WORK/exports/``: what ``python -m data_prep export`` writes (:mod:`data_prep.exports` owns it)."""
    return Path(work) / EXPORTS_DIR


# ---------------------------------------------------------------------------------------------------- prepare.json


def read_prepare_json(work: str | os.PathLike) -> dict[str, Any] | None:
    """``WORK/prepare.json`` as a dict, or None when absent.

    Raises:
        ValueError: the file is not valid JSON (a WORK to prepare again).
    """
    path = Path(work) / PREPARE_JSON
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); pass --overwrite to prepare this WORK again") from None


def write_prepare_json(work: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``WORK/prepare.json`` atomically (``{"version", "status": "running"|"done", "args", ...}``)."""
    return atomic_write_text(Path(work) / PREPARE_JSON, json.dumps(dict(state), indent=2) + "\n")


def dataset_path(work: str | os.PathLike) -> Path:
    """``WORK/dataset.json``: the dataset description (:mod:`data_prep.dataset`)."""
    return Path(work) / DATASET_JSON


def read_dataset(work: str | os.PathLike) -> DatasetInfo:
    """The dataset description of ``work`` (classes, label kind, channels, geometry per volume).

    A WORK prepared before descriptions existed (no ``dataset.json``) is the Kaggle layout:
    :data:`data_prep.dataset.KAGGLE`.

    Raises:
        ValueError: the file is not valid JSON or not a valid description (the message names it).
    """
    path = dataset_path(work)
    if not path.is_file():
        return KAGGLE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); pass --overwrite to prepare this WORK again") from None
    return DatasetInfo.from_json(raw, where=str(path))


def write_dataset(work: str | os.PathLike, info: DatasetInfo) -> Path:
    """Write ``WORK/dataset.json`` atomically."""
    return atomic_write_text(dataset_path(work), json.dumps(info.to_json(), indent=1) + "\n")


def check_work(work: str | os.PathLike, need_masks: bool = True, need_splits: bool = True) -> Path:
    """Check that ``work`` holds a finished preparation (and masks / splits when asked).

    Args:
        work: the WORK folder.
        need_masks: require ``masks/`` (training and evaluation).
        need_splits: require ``splits/splits.json`` (any fold-based run).

    Returns:
        ``Path(work)``.

    Raises:
        FileNotFoundError: a required file is missing, or the preparation did not finish; the message names
            what is missing and the command that makes it.
    """
    work = Path(work)
    needed = [work / PREPARE_JSON, manifest_path(work), work / VOLUMES_DIR]
    if need_masks:
        needed.append(work / MASKS_DIR)
    if need_splits:
        needed.append(splits_path(work))
    missing = [str(p) for p in needed if not p.exists()]
    state = read_prepare_json(work) if not missing else None
    if not missing and state is not None and state.get("status") != "done":
        missing.append(f"{work / PREPARE_JSON} says status {state.get('status')!r}, not 'done'")
    if missing:
        raise FileNotFoundError(
            f"{work} does not hold data_prep's finished output (missing: {', '.join(missing)}). Make it with "
            f"`{prepare_hint(work)}` (run it again to resume), or pass the right folder with --work / "
            "--cfg-options work=...; masks and splits exist only when the data root has labels."
        )
    return work


# -------------------------------------------------------------------------------------------------------- manifest


def read_manifest(work: str | os.PathLike) -> pd.DataFrame:
    """``WORK/manifest.csv`` (docs/contracts.md), one row per slice in manifest order (case, day, slice).

    ``case`` is the patient group: an integer for the Kaggle layout, a string for every other format
    (``WORK/dataset.json`` says which), so that groups such as ``"007"`` keep their spelling.

    Raises:
        FileNotFoundError: not prepared yet, or the preparation did not finish.
    """
    work = Path(work)
    path = manifest_path(work)
    state = read_prepare_json(work)
    if not path.is_file() or state is None or state.get("status") != "done":
        raise FileNotFoundError(
            f"{path} not found or its preparation did not finish; run `{prepare_hint(work)}` (again, to resume)"
        )
    dtype = {"id": str, "case_day": str}
    if read_dataset(work).format != "kaggle":
        dtype.update(case=str, path=str)
    return pd.read_csv(path, keep_default_na=False, dtype=dtype)


def write_manifest(work: str | os.PathLike, table: pd.DataFrame) -> Path:
    """Write ``WORK/manifest.csv`` atomically (columns as docs/contracts.md lists them)."""
    return atomic_write_text(manifest_path(work), table.to_csv(index=False, lineterminator="\n"))


def class_names(manifest: pd.DataFrame) -> tuple[str, ...]:
    """The classes of a WORK manifest, from its ``has_{class}`` columns in column order (the dataset's order).

    >>> class_names(pd.DataFrame(columns=["id", "has_liver", "has_spleen", "area_liver"]))
    ('liver', 'spleen')
    """
    return tuple(c[len("has_") :] for c in manifest.columns if str(c).startswith("has_"))


def case_day_ids(manifest: pd.DataFrame, case_days: Iterable[str] | None = None) -> dict[str, list[str]]:
    """``{case_day: [slice ids in z order]}`` in manifest order, optionally only ``case_days``.

    Raises:
        ValueError: a requested case-day is not in the manifest (close names are listed).
    """
    order = manifest.sort_values(["case_day", "z"], kind="stable") if "z" in manifest.columns else manifest
    groups = {cd: g["id"].tolist() for cd, g in order.groupby("case_day", sort=False)}
    groups = {cd: groups[cd] for cd in dict.fromkeys(manifest["case_day"])}
    if case_days is None:
        return groups
    wanted = list(case_days)
    unknown = [cd for cd in wanted if cd not in groups]
    if unknown:
        close = {cd: difflib.get_close_matches(cd, list(groups), n=2) for cd in unknown[:3]}
        raise ValueError(f"case-day(s) not in the manifest: {unknown[:5]}; close names: {close}")
    return {cd: groups[cd] for cd in wanted}


# ---------------------------------------------------------------------------------------------- volumes and masks


def _open(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} not found: {path}. Run `{prepare_hint(path.parent.parent)}` first "
            "(masks exist only when the data root has labels)."
        )
    return np.load(path, mmap_mode="r")


def load_volume(work: str | os.PathLike, case_day: str, channel: int = 0) -> np.ndarray:
    """The uint16 ``(D, H, W)`` volume of a case-day (image channel ``channel``), memory-mapped read-only
    (z in manifest order)."""
    return _open(volume_path(work, case_day, channel), "volume")


def load_mask(work: str | os.PathLike, case_day: str) -> np.ndarray:
    """The ``(D, H, W)`` mask of a case-day, memory-mapped read-only: a bit field (uint8 for up to 8 overlapping
    classes) or a label map; ``read_dataset(work).unpack(mask)`` gives binary channels ``(D, C, H, W)``."""
    return _open(mask_path(work, case_day), "mask")


def has_mask(work: str | os.PathLike, case_day: str) -> bool:
    """True when WORK holds the mask of ``case_day`` (prepared with labels)."""
    return mask_path(work, case_day).is_file()


def save_volume(work: str | os.PathLike, case_day: str, volume: np.ndarray, channel: int = 0) -> Path:
    """Write a case-day volume (uint16 ``(D, H, W)``, image channel ``channel``) atomically."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.dtype != np.uint16:
        raise ValueError(f"{case_day}: a volume must be uint16 (D, H, W), got {volume.dtype} {volume.shape}")
    return atomic_save_npy(volume_path(work, case_day, channel), volume)


def save_mask(work: str | os.PathLike, case_day: str, mask: np.ndarray) -> Path:
    """Write a case-day mask (``(D, H, W)`` of an unsigned dtype: bit field or label map) atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.dtype.kind != "u":
        raise ValueError(
            f"{case_day}: a mask must be an unsigned (D, H, W) bit field or label map, got {mask.dtype} {mask.shape}"
        )
    return atomic_save_npy(mask_path(work, case_day), mask)


# ---------------------------------------------------------------------------------------------------------- splits


def read_splits(work: str | os.PathLike) -> dict[str, Any]:
    """Read ``WORK/splits/splits.json`` (docs/contracts.md, "splits.json").

    Raises:
        FileNotFoundError: no splits yet (the message says how to make them).
    """
    path = splits_path(work)
    if not path.is_file():
        raise FileNotFoundError(
            f"splits not found: {path}. Make them with `python -m data_prep splits --work {work}` "
            f"(or `{prepare_hint(work)}` on a data root with labels)."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_splits_json(work: str | os.PathLike, splits: Mapping[str, Any]) -> Path:
    """Write ``WORK/splits/splits.json`` atomically (only :func:`data_prep.splits.write_splits` and fixtures)."""
    return atomic_write_text(splits_path(work), json.dumps(dict(splits)) + "\n")


def n_folds_of(splits: Mapping[str, Any]) -> int:
    """Number of folds of a splits dict."""
    return int(splits.get("n_folds", len(splits["folds"])))


def parse_folds(fold: str | int | None, n_folds: int = DEFAULT_FOLDS) -> list[int]:
    """``"all"`` -> ``[0, ..., n_folds - 1]``; ``"3"`` or ``3`` -> ``[3]``.

    Raises:
        ValueError: anything else (a fold outside ``0..n_folds-1``).
    """
    if fold is None:
        raise ValueError(f"fold must be in [0, {n_folds - 1}] or 'all', got None")
    if isinstance(fold, str) and fold.strip().lower() == "all":
        return list(range(n_folds))
    try:
        k = int(fold)
    except (TypeError, ValueError):
        k = None
    if k is None or not 0 <= k < n_folds or (isinstance(fold, float) and fold != k):
        raise ValueError(f"fold must be in [0, {n_folds - 1}] or 'all' ({n_folds} folds), got fold {fold!r}")
    return [k]


def check_variant(variant: str) -> str:
    """Check a split variant name (``all``, ``notail``, ``noanno``).

    Raises:
        ValueError: unknown name (a close one is suggested).
    """
    if variant not in SPLIT_VARIANTS:
        close = difflib.get_close_matches(str(variant), SPLIT_VARIANTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"split variant must be one of {SPLIT_VARIANTS}, got {variant!r}.{hint}")
    return variant


def fold_entry(splits: Mapping[str, Any], fold: int | str) -> dict[str, Any]:
    """The ``folds[k]`` entry of a splits dict (``fold``, ``val_cases``, ``val``, ``train``).

    Raises:
        ValueError: a fold that does not exist.
    """
    (k,) = parse_folds(fold, n_folds_of(splits))
    return next(f for f in splits["folds"] if int(f["fold"]) == k)


def fold_ids(splits: Mapping[str, Any], fold: int | str, side: str = "train", variant: str = "all") -> list[str]:
    """Slice ids of a fold's ``train`` side (filtered by ``variant``; the fault list always applies) or ``val`` side
    (never filtered), in manifest order.

    Raises:
        ValueError: unknown fold, side or variant.
    """
    entry = fold_entry(splits, fold)
    if side == "val":
        return list(entry["val"])
    if side != "train":
        raise ValueError(f"side must be 'train' or 'val', got {side!r}")
    check_variant(variant)
    if variant not in entry["train"]:
        raise ValueError(f"splits.json has no training variant {variant!r} (has {list(entry['train'])})")
    return list(entry["train"][variant])


#: The sides a dataset of a fold reads: the fold's ``train`` side, its ``val`` side, or ``all`` the slices.
SPLITS: tuple[str, ...] = ("train", "val", "all")


def select_ids(work: str | os.PathLike, fold: int | None, split: str, variant: str = "all") -> list[str] | None:
    """Slice ids of a fold's ``train`` side (filtered by ``variant``) or ``val`` side; ``None`` = every slice
    (``split='all'`` or ``fold=None``). What every training dataset reads.

    Raises:
        ValueError: unknown split, fold or variant.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all" or fold is None:
        return None
    return fold_ids(read_splits(work), fold, "val" if split == "val" else "train", variant)


def fold_of(splits: Mapping[str, Any]) -> dict[str, int]:
    """Map slice id -> the fold in which it is validated."""
    return {sid: int(f["fold"]) for f in splits["folds"] for sid in f["val"]}


def fold_case_days(splits: Mapping[str, Any], fold: int | str, variant: str = "all") -> tuple[list[str], list[str]]:
    """``(train, val)`` case-days of a fold, sorted: train = case-days of the fold's training ids of ``variant``
    (faulty case-days are already out), val = case-days of its val ids.

    Raises:
        ValueError: unknown fold, or a case-day on both sides (corrupt splits).
    """
    train = sorted({case_day_of(i) for i in fold_ids(splits, fold, "train", variant)})
    val = sorted({case_day_of(i) for i in fold_ids(splits, fold, "val")})
    both = set(train) & set(val)
    if both:
        raise ValueError(f"fold {fold}: case-days on both the train and the val side: {sorted(both)[:5]}")
    return train, val
