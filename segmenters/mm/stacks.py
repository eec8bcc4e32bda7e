"""2.5D stacks: read a slice stack from a case-day volume, normalise it, resize it (crops: ``gating.crop``).

Pure numpy/OpenCV; shared by the training dataset (``segmenters.mm.data``) and inference
(``segmenters.mm.inference``) so that both see images made the same way.

A normalisation (``stack.norm`` of the configs) is a mode name of :data:`NORM_MODES` (``"max"``: each stack divided
by its own maximum, the 1st place's rule) or a dict ``dict(mode=..., ...)``; the CT scheme that the planner derives
from the fingerprint (``python -m data_prep plan``) needs one: ``dict(mode="ct", clip=(lo, hi), mean=m, std=s)``
(stored units; per image channel: lists, :func:`data_prep.plan.ct_params`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from data_prep.plan import CT_MODE, STACK_NORM_MODES, ct_normalise, ct_params
from data_prep.volumes import stack_indices

#: Normalisation modes of :func:`normalise_stack` (``ct`` only as a dict with its parameters).
NORM_MODES: tuple[str, ...] = STACK_NORM_MODES
#: A ``stack.norm`` value: a mode name, or ``dict(mode=..., **parameters)``.
Norm = str | Mapping[str, Any]


def check_norm(norm: Any, channels: int = 1, where: str = "norm") -> Norm:
    """A checked normalisation as plain data: a mode name, or a plain dict (mmengine ``ConfigDict`` copied).

    Args:
        norm: a mode of :data:`NORM_MODES`, or ``dict(mode=..., ...)``; ``ct`` needs ``clip``, ``mean``, ``std``.
        channels: the image channels it will be applied to (a ``ct`` dict with per-channel lists must cover them).
        where: names the setting in errors.

    Raises:
        ValueError: an unknown mode, ``ct`` without a dict, or bad ``ct`` parameters (the message names ``where``).

    >>> check_norm("max")
    'max'
    >>> check_norm("ct")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: norm: mode 'ct' needs its parameters: dict(mode='ct', clip=(lo, hi), mean=m, std=s) ...
    """
    if isinstance(norm, Mapping):
        plain = {str(k): _plain(v) for k, v in norm.items()}
        mode = plain.get("mode")
        if mode not in NORM_MODES:
            raise ValueError(f"{where}: mode must be one of {NORM_MODES}, got {mode!r} in {plain}")
        if mode == CT_MODE:
            for k in range(max(1, int(channels))):
                ct_params(plain, k, where)
        return plain
    if norm not in NORM_MODES:
        raise ValueError(f"{where} must be one of {NORM_MODES} or a dict(mode=...), got {norm!r}")
    if norm == CT_MODE:
        raise ValueError(
            f"{where}: mode 'ct' needs its parameters: dict(mode='ct', clip=(lo, hi), mean=m, std=s) "
            "(python -m data_prep plan writes them)"
        )
    return str(norm)


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def normalise_stack(
    stack: np.ndarray, mode: Norm = "max", volume_max: float | None = None, channel: int = 0
) -> np.ndarray:
    """Scale a 2.5D stack to float32, by default dividing by the stack's own maximum (the 1st place's rule).

    Args:
        stack: ``(C, H, W)`` uint16 (or any numeric) stack.
        mode: ``max`` (``x / max(stack)``), ``minmax`` (``(x - min) / (max - min)``), ``percentile``
            (``x / p99.5``, clipped to ``[0, 1]``), ``volume_max`` (``x / volume_max``, the whole case-day's
            maximum), ``none`` (``x`` as float32), or a dict: ``dict(mode=<one of those>)`` or the CT scheme
            ``dict(mode="ct", clip=(lo, hi), mean=m, std=s)``: ``(clip(x, lo, hi) - m) / s`` (stored units).
        volume_max: the case-day's maximum; required for ``volume_max``.
        channel: the image channel the stack comes from (a ``ct`` dict may hold one value per channel).

    Returns:
        float32 ``(C, H, W)``; an all-zero stack stays zero (except under ``ct``, which maps every value).

    >>> normalise_stack(np.array([[[0, 50], [100, 200]]], np.uint16)).tolist()
    [[[0.0, 0.25], [0.5, 1.0]]]
    >>> normalise_stack(np.array([[[0, 50], [100, 200]]]), dict(mode="ct", clip=(50, 150), mean=100, std=50)).tolist()
    [[[-1.0, -1.0], [0.0, 1.0]]]
    """
    if isinstance(mode, Mapping):
        if mode.get("mode") == CT_MODE:
            return ct_normalise(stack, *ct_params(mode, channel))
        mode = str(mode.get("mode"))
    x = np.asarray(stack, dtype=np.float32)
    if mode == "max":
        peak = float(x.max()) if x.size else 0.0
        return x / peak if peak > 0 else np.zeros_like(x)
    if mode == "minmax":
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if mode == "percentile":
        peak = float(np.percentile(x, 99.5)) if x.size else 0.0
        return np.clip(x / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(x)
    if mode == "volume_max":
        if volume_max is None:
            raise ValueError("normalise mode 'volume_max' needs volume_max (the case-day's maximum)")
        return x / float(volume_max) if volume_max > 0 else np.zeros_like(x)
    if mode == "none":
        return x
    raise ValueError(f"normalise mode must be one of {NORM_MODES}, got {mode!r}")


def read_stack(
    volume: np.ndarray,
    z: int,
    stride: int = 2,
    channels: int = 3,
    norm: Norm = "max",
    volume_max: float | None = None,
    channel: int = 0,
) -> np.ndarray:
    """The normalised 2.5D input of slice ``z``.

    Args:
        volume: ``(D, H, W)`` uint16 volume (a memmap is fine: only ``channels`` slices are read).
        z: centre slice, ``0 <= z < D``.
        stride, channels: as :func:`data_prep.volumes.stack_indices`.
        norm, volume_max, channel: as :func:`normalise_stack`.

    Returns:
        float32 ``(H, W, channels)`` (channels last, as OpenCV and albumentations expect).
    """
    idx = stack_indices(int(z), int(volume.shape[0]), stride=stride, channels=channels)
    stack = np.asarray(volume[idx])
    return np.ascontiguousarray(normalise_stack(stack, norm, volume_max, channel).transpose(1, 2, 0))


def resize_image(image: np.ndarray, size_hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a channels-last ``(H, W[, C])`` array to ``size_hw`` (bilinear, or nearest for masks).

    Works for any number of channels (OpenCV handles up to 512 per call).
    """
    h, w = int(size_hw[0]), int(size_hw[1])
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    out = cv2.resize(image, (w, h), interpolation=interp)
    if image.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel
        out = out[:, :, None]
    return out
