"""Array conventions of case-day volumes and masks: bit-field packing, 2.5D stacks, 8-bit display. Pure numpy.

A WORK folder (:mod:`data_prep.work` reads and writes it) holds one uint16 volume ``(D, H, W)`` per case-day and,
with labels, one uint8 bit-field mask ``(D, H, W)``: bit ``c`` is set where class ``CLASSES[c]`` is present.
2.5D inputs are never stored: :func:`stack_25d` gathers the channels ``[z - s*k, ..., z, ..., z + s*k]``
(clamped at the volume ends) from the volume.

>>> stack_indices(0, 10, stride=2, channels=3).tolist()
[0, 0, 2]
>>> m = np.zeros((3, 2, 2), np.uint8); m[0, 0, 0] = 1; m[2, 0, 0] = 1; m[1, 1, 1] = 1
>>> pack_mask(m).tolist()
[[5, 0], [0, 2]]
>>> bool((unpack_mask(pack_mask(m)) == m).all())
True
"""

from __future__ import annotations

import numpy as np

from data_prep.constants import NUM_CLASSES
from data_prep.dataset import pack_masks, unpack_masks


def check_stack(stride: int, channels: int, depth: int, depth_name: str = "depth") -> None:
    """ValueError unless ``channels`` is odd and >= 1, ``stride >= 1`` and the volume has slices (``depth >= 1``)."""
    if channels < 1 or channels % 2 == 0:
        raise ValueError(f"channels must be odd and >= 1, got {channels}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if depth < 1:
        raise ValueError(f"{depth_name} must be >= 1, got {depth}")


def stack_indices(z: int, depth: int, stride: int = 2, channels: int = 3) -> np.ndarray:
    """Slice indices of the 2.5D stack centred on slice ``z``, clamped to ``[0, depth - 1]``.

    Args:
        z: centre slice, ``0 <= z < depth``.
        depth: number of slices of the volume.
        stride: step ``s`` between channels (>= 1).
        channels: number of channels ``2k + 1`` (odd, >= 1).

    Returns:
        int64 array of shape ``(channels,)``: ``clip([z - s*k, ..., z, ..., z + s*k], 0, depth - 1)``.

    >>> stack_indices(9, 10, stride=1, channels=5).tolist()
    [7, 8, 9, 9, 9]
    """
    check_stack(stride, channels, depth)
    if not 0 <= z < depth:
        raise ValueError(f"z must be in [0, {depth - 1}] for a volume of {depth} slices, got {z}")
    k = channels // 2
    idx = z + stride * np.arange(-k, k + 1, dtype=np.int64)
    return np.clip(idx, 0, depth - 1)


def stack_25d(volume: np.ndarray, z: int, stride: int = 2, channels: int = 3) -> np.ndarray:
    """The 2.5D input of slice ``z``: the slices :func:`stack_indices` names, stacked as channels.

    Args:
        volume: ``(D, H, W)`` array (any dtype, e.g. the uint16 memmap of :func:`data_prep.work.load_volume`).
        z: centre slice.
        stride: step between channels.
        channels: number of channels (odd).

    Returns:
        ``(channels, H, W)`` array, same dtype as ``volume`` (a copy; the memmap is not kept).
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (D, H, W), got shape {volume.shape}")
    return np.ascontiguousarray(volume[stack_indices(z, volume.shape[0], stride, channels)])


def pack_mask(masks: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Pack binary class masks ``(..., C, H, W)`` (``C == num_classes``, any non-zero is foreground) into a bit
    field ``(..., H, W)`` (uint8 up to 8 classes; :func:`data_prep.dataset.pack_masks`)."""
    return pack_masks(masks, num_classes, "overlapping")


def unpack_mask(packed: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Unpack a bit field ``(..., H, W)`` into uint8 0/1 class masks ``(..., C, H, W)`` in class order.
    For a WORK of any label kind use ``data_prep.work.read_dataset(work).unpack``."""
    return unpack_masks(packed, num_classes, "overlapping")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale a scan to 8 bits by its own maximum: ``round(255 * image / max(image))`` (zeros stay zeros).

    The rule used for the YOLO export's PNGs; a detector must see images made the same way at inference.

    Args:
        image: ``(..., H, W)`` array (uint16 or float); scaled as one block.

    Returns:
        uint8 array of the same shape.
    """
    image = np.asarray(image, dtype=np.float32)
    peak = float(image.max()) if image.size else 0.0
    if peak <= 0:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.clip(np.rint(image * (255.0 / peak)), 0, 255).astype(np.uint8)
