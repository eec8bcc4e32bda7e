"""Small WORK folders of any class list for the ensembles, evaluation and inference tests: written through
``data_prep.work``'s writers as ``prepare`` would leave them (dataset.json, manifest, uint16 volumes of one or more
channels, packed masks), a stand-in format module for predictions, probability folders, and stand-in models.

Imported by path from the other test folders (``load_nclass_fixtures``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import scipy.ndimage as ndi

from common.io import atomic_save_npy
from common.probmaps import ProbWriter
from data_prep.dataset import DatasetInfo, VolumeInfo, class_columns
from data_prep.work import (
    load_mask,
    read_dataset,
    save_mask,
    save_volume,
    write_dataset,
    write_manifest,
    write_prepare_json,
)

FIVE = ("liver", "kidney_l", "kidney_r", "spleen", "pancreas")
SPACING = (2.5, 0.7, 0.8)


def blobs(rng: np.random.Generator, shape: tuple[int, int, int], n: int, label_kind: str) -> np.ndarray:
    """bool ``(D, C, H, W)``: smooth random blobs per class (overlapping), or a label map's classes (exclusive:
    later classes over earlier ones). Slice 0 is empty."""
    d, h, w = shape
    out = np.zeros((d, n, h, w), bool)
    for c in range(n):
        f = ndi.gaussian_filter(rng.random(shape), (1, 2, 2))
        out[:, c] = f > np.quantile(f, 0.82)
    if label_kind == "exclusive":
        lab = np.zeros(shape, np.int64)
        for c in range(n):
            lab[out[:, c]] = c + 1
        out = np.stack([lab == c + 1 for c in range(n)], axis=1)
    out[0] = False
    return out


def make_work(
    root: Path,
    classes: tuple[str, ...] = FIVE,
    label_kind: str = "overlapping",
    keys: tuple[str, ...] = ("vol_a", "vol_b", "vol_c"),
    shape: tuple[int, int, int] = (6, 16, 20),
    channels: int = 1,
    fmt: str = "slices",
    seed: int = 0,
    masks: bool = True,
) -> tuple[Path, dict[str, np.ndarray]]:
    """A finished WORK folder of ``keys`` (one group each); returns it and the truth ``{key: bool (D, C, H, W)}``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    vols = {k: VolumeInfo(shape=shape, spacing=SPACING, group=f"p{i}", source=f"src/{k}") for i, k in enumerate(keys)}
    names = ("CT", "T2", "FLAIR")[:channels]
    info = DatasetInfo(classes, label_kind, names, "CT", fmt, "blobs", vols, {})
    truth, rows = {}, []
    d, h, w = shape
    for key in keys:
        t = blobs(rng, shape, len(classes), label_kind)
        truth[key] = t
        for k in range(channels):
            img = 100 + 400 * t.sum(axis=1) + rng.integers(0, 50, shape) + 1000 * k
            save_volume(root, key, img.astype(np.uint16), channel=k)
        if masks:
            save_mask(root, key, info.pack(t))
        for z in range(d):
            row = {"id": f"{key}_slice_{z:04d}", "case": vols[key].group, "day": 0, "slice": z, "case_day": key}
            row.update(path=f"src/{key}", width=w, height=h, px_w=SPACING[2], px_h=SPACING[1], z=z, depth=d)
            if masks:
                row.update(dict(zip(class_columns("has_", classes), t[z].any(axis=(1, 2)).astype(int))))
                row.update(dict(zip(class_columns("area_", classes), t[z].sum(axis=(1, 2)).astype(int))))
            rows.append(row)
    write_dataset(root, info)
    write_manifest(root, pd.DataFrame(rows))
    write_prepare_json(root, {"version": 1, "status": "done", "args": {}})
    return root, truth


def fake_format(calls: list | None = None) -> SimpleNamespace:
    """A format module: predictions as ``{key}.npy`` WORK masks (packed as the dataset says)."""

    def write_prediction(masks, info, key, out_dir, probs=None):
        if calls is not None:
            calls.append(key)
        return atomic_save_npy(Path(out_dir) / f"{key}.npy", info.pack(np.asarray(masks)))

    def read_prediction(path, info, key):
        return info.unpack(np.load(path)).astype(bool)

    return SimpleNamespace(write_prediction=write_prediction, read_prediction=read_prediction)


def write_truth_folder(work: Path, out: Path, fmt: SimpleNamespace) -> Path:
    """The WORK's masks written as a label folder by ``fmt`` (what a dataset's labelsTr is to its reader)."""
    info = read_dataset(work)
    for key in info.volumes:
        fmt.write_prediction(info.unpack(np.asarray(load_mask(work, key))).astype(bool), info, key, out)
    return out


def write_probdir(path: Path, probs: dict[str, np.ndarray], classes: tuple[str, ...], config: str) -> Path:
    """A probability folder of ``probs`` ``{key: (D, C, H, W)}`` (slice ids as :func:`make_work` names them)."""
    meta = {"kind": "2.5d", "config": config, "checkpoint": "x", "fold": 0, "tta": [], "classes": list(classes)}
    writer = ProbWriter(path, meta)
    for key, p in probs.items():
        writer.add(key, [f"{key}_slice_{z:04d}" for z in range(p.shape[0])], np.clip(p, 0, 1))
    return writer.finish()


def digest(volume: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(volume).tobytes()).hexdigest()


class Oracle:
    """A 2.5D / 3D stand-in that knows the truth of each volume (by its content): ``value * truth`` plus ``extra``
    on class ``extra_class``; records the volume shapes and spacings it was given."""

    def __init__(self, truth_by_digest: dict, value: float = 0.9, classes=None, calls: list | None = None):
        self.truth, self.value, self.calls = truth_by_digest, value, calls if calls is not None else []
        if classes is not None:
            self.classes = tuple(classes)

    def predict_volume(self, volume, keep=None, boxes=None, tta=(), batch_size=16, spacing=None):
        self.calls.append({"shape": np.shape(volume), "spacing": spacing})
        p = self.value * self.truth[digest(np.asarray(volume))].astype(np.float32)
        if keep is not None:
            p[~np.asarray(keep, bool)] = 0
        return p


class Oracle3D(Oracle):
    """The 3D stand-in (``predict_volume(volume, spacing, tta)``)."""

    def predict_volume(self, volume, spacing=None, tta=()):
        return super().predict_volume(volume, spacing=spacing)


def truth_by_digest(work: Path, truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{digest of the model input: truth}`` for every volume of ``work`` (all its channels, as inference loads
    them)."""
    from inference.predict import load_channels

    info = read_dataset(work)
    return {digest(np.asarray(load_channels(work, k, info))): t for k, t in truth.items()}
