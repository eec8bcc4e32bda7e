"""The dataset fingerprint: the figures of a prepared WORK that the planner (:mod:`data_prep.plan`) decides from.

:func:`fingerprint` reads a WORK one volume at a time (each volume's mask twice, its image channels once; memory
bounded by a chunk of slices), in a process pool, and returns plain data (JSON-ready):

- image geometry: sizes ``(D, H, W)`` and spacings ``(sz, sy, sx)`` mm (median, min, max, 10th / 90th
  percentiles), anisotropy (max spacing / min spacing, per volume), slices per volume, the in-plane size in px and
  mm;
- intensities per image channel on foreground voxels (every labelled voxel; all voxels when WORK has no masks):
  the 0.5 / 50 / 99.5 percentiles, mean and std of a deterministic subsample (evenly spaced over each volume's
  foreground voxels, ``samples`` per volume, as nnU-Net samples 10,000 per case), in the stored uint16 units the
  models read and in the source's units (``stored * scale + offset``, ``WORK/dataset.json``); CT or MR from the
  dataset description;
- per class: voxels, slices, volumes and groups that hold it, the median in-plane extent of its bounding box
  (projected over the slices of a volume) in px and mm, its median extent along the slice axis;
- the pairwise overlap of the classes (voxels in both / voxels of the smaller class);
- empty slices (no class), empty (slice, class) pairs, the ``notail`` tail slices (``splits.json``'s ``tail`` after
  the last annotated slice of each volume, :mod:`data_prep.splits`) and the slices outside the annotated range;
- the crop: the bounding box of all foreground of a volume (projected over its slices) as a fraction of the image,
  and the body box the crop detector learns (:func:`data_prep.exports.body_box`) on up to
  :data:`BODY_BOX_SLICES` foreground slices per volume.

:func:`write_fingerprint` writes ``WORK/plan/fingerprint.json`` and ``fingerprint.md`` (a short Markdown table,
:func:`fingerprint_markdown`).

>>> membership(np.array([0, 1, 3], np.uint8), 2, "overlapping").astype(int).tolist()
[[0, 0], [1, 0], [1, 1]]
>>> membership(np.array([0, 2], np.uint8), 2, "exclusive").astype(int).tolist()
[[0, 0], [0, 1]]
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.io import atomic_write_text, markdown_table
from data_prep.constants import DEFAULT_TAIL
from data_prep.dataset import DatasetInfo
from data_prep.exports import body_box
from data_prep.work import (
    check_work,
    has_mask,
    load_mask,
    load_volume,
    plan_dir,
    read_dataset,
    read_manifest,
    read_splits,
)

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
#: Intensity percentiles of the fingerprint (nnU-Net's CT scheme clips to the first and last).
PERCENTILES: tuple[float, ...] = (0.5, 50.0, 99.5)
#: Foreground voxels sampled per volume and image channel (nnU-Net samples 10,000 per case).
DEFAULT_SAMPLES = 10_000
#: Foreground slices per volume on which the detector's body box is measured.
BODY_BOX_SLICES = 5
#: Voxels per chunk of slices read at once (bounds the memory of a worker).
CHUNK_VOXELS = 1 << 22


def membership(values: np.ndarray, num_classes: int, label_kind: str) -> np.ndarray:
    """Which classes each mask value stands for: bool ``(len(values), C)``.

    Overlapping classes: bit ``c`` of the value; exclusive classes: value ``c + 1``.
    """
    values = np.asarray(values)
    if label_kind == "exclusive":
        return values.astype(np.int64)[:, None] == np.arange(1, num_classes + 1)[None, :]
    bits = np.arange(num_classes, dtype=np.uint64)
    return ((values.astype(np.uint64)[:, None] >> bits[None, :]) & np.uint64(1)).astype(bool)


def _chunks(depth: int, h: int, w: int) -> list[tuple[int, int]]:
    n = max(1, CHUNK_VOXELS // max(1, h * w))
    return [(z, min(depth, z + n)) for z in range(0, depth, n)]


def _even(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` indices evenly spaced over ``range(n)`` (deterministic), int64 sorted."""
    if n <= 0 or k <= 0:
        return np.zeros(0, np.int64)
    if n <= k:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _extent(present: np.ndarray) -> int:
    """Length of the span from the first to the last True of a 1-D bool array (0 when none)."""
    idx = np.flatnonzero(present)
    return int(idx[-1] - idx[0] + 1) if idx.size else 0


def volume_stats(
    work: str | os.PathLike,
    key: str,
    num_classes: int,
    label_kind: str,
    num_channels: int = 1,
    samples: int = DEFAULT_SAMPLES,
) -> dict[str, Any]:
    """The figures of one volume (what a worker of :func:`fingerprint` returns).

    Args:
        work: the WORK folder.
        key: the volume key.
        num_classes, label_kind: the dataset's (``WORK/dataset.json``).
        num_channels: image channels to sample.
        samples: intensity samples per channel (evenly spaced over the foreground voxels, or over all voxels when
            the volume has no mask).

    Returns:
        ``{"key", "shape": (D, H, W), "labelled": bool, "slice_area": int64 (D, C), "inter": int64 (C, C),
        "rows": bool (H, C), "cols": bool (W, C), "fg_rows": bool (H,), "fg_cols": bool (W,), "fg_voxels": int,
        "samples": [float64 (n,)] * K (stored units), "body": int64 (m, 4) body boxes x0, y0, x1, y1}``; without a
        mask the per-class arrays are empty.
    """
    vols = [load_volume(work, key, channel=k) for k in range(num_channels)]
    d, h, w = (int(v) for v in vols[0].shape)
    out: dict[str, Any] = {"key": key, "shape": (d, h, w), "labelled": has_mask(work, key)}
    chunks = _chunks(d, h, w)
    if not out["labelled"]:
        idx = _even(d * h * w, samples)
        out["samples"] = [np.asarray(v).reshape(-1)[idx].astype(np.float64) for v in vols]
        out["fg_voxels"] = 0
        zs = _even(d, BODY_BOX_SLICES)
        out["body"] = np.array([body_box(np.asarray(vols[0][z]))[:4] for z in zs], np.int64).reshape(-1, 4)
        return out
    mask = load_mask(work, key)
    if tuple(mask.shape) != (d, h, w):
        raise ValueError(f"{work}: the mask of {key} is {tuple(mask.shape)} but its volume is {(d, h, w)}")
    values = np.unique(np.concatenate([np.unique(np.asarray(mask[a:b])) for a, b in chunks]))
    nv = len(values)
    per_slice = np.zeros((d, nv), np.int64)
    rows = np.zeros((h, nv), np.int64)
    cols = np.zeros((w, nv), np.int64)
    for a, b in chunks:
        inv = np.searchsorted(values, np.asarray(mask[a:b])).astype(np.int64)  # (n, H, W) value index
        n = b - a
        per_slice[a:b] += np.bincount((inv + (np.arange(n) * nv)[:, None, None]).ravel(), minlength=n * nv).reshape(
            n, nv
        )
        rows += np.bincount((inv + (np.arange(h) * nv)[None, :, None]).ravel(), minlength=h * nv).reshape(h, nv)
        cols += np.bincount((inv + (np.arange(w) * nv)[None, None, :]).ravel(), minlength=w * nv).reshape(w, nv)
    member = membership(values, num_classes, label_kind).astype(np.int64)  # (nv, C)
    fg_value = values != 0
    totals = per_slice.sum(axis=0)
    out["slice_area"] = per_slice @ member
    out["inter"] = member.T @ (totals[:, None] * member)
    out["rows"] = (rows @ member) > 0
    out["cols"] = (cols @ member) > 0
    out["fg_rows"] = rows[:, fg_value].sum(axis=1) > 0
    out["fg_cols"] = cols[:, fg_value].sum(axis=1) > 0
    fg_total = int(totals[fg_value].sum())
    out["fg_voxels"] = fg_total
    # intensity samples: evenly spaced over the foreground voxels in C order, the mask read a second time
    want = _even(fg_total, samples)
    picked: list[list[np.ndarray]] = [[] for _ in vols]
    seen = 0
    for a, b in chunks:
        fg = np.asarray(mask[a:b]) != 0
        n_fg = int(fg.sum())
        lo, hi = np.searchsorted(want, [seen, seen + n_fg])
        if hi > lo:
            local = want[lo:hi] - seen
            flat = np.flatnonzero(fg.reshape(-1))[local]
            for k, v in enumerate(vols):
                picked[k].append(np.asarray(v[a:b]).reshape(-1)[flat].astype(np.float64))
        seen += n_fg
    out["samples"] = [np.concatenate(p) if p else np.zeros(0) for p in picked]
    fg_slices = np.flatnonzero(per_slice[:, fg_value].sum(axis=1) > 0)
    zs = fg_slices[_even(len(fg_slices), BODY_BOX_SLICES)]
    out["body"] = np.array([body_box(np.asarray(vols[0][z]))[:4] for z in zs], np.int64).reshape(-1, 4)
    return out


def _volume_job(args: tuple) -> dict[str, Any]:
    return volume_stats(*args)


def _summary(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``{"median", "min", "max", "p10", "p90"}`` of a 1-D sequence (NaN-free; empty -> NaNs)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return dict.fromkeys(("median", "min", "max", "p10", "p90"), float("nan"))
    return {
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "p10": float(np.percentile(v, 10)),
        "p90": float(np.percentile(v, 90)),
    }


def _per_axis(rows: np.ndarray) -> dict[str, list[float]]:
    """:func:`_summary` of each column of ``(N, 3)``, as ``{"median": [a, b, c], ...}``."""
    cols = [_summary(rows[:, j]) for j in range(rows.shape[1])]
    return {k: [c[k] for c in cols] for k in cols[0]}


def _intensity(samples: np.ndarray) -> dict[str, float]:
    if samples.size == 0:
        return {}
    p = np.percentile(samples, PERCENTILES)
    out = {f"p{q:g}": float(v) for q, v in zip(PERCENTILES, p)}
    out.update(mean=float(samples.mean()), std=float(samples.std()), min=float(samples.min()), max=float(samples.max()))
    return out


def _volumes(work: Path, info: DatasetInfo, manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per volume of the manifest: key, group, shape, spacing, offset, scale."""
    first = manifest.groupby("case_day", sort=False).first()
    rows = []
    for key, r in first.iterrows():
        v = info.volumes.get(str(key))
        if v is not None:
            shape, spacing, group, offset, scale = v.shape, v.spacing, v.group, v.offset, v.scale
        else:  # the Kaggle description without volume entries: the manifest's geometry
            shape = (int(r["depth"]), int(r["height"]), int(r["width"]))
            spacing = info.spacing(str(key), (float(r["px_h"]), float(r["px_w"])))
            group, offset, scale = str(r["case"]), 0.0, 1.0
        rows.append(
            dict(key=str(key), group=str(group), shape=tuple(shape), spacing=tuple(spacing), offset=offset, scale=scale)
        )
    return pd.DataFrame(rows)


def fingerprint(
    work: str | os.PathLike,
    workers: int = 1,
    progress: bool = False,
    samples: int = DEFAULT_SAMPLES,
    tail: int | None = None,
) -> dict[str, Any]:
    """The fingerprint of a prepared WORK (see the module docstring); the planner's input.

    Args:
        work: a WORK folder made by ``python -m data_prep prepare`` (any format; masks optional).
        workers: processes, one volume at a time each.
        progress: a tqdm bar over the volumes.
        samples: intensity samples per volume and image channel.
        tail: the ``notail`` tail length (default: ``splits.json``'s, else :data:`data_prep.constants.DEFAULT_TAIL`).

    Returns:
        A JSON-ready dict (figures below are medians over volumes unless named otherwise).

    Raises:
        FileNotFoundError: ``work`` is not a finished preparation.
        ValueError: a mask that does not match its volume.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    work = check_work(work, need_masks=False, need_splits=False)
    info = read_dataset(work)
    manifest = read_manifest(work)
    table = _volumes(work, info, manifest)
    try:
        splits = read_splits(work)
    except FileNotFoundError:
        splits = None
    if tail is None:
        tail = int(splits.get("tail", DEFAULT_TAIL)) if splits else DEFAULT_TAIL
    c = info.num_classes
    jobs = [(str(work), key, c, info.label_kind, info.num_channels, samples) for key in table["key"]]
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(jobs), desc="fingerprint", unit="volume")
    results: list[dict[str, Any]] = []
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 and len(jobs) > 1 else None
    try:
        for r in pool.map(_volume_job, jobs, chunksize=1) if pool is not None else map(_volume_job, jobs):
            results.append(r)
            if bar is not None:
                bar.update()
    finally:
        if pool is not None:
            pool.shutdown()
        if bar is not None:
            bar.close()
    return merge_stats(info, table, results, splits, tail, str(work))


def merge_stats(
    info: DatasetInfo,
    table: pd.DataFrame,
    results: Sequence[Mapping[str, Any]],
    splits: Mapping[str, Any] | None,
    tail: int,
    work: str,
) -> dict[str, Any]:
    """Pool the per-volume figures of :func:`volume_stats` into the fingerprint dict (pure; ``table`` as
    :func:`_volumes` gives it, in the order of ``results``)."""
    c = info.num_classes
    shapes = np.array([r["shape"] for r in results], np.float64).reshape(-1, 3)
    spacings = np.array([s for s in table["spacing"]], np.float64).reshape(-1, 3)
    aniso = spacings.max(axis=1) / spacings.min(axis=1) if len(spacings) else np.zeros(0)
    labelled = [i for i, r in enumerate(results) if r["labelled"]]
    groups = table["group"].astype(str).tolist()

    # intensities, pooled over volumes (stored units, and source units through each volume's offset / scale)
    channels = []
    for k, name in enumerate(info.channels):
        stored = np.concatenate([r["samples"][k] for r in results]) if results else np.zeros(0)
        source = (
            np.concatenate(
                [r["samples"][k] * float(s) + float(o) for r, s, o in zip(results, table["scale"], table["offset"])]
            )
            if results
            else np.zeros(0)
        )
        channels.append({"name": name, "stored": _intensity(stored), "source": _intensity(source)})
    mappings = sorted({(float(o), float(s)) for o, s in zip(table["offset"], table["scale"])})

    # classes, overlap, empty and tail slices (labelled volumes only)
    n_slices = int(sum(results[i]["shape"][0] for i in labelled))
    n_voxels = int(sum(np.prod(results[i]["shape"]) for i in labelled))
    voxels = np.zeros(c, np.int64)
    inter = np.zeros((c, c), np.int64)
    slices = np.zeros(c, np.int64)
    vol_has = np.zeros((len(labelled), c), bool)
    extent_px: list[list[tuple[int, int]]] = [[] for _ in range(c)]
    extent_mm: list[list[tuple[float, float]]] = [[] for _ in range(c)]
    extent_z: list[list[int]] = [[] for _ in range(c)]
    empty_slices = 0
    empty_pairs = 0
    tail_slices = 0
    outside = 0
    fg_box: list[tuple[float, float, float]] = []  # area, height, width fractions
    for j, i in enumerate(labelled):
        r = results[i]
        d, h, w = r["shape"]
        sy, sx = spacings[i, 1], spacings[i, 2]
        area = np.asarray(r["slice_area"])
        present = area > 0  # (D, C)
        voxels += area.sum(axis=0)
        inter += np.asarray(r["inter"])
        slices += present.sum(axis=0)
        vol_has[j] = present.any(axis=0)
        any_slice = present.any(axis=1)
        empty_slices += int((~any_slice).sum())
        empty_pairs += int((~present).sum())
        for cc in range(c):
            if vol_has[j, cc]:
                eh, ew = _extent(r["rows"][:, cc]), _extent(r["cols"][:, cc])
                extent_px[cc].append((eh, ew))
                extent_mm[cc].append((eh * sy, ew * sx))
                extent_z[cc].append(_extent(present[:, cc]))
        pos = np.flatnonzero(any_slice)
        if pos.size:
            z = np.arange(d)
            tail_slices += int(((z > pos[-1]) & (z <= pos[-1] + tail)).sum())
            outside += int(((z > pos[-1]) | (z < pos[0])).sum())
            bh, bw = _extent(r["fg_rows"]), _extent(r["fg_cols"])
            fg_box.append((bh * bw / (h * w), bh / h, bw / w))
    body = []  # area, height, width fractions; height / width px
    for r in results:
        d, h, w = r["shape"]
        for x0, y0, x1, y1 in np.asarray(r["body"]).reshape(-1, 4):
            body.append(((x1 - x0) * (y1 - y0) / (h * w), (y1 - y0) / h, (x1 - x0) / w, y1 - y0, x1 - x0))
    body_arr = np.array(body, np.float64).reshape(-1, 5)
    fg_arr = np.array(fg_box, np.float64).reshape(-1, 3)

    group_of = np.array([groups[i] for i in labelled])
    classes = []
    for cc, name in enumerate(info.classes):
        ext_px = np.array(extent_px[cc], np.float64).reshape(-1, 2)
        ext_mm = np.array(extent_mm[cc], np.float64).reshape(-1, 2)
        classes.append(
            {
                "name": name,
                "voxels": int(voxels[cc]),
                "voxel_fraction": float(voxels[cc] / n_voxels) if n_voxels else 0.0,
                "slices": int(slices[cc]),
                "slice_fraction": float(slices[cc] / n_slices) if n_slices else 0.0,
                "volumes": int(vol_has[:, cc].sum()),
                "volume_fraction": float(vol_has[:, cc].mean()) if len(labelled) else 0.0,
                "groups": len(set(group_of[vol_has[:, cc]].tolist())),
                "extent_px": [float(v) for v in np.median(ext_px, axis=0)] if len(ext_px) else [0.0, 0.0],
                "extent_mm": [float(v) for v in np.median(ext_mm, axis=0)] if len(ext_mm) else [0.0, 0.0],
                "extent_slices": float(np.median(extent_z[cc])) if extent_z[cc] else 0.0,
            }
        )
    smaller = np.minimum(voxels[:, None], voxels[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        overlap = np.where(smaller > 0, inter / np.maximum(smaller, 1), 0.0)
    pairs = [
        {"a": info.classes[a], "b": info.classes[b], "voxels": int(inter[a, b]), "fraction": float(overlap[a, b])}
        for a in range(c)
        for b in range(a + 1, c)
        if inter[a, b] > 0
    ]
    n_groups = len(set(groups))
    return {
        "version": FINGERPRINT_VERSION,
        "work": work,
        "dataset": {
            "name": info.name,
            "format": info.format,
            "classes": list(info.classes),
            "label_kind": info.label_kind,
            "channels": list(info.channels),
            "intensity": info.intensity,
        },
        "volumes": len(results),
        "labelled_volumes": len(labelled),
        "slices": int(shapes[:, 0].sum()) if len(shapes) else 0,
        "labelled_slices": n_slices,
        "groups": n_groups,
        "shape": _per_axis(shapes) if len(shapes) else {},
        "spacing": _per_axis(spacings) if len(spacings) else {},
        "size_mm": _per_axis(shapes * spacings) if len(shapes) else {},
        "anisotropy": _summary(aniso),
        "slices_per_volume": _summary(shapes[:, 0]) if len(shapes) else _summary([]),
        "in_plane": {
            "median_px": [float(np.median(shapes[:, 1])), float(np.median(shapes[:, 2]))] if len(shapes) else [],
            "median_mm": [
                float(np.median(shapes[:, 1] * spacings[:, 1])),
                float(np.median(shapes[:, 2] * spacings[:, 2])),
            ]
            if len(shapes)
            else [],
        },
        "intensity": {
            "kind": info.intensity,
            "on": "foreground" if labelled else "all",
            "samples_per_volume": int(max((len(r["samples"][0]) for r in results), default=0)),
            "mappings": [{"offset": o, "scale": s} for o, s in mappings],
            "uniform_mapping": len(mappings) <= 1,
            "channels": channels,
        },
        "classes": classes,
        "overlap": {
            "matrix": [[float(v) for v in row] for row in overlap],
            "max": float(max((p["fraction"] for p in pairs), default=0.0)),
            "pairs": pairs,
        },
        "empty": {
            "slices": empty_slices,
            "slice_fraction": float(empty_slices / n_slices) if n_slices else 0.0,
            "slice_class_fraction": float(empty_pairs / (n_slices * c)) if n_slices else 0.0,
        },
        "tail": {
            "tail": int(tail),
            "slices": tail_slices,
            "fraction": float(tail_slices / n_slices) if n_slices else 0.0,
            "outside_annotated_fraction": float(outside / n_slices) if n_slices else 0.0,
        },
        "foreground_box": {
            "area_fraction": _summary(fg_arr[:, 0]),
            "height_fraction": _summary(fg_arr[:, 1]),
            "width_fraction": _summary(fg_arr[:, 2]),
        },
        "body_box": {
            "slices": int(len(body_arr)),
            "area_fraction": _summary(body_arr[:, 0]),
            "height_fraction": _summary(body_arr[:, 1]),
            "width_fraction": _summary(body_arr[:, 2]),
            "height_px": _summary(body_arr[:, 3]),
            "width_px": _summary(body_arr[:, 4]),
        },
        "splits": {"n_folds": int(splits.get("n_folds", len(splits["folds"])))} if splits else None,
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, (list, tuple)):
        return " x ".join(_fmt(x) for x in v)
    return str(v)


def fingerprint_markdown(fp: Mapping[str, Any]) -> str:
    """A short Markdown summary of a fingerprint: one table of figures, one row per class."""
    ds = fp["dataset"]
    rows = [
        ("dataset", f"{ds['name']} ({ds['format']}), {ds['intensity']}, channels {', '.join(ds['channels'])}"),
        ("volumes / labelled / groups", f"{fp['volumes']} / {fp['labelled_volumes']} / {fp['groups']}"),
        ("slices (labelled)", f"{fp['slices']} ({fp['labelled_slices']})"),
        ("shape D x H x W, median (min-max)", f"{_fmt(fp['shape']['median'])} ({_fmt(fp['shape']['min'])} - "
         f"{_fmt(fp['shape']['max'])})"),
        ("spacing sz x sy x sx mm, median (min-max)", f"{_fmt(fp['spacing']['median'])} ({_fmt(fp['spacing']['min'])}"
         f" - {_fmt(fp['spacing']['max'])})"),
        ("anisotropy (max / min spacing), median (max)", f"{_fmt(fp['anisotropy']['median'])} "
         f"({_fmt(fp['anisotropy']['max'])})"),
        ("in-plane size, median px / mm", f"{_fmt(fp['in_plane']['median_px'])} / {_fmt(fp['in_plane']['median_mm'])}"),
        ("empty slices / empty (slice, class)", f"{_fmt(fp['empty']['slice_fraction'])} / "
         f"{_fmt(fp['empty']['slice_class_fraction'])}"),
        (f"tail slices (notail, {fp['tail']['tail']}) / outside the annotated range",
         f"{_fmt(fp['tail']['fraction'])} / {_fmt(fp['tail']['outside_annotated_fraction'])}"),
        ("foreground box area fraction, median (max)", f"{_fmt(fp['foreground_box']['area_fraction']['median'])} "
         f"({_fmt(fp['foreground_box']['area_fraction']['max'])})"),
        ("body box area fraction, median; h x w px", f"{_fmt(fp['body_box']['area_fraction']['median'])}; "
         f"{_fmt(fp['body_box']['height_px']['median'])} x {_fmt(fp['body_box']['width_px']['median'])}"),
        ("largest class overlap (voxels in both / smaller)", _fmt(fp["overlap"]["max"])),
    ]  # fmt: skip
    it = fp["intensity"]
    for ch in it["channels"]:
        for units in ("stored", "source"):
            s = ch[units]
            if s:
                rows.append(
                    (
                        f"{ch['name']} intensity on {it['on']} voxels ({units}): p0.5 / p50 / p99.5, mean +- std",
                        f"{_fmt(s['p0.5'])} / {_fmt(s['p50'])} / {_fmt(s['p99.5'])}, {_fmt(s['mean'])} +- "
                        f"{_fmt(s['std'])}",
                    )
                )
    figures = pd.DataFrame(rows, columns=["figure", "value"])
    classes = pd.DataFrame(
        [
            {
                "class": k["name"],
                "voxel %": 100 * k["voxel_fraction"],
                "slices": k["slices"],
                "slice %": 100 * k["slice_fraction"],
                "volumes": k["volumes"],
                "groups": k["groups"],
                "extent px": _fmt(k["extent_px"]),
                "extent mm": _fmt(k["extent_mm"]),
                "extent slices": k["extent_slices"],
            }
            for k in fp["classes"]
        ]
    )
    return (
        f"# Fingerprint of {ds['name']}\n\n{markdown_table(figures)}\n## Classes\n\n"
        f"{markdown_table(classes, floatfmt='{:.2f}')}"
    )


def write_fingerprint(work: str | os.PathLike, fp: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``WORK/plan/fingerprint.json`` and ``fingerprint.md`` atomically; returns both paths."""
    d = plan_dir(work)
    js = atomic_write_text(d / "fingerprint.json", json.dumps(fp, indent=1) + "\n")
    md = atomic_write_text(d / "fingerprint.md", fingerprint_markdown(fp))
    return js, md
