"""Inference API of the 2.5D segmenters (docs/contracts.md, "Inference APIs").

>>> seg = Segmenter.load("mmcfg/unet/unet_effb4_2xb16-20k_gitract-384x384.py", "best.pth", "cuda")  # doctest: +SKIP
>>> probs = seg.predict_volume(volume)  # float32 (D, 3, H, W)                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import segmenters.mm  # noqa: F401  (the mmcv-lite shim and the registered modules, before any mmseg import)
from data_prep.constants import NUM_CLASSES
from data_prep.volumes import stack_indices
from gating.crop import crop_resize, full_box, paste_resize
from segmenters.mm.stacks import normalise_stack
from training.checks import load_checked_weights
from training.config import build_model, load_config

logger = logging.getLogger(__name__)


def _pipeline_params(cfg: Any) -> dict[str, Any]:
    """``stride, channels, norm, img_size`` of the config's test pipeline."""
    pipeline = cfg.test_dataloader.dataset.pipeline
    load = next((t for t in pipeline if t["type"] == "LoadGIStack"), None)
    resize = next((t for t in pipeline if t["type"] == "GIResize"), None)
    if load is None or resize is None:
        raise ValueError(f"{cfg.filename}: the test pipeline needs LoadGIStack and GIResize, got {pipeline}")
    return dict(
        stride=int(load.get("stride", 2)),
        channels=int(load.get("channels", 3)),
        norm=str(load.get("norm", "max")),
        img_size=(int(resize["size"][0]), int(resize["size"][1])),
    )


class Segmenter:
    """A trained 2.5D segmenter that predicts class probabilities for whole case-day volumes.

    Build it with :meth:`load`. Inputs are made exactly as in training: the 2.5D stack of each slice from
    the volume, normalised per stack, cropped to the slice's box (if any), resized to the network size;
    the probabilities are resized back to the box and pasted into the full frame (zeros outside).
    """

    def __init__(self, model: torch.nn.Module, cfg: Any, device: str | torch.device, amp: bool | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)
        self.amp = (self.device.type == "cuda") if amp is None else bool(amp)
        p = _pipeline_params(cfg)
        self.stride, self.channels, self.norm, self.img_size = p["stride"], p["channels"], p["norm"], p["img_size"]

    @classmethod
    def load(
        cls,
        config: str | os.PathLike,
        checkpoint: str | os.PathLike,
        device: str | torch.device = "cpu",
        cfg_options: dict[str, Any] | None = None,
        amp: bool | None = None,
    ) -> Segmenter:
        """Build the model of ``config`` and load ``checkpoint`` (``weights_only=True``).

        Args:
            config: the ``mmcfg/`` config the checkpoint was trained with.
            checkpoint: ``.pth`` from tools/train.py (best or last).
            device: ``cpu``, ``cuda``, ``cuda:1``, ...
            cfg_options: config overrides (dotted keys).
            amp: float16 autocast on CUDA (default: True on CUDA).

        Raises:
            FileNotFoundError: config or checkpoint missing.
            CheckpointMismatchError: the checkpoint was made by another config.
        """
        cfg = load_config(config, cfg_options)
        model = load_checked_weights(build_model(cfg), checkpoint, config)  # weights come from the checkpoint
        model.to(device).eval()
        return cls(model, cfg, device, amp)

    @torch.inference_mode()
    def predict_batch(self, x: torch.Tensor, tta: Sequence[str] = ("hflip",)) -> torch.Tensor:
        """Probabilities ``(N, 3, h, w)`` float32 for network-size inputs ``(N, C, h, w)``."""
        x = x.to(self.device, non_blocking=True).float()
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp and self.device.type == "cuda"):
            return self.model.predict_probs(x, tta=tuple(tta)).float()

    def predict_volume(
        self,
        volume: np.ndarray,
        keep: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        tta: Sequence[str] = ("hflip",),
        batch_size: int = 16,
    ) -> np.ndarray:
        """Class probabilities of every slice of one case-day.

        Args:
            volume: uint16 ``(D, H, W)``, z in manifest order (a memmap is fine).
            keep: optional bool ``(D,)``; slices with False are not run and come back as zeros.
            boxes: optional int ``(D, 4)`` crop boxes ``x0, y0, x1, y1`` (x1/y1 exclusive) in full-frame pixels.
            tta: flips averaged with the plain prediction (``hflip``, ``vflip``); ``()`` for none.
            batch_size: slices per forward pass.

        Returns:
            float32 ``(D, 3, H, W)`` probabilities in ``[0, 1]``, full image size.
        """
        if volume.ndim != 3:
            raise ValueError(f"volume must be (D, H, W), got shape {volume.shape}")
        d, h, w = volume.shape
        if keep is not None and np.asarray(keep).shape != (d,):
            raise ValueError(f"keep must be bool ({d},), got shape {np.asarray(keep).shape}")
        if boxes is not None and np.asarray(boxes).shape != (d, 4):
            raise ValueError(f"boxes must be int ({d}, 4), got shape {np.asarray(boxes).shape}")
        out = np.zeros((d, NUM_CLASSES, h, w), np.float32)
        zs = [z for z in range(d) if keep is None or bool(keep[z])]
        vmax = float(volume.max()) if self.norm == "volume_max" else None
        for i in range(0, len(zs), batch_size):
            chunk = zs[i : i + batch_size]
            xs, bxs = [], []
            for z in chunk:
                stack = normalise_stack(
                    np.asarray(volume[stack_indices(z, d, self.stride, self.channels)]), self.norm, vmax
                )
                box = np.asarray(boxes[z]) if boxes is not None else full_box((h, w))
                xs.append(crop_resize(stack, box, self.img_size))
                bxs.append(box)
            probs = self.predict_batch(torch.from_numpy(np.stack(xs)), tta)
            for z, p, box in zip(chunk, probs, bxs):
                out[z] = paste_resize(p, box, (h, w)).clamp_(0, 1).cpu().numpy()
        return out
