"""Prepare a WORK folder from any volume format (nnU-Net raw, DICOM series, folders of 2D slices).

A reader (:mod:`data_prep.readers.base`) finds the volumes (``scan``) and reads one at a time (``load``); this engine
turns each into WORK files with one set of rules, the same for every format:

1. **Slice axis first.** The user's ``slice_axis`` (an axis of the source array in SimpleITK's ``(z, y, x)``
   order), else the reader's (:attr:`~data_prep.readers.base.LoadedVolume.slice_axis`), becomes WORK axis 0; the
   other two keep their order. :attr:`~data_prep.dataset.VolumeInfo.axes` records the permutation and the
   spacing is stored in WORK axis order.
2. **Intensities to uint16** (:func:`to_uint16`), one rule for all the channels of a volume, recorded as
   ``offset``/``scale`` (source value = ``stored * scale + offset``): integers that fit uint16 are kept
   (offset 0, scale 1); integers with negative values are shifted by ``offset = min(minimum, -1024)``, so CT
   in Hounsfield units is stored as ``HU + 1024``; anything else (floats, integers beyond uint16) is mapped
   linearly from ``[min, max]`` to ``[0, 65535]``.
3. **Labels to the WORK mask** (:func:`labels_to_mask`): class ``c`` = the voxels whose label value is in
   ``info.source["label_values"][classes[c]]``, packed with :meth:`~data_prep.dataset.DatasetInfo.pack` (a bit
   field for overlapping classes, a label map for exclusive ones). A value that ``dataset.json`` does not declare
   is an error naming the file and the values.
4. **Atomic writes**: ``volumes/{key}.npy`` (and ``{key}_ch{k}.npy`` per extra channel), ``masks/{key}.npy``,
   then a record ``.progress/{key}.json``; a volume is written only once all its checks passed.

Then ``manifest.csv`` (one row per slice: ``id = {key}_slice_{z:04d}``, ``case`` = the group, ``day`` 0,
``slice`` = z, ``case_day`` = the key, ``path``, ``width, height, px_w, px_h`` (mm), ``z``, ``depth`` and, with
labels, ``has_{class}``/``area_{class}`` per class), ``dataset.json`` (every :class:`~data_prep.dataset.VolumeInfo`)
and, with labels, the splits grouped by patient (:func:`data_prep.splits.write_splits`).

The run contract is :func:`data_prep.prepare.prepare`'s: ``prepare.json`` holds the arguments (with the format),
the same arguments again are a no-op, others need ``overwrite``; a run that was killed or failed leaves
``prepare.json`` "running" and is resumed by running it again (finished volumes are verified and kept; the result
is byte-identical to an uninterrupted run). Workers are processes, one volume per task, so one volume per
worker is in memory.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from common.io import atomic_write_text
from data_prep.constants import DEFAULT_CHANNELS, DEFAULT_FOLDS, DEFAULT_SEED, DEFAULT_STRIDE, DEFAULT_TAIL
from data_prep.dataset import DatasetInfo, VolumeInfo, class_columns
from data_prep.prepare import _npy_ok, split_args, start_run
from data_prep.readers.base import LoadedVolume, Reader, SourceVolume
from data_prep.volumes import stack_indices
from data_prep.work import (
    MASKS_DIR,
    PROGRESS_DIR,
    VOLUMES_DIR,
    progress_path,
    save_mask,
    save_volume,
    volume_path,
    write_dataset,
    write_manifest,
    write_prepare_json,
)

logger = logging.getLogger(__name__)

PREPARE_VOLUMES_VERSION = 1
#: A WORK volume key: letters, digits, ``_``, ``-``, ``.`` (it names files and slice ids).
KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
#: The lowest offset of integer data with negative values: CT in Hounsfield units is stored as ``HU + 1024``.
CT_OFFSET = -1024
UINT16_MAX = 65535
#: Label values above this are refused (a lookup table of this size maps values to classes).
MAX_LABEL_VALUE = 1 << 24


# ------------------------------------------------------------------------------------------------------ the rules


def work_axes(slice_axis: int) -> tuple[int, int, int]:
    """The permutation that puts source axis ``slice_axis`` first and keeps the other two in order.

    >>> work_axes(0), work_axes(1), work_axes(2)
    ((0, 1, 2), (1, 0, 2), (2, 0, 1))
    """
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2 (an axis of the (z, y, x) array), got {slice_axis!r}")
    rest = [a for a in (0, 1, 2) if a != slice_axis]
    return (int(slice_axis), rest[0], rest[1])


def to_uint16(images: np.ndarray, where: str = "image") -> tuple[np.ndarray, float, float]:
    """Map intensities to uint16 (the rule in the module docstring), one mapping for the whole array.

    Args:
        images: any real array (e.g. ``(K, D, H, W)``: all the channels of a volume).
        where: the file named in errors.

    Returns:
        ``(stored uint16 same shape, offset, scale)`` with source value = ``stored * scale + offset`` (exact for
        integers; within ``scale / 2`` for floats).

    Raises:
        ValueError: not a real dtype, or NaN / infinite values.

    >>> to_uint16(np.array([-1024, 0, 3071], np.int16))
    (array([   0, 1024, 4095], dtype=uint16), -1024.0, 1.0)
    >>> to_uint16(np.array([-2000, 5], np.int16))[1:]
    (-2000.0, 1.0)
    >>> s, o, k = to_uint16(np.array([0.5, 1.0, 2.0])); s.tolist(), o, round(k * 65535, 6)
    ([0, 21845, 65535], 0.5, 1.5)
    """
    a = np.asarray(images)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.dtype.kind not in "uif":
        raise ValueError(f"{where}: image values of dtype {a.dtype} are not real numbers")
    if a.size == 0:
        return np.zeros(a.shape, np.uint16), 0.0, 1.0
    if a.dtype.kind in "ui":
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi <= UINT16_MAX:
            return a.astype(np.uint16, copy=False), 0.0, 1.0
        offset = min(lo, CT_OFFSET)
        if lo < 0 and hi - offset <= UINT16_MAX:
            stored = a.astype(np.uint16)  # value mod 2**16; minus offset mod 2**16 wraps to value - offset exactly
            stored -= np.uint16(offset % (UINT16_MAX + 1))
            return stored, float(offset), 1.0
    elif not np.isfinite(a).all():
        raise ValueError(f"{where}: the image holds NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    scale = (hi - lo) / UINT16_MAX if hi > lo else 1.0
    stored = np.rint((a.astype(np.float64) - lo) / scale)
    return np.clip(stored, 0, UINT16_MAX).astype(np.uint16), lo, scale


def allowed_label_values(info: DatasetInfo) -> set[int]:
    """The label values a label file of ``info`` may hold: 0, every value of ``label_values``, ``ignore_values``."""
    lv = info.source.get("label_values") or {}
    allowed = {0, *(int(v) for vals in lv.values() for v in vals)}
    return allowed | {int(v) for v in info.source.get("ignore_values", ())}


def labels_to_mask(label: np.ndarray, info: DatasetInfo, where: str = "label") -> np.ndarray:
    """A label volume (source label values) -> the WORK mask of ``info`` (same shape, ``info.mask_dtype``).

    Class ``c`` is where the value is in ``info.source["label_values"][info.classes[c]]``; overlapping classes
    set bit ``c``, exclusive ones write ``c + 1``.

    Args:
        label: integer array ``(D, H, W)`` (floats holding whole numbers are accepted, as NIfTI labels often are).
        info: the dataset description with ``source["label_values"]`` ``{class: [values]}``.
        where: the file named in errors.

    Raises:
        ValueError: a class without label values, non-integral or negative values, or values that the dataset
            does not declare (the message names ``where`` and the values).
    """
    return convert_labels(label, info, where)[0]


def convert_labels(label: np.ndarray, info: DatasetInfo, where: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """:func:`labels_to_mask` and the pixels per slice and class: ``(mask (D, H, W), int64 (D, C))``."""
    label = np.asarray(label)
    lv = info.source.get("label_values") or {}
    missing = [c for c in info.classes if c not in lv]
    if missing:
        raise ValueError(f"{where}: the dataset description gives no label values for classes {missing}")
    if label.ndim != 3:
        raise ValueError(f"{where}: a label volume must be 3D (D, H, W), got shape {label.shape}")
    if label.dtype.kind == "f":
        if not np.isfinite(label).all() or not (label == np.round(label)).all():
            raise ValueError(f"{where}: label values must be whole numbers; the file holds fractional or NaN values")
        label = label.astype(np.int64)
    elif label.dtype == np.bool_:
        label = label.astype(np.uint8)
    elif label.dtype.kind not in "ui":
        raise ValueError(f"{where}: labels of dtype {label.dtype} are not integers")
    dt, n = info.mask_dtype, info.num_classes
    if label.size == 0:
        return np.zeros(label.shape, dt), np.zeros((len(label), n), np.int64)
    lo, hi = int(label.min()), int(label.max())
    if lo < 0:
        raise ValueError(f"{where}: negative label value {lo}; label values are 0 (background) and positive integers")
    if hi > MAX_LABEL_VALUE:
        raise ValueError(f"{where}: label value {hi} is too large (at most {MAX_LABEL_VALUE})")
    # pixels per slice and label value: the undeclared values and the areas per class in one pass
    counts = np.stack([np.bincount(label[z].ravel(), minlength=hi + 1) for z in range(len(label))])
    allowed = allowed_label_values(info)
    unknown = [int(v) for v in np.flatnonzero(counts.sum(axis=0)) if int(v) not in allowed]
    if unknown:
        raise ValueError(
            f"{where}: label values {unknown} are not declared in the dataset's labels "
            f"(declared: {sorted(allowed)}); fix the file or declare them in dataset.json"
        )
    lut = np.zeros(hi + 1, dtype=dt)
    member = np.zeros((hi + 1, n), np.int64)
    for c, name in enumerate(info.classes):
        for v in (int(x) for x in lv[name]):
            if v <= hi:
                member[v, c] = 1
                lut[v] = c + 1 if info.label_kind == "exclusive" else lut[v] | (dt.type(1) << dt.type(c))
    return _lookup(lut, label), counts.astype(np.int64) @ member


def _lookup(lut: np.ndarray, label: np.ndarray) -> np.ndarray:
    """``lut[label]``: OpenCV's table lookup for uint8 labels and masks (10x numpy's, which widens every index to
    int64), else ``np.take``."""
    if label.dtype == np.uint8 and lut.dtype == np.uint8 and label.ndim == 3 and label.size:
        table = np.zeros(256, np.uint8)
        table[: len(lut)] = lut
        flat = np.ascontiguousarray(label).reshape(-1, label.shape[-1])
        return cv2.LUT(flat, table).reshape(label.shape)
    return np.take(lut, label)


# ------------------------------------------------------------------------------------------------------ one volume


def _files(key: str, shape: tuple[int, ...], channels: int, mask_dt: np.dtype | None) -> dict[str, Any]:
    files = {f"{VOLUMES_DIR}/{volume_path('', key, k).name}": [list(shape), "uint16"] for k in range(channels)}
    if mask_dt is not None:
        files[f"{MASKS_DIR}/{key}.npy"] = [list(shape), np.dtype(mask_dt).name]
    return files


def _record_ok(work: Path, key: str) -> dict[str, Any] | None:
    """The record of a finished volume whose files all verify, else None."""
    path = progress_path(work, key)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
    except (ValueError, KeyError, TypeError):
        return None
    for rel, (shape, dtype) in files.items():
        if not _npy_ok(work / rel, tuple(shape), np.dtype(dtype)):
            return None
    return record


def _check_loaded(lv: LoadedVolume, source: SourceVolume, info: DatasetInfo) -> None:
    images = np.asarray(lv.images)
    if images.ndim != 4:
        raise ValueError(f"{source.images[0]}: the reader gave images of shape {images.shape}, expected (K, Z, Y, X)")
    if images.shape[0] != info.num_channels:
        raise ValueError(
            f"{source.images[0]}: {images.shape[0]} image channel(s), the dataset declares {info.num_channels} "
            f"({list(info.channels)})"
        )
    if lv.label is not None and tuple(lv.label.shape) != tuple(images.shape[1:]):
        raise ValueError(
            f"{source.label}: label shape {tuple(lv.label.shape)} (z, y, x) differs from the image shape "
            f"{tuple(images.shape[1:])} of {source.images[0]}; a label must lie on its image's grid"
        )
    if len(lv.spacing) != 3 or not all(float(s) > 0 for s in lv.spacing):
        raise ValueError(f"{source.images[0]}: spacing must be three positive numbers, got {lv.spacing}")


def _prepare_volume(task: dict[str, Any]) -> dict[str, Any]:
    """Read, convert and write one volume; returns its record. Runs in a worker process."""
    reader: Reader = task["reader"]
    source: SourceVolume = task["source"]
    info: DatasetInfo = task["info"]
    work = Path(task["work"])
    key = source.key
    lv = reader.load(source, info)
    _check_loaded(lv, source, info)
    axis = int(task["slice_axis"]) if task["slice_axis"] is not None else int(lv.slice_axis)
    axes = work_axes(axis)
    images, offset, scale = to_uint16(lv.images, where=source.images[0])
    lv.images = None  # type: ignore[assignment]  # free the source dtype copy before the label is converted
    images = np.ascontiguousarray(np.transpose(images, (0, *(a + 1 for a in axes))))
    packed = areas = None
    if task["labelled"]:
        if lv.label is None:
            raise ValueError(f"{source.images[0]}: the reader found no label for volume {key!r}")
        packed, areas = convert_labels(np.transpose(lv.label, axes), info, where=str(source.label))
    shape = tuple(int(s) for s in images.shape[1:])
    paths = lv.extra.get("slice_paths")
    slice_paths = [str(p) for p in paths] if paths is not None and axes[0] == 0 and len(paths) == shape[0] else None
    volume = VolumeInfo(
        shape=shape,  # type: ignore[arg-type]
        spacing=tuple(float(lv.spacing[a]) for a in axes),  # type: ignore[arg-type]
        group=task["group"],
        source=str(source.images[0]),
        origin=None if lv.origin is None else tuple(float(v) for v in lv.origin),
        direction=None if lv.direction is None else tuple(float(v) for v in lv.direction),
        axes=axes,
        offset=float(offset),
        scale=float(scale),
    )
    for k in range(images.shape[0]):
        save_volume(work, key, images[k], channel=k)
    del images
    if packed is not None:
        save_mask(work, key, packed)
    record = {
        "volume": volume.to_json(),
        "areas": None if packed is None else areas.tolist(),
        "slice_paths": slice_paths,
        "files": _files(key, shape, info.num_channels, None if packed is None else packed.dtype),
    }
    atomic_write_text(progress_path(work, key), json.dumps(record) + "\n")
    return record


# --------------------------------------------------------------------------------------------------------- groups


def resolve_groups(sources: Sequence[SourceVolume], group_by: str | os.PathLike | None) -> dict[str, str]:
    """``{key: group}``: the reader's groups, or ``group_by``.

    Args:
        sources: the scanned volumes.
        group_by: None (the format's groups: nnU-Net case id, DICOM PatientID, the slice folder); the path of a CSV
            file with columns ``key,group``; or a regular expression searched in each key, whose first group (or
            whole match, without groups) is the group.

    Raises:
        ValueError: a key the regex does not match or the CSV does not list, a bad regex or CSV (named).
    """
    if group_by is None:
        return {s.key: str(s.group) for s in sources}
    text = str(group_by)
    if Path(text).is_file():
        with open(text, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"key", "group"} <= set(rows[0]):
            raise ValueError(f"{text}: a --group-by CSV needs the columns key,group (one row per volume key)")
        table = {r["key"].strip(): r["group"].strip() for r in rows}
        missing = [s.key for s in sources if s.key not in table]
        if missing:
            raise ValueError(f"{text}: no group for volume key(s) {missing[:5]} (column 'key')")
        return {s.key: table[s.key] for s in sources}
    try:
        pattern = re.compile(text)
    except re.error as e:
        raise ValueError(f"--group-by {text!r} is neither a CSV file nor a valid regular expression ({e})") from None
    out = {}
    for s in sources:
        m = pattern.search(s.key)
        if m is None:
            raise ValueError(f"--group-by regex {text!r} does not match volume key {s.key!r}")
        out[s.key] = m.group(1) if pattern.groups else m.group(0)
    return out


# ---------------------------------------------------------------------------------------------------- the command


def _check_sources(sources: Sequence[SourceVolume], root: Path, split: str) -> bool:
    """Check keys; returns True when every volume has a label (mixed is an error)."""
    if not sources:
        raise FileNotFoundError(f"{root}: no volumes found for split {split!r}")
    keys = [s.key for s in sources]
    bad = [k for k in keys if not KEY_RE.match(k)]
    if bad:
        raise ValueError(f"{root}: volume keys {bad[:5]} hold characters other than letters, digits, '_', '-', '.'")
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"{root}: volume keys {dup[:5]} appear more than once")
    labelled = [s.label is not None for s in sources]
    if any(labelled) and not all(labelled):
        missing = [s.key for s in sources if s.label is None]
        raise ValueError(f"{root}: volumes {missing[:5]} have no label while others have; label all or none")
    return all(labelled)


def _json_clean(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _manifest(
    sources: Sequence[SourceVolume], records: dict[str, dict[str, Any]], info: DatasetInfo, labelled: bool
) -> pd.DataFrame:
    frames = []
    for s in sources:
        r = records[s.key]
        v = VolumeInfo.from_json(r["volume"])
        d, h, w = v.shape
        z = np.arange(d)
        frame = {
            "id": [f"{s.key}_slice_{i:04d}" for i in z],
            "case": v.group,
            "day": 0,
            "slice": z,
            "case_day": s.key,
            "path": r["slice_paths"] or [str(s.images[0])] * d,
            "width": w,
            "height": h,
            "px_w": v.spacing[2],
            "px_h": v.spacing[1],
            "z": z,
            "depth": d,
        }
        if labelled:
            areas = np.asarray(r["areas"], np.int64).reshape(d, info.num_classes)
            for c, col in enumerate(class_columns("has_", info.classes)):
                frame[col] = (areas[:, c] > 0).astype(np.int64)
            for c, col in enumerate(class_columns("area_", info.classes)):
                frame[col] = areas[:, c]
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


def prepare_volumes(
    reader: Reader | str,
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "train",
    options: dict[str, Any] | None = None,
    slice_axis: int | None = None,
    group_by: str | os.PathLike | None = None,
    stride: int = DEFAULT_STRIDE,
    channels: int = DEFAULT_CHANNELS,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    n_folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    split_method: str = "group",
    tail: int = DEFAULT_TAIL,
    tail_before: int = 0,
    faulty_case_days: Sequence[str] = (),
) -> dict[str, Any]:
    """Prepare ``out`` (WORK) from the volumes that ``reader`` finds under ``data_root`` (module docstring).

    Args:
        reader: a reader object, or a format name (``"nnunet"``, ``"dicom"``, ``"slices"``;
            :func:`data_prep.readers.get_reader`).
        data_root: the input folder.
        out: the WORK folder (created).
        split: ``"train"`` (labelled volumes) or ``"test"`` (images only).
        options: reader options (``spacing``, ``classes``, ``label_kind`` for the slices / DICOM readers), recorded.
        slice_axis: source array axis (``(z, y, x)`` order) to put first; None = each volume's acquisition axis.
        group_by: patient groups for the splits (:func:`resolve_groups`); None = the format's.
        stride, channels: 2.5D defaults recorded for loaders (as :func:`data_prep.prepare.prepare`).
        workers: processes, one volume per task (1: in this process).
        overwrite: clear what an earlier ``prepare`` made in ``out`` and start again.
        progress: a tqdm bar over volumes.
        n_folds, seed, split_method, tail, tail_before, faulty_case_days: split options
            (:func:`data_prep.splits.make_splits`), used with labels only; the fault list is empty by default.

    Returns:
        The content of ``prepare.json``: ``{"version", "status", "args", "n_volumes", "n_case_days", "n_slices",
        "labels"}``.

    Raises:
        FileExistsError: ``out`` holds a preparation with other arguments (or unknown outputs) and not
            ``overwrite``.
        FileNotFoundError, ValueError: bad input (named by the reader or here), bad arguments.
    """
    from data_prep.readers import get_reader  # noqa: PLC0415 - the registry imports the readers lazily
    from data_prep.splits import write_splits  # noqa: PLC0415

    stack_indices(0, 1, stride, channels)  # validates stride and channels
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if slice_axis is not None:
        work_axes(int(slice_axis))
    if isinstance(reader, str):
        reader = get_reader(reader)
    root = Path(data_root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    work = Path(out).resolve()
    options = _json_clean(dict(options or {}))
    info, sources = reader.scan(str(root), split, dict(options))
    sources = list(sources)
    labelled = _check_sources(sources, root, split)
    groups = resolve_groups(sources, group_by)
    if group_by is not None and Path(str(group_by)).is_file():
        group_arg: str | None = str(Path(str(group_by)).resolve())
    else:
        group_arg = None if group_by is None else str(group_by)
    args: dict[str, Any] = {
        "format": reader.name,
        "data_root": str(root),
        "split": split,
        "options": options,
        "slice_axis": None if slice_axis is None else int(slice_axis),
        "group_by": group_arg,
        "labels": labelled,
        "stride": int(stride),
        "channels": int(channels),
    }
    if labelled:
        args["splits"] = split_args(n_folds, seed, split_method, tail, tail_before, faulty_case_days)
    state = start_run(work, args, PREPARE_VOLUMES_VERSION, overwrite)
    if state is not None:
        shutil.rmtree(work / PROGRESS_DIR, ignore_errors=True)
        return state
    base = {"version": PREPARE_VOLUMES_VERSION, "args": args}
    for p in (work / PROGRESS_DIR).glob(".*.tmp") if (work / PROGRESS_DIR).is_dir() else ():
        p.unlink(missing_ok=True)

    records: dict[str, dict[str, Any]] = {}
    tasks = []
    for s in sources:
        record = _record_ok(work, s.key)
        if record is not None:
            records[s.key] = record
            continue
        tasks.append(
            {
                "reader": reader,
                "source": s,
                "info": info,
                "work": str(work),
                "slice_axis": slice_axis,
                "group": groups[s.key],
                "labelled": labelled,
            }
        )
    if records:
        logger.info("%d volume(s) already prepared and verified; %d to do", len(records), len(tasks))
    _run(tasks, records, workers, progress)

    volumes = {s.key: VolumeInfo.from_json(records[s.key]["volume"]) for s in sources}
    table = _manifest(sources, records, info, labelled)
    write_manifest(work, table)
    write_dataset(work, info.with_volumes(volumes))
    if labelled:
        write_splits(work, table, **args["splits"], overwrite=overwrite)  # the options split_args recorded
    state = {
        **base,
        "status": "done",
        "n_volumes": len(sources),
        "n_case_days": len(sources),
        "n_slices": len(table),
        "labels": labelled,
    }
    write_prepare_json(work, state)
    shutil.rmtree(work / PROGRESS_DIR, ignore_errors=True)
    logger.info("prepared %d slices, %d volumes (%s) in %s", len(table), len(sources), reader.name, work)
    return state


def _run(tasks: list[dict[str, Any]], records: dict[str, dict[str, Any]], workers: int, progress: bool) -> None:
    """Run the volume tasks (in worker processes when ``workers > 1``); a failure cancels what has not started."""
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(tasks), desc="prepare", unit="volume")
    try:
        if workers == 1 or len(tasks) <= 1:
            for t in tasks:
                records[t["source"].key] = _prepare_volume(t)
                if bar is not None:
                    bar.update()
            return
        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)))
        try:
            for t, record in zip(tasks, pool.map(_prepare_volume, tasks, chunksize=1)):
                records[t["source"].key] = record
                if bar is not None:
                    bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    finally:
        if bar is not None:
            bar.close()
