"""Run-length encoding of the competition: ``start length`` pairs, starts 1-indexed, row-major (C) order.

A leaf module (numpy and the class names only), so every stage may use it.

>>> import numpy as np
>>> m = np.zeros((3, 4), dtype=np.uint8); m[1, 1:3] = 1; m[2, 0] = 1
>>> rle_encode(m)
'6 2 9 1'
>>> bool((rle_decode('6 2 9 1', (3, 4)) == m).all())
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_prep.constants import CLASSES


class RLEError(ValueError):
    """A malformed run-length string; the message names the row's id."""


def _where(row_id: str | None) -> str:
    return f" (row id {row_id!r})" if row_id is not None else ""


def rle_runs(rle: str | float | None, size: int, row_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate a run-length string into 0-indexed starts and lengths.

    Args:
        rle: the string; ``""``, ``None`` or NaN (pandas' empty cell) mean an empty mask.
        size: number of pixels of the image (H * W).
        row_id: the id named in errors.

    Returns:
        ``(starts, lengths)``, int64 arrays, starts 0-indexed.

    Raises:
        RLEError: odd count, non-integers, non-positive starts or lengths, a run past the image end,
            unsorted or overlapping runs.
    """
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}{_where(row_id)}")
    tokens = rle.split()
    if not tokens:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(tokens) % 2:
        raise RLEError(f"RLE has an odd number of values ({len(tokens)}){_where(row_id)}")
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise RLEError(f"RLE holds a non-integer value {bad!r}{_where(row_id)}") from None
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any():
        raise RLEError(f"RLE start below 1: {int(starts[starts < 0][0]) + 1}{_where(row_id)}")
    if (lengths <= 0).any():
        raise RLEError(f"RLE length not positive: {int(lengths[lengths <= 0][0])}{_where(row_id)}")
    ends = starts + lengths
    if (ends > size).any():
        bad = int(np.flatnonzero(ends > size)[0])
        raise RLEError(
            f"RLE run {int(starts[bad]) + 1} {int(lengths[bad])} goes past the image end "
            f"({size} pixels){_where(row_id)}"
        )
    if len(starts) > 1:
        clash = np.flatnonzero(starts[1:] < ends[:-1])
        if len(clash):
            i = int(clash[0])
            kind = "unsorted" if starts[i + 1] < starts[i] else "overlapping"
            raise RLEError(
                f"RLE runs are {kind}: run {int(starts[i + 1]) + 1} starts before the previous run ends "
                f"at {int(ends[i])}{_where(row_id)}"
            )
    return starts, lengths


def rle_decode(rle: str | float | None, shape: tuple[int, int], row_id: str | None = None) -> np.ndarray:
    """Decode a run-length string into a binary mask.

    Args:
        rle: ``"start length ..."`` (1-indexed starts, row-major); empty string, None or NaN for empty.
        shape: ``(H, W)`` of the image.
        row_id: the id named in errors.

    Returns:
        uint8 array of shape ``(H, W)`` with values 0 and 1.
    """
    size = int(shape[0]) * int(shape[1])
    mask = np.zeros(size, dtype=np.uint8)
    if isinstance(rle, str) and not rle:
        return mask.reshape(shape)
    starts, lengths = rle_runs(rle, size, row_id)
    if len(starts):
        # Pixel indices of all runs at once: each run's start repeated over its length, plus 0..length-1.
        offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mask[np.repeat(starts, lengths) + offsets] = 1
    return mask.reshape(shape)


def rle_encode(mask: np.ndarray) -> str:
    """Encode a binary mask (any non-zero value is foreground) as a run-length string.

    Args:
        mask: array of shape ``(H, W)``.

    Returns:
        ``"start length ..."`` with 1-indexed starts in row-major order; ``""`` for an empty mask.
    """
    flat = np.asarray(mask).reshape(-1) != 0
    if not flat.any():
        return ""
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.stack([starts + 1, ends - starts], axis=1).reshape(-1)
    return " ".join(pairs.astype(str).tolist())


def rle_area(rle: str | float | None, size: int, row_id: str | None = None) -> int:
    """Number of foreground pixels of a run-length string, without decoding it."""
    return int(rle_runs(rle, size, row_id)[1].sum())


def _class_name(c: int) -> str:
    return CLASSES[c] if c < len(CLASSES) else str(c)


def decode_case_day(
    rles: Sequence[Sequence[str]], height: int, width: int, ids: Sequence[str] | None = None
) -> np.ndarray:
    """Decode the RLE strings of one case-day into masks.

    Args:
        rles: ``D`` rows of ``C`` strings (``""`` = empty), z order.
        height, width: image size.
        ids: slice ids, named in RLE errors (with the class name).

    Returns:
        bool ``(D, C, H, W)``.
    """
    d = len(rles)
    c = len(rles[0]) if d else 0
    out = np.zeros((d, c, height, width), dtype=bool)
    for z, row in enumerate(rles):
        for k, rle in enumerate(row):
            if rle:
                where = None if ids is None else f"{ids[z]}/{_class_name(k)}"
                out[z, k] = rle_decode(rle, (height, width), row_id=where)
    return out
