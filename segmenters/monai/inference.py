"""Inference API of the 3D segmenters: whole case-day volumes in, probabilities at every slice's original size out
(probability folders of a WORK: :func:`inference.predict.predict_work_3d`).

>>> # seg = Segmenter3D.load("mmcfg/monai3d/segresnet_1xb2-20k_uwmgi-224x224x80.py", "fold_0/best.pth", "cuda")
>>> # probs = seg.predict_volume(volume)          # float32 (D, 3, H, W) in [0, 1]

The volume is preprocessed as the config's test dataset does (``test_dataloader.dataset.norm`` / ``resample``) and
run through the model's own predict path (:meth:`segmenters.monai.model.Monai3DSegmenter.predict_probs`: sliding
window of ``model.test_cfg``, Gaussian blending, flip TTA, resampling back), the computation validation scores.
TTA names: see :func:`tta_variants` (``"flip"`` = identity + left-right flip + slice-order flip).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from data_prep.constants import NUM_CLASSES
from segmenters.monai.model import Monai3DSegmenter, SlidingWindow
from segmenters.monai.volumes import DEFAULT_NORM, DEFAULT_RESAMPLE, preprocess_image, to_dict, tta_variants
from training.checks import load_checked_weights
from training.config import build_model, load_config


def preprocessing_of(cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(norm, resample)`` of a 3D config: those of its test dataset (else val dataset), as in training."""
    for key in ("test_dataloader", "val_dataloader"):
        ds = (cfg.get(key) or {}).get("dataset") or {}
        if ds:
            return to_dict(dict(ds.get("norm") or DEFAULT_NORM)), to_dict(dict(ds.get("resample") or DEFAULT_RESAMPLE))
    return dict(DEFAULT_NORM), dict(DEFAULT_RESAMPLE)


class Segmenter3D:
    """A trained 3D segmenter for whole case-day volumes.

    Args:
        model: the config's :class:`segmenters.monai.model.Monai3DSegmenter` (weights loaded).
        cfg: the loaded config, an mmengine ``Config`` or a plain dict (``test_dataloader.dataset.norm`` /
            ``resample``).
        device: where the model runs.
        config_path, checkpoint: where it came from (None: unknown); kept for the caller, not used here.

    Attributes:
        window: the sliding window (``model.test_cfg``); ``roi_size``, ``overlap``, ``amp`` and ``default_tta``
            are its fields.
    """

    def __init__(
        self,
        model: Monai3DSegmenter,
        cfg: Any,
        device: str | torch.device = "cpu",
        config_path: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        if not isinstance(model, Monai3DSegmenter):
            raise ValueError(f"Segmenter3D needs a Monai3DSegmenter (the 3D configs' model), got {type(model)}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config_path, self.checkpoint = config_path, checkpoint
        self.norm, self.resample = preprocessing_of(self.cfg)
        self.window: SlidingWindow = model.test_window

    @property
    def roi_size(self) -> tuple[int, int, int]:
        return self.window.roi_size

    @property
    def overlap(self) -> float:
        return self.window.overlap

    @property
    def amp(self) -> bool:
        return self.window.amp and self.device.type == "cuda"

    @property
    def default_tta(self) -> tuple[str, ...]:
        """TTA names of ``model.test_cfg.tta`` (used when ``predict_volume`` gets ``tta=None``)."""
        return self.window.tta

    @classmethod
    def load(cls, config: str | os.PathLike | Any, checkpoint: str | os.PathLike, device: str = "cpu") -> Segmenter3D:
        """Build the config's model and load ``checkpoint`` (``best.pth``, ``iter_N.pth``; ``weights_only=True``).

        ``config`` is a config path (read with :func:`training.config.load_config`) or an already loaded mmengine
        ``Config``; :attr:`config_path` is the path (a loaded config's ``filename``; None when it has none).

        Raises:
            FileNotFoundError: config or checkpoint missing.
            ValueError: the checkpoint cannot be read weights-only, or its weights do not fit the config's model
                (``training.checks.CheckpointMismatchError``).
        """
        loaded = hasattr(config, "model")
        cfg = config if loaded else load_config(config)
        path = getattr(cfg, "filename", None) if loaded else str(config)
        model = load_checked_weights(build_model(cfg), checkpoint, path or "the given config")
        return cls(model, cfg, device, path, str(checkpoint))

    @torch.no_grad()
    def predict_volume(
        self,
        volume: np.ndarray,
        spacing: Sequence[float] | None = None,
        tta: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Class probabilities of one case-day.

        Args:
            volume: ``uint16 (D, H, W)`` scan, z in manifest order (any depth; any size, padded when smaller
                than the window).
            spacing: ``(sz, sy, sx)`` or ``(sy, sx)`` mm; used only by configs that resample to a pixel
                spacing (``resample.mode == "spacing"``).
            tta: TTA names; ``None`` uses :attr:`default_tta`, ``()`` runs the model once.

        Returns:
            float32 ``(D, 3, H, W)`` probabilities in ``[0, 1]``, channels in ``CLASSES`` order, at the input's
            own ``H x W`` and depth.

        Raises:
            ValueError: not a non-empty ``(D, H, W)`` real-valued volume; an unknown TTA name.
        """
        volume = np.asarray(volume)
        if volume.ndim != 3 or min(volume.shape) < 1:
            raise ValueError(f"expected a non-empty volume (D, H, W), got shape {volume.shape}")
        if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
            raise ValueError(f"expected a uint16 (or real-valued) volume, got dtype {volume.dtype}")
        tta = self.default_tta if tta is None else tuple(tta)
        tta_variants(tta)  # unknown names raise before any work
        d, h, w = volume.shape
        x = preprocess_image(volume, self.norm, self.resample, spacing, self.device)[None]  # (1, 1, h', w', D)
        window = dataclasses.replace(self.window, tta=tta)
        out = self.model.predict_probs(x, (h, w), window).cpu().numpy().astype(np.float32, copy=False)
        if out.shape != (d, NUM_CLASSES, h, w):  # pragma: no cover - guarded by construction
            raise RuntimeError(f"internal error: output shape {out.shape} != {(d, NUM_CLASSES, h, w)}")
        return out
