"""Folders of 2D slices (PNG / TIFF, 8 or 16 bit): one folder per volume, a label folder beside it.

Layout::

    DATA_ROOT/images/{volume}/{slice files}.png|.tif|.tiff   the slices of one volume, in the natural order of
                                                              their names (slice_2 before slice_10)
    DATA_ROOT/labels/{volume}/{same names}                   the labels (split "train"), matched by name without
                                                              the ending (0001.tif <-> 0001.png)
    DATA_ROOT/dataset.json                                   optional, small:
        {"classes": ["vessel"], "label_kind": "exclusive"|"overlapping", "spacing": [sz, sy, sx]
         (or {volume: [sz, sy, sx]}), "intensity": "CT"|"MR"|"other", "groups": {volume: group}}

``options`` (from the command line) override the JSON: ``classes``, ``label_kind``, ``spacing``, ``intensity``.
The spacing must come from one of them (there is none in a PNG or TIFF); the geometry is origin ``(0, 0, 0)`` and
the identity direction; the slice axis is 0 (the file order).

Label values (:func:`label_values`, also what :func:`write_prediction` writes, so a written prediction reads back
as the labels it came from):

- ``exclusive``: pixel value ``c + 1`` for class ``c``, 0 background; with one class, 255 counts as class 1 too
  (binary masks stored 0/255), and predictions of one class are written 0/255;
- ``overlapping``: a bit field, bit ``c`` set where class ``c`` is present (at most 16 classes: 16-bit PNG).

Split ``"train"``: every volume with its label folder (a volume without one is an error); ``"test"``: every volume,
labels not read. Predictions: ``out_dir/{volume}/{name}.png`` for each source slice ``{name}.{ending}``, 8-bit, or
16-bit when the values need it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.io import atomic_path
from data_prep.dataset import DatasetInfo
from data_prep.readers.base import (
    LoadedVolume,
    SourceVolume,
    check_prediction,
    safe_key,
    to_source_axes,
    to_work_axes,
    write_probabilities,
)

IMAGES_DIR = "images"
LABELS_DIR = "labels"
DATASET_JSON = "dataset.json"
#: Slice file endings (lower case).
SLICE_ENDINGS: tuple[str, ...] = (".png", ".tif", ".tiff")
#: The ending of written predictions.
PRED_SUFFIX = ".png"
#: Most overlapping classes a 16-bit bit field holds.
MAX_OVERLAPPING_SLICES = 16
#: The keys ``dataset.json`` may hold.
JSON_KEYS: tuple[str, ...] = ("classes", "label_kind", "spacing", "intensity", "groups", "name")


# ------------------------------------------------------------------------------------------------------ slices


def natural_key(name: str) -> tuple:
    """Sort key comparing runs of digits as numbers and the rest case-insensitively.

    >>> sorted(["slice_10.png", "slice_2.png", "Slice_1.png"], key=natural_key)
    ['Slice_1.png', 'slice_2.png', 'slice_10.png']
    """
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), p) if i % 2 else (1, p.lower(), p) for i, p in enumerate(parts))


def slice_files(folder: str | os.PathLike) -> list[Path]:
    """The slice files of ``folder`` (endings :data:`SLICE_ENDINGS`, hidden files left out) in natural order.

    Raises:
        ValueError: two files share a name without their ending (``0001.png`` and ``0001.tif``).
    """
    folder = Path(folder)
    files = [
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLICE_ENDINGS
    ]
    files.sort(key=lambda p: natural_key(p.name))
    stems: dict[str, str] = {}
    for p in files:
        if p.stem in stems:
            raise ValueError(f"{folder}: {stems[p.stem]} and {p.name} are the same slice name; keep one")
        stems[p.stem] = p.name
    return files


def label_values(num_classes: int, label_kind: str) -> list[list[int]]:
    """The label values of each class (see the module docstring).

    >>> label_values(1, "exclusive"), label_values(2, "exclusive"), label_values(2, "overlapping")
    ([[1, 255]], [[1], [2]], [[1, 3], [2, 3]])
    """
    if label_kind == "overlapping":
        return [[v for v in range(1, 2**num_classes) if v >> c & 1] for c in range(num_classes)]
    if num_classes == 1:
        return [[1, 255]]
    return [[c + 1] for c in range(num_classes)]


def decode_label(label: np.ndarray, num_classes: int, label_kind: str) -> np.ndarray:
    """Label values ``(..., H, W)`` -> bool ``(..., H, W, C)`` (the inverse of :func:`encode_masks`)."""
    label = np.asarray(label)
    if label_kind == "overlapping":
        return np.stack([(label >> c) & 1 != 0 for c in range(num_classes)], axis=-1)
    if num_classes == 1:
        return (label == 1)[..., None] | (label == 255)[..., None]
    return np.stack([label == c + 1 for c in range(num_classes)], axis=-1)


def encode_masks(masks: np.ndarray, num_classes: int, label_kind: str) -> np.ndarray:
    """bool ``(..., H, W, C)`` -> label values ``(..., H, W)``: uint8, or uint16 when the values need it.

    Raises:
        ValueError: more overlapping classes than a 16-bit image holds.
    """
    masks = np.asarray(masks, dtype=bool)
    if label_kind == "overlapping":
        if num_classes > MAX_OVERLAPPING_SLICES:
            raise ValueError(f"at most {MAX_OVERLAPPING_SLICES} overlapping classes fit a 16-bit PNG bit field")
        dt = np.uint8 if num_classes <= 8 else np.uint16
        out = np.zeros(masks.shape[:-1], dtype=dt)
        for c in range(num_classes):
            out |= masks[..., c].astype(dt) << dt(c)
        return out
    if num_classes == 1:
        return masks[..., 0].astype(np.uint8) * np.uint8(255)
    out = np.zeros(masks.shape[:-1], dtype=np.uint8 if num_classes < 256 else np.uint16)
    for c in range(num_classes):
        out[masks[..., c]] = c + 1
    return out


def read_slice(path: Path, expected: tuple[int, int] | None = None) -> np.ndarray:
    """One slice as stored (``cv2.IMREAD_UNCHANGED``): ``(H, W)`` uint8 / uint16 / float32.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not decodable, not single-channel, or not of ``expected`` ``(H, W)``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"slice {path} not found")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: cannot be read as an image (truncated or not a PNG/TIFF); re-export or remove it")
    if img.ndim != 2:
        raise ValueError(f"{path}: shape {img.shape}; expected a single-channel (grayscale) slice (H, W)")
    if expected is not None and img.shape != tuple(expected):
        raise ValueError(
            f"{path}: {img.shape[0]}x{img.shape[1]} (HxW), but the folder's first slice is "
            f"{expected[0]}x{expected[1]}; every slice of a volume must have the same size"
        )
    return img


def _spacing(value: Any, where: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(v > 0 and np.isfinite(v) for v in out):
        raise ValueError(f"{where}: spacing must be three positive numbers [sz, sy, sx] (mm), got {value!r}")
    return out  # type: ignore[return-value]


def read_config(root: str | os.PathLike) -> dict[str, Any]:
    """``DATA_ROOT/dataset.json`` as a dict (``{}`` when absent).

    Raises:
        ValueError: not valid JSON, not an object, or an unknown key (close matches named).
    """
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object with keys among {list(JSON_KEYS)}")
    for k in raw:
        if k not in JSON_KEYS:
            close = difflib.get_close_matches(k, JSON_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{path}: unknown key {k!r} (known: {list(JSON_KEYS)}){hint}")
    return raw


class SliceFolderReader:
    """The folders-of-2D-slices reader (:class:`data_prep.readers.base.Reader`; layout in the module docstring)."""

    name = "slices"

    def scan(self, root: str, split: str, options: dict[str, Any]) -> tuple[DatasetInfo, list[SourceVolume]]:
        """Find the volumes (folders under ``images/``) of ``split``, their slices and labels (no pixels read).

        Returns:
            The description (``format="slices"``; ``source``: ``label_values`` {class: [values]}, ``suffix``
            (of written predictions), ``slices`` {key: [file names in order]}, ``spacing`` {key: [sz, sy, sx]})
            and one :class:`SourceVolume` per volume (``images``: its folder; ``label``: its label folder).

        Raises:
            FileNotFoundError: no ``images/`` folder, or (``"train"``) a label folder missing.
            ValueError: no classes or no spacing (both places named), an empty folder, label names that differ
                from the image names (the first missing ones named), a bad ``dataset.json``.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        top = Path(root)
        images_dir = top / IMAGES_DIR
        if not images_dir.is_dir():
            raise FileNotFoundError(f"{images_dir} not found: a slices dataset holds images/{{volume}}/{{slices}}")
        cfg = read_config(top)
        json_path = top / DATASET_JSON
        classes = options.get("classes") or cfg.get("classes")
        if not classes:
            raise ValueError(f'no classes: give them in {json_path} ("classes": [...]) or with the classes option')
        classes = tuple(str(c) for c in classes)
        label_kind = str(options.get("label_kind") or cfg.get("label_kind") or "exclusive")
        if label_kind == "overlapping" and len(classes) > MAX_OVERLAPPING_SLICES:
            raise ValueError(
                f"{len(classes)} overlapping classes: a 16-bit slice bit field holds at most {MAX_OVERLAPPING_SLICES}"
            )
        if options.get("spacing") is not None:
            spacing_of: Any = _spacing(options["spacing"], "the spacing option")
        elif cfg.get("spacing") is not None:
            sp = cfg["spacing"]
            spacing_of = (
                {str(k): _spacing(v, f"{json_path} (spacing of {k})") for k, v in sp.items()}
                if isinstance(sp, dict)
                else _spacing(sp, str(json_path))
            )
        else:
            raise ValueError(
                f"no spacing for the slices under {top}: there is none in PNG/TIFF files; give it in {json_path} "
                '("spacing": [sz, sy, sx] mm) or with the spacing option (e.g. --spacing 0.05 0.05 0.05)'
            )
        groups = {str(k): str(v) for k, v in (cfg.get("groups") or {}).items()}
        names = sorted(
            (d.name for d in images_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), key=natural_key
        )
        if not names:
            raise FileNotFoundError(f"{images_dir}: no volume folder (images/{{volume}}/{{slices}})")
        labels_dir = top / LABELS_DIR
        if split == "train":
            if not labels_dir.is_dir():
                raise FileNotFoundError(
                    f"label folder {labels_dir} not found: split 'train' needs labels/{{volume}}/ beside images/; "
                    "prepare split 'test' for images only"
                )
            missing = [n for n in names if not (labels_dir / n).is_dir()]
            if missing:
                raise FileNotFoundError(f"{labels_dir}: no label folder for the volumes {missing[:10]}")
        keys: dict[str, str] = {}
        sources: list[SourceVolume] = []
        files: dict[str, list[str]] = {}
        spacing: dict[str, list[float]] = {}
        for name in names:
            key = safe_key(name) or "volume"
            if key in keys:
                raise ValueError(
                    f"{images_dir}: folders {keys[key]!r} and {name!r} get the same key {key!r}; rename one"
                )
            keys[key] = name
            folder = images_dir / name
            slices = slice_files(folder)
            if not slices:
                raise ValueError(f"{folder}: no slice file ({', '.join(SLICE_ENDINGS)})")
            label = None
            if split == "train":
                label = labels_dir / name
                self._check_names(slices, slice_files(label), label)
            if isinstance(spacing_of, dict):
                if name not in spacing_of:
                    raise ValueError(f"{json_path}: no spacing for volume {name!r} (spacing is given per volume)")
                spacing[key] = list(spacing_of[name])
            else:
                spacing[key] = list(spacing_of)
            files[key] = [p.name for p in slices]
            sources.append(
                SourceVolume(key, groups.get(name, name), (str(folder),), None if label is None else str(label))
            )
        info = DatasetInfo(
            classes=classes,
            label_kind=label_kind,
            channels=("image",),
            intensity=str(options.get("intensity") or cfg.get("intensity") or "other"),
            format="slices",
            name=str(cfg.get("name") or top.resolve().name),
            source={
                "label_values": dict(zip(classes, label_values(len(classes), label_kind))),
                "suffix": PRED_SUFFIX,
                "slices": files,
                "spacing": spacing,
            },
        )
        return info, sources

    @staticmethod
    def _check_names(images: Sequence[Path], labels: Sequence[Path], label_dir: Path) -> None:
        have = {p.stem for p in labels}
        want = {p.stem for p in images}
        missing = [p.name for p in images if p.stem not in have]
        extra = [p.name for p in labels if p.stem not in want]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"no label for the slices {missing[:5]}")
            if extra:
                parts.append(f"labels without a slice {extra[:5]}")
            raise ValueError(f"{label_dir}: the label names differ from the image names: {'; '.join(parts)}")

    def load(self, source: SourceVolume, info: DatasetInfo) -> LoadedVolume:
        """Read one volume's slices (and labels) in order.

        Returns:
            ``images`` ``(1, Z, Y, X)`` of the slices' dtype, ``label`` ``(Z, Y, X)`` as stored (uint8 / uint16) or
            None, the spacing of the scan, origin ``(0, 0, 0)``, identity direction, slice axis 0.

        Raises:
            ValueError: an unreadable slice, mixed sizes or dtypes (the file named), a label that is not integer or
                holds values of no class.
        """
        folder = Path(source.images[0])
        names = (info.source.get("slices") or {}).get(source.key)
        paths = [folder / n for n in names] if names else slice_files(folder)
        if not paths:
            raise ValueError(f"{folder}: no slice file ({', '.join(SLICE_ENDINGS)})")
        first = read_slice(paths[0])
        images = np.empty((1, len(paths), *first.shape), dtype=first.dtype)
        images[0, 0] = first
        for z, p in enumerate(paths[1:], start=1):
            img = read_slice(p, first.shape)
            if img.dtype != first.dtype:
                raise ValueError(f"{p}: dtype {img.dtype}, but {paths[0].name} is {first.dtype}; mixed bit depths")
            images[0, z] = img
        label = None
        if source.label is not None:
            label = self._load_label(Path(source.label), paths, first.shape, info)
        sp = (info.source.get("spacing") or {}).get(source.key)
        if sp is None:
            raise ValueError(f"{source.key}: the dataset description gives no spacing for it (scan it again)")
        return LoadedVolume(
            images=images,
            label=label,
            spacing=tuple(float(v) for v in sp),  # type: ignore[arg-type]
            origin=(0.0, 0.0, 0.0),
            direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
            slice_axis=0,
            extra={"slice_paths": [str(p) for p in paths]},
        )

    @staticmethod
    def _load_label(label_dir: Path, paths: Sequence[Path], shape: tuple[int, ...], info: DatasetInfo) -> np.ndarray:
        if not label_dir.is_dir():
            raise FileNotFoundError(f"label folder {label_dir} not found")
        by_stem = {p.stem: p for p in slice_files(label_dir)}
        missing = [p.name for p in paths if p.stem not in by_stem]
        if missing:
            raise ValueError(f"{label_dir}: no label for the slices {missing[:5]}")
        slices = []
        for p in paths:
            lab = read_slice(by_stem[p.stem], tuple(shape))  # type: ignore[arg-type]
            check_label_values(lab, info.num_classes, info.label_kind, by_stem[p.stem])
            slices.append(lab)
        kinds = {s.dtype for s in slices}
        return np.stack(slices).astype(max(kinds, key=lambda d: d.itemsize), copy=False)


def check_label_values(label: np.ndarray, num_classes: int, label_kind: str, path: str | os.PathLike) -> None:
    """Check that a label slice holds integer values of the classes (module docstring).

    Raises:
        ValueError: a float label, or values of no class (the file and the values named).
    """
    if label.dtype.kind not in "ui":
        raise ValueError(f"{path}: label dtype {label.dtype}; expected 8- or 16-bit integer values")
    n = num_classes
    if label_kind == "overlapping":
        bad = label > 2**n - 1
        allowed = f"bits 0..{n - 1} (values 0..{2**n - 1})"
    elif n == 1:
        bad = (label > 1) & (label != 255)
        allowed = "0, 1 or 255"
    else:
        bad = label > n
        allowed = f"0..{n}"
    if bad.any():
        values = sorted(set(np.unique(label[bad]).tolist()))
        raise ValueError(
            f"{path}: label values {values[:10]} belong to no class ({label_kind} labels of {n} classes hold {allowed})"
        )


def _volume_names(info: DatasetInfo, key: str, n: int) -> list[str]:
    names = (info.source.get("slices") or {}).get(key)
    if not names:
        return [f"slice_{z:04d}" for z in range(n)]
    if len(names) != n:
        raise ValueError(f"{key}: {n} slices to write but the dataset description lists {len(names)} source slices")
    return [Path(s).stem for s in names]


def write_prediction(
    masks: np.ndarray,
    info: DatasetInfo,
    key: str,
    out_dir: str | os.PathLike,
    probs: np.ndarray | None = None,
) -> Path:
    """Write one volume's predictions as ``out_dir/{key}/{name}.png``, one per source slice ``{name}.{ending}``,
    in the label convention of the input (:func:`encode_masks`), each file atomically.

    Args:
        masks: bool ``(D, C, H, W)`` in WORK axes (moved back with ``info.volumes[key].axes``).
        probs: float ``(D, C, H, W)`` or None; when given also ``out_dir/{key}_probs.npz``
            (:func:`write_probabilities`).

    Returns:
        The folder ``out_dir/{key}``.

    Raises:
        ValueError: an unknown key or a shape that is not the volume's.
    """
    vol = check_prediction(masks, info, key)
    src = to_source_axes(np.asarray(masks), vol.axes)  # (Z, Y, X, C)
    values = encode_masks(src, info.num_classes, info.label_kind)
    folder = Path(out_dir) / key
    for z, name in enumerate(_volume_names(info, key, values.shape[0])):
        path = folder / f"{name}{PRED_SUFFIX}"
        with atomic_path(path, suffix=PRED_SUFFIX) as tmp:
            if not cv2.imwrite(str(tmp), values[z]):
                raise ValueError(f"{path}: OpenCV could not write the slice")
    if probs is not None:
        write_probabilities(probs, info, key, out_dir)
    return folder


def read_prediction(path: str | os.PathLike, info: DatasetInfo, key: str) -> np.ndarray:
    """Read one volume's predictions (or its labels) back into WORK axes.

    Args:
        path: the volume's folder of slices, or a folder holding it as ``{key}/`` (a prediction folder; the label
            folder ``DATA_ROOT/labels`` when ``key`` is the volume's folder name). Slices are matched to the
            source slices by name without the ending.

    Returns:
        bool ``(D, C, H, W)``.

    Raises:
        FileNotFoundError: the folder or a slice is missing.
        ValueError: a slice of the wrong size, or values of no class.
    """
    vol = info.volumes.get(key)
    if vol is None:
        raise ValueError(f"volume {key!r} is not in the dataset description (WORK/dataset.json)")
    folder = Path(path)
    if (folder / key).is_dir():
        folder = folder / key
    if not folder.is_dir():
        raise FileNotFoundError(f"prediction folder {folder} not found")
    inv_shape = [0, 0, 0]
    for i, a in enumerate(vol.axes):
        inv_shape[a] = vol.shape[i]
    by_stem = {p.stem: p for p in slice_files(folder)}
    names = _volume_names(info, key, inv_shape[0])
    missing = [n for n in names if n not in by_stem]
    if missing:
        raise FileNotFoundError(f"{folder}: no slice for {missing[:5]} ({len(missing)} of {len(names)} missing)")
    label = np.stack([read_slice(by_stem[n], (inv_shape[1], inv_shape[2])) for n in names])
    for n, lab in zip(names, label):
        check_label_values(lab, info.num_classes, info.label_kind, by_stem[n])
    src = decode_label(label, info.num_classes, info.label_kind)
    return np.ascontiguousarray(to_work_axes(src, vol.axes))
