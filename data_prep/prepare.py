"""Prepare a WORK folder from a Kaggle-style data root: volumes, masks, manifest and splits.

Each case-day is read once (its PNGs in slice order) into a uint16 volume ``(D, H, W)`` and, with labels, a
uint8 bit-field mask ``(D, H, W)`` (see :mod:`data_prep.volumes`); both are written atomically as ``.npy`` so
that loaders memory-map them. Only one case-day per worker is in memory at a time. 2.5D stacks are built at
load time (:func:`data_prep.volumes.stack_25d`); the ``stride`` and ``channels`` recorded in ``prepare.json``
are the defaults for loaders.

Re-running with the same arguments does nothing; other arguments on an existing WORK raise unless
``overwrite=True`` (which clears what ``prepare`` made there and starts again). ``prepare.json`` is written
first with ``"status": "running"`` and rewritten with ``"status": "done"`` at the end, so a run that was killed
is resumed by running it again: finished case-days whose files verify are kept, the rest is redone, and the
result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.constants import (
    DEFAULT_CHANNELS,
    DEFAULT_FAULTY_CASE_DAYS,
    DEFAULT_FOLDS,
    DEFAULT_SEED,
    DEFAULT_STRIDE,
    DEFAULT_TAIL,
)
from data_prep.dataset import KAGGLE, KAGGLE_Z_SPACING_MM, DatasetInfo, VolumeInfo
from data_prep.rle import rle_runs
from data_prep.volumes import stack_indices
from data_prep.work import (
    MASKS_DIR,
    OWNED,
    PREPARE_JSON,
    VOLUMES_DIR,
    mask_path,
    read_prepare_json,
    save_mask,
    save_volume,
    volume_path,
    write_dataset,
    write_manifest,
    write_prepare_json,
)

logger = logging.getLogger(__name__)

PREPARE_VERSION = 1


def _clear(work: Path) -> None:
    for name in OWNED:
        p = work / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _remove_tmp(work: Path) -> None:
    for sub in (VOLUMES_DIR, MASKS_DIR):
        d = work / sub
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                p.unlink(missing_ok=True)


def _npy_ok(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """True when ``path`` is a complete ``.npy`` of ``shape`` and ``dtype``."""
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError):
        return False
    return arr.shape == shape and arr.dtype == dtype


def _areas_from_mask(packed: np.ndarray, info: DatasetInfo = KAGGLE) -> np.ndarray:
    """int64 ``(D, C)``: pixels per slice and class of a WORK mask ``(D, H, W)`` (bit field or label map)."""
    c = info.num_classes
    rows = [info.unpack(packed[z]).reshape(c, -1).sum(axis=1, dtype=np.int64) for z in range(len(packed))]
    return np.stack(rows).astype(np.int64).reshape(len(packed), c)


def _run_pixels(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices of every pixel of the runs ``(starts, lengths)`` (0-indexed starts), without a Python loop."""
    total = int(lengths.sum())
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def _prepare_case_day(task: dict[str, Any]) -> tuple[str, np.ndarray | None]:
    """Read one case-day's scans and labels, write its volume (and mask). Runs in a worker process.

    Returns:
        ``(case_day, areas)`` with areas int64 ``(D, C)`` (None without labels).
    """
    from data_prep.layout import read_scan  # noqa: PLC0415 - imported in the worker

    work, cd, h, w = Path(task["work"]), task["case_day"], task["height"], task["width"]
    paths: list[str] = task["paths"]
    volume = np.empty((len(paths), h, w), dtype=np.uint16)
    for z, p in enumerate(paths):
        volume[z] = read_scan(p, expected_hw=(h, w))
    save_volume(work, cd, volume)
    del volume
    rles = task.get("rles")
    if rles is None:
        return cd, None
    dt = KAGGLE.mask_dtype
    packed = np.zeros((len(paths), h * w), dtype=dt)
    areas = np.zeros((len(paths), KAGGLE.num_classes), dtype=np.int64)
    for z, (sid, row) in enumerate(zip(task["ids"], rles)):
        for c, rle in enumerate(row):
            if rle:
                starts, lengths = rle_runs(rle, h * w, row_id=f"{sid}/{KAGGLE.classes[c]}")
                packed[z, _run_pixels(starts, lengths)] |= dt.type(1 << c)
                areas[z, c] = int(lengths.sum())
    save_mask(work, cd, packed.reshape(len(paths), h, w))
    return cd, areas


def _kaggle_dataset(table: Any, tree: Path) -> DatasetInfo:
    """:data:`KAGGLE` with one :class:`VolumeInfo` per case-day of the WORK manifest ``table`` (manifest order)."""
    volumes = {}
    for cd, g in table.groupby("case_day", sort=False):
        r = g.iloc[0]
        volumes[str(cd)] = VolumeInfo(
            shape=(len(g), int(r["height"]), int(r["width"])),
            spacing=(KAGGLE_Z_SPACING_MM, float(r["px_h"]), float(r["px_w"])),
            group=str(r["case"]),
            source=str(tree / f"case{int(r['case'])}" / str(cd)),
        )
    return KAGGLE.with_volumes(volumes)


def _args_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def split_args(
    n_folds: int,
    seed: int,
    split_method: str,
    tail: int,
    tail_before: int,
    faulty_case_days: Sequence[str],
) -> dict[str, Any]:
    """The split options as ``prepare.json`` records them (``args["splits"]``)."""
    from data_prep.splits import _normalise_method  # noqa: PLC0415 - keeps `import data_prep.prepare` light

    return {
        "n_folds": int(n_folds),
        "seed": int(seed),
        "method": _normalise_method(split_method),
        "tail": int(tail),
        "tail_before": int(tail_before),
        "faulty_case_days": sorted(set(faulty_case_days)),
    }


def start_run(work: Path, args: dict[str, Any], version: int, overwrite: bool) -> dict[str, Any] | None:
    """The run contract of every ``prepare``: check ``work`` against the arguments and mark the run started.

    Returns:
        The finished ``prepare.json`` when ``work`` is up to date (same arguments and version: nothing to do); else
        None, after clearing an earlier preparation (``overwrite``) and writing ``prepare.json`` with ``"status":
        "running"`` (a run that is killed from here on is resumed by running it again).

    Raises:
        FileExistsError: ``work`` holds a preparation with other arguments, or files ``prepare`` makes without a
            ``prepare.json``, and not ``overwrite``.
    """
    state = read_prepare_json(work)
    if state is not None:
        if overwrite:
            logger.info("overwrite: clearing the earlier preparation in %s", work)
            _clear(work)
        elif state.get("args") != args or state.get("version") != version:
            raise FileExistsError(
                f"{work} was prepared with other arguments ({_args_diff(state.get('args', {}), args)}); "
                "pass --overwrite (overwrite=True) to prepare it again, or choose another --out"
            )
        elif state.get("status") == "done":
            logger.info("%s is up to date (same arguments); nothing to do", work)
            return state
        else:
            logger.info("resuming the unfinished preparation in %s", work)
    else:
        found = [n for n in OWNED if (work / n).exists()]
        if found:
            if not overwrite:
                raise FileExistsError(
                    f"{work} holds {found} but no {PREPARE_JSON}; pass --overwrite to replace them, "
                    "or choose another --out"
                )
            _clear(work)
    work.mkdir(parents=True, exist_ok=True)
    write_prepare_json(work, {"version": version, "args": args, "status": "running"})
    _remove_tmp(work)
    return None


def prepare(
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    stride: int = DEFAULT_STRIDE,
    channels: int = DEFAULT_CHANNELS,
    workers: int = 1,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = False,
    split: str = "train",
    n_folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    split_method: str = "group",
    tail: int = DEFAULT_TAIL,
    tail_before: int = 0,
    faulty_case_days: Sequence[str] = DEFAULT_FAULTY_CASE_DAYS,
) -> dict[str, Any]:
    """Prepare ``out`` (WORK) from the ``{split}/`` tree of ``data_root``.

    Writes ``prepare.json``, ``volumes/{case_day}.npy`` (uint16 ``(D, H, W)``), ``masks/{case_day}.npy`` (uint8
    bit field ``(D, H, W)``, when ``data_root/train.csv`` exists and ``split == "train"``), ``manifest.csv``,
    ``dataset.json`` (:data:`data_prep.dataset.KAGGLE` with one :class:`data_prep.dataset.VolumeInfo` per
    case-day: spacing ``(3.0, px_h, px_w)`` mm, group ``str(case)``, source = the case-day folder) and, with
    labels, the splits (:func:`data_prep.splits.write_splits`). See docs/contracts.md and docs/datasets.md.

    Args:
        data_root: Kaggle-style data root (``train/``, ``train.csv``; or ``test/``).
        out: the WORK folder (created).
        stride: default 2.5D stride for loaders (recorded, nothing is stored per stride).
        channels: default 2.5D channel count (odd).
        workers: processes reading case-days in parallel (1: in this process).
        overwrite: clear what an earlier ``prepare`` made in ``out`` when its arguments differ (or always).
        strict: label/scan mismatches and slice gaps are errors, not warnings.
        progress: show a tqdm bar over case-days.
        split: ``"train"`` or ``"test"``.
        n_folds, seed, split_method, tail, tail_before, faulty_case_days: split options
            (:func:`data_prep.splits.make_splits`); used only with labels.

    Returns:
        The content of ``prepare.json``: ``{"version", "status", "args", "n_case_days", "n_slices", "labels"}``.

    Raises:
        FileExistsError: ``out`` holds a preparation with other arguments (or unknown outputs) and not
            ``overwrite``.
        FileNotFoundError, ValueError: bad data root (see :func:`data_prep.layout.read_layout`), bad arguments.
    """
    from data_prep.layout import read_layout  # noqa: PLC0415 - keeps `import data_prep.prepare` light
    from data_prep.splits import write_splits  # noqa: PLC0415

    stack_indices(0, 1, stride, channels)  # validates stride and channels
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(data_root).resolve()
    work = Path(out).resolve()
    labels = root / "train.csv" if split == "train" and (root / "train.csv").is_file() else None
    args: dict[str, Any] = {
        "data_root": str(root),
        "split": split,
        "labels": str(labels) if labels else None,
        "stride": int(stride),
        "channels": int(channels),
    }
    if labels is not None:
        args["splits"] = split_args(n_folds, seed, split_method, tail, tail_before, faulty_case_days)
    state = start_run(work, args, PREPARE_VERSION, overwrite)
    if state is not None:
        return state
    base = {"version": PREPARE_VERSION, "args": args}

    manifest = read_layout(root, split=split, labels=labels, strict=strict)
    has_labels = labels is not None
    groups = manifest.groupby("case_day", sort=False)
    tasks: list[dict[str, Any]] = []
    areas: dict[str, np.ndarray | None] = {}
    for cd, g in groups:
        sizes = g[["height", "width"]].drop_duplicates()
        if len(sizes) != 1:
            raise ValueError(
                f"case-day {cd} mixes image sizes {sizes.to_numpy().tolist()} (H, W) in {root / split}; "
                "a case-day must have one size to stack into a volume"
            )
        h, w = int(sizes.iloc[0, 0]), int(sizes.iloc[0, 1])
        d = len(g)
        vol_ok = _npy_ok(volume_path(work, cd), (d, h, w), np.dtype(np.uint16))
        mask_ok = not has_labels or _npy_ok(mask_path(work, cd), (d, h, w), KAGGLE.mask_dtype)
        if vol_ok and mask_ok:
            areas[cd] = _areas_from_mask(np.load(mask_path(work, cd), mmap_mode="r")) if has_labels else None
            continue
        task: dict[str, Any] = {"work": str(work), "case_day": cd, "height": h, "width": w}
        task["paths"] = g["path"].tolist()
        task["ids"] = g["id"].tolist()
        task["rles"] = g[list(KAGGLE.classes)].to_numpy().tolist() if has_labels else None
        tasks.append(task)
    if areas:
        logger.info("%d case-day(s) already prepared and verified; %d to do", len(areas), len(tasks))

    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(tasks), desc="prepare", unit="case-day")
    try:
        if workers == 1 or len(tasks) <= 1:
            for t in tasks:
                cd, a = _prepare_case_day(t)
                areas[cd] = a
                if bar is not None:
                    bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for cd, a in pool.map(_prepare_case_day, tasks, chunksize=1):
                    areas[cd] = a
                    if bar is not None:
                        bar.update()
    finally:
        if bar is not None:
            bar.close()

    cols = [c for c in manifest.columns if c not in KAGGLE.classes]
    table = manifest[cols].copy()
    table["z"] = groups.cumcount().to_numpy()
    table["depth"] = groups["id"].transform("size").to_numpy()
    if has_labels:
        per_slice = np.concatenate([areas[cd] for cd in groups.groups]).astype(np.int64)  # groups in manifest order
        order = np.concatenate([groups.indices[cd] for cd in groups.groups])
        area = np.empty_like(per_slice)
        area[order] = per_slice
        for c, name in enumerate(KAGGLE.classes):
            table[f"has_{name}"] = (area[:, c] > 0).astype(np.int64)
        for c, name in enumerate(KAGGLE.classes):
            table[f"area_{name}"] = area[:, c]
    write_manifest(work, table)
    write_dataset(work, _kaggle_dataset(table, root / split))

    if has_labels:
        write_splits(work, table, **args["splits"], overwrite=overwrite)  # the options split_args recorded
    state = {
        **base,
        "status": "done",
        "n_case_days": int(manifest["case_day"].nunique()),
        "n_slices": len(manifest),
        "labels": has_labels,
    }
    write_prepare_json(work, state)
    logger.info("prepared %d slices, %d case-days in %s", state["n_slices"], state["n_case_days"], work)
    return state
