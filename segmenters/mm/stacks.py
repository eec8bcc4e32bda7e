"""2.5D stacks: read a slice stack from a case-day volume, normalise it, resize it (crops: ``gating.crop``).

Pure numpy/OpenCV; shared by the training dataset (``segmenters.mm.data``) and inference
(``segmenters.mm.inference``) so that both see images made the same way.
"""

from __future__ import annotations

import cv2
import numpy as np

from data_prep.volumes import stack_indices

#: Normalisation modes of :func:`normalise_stack`.
NORM_MODES: tuple[str, ...] = ("max", "minmax", "percentile", "volume_max", "none")


def normalise_stack(stack: np.ndarray, mode: str = "max", volume_max: float | None = None) -> np.ndarray:
    """Scale a 2.5D stack to float32, by default dividing by the stack's own maximum (the 1st place's rule).

    Args:
        stack: ``(C, H, W)`` uint16 (or any numeric) stack.
        mode: ``max`` (``x / max(stack)``), ``minmax`` (``(x - min) / (max - min)``), ``percentile``
            (``x / p99.5``, clipped to ``[0, 1]``), ``volume_max`` (``x / volume_max``, the whole case-day's
            maximum) or ``none`` (``x`` as float32).
        volume_max: the case-day's maximum; required for ``volume_max``.

    Returns:
        float32 ``(C, H, W)``; an all-zero stack stays zero.

    >>> normalise_stack(np.array([[[0, 50], [100, 200]]], np.uint16)).tolist()
    [[[0.0, 0.25], [0.5, 1.0]]]
    """
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
    norm: str = "max",
    volume_max: float | None = None,
) -> np.ndarray:
    """The normalised 2.5D input of slice ``z``.

    Args:
        volume: ``(D, H, W)`` uint16 volume (a memmap is fine: only ``channels`` slices are read).
        z: centre slice, ``0 <= z < D``.
        stride, channels: as :func:`data_prep.volumes.stack_indices`.
        norm, volume_max: as :func:`normalise_stack`.

    Returns:
        float32 ``(H, W, channels)`` (channels last, as OpenCV and albumentations expect).
    """
    idx = stack_indices(int(z), int(volume.shape[0]), stride=stride, channels=channels)
    stack = np.asarray(volume[idx])
    return np.ascontiguousarray(normalise_stack(stack, norm, volume_max).transpose(1, 2, 0))


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
