"""The slice classifier: a timm model with 3 presence logits on 2.5D stacks, its data and its inference.

Input of slice ``z``: the channels ``data_prep.volumes.stack_indices(z, D, stride, channels)`` of the uint16
volume, divided by the stack's own maximum (the 1st place's normalisation), resized to ``img_size``
(bilinear). Output: 3 logits, one per class of ``CLASSES``; presence probability = sigmoid.

- :func:`build_classifier`: any timm model name, ``pretrained=False`` always; optional pretrained weights from
  a local file (timm adapts the first conv to ``in_chans`` and drops a head of another size).
- :class:`SliceStackDataset`: slices of a WORK folder (labels from ``exports/classifier.csv``).
- :class:`SliceClassifier`: ``load(checkpoint, device)`` + ``predict_volume(volume, batch_size)``.
- :func:`write_cls_probs` / :func:`read_cls_probs`: ``cls_probs.csv`` of docs/contracts.md, ids checked.
- :func:`predict_work`: probabilities for every slice of a WORK folder (test or out-of-fold).
"""

from __future__ import annotations

import difflib
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from common.engine import load_weights
from common.io import atomic_write_bytes
from data_prep.constants import CLASSES, NUM_CLASSES
from data_prep.exports import read_classifier_table
from data_prep.volumes import stack_indices
from data_prep.work import exports_dir, load_volume, read_manifest

logger = logging.getLogger(__name__)

__all__ = [
    "SliceClassifier",
    "SliceStackDataset",
    "build_classifier",
    "check_ids",
    "predict_work",
    "preprocess_volume",
    "read_cls_probs",
    "stack_image",
    "write_cls_probs",
]


# --------------------------------------------------------------------------------------------------- model


def build_classifier(
    name: str,
    in_chans: int = 3,
    num_classes: int = NUM_CLASSES,
    pretrained: str | os.PathLike | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """A timm model with ``num_classes`` logits; never downloads.

    Args:
        name: any timm model name (``efficientnet_b0``, ``convnext_tiny``, ``tf_efficientnetv2_s``, ...).
        in_chans: input channels (3 or 5 for the 2.5D stacks).
        num_classes: logits (3 presence logits).
        pretrained: optional local checkpoint (``.pth``/``.bin``/``.safetensors`` state dict of the same
            architecture); its first conv is adapted to ``in_chans`` and a head of another size is dropped.
        **kwargs: passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...).

    Raises:
        ValueError: unknown model name (close timm names are listed).
        FileNotFoundError: ``pretrained`` does not exist.

    >>> m = build_classifier("resnet10t", in_chans=5)
    >>> m(torch.zeros(2, 5, 64, 64)).shape
    torch.Size([2, 3])
    """
    import timm

    if not timm.is_model(name):
        names = timm.list_models()
        same_start = [n for n in names if n[:3] == name[:3]]  # keeps the fuzzy match quick
        close = difflib.get_close_matches(name, same_start or names, n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models('*pattern*')"
        raise ValueError(f"unknown timm model {name!r}{hint}")
    if pretrained is None:
        return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs)
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights not found: {path}. Weights are read from local files only (nothing is "
            "downloaded): put the timm checkpoint there, or set model.pretrained=None to start from scratch."
        )
    return timm.create_model(
        name,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path.resolve())),
        in_chans=in_chans,
        num_classes=num_classes,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------- inputs


def stack_image(
    volume: np.ndarray, z: int, channels: int = 3, stride: int = 2, img_size: tuple[int, int] | None = None
) -> np.ndarray:
    """The classifier input of slice ``z``: the 2.5D stack divided by its own max, resized.

    Args:
        volume: ``uint16 (D, H, W)``.
        z: slice index.
        channels, stride: see :func:`data_prep.volumes.stack_indices`.
        img_size: ``(h, w)`` output size, None keeps ``(H, W)``.

    Returns:
        ``float32 (channels, h, w)`` in ``[0, 1]`` (all zeros for an all-zero stack).
    """
    x = np.asarray(volume[stack_indices(z, volume.shape[0], stride, channels)], dtype=np.float32)
    peak = float(x.max())
    if peak > 0:
        x /= peak
    if img_size is not None and tuple(img_size) != x.shape[1:]:
        x = cv2.resize(x.transpose(1, 2, 0), (img_size[1], img_size[0]), interpolation=cv2.INTER_LINEAR)
        x = x.reshape(img_size[0], img_size[1], channels).transpose(2, 0, 1)
    return np.ascontiguousarray(x)


def preprocess_volume(
    volume: np.ndarray, channels: int = 3, stride: int = 2, img_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a whole volume once and give the per-stack maxima, for fast inference.

    ``resized[stack_indices(z)] / maxima[z]`` equals :func:`stack_image` (resizing is linear).

    Returns:
        ``(float32 (D, h, w), float32 (D,))``: the resized volume and each slice's stack maximum (1 when 0).
    """
    vol = np.asarray(volume)
    d = vol.shape[0]
    slice_max = vol.reshape(d, -1).max(axis=1).astype(np.float32)
    idx = np.stack([stack_indices(z, d, stride, channels) for z in range(d)]) if d else np.zeros((0, channels), int)
    stack_max = slice_max[idx].max(axis=1) if d else np.zeros(0, np.float32)
    stack_max[stack_max <= 0] = 1.0
    f = vol.astype(np.float32)
    if img_size is not None and tuple(img_size) != f.shape[1:]:
        out = np.empty((d, img_size[0], img_size[1]), np.float32)
        for s in range(0, d, 256):
            block = cv2.resize(f[s : s + 256].transpose(1, 2, 0), (img_size[1], img_size[0]), cv2.INTER_LINEAR)
            out[s : s + 256] = block.reshape(img_size[0], img_size[1], -1).transpose(2, 0, 1)
        f = out
    return f, stack_max.astype(np.float32)


def _augment(x: np.ndarray, rng: np.random.Generator, aug: dict[str, Any]) -> np.ndarray:
    """Light augmentation of a ``(C, h, w)`` float image: hflip, affine, brightness/contrast."""
    c, h, w = x.shape
    if rng.random() < aug.get("hflip", 0.0):
        x = x[:, :, ::-1]
    if rng.random() < aug.get("affine", 0.0):
        lo, hi = aug.get("scale", (0.9, 1.1))
        scale = rng.uniform(lo, hi)
        angle = rng.uniform(-aug.get("rotate", 0.0), aug.get("rotate", 0.0))
        shift = aug.get("shift", 0.0)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        m[:, 2] += rng.uniform(-shift, shift, size=2) * (w, h)
        x = cv2.warpAffine(
            np.ascontiguousarray(x.transpose(1, 2, 0)), m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0
        ).reshape(h, w, c)
        x = x.transpose(2, 0, 1)
    b = aug.get("brightness", 0.0)
    if b > 0 and rng.random() < 0.5:
        x = x * rng.uniform(1 - b, 1 + b) + rng.uniform(-b, b) * 0.1
    return np.ascontiguousarray(x, dtype=np.float32)


class SliceStackDataset(Dataset):
    """Slices of a WORK folder as classifier inputs.

    Items are ``(image float32 (channels, h, w), target float32 (3,), index int)``. An item key is an int, or
    ``(int, seed)`` to draw the augmentation from ``seed`` (resumable, identical on any number of workers).

    Args:
        work: WORK folder (``volumes/`` and ``exports/classifier.csv`` or ``manifest.csv``).
        ids: slice ids to use (in this order).
        channels, stride, img_size: input definition.
        aug: augmentation settings (None: none), see the classifier configs.
        table: a frame with ``id, case_day, z`` (+ class columns for targets); default
            ``exports/classifier.csv``, or ``manifest.csv`` when it is absent (targets are then zeros).

    Raises:
        ValueError: ids missing from the table (a few are named).
    """

    def __init__(
        self,
        work: str | os.PathLike,
        ids: Sequence[str],
        channels: int = 3,
        stride: int = 2,
        img_size: tuple[int, int] = (256, 256),
        aug: dict[str, Any] | None = None,
        table: pd.DataFrame | None = None,
    ) -> None:
        self.work = Path(work)
        if table is None:
            table = read_slice_table(self.work)
        table = table.set_index("id")
        missing = [i for i in ids if i not in table.index]
        if missing:
            raise ValueError(f"{len(missing)} ids are not in the slice table of {self.work}, e.g. {missing[:5]}")
        rows = table.loc[list(ids)]
        self.ids = list(ids)
        self.case_days = rows["case_day"].astype(str).tolist()
        self.z = rows["z"].astype(int).to_numpy()
        has_labels = all(c in rows.columns for c in CLASSES)
        self.targets = (
            rows[list(CLASSES)].to_numpy(np.float32) if has_labels else np.zeros((len(rows), NUM_CLASSES), np.float32)
        )
        self.channels, self.stride, self.img_size = channels, stride, tuple(img_size)
        self.aug = aug
        self._volumes: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def _volume(self, case_day: str) -> np.ndarray:
        if case_day not in self._volumes:
            self._volumes[case_day] = load_volume(self.work, case_day)
        return self._volumes[case_day]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        x = stack_image(self._volume(self.case_days[i]), int(self.z[i]), self.channels, self.stride, self.img_size)
        if self.aug:
            x = _augment(x, np.random.default_rng(seed if seed is not None else None), self.aug)
        return torch.from_numpy(x), torch.from_numpy(self.targets[i]), i


def read_slice_table(work: str | os.PathLike) -> pd.DataFrame:
    """The classifier export of WORK (``id, case_day, z`` and presence labels), else the manifest's ``id, case_day,
    z`` (no labels) when the WORK has no export (a prepared test tree)."""
    if (exports_dir(work) / "classifier.csv").is_file():
        return read_classifier_table(work)
    return read_manifest(work)[["id", "case_day", "z"]]


# --------------------------------------------------------------------------------------------------- inference


@dataclass
class SliceClassifier:
    """A trained slice classifier ready for inference.

    Attributes:
        model: the timm model (eval mode, on ``device``).
        device: torch device.
        channels, stride, img_size: the input definition it was trained with.
        meta: the checkpoint's ``meta`` dict.
    """

    model: torch.nn.Module
    device: torch.device
    channels: int
    stride: int
    img_size: tuple[int, int]
    meta: dict[str, Any]

    @classmethod
    def load(
        cls, checkpoint: str | os.PathLike, device: str | torch.device = "cpu", config: str | os.PathLike | None = None
    ) -> SliceClassifier:
        """Load ``best.pth``/``last.pth`` of ``tools/train_cls.py`` with ``weights_only=True``.

        Raises:
            FileNotFoundError: missing file.
            ValueError: not a classifier checkpoint of this project (no ``meta``).
        """
        state = load_weights(checkpoint)
        raw = torch.load(Path(checkpoint), map_location="cpu", weights_only=True, mmap=True)
        meta = raw.get("meta") if isinstance(raw, dict) else None
        if not isinstance(meta, dict) or "model" not in meta:
            raise ValueError(
                f"{checkpoint} has no classifier 'meta' (model name, channels, ...): it was not written by "
                "tools/train_cls.py"
            )
        model = build_classifier(meta["model"], in_chans=int(meta["channels"]), **meta.get("model_kwargs", {}))
        model.load_state_dict(state)
        dev = torch.device(device)
        model.to(dev).eval()
        return cls(model, dev, int(meta["channels"]), int(meta["stride"]), tuple(meta["img_size"]), meta)

    @torch.no_grad()
    def predict_volume(self, volume: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Presence probabilities of every slice of a case-day.

        Args:
            volume: ``uint16 (D, H, W)``, z in manifest order.
            batch_size: slices per forward pass.

        Returns:
            ``float32 (D, 3)`` in ``[0, 1]``, columns in the order of ``CLASSES``.
        """
        vol = np.asarray(volume)
        if vol.ndim != 3:
            raise ValueError(f"volume must be uint16 (D, H, W) of one case-day, got shape {vol.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        d = vol.shape[0]
        resized, stack_max = preprocess_volume(vol, self.channels, self.stride, self.img_size)
        idx = np.stack([stack_indices(z, d, self.stride, self.channels) for z in range(d)]) if d else None
        rv = torch.from_numpy(resized)
        out = np.zeros((d, NUM_CLASSES), np.float32)
        amp = self.device.type == "cuda"
        for s in range(0, d, batch_size):
            e = min(d, s + batch_size)
            x = rv[torch.from_numpy(idx[s:e])] / torch.from_numpy(stack_max[s:e])[:, None, None, None]
            with torch.autocast("cuda", enabled=amp):
                logits = self.model(x.to(self.device, non_blocking=True))
            out[s:e] = torch.sigmoid(logits.float()).cpu().numpy()
        return out


# --------------------------------------------------------------------------------------------------- files


def write_cls_probs(path: str | os.PathLike, ids: Sequence[str], probs: np.ndarray) -> Path:
    """Write ``cls_probs.csv`` (``id, large_bowel, small_bowel, stomach``) atomically.

    Args:
        path: the csv path (its folder is created).
        ids: slice ids, one per row of ``probs``.
        probs: ``float (N, 3)`` presence probabilities.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(ids), NUM_CLASSES):
        raise ValueError(f"probs must be ({len(ids)}, {NUM_CLASSES}), got {probs.shape}")
    df = pd.DataFrame(probs, columns=list(CLASSES))
    df.insert(0, "id", list(ids))
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6f")
    atomic_write_bytes(path, buf.getvalue().encode())
    return Path(path)


def check_ids(found: Iterable[str], expected: Iterable[str], what: str = "classifier probabilities") -> None:
    """Refuse two id sets that differ, naming a few ids on each side.

    Raises:
        ValueError: ids missing or unexpected (up to 5 of each are named).
    """
    found_s, expected_s = set(found), set(expected)
    missing = sorted(expected_s - found_s)
    extra = sorted(found_s - expected_s)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} slices of the manifest are missing, e.g. {missing[:5]}")
        if extra:
            parts.append(f"{len(extra)} ids are not in the manifest, e.g. {extra[:5]}")
        raise ValueError(
            f"{what} do not match the manifest: " + "; ".join(parts) + ". Predict them again for this WORK folder."
        )


def read_cls_probs(path: str | os.PathLike, expected_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Read ``cls_probs.csv``, checked: columns, probabilities in ``[0, 1]``, no duplicate ids, and (optionally)
    exactly the ids of the manifest.

    Args:
        path: ``cls_probs.csv``.
        expected_ids: the ids it must cover exactly (e.g. ``manifest.id``); None skips the check.

    Returns:
        frame with ``id`` and the class columns (float64), in the file's order.

    Raises:
        FileNotFoundError, ValueError: see :func:`check_ids`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier probabilities not found: {path}; write them with `python tools/predict_cls.py` "
            "(or tools/train_cls.py for out-of-fold ones)"
        )
    df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    need = ["id", *CLASSES]
    if list(df.columns[: len(need)]) != need and not set(need) <= set(df.columns):
        raise ValueError(f"{path} must have columns {need}, got {list(df.columns)}")
    vals = df[list(CLASSES)].to_numpy(np.float64)
    if np.isnan(vals).any() or (vals < 0).any() or (vals > 1).any():
        raise ValueError(f"{path}: probabilities must be in [0, 1]")
    dup = df["id"][df["id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: {len(dup)} duplicate ids, e.g. {dup[:5]}")
    if expected_ids is not None:
        check_ids(df["id"], expected_ids, what=f"classifier probabilities in {path}")
    return df[need]


def predict_work(
    clf: SliceClassifier,
    work: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 32,
    case_days: Sequence[str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Presence probabilities for every slice of a WORK folder (e.g. a prepared test tree), written to ``out``.

    Args:
        clf: a loaded classifier.
        work: WORK folder with ``manifest.csv`` and ``volumes/``.
        out: ``cls_probs.csv`` path.
        batch_size: slices per forward pass.
        case_days: restrict to these case-days (default: all of the manifest).
        progress: show a tqdm bar.

    Returns:
        the frame written (rows in manifest order).
    """
    work = Path(work)
    man = read_manifest(work)
    if case_days is not None:
        man = man[man["case_day"].isin(set(case_days))]
    ids, probs = [], []
    groups = list(man.groupby("case_day", sort=False))
    if progress:
        from tqdm import tqdm

        groups = tqdm(groups, desc="classifier", unit="case-day")
    for cd, rows in groups:
        vol = load_volume(work, cd)
        if int(rows["z"].max()) >= len(vol):
            raise ValueError(
                f"{cd}: the manifest names slice z={int(rows['z'].max())} but the volume has {len(vol)} slices; "
                "prepare the WORK folder again"
            )
        p = clf.predict_volume(vol, batch_size)
        ids.extend(rows["id"].tolist())
        probs.append(p[rows["z"].to_numpy(int)])
    arr = np.concatenate(probs) if probs else np.zeros((0, NUM_CLASSES))
    write_cls_probs(out, ids, arr)
    logger.info("wrote %d slice probabilities to %s", len(ids), out)
    return read_cls_probs(out)
