"""The dataset description (``WORK/dataset.json``): classes, label kind, channels, intensity, geometry per volume.

Every stage takes the class list and the channel count from here instead of a constant, so one pipeline serves
the Kaggle layout (three overlapping classes, one MR channel) and any other slice dataset (nnU-Net, DICOM, folders
of slices; 1 to 64 classes, overlapping or exclusive). A pure module: :func:`data_prep.work.read_dataset` and
:func:`data_prep.work.write_dataset` read and write the file.

Masks in WORK (``WORK/masks/{volume}.npy``, ``(D, H, W)``):

- ``overlapping`` classes: a bit field, bit ``c`` set where class ``classes[c]`` is present; the smallest unsigned
  dtype that holds the classes (uint8 up to 8, uint16, uint32, uint64 up to 64);
- ``exclusive`` classes: a label map, 0 = background, ``c + 1`` = class ``classes[c]`` (uint8 up to 255 classes).

:meth:`DatasetInfo.unpack` turns either into binary channels ``(..., C, H, W)``, the form every stage works on.

Volumes in WORK are uint16 ``(D, H, W)``, axis 0 the slice axis (2.5D stacks are taken along it). A reader that
meets other values (CT in Hounsfield units, floats) stores ``round((value - offset) / scale)`` and records
``offset`` and ``scale`` per volume (:class:`VolumeInfo`), so ``value = stored * scale + offset``.

>>> info = DatasetInfo(classes=("a", "b", "c"), label_kind="exclusive")
>>> lab = np.array([[[0, 1], [3, 2]]], np.uint8)
>>> info.unpack(lab)[0].tolist()
[[[0, 1], [0, 0]], [[0, 0], [0, 1]], [[0, 0], [1, 0]]]
>>> bool((info.pack(info.unpack(lab)) == lab).all())
True
>>> DatasetInfo(classes=tuple("abcdefghij")).mask_dtype
dtype('uint16')
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from data_prep.constants import CLASSES

LABEL_KINDS: tuple[str, ...] = ("overlapping", "exclusive")
INTENSITY_KINDS: tuple[str, ...] = ("CT", "MR", "other")
FORMATS: tuple[str, ...] = ("kaggle", "nnunet", "dicom", "slices")
#: Most classes an overlapping bit field holds (uint64).
MAX_OVERLAPPING: int = 64
#: Most classes an exclusive label map holds (uint16 label values).
MAX_EXCLUSIVE: int = 65535
#: Slice thickness of the Kaggle layout, whose file names give only the in-plane spacing (mm).
KAGGLE_Z_SPACING_MM: float = 3.0
DATASET_VERSION = 1
#: Columns of the WORK tables that sit beside per-class columns (a class may not take these names).
RESERVED_NAMES: frozenset[str] = frozenset({"id", "case", "day", "slice", "case_day", "z", "fold", "path", "depth"})


def _choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}{hint}")
    return value


def mask_dtype(num_classes: int, label_kind: str = "overlapping") -> np.dtype:
    """The dtype of WORK masks for ``num_classes`` classes of ``label_kind``.

    >>> mask_dtype(3), mask_dtype(9), mask_dtype(33), mask_dtype(300, "exclusive")
    (dtype('uint8'), dtype('uint16'), dtype('uint64'), dtype('uint16'))
    """
    _choice(label_kind, LABEL_KINDS, "label_kind")
    if num_classes < 1:
        raise ValueError(f"a dataset needs at least one class, got {num_classes}")
    if label_kind == "exclusive":
        if num_classes > MAX_EXCLUSIVE:
            raise ValueError(f"at most {MAX_EXCLUSIVE} exclusive classes, got {num_classes}")
        return np.dtype(np.uint8 if num_classes < 256 else np.uint16)
    if num_classes > MAX_OVERLAPPING:
        raise ValueError(
            f"at most {MAX_OVERLAPPING} overlapping classes fit a bit field, got {num_classes}; "
            "use label_kind='exclusive' if the classes do not overlap"
        )
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if num_classes <= np.dtype(dt).itemsize * 8:
            return np.dtype(dt)
    raise AssertionError("unreachable")


def pack_masks(masks: np.ndarray, num_classes: int, label_kind: str = "overlapping") -> np.ndarray:
    """Binary channels ``(..., C, H, W)`` -> the WORK mask ``(..., H, W)`` (see the module docstring).

    For ``exclusive`` classes a pixel in several channels takes the last of them (readers never produce that).

    Raises:
        ValueError: ``C != num_classes``.
    """
    masks = np.asarray(masks)
    if masks.ndim < 3 or masks.shape[-3] != num_classes:
        raise ValueError(f"masks must be (..., {num_classes}, H, W), got shape {masks.shape}")
    dt = mask_dtype(num_classes, label_kind)
    out = np.zeros(masks.shape[:-3] + masks.shape[-2:], dtype=dt)
    for c in range(num_classes):
        on = masks[..., c, :, :] != 0
        if label_kind == "exclusive":
            out[on] = c + 1
        else:
            out |= on.astype(dt) << dt.type(c)
    return out


def unpack_masks(packed: np.ndarray, num_classes: int, label_kind: str = "overlapping") -> np.ndarray:
    """The WORK mask ``(..., H, W)`` -> uint8 binary channels ``(..., C, H, W)`` (0/1, class order).

    Raises:
        ValueError: fewer than two dimensions.
    """
    packed = np.asarray(packed)
    if packed.ndim < 2:
        raise ValueError(f"a mask must be (..., H, W), got shape {packed.shape}")
    _choice(label_kind, LABEL_KINDS, "label_kind")
    if label_kind == "exclusive":
        values = np.arange(1, num_classes + 1, dtype=np.int64).reshape((num_classes, 1, 1))
        return (packed[..., None, :, :].astype(np.int64, copy=False) == values).astype(np.uint8)
    dt = packed.dtype if packed.dtype.kind == "u" else np.dtype(np.uint64)
    bits = np.arange(num_classes, dtype=dt).reshape((num_classes, 1, 1))
    return ((packed[..., None, :, :].astype(dt, copy=False) >> bits) & dt.type(1)).astype(np.uint8)


@dataclass(frozen=True)
class VolumeInfo:
    """Geometry and provenance of one WORK volume (``WORK/volumes/{key}.npy``).

    Attributes:
        shape: ``(D, H, W)`` as stored in WORK (axis 0 = the slice axis of the 2.5D stacks).
        spacing: ``(sz, sy, sx)`` mm along the WORK axes.
        group: the patient (or other unit) the splits keep together.
        source: the file or folder it was read from.
        origin: the source image's origin (``(x, y, z)`` mm, SimpleITK's LPS convention), None when unknown.
        direction: the source image's direction cosines, 9 values row-major (SimpleITK), None when unknown.
        axes: WORK axis ``i`` is axis ``axes[i]`` of the source array in SimpleITK's numpy order ``(z, y, x)``;
            ``(0, 1, 2)`` when the source's slice axis is already first.
        offset, scale: source intensity = ``stored * scale + offset``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    group: str
    source: str | None = None
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    axes: tuple[int, int, int] = (0, 1, 2)
    offset: float = 0.0
    scale: float = 1.0

    def to_json(self) -> dict[str, Any]:
        d = {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "group": self.group,
            "source": self.source,
            "origin": None if self.origin is None else list(self.origin),
            "direction": None if self.direction is None else list(self.direction),
            "axes": list(self.axes),
            "offset": self.offset,
            "scale": self.scale,
        }
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VolumeInfo:
        return cls(
            shape=tuple(int(v) for v in d["shape"]),
            spacing=tuple(float(v) for v in d["spacing"]),
            group=str(d["group"]),
            source=d.get("source"),
            origin=None if d.get("origin") is None else tuple(float(v) for v in d["origin"]),
            direction=None if d.get("direction") is None else tuple(float(v) for v in d["direction"]),
            axes=tuple(int(v) for v in d.get("axes", (0, 1, 2))),
            offset=float(d.get("offset", 0.0)),
            scale=float(d.get("scale", 1.0)),
        )


@dataclass(frozen=True)
class DatasetInfo:
    """What a WORK folder holds (``WORK/dataset.json``).

    Attributes:
        classes: class names in channel order (identifiers: letters, digits, ``_``).
        label_kind: ``"overlapping"`` (bit-field masks, several classes per pixel) or ``"exclusive"`` (label map).
        channels: the image channels (modalities), e.g. ``("MR",)`` or ``("T1", "T2")``; WORK holds channel 0 as
            ``volumes/{key}.npy`` and channel ``k > 0`` as ``volumes/{key}_ch{k}.npy``.
        intensity: ``"CT"``, ``"MR"`` or ``"other"`` (what normalisation suits it).
        format: the reader that made WORK: ``kaggle``, ``nnunet``, ``dicom``, ``slices``.
        name: a free name.
        volumes: ``{volume key: VolumeInfo}``; empty for the Kaggle layout's default description.
        source: what the writer of predictions needs from the input format (nnU-Net: ``labels``,
            ``regions_class_order``, ``file_ending``; slices: ``suffix``), free form.
    """

    classes: tuple[str, ...] = CLASSES
    label_kind: str = "overlapping"
    channels: tuple[str, ...] = ("MR",)
    intensity: str = "MR"
    format: str = "kaggle"
    name: str = "uwmgi"
    volumes: dict[str, VolumeInfo] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("a dataset needs at least one class")
        bad = [c for c in self.classes if not str(c).replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"class names must be letters, digits and '_' (they name columns), got {bad}")
        reserved = [c for c in self.classes if c in RESERVED_NAMES]
        if reserved:
            raise ValueError(f"class names {reserved} are column names of WORK tables; rename them")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique, got {list(self.classes)}")
        _choice(self.label_kind, LABEL_KINDS, "label_kind")
        _choice(self.intensity, INTENSITY_KINDS, "intensity")
        _choice(self.format, FORMATS, "format")
        if not self.channels:
            raise ValueError("a dataset needs at least one image channel")
        mask_dtype(len(self.classes), self.label_kind)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def mask_dtype(self) -> np.dtype:
        return mask_dtype(self.num_classes, self.label_kind)

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """A WORK mask ``(..., H, W)`` -> uint8 ``(..., C, H, W)`` binary channels."""
        return unpack_masks(packed, self.num_classes, self.label_kind)

    def pack(self, masks: np.ndarray) -> np.ndarray:
        """Binary channels ``(..., C, H, W)`` -> the WORK mask ``(..., H, W)`` of :attr:`mask_dtype`."""
        return pack_masks(masks, self.num_classes, self.label_kind)

    def spacing(self, key: str, default_hw: tuple[float, float] | None = None) -> tuple[float, float, float]:
        """``(sz, sy, sx)`` mm of volume ``key``; for a description without per-volume geometry (the Kaggle
        default) ``(3.0, *default_hw)``.

        Raises:
            KeyError: an unknown volume and no ``default_hw``.
        """
        if key in self.volumes:
            return self.volumes[key].spacing
        if default_hw is None:
            raise KeyError(f"volume {key!r} is not in the dataset description (WORK/dataset.json)")
        return (KAGGLE_Z_SPACING_MM, float(default_hw[0]), float(default_hw[1]))

    def with_volumes(self, volumes: Mapping[str, VolumeInfo]) -> DatasetInfo:
        return replace(self, volumes=dict(volumes))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": DATASET_VERSION,
            "name": self.name,
            "format": self.format,
            "classes": list(self.classes),
            "label_kind": self.label_kind,
            "channels": list(self.channels),
            "intensity": self.intensity,
            "source": self.source,
            "volumes": {k: v.to_json() for k, v in self.volumes.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "dataset.json") -> DatasetInfo:
        """Build from the JSON dict; ``where`` names the file in errors.

        Raises:
            ValueError: a missing or invalid field (the message names ``where``).
        """
        try:
            return cls(
                classes=tuple(str(c) for c in d["classes"]),
                label_kind=str(d.get("label_kind", "overlapping")),
                channels=tuple(str(c) for c in d.get("channels", ("MR",))),
                intensity=str(d.get("intensity", "other")),
                format=str(d.get("format", "kaggle")),
                name=str(d.get("name", "")),
                volumes={str(k): VolumeInfo.from_json(v) for k, v in (d.get("volumes") or {}).items()},
                source=dict(d.get("source") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: invalid dataset description ({type(e).__name__}: {e})") from None


#: The description of a Kaggle-layout WORK (also what a WORK without ``dataset.json`` is taken to be).
KAGGLE = DatasetInfo()


def class_columns(prefix: str, classes: Sequence[str]) -> list[str]:
    """Per-class column names, e.g. ``has_large_bowel``.

    >>> class_columns("has_", ("a", "b"))
    ['has_a', 'has_b']
    """
    return [f"{prefix}{c}" for c in classes]
