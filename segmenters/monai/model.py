"""The 3D segmenter as an mmengine model: a MONAI network (SegResNet, DynUNet) with one sigmoid channel per class
(``C`` classes of the dataset, ``K`` image channels in).

Registered in mmengine's root registries (the 3D configs set no default scope):

- ``Monai3DSegmenter`` (``MODELS``): ``forward(inputs, data_samples, mode)`` with ``mode="loss"`` (DiceBCELoss on
  patches, deep supervision supported), ``"predict"`` (sliding window over whole volumes, flip TTA, probabilities
  resampled back to each case-day's original grid ``D x H x W``) and ``"tensor"`` (raw logits). Validation
  (``val_step``) and inference (:class:`segmenters.monai.inference.Segmenter3D`) both run
  :meth:`Monai3DSegmenter.predict_probs`; validation with ``test_cfg`` updated by ``val_cfg``.
- ``Monai3DDataPreprocessor`` (``MODELS``): moves a batch to the model's device; training patches
  ``(B, S, K, h, w, d)`` (``S`` patches per case-day) become one batch ``(B * S, K, h, w, d)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.registry import MODELS
from mmengine.structures import BaseDataElement
from torch import nn

from segmenters.monai.volumes import build_loss, build_net, check_roi, resize_volume, to_dict, tta_variants

BLEND_MODES: tuple[str, ...] = ("gaussian", "constant")
MODES: tuple[str, ...] = ("tensor", "loss", "predict")


@dataclass(frozen=True)
class SlidingWindow:
    """How whole volumes are predicted (``model.test_cfg``; validation: updated by ``model.val_cfg``).

    Attributes:
        roi_size: window ``(H, W, D)`` (a multiple of the network's downsampling).
        overlap: fraction of overlap of neighbouring windows, in ``[0, 1)``.
        mode: blending of overlapping windows, ``"gaussian"`` or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the window.
        sw_batch_size: windows per forward pass.
        tta: TTA names (:func:`segmenters.monai.volumes.tta_variants`).
        amp: float16 autocast on CUDA (ignored on CPU).
    """

    roi_size: tuple[int, int, int]
    overlap: float = 0.7
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    sw_batch_size: int = 2
    tta: tuple[str, ...] = ("flip",)
    amp: bool = True

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], net_cfg: Mapping[str, Any], what: str) -> SlidingWindow:
        """Check and build from a config dict (``what`` names it in errors, e.g. ``"model.test_cfg"``).

        Raises:
            ValueError: a missing ``roi_size``, an unknown key or an out-of-range value.
        """
        cfg = to_dict(dict(cfg))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"{what}: unknown keys {unknown}; expected some of {sorted(known)}")
        if cfg.get("roi_size") is None:
            raise ValueError(f"{what}.roi_size is required: the sliding window (H, W, D), e.g. (224, 224, 80)")
        tta = cfg.get("tta", cls.tta)
        tta = (tta,) if isinstance(tta, str) else tuple(tta or ())
        tta_variants(tta)  # unknown names raise here
        out = cls(
            roi_size=check_roi(cfg["roi_size"], net_cfg, f"{what}.roi_size"),
            overlap=float(cfg.get("overlap", cls.overlap)),
            mode=str(cfg.get("mode", cls.mode)),
            sigma_scale=float(cfg.get("sigma_scale", cls.sigma_scale)),
            sw_batch_size=int(cfg.get("sw_batch_size", cls.sw_batch_size)),
            tta=tta,
            amp=bool(cfg.get("amp", cls.amp)),
        )
        if not 0.0 <= out.overlap < 1.0:
            raise ValueError(f"{what}.overlap must be in [0, 1), got {out.overlap}")
        if out.mode not in BLEND_MODES:
            raise ValueError(f"{what}.mode must be one of {BLEND_MODES}, got {out.mode!r}")
        if out.sw_batch_size < 1 or out.sigma_scale <= 0:
            raise ValueError(f"{what}: sw_batch_size must be >= 1 and sigma_scale > 0, got {cfg}")
        return out


@MODELS.register_module()
class Monai3DDataPreprocessor(BaseDataPreprocessor):
    """Move a batch to the model's device (``non_blocking``) and shape it for :class:`Monai3DSegmenter`.

    Training batches (``default_collate`` of :class:`segmenters.monai.data.CaseDayPatchDataset` samples):
    ``inputs`` float32 ``(B, S, K, h, w, d)`` and ``data_samples = {"labels": uint8 (B, S, C, h, w, d)}`` become
    ``inputs`` float32 ``(B * S, K, h, w, d)`` and ``{"labels": float32 (B * S, C, h, w, d)}`` (lists of per-sample
    tensors are concatenated the same way; the model checks ``K`` and ``C``). Validation / test batches (whole
    volumes of different sizes) stay lists: ``inputs`` float32 ``[(K, h, w, d), ...]`` with their data samples.
    """

    def __init__(self, non_blocking: bool = True) -> None:
        super().__init__(non_blocking=non_blocking)

    @staticmethod
    def _patches(x: Any, what: str) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            x = torch.cat([t if t.ndim == 5 else t[None] for t in x])
        if x.ndim == 6:
            x = x.flatten(0, 1)
        if x.ndim != 5:
            raise ValueError(f"training {what} must be (B, channels, h, w, d) patches, got shape {tuple(x.shape)}")
        return x.float()

    def forward(self, data: dict, training: bool = False) -> dict:
        """``{"inputs", "data_samples"}`` on the device, shaped as the class docstring says."""
        data = self.cast_data(data)
        inputs, samples = data["inputs"], data.get("data_samples")
        if training:
            if not isinstance(samples, Mapping) or "labels" not in samples:
                raise ValueError("training batches need data_samples={'labels': ...} (CaseDayPatchDataset)")
            inputs = self._patches(inputs, "inputs")
            labels = self._patches(samples["labels"], "labels")
            return {"inputs": inputs, "data_samples": {"labels": labels}}
        volumes = list(inputs.unbind(0)) if isinstance(inputs, torch.Tensor) else list(inputs)
        return {"inputs": [v.float() for v in volumes], "data_samples": samples}


@MODELS.register_module()
class Monai3DSegmenter(BaseModel):
    """A MONAI network on whole case-day volumes, multi-label (one sigmoid channel per class of the dataset, in its
    order).

    Args:
        net: ``dict(type="SegResNet" | "DynUNet", **kwargs)`` (:func:`segmenters.monai.volumes.build_net`; its
            ``in_channels`` = ``K`` image channels and ``out_channels`` = ``C`` classes), or a built ``nn.Module``
            mapping ``(B, K, h, w, d)`` to ``(B, C, h, w, d)`` logits.
        loss: ``dict(type="DiceBCELoss", lambda_dice=1.0, lambda_bce=1.0)`` (default) or ``dict(type="DiceLoss")``.
        prior_prob: initial foreground probability of every voxel: :meth:`init_weights` (called by mmengine's
            Runner when training starts, after ``init_cfg``) sets the bias of each output convolution (one channel
            per class) to ``log(p / (1 - p))`` instead of 0 (a sigmoid of 0.5 everywhere). Organs fill a few
            percent of a volume; without it short schedules spend their iterations learning that bias and predict
            nothing above 0.5. None keeps MONAI's initialisation.
        test_cfg: the sliding window of inference and tests (:class:`SlidingWindow`; ``roi_size`` required).
        val_cfg: keys of ``test_cfg`` replaced during validation (e.g. ``overlap=0.5, tta=()``).
        data_preprocessor: default ``dict(type="Monai3DDataPreprocessor")``.
        init_cfg: mmengine weight initialisation (default: MONAI's own).
    """

    def __init__(
        self,
        net: Mapping[str, Any] | nn.Module,
        loss: Mapping[str, Any] | None = None,
        prior_prob: float | None = None,
        test_cfg: Mapping[str, Any] | None = None,
        val_cfg: Mapping[str, Any] | None = None,
        data_preprocessor: Mapping[str, Any] | None = None,
        init_cfg: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            data_preprocessor=dict(data_preprocessor or {"type": "Monai3DDataPreprocessor"}), init_cfg=init_cfg
        )
        if isinstance(net, nn.Module):
            self.net_cfg: dict[str, Any] = {}
            self.net = net
        else:
            self.net_cfg = to_dict(dict(net))
            self.net = build_net(self.net_cfg)
        convs = [m for m in self.net.modules() if isinstance(m, nn.Conv3d)]
        #: ``K`` and ``C`` (from the net's config; a built module: its first and last 3D convolutions, or None)
        self.in_channels: int | None = self.net_cfg.get("in_channels") or (convs[0].in_channels if convs else None)
        self.num_classes: int | None = self.net_cfg.get("out_channels") or (convs[-1].out_channels if convs else None)
        self.loss_fn = build_loss(loss)
        self.prior_prob = None if prior_prob is None else float(prior_prob)
        if self.prior_prob is not None:
            if not 0.0 < self.prior_prob < 1.0:
                raise ValueError(f"model.prior_prob must be in (0, 1), got {prior_prob}")
            heads = self._output_convs()
            if not heads or any(h.bias is None for h in heads):
                raise ValueError("model.prior_prob needs output convolutions with a bias (one channel per class)")
        test = to_dict(dict(test_cfg or {}))
        self.test_window = SlidingWindow.from_cfg(test, self.net_cfg, "model.test_cfg")
        val = {**test, **to_dict(dict(val_cfg or {}))}
        self.val_window = SlidingWindow.from_cfg(val, self.net_cfg, "model.val_cfg")

    def _output_convs(self) -> list[nn.Conv3d]:
        """The network's convolutions with one output channel per class: SegResNet's ``conv_final``, DynUNet's
        ``output_block`` and ``deep_supervision_heads``; for another network, its last 3D convolution (inner
        convolutions that happen to have as many channels as there are classes are never taken)."""
        n = self.num_classes
        heads: list[nn.Conv3d] = []
        for name in ("conv_final", "output_block", "deep_supervision_heads"):
            part = getattr(self.net, name, None)
            if isinstance(part, nn.Module):
                heads += [m for m in part.modules() if isinstance(m, nn.Conv3d) and m.out_channels == n]
        if heads:
            return heads
        convs = [m for m in self.net.modules() if isinstance(m, nn.Conv3d)]
        return convs[-1:] if convs and convs[-1].out_channels == n else []

    def init_weights(self) -> None:
        """mmengine's initialisation (``init_cfg``), then the ``prior_prob`` biases of the output convolutions.

        mmengine's Runner calls it when training starts (before ``load_from`` / ``--resume`` load their weights);
        a model built for inference gets its weights from the checkpoint and never needs it.
        """
        super().init_weights()
        if self.prior_prob is not None:
            for h in self._output_convs():
                nn.init.constant_(h.bias, math.log(self.prior_prob / (1.0 - self.prior_prob)))

    def forward(
        self,
        inputs: torch.Tensor | list[torch.Tensor],
        data_samples: Any = None,
        mode: str = "tensor",
    ) -> Any:
        """One of three modes.

        Args:
            inputs: ``"tensor"`` / ``"loss"``: float32 patches ``(B, K, h, w, d)``; ``"predict"``: preprocessed whole
                volumes, a list of float32 ``(K, h, w, d)`` (or a ``(B, K, h, w, d)`` tensor).
            data_samples: ``"loss"``: ``{"labels": float32 (B, C, h, w, d)}``; ``"predict"``: one
                ``BaseDataElement`` per volume whose metainfo ``ori_shape = (D, H, W)`` is the original grid
                (None: the probabilities stay at the input's size).
            mode: ``"tensor"`` (logits ``(B, C, h, w, d)``; DynUNet in training: ``(B, S, C, h, w, d)``),
                ``"loss"`` (``{"loss": scalar}``) or ``"predict"`` (the data samples, each with ``probs`` float32
                ``(D, C, H, W)`` in ``[0, 1]``; ``test_cfg`` settings).

        Raises:
            ValueError: unknown mode; ``"loss"`` without labels, or patches of other channel counts than the net's.
        """
        if mode == "tensor":
            return self.net(inputs)
        if mode == "loss":
            if not isinstance(data_samples, Mapping) or "labels" not in data_samples:
                raise ValueError("mode='loss' needs data_samples={'labels': float32 (B, C, h, w, d)}")
            labels = data_samples["labels"]
            if (self.in_channels and inputs.shape[1] != self.in_channels) or (
                self.num_classes and labels.shape[1] != self.num_classes
            ):
                raise ValueError(
                    f"training patches have {inputs.shape[1]} image channel(s) and {labels.shape[1]} label channel(s); "
                    f"the net takes {self.in_channels} and predicts {self.num_classes} (model.net in_channels / "
                    "out_channels, filled from WORK/dataset.json by training.config.load_config)"
                )
            logits = self.net(inputs)
            return {"loss": self.loss_fn(logits.float(), data_samples["labels"])}
        if mode == "predict":
            return self.predict(inputs, data_samples, self.test_window)
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    def val_step(self, data: dict | tuple | list) -> list:
        """Validation: :meth:`predict` with the validation window (``test_cfg`` updated by ``val_cfg``)."""
        data = self.data_preprocessor(data, False)
        return self.predict(data["inputs"], data.get("data_samples"), self.val_window)

    @torch.no_grad()
    def predict(
        self,
        inputs: torch.Tensor | Sequence[torch.Tensor],
        data_samples: Sequence[BaseDataElement] | None,
        window: SlidingWindow,
    ) -> list[BaseDataElement]:
        """Probabilities of whole volumes at their original in-plane size (see :meth:`forward`)."""
        volumes = list(inputs.unbind(0)) if isinstance(inputs, torch.Tensor) else list(inputs)
        samples = list(data_samples) if data_samples is not None else [BaseDataElement() for _ in volumes]
        if len(samples) != len(volumes):
            raise ValueError(f"{len(volumes)} volumes but {len(samples)} data samples")
        for x, sample in zip(volumes, samples):
            ori = sample.metainfo.get("ori_shape")
            out = (int(ori[1]), int(ori[2]), int(ori[0])) if ori is not None else tuple(x.shape[1:])
            sample.probs = self.predict_probs(x[None], out, window)
        return samples

    @torch.no_grad()
    def predict_probs(
        self, x: torch.Tensor, out_shape: Sequence[int], window: SlidingWindow | None = None
    ) -> torch.Tensor:
        """Mean sigmoid probabilities over the TTA flips, resampled to ``out_shape``.

        Args:
            x: float32 ``(1, K, h, w, d)`` preprocessed volume (any size: windows larger than the volume are padded).
            out_shape: ``(H, W)`` (in-plane; the depth is kept) or ``(H, W, D)`` of the result: the case-day's
                original grid (:func:`segmenters.monai.volumes.resize_volume`).
            window: sliding-window settings (default: ``test_cfg``).

        Returns:
            float32 ``(D, C, H, W)`` in ``[0, 1]`` on ``x``'s device.
        """
        from monai.inferers import sliding_window_inference

        w = window or self.test_window
        k = self.in_channels or x.shape[1]
        if x.ndim != 5 or x.shape[:2] != (1, k):
            raise ValueError(f"expected one preprocessed volume (1, {k}, h, w, d), got shape {tuple(x.shape)}")
        x = x.float()
        amp = w.amp and x.device.type == "cuda"
        flips = tta_variants(w.tta)
        acc: torch.Tensor | None = None
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=amp):
                logits = sliding_window_inference(
                    xi,
                    roi_size=w.roi_size,
                    sw_batch_size=w.sw_batch_size,
                    predictor=self.net,
                    overlap=w.overlap,
                    mode=w.mode,
                    sigma_scale=w.sigma_scale,
                    padding_mode="constant",
                    cval=0.0,
                )
            p = torch.sigmoid(logits.float())
            p = (torch.flip(p, dims) if dims else p)[0]
            acc = p if acc is None else acc.add_(p)
        probs = (acc / len(flips)).clamp_(0.0, 1.0)
        probs = resize_volume(probs, tuple(int(v) for v in out_shape)).clamp_(0.0, 1.0)  # (C, H, W, D)
        return probs.permute(3, 0, 1, 2).contiguous()
