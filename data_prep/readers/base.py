"""What every reader of an input format gives the prepare engine (:mod:`data_prep.prepare_volumes`).

A reader knows one input layout (nnU-Net raw, DICOM series, folders of 2D slices; the Kaggle layout keeps its own
path in :mod:`data_prep.prepare`). It has two steps:

1. ``scan(root, split, options) -> (DatasetInfo, [SourceVolume])``: find the volumes and the classes without
   reading pixels (cheap, done once); the description has no per-volume geometry yet;
2. ``load(source, info) -> LoadedVolume``: read one volume (all its channels and its label) with its geometry.

The engine turns each :class:`LoadedVolume` into WORK files: it moves the slice axis first, maps intensities to
uint16 (recording ``offset``/``scale``), turns the label into the WORK mask with ``info.source["label_values"]``
(class ``c`` = voxels whose label value is in ``label_values[c]``) and records a
:class:`data_prep.dataset.VolumeInfo`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.io import atomic_write
from data_prep.dataset import DatasetInfo, VolumeInfo


@dataclass(frozen=True)
class SourceVolume:
    """One volume of the input, before reading.

    Attributes:
        key: its WORK key (letters, digits, ``_``, ``-``, ``.``), unique in the dataset; slice ids are
            ``{key}_slice_{z:04d}``.
        group: the patient it belongs to (splits keep a group on one side).
        images: one path per image channel (a file, or a folder of slices / DICOM files).
        label: the label volume (or folder), None when unlabelled.
    """

    key: str
    group: str
    images: tuple[str, ...]
    label: str | None = None


@dataclass
class LoadedVolume:
    """One volume read into memory, arrays in SimpleITK's numpy order ``(z, y, x)``.

    Attributes:
        images: ``(K, Z, Y, X)`` one array per channel, any real dtype (CT in HU, MR counts, floats).
        label: integer ``(Z, Y, X)`` label values (as in the source file), or None.
        spacing: ``(sz, sy, sx)`` mm of the array axes.
        origin: ``(x, y, z)`` mm (SimpleITK / LPS), None when the format has none.
        direction: 9 direction cosines row-major (SimpleITK), None when the format has none.
        slice_axis: the acquisition's slice axis among the array axes (0, 1 or 2); the engine uses it unless the
            user chose one.
        extra: reader-specific facts worth recording (e.g. the DICOM modality).
    """

    images: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    slice_axis: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Reader(Protocol):
    """An input format (see the module docstring)."""

    name: str

    def scan(self, root: str, split: str, options: dict[str, Any]) -> tuple[DatasetInfo, Sequence[SourceVolume]]:
        """Find the volumes of ``split`` (``"train"``: labelled; ``"test"``: images only) under ``root``."""
        ...

    def load(self, source: SourceVolume, info: DatasetInfo) -> LoadedVolume:
        """Read one volume; errors name the file and what is wrong."""
        ...


# ---------------------------------------------------------------- array helpers of every format's prediction writer


def to_source_axes(masks: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """WORK-axes channels ``(D, C, H, W)`` -> the source array's axes with channels last ``(Z, Y, X, C)``.

    ``axes`` is :attr:`data_prep.dataset.VolumeInfo.axes` (WORK = source.transpose(axes)); this is its inverse.

    >>> to_source_axes(np.zeros((2, 5, 3, 4)), (1, 0, 2)).shape
    (3, 2, 4, 5)
    """
    inv = tuple(int(i) for i in np.argsort(axes))
    return np.moveaxis(np.asarray(masks), 1, -1).transpose(*inv, 3)


def to_work_axes(array: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """The source array's axes with channels last ``(Z, Y, X, C)`` -> WORK axes ``(D, C, H, W)`` (inverse of
    :func:`to_source_axes`)."""
    return np.moveaxis(np.asarray(array).transpose(*(int(a) for a in axes), 3), -1, 1)


def source_geometry(vol: VolumeInfo) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The source array's shape ``(Z, Y, X)`` and spacing ``(sz, sy, sx)`` of a WORK volume (its axes undone)."""
    shape = [0, 0, 0]
    spacing = [0.0, 0.0, 0.0]
    for i, a in enumerate(vol.axes):
        shape[a] = int(vol.shape[i])
        spacing[a] = float(vol.spacing[i])
    return (shape[0], shape[1], shape[2]), (spacing[0], spacing[1], spacing[2])


def check_prediction(masks: np.ndarray, info: DatasetInfo, key: str) -> VolumeInfo:
    """Check that ``masks`` are ``(D, C, H, W)`` of volume ``key`` of ``info``; returns its :class:`VolumeInfo`.

    Raises:
        ValueError: ``key`` is not in ``info.volumes`` or the shape does not match.
    """
    if key not in info.volumes:
        close = difflib.get_close_matches(key, list(info.volumes), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"volume {key!r} is not in the dataset description (WORK/dataset.json){hint}")
    vol = info.volumes[key]
    want = (vol.shape[0], info.num_classes, vol.shape[1], vol.shape[2])
    if tuple(np.shape(masks)) != want:
        raise ValueError(f"{key}: predictions must be (D, C, H, W) = {want}, got {tuple(np.shape(masks))}")
    return vol


def write_probabilities(probs: np.ndarray, info: DatasetInfo, key: str, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/{key}_probs.npz``: ``probabilities`` float16 ``(C, Z, Y, X)`` in the source array's axes
    (nnU-Net's layout of saved probabilities), atomically.

    Args:
        probs: float ``(D, C, H, W)`` in [0, 1], WORK axes.
    """
    vol = check_prediction(probs, info, key)
    src = np.moveaxis(to_source_axes(probs, vol.axes), -1, 0).astype(np.float16)
    path = Path(out_dir) / f"{key}_probs.npz"
    return atomic_write(path, lambda f: np.savez_compressed(f, probabilities=src))


def safe_key(text: str) -> str:
    """A file-name-safe key: runs of characters other than letters, digits, ``_``, ``-``, ``.`` become ``_``.

    >>> safe_key("98892001/CT5N"), safe_key("Patient 1/T1 (axial)")
    ('98892001_CT5N', 'Patient_1_T1_axial')
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")
