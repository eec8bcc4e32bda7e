"""Inference API of the 2.5D segmenters (docs/contracts.md, "Inference APIs").

>>> seg = Segmenter.load("mmcfg/unet/unet_effb4_2xb16-20k_gitract-384x384.py", "best.pth", "cuda")  # doctest: +SKIP
>>> probs = seg.predict_volume(volume)  # float32 (D, C, H, W), C = len(seg.classes)                 # doctest: +SKIP

The model predicts the classes it was trained on (``seg.classes``, from the checkpoint's ``meta["dataset"]``; a
checkpoint without it: the config's WORK, the Kaggle classes without a ``dataset.json``), on ``seg.image_channels``
image channels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import segmenters.mm  # noqa: F401  (the mmcv-lite shim and the registered modules, before any mmseg import)
from data_prep.plan import norm_mode
from data_prep.volumes import stack_indices
from data_prep.work import read_dataset
from gating.crop import crop_resize, full_box, paste_resize
from segmenters.mm.stacks import check_norm, normalise_stack
from training.checks import check_dataset_matches, load_checked_weights, volume_channels
from training.config import build_model, config_for_checkpoint, model_classes

logger = logging.getLogger(__name__)


def _pipeline_params(cfg: Any) -> dict[str, Any]:
    """``stride, channels, norm, img_size`` of the config's test pipeline (``norm`` checked, as plain data)."""
    pipeline = cfg.test_dataloader.dataset.pipeline
    load = next((t for t in pipeline if t["type"] == "LoadGIStack"), None)
    resize = next((t for t in pipeline if t["type"] == "GIResize"), None)
    if load is None or resize is None:
        raise ValueError(f"{cfg.filename}: the test pipeline needs LoadGIStack and GIResize, got {pipeline}")
    return dict(
        stride=int(load.get("stride", 2)),
        channels=int(load.get("channels", 3)),
        norm=check_norm(load.get("norm", "max"), where=f"{cfg.filename}: LoadGIStack norm"),
        img_size=(int(resize["size"][0]), int(resize["size"][1])),
    )


class Segmenter:
    """A trained 2.5D segmenter that predicts class probabilities for whole case-day volumes.

    Build it with :meth:`load`. Inputs are made exactly as in training: the 2.5D stack of each slice from
    each image channel of the volume, normalised per stack, channel 0's stack first, cropped to the slice's box (if
    any), resized to the network size; the probabilities are resized back to the box and pasted into the full frame
    (zeros outside).

    Attributes:
        classes: the class names of the output channels, in order.
        label_kind: ``"overlapping"`` or ``"exclusive"`` (how the training masks were stored).
        image_channels: the names of the image channels (modalities) the model reads.
        stride, channels, norm, img_size: the 2.5D stack (``channels`` slices per image channel) and input size.
    """

    def __init__(self, model: torch.nn.Module, cfg: Any, device: str | torch.device, amp: bool | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)
        self.amp = (self.device.type == "cuda") if amp is None else bool(amp)
        p = _pipeline_params(cfg)
        self.stride, self.channels, self.norm, self.img_size = p["stride"], p["channels"], p["norm"], p["img_size"]
        self.classes: tuple[str, ...] = model_classes(cfg)
        self.label_kind: str = str(cfg.dataset_info["label_kind"])
        self.image_channels: tuple[str, ...] = tuple(cfg.dataset_info["channels"])

    @property
    def dataset_info(self) -> dict[str, Any]:
        """What the model predicts: ``{"classes", "label_kind", "channels"}`` (``training.config.dataset_summary``)."""
        return {"classes": list(self.classes), "label_kind": self.label_kind, "channels": list(self.image_channels)}

    @classmethod
    def load(
        cls,
        config: str | os.PathLike,
        checkpoint: str | os.PathLike,
        device: str | torch.device = "cpu",
        cfg_options: dict[str, Any] | None = None,
        amp: bool | None = None,
        work: str | os.PathLike | None = None,
    ) -> Segmenter:
        """Build the model of ``config`` for ``checkpoint`` and load its weights (``weights_only=True``).

        The head has the checkpoint's classes (``meta["dataset"]``) when the config's ``num_classes`` is None
        (:func:`training.config.config_for_checkpoint`).

        Args:
            config: the ``mmcfg/`` config the checkpoint was trained with.
            checkpoint: ``.pth`` from tools/train.py (best or last).
            device: ``cpu``, ``cuda``, ``cuda:1``, ...
            cfg_options: config overrides (dotted keys).
            amp: float16 autocast on CUDA (default: True on CUDA).
            work: the WORK folder it will predict; its ``dataset.json`` must list the model's classes (same order)
                and image channel count. None skips the check.

        Raises:
            FileNotFoundError: config or checkpoint missing.
            CheckpointMismatchError: the checkpoint was made by another config.
            DatasetMismatchError: ``work`` holds other classes or image channels (both named).
            ValueError: the config's explicit ``num_classes`` differs from the checkpoint's classes.
        """
        cfg = config_for_checkpoint(config, checkpoint, cfg_options)
        model = load_checked_weights(build_model(cfg), checkpoint, config)  # weights come from the checkpoint
        model.to(device).eval()
        seg = cls(model, cfg, device, amp)
        if work is not None:
            info = read_dataset(work)
            check_dataset_matches(
                seg.dataset_info, info.classes, info.num_channels, str(checkpoint), f"{work}/dataset.json"
            )
        return seg

    @torch.inference_mode()
    def predict_batch(self, x: torch.Tensor, tta: Sequence[str] = ("hflip",)) -> torch.Tensor:
        """Probabilities ``(N, C, h, w)`` float32 for network-size inputs ``(N, planes, h, w)``."""
        x = x.to(self.device, non_blocking=True).float()
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp and self.device.type == "cuda"):
            return self.model.predict_probs(x, tta=tuple(tta)).float()

    def predict_volume(
        self,
        volume: np.ndarray | Sequence[np.ndarray],
        keep: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        tta: Sequence[str] = ("hflip",),
        batch_size: int = 16,
    ) -> np.ndarray:
        """Class probabilities of every slice of one case-day.

        Args:
            volume: uint16 ``(D, H, W)`` (one image channel), z in manifest order (a memmap is fine); for ``K > 1``
                image channels ``(K, D, H, W)`` or a list of ``K`` ``(D, H, W)`` arrays, in
                :attr:`image_channels` order.
            keep: optional bool ``(D,)``; slices with False are not run and come back as zeros.
            boxes: optional int ``(D, 4)`` crop boxes ``x0, y0, x1, y1`` (x1/y1 exclusive) in full-frame pixels.
            tta: flips averaged with the plain prediction (``hflip``, ``vflip``); ``()`` for none.
            batch_size: slices per forward pass.

        Returns:
            float32 ``(D, C, H, W)`` probabilities in ``[0, 1]`` (``C = len(classes)``), full image size.

        Raises:
            ValueError: a volume of another number of image channels, or bad ``keep`` / ``boxes`` shapes.
        """
        channels = volume_channels(volume, len(self.image_channels))
        d, h, w = channels[0].shape
        if keep is not None and np.asarray(keep).shape != (d,):
            raise ValueError(f"keep must be bool ({d},), got shape {np.asarray(keep).shape}")
        if boxes is not None and np.asarray(boxes).shape != (d, 4):
            raise ValueError(f"boxes must be int ({d}, 4), got shape {np.asarray(boxes).shape}")
        out = np.zeros((d, len(self.classes), h, w), np.float32)
        zs = [z for z in range(d) if keep is None or bool(keep[z])]
        vmax = [float(v.max()) if norm_mode(self.norm) == "volume_max" else None for v in channels]
        for i in range(0, len(zs), batch_size):
            chunk = zs[i : i + batch_size]
            xs, bxs = [], []
            for z in chunk:
                idx = stack_indices(z, d, self.stride, self.channels)
                stacks = [
                    normalise_stack(np.asarray(v[idx]), self.norm, m, k) for k, (v, m) in enumerate(zip(channels, vmax))
                ]
                stack = stacks[0] if len(stacks) == 1 else np.concatenate(stacks)
                box = np.asarray(boxes[z]) if boxes is not None else full_box((h, w))
                xs.append(crop_resize(stack, box, self.img_size))
                bxs.append(box)
            probs = self.predict_batch(torch.from_numpy(np.stack(xs)), tta)
            for z, p, box in zip(chunk, probs, bxs):
                out[z] = paste_resize(p, box, (h, w)).clamp_(0, 1).cpu().numpy()
        return out
