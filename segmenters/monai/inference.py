"""Inference of the 3D segmenters: sliding window over a whole case-day, flip TTA, probabilities back at every
slice's original size (probability folders of a WORK: :func:`inference.predict.predict_work_3d`).

>>> # seg = Segmenter3D.load("mmcfg/monai3d/segresnet_1xb2-20k_uwmgi-224x224x80.py", "fold_0/best.pth", "cuda")
>>> # probs = seg.predict_volume(volume)          # float32 (D, 3, H, W) in [0, 1]

TTA names: ``"flip"`` = identity + left-right flip + slice-order flip (the model is run 3 times; ``"hflip"``
(W), ``"vflip"`` (H) and ``"dflip"`` (D) may be listed one by one instead). ``()`` runs the model once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.engine import load_weights
from data_prep.constants import NUM_CLASSES
from segmenters.monai.volumes import build_model, cfg_get, check_roi, preprocess_image, resize_hw, to_dict

logger = logging.getLogger(__name__)

#: Flip TTA names -> spatial dims of a ``(B, C, H, W, D)`` tensor.
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (3,), "vflip": (2,), "dflip": (4,)}


def tta_variants(tta: Sequence[str] | None) -> list[tuple[int, ...]]:
    """The flips (tensor dims of ``(B, C, H, W, D)``) a TTA list runs, identity ``()`` first.

    >>> tta_variants(("flip",))
    [(), (3,), (4,)]
    >>> tta_variants(None)
    [()]
    """
    out: list[tuple[int, ...]] = [()]
    for name in tta or ():
        names = ("hflip", "dflip") if name == "flip" else (name,)
        for n in names:
            if n not in TTA_FLIPS:
                raise ValueError(f"unknown TTA {name!r}; expected 'flip' or any of {sorted(TTA_FLIPS)}")
            if TTA_FLIPS[n] not in out:
                out.append(TTA_FLIPS[n])
    return out


def _load_config(config: str | os.PathLike | Mapping[str, Any]) -> Any:
    if isinstance(config, Mapping):
        return config
    from mmengine import Config

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path} (3D configs live in mmcfg/monai3d/)")
    return Config.fromfile(str(path))


class Segmenter3D:
    """A trained 3D segmenter for whole case-day volumes.

    Args:
        model: the network (``(B, 1, h, w, d) -> (B, 3, h, w, d)`` logits).
        cfg: the loaded config (``data`` and ``infer`` sections are used).
        device: where the model runs.
        config_path, checkpoint: where it came from (recorded in probability folders).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Mapping[str, Any],
        device: str | torch.device = "cpu",
        config_path: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config_path, self.checkpoint = config_path, checkpoint
        infer = cfg_get(cfg, "infer", {})
        self.roi_size = check_roi(
            cfg_get(infer, "roi_size", (224, 224, 80)), to_dict(dict(cfg_get(cfg, "model"))), "infer.roi_size"
        )
        self.overlap = float(cfg_get(infer, "overlap", 0.7))
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"infer.overlap must be in [0, 1), got {self.overlap}")
        self.mode = str(cfg_get(infer, "mode", "gaussian"))
        self.sigma_scale = float(cfg_get(infer, "sigma_scale", 0.125))
        self.sw_batch_size = int(cfg_get(infer, "sw_batch_size", 2))
        self.amp = bool(cfg_get(infer, "amp", True)) and self.device.type == "cuda"
        self.default_tta = tuple(cfg_get(infer, "tta", ("flip",)) or ())

    @classmethod
    def load(
        cls, config: str | os.PathLike | Mapping[str, Any], checkpoint: str | os.PathLike, device: str = "cpu"
    ) -> Segmenter3D:
        """Build the config's model and load ``checkpoint`` (``best.pth`` / ``last.pth``; ``weights_only=True``).

        Raises:
            FileNotFoundError: config or checkpoint missing.
            ValueError: the weights do not fit the config's model.
        """
        cfg = _load_config(config)
        model = build_model(cfg_get(cfg, "model"))
        state = load_weights(checkpoint, map_location="cpu")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{checkpoint} does not fit the model of {config}: {str(e)[:500]}") from e
        return cls(model, cfg, device, str(config) if not isinstance(config, Mapping) else None, str(checkpoint))

    @torch.no_grad()
    def predict_resampled(self, x: torch.Tensor, tta: Sequence[str] | None = ("flip",)) -> torch.Tensor:
        """Mean sigmoid probabilities over the TTA variants at the model's resolution.

        Args:
            x: float32 ``(1, 1, h, w, D)`` preprocessed volume (any size: padded to the patch when smaller).
            tta: TTA names (see the module docstring).

        Returns:
            float32 ``(3, h, w, D)`` in ``[0, 1]`` on the model's device.
        """
        from monai.inferers import sliding_window_inference

        x = x.to(self.device)
        acc = torch.zeros((NUM_CLASSES, *x.shape[2:]), dtype=torch.float32, device=self.device)
        flips = tta_variants(tta)
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                logits = sliding_window_inference(
                    xi,
                    roi_size=self.roi_size,
                    sw_batch_size=self.sw_batch_size,
                    predictor=self.model,
                    overlap=self.overlap,
                    mode=self.mode,
                    sigma_scale=self.sigma_scale,
                    padding_mode="constant",
                    cval=0.0,
                )
            p = torch.sigmoid(logits.float())
            acc += (torch.flip(p, dims) if dims else p)[0]
        return (acc / len(flips)).clamp_(0.0, 1.0)

    @torch.no_grad()
    def predict_volume(
        self,
        volume: np.ndarray,
        spacing: Sequence[float] | None = None,
        tta: Sequence[str] | None = ("flip",),
    ) -> np.ndarray:
        """Class probabilities of one case-day.

        Args:
            volume: ``uint16 (D, H, W)`` scan, z in manifest order (any depth; any size, padded when smaller
                than the patch).
            spacing: ``(sz, sy, sx)`` or ``(sy, sx)`` mm; used only by configs that resample to a pixel
                spacing (``data.resample.mode == "spacing"``).
            tta: TTA names; ``None`` uses the config's ``infer.tta``.

        Returns:
            float32 ``(D, 3, H, W)`` probabilities in ``[0, 1]``, channels in ``CLASSES`` order, at the input's
            own ``H x W`` and depth.
        """
        volume = np.asarray(volume)
        if volume.ndim != 3 or min(volume.shape) < 1:
            raise ValueError(f"expected a non-empty volume (D, H, W), got shape {volume.shape}")
        if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
            raise ValueError(f"expected a uint16 (or real-valued) volume, got dtype {volume.dtype}")
        d, h, w = volume.shape
        x = preprocess_image(volume, self.cfg, spacing, self.device)[None]  # (1, 1, h', w', D)
        probs = self.predict_resampled(x, self.default_tta if tta is None else tta)
        probs = resize_hw(probs, (h, w)).clamp_(0.0, 1.0)  # (3, H, W, D), on the device
        out = probs.permute(3, 0, 1, 2).cpu().numpy().astype(np.float32, copy=False)
        if out.shape != (d, NUM_CLASSES, h, w):  # pragma: no cover - guarded by construction
            raise RuntimeError(f"internal error: output shape {out.shape} != {(d, NUM_CLASSES, h, w)}")
        return out
