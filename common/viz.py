"""Pictures people would rather look at than read: slice overlays, case-day montages, training curves.

Pure functions over arrays that write PNG files (matplotlib, Agg backend); no model code. Masks are binary
``(C, H, W)`` per slice for any number of classes ``C``: class ``c`` is drawn in ``class_colors(C)[c]``, and
pictures given the class names carry a legend.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.io import atomic_write

RGB = tuple[float, float, float]
#: The first three class colours (the UW-Madison classes: large bowel, small bowel, stomach).
CLASS_COLORS: tuple[RGB, ...] = ((1.0, 0.85, 0.1), (0.1, 0.9, 0.3), (0.95, 0.2, 0.2))
#: Then matplotlib's tab20, without its two greys (invisible over a grayscale image).
_TAB20: tuple[str, ...] = (
    "1f77b4", "aec7e8", "ff7f0e", "ffbb78", "2ca02c", "98df8a", "d62728", "ff9896", "9467bd",
    "c5b0d5", "8c564b", "c49c94", "e377c2", "f7b6d2", "bcbd22", "dbdb8d", "17becf", "9edae5",
)  # fmt: skip
_GOLDEN = 0.6180339887498949


def class_colors(n: int) -> tuple[RGB, ...]:
    """``n`` distinct colours, the same for the same ``n`` and class index (a prefix of one fixed sequence): the
    three UW-Madison colours, then tab20 without its greys, then hues stepped by the golden ratio.

    >>> class_colors(2) == CLASS_COLORS[:2], len(class_colors(40)), len(set(class_colors(40)))
    (True, 40, 40)
    """
    if n < 0:
        raise ValueError(f"number of classes must be >= 0, got {n}")
    out = list(CLASS_COLORS[:n])
    for h in _TAB20[: max(0, n - len(out))]:
        out.append(tuple(int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4)))
    k = 0
    while len(out) < n:
        hue = (0.11 + k * _GOLDEN) % 1.0
        sat, val = (0.85, 0.95) if k % 2 == 0 else (0.55, 0.8)
        out.append(tuple(float(v) for v in colorsys.hsv_to_rgb(hue, sat, val)))
        k += 1
    return tuple(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_display(image: np.ndarray) -> np.ndarray:
    """A 16-bit (or any) grayscale slice ``(H, W)`` scaled to float32 in [0, 1] by its 99.5th percentile."""
    img = np.asarray(image, dtype=np.float32)
    hi = float(np.percentile(img, 99.5)) if img.size else 0.0
    return np.clip(img / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(img)


def blend(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Colour ``masks`` over a grayscale ``image``.

    Args:
        image: ``(H, W)`` grayscale, any dtype.
        masks: ``(C, H, W)`` binary, channels in class order, any ``C`` (colours :func:`class_colors`; overlaps mix
            their colours).
        alpha: opacity of the colours.

    Returns:
        float32 RGB ``(H, W, 3)`` in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1:] != np.shape(image):
        raise ValueError(f"masks must be (C, H, W) with (H, W) = {np.shape(image)}, got {masks.shape}")
    gray = to_display(image)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for c, color in enumerate(class_colors(masks.shape[0])):
        m = masks[c].astype(bool)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(color, dtype=np.float32)
    return rgb


def _save(fig, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"), fsync=False)


def _legend(fig, classes: Sequence[str] | None, n: int, cols: int) -> None:
    """A legend of the ``n`` class colours under the figure (nothing when ``classes`` is None)."""
    if classes is None:
        return
    if len(classes) != n:
        raise ValueError(f"{len(classes)} class names {list(classes)} for masks of {n} classes")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="none", label=str(name)) for c, name in zip(class_colors(n), classes)]
    # under the figure (its top at the figure's bottom edge); savefig(bbox_inches="tight") makes room for it
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=max(1, min(n, cols)), fontsize=7,
               frameon=False)  # fmt: skip


def _n_classes(*masks: np.ndarray | None) -> int:
    shapes = {np.shape(m)[-3] for m in masks if m is not None}
    if len(shapes) > 1:
        raise ValueError(f"truth and prediction have different class counts: {sorted(shapes)}")
    return shapes.pop() if shapes else 0


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray | None,
    title: str = "",
    classes: Sequence[str] | None = None,
) -> Path:
    """Write one slice as a PNG: the image, the truth over it, the prediction over it.

    Args:
        path: PNG to write (atomically).
        image: ``(H, W)`` grayscale.
        truth: ``(C, H, W)`` binary or None.
        pred: ``(C, H, W)`` binary or None.
        title: figure title (e.g. the slice id).
        classes: the ``C`` class names for a legend (None: no legend).
    """
    n = _n_classes(truth, pred)
    plt = _plt()
    panels = [("image", to_display(image))]
    if truth is not None:
        panels.append(("truth", blend(image, truth)))
    if pred is not None:
        panels.append(("prediction", blend(image, pred)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, arr) in zip(axes[0], panels):
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    if n:
        _legend(fig, classes, n, cols=3 * len(panels))
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def save_montage(
    path: str | os.PathLike,
    volume: np.ndarray,
    masks: np.ndarray,
    every: int | None = None,
    cols: int = 8,
    title: str = "",
    classes: Sequence[str] | None = None,
) -> Path:
    """Write a montage of a case-day: every ``every``-th slice with its masks coloured.

    Args:
        path: PNG to write.
        volume: ``(D, H, W)`` grayscale.
        masks: ``(D, C, H, W)`` binary.
        every: slice step; default so that about 24 slices are shown.
        cols: tiles per row.
        title: figure title.
        classes: the ``C`` class names for a legend (None: no legend).
    """
    if masks.ndim != 4 or masks.shape[0] != volume.shape[0]:
        raise ValueError(f"masks must be (D, C, H, W) with D = {volume.shape[0]}, got {masks.shape}")
    plt = _plt()
    depth = volume.shape[0]
    every = every or max(1, depth // 24)
    zs = list(range(0, depth, every))
    rows = (len(zs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, z in zip(axes.ravel(), zs):
        ax.imshow(blend(volume[z], masks[z]))
        ax.set_title(f"z={z}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    _legend(fig, classes, masks.shape[1], cols=cols)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def save_training_curves(
    path: str | os.PathLike,
    loss: tuple[Sequence[float], Sequence[float]],
    val: dict[str, Sequence[float]],
    val_title: str = "validation",
) -> Path:
    """Write a PNG with the training loss (left) and validation metrics (right) against the iteration.

    Args:
        path: output PNG (written atomically).
        loss: ``(iterations, values)``; a running mean is drawn over it when there are many points.
        val: ``{"iter": [...], metric name: [...], ...}``, every series as long as ``iter``.
        val_title: title of the right panel.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps, values = np.asarray(loss[0], dtype=float), np.asarray(loss[1], dtype=float)
    if len(values):
        axes[0].plot(steps, values, lw=0.6, alpha=0.5, label="loss")
        k = max(1, len(values) // 50)
        if k > 1:
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            axes[0].plot(steps[k - 1 :], smooth, lw=1.5, label=f"loss (mean of {k})")
        axes[0].legend(fontsize=8)
    axes[0].set_title("training loss", fontsize=10)
    for name, series in val.items():
        if name != "iter":
            axes[1].plot(val["iter"], series, marker="o", label=name)
    axes[1].set_title(val_title, fontsize=10)
    if len(val) > 1:
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
