"""Inference API of the 3D segmenters: whole case-day volumes in, probabilities at every slice's original size out
(probability folders of a WORK: :func:`inference.predict.predict_work_3d`).

>>> # seg = Segmenter3D.load("mmcfg/monai3d/segresnet_1xb2-20k_uwmgi-224x224x80.py", "fold_0/best.pth", "cuda")
>>> # probs = seg.predict_volume(volume, spacing)  # float32 (D, C, H, W) in [0, 1], C = len(seg.classes)

The volume is preprocessed as the config's test dataset does (``test_dataloader.dataset.norm`` / ``resample``) and
run through the model's own predict path (:meth:`segmenters.monai.model.Monai3DSegmenter.predict_probs`: sliding
window of ``model.test_cfg``, Gaussian blending, flip TTA, resampling back to the volume's grid), the computation
validation scores. The model predicts the classes it was trained on (``seg.classes``, from the checkpoint's
``meta["dataset"]``) from ``seg.image_channels`` image channels.
TTA names: see :func:`tta_variants` (``"flip"`` = identity + left-right flip + slice-order flip).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from data_prep.dataset import KAGGLE
from data_prep.work import read_dataset
from segmenters.monai.model import Monai3DSegmenter, SlidingWindow
from segmenters.monai.volumes import DEFAULT_NORM, DEFAULT_RESAMPLE, preprocess_image, to_dict, tta_variants
from training.checks import check_dataset_matches, load_checked_weights
from training.config import build_model, config_for_checkpoint, dataset_summary


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
        classes, label_kind, image_channels: what the model predicts and reads (the config's ``dataset_info``).
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
        summary = cfg.get("dataset_info")
        if summary is None:  # a config not made by training.config.load_config: its WORK's, else the Kaggle classes
            summary = dataset_summary(read_dataset(cfg["work"]) if cfg.get("work") else KAGGLE)
        self.classes: tuple[str, ...] = tuple(summary["classes"])
        self.label_kind: str = str(summary["label_kind"])
        self.image_channels: tuple[str, ...] = tuple(summary["channels"])
        if model.num_classes is not None and model.num_classes != len(self.classes):
            raise ValueError(
                f"the model predicts {model.num_classes} classes, but its config's dataset_info names "
                f"{len(self.classes)}: {list(self.classes)}"
            )

    @property
    def dataset_info(self) -> dict[str, Any]:
        """What the model predicts: ``{"classes", "label_kind", "channels"}`` (``training.config.dataset_summary``)."""
        return {"classes": list(self.classes), "label_kind": self.label_kind, "channels": list(self.image_channels)}

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
    def load(
        cls,
        config: str | os.PathLike | Any,
        checkpoint: str | os.PathLike,
        device: str = "cpu",
        work: str | os.PathLike | None = None,
    ) -> Segmenter3D:
        """Build the config's model for ``checkpoint`` and load its weights (``best.pth``, ``iter_N.pth``;
        ``weights_only=True``).

        ``config`` is a config path (read with :func:`training.config.load_config`) or an already loaded mmengine
        ``Config``; :attr:`config_path` is the path (a loaded config's ``filename``; None when it has none). The
        net's ``out_channels`` / ``in_channels`` are the checkpoint's classes and image channels (``meta["dataset"]``)
        when the config's ``num_classes`` is None (:func:`training.config.config_for_checkpoint`).

        Args:
            config, checkpoint, device: as above.
            work: the WORK folder it will predict; its ``dataset.json`` must list the model's classes (same order)
                and image channel count. None skips the check.

        Raises:
            FileNotFoundError: config or checkpoint missing.
            ValueError: the checkpoint cannot be read weights-only, its weights do not fit the config's model
                (``training.checks.CheckpointMismatchError``), the config's explicit ``num_classes`` differs from
                the checkpoint's classes, or ``work`` holds other classes (``DatasetMismatchError``, both named).
        """
        loaded = hasattr(config, "model")
        cfg = config_for_checkpoint(config, checkpoint)
        path = getattr(config, "filename", None) if loaded else str(config)
        model = load_checked_weights(build_model(cfg), checkpoint, path or "the given config")
        seg = cls(model, cfg, device, path, str(checkpoint))
        if work is not None:
            info = read_dataset(work)
            check_dataset_matches(
                seg.dataset_info, info.classes, info.num_channels, str(checkpoint), f"{work}/dataset.json"
            )
        return seg

    @torch.no_grad()
    def predict_volume(
        self,
        volume: np.ndarray | Sequence[np.ndarray],
        spacing: Sequence[float] | None = None,
        tta: Sequence[str] | None = None,
        as_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Class probabilities of one case-day.

        Args:
            volume: ``uint16 (D, H, W)`` scan, z in manifest order (any depth; any size, padded when smaller
                than the window); for ``K > 1`` image channels ``(K, D, H, W)`` or a list of ``K`` ``(D, H, W)``
                arrays, in :attr:`image_channels` order.
            spacing: ``(sz, sy, sx)`` or ``(sy, sx)`` mm of the volume (``read_dataset(work).spacing(key, (px_h,
                px_w))``); needed by configs that resample to a spacing (``resample.mode == "spacing"``; ``(sz, sy,
                sx)`` for a target spacing in all three axes).
            tta: TTA names; ``None`` uses :attr:`default_tta`, ``()`` runs the model once.
            as_tensor: return the probabilities as a float32 tensor on the model's device (the inference engine
                sums them there) instead of a host array.

        Returns:
            float32 ``(D, C, H, W)`` probabilities in ``[0, 1]``, channels in :attr:`classes` order, on the input's
            own grid (resampled back when the config resamples).

        Raises:
            ValueError: not non-empty ``(D, H, W)`` real-valued image channels (as many as the model reads); an
                unknown TTA name.
        """
        if isinstance(volume, (list, tuple)):
            parts = [np.asarray(v) for v in volume]
        else:
            arr = np.asarray(volume)
            parts = [arr] if arr.ndim == 3 else list(arr) if arr.ndim == 4 else [arr]
        k = len(self.image_channels)
        if len(parts) != k or any(p.ndim != 3 or min(p.shape) < 1 for p in parts):
            want = "(D, H, W)" if k == 1 else f"({k}, D, H, W) or a list of {k} (D, H, W)"
            raise ValueError(f"expected a non-empty volume {want}, got shape(s) {[p.shape for p in parts]}")
        for p in parts:
            if not (np.issubdtype(p.dtype, np.integer) or np.issubdtype(p.dtype, np.floating)):
                raise ValueError(f"expected a uint16 (or real-valued) volume, got dtype {p.dtype}")
        tta = self.default_tta if tta is None else tuple(tta)
        tta_variants(tta)  # unknown names raise before any work
        x = preprocess_image(parts, self.norm, self.resample, spacing, self.device, k)[None]  # (1, K, h', w', d')
        d, h, w = parts[0].shape
        window = dataclasses.replace(self.window, tta=tta)
        probs = self.model.predict_probs(x, (h, w, d), window).float()
        c = len(self.classes)
        if tuple(probs.shape) != (d, c, h, w):  # pragma: no cover - guarded by construction
            raise RuntimeError(f"internal error: output shape {tuple(probs.shape)} != {(d, c, h, w)}")
        return probs if as_tensor else probs.cpu().numpy()
