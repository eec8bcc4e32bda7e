"""The slice classifier: a timm model with one presence logit per class on 2.5D stacks, its inputs, files and
inference.

Input of slice ``z``: the slices ``data_prep.volumes.stack_indices(z, D, stride, channels)`` of each image channel
of the uint16 volume (``K`` channels of ``WORK/dataset.json``, modality-major: channel 0's stack, then channel
1's), each stack divided by its own maximum (the 1st place's normalisation; ``norm="max"``) or, for CT, the
planner's scheme ``norm=dict(mode="ct", clip=(lo, hi), mean=m, std=s)`` (``python -m data_prep plan``:
``(clip(x, lo, hi) - m) / s`` in stored units, :func:`data_prep.plan.ct_params`), resized to ``img_size``
(bilinear). The ``norm`` is the config's dataset ``norm`` (:func:`input_norm`) and is stored in every checkpoint.
Output: ``C`` logits, one per class of the dataset it was trained on (:attr:`SliceClassifier.classes`, recorded in
the checkpoint); presence probability = sigmoid.

- :func:`build_classifier`: any timm model name, never downloaded; optional pretrained weights from a local file
  (timm adapts the first conv to ``in_chans`` and drops a head of another size).
- :func:`stack_image` / :func:`preprocess_volume`: the input of one slice / of a whole volume (fast inference).
- :class:`SliceClassifier`: ``load(checkpoint, device, config=None, work=None)`` + ``predict_volume(volume,
  batch_size)``; ``.classes``.
- :func:`write_cls_probs` / :func:`read_cls_probs`: ``cls_probs.csv`` of docs/contracts.md (``id`` + one column per
  class), ids checked.
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
from data_prep.dataset import KAGGLE
from data_prep.plan import CT_MODE, ct_normalise, ct_params
from data_prep.volumes import stack_indices
from data_prep.work import load_volume, read_dataset, read_manifest
from training.checks import (
    check_dataset_matches,
    check_timm_name,
    checkpoint_meta,
    load_checked_weights,
    timm_pretrained_overlay,
    volume_channels,
)
from training.config import (
    DATASET_META_KEY,
    build_model,
    check_dataset_summary,
    config_for_checkpoint,
    dataset_summary,
    model_classes,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SliceClassifier",
    "build_classifier",
    "check_ids",
    "check_cls_norm",
    "input_definition",
    "input_norm",
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
    num_classes: int = KAGGLE.num_classes,
    pretrained: str | os.PathLike | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """A timm model with ``num_classes`` logits; never downloads.

    Args:
        name: any timm model name (``efficientnet_b0``, ``convnext_tiny``, ``tf_efficientnetv2_s``, ...).
        in_chans: input channels (3 or 5 for the 2.5D stacks of one image channel; ``x K`` for ``K`` channels).
        num_classes: presence logits, one per class (default: the Kaggle layout's 3).
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


#: The classifier's normalisations: ``"max"`` (each stack by its own max) or the CT scheme (a dict).
CLS_NORM_MODES: tuple[str, ...] = ("max", CT_MODE)


def check_cls_norm(norm: Any, where: str = "the classifier's norm") -> str | dict[str, Any]:
    """A checked classifier normalisation as plain data: ``"max"`` or ``dict(mode="ct", clip, mean, std)``.

    Raises:
        ValueError: anything else (``where`` names the setting).

    >>> check_cls_norm("max"), check_cls_norm({"mode": "max"})
    ('max', 'max')
    """
    if hasattr(norm, "to_dict"):
        norm = norm.to_dict()
    if isinstance(norm, dict):
        if norm.get("mode") == CT_MODE:
            plain = {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in norm.items()}
            ct_params(plain, 0, where)
            return plain
        norm = norm.get("mode")
    if norm != "max":
        raise ValueError(f"{where} must be 'max' or dict(mode='ct', clip=(lo, hi), mean=m, std=s), got {norm!r}")
    return "max"


def _ct(norm: Any, channel: int) -> tuple[float, float, float, float] | None:
    return ct_params(norm, channel, "the classifier's norm") if isinstance(norm, dict) else None


def stack_image(
    volume: np.ndarray | Sequence[np.ndarray],
    z: int,
    channels: int = 3,
    stride: int = 2,
    img_size: tuple[int, int] | None = None,
    norm: str | dict[str, Any] = "max",
    channel: int = 0,
) -> np.ndarray:
    """The classifier input of slice ``z``: the 2.5D stack divided by its own max (or normalised by the CT scheme),
    resized.

    Args:
        volume: ``uint16 (D, H, W)``, or a list of ``K`` image channels ``(D, H, W)``: their stacks are
            concatenated, each normalised on its own.
        z: slice index.
        channels, stride: see :func:`data_prep.volumes.stack_indices`.
        img_size: ``(h, w)`` output size, None keeps ``(H, W)``.
        norm: ``"max"`` or ``dict(mode="ct", clip=(lo, hi), mean=m, std=s)`` (:func:`check_cls_norm`).
        channel: the image channel ``volume`` is (per-channel CT values); a list numbers its channels itself.

    Returns:
        ``float32 (channels x K, h, w)``: in ``[0, 1]`` for ``"max"`` (all zeros for an all-zero stack).
    """
    if isinstance(volume, (list, tuple)):
        parts = [stack_image(v, z, channels, stride, img_size, norm, k) for k, v in enumerate(volume)]
        return parts[0] if len(parts) == 1 else np.ascontiguousarray(np.concatenate(parts))
    x = np.asarray(volume[stack_indices(z, volume.shape[0], stride, channels)], dtype=np.float32)
    ct = _ct(norm, channel)
    if ct is not None:
        x = ct_normalise(x, *ct)
    else:
        peak = float(x.max())
        if peak > 0:
            x /= peak
    if img_size is not None and tuple(img_size) != x.shape[1:]:
        x = cv2.resize(x.transpose(1, 2, 0), (img_size[1], img_size[0]), interpolation=cv2.INTER_LINEAR)
        x = x.reshape(img_size[0], img_size[1], channels).transpose(2, 0, 1)
    return np.ascontiguousarray(x)


def preprocess_volume(
    volume: np.ndarray,
    channels: int = 3,
    stride: int = 2,
    img_size: tuple[int, int] | None = None,
    norm: str | dict[str, Any] = "max",
    channel: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a whole volume once and give the per-stack maxima, for fast inference.

    ``resized[stack_indices(z)] / maxima[z]`` equals :func:`stack_image` (resizing is linear). Under the CT scheme
    the volume is normalised voxel by voxel before resizing (as :func:`stack_image` does) and the maxima are 1.

    Returns:
        ``(float32 (D, h, w), float32 (D,))``: the resized volume and each slice's stack maximum (1 when 0).
    """
    ct = _ct(norm, channel)
    vol = ct_normalise(volume, *ct) if ct is not None else np.asarray(volume)
    d = vol.shape[0]
    slice_max = vol.reshape(d, -1).max(axis=1).astype(np.float32)
    idx = np.stack([stack_indices(z, d, stride, channels) for z in range(d)]) if d else np.zeros((0, channels), int)
    stack_max = slice_max[idx].max(axis=1) if d else np.zeros(0, np.float32)
    stack_max[stack_max <= 0] = 1.0
    if ct is not None:
        stack_max[:] = 1.0
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


def _summary(cfg: Any) -> dict[str, Any]:
    """The ``dataset_info`` of a loaded config (the Kaggle layout's for a config not made by ``load_config``)."""
    summary = cfg.get("dataset_info")
    return check_dataset_summary(summary, "dataset_info") if summary is not None else dataset_summary(KAGGLE)


def run_meta(cfg: Any) -> dict[str, Any]:
    """The model and input definition of a classifier config as plain data, for ``checkpoint["meta"][META_KEY]``
    (written by ``gating.mm.ClsInputMetaHook``): ``{"model": model config dict, "channels", "stride", "img_size",
    "norm", "classes", "label_kind", "image_channels"}`` (``channels``: the stack depth per image channel;
    ``image_channels``: the dataset's image channels). A config is Python, and one stored in a checkpoint is never
    executed: this is what :meth:`SliceClassifier.load` rebuilds the model from when no config is given
    (``training.config.build_model`` drops ``pretrained``: the weights come from the checkpoint)."""
    source = str(cfg.get("filename") or "the run's config")
    channels, stride, img_size = input_definition(cfg, source)
    summary = _summary(cfg)
    return {
        "model": cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model),
        "channels": channels,
        "stride": stride,
        "img_size": list(img_size),
        "norm": input_norm(cfg, source),
        "classes": list(summary["classes"]),
        "label_kind": summary["label_kind"],
        "image_channels": list(summary["channels"]),
    }


def stored_meta(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The :func:`run_meta` stored in a classifier checkpoint (read with ``weights_only=True``), or None.

    Raises:
        FileNotFoundError: no such file. ValueError: not readable with ``weights_only=True`` (the file is named).
    """
    stored = checkpoint_meta(checkpoint).get(META_KEY)
    return stored if isinstance(stored, dict) and "model" in stored else None


def _trained_on(checkpoint: str | os.PathLike, stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a classifier checkpoint predicts: its ``meta["dataset"]`` (the training engine's), else the classes of
    its stored definition (older checkpoints), else None.

    Raises:
        ValueError: the two disagree (the checkpoint was edited), naming both class lists.
    """
    summary = checkpoint_meta(checkpoint).get(DATASET_META_KEY)
    summary = check_dataset_summary(summary, f"{checkpoint} meta['dataset']") if summary is not None else None
    if stored is None or not stored.get("classes"):
        return summary
    if summary is not None and list(stored["classes"]) != summary["classes"]:
        raise ValueError(
            f"{checkpoint} was trained on the classes {list(stored['classes'])} (meta['{META_KEY}']), but its "
            f"meta['dataset'] says {summary['classes']}: the checkpoint was altered; use the file tools/train.py wrote"
        )
    if summary is not None:
        return summary
    channels = stored.get("image_channels") or KAGGLE.channels
    label_kind = stored.get("label_kind") or KAGGLE.label_kind
    return check_dataset_summary(
        {"classes": stored["classes"], "label_kind": label_kind, "channels": channels}, f"{checkpoint}"
    )


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


def input_norm(cfg: Any, source: str = "the config") -> str | dict[str, Any]:
    """The input normalisation of a slice classifier config: its test (else val, else train) dataset's ``norm``,
    ``"max"`` when the dataset has none (:func:`check_cls_norm`).

    Raises:
        ValueError: an invalid ``norm`` (``source`` names the config).
    """
    for key in ("test_dataloader", "val_dataloader", "train_dataloader"):
        loader = cfg.get(key)
        ds = loader.get("dataset") if loader else None
        if ds and "norm" in ds:
            return check_cls_norm(ds["norm"], f"{source}: {key}.dataset.norm")
    return "max"


@dataclass
class SliceClassifier:
    """A trained slice classifier ready for inference.

    Attributes:
        model: the ``gating.mm.SliceClassifierModel`` (eval mode, on ``device``); ``model(x)`` gives logits
            float ``(N, C)`` of inputs float32 ``(N, channels x K, h, w)``.
        device: torch device.
        channels, stride, img_size: the input definition it was trained with (``channels`` slices per image channel).
        norm: its input normalisation (``"max"`` or the CT scheme, :func:`check_cls_norm`).
        classes: the class names of the ``C`` outputs, in order.
        label_kind: ``"overlapping"`` or ``"exclusive"``.
        image_channels: the names of the ``K`` image channels it reads.
    """

    model: torch.nn.Module
    device: torch.device
    channels: int
    stride: int
    img_size: tuple[int, int]
    classes: tuple[str, ...] = KAGGLE.classes
    label_kind: str = KAGGLE.label_kind
    image_channels: tuple[str, ...] = KAGGLE.channels
    norm: str | dict[str, Any] = "max"

    @property
    def dataset_info(self) -> dict[str, Any]:
        """What the model predicts: ``{"classes", "label_kind", "channels"}`` (``training.config.dataset_summary``)."""
        return {"classes": list(self.classes), "label_kind": self.label_kind, "channels": list(self.image_channels)}

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike,
        device: str | torch.device = "cpu",
        config: str | os.PathLike | Any | None = None,
        work: str | os.PathLike | None = None,
    ) -> SliceClassifier:
        """Load a checkpoint of ``tools/train.py`` (e.g. ``best.pth``) with ``weights_only=True``.

        The model is built from ``config`` (or, without it, from the plain-data definition the checkpoint stores,
        :func:`run_meta`; a config stored in a checkpoint is never executed) and the weights are checked against
        it. Its classes and image channels are the checkpoint's (``meta["dataset"]``: a config whose
        ``num_classes`` is None builds that many logits). The input definition (``channels, stride, img_size``) is
        the one the checkpoint was trained with when it stores it (``--cfg-options img_size=...`` at training time;
        a given config that says otherwise is logged as a warning), else the given config's.

        Args:
            checkpoint: an mmengine checkpoint (``state_dict``; a bare state dict works with ``config``).
            device: torch device.
            config: the ``mmcfg/gating/`` config it was trained with (a path or an ``mmengine.Config``); None builds
                from the definition stored in the checkpoint (``meta["slice_classifier"]``).
            work: the WORK folder it will predict; its ``dataset.json`` must list the model's classes (same order)
                and image channel count. None skips the check.

        Raises:
            FileNotFoundError: missing checkpoint or config.
            ValueError: unreadable with ``weights_only=True``, no stored config (and none given), not a classifier
                config, a stored definition whose classes contradict the checkpoint's or the config's, a config whose
                explicit ``num_classes`` differs from the checkpoint's classes, weights of another config
                (``training.checks.CheckpointMismatchError``), or a ``work`` of other classes
                (``training.checks.DatasetMismatchError``, both lists named).
        """
        import gating.mm  # noqa: F401  (registers SliceClassifierModel; the config's custom_imports does it too)

        stored = stored_meta(checkpoint)
        predicts = _trained_on(checkpoint, stored)
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
            cfg = Config({"model": stored["model"], "dataset_info": predicts or dataset_summary(KAGGLE)})
            channels, stride = int(stored["channels"]), int(stored["stride"])
            img_size = (int(stored["img_size"][0]), int(stored["img_size"][1]))
            norm = check_cls_norm(stored.get("norm", "max"), f"{checkpoint} meta['{META_KEY}']['norm']")
        else:
            source = str(config.filename or "the given config") if hasattr(config, "model") else str(config)
            cfg = config_for_checkpoint(config, checkpoint)
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
            norm = input_norm(cfg, source)
            if stored is not None and "norm" in stored and check_cls_norm(stored["norm"]) != norm:
                logger.warning("%s was trained with norm %s but %s says %s: using the trained one", checkpoint,
                               stored["norm"], source, norm)  # fmt: skip
                norm = check_cls_norm(stored["norm"])
        summary = _summary(cfg)
        classes = model_classes(cfg) if config is not None else tuple(summary["classes"])
        if predicts is not None and list(classes) != list(predicts["classes"]):
            raise ValueError(
                f"{checkpoint} was trained on the classes {predicts['classes']}, but {source} predicts {list(classes)} "
                "(in this order): pass the config it was trained with"
            )
        model = load_checked_weights(build_model(cfg), checkpoint, source)
        dev = torch.device(device)
        model.to(dev).eval()
        clf = cls(
            model,
            dev,
            channels,
            stride,
            img_size,
            tuple(classes),
            summary["label_kind"],
            tuple(summary["channels"]),
            norm,
        )
        if work is not None:
            info = read_dataset(work)
            check_dataset_matches(
                clf.dataset_info, info.classes, info.num_channels, str(checkpoint), f"{work}/dataset.json"
            )
        return clf

    @torch.no_grad()
    def predict_volume(self, volume: np.ndarray | Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Presence probabilities of every slice of a case-day.

        Args:
            volume: ``uint16 (D, H, W)``, z in manifest order; for ``K > 1`` image channels ``(K, D, H, W)`` or a
                list of ``K`` ``(D, H, W)`` arrays, in :attr:`image_channels` order.
            batch_size: slices per forward pass.

        Returns:
            ``float32 (D, C)`` in ``[0, 1]``, columns in the order of :attr:`classes`.

        Raises:
            ValueError: a volume of another number of image channels, or ``batch_size < 1``.
        """
        parts = volume_channels(volume, len(self.image_channels), "the classifier's volume")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        d = parts[0].shape[0]
        pre = [
            preprocess_volume(np.asarray(v), self.channels, self.stride, self.img_size, self.norm, k)
            for k, v in enumerate(parts)
        ]
        idx = np.stack([stack_indices(z, d, self.stride, self.channels) for z in range(d)]) if d else None
        out = np.zeros((d, len(self.classes)), np.float32)
        amp = self.device.type == "cuda"
        for s in range(0, d, batch_size):
            e = min(d, s + batch_size)
            xs = [
                torch.from_numpy(rv)[torch.from_numpy(idx[s:e])] / torch.from_numpy(mx[s:e])[:, None, None, None]
                for rv, mx in pre
            ]
            x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
            with torch.autocast("cuda", enabled=amp):
                logits = self.model(x.to(self.device, non_blocking=True))
            out[s:e] = torch.sigmoid(logits.float()).cpu().numpy()
        return out


# --------------------------------------------------------------------------------------------------- files


def write_cls_probs(
    path: str | os.PathLike, ids: Sequence[str], probs: np.ndarray, classes: Sequence[str] = KAGGLE.classes
) -> Path:
    """Write ``cls_probs.csv`` (``id`` and one column per class, e.g. ``id, large_bowel, small_bowel, stomach``)
    atomically.

    Args:
        path: the csv path (its folder is created).
        ids: slice ids, one per row of ``probs``.
        probs: ``float (N, C)`` presence probabilities.
        classes: the ``C`` class names, in column order (the classifier's :attr:`SliceClassifier.classes`).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(ids), len(classes)):
        raise ValueError(
            f"probs must be ({len(ids)}, {len(classes)}) for the classes {list(classes)}, got {probs.shape}"
        )
    df = pd.DataFrame(probs, columns=list(classes))
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


def read_cls_probs(
    path: str | os.PathLike, expected_ids: Iterable[str] | None = None, classes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read ``cls_probs.csv``, checked: columns, probabilities in ``[0, 1]``, no duplicate ids, and (optionally)
    exactly the ids of the manifest.

    Args:
        path: ``cls_probs.csv``.
        expected_ids: the ids it must cover exactly (e.g. ``manifest.id``); None skips the check.
        classes: the class columns it must have (the dataset's, ``read_dataset(work).classes``); None: every column
            after ``id``.

    Returns:
        frame with ``id`` and the class columns (float64), rows in the file's order, columns in ``classes`` order.

    Raises:
        FileNotFoundError, ValueError: see :func:`check_ids`; a missing class column (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier probabilities not found: {path}; write them with `python tools/predict_cls.py` "
            "(or tools/train_cls.py for out-of-fold ones)"
        )
    df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    names = [c for c in df.columns if c != "id"] if classes is None else [str(c) for c in classes]
    need = ["id", *names]
    if not names or not set(need) <= set(df.columns):
        raise ValueError(f"{path} must have columns {need}, got {list(df.columns)}")
    try:
        vals = df[names].to_numpy(np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: the class columns {names} must hold probabilities ({e})") from None
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
        clf: a loaded classifier (its classes name the columns; it reads as many image channels as it was trained
            on: ``volumes/{key}.npy``, ``volumes/{key}_ch{k}.npy``).
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
        vols = [load_volume(work, cd, channel=k) for k in range(len(clf.image_channels))]
        if int(rows["z"].max()) >= len(vols[0]):
            raise ValueError(
                f"{cd}: the manifest names slice z={int(rows['z'].max())} but the volume has {len(vols[0])} slices; "
                "prepare the WORK folder again"
            )
        p = clf.predict_volume(vols, batch_size)
        ids.extend(rows["id"].tolist())
        probs.append(p[rows["z"].to_numpy(int)])
    arr = np.concatenate(probs) if probs else np.zeros((0, len(clf.classes)))
    write_cls_probs(out, ids, arr, clf.classes)
    logger.info("wrote %d slice probabilities to %s", len(ids), out)
    return read_cls_probs(out, classes=clf.classes)
