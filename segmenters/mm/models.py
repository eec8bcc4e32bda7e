"""Multi-label models for mmseg 1.x: timm backbone from a local file, U-Net decoder, sigmoid heads with
BCE + Dice, and a segmentor that thresholds sigmoid probabilities (never argmax).

Registered in mmseg's registries: ``GITimmBackbone``, ``GIUNetHead``, ``MultiLabelUPerHead``,
``MultiLabelFCNHead``, ``MultiLabelBCELoss``, ``MultiLabelDiceLoss``, ``MultiLabelEncoderDecoder``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.structures import PixelData
from mmseg.models.backbones import TIMMBackbone
from mmseg.models.decode_heads import FCNHead, UPerHead
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.utils import resize
from mmseg.registry import MODELS

from training.checks import check_timm_name, timm_pretrained_overlay

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- backbone
@MODELS.register_module()
class GITimmBackbone(TIMMBackbone):
    """mmseg's ``TIMMBackbone`` (timm ``features_only``) with pretrained weights from a local file only.

    Args:
        model_name: timm model name (``efficientnet_b4``, ``tf_efficientnetv2_s``, ``convnext_small``, ...);
            an unknown name is answered with close timm names.
        pretrained: local checkpoint of the full timm model (``.safetensors``, or a state dict read with
            ``weights_only=True``: ``training.checks.timm_pretrained_overlay``); ``None`` = random init. A missing
            file is an error; nothing is downloaded.
        in_channels: input channels (2.5D stack depth); a 3-channel stem of the pretrained weights is adapted.
        out_indices: feature levels to return (timm ``out_indices``).
        **kwargs: other timm arguments (``drop_path_rate``, ...).

    Features are returned channels-first ``(N, C_i, H_i, W_i)`` (timm models with channels-last features
    are permuted).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        in_channels: int = 3,
        out_indices: Sequence[int] | None = None,
        init_cfg: dict | None = None,
        **kwargs: Any,
    ) -> None:
        check_timm_name(model_name)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if pretrained:
            # a local state dict as timm's pretrained source: timm adapts the stem to in_channels and drops the
            # classifier; never downloads
            kwargs["pretrained_cfg_overlay"] = timm_pretrained_overlay(pretrained)["pretrained_cfg_overlay"]
        super().__init__(
            model_name=model_name,
            features_only=True,
            pretrained=bool(pretrained),
            checkpoint_path="",
            in_channels=in_channels,
            init_cfg=init_cfg,
            **kwargs,
        )
        self.pretrained_path = pretrained
        self.out_channels = list(self.timm_model.feature_info.channels())
        self.strides = list(self.timm_model.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C, H, W)`` -> list of ``(N, C_i, H / s_i, W / s_i)``."""
        feats = self.timm_model(x)
        out = []
        for f, c in zip(feats, self.out_channels):
            if f.dim() == 4 and f.shape[1] != c and f.shape[-1] == c:
                f = f.permute(0, 3, 1, 2).contiguous()
            out.append(f)
        return out


# ----------------------------------------------------------------------------------------------- losses
@MODELS.register_module()
class MultiLabelBCELoss(nn.Module):
    """Binary cross-entropy on logits, averaged over pixels and classes.

    Args:
        loss_weight: weight of this term in the total loss.
        pos_weight: optional per-class positive weight (one per class).
        loss_name: key in the loss dict (must contain ``loss``).
    """

    def __init__(
        self, loss_weight: float = 1.0, pos_weight: Sequence[float] | None = None, loss_name: str = "loss_bce"
    ) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.register_buffer("pos_weight", torch.tensor(pos_weight, dtype=torch.float32) if pos_weight else None)
        self._loss_name = loss_name

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``logits`` and ``target`` ``(N, C, H, W)``; target in {0, 1}."""
        pw = self.pos_weight.view(1, -1, 1, 1) if self.pos_weight is not None else None
        loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pw)
        return self.loss_weight * loss

    @property
    def loss_name(self) -> str:
        return self._loss_name


@MODELS.register_module()
class MultiLabelDiceLoss(nn.Module):
    """Soft Dice on sigmoid probabilities, per class over the whole batch, ``1 - mean_c dice_c``.

    Args:
        loss_weight: weight of this term.
        smooth: added to numerator and denominator (keeps empty classes finite: empty prediction on an
            empty class gives dice 1).
        loss_name: key in the loss dict.
    """

    def __init__(self, loss_weight: float = 1.0, smooth: float = 1.0, loss_name: str = "loss_dice") -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.smooth = float(smooth)
        self._loss_name = loss_name

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        p = logits.float().sigmoid()
        t = target.float()
        dims = (0, 2, 3)
        inter = (p * t).sum(dims)
        denom = p.sum(dims) + t.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return self.loss_weight * (1.0 - dice.mean())

    @property
    def loss_name(self) -> str:
        return self._loss_name


# ----------------------------------------------------------------------------------------------- heads
def hard_dice(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Batch Dice of thresholded sigmoid predictions, averaged over classes (for logging)."""
    pred = (logits.detach().float().sigmoid() > threshold).float()
    t = target.float()
    inter = (pred * t).sum((0, 2, 3))
    denom = pred.sum((0, 2, 3)) + t.sum((0, 2, 3))
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom)).mean()


class MultiLabelHeadMixin:
    """Replaces a decode head's softmax loss and resize with multi-label ones.

    Ground truth ``gt_sem_seg.data`` is ``(C, H, W)`` 0/1 per sample (``C = num_classes``, the dataset's classes);
    the head outputs one logit per class; every loss in ``loss_decode`` gets ``(logits (N, C, H, W), target (N, C, H,
    W))``.

    Args:
        prior_prob: initial foreground probability of every pixel: the classifier's bias starts at
            ``log(p / (1 - p))`` instead of 0 (a sigmoid output of 0.5 everywhere), as detectors do for rare
            classes. Organs cover a few percent of the pixels, so without it the first hundreds of iterations
            only learn that bias and predict nothing above 0.5. None keeps mmseg's zero bias.
        **kwargs: the decode head's arguments.
    """

    def __init__(self, *args: Any, prior_prob: float | None = None, **kwargs: Any) -> None:
        if prior_prob is not None and not 0.0 < float(prior_prob) < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        if kwargs.get("num_classes") is None:
            raise ValueError(
                f"{type(self).__name__}: num_classes is None; load the config with training.config.load_config (it "
                "takes the class count from WORK/dataset.json, or from the checkpoint at inference)"
            )
        self.prior_prob = prior_prob
        super().__init__(*args, **kwargs)

    def init_weights(self) -> None:
        super().init_weights()
        if self.prior_prob is not None:
            nn.init.constant_(self.conv_seg.bias, math.log(self.prior_prob / (1.0 - self.prior_prob)))

    def loss_by_feat(self, seg_logits: torch.Tensor, batch_data_samples: list) -> dict:
        gt = torch.stack([s.gt_sem_seg.data for s in batch_data_samples]).to(seg_logits.device)
        if gt.dim() != 4 or gt.shape[1] != seg_logits.shape[1]:
            raise ValueError(
                f"multi-label heads need gt_sem_seg of shape ({seg_logits.shape[1]}, H, W) per sample "
                f"(PackGIInputs), got {tuple(gt.shape[1:])}"
            )
        gt = gt.float()
        logits = resize(seg_logits, size=gt.shape[2:], mode="bilinear", align_corners=self.align_corners)
        losses_decode = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]
        loss: dict[str, torch.Tensor] = {}
        for fn in losses_decode:
            value = fn(logits, gt)
            loss[fn.loss_name] = loss[fn.loss_name] + value if fn.loss_name in loss else value
        loss["dice_seg"] = hard_dice(logits, gt)
        return loss

    def predict_by_feat(self, seg_logits: torch.Tensor, batch_img_metas: list[dict]) -> torch.Tensor:
        meta = batch_img_metas[0]
        size = meta.get("batch_input_shape", meta.get("img_shape"))
        return resize(seg_logits, size=tuple(size), mode="bilinear", align_corners=self.align_corners)


@MODELS.register_module()
class MultiLabelUPerHead(MultiLabelHeadMixin, UPerHead):
    """mmseg's UPerHead with sigmoid outputs and multi-label losses (see :class:`MultiLabelHeadMixin`)."""


@MODELS.register_module()
class MultiLabelFCNHead(MultiLabelHeadMixin, FCNHead):
    """mmseg's FCNHead (auxiliary head) with sigmoid outputs and multi-label losses."""


class _UNetBlock(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, norm_cfg: dict | None, act_cfg: dict | None) -> None:
        super().__init__()
        self.conv1 = ConvModule(in_ch + skip_ch, out_ch, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.conv2 = ConvModule(out_ch, out_ch, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = skip.shape[2:] if skip is not None else tuple(2 * s for s in x.shape[2:])
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


@MODELS.register_module()
class GIUNetHead(MultiLabelHeadMixin, BaseDecodeHead):
    """U-Net decoder over any multi-scale backbone (timm features, mmseg Swin, ...), multi-label output.

    Starting from the deepest feature, each block upsamples to the next shallower feature, concatenates it
    and applies two 3x3 conv-norm-act layers. Blocks beyond the number of skips upsample x2 without a skip
    (e.g. to go from stride 2 to full resolution). The logits are resized to the input size in
    ``predict``/``loss``.

    Args:
        in_channels: channels of the backbone features, shallow to deep (``len >= 2``).
        decoder_channels: output channels of each block, deep to shallow; at least ``len(in_channels) - 1``.
        **kwargs: BaseDecodeHead arguments (``num_classes``, ``norm_cfg``, ``loss_decode``, ``dropout_ratio``...).
    """

    def __init__(
        self, in_channels: Sequence[int], decoder_channels: Sequence[int] = (256, 128, 64, 32), **kwargs: Any
    ) -> None:
        in_channels = list(in_channels)
        decoder_channels = list(decoder_channels)
        if len(in_channels) < 2:
            raise ValueError(f"GIUNetHead needs at least 2 feature levels, got in_channels={in_channels}")
        if len(decoder_channels) < len(in_channels) - 1:
            raise ValueError(
                f"decoder_channels needs at least {len(in_channels) - 1} entries for {len(in_channels)} feature "
                f"levels, got {decoder_channels}"
            )
        kwargs.setdefault("in_index", list(range(len(in_channels))))
        kwargs.pop("channels", None)
        super().__init__(
            in_channels=in_channels, channels=decoder_channels[-1], input_transform="multiple_select", **kwargs
        )
        skips = in_channels[:-1][::-1]
        blocks = []
        prev = in_channels[-1]
        for i, out_ch in enumerate(decoder_channels):
            skip_ch = skips[i] if i < len(skips) else 0
            blocks.append(_UNetBlock(prev, skip_ch, out_ch, self.norm_cfg, self.act_cfg))
            prev = out_ch
        self.blocks = nn.ModuleList(blocks)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        feats = self._transform_inputs(inputs)
        x = feats[-1]
        skips = feats[:-1][::-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return self.cls_seg(x)


# ----------------------------------------------------------------------------------------------- segmentor
@MODELS.register_module()
class MultiLabelEncoderDecoder(EncoderDecoder):
    """EncoderDecoder whose post-processing is sigmoid + threshold per class (classes may overlap).

    ``test_cfg`` keys: ``threshold`` (default 0.5), ``tta`` (list, ``"hflip"`` and/or ``"vflip"``; default none),
    ``output_probs`` (default True: ``seg_logits`` of each result holds the probabilities).

    Results: ``pred_sem_seg.data`` uint8 ``(C, H, W)`` and ``seg_logits.data`` float ``(C, H, W)`` in ``[0, 1]``.
    """

    def predict_probs(self, inputs: torch.Tensor, tta: Sequence[str] | None = None) -> torch.Tensor:
        """Sigmoid probabilities ``(N, C, H, W)`` at the input size, averaged over ``tta`` flips.

        Args:
            inputs: ``(N, C, H, W)`` float.
            tta: flips to average with the plain prediction (``hflip``: width, ``vflip``: height); None = the
                ``test_cfg`` value.
        """
        if tta is None:
            tta = tuple(self.test_cfg.get("tta", ())) if self.test_cfg else ()
        dims = {"hflip": (3,), "vflip": (2,)}
        unknown = [t for t in tta if t not in dims]
        if unknown:
            raise ValueError(f"unknown TTA {unknown}; choose from {sorted(dims)}")
        size = inputs.shape[2:]

        def once(x: torch.Tensor) -> torch.Tensor:
            logits = self.decode_head.forward(self.extract_feat(x))
            return resize(logits, size=size, mode="bilinear", align_corners=self.align_corners).float().sigmoid()

        probs = once(inputs)
        for t in tta:
            probs = probs + once(inputs.flip(dims[t])).flip(dims[t])
        return probs / (1 + len(tta))

    def predict(self, inputs: torch.Tensor, data_samples: list | None = None) -> list:
        probs = self.predict_probs(inputs)
        return self.postprocess_result(probs, data_samples)

    def postprocess_result(self, seg_logits: torch.Tensor, data_samples: list | None = None) -> list:
        """``seg_logits`` here are probabilities ``(N, C, H, W)``; thresholded per class, never arg-maxed."""
        from mmseg.structures import SegDataSample

        thr = float(self.test_cfg.get("threshold", 0.5)) if self.test_cfg else 0.5
        keep_probs = bool(self.test_cfg.get("output_probs", True)) if self.test_cfg else True
        if data_samples is None:
            data_samples = [SegDataSample() for _ in range(seg_logits.shape[0])]
        for i, sample in enumerate(data_samples):
            p = seg_logits[i]
            if keep_probs:
                sample.seg_logits = PixelData(data=p)
            sample.pred_sem_seg = PixelData(data=(p > thr).to(torch.uint8))
        return data_samples
