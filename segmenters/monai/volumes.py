"""Pure pieces of the 3D segmenters (MONAI SegResNet, DynUNet): intensity normalisation, resampling, patch-size
checks, the network and loss builders, and the case-day reader. The registered training modules
(:mod:`segmenters.monai.model`, :mod:`segmenters.monai.data`, :mod:`segmenters.monai.metric`,
:mod:`segmenters.monai.hooks`) and inference (:mod:`segmenters.monai.inference`) are built on them.

Layout conventions:

- a case-day volume on disk is ``uint16 (D, H, W)`` per image channel (data_prep's WORK folder,
  :func:`data_prep.work.load_volume`), its mask ``(D, H, W)`` a bit field or a label map that
  ``DatasetInfo.unpack`` turns into ``C`` binary channels (the classes of ``WORK/dataset.json``);
- inside the 3D models a volume is MONAI's channel-first ``(K, H, W, D)`` (``K`` image channels; a batch
  ``(B, K, H, W, D)``), so the configs' patch sizes read ``H x W x D`` like the config names (``-224x224x80``);
- every volume is resampled before the model and back to its own grid afterwards (:func:`resample_plan`):
  **in-plane** to a fixed size or a fixed pixel spacing, the depth kept (80- and 144-slice case-days both work:
  patches larger than a volume are padded), or, for anisotropic volumes of any dataset, to a target spacing
  ``(sz, sy, sx)`` in **all three axes** (``resample=dict(mode="spacing", spacing=(sz, sy, sx))``; each volume's
  own spacing comes from ``WORK/dataset.json``).
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

from data_prep.dataset import KAGGLE, DatasetInfo
from data_prep.plan import CT_MODE, ct_normalise, ct_params
from data_prep.work import has_mask, load_mask, load_volume, prepare_hint, read_dataset
from training.checks import volume_channels

#: Model types this module builds (any other ``monai.networks.nets`` name is accepted too, unchecked).
MODEL_TYPES: tuple[str, ...] = ("SegResNet", "DynUNet")
NORM_MODES: tuple[str, ...] = ("percentile", "max", "zscore", CT_MODE)
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
    volume: np.ndarray,
    mode: str = "percentile",
    percentiles: Sequence[float] = (0.0, 99.5),
    ct: Mapping[str, Any] | None = None,
    channel: int = 0,
) -> np.ndarray:
    """Per-volume intensity normalisation.

    Args:
        volume: any shape, any real dtype (uint16 scans).
        mode: ``"percentile"``: ``(v - p_lo) / (p_hi - p_lo)`` clipped to ``[0, 1]``; ``"max"``: ``v / max(v)``
            (the 1st place's 2.5D rule); ``"zscore"``: ``(v - mean) / std``; ``"ct"``: nnU-Net's CT scheme with the
            dataset's fixed figures, ``(clip(v, lo, hi) - mean) / std`` (stored units; the planner writes them).
        percentiles: ``(lo, hi)`` for ``"percentile"``, in ``[0, 100]``.
        ct: the ``norm`` dict holding ``clip``, ``mean``, ``std`` for ``"ct"`` (per-channel lists allowed,
            :func:`data_prep.plan.ct_params`).
        channel: the image channel ``volume`` is (for per-channel ``ct`` values).

    Returns:
        float32 array of the same shape; a constant volume gives zeros (except under ``"ct"``).

    >>> normalize_intensity(np.array([0, 50, 100], dtype=np.uint16), "max").tolist()
    [0.0, 0.5, 1.0]
    >>> normalize_intensity(np.array([0, 50, 100]), "ct", ct=dict(clip=(20, 80), mean=40, std=20)).tolist()
    [-1.0, 0.5, 2.0]
    """
    if mode == CT_MODE:
        if ct is None:
            raise ValueError("norm mode 'ct' needs dict(mode='ct', clip=(lo, hi), mean=m, std=s) (the plan writes it)")
        return ct_normalise(volume, *ct_params(ct, channel, "the 3D model's norm"))
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


def resample_mode(resample: Mapping[str, Any]) -> str:
    """The mode of a ``resample`` dict: its ``mode``, else ``"spacing"`` when it names a ``spacing`` or ``pixdim``,
    else ``"size"``.

    >>> resample_mode({"spacing": (3.0, 1.5, 1.5)}), resample_mode({"size": (64, 64)})
    ('spacing', 'size')
    """
    if resample.get("mode"):
        return str(resample["mode"])
    return "spacing" if resample.get("spacing") is not None or resample.get("pixdim") is not None else "size"


def _target_spacing(resample: Mapping[str, Any]) -> tuple[float | None, float, float]:
    """``(tz or None, ty, tx)`` of a ``"spacing"`` resample: ``spacing=(sz, sy, sx)`` (all three axes) or
    ``pixdim=(sy, sx)`` (in-plane)."""
    three, two = resample.get("spacing"), resample.get("pixdim")
    if (three is None) == (two is None):
        raise ValueError(
            "resample mode 'spacing' needs exactly one of spacing=(sz, sy, sx) (all three axes) and pixdim=(sy, sx) "
            f"(in-plane), got {dict(resample)}"
        )
    vals = tuple(float(v) for v in (three if three is not None else two))
    if len(vals) != (3 if three is not None else 2) or min(vals) <= 0:
        raise ValueError(f"resample spacing must be positive mm, (sz, sy, sx) or pixdim (sy, sx), got {dict(resample)}")
    return (vals[0], vals[1], vals[2]) if three is not None else (None, vals[0], vals[1])


def target_hw(
    hw: Sequence[int], resample: Mapping[str, Any], spacing: Sequence[float] | None = None
) -> tuple[int, int]:
    """In-plane size ``(h, w)`` a volume of slice size ``hw = (H, W)`` is resampled to.

    Args:
        hw: ``(H, W)`` of the original slices.
        resample: ``{"mode": "size", "size": (h, w)}`` (fixed size, the default), ``{"mode": "spacing",
            "pixdim": (sy, sx)}`` (mm per pixel), ``{"mode": "spacing", "spacing": (sz, sy, sx)}`` (all three axes;
            :func:`target_shape` gives the depth) or ``{"mode": "none"}``.
        spacing: ``(sy, sx)`` or ``(sz, sy, sx)`` mm of the original slices (only for ``"spacing"``).

    >>> target_hw((310, 360), {"mode": "size", "size": (256, 256)})
    (256, 256)
    >>> target_hw((266, 266), {"mode": "spacing", "pixdim": (3.0, 3.0)}, spacing=(3.0, 1.5, 1.5))
    (133, 133)
    """
    mode = resample_mode(resample)
    if mode == "none":
        return int(hw[0]), int(hw[1])
    if mode == "size":
        size = resample.get("size")
        if size is None or len(size) != 2 or min(size) < 1:
            raise ValueError(f"resample size must be (h, w) with positive ints, got {size!r}")
        return int(size[0]), int(size[1])
    if mode == "spacing":
        _, ty, tx = _target_spacing(resample)
        if spacing is None:
            raise ValueError("resample mode 'spacing' needs the volume's pixel spacing; pass spacing=(sz, sy, sx)")
        sy, sx = (float(s) for s in tuple(spacing)[-2:])
        return max(1, round(hw[0] * sy / ty)), max(1, round(hw[1] * sx / tx))
    raise ValueError(f"resample mode must be one of {RESAMPLE_MODES}, got {mode!r}")


def target_shape(
    dhw: Sequence[int], resample: Mapping[str, Any], spacing: Sequence[float] | None = None
) -> tuple[int, int, int]:
    """Grid ``(d, h, w)`` a volume of shape ``dhw = (D, H, W)`` is resampled to: :func:`target_hw` in-plane; the
    depth is kept, except for ``{"mode": "spacing", "spacing": (sz, sy, sx)}``, which needs ``spacing = (sz, sy,
    sx)`` of the volume and resamples every axis to the target spacing.

    >>> target_shape((80, 266, 266), {"mode": "spacing", "spacing": (1.5, 1.5, 1.5)}, (3.0, 1.5, 1.5))
    (160, 266, 266)
    >>> target_shape((80, 266, 266), {"mode": "size", "size": (128, 128)})
    (80, 128, 128)
    """
    h, w = target_hw(dhw[1:], resample, spacing)
    d = int(dhw[0])
    if resample_mode(resample) == "spacing":
        tz, _, _ = _target_spacing(resample)
        if tz is not None:
            if spacing is None or len(tuple(spacing)) != 3:
                raise ValueError(
                    "resample spacing=(sz, sy, sx) needs the volume's spacing (sz, sy, sx) mm (WORK/dataset.json); "
                    f"got {spacing!r}"
                )
            d = max(1, round(d * float(tuple(spacing)[0]) / tz))
    return d, h, w


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


def resize_volume(x: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resample a channel-first volume to ``size`` = ``(h, w)`` (in-plane, :func:`resize_hw`) or ``(h, w, d)``
    (in-plane, then linearly along the depth: trilinear overall).

    Args:
        x: float tensor ``(C, H, W, D)``.
        size: ``(h, w)`` or ``(h, w, d)``.
        mode: ``"bilinear"`` (linear along the depth) or ``"nearest"``.

    Returns:
        ``(C, h, w, d)``, same dtype and device; ``x`` itself when the size already matches.
    """
    y = resize_hw(x, size[:2], mode)
    if len(size) < 3 or int(size[2]) == y.shape[3]:
        return y
    c, h, w, _ = y.shape
    d = int(size[2])
    flat = y.reshape(1, c * h * w, y.shape[3])  # (1, C*h*w, D): 1D resampling along the depth
    if mode == "bilinear":
        flat = F.interpolate(flat, size=d, mode="linear", align_corners=False)
    else:
        flat = F.interpolate(flat, size=d, mode="nearest-exact")
    return flat.reshape(c, h, w, d).contiguous()


def resample_plan(
    dhw: Sequence[int], resample: Mapping[str, Any] | None, spacing: Sequence[float] | None = None
) -> tuple[int, int, int]:
    """The model-side size ``(h, w, d)`` (MONAI's axis order) of a volume of shape ``dhw = (D, H, W)`` and spacing
    ``(sz, sy, sx)`` under ``resample`` (None: :data:`DEFAULT_RESAMPLE`); the prediction is resampled back to
    ``(H, W, D)`` by :func:`resize_volume`.

    >>> resample_plan((40, 64, 48), {"mode": "spacing", "spacing": (2.0, 2.0, 2.0)}, (4.0, 1.0, 1.0))
    (32, 24, 80)
    """
    d, h, w = target_shape(dhw, dict(resample or DEFAULT_RESAMPLE), spacing)
    return h, w, d


def preprocess_image(
    volume: np.ndarray | Sequence[np.ndarray],
    norm: Mapping[str, Any] | None = None,
    resample: Mapping[str, Any] | None = None,
    spacing: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    channels: int | None = None,
) -> torch.Tensor:
    """A scan as the model's input: every image channel normalised on its own, resampled, channel-first.

    Args:
        volume: ``(D, H, W)`` scan (uint16 or any real dtype), or ``K`` image channels: ``(K, D, H, W)`` or a list
            of ``K`` ``(D, H, W)`` arrays.
        norm: ``dict(mode="percentile" | "max" | "zscore", percentiles=(lo, hi))`` (default percentile 0-99.5,
            see :func:`normalize_intensity`), or the planner's CT scheme ``dict(mode="ct", clip=(lo, hi), mean=m,
            std=s)``.
        resample: target grid (:func:`resample_plan`; default ``dict(mode="size", size=(256, 256))``).
        spacing: ``(sz, sy, sx)`` or ``(sy, sx)`` mm (only for ``resample.mode == "spacing"``; ``(sz, sy, sx)`` for
            a 3-axis target spacing).
        device: where the resampling runs (default CPU).
        channels: the expected ``K`` (None: a 3-D array is one channel, a 4-D array or a list gives ``K``).

    Returns:
        float32 ``(K, h, w, d)``.
    """
    if channels is None:
        channels = len(volume) if isinstance(volume, (list, tuple)) else (1 if np.ndim(volume) == 3 else len(volume))
    parts = volume_channels(volume, int(channels), "the 3D model's volume")
    norm = dict(norm or DEFAULT_NORM)
    planes = []
    for k, v in enumerate(parts):
        v = normalize_intensity(v, norm.get("mode", "percentile"), norm.get("percentiles", (0.0, 99.5)), norm, k)
        planes.append(torch.from_numpy(np.ascontiguousarray(v.transpose(1, 2, 0))))  # (H, W, D)
    x = torch.stack(planes)  # (K, H, W, D)
    if device is not None:
        x = x.to(device)
    return resize_volume(x, resample_plan(parts[0].shape, resample, spacing))


def preprocess_label(mask: np.ndarray, size: Sequence[int], dataset: DatasetInfo = KAGGLE) -> torch.Tensor:
    """A WORK mask ``(D, H, W)`` (bit field or label map of ``dataset``) as ``float32 (C, h, w, d)`` binary channels
    at ``size`` = ``(h, w)`` (depth kept) or ``(h, w, d)`` (resampled linearly, then thresholded at 0.5)."""
    if mask.ndim != 3:
        raise ValueError(f"expected a mask (D, H, W), got shape {mask.shape}")
    y = torch.from_numpy(dataset.unpack(np.asarray(mask)).transpose(1, 2, 3, 0).astype(np.float32))  # (C, H, W, D)
    full = tuple(int(v) for v in size) if len(size) == 3 else (int(size[0]), int(size[1]), y.shape[3])
    if tuple(y.shape[1:]) != full:
        y = (resize_volume(y, full) > 0.5).float()
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

    ``out_channels`` (one sigmoid channel per class) and ``in_channels`` (the image channels) must be given: the
    configs leave them None and :func:`training.config.load_config` fills them from ``WORK/dataset.json`` (or, at
    inference, from the checkpoint).

    Raises:
        ValueError: an unknown network type, or ``out_channels`` / ``in_channels`` missing or not positive.
    """
    import monai.networks.nets as nets

    kwargs = to_dict(dict(net_cfg))
    typ = kwargs.pop("type", None)
    if not typ or not hasattr(nets, typ):
        names = [n for n in dir(nets) if n[:1].isupper()]
        close = difflib.get_close_matches(str(typ), names, n=3)
        hint = f" (close: {close})" if close else ""
        raise ValueError(f"unknown network type {typ!r} (model.net.type); expected one of {MODEL_TYPES}{hint}")
    for key, what in (("out_channels", "one per class"), ("in_channels", "one per image channel")):
        value = kwargs.get(key)
        if value is None or int(value) < 1:
            raise ValueError(
                f"model.net.{key} must be a positive int ({what}), got {value!r}: load the config with "
                "training.config.load_config, which fills it from WORK/dataset.json (or the checkpoint at inference)"
            )
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


def volume_spacing(
    dataset: DatasetInfo, case_day: str, entry: Mapping[str, Any] | None = None
) -> tuple[float, float, float] | None:
    """``(sz, sy, sx)`` mm of a case-day: the dataset description's (``WORK/dataset.json``), else the 3D datalist
    entry's ``spacing`` (:func:`data_prep.exports.read_datalist`; the Kaggle layout), else None."""
    if case_day in dataset.volumes:
        return tuple(float(v) for v in dataset.volumes[case_day].spacing)  # type: ignore[return-value]
    if entry and entry.get("spacing") is not None:
        sp = tuple(float(v) for v in entry["spacing"])
        return dataset.spacing(case_day, sp[-2:]) if len(sp) == 2 else sp  # type: ignore[return-value]
    return None


def load_case_day(
    work: str | os.PathLike,
    case_day: str,
    entry: Mapping[str, Any] | None = None,
    dataset: DatasetInfo | None = None,
) -> tuple[list[np.ndarray], np.ndarray | None, tuple[float, float, float] | None]:
    """``(image channels [uint16 (D, H, W) memmap] * K, mask (D, H, W) memmap or None, spacing (sz, sy, sx) mm or
    None)`` of a case-day of a WORK folder (``K`` image channels and the spacing from ``dataset``, default
    ``read_dataset(work)``; the spacing falls back to the datalist ``entry``'s, :func:`volume_spacing`).

    Raises:
        FileNotFoundError: a missing volume. ValueError: channels or mask of another shape than channel 0.
    """
    dataset = read_dataset(work) if dataset is None else dataset
    channels = [load_volume(work, case_day, channel=k) for k in range(dataset.num_channels)]
    shape = channels[0].shape
    mask = load_mask(work, case_day) if has_mask(work, case_day) else None
    bad = [f"channel {k}: {v.shape}" for k, v in enumerate(channels) if v.shape != shape]
    if mask is not None and mask.shape != shape:
        bad.append(f"mask: {mask.shape}")
    if bad:
        raise ValueError(
            f"{case_day}: {', '.join(bad)} differ from the volume {shape} in {work}; re-run `{prepare_hint(work)}`"
        )
    return channels, mask, volume_spacing(dataset, case_day, entry)
