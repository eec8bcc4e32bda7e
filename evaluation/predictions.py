"""Prediction folders in the input's format: which module writes and reads them, and the folder's index.

A WORK made from a format other than the Kaggle layout (``dataset.json`` ``format``: ``nnunet``, ``dicom``,
``slices``) gets its predictions written in that format, one file (or folder) per volume, by the format's module
``data_prep.readers.{format}`` (``data_prep.readers.prediction_io``), which offers:

- ``write_prediction(masks bool (D, C, H, W) in WORK axes, info, key, out_dir, probs=None) -> Path``;
- ``read_prediction(path, info, key) -> bool (D, C, H, W)`` in WORK axes (also reads the format's label files, so
  a folder of labels is scored the same way).

``tools/infer.py --work WORK --out OUT`` writes ``OUT/predictions.json`` beside them (:class:`PredictionIndex`)::

    {"version": 1, "format": "nnunet", "dataset": name, "classes": [...], "label_kind": "overlapping",
     "spec": "path of the spec", "volumes": {key: file name in OUT, ...}}

rewritten atomically after each volume, so it lists only complete files and an interrupted run resumes.
:func:`prediction_files` reads a folder's volumes: the index when there is one, else every entry whose name minus
its ending (``.nii.gz``, ``.nrrd``, ... or a folder's name) is the volume key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common.io import atomic_write_text
from data_prep.dataset import DatasetInfo

PREDICTIONS_JSON = "predictions.json"
INDEX_VERSION = 1
#: Format modules registered by name (any object with ``write_prediction`` and ``read_prediction``), looked up
#: before ``data_prep.readers.{format}``: a format of your own plugs in here without editing ``data_prep``.
PREDICTION_FORMATS: dict[str, Any] = {}


def prediction_format(fmt: str) -> Any:
    """The module that writes and reads predictions of input format ``fmt`` (see the module docstring).

    Raises:
        ValueError: the Kaggle layout (its predictions are a submission CSV), no such module, or a module without
            ``write_prediction`` / ``read_prediction``.
    """
    if fmt in PREDICTION_FORMATS:
        return PREDICTION_FORMATS[fmt]
    if fmt == "kaggle":
        raise ValueError("the Kaggle layout's predictions are a submission CSV, not a folder of volumes")
    from data_prep.readers import prediction_io

    try:
        write, read = prediction_io(fmt)
    except ModuleNotFoundError as e:
        raise ValueError(f"no module for predictions of format {fmt!r} ({e})") from None
    except AttributeError as e:
        raise ValueError(f"the reader of format {fmt!r} cannot write or read predictions ({e})") from None
    return SimpleNamespace(write_prediction=write, read_prediction=read)


def volume_key(path: str | os.PathLike) -> str:
    """The volume key a file (or folder) of a prediction or label folder stands for: its name without its ending.

    >>> volume_key("labelsTr/liver_007.nii.gz"), volume_key("out/ct_3.nrrd"), volume_key("seg/kidney_1")
    ('liver_007', 'ct_3', 'kidney_1')
    """
    from data_prep.readers.medical import ending_of

    p = Path(path)
    end = ending_of(p)
    if end:
        return p.name[: -len(end)]
    return p.name if p.is_dir() or not p.suffix else p.stem


def prediction_files(folder: str | os.PathLike) -> dict[str, Path]:
    """``{volume key: path}`` of a folder of predictions or labels (``predictions.json`` when present, else the
    names; hidden files and ``.json``/``.csv``/``.md`` files are not volumes).

    Raises:
        FileNotFoundError: no such folder, or a file the index lists is missing. ValueError: two entries name the
            same key, a malformed index, or no volume at all.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of label volumes")
    index = folder / PREDICTIONS_JSON
    if index.is_file():
        vols = read_index(index).get("volumes") or {}
        out = {str(k): folder / str(v) for k, v in vols.items()}
        gone = [str(p) for p in out.values() if not p.exists()]
        if gone:
            raise FileNotFoundError(f"{index} lists {len(gone)} missing file(s), e.g. {gone[:3]}")
    else:
        out = {}
        for p in sorted(folder.iterdir()):
            if p.name.startswith(".") or p.suffix.lower() in (".json", ".csv", ".md", ".txt", ".tmp"):
                continue
            key = volume_key(p)
            if key in out:
                raise ValueError(f"{folder}: {out[key].name} and {p.name} both stand for volume {key!r}")
            out[key] = p
    if not out:
        raise ValueError(f"{folder}: no volume files found")
    return out


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    """``predictions.json`` as a dict (checked to map ``volumes``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("volumes", {}), dict):
        raise ValueError(f"{path}: expected {{..., 'volumes': {{key: file}}}}, got {type(data).__name__}")
    return data


class PredictionIndex:
    """``OUT/predictions.json`` of a run writing predictions volume by volume (see the module docstring).

    Args:
        out: the output folder (created).
        meta: what the run is (format, dataset, classes, label_kind, spec); a resumed folder must have been
            written with the same.
        overwrite: start afresh: the files the old index lists are removed first (nothing else in ``out``).

    Raises:
        FileExistsError: ``out`` holds files but no index (not a folder of this kind), and not ``overwrite``.
        ValueError: the index was written with another ``meta``, and not ``overwrite``.
    """

    def __init__(self, out: str | os.PathLike, meta: Mapping[str, Any], overwrite: bool = False) -> None:
        self.out = Path(out)
        self.path = self.out / PREDICTIONS_JSON
        self.meta = {"version": INDEX_VERSION, **{k: v for k, v in dict(meta).items() if k != "volumes"}}
        self.volumes: dict[str, str] = {}
        if self.path.is_file():
            old = read_index(self.path)
            if overwrite:
                for name in (old.get("volumes") or {}).values():
                    _remove(self.out / str(name))
                self.path.unlink()
            else:
                differ = {k: (old.get(k), v) for k, v in self.meta.items() if old.get(k) != v}
                if differ:
                    raise ValueError(f"{self.path} was written with other settings {differ}; pass --overwrite")
                self.volumes = {str(k): str(v) for k, v in (old.get("volumes") or {}).items()}
        elif self.out.is_dir() and any(not p.name.startswith(".") for p in self.out.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{self.out} holds files but no {PREDICTIONS_JSON}: not a prediction folder of tools/infer.py; "
                "choose another --out or pass --overwrite"
            )
        self.out.mkdir(parents=True, exist_ok=True)

    def done(self, key: str) -> bool:
        """True when ``key`` is listed and its file exists (a resumed run skips it)."""
        return key in self.volumes and (self.out / self.volumes[key]).exists()

    def add(self, key: str, path: str | os.PathLike) -> None:
        """List volume ``key``, written at ``path`` (inside ``out``), and rewrite the index atomically."""
        p = Path(path)
        try:
            rel = p.resolve().relative_to(self.out.resolve())
        except ValueError:
            raise ValueError(f"{key}: the prediction {p} was written outside {self.out}") from None
        self.volumes[key] = rel.as_posix()
        self.write()

    def write(self) -> Path:
        """Write the index (also for a run of no volume)."""
        data = {**self.meta, "volumes": dict(sorted(self.volumes.items()))}
        return atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")


def _remove(p: Path) -> None:
    if p.is_dir():
        import shutil

        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def index_meta(info: DatasetInfo, spec_source: str) -> dict[str, Any]:
    """The ``meta`` of :class:`PredictionIndex` for a run of the ensemble ``spec_source`` on a WORK of ``info``."""
    return {
        "format": info.format,
        "dataset": info.name,
        "classes": list(info.classes),
        "label_kind": info.label_kind,
        "spec": str(spec_source),
    }
