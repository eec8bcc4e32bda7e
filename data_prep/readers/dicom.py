"""DICOM series: one volume per series, geometry from the headers (pydicom), labels as NIfTI / NRRD / MetaImage.

Layout::

    DATA_ROOT/                        series anywhere below it (a series = the files sharing SeriesInstanceUID;
      .../{series folder}/*           files are found by the DICM magic at byte 128 or a ``.dcm`` ending)
      labels/{key}.nii.gz|.nrrd|.mha  optional: a label volume on the series' voxel grid
      classes.json                    the classes (or ``options["classes"]``), see :func:`read_classes`

Keys: a file-name-safe form of the series folder's path below ``DATA_ROOT`` (``98892001/CT5N`` ->
``98892001_CT5N``), or the SeriesInstanceUID when several series share a folder. Group (kept on one side of the
splits): the PatientID, else the folder. Split ``"train"`` = the labelled series; ``"test"`` = the unlabelled ones,
or every series when none is labelled.

Geometry (what SimpleITK's ``ImageSeriesReader`` gives for the same files, so a label that SimpleITK wrote on the
series' grid matches): slices are ordered by the projection of ImagePositionPatient on the slice normal
``n = row x col`` (ImageOrientationPatient), never by InstanceNumber or file name; ``sz`` = the median step between
positions, ``(sy, sx)`` = PixelSpacing (row spacing, column spacing); the origin is the first slice's position; the
direction's columns are the row cosine, the column cosine and the normal (9 values row-major). Pixels are returned
with RescaleSlope / RescaleIntercept applied (CT in Hounsfield units). Slice axis 0 (the stacking axis).

A series is refused, with an error naming its folder and the offending file, when its slices differ in orientation,
size or pixel spacing, lack a position or orientation, leave the slice normal (a sheared stack), share a position,
or are unevenly spaced (a step more than 1% from the median: a missing slice), and when it mixes single-frame and
multi-frame files; multi-frame (enhanced) files are not read.

Predictions (:func:`write_prediction`) go back on the series' grid as NIfTI: ``{key}.nii.gz``, a label map of the
classes' values in ``classes.json`` for exclusive classes; for overlapping classes, one binary mask per class
``{key}_{class}.nii.gz`` (a label map cannot hold overlaps, and a file per class reads in every viewer without
knowing the region convention). :func:`read_prediction` reads either form, and the label maps under
``DATA_ROOT/labels`` too.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from data_prep.dataset import DatasetInfo
from data_prep.readers.base import (
    LoadedVolume,
    SourceVolume,
    check_prediction,
    safe_key,
    source_geometry,
    to_source_axes,
    to_work_axes,
    write_probabilities,
)
from data_prep.readers.medical import ENDINGS, MedicalImage, ending_of, read_image, write_image

logger = logging.getLogger(__name__)

#: Folder of label volumes under DATA_ROOT (never searched for DICOM files).
LABELS_DIR = "labels"
#: The class description under DATA_ROOT.
CLASSES_JSON = "classes.json"
#: Largest difference between two slices' direction cosines of one series.
ORIENTATION_TOL = 1e-3
#: Largest relative difference between a step and the median step of a series (1%).
STEP_RTOL = 0.01
#: Two slices closer than this along the normal (mm) share a position.
DUPLICATE_MM = 1e-3
#: Largest distance (in pixels) a slice position may leave the line through the first slice along the normal.
SHEAR_PIXELS = 0.1
#: The header elements read to group and order the files.
_TAGS = (
    "SeriesInstanceUID",
    "PatientID",
    "Modality",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "NumberOfFrames",
    "InstanceNumber",
    "RescaleSlope",
    "RescaleIntercept",
    "SamplesPerPixel",
)


# ----------------------------------------------------------------------------------------------------- classes


def read_classes(
    root: str | os.PathLike, options: Mapping[str, Any]
) -> tuple[tuple[str, ...], str, dict[str, list[int]], list[int]]:
    """The classes of a DICOM dataset: ``options["classes"]`` (names -> values 1..C), else ``DATA_ROOT/classes.json``.

    ``classes.json`` follows nnU-Net's ``labels``: ``{"labels": {"background": 0, "liver": 1, "tumour": 2}}``; a
    class given a list of values is a region (``"kidney": [1, 2]``: the voxels of either value) and makes the
    classes overlapping. ``"regions": {name: [values]}`` lists the classes as regions of the ``labels`` values
    instead. ``"label_kind"`` sets the kind (default: exclusive, overlapping when any class is a region);
    ``options["label_kind"]`` overrides it. An ``"ignore"`` label (nnU-Net's) is no class: its value is allowed in
    the labels and ignored.

    Returns:
        ``(classes, label_kind, label_values, ignore_values)``: ``label_values[class]`` = the label values of that
        class.

    Raises:
        ValueError: no classes anywhere, an unreadable ``classes.json``, a class name that is not an identifier, a
            value that is not a positive integer, or exclusive classes sharing a value (the message names the file).
    """
    path = Path(root) / CLASSES_JSON
    kind = options.get("label_kind")
    if options.get("classes"):
        names = [str(c) for c in options["classes"]]
        values: dict[str, list[int]] = {c: [i + 1] for i, c in enumerate(names)}
        where = "the classes option"
        default_kind = "exclusive"
        ignore_values = []
    elif path.is_file():
        where = str(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        table = raw.get("regions") or raw.get("labels") if isinstance(raw, dict) else None
        if not isinstance(table, dict) or not table:
            raise ValueError(
                f'{path}: expected {{"labels": {{"background": 0, "name": 1, ...}}}} (nnU-Net style), got {raw!r}'
            )
        values = {}
        for name, v in table.items():
            vals = v if isinstance(v, list) else [v]
            if name in ("background", "ignore") or vals == [0]:
                continue
            if not str(name).replace("_", "").isalnum():
                raise ValueError(f"{path}: class name {name!r} must be letters, digits and '_' (it names columns)")
            if not vals or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in vals):
                raise ValueError(f"{path}: class {name!r} must map to a positive integer or a list of them, got {v!r}")
            values[str(name)] = [int(x) for x in vals]
        default_kind = "overlapping" if "regions" in raw or any(isinstance(v, list) for v in table.values()) else ""
        default_kind = default_kind or "exclusive"
        kind = kind or raw.get("label_kind")
        names = list(values)
        labels = raw.get("labels") if isinstance(raw.get("labels"), dict) else {}
        ignore = labels.get("ignore")
        ignore_values = [int(ignore)] if isinstance(ignore, int) and not isinstance(ignore, bool) else []
    else:
        raise ValueError(
            f"no classes for the DICOM series under {root}: write {path} "
            '({"labels": {"background": 0, "liver": 1, ...}}) or pass the classes option (e.g. --classes liver tumour)'
        )
    if not names:
        raise ValueError(f"{where}: no class besides the background")
    kind = str(kind or default_kind)
    if kind == "exclusive":
        seen: dict[int, str] = {}
        for name, vals in values.items():
            for v in vals:
                if v in seen:
                    raise ValueError(
                        f"{where}: exclusive classes {seen[v]!r} and {name!r} share the label value {v}; "
                        'set "label_kind": "overlapping" if they are regions'
                    )
                seen[v] = name
    return tuple(names), kind, values, ignore_values


# ----------------------------------------------------------------------------------------------------- headers


@dataclass(frozen=True)
class SliceHeader:
    """What the geometry needs from one DICOM file.

    Attributes:
        path: the file.
        series_uid, patient_id, modality: SeriesInstanceUID, PatientID (``""`` when absent), Modality.
        rows, columns: the image size.
        position: ImagePositionPatient ``(x, y, z)`` mm, None when absent.
        orientation: ImageOrientationPatient (row cosine, column cosine), None when absent.
        pixel_spacing: PixelSpacing ``(row spacing, column spacing)`` mm, None when absent.
        thickness: SpacingBetweenSlices, else SliceThickness (mm), None when neither (used for one slice).
        frames: NumberOfFrames (1 for a single-frame file).
        slope, intercept: RescaleSlope, RescaleIntercept (1, 0 when absent).
    """

    path: Path
    series_uid: str
    patient_id: str
    modality: str
    rows: int
    columns: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    frames: int
    slope: float
    intercept: float


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def header_of(ds: pydicom.Dataset, path: Path) -> SliceHeader | None:
    """The :class:`SliceHeader` of a read dataset, or None when it is not an image (no Rows / SeriesInstanceUID:
    a DICOMDIR, a structured report, an RT structure set)."""
    if "Rows" not in ds or "Columns" not in ds or not ds.get("SeriesInstanceUID"):
        return None
    thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    spacing = _floats(ds.get("PixelSpacing"), 2)
    return SliceHeader(
        path=path,
        series_uid=str(ds.SeriesInstanceUID),
        patient_id=str(ds.get("PatientID") or ""),
        modality=str(ds.get("Modality") or ""),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=spacing,  # type: ignore[arg-type]
        thickness=float(thickness) if thickness else None,
        frames=int(ds.get("NumberOfFrames") or 1),
        slope=float(ds.get("RescaleSlope") if ds.get("RescaleSlope") is not None else 1.0),
        intercept=float(ds.get("RescaleIntercept") if ds.get("RescaleIntercept") is not None else 0.0),
    )


def _has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def find_dicom_files(root: str | os.PathLike, skip: Sequence[Path] = ()) -> list[Path]:
    """Files below ``root`` that are DICOM: the ``DICM`` magic at byte 128, or a ``.dcm`` ending (files without the
    preamble). Hidden files and the folders in ``skip`` are left out; sorted by path."""
    root = Path(root)
    skip_set = {Path(s).resolve() for s in skip}
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip_set)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = here / name
            if name.lower().endswith(".dcm") or _has_magic(p):
                out.append(p)
    return out


def read_header(path: Path) -> SliceHeader | None:
    """Read the header of one file (pixels left on disk); None when it is not an image.

    Raises:
        ValueError: the file is not readable DICOM (the message names it).
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not _has_magic(path), specific_tags=list(_TAGS))
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    return header_of(ds, path)


# ---------------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class SeriesGeometry:
    """The voxel grid of one series (SimpleITK's convention, see the module docstring).

    Attributes:
        headers: the slices in order along the normal.
        shape: ``(Z, Y, X)``.
        spacing: ``(sz, sy, sx)`` mm.
        origin: the first slice's position ``(x, y, z)`` mm.
        direction: 9 cosines row-major; columns = row cosine, column cosine, normal.
    """

    headers: tuple[SliceHeader, ...]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


def _fmt(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.6g}" for x in v) + ")"


def series_geometry(headers: Sequence[SliceHeader], folder: str | os.PathLike) -> SeriesGeometry:
    """Order the slices of one series and compute its grid.

    Args:
        headers: the files of one series, in any order.
        folder: the series folder, named in errors.

    Raises:
        ValueError: the series is not one regular stack (see the module docstring); the message names ``folder``
            and the offending file.
    """
    if not headers:
        raise ValueError(f"{folder}: no DICOM image in the series")
    multi = [h for h in headers if h.frames > 1]
    if multi:
        single = [h for h in headers if h.frames == 1]
        if single:
            raise ValueError(
                f"{folder}: series {headers[0].series_uid} mixes single-frame files ({single[0].path.name}, ...) "
                f"with multi-frame files ({multi[0].path.name}: {multi[0].frames} frames); keep one kind"
            )
        raise ValueError(
            f"{folder}: {multi[0].path.name} is a multi-frame (enhanced) DICOM file ({multi[0].frames} frames); "
            "only series of single-frame files are read"
        )
    first = headers[0]
    for h in headers:
        if h.position is None or h.orientation is None:
            what = "ImagePositionPatient" if h.position is None else "ImageOrientationPatient"
            raise ValueError(f"{folder}: {h.path.name} has no {what}; a series needs both in every slice")
        if h.pixel_spacing is None:
            raise ValueError(f"{folder}: {h.path.name} has no PixelSpacing")
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise ValueError(
                f"{folder}: {h.path.name} is {h.rows}x{h.columns} (rows x columns) but {first.path.name} is "
                f"{first.rows}x{first.columns}; every slice of a series must have the same size"
            )
        if np.abs(np.subtract(h.orientation, first.orientation)).max() > ORIENTATION_TOL:
            raise ValueError(
                f"{folder}: {h.path.name} has ImageOrientationPatient {_fmt(h.orientation)} but {first.path.name} "
                f"has {_fmt(first.orientation)}; the slices of a series must be parallel"
            )
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=STEP_RTOL, atol=0):
            raise ValueError(
                f"{folder}: {h.path.name} has PixelSpacing {_fmt(h.pixel_spacing)} but {first.path.name} has "
                f"{_fmt(first.pixel_spacing)}; every slice of a series must have the same pixel spacing"
            )
    row = np.asarray(first.orientation[:3], dtype=np.float64)
    col = np.asarray(first.orientation[3:], dtype=np.float64)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise ValueError(f"{folder}: {first.path.name} has parallel row and column cosines {_fmt(first.orientation)}")
    normal /= norm
    pos = np.asarray([h.position for h in headers], dtype=np.float64)
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    ordered = tuple(headers[i] for i in order)
    pos, proj = pos[order], proj[order]
    sy, sx = (float(v) for v in first.pixel_spacing)  # type: ignore[misc]
    if len(ordered) > 1:
        steps = np.diff(proj)
        dup = int(np.argmin(steps))
        if steps[dup] < DUPLICATE_MM:
            raise ValueError(
                f"{folder}: {ordered[dup].path.name} and {ordered[dup + 1].path.name} share the position "
                f"{_fmt(pos[dup])} along the slice normal; remove the duplicate slice"
            )
        sz = float(np.median(steps))
        bad = np.flatnonzero(np.abs(steps - sz) > STEP_RTOL * sz)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{folder}: uneven slice spacing: {ordered[i].path.name} -> {ordered[i + 1].path.name} steps "
                f"{steps[i]:.4g} mm along the normal, the median step is {sz:.4g} mm (a missing slice or a mixed "
                f"series?); steps: {_fmt(steps[:20])}{' ...' if steps.size > 20 else ''}"
            )
        off = (pos - pos[0]) - np.outer(proj - proj[0], normal)
        dist = np.linalg.norm(off, axis=1)
        worst = int(np.argmax(dist))
        if dist[worst] > SHEAR_PIXELS * min(sy, sx):
            raise ValueError(
                f"{folder}: {ordered[worst].path.name} lies {dist[worst]:.4g} mm off the slice normal through "
                f"{ordered[0].path.name} (a sheared stack, e.g. a gantry tilt); it cannot be one voxel grid"
            )
    else:
        sz = float(first.thickness or 1.0)
    direction = np.stack([row, col, normal], axis=1)  # columns: row cosine, column cosine, normal
    return SeriesGeometry(
        headers=ordered,
        shape=(len(ordered), first.rows, first.columns),
        spacing=(sz, sy, sx),
        origin=tuple(float(v) for v in pos[0]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
    )


def read_pixels(geometry: SeriesGeometry, folder: str | os.PathLike) -> np.ndarray:
    """The series' pixels ``(Z, Y, X)`` in slice order, RescaleSlope / RescaleIntercept applied: int32 when every
    slope and intercept is an integer (CT in HU), float32 otherwise.

    Raises:
        ValueError: a file whose pixels cannot be decoded or are not one grayscale frame of the series' size.
    """
    heads = geometry.headers
    integer = all(float(h.slope).is_integer() and float(h.intercept).is_integer() for h in heads)
    out = np.empty(geometry.shape, dtype=np.int32 if integer else np.float32)
    for z, h in enumerate(heads):
        try:
            ds = pydicom.dcmread(h.path, force=not _has_magic(h.path))
            arr = ds.pixel_array
        except Exception as e:  # noqa: BLE001 - pydicom raises many kinds for undecodable pixel data
            raise ValueError(
                f"{folder}: {h.path.name}: cannot decode the pixel data ({type(e).__name__}: {e})"
            ) from None
        if arr.shape != geometry.shape[1:]:
            raise ValueError(
                f"{folder}: {h.path.name}: pixel data of shape {arr.shape}, expected one grayscale frame of "
                f"{geometry.shape[1:]} (rows, columns)"
            )
        if integer:
            out[z] = arr.astype(np.int32) * int(h.slope) + int(h.intercept)
        else:
            out[z] = arr.astype(np.float64) * h.slope + h.intercept
    return out


# ------------------------------------------------------------------------------------------------------- reader


def _label_file(labels_dir: Path, key: str) -> Path | None:
    for ending in ENDINGS:
        p = labels_dir / f"{key}{ending}"
        if p.is_file():
            return p
    return None


class DicomReader:
    """The DICOM-series reader (:class:`data_prep.readers.base.Reader`; the module docstring gives the layout)."""

    name = "dicom"

    def scan(self, root: str, split: str, options: dict[str, Any]) -> tuple[DatasetInfo, list[SourceVolume]]:
        """Find the series of ``split`` under ``root`` and check their geometry (headers only).

        Options: ``classes`` (names, values 1..C), ``label_kind``.

        Returns:
            The description (``format="dicom"``; ``source``: ``label_values`` {class: [values]}, ``series``
            {key: SeriesInstanceUID}, ``root``) and one :class:`SourceVolume` per series (``images`` = its folder,
            ``label`` = its label file).

        Raises:
            FileNotFoundError: ``root`` is not a folder or holds no DICOM image.
            ValueError: a bad series, classes or label file (the message names it); ``"train"`` without labels.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        top = Path(root)
        if not top.is_dir():
            raise FileNotFoundError(f"DICOM data root {top} is not a folder")
        labels_dir = top / LABELS_DIR
        series: dict[str, list[SliceHeader]] = {}
        for path in find_dicom_files(top, skip=[labels_dir]):
            h = read_header(path)
            if h is None:
                logger.debug("%s: not an image (no Rows or SeriesInstanceUID), skipped", path)
                continue
            series.setdefault(h.series_uid, []).append(h)
        if not series:
            raise FileNotFoundError(f"no DICOM image file under {top} (files with the DICM magic or a .dcm ending)")
        classes, label_kind, label_values, ignore_values = read_classes(top, options)

        folders = {uid: Path(os.path.commonpath([str(h.path.parent) for h in hs])) for uid, hs in series.items()}
        shared = {f for f, n in Counter(folders.values()).items() if n > 1}
        keys: dict[str, str] = {}
        for uid, folder in sorted(folders.items(), key=lambda t: (str(t[1]), t[0])):
            rel = folder.relative_to(top).as_posix()
            key = safe_key(uid) if folder in shared else safe_key(rel if rel != "." else top.resolve().name)
            key = key or "series"
            if key in keys.values():
                other = next(u for u, k in keys.items() if k == key)
                raise ValueError(
                    f"series {uid} in {folder} and series {other} in {folders[other]} get the same key {key!r}; "
                    "rename one of the folders"
                )
            keys[uid] = key
        modalities = set()
        sources: list[SourceVolume] = []
        labelled: dict[str, Path] = {}
        for uid, key in keys.items():
            folder = folders[uid]
            geo = series_geometry(series[uid], f"{folder} (series {uid})" if folder in shared else folder)
            lab = _label_file(labels_dir, key)
            if lab is not None:
                labelled[key] = lab
            modalities.add(geo.headers[0].modality)
            group = geo.headers[0].patient_id or safe_key(folder.relative_to(top).as_posix()) or key
            sources.append(
                SourceVolume(key=key, group=group, images=(str(folder),), label=None if lab is None else str(lab))
            )
        if labels_dir.is_dir():
            stray = [
                p.name
                for p in sorted(labels_dir.iterdir())
                if ending_of(p) and not p.name.startswith(".") and p.name[: -len(ending_of(p))] not in keys.values()
            ]
            if stray:
                close = difflib.get_close_matches(stray[0][: -len(ending_of(stray[0]))], list(keys.values()), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"{labels_dir}: label files {stray[:5]} match no series key{hint}; the keys are "
                    f"{sorted(keys.values())[:10]}"
                )
        if split == "train":
            if not labelled:
                raise ValueError(
                    f"split 'train' needs labels: no {labels_dir}/{{key}}.nii.gz|.nrrd|.mha for the series keys "
                    f"{sorted(keys.values())[:10]}; prepare split 'test' for images only"
                )
            sources = [s for s in sources if s.key in labelled]
        elif labelled:
            sources = [s for s in sources if s.key not in labelled]
            sources = [SourceVolume(s.key, s.group, s.images, None) for s in sources]
        modality = modalities.pop() if len(modalities) == 1 else ""
        info = DatasetInfo(
            classes=classes,
            label_kind=label_kind,
            channels=(modality or "image",),
            intensity=modality if modality in ("CT", "MR") else "other",
            format="dicom",
            name=top.resolve().name,
            source={
                "label_values": {c: list(label_values[c]) for c in classes},
                "ignore_values": ignore_values,
                "series": {k: uid for uid, k in keys.items() if k in {s.key for s in sources}},
                "root": str(top),
            },
        )
        return info, sources

    def load(self, source: SourceVolume, info: DatasetInfo) -> LoadedVolume:
        """Read one series (and its label) with its geometry.

        Returns:
            ``images`` ``(1, Z, Y, X)`` (int32 HU for CT, see :func:`read_pixels`), ``label`` as stored in the label
            file (``(Z, Y, X)``, integer) or None; ``extra``: ``modality``, ``series_uid``, ``slice_paths`` (the
            files in slice order).

        Raises:
            ValueError: a bad series, or a label that is not on the series' grid (both grids printed), not integer,
                or holds values of no class.
        """
        folder = Path(source.images[0])
        uid = (info.source.get("series") or {}).get(source.key)
        root = info.source.get("root")
        skip = [Path(root) / LABELS_DIR] if root else []
        all_heads = [h for h in (read_header(p) for p in find_dicom_files(folder, skip=skip)) if h is not None]
        heads = all_heads if uid is None else [h for h in all_heads if h.series_uid == uid]
        if uid is None and len({h.series_uid for h in heads}) > 1:
            raise ValueError(f"{folder}: holds several series; the dataset description names none for {source.key!r}")
        if not heads:
            raise FileNotFoundError(f"{folder}: no DICOM file of series {uid or source.key} (moved since the scan?)")
        where = f"{folder} (series {uid})" if uid is not None and len({h.series_uid for h in all_heads}) > 1 else folder
        geo = series_geometry(heads, where)
        pixels = read_pixels(geo, where)
        label = None
        if source.label is not None:
            label = self._load_label(Path(source.label), geo, pixels, info, where)
        return LoadedVolume(
            images=pixels[None],
            label=label,
            spacing=geo.spacing,
            origin=geo.origin,
            direction=geo.direction,
            slice_axis=0,
            extra={
                "modality": geo.headers[0].modality,
                "series_uid": geo.headers[0].series_uid,
                "slice_paths": [str(h.path) for h in geo.headers],
            },
        )

    @staticmethod
    def _load_label(
        path: Path, geo: SeriesGeometry, pixels: np.ndarray, info: DatasetInfo, folder: str | Path
    ) -> np.ndarray:
        lab = read_image(path)
        series = MedicalImage(pixels, geo.spacing, geo.origin, geo.direction)
        if lab.array.ndim != 3 or not series.same_grid(lab):
            raise ValueError(
                f"{path}: the label is not on the grid of its series {folder}: label {lab.describe()}; "
                f"series {series.describe()}"
            )
        arr = lab.array
        if arr.dtype.kind == "f":
            if not np.array_equal(arr, np.round(arr)):
                raise ValueError(f"{path}: label values must be integers, got non-integer {arr.dtype} values")
            arr = arr.astype(np.int64)
        elif arr.dtype.kind not in "iub":
            raise ValueError(f"{path}: label dtype {arr.dtype} is not an integer type")
        known = {0} | {int(v) for vals in info.source.get("label_values", {}).values() for v in vals}
        known |= {int(v) for v in info.source.get("ignore_values", ())}
        unknown = sorted(set(np.unique(arr).tolist()) - known)
        if unknown:
            raise ValueError(
                f"{path}: label values {unknown[:10]} belong to no class (known: {sorted(known)}); "
                f"fix the label or {CLASSES_JSON}"
            )
        return arr


# ------------------------------------------------------------------------------------------------------ writers


def _class_value(info: DatasetInfo, c: int) -> int:
    values = (info.source.get("label_values") or {}).get(info.classes[c])
    return int(values[0]) if values else c + 1


def write_prediction(
    masks: np.ndarray,
    info: DatasetInfo,
    key: str,
    out_dir: str | os.PathLike,
    probs: np.ndarray | None = None,
) -> Path:
    """Write the predictions of one series as NIfTI on its grid (spacing, origin, direction of the series).

    Exclusive classes: ``out_dir/{key}.nii.gz``, a label map (uint8, uint16 above 255) of each class's value in
    ``classes.json`` (the first value of a class with several). Overlapping classes: one uint8 0/1 mask per class,
    ``out_dir/{key}_{class}.nii.gz``. With ``probs``, also :func:`write_probabilities`. Every file is written
    atomically.

    Args:
        masks: bool ``(D, C, H, W)`` in WORK axes (the array is moved back with ``info.volumes[key].axes``).
        probs: float ``(D, C, H, W)`` or None.

    Returns:
        The label map (exclusive) or ``out_dir`` (overlapping: the files are named above).

    Raises:
        ValueError: an unknown key, a shape that is not the volume's, a volume without geometry.
    """
    vol = check_prediction(masks, info, key)
    if vol.origin is None or vol.direction is None:
        raise ValueError(f"{key}: the dataset description has no origin/direction for it (not a DICOM WORK?)")
    out_dir = Path(out_dir)
    _, spacing = source_geometry(vol)
    src = to_source_axes(np.asarray(masks).astype(bool), vol.axes)  # (Z, Y, X, C)
    if probs is not None:
        write_probabilities(probs, info, key, out_dir)
    if info.label_kind == "overlapping":
        for c, name in enumerate(info.classes):
            write_image(
                out_dir / f"{key}_{name}.nii.gz", src[..., c].astype(np.uint8), spacing, vol.origin, vol.direction
            )
        return out_dir
    values = [_class_value(info, c) for c in range(info.num_classes)]
    label = np.zeros(src.shape[:3], dtype=np.uint8 if max(values) < 256 else np.uint16)
    for c, v in enumerate(values):
        label[src[..., c]] = v
    return write_image(out_dir / f"{key}.nii.gz", label, spacing, vol.origin, vol.direction)


def _label_to_masks(label: np.ndarray, info: DatasetInfo, path: Path) -> np.ndarray:
    """Label values ``(Z, Y, X)`` -> bool ``(Z, Y, X, C)`` with ``info.source["label_values"]``."""
    table = info.source.get("label_values") or {}
    values = [table.get(c) or [c + 1] for c in info.classes]
    known = {0} | {int(v) for vals in values for v in vals} | {int(v) for v in info.source.get("ignore_values", ())}
    unknown = sorted(set(np.unique(label).tolist()) - known)
    if unknown:
        raise ValueError(f"{path}: label values {unknown[:10]} belong to no class (known: {sorted(known)})")
    return np.stack([np.isin(label, vals) for vals in values], axis=-1)


def read_prediction(path: str | os.PathLike, info: DatasetInfo, key: str) -> np.ndarray:
    """Read the predictions (or labels) of series ``key`` back into WORK axes.

    Args:
        path: a label map file, or a folder holding ``{key}.nii.gz`` (any ending of
            :data:`data_prep.readers.medical.ENDINGS`; a label map decoded with the classes' values, so the
            ``DATA_ROOT/labels`` folder reads too) or the per-class masks ``{key}_{class}.nii.gz``.

    Returns:
        bool ``(D, C, H, W)``.

    Raises:
        FileNotFoundError: no file for ``key`` (or a class file missing).
        ValueError: a file not on the volume's grid (both printed), or values of no class.
    """
    vol = info.volumes.get(key)
    if vol is None:
        raise ValueError(f"volume {key!r} is not in the dataset description (WORK/dataset.json)")
    shape, spacing = source_geometry(vol)
    path = Path(path)
    if path.is_dir():
        single = next((path / f"{key}{e}" for e in ENDINGS if (path / f"{key}{e}").is_file()), None)
        if single is None:
            files = [
                next((path / f"{key}_{c}{e}" for e in ENDINGS if (path / f"{key}_{c}{e}").is_file()), None)
                for c in info.classes
            ]
            missing = [c for c, f in zip(info.classes, files) if f is None]
            if len(missing) == len(files):
                raise FileNotFoundError(f"{path}: no {key}.nii.gz nor per-class files {key}_{{class}}.nii.gz")
            if missing:
                raise FileNotFoundError(f"{path}: per-class files of {key} missing for classes {missing}")
        else:
            files = [single]
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"prediction {path} not found")
    grid = MedicalImage(
        np.zeros(shape, np.uint8), spacing, vol.origin or (0.0,) * 3, vol.direction or (1.0, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    arrays = []
    for f in files:
        img = read_image(f)  # type: ignore[arg-type]
        if not grid.same_grid(img):
            raise ValueError(f"{f}: not on the grid of volume {key}: file {img.describe()}; volume {grid.describe()}")
        arrays.append(img.array)
    if len(arrays) == 1:
        src = _label_to_masks(arrays[0], info, files[0])  # type: ignore[arg-type]
    else:
        src = np.stack([a != 0 for a in arrays], axis=-1)
    return np.ascontiguousarray(to_work_axes(src, vol.axes))
