"""The input formats: a registry of readers (:mod:`data_prep.readers.base` gives their contract) and detection.

=========  ===============================================================  =========================================
format     what the data root holds                                          reader / writer of predictions
=========  ===============================================================  =========================================
kaggle     ``train.csv`` and/or ``train/``, ``test/`` trees of case folders  :func:`data_prep.prepare.prepare`; CSV
nnunet     ``dataset.json`` + ``imagesTr/`` (nnU-Net v2 raw)                 :mod:`data_prep.readers.nnunet`
dicom      DICOM series (``.dcm`` files or files with the ``DICM`` magic)    :mod:`data_prep.readers.dicom`
slices     ``images/`` of one folder of 2D ``.png``/``.tif`` per volume      :mod:`data_prep.readers.slices`
=========  ===============================================================  =========================================

Readers are imported on first use (:func:`get_reader`), so ``import data_prep.readers`` stays light and a format's
libraries (SimpleITK, pydicom) load only when that format is read. Each reader module also has
``write_prediction(masks, info, key, out_dir, probs=None) -> Path`` and ``read_prediction(path, info, key)``
(:func:`prediction_io`).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from data_prep.constants import CASE_DIR_RE
from data_prep.dataset import FORMATS

#: Reader classes by format, ``"module:Class"`` (imported by :func:`get_reader`); the Kaggle layout has its own path.
READERS: dict[str, str] = {
    "nnunet": "data_prep.readers.nnunet:NnUNetReader",
    "dicom": "data_prep.readers.dicom:DicomReader",
    "slices": "data_prep.readers.slices:SliceFolderReader",
}
#: Image suffixes of the slices format.
SLICE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")
#: Files looked at (at most) when searching a data root for DICOM.
DICOM_PROBE_LIMIT = 5000

__all__ = ["FORMATS", "READERS", "detect_format", "get_reader", "prediction_io"]


def _check_format(name: str) -> str:
    if name not in FORMATS:
        import difflib  # noqa: PLC0415

        close = difflib.get_close_matches(str(name), FORMATS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown format {name!r}: use one of {list(FORMATS)}{hint}")
    if name == "kaggle":
        raise ValueError(
            "the Kaggle layout has no volume reader: it is prepared by data_prep.prepare.prepare "
            "(python -m data_prep prepare --format kaggle) and its predictions are the submission CSV"
        )
    return name


def _module(name: str) -> tuple[ModuleType, str]:
    module, _, cls = READERS[_check_format(name)].partition(":")
    return importlib.import_module(module), cls


def get_reader(name: str) -> Any:
    """A new reader of format ``name`` (``"nnunet"``, ``"dicom"``, ``"slices"``).

    >>> get_reader("nnunet").name
    'nnunet'

    Raises:
        ValueError: an unknown format (a close name is suggested), or ``"kaggle"`` (prepared by
            :func:`data_prep.prepare.prepare`, not by a reader).
    """
    module, cls = _module(name)
    return getattr(module, cls)()


def prediction_io(name: str) -> tuple[Any, Any]:
    """``(write_prediction, read_prediction)`` of format ``name`` (module docstring).

    Raises:
        ValueError: as :func:`get_reader`.
    """
    module, _ = _module(name)
    return module.write_prediction, module.read_prediction


def _is_kaggle(root: Path) -> bool:
    if (root / "train.csv").is_file():
        return True
    for split in ("train", "test"):
        tree = root / split
        if tree.is_dir() and any(p.is_dir() and CASE_DIR_RE.match(p.name) for p in tree.iterdir()):
            return True
    return False


def _is_slices(root: Path) -> bool:
    images = root / "images"
    if not images.is_dir():
        return False
    for sub in sorted(images.iterdir()):
        if sub.is_dir() and any(p.suffix.lower() in SLICE_SUFFIXES for p in sub.iterdir()):
            return True
    return False


def _is_dicom(root: Path) -> bool:
    seen = 0
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            path = Path(folder) / name
            if name.lower().endswith(".dcm"):
                return True
            seen += 1
            if seen > DICOM_PROBE_LIMIT:
                return False
            try:
                with open(path, "rb") as f:
                    head = f.read(132)
            except OSError:
                continue
            if len(head) == 132 and head[128:132] == b"DICM":
                return True
    return False


def detect_format(root: str | os.PathLike) -> str:
    """The format of a data root, by its files (checked in this order).

    - ``kaggle``: ``train.csv``, or a ``train/`` or ``test/`` folder of ``case{N}`` folders;
    - ``nnunet``: ``dataset.json`` and ``imagesTr/`` (or ``imagesTs/``);
    - ``slices``: ``images/`` holding folders of ``.png`` / ``.tif`` / ``.tiff`` files;
    - ``dicom``: a ``.dcm`` file, or a file with the DICOM magic ``DICM`` at byte 128, anywhere below the root
      (the first :data:`DICOM_PROBE_LIMIT` files are looked at).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: none of them (the message lists what was looked for; pass ``--format``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    if _is_kaggle(root):
        return "kaggle"
    if (root / "dataset.json").is_file() and ((root / "imagesTr").is_dir() or (root / "imagesTs").is_dir()):
        return "nnunet"
    if _is_slices(root):
        return "slices"
    if _is_dicom(root):
        return "dicom"
    raise ValueError(
        f"{root}: cannot tell the data format. Looked for: kaggle (train.csv, or train/ or test/ with case folders), "
        "nnunet (dataset.json + imagesTr/), slices (images/ with folders of .png/.tif slices), dicom (.dcm files or "
        f"files with the DICM magic). Pass --format one of {list(FORMATS)}."
    )
