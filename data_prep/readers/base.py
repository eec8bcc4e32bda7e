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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from data_prep.dataset import DatasetInfo


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
