"""What the viewer shows: a WORK's volumes with their truth and predictions, scored per case and class.

``open_study(work, pred=None, truth=None)`` reads the dataset description and the manifest of a prepared WORK
(``python -m data_prep prepare``). Predictions are a folder of label volumes in the WORK's own format
(``tools/infer.py --work WORK --out DIR``) or, for the Kaggle layout, a submission CSV; the truth is the WORK's masks
when it has them, else a folder of label volumes or a label CSV (``train.csv``). Every reader is the one the
scoring uses (``evaluation.predictions``, ``data_prep.layout.RLEVolumes``), so the viewer shows what was scored.

``case_bundle(study, key)`` is the pure core of the page: everything the browser loads for one case, as bytes
(NIfTI volumes, MZ3 meshes) and a JSON-able description (geometry, window, per-class DSC / NSD / HD95, bounding
boxes). The server (:mod:`viewer.app`) and the static report (:mod:`viewer.export`) both serve it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep.dataset import DatasetInfo
from data_prep.layout import RLEVolumes, read_rle_table, shapes_manifest
from data_prep.work import check_work, has_mask, load_mask, load_volume, read_dataset, read_manifest
from evaluation.metric import aggregate, score_case_day
from evaluation.predictions import prediction_files, prediction_format
from evaluation.scoring import kaggle_spacings
from evaluation.surface import SURFACE_METRICS, default_tolerance
from viewer.meshes import bounding_box, box_mesh, mz3_bytes, surface_mesh
from viewer.nifti import nifti_bytes, work_affine

logger = logging.getLogger(__name__)

#: Class colours (RGB 0-255), in class order, then repeated: distinct on a grey scan and for colour-blind eyes
#: as far as 10 colours can be (after Paul Tol's "bright" and "vibrant" sets).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (238, 102, 119),
    (34, 136, 51),
    (68, 119, 170),
    (204, 187, 68),
    (102, 204, 238),
    (170, 51, 119),
    (238, 119, 51),
    (0, 153, 136),
    (238, 51, 119),
    (187, 187, 187),
)
#: The difference colouring of a class: true positive, false positive, false negative (values 1, 2, 3).
DIFF_COLOURS: dict[str, tuple[int, int, int]] = {"tp": (60, 200, 90), "fp": (235, 60, 50), "fn": (60, 130, 255)}
#: Mask sources of a case.
SOURCES = ("pred", "truth")


def class_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` colours from :data:`PALETTE` (cycled)."""
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


class MaskSource:
    """Binary class masks per volume key from a WORK's masks, a folder of label volumes or an RLE CSV.

    Args:
        kind: ``"work"``, ``"folder"`` or ``"csv"``.
        path: the WORK, folder or CSV.
        info: the WORK's dataset description.
        manifest: the WORK's manifest (sizes and z order for a CSV).
    """

    def __init__(self, kind: str, path: Path, info: DatasetInfo, manifest: pd.DataFrame):
        self.kind, self.path, self.info = kind, Path(path), info
        self._get: Callable[[str], np.ndarray]
        if kind == "work":
            self.keys = {k for k in manifest["case_day"].unique() if has_mask(path, k)}
            self._get = lambda k: info.unpack(np.asarray(load_mask(self.path, k))).astype(bool)
        elif kind == "folder":
            files = prediction_files(path)
            read = prediction_format(info.format).read_prediction
            self.keys = set(files)
            self._get = lambda k: np.asarray(read(files[k], info, k), bool)
        elif kind == "csv":
            if info.format != "kaggle":
                raise ValueError(
                    f"{path}: a CSV of run-length encoded masks belongs to the Kaggle layout; this WORK is "
                    f"{info.format!r}: give the folder of its label volumes"
                )
            volumes = RLEVolumes(read_rle_table(path), shapes_manifest(manifest))
            self.keys = set(volumes)
            self._get = lambda k: np.asarray(volumes[k], bool)
        else:
            raise ValueError(f"unknown mask source kind {kind!r}")

    @classmethod
    def from_path(cls, path: str | os.PathLike, info: DatasetInfo, manifest: pd.DataFrame) -> MaskSource:
        """A folder or a CSV file, by what ``path`` is.

        Raises:
            FileNotFoundError: nothing at ``path``.
        """
        p = Path(path)
        if p.is_dir():
            return cls("folder", p, info, manifest)
        if p.is_file():
            return cls("csv", p, info, manifest)
        raise FileNotFoundError(f"{p}: no such folder of label volumes or CSV file")

    def get(self, key: str) -> np.ndarray | None:
        """bool ``(D, C, H, W)`` of ``key``, or None when this source has no masks for it."""
        return self._get(key) if key in self.keys else None

    def describe(self) -> str:
        return f"{self.path} ({self.kind})"


@dataclass
class Study:
    """A WORK and the masks shown over it (see :func:`open_study`).

    Attributes:
        work: the WORK folder. info: its dataset description. manifest: its manifest.
        pred, truth: the mask sources (None: none given / found).
        keys: the volume keys, sorted. tolerance: the NSD tolerance in mm (None: one voxel of each volume).
    """

    work: Path
    info: DatasetInfo
    manifest: pd.DataFrame
    pred: MaskSource | None
    truth: MaskSource | None
    keys: list[str]
    tolerance: float | None = None
    _spacings: dict[str, tuple[float, float, float]] = field(default_factory=dict, repr=False)
    _scores: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.info.classes)

    def shape(self, key: str) -> tuple[int, int, int]:
        """``(D, H, W)`` of volume ``key``."""
        if key in self.info.volumes:
            return tuple(self.info.volumes[key].shape)  # type: ignore[return-value]
        rows = self.manifest[self.manifest["case_day"] == key]
        return (len(rows), int(rows["height"].iloc[0]), int(rows["width"].iloc[0]))

    def spacing(self, key: str) -> tuple[float, float, float]:
        """``(sz, sy, sx)`` mm (the Kaggle layout: its pixel spacing and 3 mm slices)."""
        if key in self.info.volumes:
            return tuple(float(s) for s in self.info.volumes[key].spacing)  # type: ignore[return-value]
        return self._spacings.get(key, (1.0, 1.0, 1.0))

    def affine(self, key: str) -> np.ndarray:
        """:func:`viewer.nifti.work_affine` of volume ``key``."""
        vol = self.info.volumes.get(key)
        if vol is None:
            return work_affine(self.spacing(key))
        return work_affine(vol.spacing, vol.origin, vol.direction, vol.axes)

    def image(self, key: str) -> tuple[np.ndarray, float, float]:
        """``(uint16 (D, H, W), scale, offset)``: the stored volume (channel 0) and its intensity transform."""
        vol = self.info.volumes.get(key)
        scale, offset = (vol.scale, vol.offset) if vol is not None else (1.0, 0.0)
        return np.asarray(load_volume(self.work, key)), float(scale), float(offset)

    def masks(self, key: str) -> dict[str, np.ndarray | None]:
        """``{"pred": bool (D, C, H, W) | None, "truth": ...}`` of volume ``key``, each checked for its shape."""
        d, h, w = self.shape(key)
        want = (d, len(self.classes), h, w)
        out: dict[str, np.ndarray | None] = {}
        for name, source in (("pred", self.pred), ("truth", self.truth)):
            m = None if source is None else source.get(key)
            if m is not None and m.shape != want:
                raise ValueError(f"{source.describe()}: masks of {key} are {m.shape}, the volume needs {want}")
            out[name] = m
        return out

    def scores(self, key: str, masks: dict[str, np.ndarray | None] | None = None) -> dict[str, Any] | None:
        """The scores of one case (cached): None without both prediction and truth, else
        ``{"score", "dice", "hausdorff", "tolerance", "classes": {name: {"dsc", "nsd", "hd95", "assd"}}}``
        (competition score and its parts as in ``python -m ensembles score``; surface metrics in mm)."""
        with self._lock:
            if key in self._scores:
                return self._scores[key]
        m = masks if masks is not None else self.masks(key)
        if m["pred"] is None or m["truth"] is None:
            return None
        rec = score_case_day(key, m["pred"], m["truth"], spacing=self.spacing(key), tolerance=self.tolerance)
        res = aggregate([rec], classes=self.classes)
        per_class = {
            name: {metric: _num(rec.surface[c, i]) for i, metric in enumerate(SURFACE_METRICS)}
            for c, name in enumerate(self.classes)
        }
        out = {
            "score": _num(res.score),
            "dice": _num(res.dice),
            "hausdorff": _num(res.hausdorff),
            "tolerance": float(rec.tolerance if rec.tolerance is not None else default_tolerance(self.spacing(key))),
            "classes": per_class,
        }
        with self._lock:
            self._scores[key] = out
        return out

    def cached_scores(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._scores.get(key)

    def case_row(self, key: str) -> dict[str, Any]:
        """One row of the case list: key, shape, spacing, which masks there are, scores when computed."""
        s = self.cached_scores(key)
        dsc = None
        if s is not None:
            vals = [v["dsc"] for v in s["classes"].values() if v["dsc"] is not None]
            dsc = float(np.mean(vals)) if vals else None
        return {
            "key": key,
            "shape": list(self.shape(key)),
            "spacing": list(self.spacing(key)),
            "has_pred": self.pred is not None and key in self.pred.keys,
            "has_truth": self.truth is not None and key in self.truth.keys,
            "score": None if s is None else s["score"],
            "dsc": dsc,
        }

    def scorable(self) -> list[str]:
        """Keys with both a prediction and a truth."""
        if self.pred is None or self.truth is None:
            return []
        return [k for k in self.keys if k in self.pred.keys and k in self.truth.keys]


def _num(v: float) -> float | None:
    """A JSON-safe float (NaN -> None)."""
    v = float(v)
    return None if np.isnan(v) else v


def open_study(
    work: str | os.PathLike,
    pred: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
    tolerance: float | None = None,
) -> Study:
    """Open a WORK with its predictions and truth for the viewer.

    Args:
        work: a prepared WORK folder (any format).
        pred: a folder of predicted label volumes (the WORK's format) or a submission CSV (Kaggle layout); None:
            none (the page shows the scans and the truth).
        truth: a folder of label volumes or a label CSV; None: the WORK's masks where it has them.
        tolerance: the NSD tolerance in mm (None: one voxel of each volume, the largest side).

    Raises:
        FileNotFoundError, ValueError: no finished WORK, a missing ``pred`` / ``truth``, a CSV for a WORK that is
            not the Kaggle layout, or predictions for volumes the WORK does not have (named).
    """
    work = check_work(work, need_masks=False, need_splits=False)
    info = read_dataset(work)
    manifest = read_manifest(work)
    if "case_day" not in manifest.columns:
        raise ValueError(f"{work}/manifest.csv has no case_day column")
    keys = sorted(manifest["case_day"].unique().tolist())
    p = MaskSource.from_path(pred, info, manifest) if pred is not None else None
    if truth is not None:
        t = MaskSource.from_path(truth, info, manifest)
    else:
        t = MaskSource("work", work, info, manifest)
        t = t if t.keys else None
    for source in (p, t):
        unknown = sorted(set(source.keys) - set(keys)) if source is not None else []
        if unknown:
            raise ValueError(
                f"{source.describe()}: {len(unknown)} volume(s) are not in {work} (e.g. {unknown[:3]}); give the WORK "
                "the predictions were made from"
            )
    study = Study(work=Path(work), info=info, manifest=manifest, pred=p, truth=t, keys=keys, tolerance=tolerance)
    if info.format == "kaggle" or not info.volumes:
        study._spacings.update(kaggle_spacings(manifest))
    return study


@dataclass
class CaseBundle:
    """Everything the page loads for one case.

    Attributes:
        meta: JSON-able: ``key``, ``shape``, ``spacing``, ``classes``, ``colours``, ``window`` (``[lo, hi]`` in source
            units: the 0.5 and 99.5 percentiles), ``range`` (``[min, max]``), ``sources`` (the mask sources present),
            ``voxels`` (``{source: [count per class]}``), ``boxes`` (``{source: [box | None]}``, WORK voxel indices,
            ends exclusive), ``scores`` (:meth:`Study.scores` or None), ``files`` (the file names).
        files: ``{file name: bytes}``: ``image.nii.gz``, ``box_volume.mz3`` (the volume's outline); per source and
            class ``{source}_{c}.nii.gz`` (uint8 0/1), ``mesh_{source}_{c}.mz3``, ``box_{source}_{c}.mz3``; with both
            sources ``diff_{c}.nii.gz`` (uint8: 1 true positive, 2 false positive, 3 false negative).
    """

    meta: dict[str, Any]
    files: dict[str, bytes]


def _outline_width(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The tube width of the volume's outline: 0.2 % of its diagonal (thinner than the class boxes)."""
    return 0.002 * float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def case_bundle(study: Study, key: str) -> CaseBundle:
    """The :class:`CaseBundle` of volume ``key`` (pure: reads the WORK and the mask sources, writes nothing).

    Raises:
        KeyError: ``key`` is not a volume of the study. ValueError: masks of the wrong shape.
    """
    if key not in study.keys:
        raise KeyError(key)
    image, scale, offset = study.image(key)
    affine = study.affine(key)
    masks = study.masks(key)
    files: dict[str, bytes] = {
        "image.nii.gz": nifti_bytes(image, affine, scale, offset, description=key),
        "box_volume.mz3": mz3_bytes(
            *box_mesh(((0, 0, 0), tuple(image.shape)), affine, width=_outline_width(image.shape, study.spacing(key)))
        ),
    }
    lo, hi = np.percentile(image[:: max(1, image.shape[0] // 32)], (0.5, 99.5)) if image.size else (0.0, 1.0)
    meta: dict[str, Any] = {
        "key": key,
        "shape": list(image.shape),
        "spacing": list(study.spacing(key)),
        "classes": list(study.classes),
        "colours": [list(c) for c in class_colours(len(study.classes))],
        "window": [float(lo) * scale + offset, float(max(hi, lo + 1)) * scale + offset],
        "range": [
            float(image.min()) * scale + offset if image.size else 0.0,
            float(max(image.max(), lo + 1)) * scale + offset if image.size else 1.0,
        ],
        "sources": [s for s in SOURCES if masks[s] is not None],
        "voxels": {},
        "boxes": {},
        "scores": study.scores(key, masks),
    }
    for source in meta["sources"]:
        m = masks[source]
        meta["voxels"][source] = [int(m[:, c].sum()) for c in range(m.shape[1])]
        meta["boxes"][source] = []
        for c in range(m.shape[1]):
            cm = m[:, c]
            files[f"{source}_{c}.nii.gz"] = nifti_bytes(cm.astype(np.uint8), affine)
            files[f"mesh_{source}_{c}.mz3"] = mz3_bytes(*surface_mesh(cm, affine))
            box = bounding_box(cm)
            files[f"box_{source}_{c}.mz3"] = mz3_bytes(*box_mesh(box, affine))
            meta["boxes"][source].append(None if box is None else [list(box[0]), list(box[1])])
    if masks["pred"] is not None and masks["truth"] is not None:
        p, t = masks["pred"], masks["truth"]
        for c in range(p.shape[1]):
            diff = np.zeros(p.shape[:1] + p.shape[2:], np.uint8)
            diff[p[:, c] & t[:, c]] = 1
            diff[p[:, c] & ~t[:, c]] = 2
            diff[~p[:, c] & t[:, c]] = 3
            files[f"diff_{c}.nii.gz"] = nifti_bytes(diff, affine)
    meta["files"] = sorted(files)
    return CaseBundle(meta=meta, files=files)


class BundleCache:
    """The last ``size`` case bundles, built once each (threads asking for the same case wait for one build)."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict[tuple[int, str], CaseBundle] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[tuple[int, str], threading.Lock] = {}

    def get(self, study: Study, key: str) -> CaseBundle:
        k = (id(study), key)
        with self._lock:
            if k in self._items:
                self._items.move_to_end(k)
                return self._items[k]
            build_lock = self._building.setdefault(k, threading.Lock())
        with build_lock:
            with self._lock:
                if k in self._items:
                    return self._items[k]
            bundle = case_bundle(study, key)
            with self._lock:
                self._items[k] = bundle
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
                self._building.pop(k, None)
            return bundle


def score_all(study: Study, keys: Sequence[str] | None = None, progress: Callable | None = None) -> None:
    """Score every case with both masks (fills :meth:`Study.scores`' cache); ``progress`` wraps the iterator."""
    todo = list(keys if keys is not None else study.scorable())
    it = progress(todo) if progress else todo
    for key in it:
        try:
            study.scores(key)
        except (ValueError, OSError) as e:  # one bad file must not hide the other cases: it shows on its case
            logger.warning("%s: not scored: %s", key, e)
