"""Pure pieces of the 3D segmenters (MONAI SegResNet, DynUNet): intensity normalisation, in-plane resampling,
patch-size checks, the network and loss builders, and the case-day reader. The registered training modules
(:mod:`segmenters.monai.model`, :mod:`segmenters.monai.data`, :mod:`segmenters.monai.metric`,
:mod:`segmenters.monai.hooks`) and inference (:mod:`segmenters.monai.inference`) are built on them.

Layout conventions:

- a case-day volume on disk is ``uint16 (D, H, W)`` (data_prep's WORK folder, :func:`data_prep.work.load_volume`),
  its mask a ``uint8 (D, H, W)`` bit field (bit ``c`` = ``CLASSES[c]``);
- inside the 3D models a volume is MONAI's channel-first ``(C, H, W, D)`` (a batch ``(B, C, H, W, D)``), so the
  configs' patch sizes read ``H x W x D`` like the config names (``-224x224x80``);
- every volume is resampled **in-plane** to a fixed size (or a fixed pixel spacing) before the model and back to
  each slice's original ``H x W`` afterwards; the depth is never resampled (80- and 144-slice case-days both work:
  patches larger than a volume are padded).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.constants import CLASSES, NUM_CLASSES
from data_prep.volumes import unpack_mask
from data_prep.work import has_mask, load_mask, load_volume, prepare_hint

#: Model types this module builds (any other ``monai.networks.nets`` name is accepted too, unchecked).
MODEL_TYPES: tuple[str, ...] = ("SegResNet", "DynUNet")
NORM_MODES: tuple[str, ...] = ("percentile", "max", "zscore")
RESAMPLE_MODES: tuple[str, ...] = ("size", "spacing", "none")
#: Intensity normalisation and in-plane resampling of the 1st place's 3D models.
DEFAULT_NORM: dict[str, Any] = {"mode": "percentile", "percentiles": (0.0, 99.5)}
DEFAULT_RESAMPLE: dict[str, Any] = {"mode": "size", "size": (256, 256)}


def to_dict(obj: Any) -> Any:
    """Plain python copy (dicts, lists) of an mmengine ``ConfigDict`` / ``Config`` value."""
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_dict(v) for v in obj) if isinstance(obj, tuple) else [to_dict(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------------------------
# intensity and resampling: pure functions
# ----------------------------------------------------------------------------------------------------------------


def normalize_intensity(
    volume: np.ndarray, mode: str = "percentile", percentiles: Sequence[float] = (0.0, 99.5)
) -> np.ndarray:
    """Per-volume intensity normalisation.

    Args:
        volume: any shape, any real dtype (uint16 scans).
        mode: ``"percentile"``: ``(v - p_lo) / (p_hi - p_lo)`` clipped to ``[0, 1]``; ``"max"``: ``v / max(v)``
            (the 1st place's 2.5D rule); ``"zscore"``: ``(v - mean) / std``.
        percentiles: ``(lo, hi)`` for ``"percentile"``, in ``[0, 100]``.

    Returns:
        float32 array of the same shape; a constant volume gives zeros.

    >>> normalize_intensity(np.array([0, 50, 100], dtype=np.uint16), "max").tolist()
    [0.0, 0.5, 1.0]
    """
    v = np.asarray(volume, dtype=np.float32)
    if mode == "max":
        m = float(v.max()) if v.size else 0.0
        return v / m if m > 0 else np.zeros_like(v)
    if mode == "zscore":
        std = float(v.std()) if v.size else 0.0
        return (v - float(v.mean())) / std if std > 0 else np.zeros_like(v)
    if mode == "percentile":
        lo_q, hi_q = (float(p) for p in percentiles)
        if not 0.0 <= lo_q < hi_q <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {tuple(percentiles)}")
        flat = v.reshape(-1)
        if flat.size > 2_000_000:  # a deterministic subsample is plenty for two quantiles
            flat = flat[:: flat.size // 1_000_000]
        lo, hi = np.percentile(flat, [lo_q, hi_q]) if flat.size else (0.0, 0.0)
        if hi <= lo:
            return np.zeros_like(v)
        return np.clip((v - lo) / (hi - lo), 0.0, 1.0, dtype=np.float32)
    raise ValueError(f"norm mode must be one of {NORM_MODES}, got {mode!r}")


def target_hw(
    hw: Sequence[int], resample: Mapping[str, Any], spacing: Sequence[float] | None = None
) -> tuple[int, int]:
    """In-plane size ``(h, w)`` a volume of slice size ``hw = (H, W)`` is resampled to.

    Args:
        hw: ``(H, W)`` of the original slices.
        resample: ``{"mode": "size", "size": (h, w)}`` (fixed size, the default), ``{"mode": "spacing",
            "pixdim": (sy, sx)}`` (mm per pixel; needs ``spacing``) or ``{"mode": "none"}``.
        spacing: ``(sy, sx)`` or ``(sz, sy, sx)`` mm of the original slices (only for ``"spacing"``).

    >>> target_hw((310, 360), {"mode": "size", "size": (256, 256)})
    (256, 256)
    >>> target_hw((266, 266), {"mode": "spacing", "pixdim": (3.0, 3.0)}, spacing=(3.0, 1.5, 1.5))
    (133, 133)
    """
    mode = resample.get("mode", "size")
    if mode == "none":
        return int(hw[0]), int(hw[1])
    if mode == "size":
        size = resample.get("size")
        if size is None or len(size) != 2 or min(size) < 1:
            raise ValueError(f"resample size must be (h, w) with positive ints, got {size!r}")
        return int(size[0]), int(size[1])
    if mode == "spacing":
        if spacing is None:
            raise ValueError("resample mode 'spacing' needs the volume's pixel spacing; pass spacing=(sy, sx)")
        sy, sx = (float(s) for s in tuple(spacing)[-2:])
        ty, tx = (float(s) for s in resample["pixdim"])
        return max(1, round(hw[0] * sy / ty)), max(1, round(hw[1] * sx / tx))
    raise ValueError(f"resample mode must be one of {RESAMPLE_MODES}, got {mode!r}")


def resize_hw(x: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resample a channel-first volume in-plane; the depth is kept.

    Args:
        x: float tensor ``(C, H, W, D)``.
        size: ``(h, w)``.
        mode: ``"bilinear"`` (antialiased when shrinking) or ``"nearest"``.

    Returns:
        ``(C, h, w, D)``, same dtype and device; ``x`` itself when the size already matches.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (C, H, W, D) tensor, got shape {tuple(x.shape)}")
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[1:3]) == (h, w):
        return x
    y = x.permute(3, 0, 1, 2)  # (D, C, H, W): in-plane 2D resampling per slice
    if mode == "bilinear":
        shrink = h < x.shape[1] or w < x.shape[2]
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    elif mode == "nearest":
        y = F.interpolate(y, size=(h, w), mode="nearest-exact")
    else:
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    return y.permute(1, 2, 3, 0).contiguous()


def preprocess_image(
    volume: np.ndarray,
    norm: Mapping[str, Any] | None = None,
    resample: Mapping[str, Any] | None = None,
    spacing: Sequence[float] | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """A scan as the model's input: normalised, resampled in-plane, channel-first.

    Args:
        volume: ``(D, H, W)`` scan (uint16 or any real dtype).
        norm: ``dict(mode="percentile" | "max" | "zscore", percentiles=(lo, hi))`` (default percentile 0-99.5,
            see :func:`normalize_intensity`).
        resample: in-plane target (see :func:`target_hw`; default ``dict(mode="size", size=(256, 256))``).
        spacing: ``(sz, sy, sx)`` or ``(sy, sx)`` mm (only for ``resample.mode == "spacing"``).
        device: where the resampling runs (default CPU).

    Returns:
        float32 ``(1, h, w, D)``.
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a volume (D, H, W), got shape {volume.shape}")
    norm = dict(norm or DEFAULT_NORM)
    v = normalize_intensity(volume, norm.get("mode", "percentile"), norm.get("percentiles", (0.0, 99.5)))
    x = torch.from_numpy(np.ascontiguousarray(v.transpose(1, 2, 0)))[None]  # (1, H, W, D)
    if device is not None:
        x = x.to(device)
    hw = target_hw(volume.shape[1:], dict(resample or DEFAULT_RESAMPLE), spacing)
    return resize_hw(x, hw)


def preprocess_label(mask: np.ndarray, hw: Sequence[int]) -> torch.Tensor:
    """A ``uint8 (D, H, W)`` bit-field mask as ``float32 (3, h, w, D)`` binary channels at in-plane size ``hw``."""
    if mask.ndim != 3:
        raise ValueError(f"expected a mask (D, H, W), got shape {mask.shape}")
    y = torch.from_numpy(unpack_mask(np.asarray(mask)).transpose(1, 2, 3, 0).astype(np.float32))  # (3, H, W, D)
    if tuple(y.shape[1:3]) != tuple(hw):
        y = (resize_hw(y, hw) > 0.5).float()
    return y


# ----------------------------------------------------------------------------------------------------------------
# model and loss
# ----------------------------------------------------------------------------------------------------------------


def downsample_factors(net_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """How much the network ``net_cfg`` (``model.net``) shrinks each axis ``(H, W, D)``: patch sizes must be
    multiples of it (1 for network types this module does not know)."""
    typ = net_cfg.get("type")
    if typ == "SegResNet":
        f = 2 ** (len(net_cfg.get("blocks_down", (1, 2, 2, 4))) - 1)
        return f, f, f
    if typ == "DynUNet":
        out = [1, 1, 1]
        for s in net_cfg["strides"]:
            s3 = (s, s, s) if isinstance(s, int) else tuple(s)
            out = [a * int(b) for a, b in zip(out, s3)]
        return out[0], out[1], out[2]
    return 1, 1, 1


def check_roi(roi_size: Sequence[int], net_cfg: Mapping[str, Any], what: str = "roi_size") -> tuple[int, int, int]:
    """Validate a patch size ``(H, W, D)`` against the network ``net_cfg``; returns it as a tuple of ints.

    Raises:
        ValueError: not 3 positive ints, or not a multiple of the network's downsampling (``what`` names the key).
    """
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"{what} must be (H, W, D) with positive ints, got {tuple(roi_size)}")
    fac = downsample_factors(net_cfg)
    bad = [(r, f) for r, f in zip(roi, fac) if r % f]
    if bad:
        raise ValueError(
            f"{what} {roi} must be a multiple of {fac} for {net_cfg.get('type')} (its downsampling per axis); "
            f"e.g. {tuple(max(f, r // f * f) for r, f in zip(roi, fac))}"
        )
    return roi  # type: ignore[return-value]


def build_net(net_cfg: Mapping[str, Any]) -> nn.Module:
    """A MONAI network from ``net = dict(type="SegResNet" | "DynUNet", **kwargs)`` (any other
    ``monai.networks.nets`` name too).

    ``out_channels`` must equal ``len(CLASSES)`` (multi-label sigmoid outputs, one channel per class).
    """
    import monai.networks.nets as nets

    kwargs = to_dict(dict(net_cfg))
    typ = kwargs.pop("type", None)
    if not typ or not hasattr(nets, typ):
        names = [n for n in dir(nets) if n[:1].isupper()]
        close = difflib.get_close_matches(str(typ), names, n=3)
        hint = f" (close: {close})" if close else ""
        raise ValueError(f"unknown network type {typ!r} (model.net.type); expected one of {MODEL_TYPES}{hint}")
    if kwargs.get("out_channels", NUM_CLASSES) != NUM_CLASSES:
        raise ValueError(
            f"model.net.out_channels must be {NUM_CLASSES} (one sigmoid channel per class in {CLASSES}), "
            f"got {kwargs['out_channels']}"
        )
    kwargs.setdefault("out_channels", NUM_CLASSES)
    kwargs.setdefault("in_channels", 1)
    kwargs.setdefault("spatial_dims", 3)
    return getattr(nets, typ)(**kwargs)


class DiceBCELoss(nn.Module):
    """Multi-label loss: ``lambda_dice * DiceLoss(sigmoid) + lambda_bce * BCEWithLogits``.

    (MONAI's ``DiceCELoss`` uses a softmax cross-entropy for more than one channel, which is wrong for
    overlapping classes; this pairs its sigmoid Dice with a per-channel BCE.) Deep-supervision outputs
    ``(B, S, C, ...)`` (DynUNet in training) are supported: head ``i`` weighs ``0.5 ** i``.

    Args:
        lambda_dice, lambda_bce: weights (>= 0, not both 0).
        batch: Dice over the whole batch (True) or per sample.
        smooth_nr, smooth_dr: Dice smoothing.
    """

    def __init__(
        self,
        lambda_dice: float = 1.0,
        lambda_bce: float = 1.0,
        batch: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        if lambda_dice < 0 or lambda_bce < 0 or lambda_dice + lambda_bce == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got dice={lambda_dice} bce={lambda_bce}")
        self.lambda_dice, self.lambda_bce = float(lambda_dice), float(lambda_bce)
        self.dice = DiceLoss(sigmoid=True, batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
        self.bce = nn.BCEWithLogitsLoss()

    def _one(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if self.lambda_dice:
            loss = loss + self.lambda_dice * self.dice(logits, target)
        if self.lambda_bce:
            loss = loss + self.lambda_bce * self.bce(logits, target)
        return loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits (B, C, H, W, D)`` (or ``(B, S, C, H, W, D)``), ``target`` float ``(B, C, H, W, D)``."""
        target = target.to(logits.dtype)
        if logits.ndim == target.ndim + 1:
            weights = [0.5**i for i in range(logits.shape[1])]
            total = sum(w * self._one(logits[:, i], target) for i, w in enumerate(weights))
            return total / sum(weights)
        return self._one(logits, target)


def build_loss(loss_cfg: Mapping[str, Any] | None) -> nn.Module:
    """``loss = dict(type="DiceBCELoss", lambda_dice=1., lambda_bce=1.)`` or ``dict(type="DiceLoss")``."""
    kwargs = to_dict(dict(loss_cfg or {}))
    typ = kwargs.pop("type", "DiceBCELoss")
    if typ == "DiceBCELoss":
        return DiceBCELoss(**kwargs)
    if typ == "DiceLoss":
        return DiceBCELoss(lambda_dice=1.0, lambda_bce=0.0, **kwargs)
    raise ValueError(f"loss type must be 'DiceBCELoss' or 'DiceLoss', got {typ!r}")


# ----------------------------------------------------------------------------------------------------------------
# test-time augmentation
# ----------------------------------------------------------------------------------------------------------------

#: Flip TTA names -> spatial dims of a ``(B, C, H, W, D)`` tensor.
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (3,), "vflip": (2,), "dflip": (4,)}


def tta_variants(tta: Sequence[str] | None) -> list[tuple[int, ...]]:
    """The flips (tensor dims of ``(B, C, H, W, D)``) a TTA list runs, identity ``()`` first.

    ``"flip"`` = left-right flip + slice-order flip (with the identity: 3 passes); ``"hflip"`` (W), ``"vflip"``
    (H) and ``"dflip"`` (D) may be listed one by one instead; ``()`` runs the model once.

    >>> tta_variants(("flip",))
    [(), (3,), (4,)]
    >>> tta_variants(None)
    [()]
    """
    if isinstance(tta, str):
        tta = (tta,)
    out: list[tuple[int, ...]] = [()]
    for name in tta or ():
        names = ("hflip", "dflip") if name == "flip" else (name,)
        for n in names:
            if n not in TTA_FLIPS:
                raise ValueError(f"unknown TTA {name!r}; expected 'flip' or any of {sorted(TTA_FLIPS)}")
            if TTA_FLIPS[n] not in out:
                out.append(TTA_FLIPS[n])
    return out


# ----------------------------------------------------------------------------------------------------------------
# data_prep's WORK folder
# ----------------------------------------------------------------------------------------------------------------


def load_case_day(
    work: str | os.PathLike, case_day: str, entry: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None]:
    """``(volume uint16 (D, H, W) memmap, mask uint8 (D, H, W) bit-field memmap or None, spacing or None)`` of a
    case-day of a WORK folder; ``entry`` (of :func:`data_prep.exports.read_datalist`) gives the spacing
    ``(z, y, x)`` mm."""
    volume = load_volume(work, case_day)
    mask = load_mask(work, case_day) if has_mask(work, case_day) else None
    if mask is not None and mask.shape != volume.shape:
        raise ValueError(
            f"{case_day}: mask {mask.shape} and volume {volume.shape} differ in {work}; re-run `{prepare_hint(work)}`"
        )
    spacing = tuple(float(v) for v in entry["spacing"]) if entry and entry.get("spacing") is not None else None
    return volume, mask, spacing
