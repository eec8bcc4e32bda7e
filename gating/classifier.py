"""The slice classifier: a timm model with 3 presence logits on 2.5D stacks, its inputs, files and inference.

Input of slice ``z``: the channels ``data_prep.volumes.stack_indices(z, D, stride, channels)`` of the uint16
volume, divided by the stack's own maximum (the 1st place's normalisation), resized to ``img_size``
(bilinear). Output: 3 logits, one per class of ``CLASSES``; presence probability = sigmoid.

- :func:`build_classifier`: any timm model name, never downloaded; optional pretrained weights from a local file
  (timm adapts the first conv to ``in_chans`` and drops a head of another size).
- :func:`stack_image` / :func:`preprocess_volume`: the input of one slice / of a whole volume (fast inference).
- :class:`SliceClassifier`: ``load(checkpoint, device, config=None)`` + ``predict_volume(volume, batch_size)``.
- :func:`write_cls_probs` / :func:`read_cls_probs`: ``cls_probs.csv`` of docs/contracts.md, ids checked.
- :func:`predict_work`: probabilities for every slice of a WORK folder (test or out-of-fold).

Training: the mmengine modules of :mod:`gating.mm` (``mmcfg/gating/`` configs, ``tools/train.py``).
"""

from __future__ import annotations

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
from mmengine.config import Config

from common.io import atomic_write_bytes
from data_prep.constants import CLASSES, NUM_CLASSES
from data_prep.volumes import stack_indices
from data_prep.work import load_volume, read_manifest
from training.checks import check_timm_name, load_checked_weights, timm_pretrained_overlay
from training.config import build_model, load_config

logger = logging.getLogger(__name__)

__all__ = [
    "SliceClassifier",
    "build_classifier",
    "check_ids",
    "input_definition",
    "run_meta",
    "stored_meta",
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
        ValueError: unknown model name (close timm names are listed), or a ``pretrained`` file that cannot be read
            with ``weights_only=True`` (named).
        FileNotFoundError: ``pretrained`` does not exist.

    >>> m = build_classifier("resnet10t", in_chans=5)
    >>> m(torch.zeros(2, 5, 64, 64)).shape
    torch.Size([2, 3])
    """
    import timm

    check_timm_name(name)
    # a local state dict as timm's pretrained source: timm adapts the first conv to in_chans, drops a head of
    # another size, and downloads nothing
    weights = timm_pretrained_overlay(pretrained) if pretrained else {"pretrained": False}
    return timm.create_model(name, in_chans=in_chans, num_classes=num_classes, **weights, **kwargs)


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


# --------------------------------------------------------------------------------------------------- inference


#: Key of the plain-data model and input definition in a classifier checkpoint's ``meta`` (see :func:`run_meta`).
META_KEY = "slice_classifier"


def run_meta(cfg: Any) -> dict[str, Any]:
    """The model and input definition of a classifier config as plain data, for ``checkpoint["meta"][META_KEY]``
    (written by ``gating.mm.ClsInputMetaHook``): ``{"model": model config dict, "channels", "stride", "img_size",
    "classes"}``. A config is Python, and one stored in a checkpoint is never executed: this is what
    :meth:`SliceClassifier.load` rebuilds the model from when no config is given (``training.config.build_model``
    drops ``pretrained``: the weights come from the checkpoint); it refuses one whose ``classes`` differ from
    ``CLASSES``."""
    channels, stride, img_size = input_definition(cfg, str(cfg.get("filename") or "the run's config"))
    return {
        "model": cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model),
        "channels": channels,
        "stride": stride,
        "img_size": list(img_size),
        "classes": list(CLASSES),
    }


def stored_meta(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The :func:`run_meta` stored in a classifier checkpoint (read with ``weights_only=True``), or None.

    Raises:
        FileNotFoundError: no such file. ValueError: not readable with ``weights_only=True`` (the file is named).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(
            f"cannot load {path} with weights_only=True ({type(e).__name__}: {e}); only trusted files may be "
            "unpickled, and model weights never need it"
        ) from e
    meta = raw.get("meta") if isinstance(raw, dict) else None
    stored = meta.get(META_KEY) if isinstance(meta, dict) else None
    return stored if isinstance(stored, dict) and "model" in stored else None


def input_definition(cfg: Any, source: str) -> tuple[int, int, tuple[int, int]]:
    """``(channels, stride, img_size)`` of a slice classifier config (its test, else val, else train dataset).

    Raises:
        ValueError: not a slice classifier config, or no dataset with these keys (``source`` names it).
    """
    model_type = (cfg.get("model") or {}).get("type")
    if model_type != "SliceClassifierModel":
        raise ValueError(
            f"{source} is not a slice classifier config (model.type is {model_type!r}, expected "
            "'SliceClassifierModel'): pass an mmcfg/gating/ config"
        )
    for key in ("test_dataloader", "val_dataloader", "train_dataloader"):
        loader = cfg.get(key)
        ds = loader.get("dataset") if loader else None
        if ds and all(k in ds for k in ("channels", "stride", "img_size")):
            return int(ds["channels"]), int(ds["stride"]), (int(ds["img_size"][0]), int(ds["img_size"][1]))
    raise ValueError(f"{source} has no dataset with channels, stride and img_size (test_dataloader.dataset)")


@dataclass
class SliceClassifier:
    """A trained slice classifier ready for inference.

    Attributes:
        model: the ``gating.mm.SliceClassifierModel`` (eval mode, on ``device``); ``model(x)`` gives logits
            float ``(N, 3)`` of inputs float32 ``(N, channels, h, w)``.
        device: torch device.
        channels, stride, img_size: the input definition it was trained with.
    """

    model: torch.nn.Module
    device: torch.device
    channels: int
    stride: int
    img_size: tuple[int, int]

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike,
        device: str | torch.device = "cpu",
        config: str | os.PathLike | Any | None = None,
    ) -> SliceClassifier:
        """Load a checkpoint of ``tools/train.py`` (e.g. ``best.pth``) with ``weights_only=True``.

        The model is built from ``config`` (or, without it, from the plain-data definition the checkpoint stores,
        :func:`run_meta`; a config stored in a checkpoint is never executed) and the weights are checked against
        it. The input definition (``channels, stride, img_size``) is the one the checkpoint was trained with when it
        stores it (``--cfg-options img_size=...`` at training time; a given config that says otherwise is logged as a
        warning), else the given config's.

        Args:
            checkpoint: an mmengine checkpoint (``state_dict``; a bare state dict works with ``config``).
            device: torch device.
            config: the ``mmcfg/gating/`` config it was trained with (a path or an ``mmengine.Config``); None builds
                from the definition stored in the checkpoint (``meta["slice_classifier"]``).

        Raises:
            FileNotFoundError: missing checkpoint or config.
            ValueError: unreadable with ``weights_only=True``, no stored config (and none given), not a classifier
                config, trained on other classes than ``CLASSES`` (stored ``classes``), or weights of another config
                (``training.checks.CheckpointMismatchError``).
        """
        import gating.mm  # noqa: F401  (registers SliceClassifierModel; the config's custom_imports does it too)

        stored = stored_meta(checkpoint)
        if stored is not None and "classes" in stored and list(stored["classes"]) != list(CLASSES):
            raise ValueError(
                f"{checkpoint} was trained on the classes {list(stored['classes'])}, this code predicts "
                f"{list(CLASSES)} (in this order): retrain the classifier"
            )
        if config is None:
            if stored is None:
                raise ValueError(
                    f"{checkpoint} holds no classifier definition (meta['{META_KEY}'], written by tools/train.py): "
                    "pass the config it was trained with (SliceClassifier.load(checkpoint, device, config=...), "
                    "tools/predict_cls.py --config)"
                )
            source = f"the definition stored in {checkpoint}"
            if stored["model"].get("type") != "SliceClassifierModel":
                raise ValueError(
                    f"{checkpoint}: the stored model type {stored['model'].get('type')!r} is not a slice classifier"
                )
            cfg = Config({"model": stored["model"]})
            channels, stride = int(stored["channels"]), int(stored["stride"])
            img_size = (int(stored["img_size"][0]), int(stored["img_size"][1]))
        else:
            if hasattr(config, "model"):
                cfg, source = config, str(config.filename or "the given config")
            else:
                cfg, source = load_config(config), str(config)
            channels, stride, img_size = input_definition(cfg, source)
            trained = (int(stored["channels"]), int(stored["stride"]), tuple(stored["img_size"])) if stored else None
            if trained is not None and trained != (channels, stride, img_size):
                logger.warning(
                    "%s was trained with channels, stride, img_size = %s but %s says %s: using the trained ones",
                    checkpoint,
                    trained,
                    source,
                    (channels, stride, img_size),
                )
                channels, stride, img_size = trained
        model = load_checked_weights(build_model(cfg), checkpoint, source)
        dev = torch.device(device)
        model.to(dev).eval()
        return cls(model, dev, channels, stride, img_size)

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
