"""Probability folders: the one module that reads and writes them (docs/contracts.md, "Probability maps").

A probability folder holds one model's (or an ensemble's) class probabilities, one file per case-day::

    {dir}/meta.json          {"kind", "config", "checkpoint", "fold", "tta", "classes",
                              "case_days": {case_day: [slice ids in z order]}}
    {dir}/{case_day}.npy     float16 (D, C, H, W) in [0, 1], full image size, z in manifest order
    {dir}/metrics.json       optional: scores of the maps against the truth (written last)

Writers add case-days one at a time (:class:`ProbWriter`): each ``.npy`` is written atomically, then
``meta.json`` is rewritten atomically to list it, so a folder read at any moment lists only complete maps and a
killed run can be continued. Readers open a folder with :class:`ProbDir`; every map is checked for its shape,
range and NaN when it is loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_save_npy, atomic_write_text

META_JSON = "meta.json"
METRICS_JSON = "metrics.json"
#: Keys of ``meta.json`` besides ``case_days``.
META_KEYS: tuple[str, ...] = ("kind", "config", "checkpoint", "fold", "tta", "classes")


def check_probs(probs: np.ndarray, where: str) -> None:
    """Raise ValueError naming ``where`` when ``probs`` holds NaN/inf or values outside ``[0, 1]``."""
    if not np.isfinite(probs).all():
        bad = np.argwhere(~np.isfinite(probs))[0].tolist()
        raise ValueError(f"{where}: probability map holds NaN or inf (first at index {bad}); re-run that model")
    if probs.size and (probs.min() < 0 or probs.max() > 1):
        raise ValueError(
            f"{where}: probabilities outside [0, 1] (min {float(probs.min())}, max {float(probs.max())}); "
            "expected sigmoid outputs"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


class ProbDir:
    """One probability folder, opened for reading.

    Attributes:
        path: the folder.
        meta: ``meta.json`` as a dict.
        case_days: ``{case_day: [slice ids in z order]}``.

    Raises (on open):
        FileNotFoundError: no ``meta.json``. ValueError: a malformed one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / META_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found; a probability folder holds meta.json and one {{case_day}}.npy per case-day "
                "(written by tools/test.py, tools/infer_3d.py, tools/infer.py --save-probs)"
            )
        self.meta: dict[str, Any] = _read_json(meta_path)
        cds = self.meta.get("case_days")
        if not isinstance(cds, dict) or not cds:
            raise ValueError(f"{meta_path}: 'case_days' must map case-day -> [slice ids in z order], got {cds!r}")
        self.case_days: dict[str, list[str]] = {k: list(v) for k, v in cds.items()}

    @property
    def classes(self) -> list[str] | None:
        """The class names of the channels, as ``meta.json`` lists them."""
        return self.meta.get("classes")

    def metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` as a dict, or None when the folder has none."""
        p = self.path / METRICS_JSON
        return _read_json(p) if p.is_file() else None

    def load(self, case_day: str) -> np.ndarray:
        """Probabilities of one case-day as float32 ``(D, C, H, W)``; checked for shape, range and NaN.

        Raises:
            KeyError: the case-day is not listed. FileNotFoundError: its map is missing. ValueError: bad map.
        """
        if case_day not in self.case_days:
            raise KeyError(f"{self.path}: no case-day {case_day} in {META_JSON}")
        f = self.path / f"{case_day}.npy"
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found although {self.path / META_JSON} lists {case_day}")
        arr = np.load(f, mmap_mode="r")
        d = len(self.case_days[case_day])
        c = len(self.classes) if self.classes else None
        if arr.ndim != 4 or arr.shape[0] != d or (c is not None and arr.shape[1] != c):
            raise ValueError(f"{f}: shape {arr.shape}, expected ({d}, {c or 'C'}, H, W) as {META_JSON} lists")
        out = np.asarray(arr, dtype=np.float32)
        check_probs(out, str(f))
        return out


class ProbWriter:
    """Writes a probability folder case-day by case-day (see the module docstring).

    Args:
        path: the folder (created).
        meta: ``meta.json`` content without ``case_days`` (keys :data:`META_KEYS`; others are kept too).
        overwrite: start a fresh folder where one exists (its maps, ``meta.json`` and ``metrics.json`` are
            removed first); otherwise an existing folder is refused unless ``resume``.
        resume: continue a folder written with the same ``meta`` (its listed case-days are kept; see
            :meth:`done`).

    Raises:
        FileExistsError: the folder holds maps, and neither ``overwrite`` nor ``resume`` was given.
        ValueError: ``resume`` on a folder whose ``meta.json`` differs from ``meta``.
    """

    def __init__(
        self, path: str | os.PathLike, meta: Mapping[str, Any], overwrite: bool = False, resume: bool = False
    ) -> None:
        self.path = Path(path)
        self.meta = {k: v for k, v in dict(meta).items() if k != "case_days"}
        self.case_days: dict[str, list[str]] = {}
        meta_path = self.path / META_JSON
        existing = meta_path.is_file() or any(self.path.glob("*.npy"))
        if existing and overwrite:
            for p in [*self.path.glob("*.npy"), meta_path, self.path / METRICS_JSON]:
                p.unlink(missing_ok=True)
        elif existing and resume and meta_path.is_file():
            old = _read_json(meta_path)
            differ = {k: (old.get(k), v) for k, v in self.meta.items() if old.get(k) != v}
            if differ:
                raise ValueError(f"{meta_path} was written with other settings {differ}; pass --overwrite")
            self.case_days = {k: list(v) for k, v in (old.get("case_days") or {}).items()}
        elif existing:
            raise FileExistsError(f"{self.path} already holds probability maps; pass --overwrite to replace them")
        self.path.mkdir(parents=True, exist_ok=True)

    def done(self, case_day: str) -> bool:
        """True when the folder already lists ``case_day`` with its map on disk (a resumed folder)."""
        return case_day in self.case_days and (self.path / f"{case_day}.npy").is_file()

    def add(self, case_day: str, ids: Sequence[str], probs: np.ndarray) -> None:
        """Write one case-day: ``probs`` float ``(D, C, H, W)`` in ``[0, 1]`` (stored float16), ``ids`` its ``D``
        slice ids in z order; then ``meta.json`` is rewritten to list it."""
        probs = np.asarray(probs)
        if probs.ndim != 4 or probs.shape[0] != len(ids):
            raise ValueError(f"{case_day}: probabilities must be (D={len(ids)}, C, H, W), got shape {probs.shape}")
        classes = self.meta.get("classes")
        if classes is not None and probs.shape[1] != len(classes):
            raise ValueError(f"{case_day}: {probs.shape[1]} channels for {len(classes)} classes {list(classes)}")
        atomic_save_npy(self.path / f"{case_day}.npy", probs.astype(np.float16))
        self.case_days[case_day] = list(ids)
        self._write_meta()

    def _write_meta(self) -> None:
        meta = {**self.meta, "case_days": dict(sorted(self.case_days.items()))}
        atomic_write_text(self.path / META_JSON, json.dumps(meta, indent=1) + "\n")

    def finish(self, metrics: Mapping[str, Any] | None = None) -> Path:
        """Write ``meta.json`` (also for a folder of no case-day) and, when given, ``metrics.json``; returns the
        folder."""
        self._write_meta()
        if metrics is not None:
            atomic_write_text(self.path / METRICS_JSON, json.dumps(dict(metrics), indent=1) + "\n")
        return self.path
