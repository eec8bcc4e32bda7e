"""Batched 2.5D preprocessing and paste-back as torch ops on the inference device (no Python loop over slices).

The same inputs as the host path of ``segmenters.mm.inference.Segmenter.predict_volume`` (per slice:
``data_prep.volumes.stack_indices`` -> ``segmenters.mm.stacks.normalise_stack`` -> ``gating.crop.crop_resize`` ->
model -> ``gating.crop.paste_resize``), made for a whole batch of slices at once on the tensors' device:

- :func:`volume_to_device`: a uint16 volume crosses to the device as its 2 bytes per voxel, float32 there;
- :func:`stack_index`, :func:`gather_stacks`: the 2.5D stacks of many slices (the same edge rule);
- :func:`normalise_stacks`: every normalisation mode of ``data_prep.plan.STACK_NORM_MODES``, per stack;
- :func:`crop_resize_batch`: crop each slice to its own box and resize (OpenCV's ``INTER_LINEAR`` rule);
- :func:`paste_back`: resize the predictions to their boxes and paste them into zero frames (torch's bilinear rule);
- :func:`tta_inputs`, :func:`tta_merge`: flips and rotations of a batch, and their average mapped back;
- :func:`to_plane`, :func:`from_plane`, :func:`plane_stride`: the volume re-sliced as coronal or sagittal slices
  (z resampled so that the pixels stay as square as the axial ones) and the predictions brought back.

:func:`crop_resize_batch` copies the two source rows of every output row, then the two source columns of every
output column, from per-slice tap tables computed as cv2 computes them (boxes may differ from slice to slice);
:func:`paste_back` runs ``F.interpolate`` once per distinct box. Both equal the host functions to float32
rounding (measured: at most 2e-7 on values in ``[0, 1]``).

>>> vol = volume_to_device(np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5), "cpu")
>>> vol.shape, vol.dtype
(torch.Size([2, 3, 4, 5]), torch.float32)
>>> stack_index(3, [0, 2], stride=1, channels=3, device="cpu").tolist()
[[0, 0, 1], [1, 2, 2]]
>>> normalise_stacks(gather_stacks(vol, [0], 1, 3), "max").shape
torch.Size([1, 6, 4, 5])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data_prep.plan import CT_MODE, STACK_NORM_MODES, ct_params, norm_mode
from data_prep.volumes import check_stack
from ensembles.spec import PLANES, check_tta_25d

__all__ = [
    "PlaneInfo",
    "crop_resize_batch",
    "from_plane",
    "gather_stacks",
    "normalise_stacks",
    "paste_back",
    "plane_stride",
    "stack_index",
    "to_plane",
    "tta_inputs",
    "tta_merge",
    "volume_to_device",
]

#: Channel counts for which cv2 resizes float32 through Intel IPP (see :func:`crop_resize_batch`).
_IPP_CHANNELS: tuple[int, ...] = (1, 3, 4)


def _cv2_uses_ipp() -> bool:
    """Whether cv2 resizes through Intel IPP now (``cv2.ipp.useIPP()``: built with it and optimisations on)."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - cv2 is a requirement of the host path
        return False
    return bool(cv2.ipp.useIPP())


BoxesLike = torch.Tensor | np.ndarray | Sequence[Sequence[int]]


# ------------------------------------------------------------------------------------------------------- volume


def volume_to_device(volume: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """A case-day volume as float32 ``(K, D, H, W)`` on ``device``.

    A uint16 volume crosses as its raw 2 bytes per voxel (viewed as int16, copied through pinned memory when the
    device is CUDA) and becomes float32 on the device (``int32 & 0xFFFF``, so values above 32767 stay exact).
    Any other integer, bool or float dtype is converted to float32 on the host first.

    Args:
        volume: ``(D, H, W)`` (one image channel) or ``(K, D, H, W)`` array; a memmap is fine.
        device: the target device (``"cpu"``, ``"cuda:0"``, a ``torch.device``).

    Returns:
        float32 ``(K, D, H, W)`` on ``device`` (``K = 1`` for a 3D input); a new tensor, never a view of ``volume``.

    Raises:
        ValueError: not 3D or 4D, or a dtype that is not numeric.

    >>> volume_to_device(np.array([[[0, 40000]]], np.uint16), "cpu").tolist()
    [[[[0.0, 40000.0]]]]
    """
    arr = np.asarray(volume)
    if arr.ndim not in (3, 4):
        raise ValueError(f"volume must be (D, H, W) or (K, D, H, W), got shape {arr.shape}")
    if arr.ndim == 3:
        arr = arr[None]
    device = torch.device(device)
    if arr.dtype == np.uint16:
        host = torch.empty(arr.shape, dtype=torch.int16, pin_memory=device.type == "cuda")
        host.numpy()[...] = arr.view(np.int16)  # the one host copy (a memmap is read here)
        raw = host.to(device, non_blocking=True)
        return (raw.to(torch.int32) & 0xFFFF).to(torch.float32)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating) or arr.dtype == bool):
        raise ValueError(f"volume must hold numbers (uint16 preferred), got dtype {arr.dtype}")
    host = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


# ------------------------------------------------------------------------------------------------------- stacks


def _as_long(values: Sequence[int] | torch.Tensor | np.ndarray, device: torch.device | None) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        t = values.to(dtype=torch.long)
        return t if device is None else t.to(device)
    return torch.as_tensor(np.asarray(values, dtype=np.int64).reshape(-1), dtype=torch.long, device=device)


def stack_index(
    d: int, zs: Sequence[int] | torch.Tensor, stride: int, channels: int, device: str | torch.device | None = None
) -> torch.Tensor:
    """The slice indices of the 2.5D stacks centred on the slices ``zs`` (``data_prep.volumes.stack_indices``).

    Args:
        d: number of slices of the volume.
        zs: ``N`` centre slices, each in ``[0, d - 1]`` (a sequence or a 1D integer tensor).
        stride: step ``s >= 1`` between the channels of a stack.
        channels: number of slices per stack, ``2k + 1`` (odd, >= 1).
        device: where the result lives (default: ``zs``'s device, the CPU for a sequence).

    Returns:
        int64 ``(N, channels)``: row ``n`` is ``clip([z - s*k, ..., z, ..., z + s*k], 0, d - 1)``.

    Raises:
        ValueError: even ``channels``, ``stride < 1``, ``d < 1`` or a centre outside the volume.

    >>> stack_index(10, [0, 9], stride=2, channels=3).tolist()
    [[0, 0, 2], [7, 9, 9]]
    """
    check_stack(stride, channels, d, "d")
    z = _as_long(zs, None if device is None else torch.device(device)).reshape(-1)
    if z.numel() and (int(z.min()) < 0 or int(z.max()) >= d):
        raise ValueError(f"centre slices must be in [0, {d - 1}] for a volume of {d} slices, got {z.tolist()}")
    k = channels // 2
    offsets = stride * torch.arange(-k, k + 1, dtype=torch.long, device=z.device)
    return (z[:, None] + offsets[None, :]).clamp_(0, d - 1)


def gather_stacks(vol: torch.Tensor, zs: Sequence[int] | torch.Tensor, stride: int, channels: int) -> torch.Tensor:
    """The 2.5D stacks of the slices ``zs`` from every image channel of a device volume.

    Args:
        vol: ``(K, D, H, W)`` (any dtype; :func:`volume_to_device` makes it).
        zs: ``N`` centre slices in ``[0, D - 1]``.
        stride, channels: as :func:`stack_index`.

    Returns:
        ``(N, K, channels, H, W)`` of ``vol``'s dtype and device: ``out[n, k, c] = vol[k, stack_index(...)[n, c]]``.
    """
    if vol.ndim != 4:
        raise ValueError(f"vol must be (K, D, H, W), got shape {tuple(vol.shape)}")
    kk, d, h, w = vol.shape
    idx = stack_index(d, zs, stride, channels, device=vol.device)
    n = idx.shape[0]
    out = vol.index_select(1, idx.reshape(-1)).reshape(kk, n, channels, h, w)
    return out.permute(1, 0, 2, 3, 4)


def _per_stack(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``(N, K)`` -> broadcastable against ``(N, K, C, H, W)``."""
    return t.reshape(shape[:2] + (1,) * (len(shape) - 2))


def _percentile_995(flat: torch.Tensor) -> torch.Tensor:
    """``np.percentile(row, 99.5)`` (linear rule, float32) of every row of ``flat (R, M)``, ``M >= 1``: ``(R,)``."""
    m = flat.shape[-1]
    pos = (m - 1) * 0.995  # numpy's virtual index, float64
    lo = int(np.floor(pos))
    hi = min(lo + 1, m - 1)
    gamma = pos - lo
    top = torch.topk(flat, m - lo, dim=-1, largest=True, sorted=True).values  # descending: ..., v[lo + 1], v[lo]
    a = top[:, -1]
    b = top[:, -2] if hi > lo else a
    if gamma == 0.0:
        return a
    diff = b - a  # numpy's _lerp in float32 (gamma cast to the array's dtype)
    g = torch.tensor(gamma, dtype=flat.dtype, device=flat.device)
    return b - diff * (1 - g) if gamma >= 0.5 else a + diff * g


def normalise_stacks(
    x: torch.Tensor, norm: str | Mapping[str, Any], volume_max: torch.Tensor | Sequence[float] | None = None
) -> torch.Tensor:
    """Normalise every ``(n, k)`` stack as ``normalise_stack(x[n, k], norm, volume_max[k], channel=k)`` does.

    Modes (``segmenters.mm.stacks.normalise_stack``): ``max`` (``x / max``), ``minmax``
    (``(x - min) / (max - min)``), ``percentile`` (``clip(x / p99.5, 0, 1)``, numpy's linear percentile rule),
    ``volume_max`` (``x / volume_max[k]``), ``none`` (``x``), or ``dict(mode="ct", clip=(lo, hi), mean=m, std=s)``
    (``(clip(x, lo, hi) - m) / s``, per image channel ``k`` when the values are lists). A stack whose scale is not
    positive (all zero; constant under ``minmax``; ``volume_max[k] <= 0``) comes back as zeros, except under ``ct``.

    Args:
        x: ``(N, K, C, H, W)`` stacks (:func:`gather_stacks`), any real dtype.
        norm: a mode name or ``dict(mode=..., ...)`` (a ``stack.norm`` value).
        volume_max: ``(K,)`` each image channel's maximum over the case-day; required for ``volume_max``.

    Returns:
        float32 ``(N, K*C, H, W)`` on ``x``'s device: image channel 0's stack first, as the segmenters read it.

    Raises:
        ValueError: an unknown mode, ``volume_max`` missing or of the wrong length, or bad ``ct`` parameters.

    >>> s = torch.tensor([0.0, 50, 100, 200]).reshape(1, 1, 1, 2, 2)
    >>> normalise_stacks(s, "max").flatten().tolist()
    [0.0, 0.25, 0.5, 1.0]
    >>> normalise_stacks(s, dict(mode="ct", clip=(50, 150), mean=100, std=50)).flatten().tolist()
    [-1.0, -1.0, 0.0, 1.0]
    """
    if x.ndim != 5:
        raise ValueError(f"x must be (N, K, C, H, W) stacks, got shape {tuple(x.shape)}")
    n, kk, c, h, w = x.shape
    mode = norm_mode(norm)
    if mode not in STACK_NORM_MODES:
        raise ValueError(f"normalise mode must be one of {STACK_NORM_MODES}, got {norm!r}")
    x = x.to(torch.float32)
    shape = tuple(x.shape)
    if mode == CT_MODE:
        if not isinstance(norm, Mapping):
            raise ValueError("normalise mode 'ct' needs its parameters: dict(mode='ct', clip=(lo, hi), mean=m, std=s)")
        params = torch.tensor([ct_params(norm, k) for k in range(kk)], dtype=torch.float32, device=x.device)
        lo, hi, mean, std = (params[:, i].reshape(1, kk, 1, 1, 1) for i in range(4))
        out = (torch.maximum(torch.minimum(x, hi), lo) - mean) / std
    elif mode == "none":
        out = x.clone()
    elif mode == "volume_max":
        if volume_max is None:
            raise ValueError("normalise mode 'volume_max' needs volume_max (each image channel's case-day maximum)")
        vmax = torch.as_tensor(volume_max, dtype=torch.float32, device=x.device).reshape(-1)
        if vmax.numel() != kk:
            raise ValueError(f"volume_max needs one value per image channel ({kk}), got {vmax.numel()}")
        scale = vmax.reshape(1, kk, 1, 1, 1).expand(n, kk, 1, 1, 1)
        out = torch.where(scale > 0, x / scale, torch.zeros((), device=x.device))
    else:
        if x.numel() == 0:
            return x.reshape(n, kk * c, h, w).clone()
        flat = x.reshape(n * kk, c * h * w)
        if mode == "max":
            scale = flat.amax(dim=1)
            out = x / _per_stack(scale, shape)
        elif mode == "minmax":
            lo_, hi_ = flat.aminmax(dim=1)
            scale = hi_ - lo_
            out = (x - _per_stack(lo_, shape)) / _per_stack(scale, shape)
        else:  # percentile
            scale = _percentile_995(flat)
            out = (x / _per_stack(scale, shape)).clamp_(0.0, 1.0)
        out = torch.where(_per_stack(scale > 0, shape), out, torch.zeros((), device=x.device))
    return out.reshape(n, kk * c, h, w)


# ------------------------------------------------------------------------------------------------------- resizes


def _boxes_tensor(boxes: BoxesLike, n: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Checked int64 ``(n, 4)`` boxes on ``device`` (``0 <= x0 < x1 <= W``, ``0 <= y0 < y1 <= H``)."""
    b = boxes.to(device=device, dtype=torch.long) if isinstance(boxes, torch.Tensor) else None
    if b is None:
        b = torch.as_tensor(np.asarray(boxes, dtype=np.int64), device=device)
    if tuple(b.shape) != (n, 4):
        raise ValueError(f"boxes must be int (N, 4) = ({n}, 4) x0, y0, x1, y1, got shape {tuple(b.shape)}")
    h, w = size
    x0, y0, x1, y1 = b.unbind(1)
    bad = ~((x0 >= 0) & (x0 < x1) & (x1 <= w) & (y0 >= 0) & (y0 < y1) & (y1 <= h))
    if n and bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"box {b[i].tolist()} (row {i}) is not a non-empty box inside an image of H x W = {h} x {w} "
            "(need 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H; x1/y1 are exclusive)"
        )
    return b


def _cv_linear_table(
    start: torch.Tensor, length: torch.Tensor, out: int, exact_fraction: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV ``INTER_LINEAR`` taps along one axis, per slice: sample ``out`` points from ``[start, start + length)``.

    ``f = (j + 0.5) / (out / length) - 0.5`` (float64), ``s = floor(f)``; the weight of ``s + 1`` is ``f - s``
    rounded to float32 where ``exact_fraction[n]`` (cv2's Intel IPP path), else ``f`` is rounded to float32 first
    and the weight is ``float32(f) - s`` (cv::resize's own float path). ``s < 0`` -> ``(0, 0)``,
    ``s >= length - 1`` -> ``(length - 1, 0)``. Returns ``(i0, i1, a0, a1)``: int64 indices into the full axis
    and float32 weights, each ``(N, out)``.
    """
    j = torch.arange(out, dtype=torch.float64, device=start.device)
    inv = out / length.to(torch.float64)[:, None]
    f64 = (j[None, :] + 0.5) * (1.0 / inv) - 0.5
    f32 = f64.to(torch.float32)
    s = torch.where(exact_fraction[:, None], torch.floor(f64), torch.floor(f32).to(torch.float64))
    frac = torch.where(exact_fraction[:, None], (f64 - s).to(torch.float32), f32 - s.to(torch.float32))
    s = s.to(torch.long)
    last = length[:, None] - 1
    zero = torch.zeros((), dtype=frac.dtype, device=frac.device)
    frac = torch.where((s < 0) | (s >= last), zero, frac)
    s = torch.minimum(s.clamp(min=0), last)
    s1 = torch.minimum(s + 1, last)
    return start[:, None] + s, start[:, None] + s1, 1 - frac, frac


def _separable(
    x: torch.Tensor,
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    cols: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Bilinear from per-slice taps: ``x (N, C, H, W)``, rows ``(N, h)``, cols ``(N, w)`` -> ``(N, C, h, w)``.

    ``out[n, c, i, j] = a0 * (b0 * x[r0, c0] + b1 * x[r1, c0]) + a1 * (b0 * x[r0, c1] + b1 * x[r1, c1])``. Only
    whole rows are copied (``index_select`` on a flattened axis, the fast path of every device): the two source
    rows of each output row, then, after one transpose, the two source columns of each output column.
    """
    n, c, hh, ww = x.shape
    r0, r1, b0, b1 = rows
    c0, c1, a0, a1 = cols
    h, w = r0.shape[1], c0.shape[1]
    plane = torch.arange(n * c, device=x.device).reshape(n, c, 1)  # (N, C, 1): index of each (n, c) image

    def pick(flat: torch.Tensor, idx: torch.Tensor, size: int) -> torch.Tensor:
        return flat.index_select(0, (plane * size + idx[:, None, :]).reshape(-1))

    flat = x.reshape(n * c * hh, ww)
    vert = pick(flat, r0, hh).reshape(n, c, h, ww).mul_(b0[:, None, :, None])
    vert.addcmul_(pick(flat, r1, hh).reshape(n, c, h, ww), b1[:, None, :, None])  # (N, C, h, W)
    flat = vert.transpose(2, 3).reshape(n * c * ww, h)  # (N*C*W, h)
    out = pick(flat, c0, ww).reshape(n, c, w, h).mul_(a0[:, None, :, None])
    out.addcmul_(pick(flat, c1, ww).reshape(n, c, w, h), a1[:, None, :, None])  # (N, C, w, h)
    return out.transpose(2, 3)


def crop_resize_batch(
    x: torch.Tensor, boxes: BoxesLike | None, out_size: tuple[int, int], weights: str = "auto"
) -> torch.Tensor:
    """Crop every slice to its own box and resize the crop to ``out_size``: ``gating.crop.crop_resize`` batched.

    OpenCV's ``INTER_LINEAR`` on float32 (half-pixel centres, sample positions clamped to the crop's edge pixels,
    no antialiasing when shrinking), reproduced tap for tap: equal to ``crop_resize(x[n], boxes[n], out_size)``
    to float32 rounding (about 2e-7 for values in ``[0, 1]``), up- or down-scaling, any box down to 1 pixel.

    cv2 computes the interpolation weights two ways: its own loop rounds the source position to float32 before
    taking the fraction (a weight off by up to 3e-5 at 512 px), its Intel IPP path (taken for 1, 3 or 4 channels
    on a crop of at least 2 x 2 pixels, with the default ``cv2.useOptimized()``) rounds the exact fraction.
    ``weights="auto"`` makes the same choice per slice (asking ``cv2.ipp.useIPP()``: False for a cv2 built without
    IPP or after ``cv2.setUseOptimized(False)``), ``"ipp"`` / ``"opencv"`` force one. The two differ by at most
    3e-5 on ``[0, 1]`` data.

    Args:
        x: ``(N, C, H, W)`` float (other dtypes are converted to float32) on any device.
        boxes: int ``(N, 4)`` ``x0, y0, x1, y1`` (x1/y1 exclusive) inside ``(H, W)``, a tensor or an array;
            None: the whole frame for every slice.
        out_size: ``(h, w)`` of the model input.
        weights: ``"auto"``, ``"ipp"`` or ``"opencv"`` (above).

    Returns:
        float ``(N, C, h, w)`` on ``x``'s device (a transposed view: call ``.contiguous()`` if a layout matters).

    Raises:
        ValueError: ``x`` not 4D, boxes not ``(N, 4)`` or outside the frame, an unknown ``weights``.

    >>> crop_resize_batch(torch.tensor([[[[0.0, 1.0]]]]), None, (1, 4)).flatten().tolist()
    [0.0, 0.25, 0.75, 1.0]
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if weights not in ("auto", "ipp", "opencv"):
        raise ValueError(f"weights must be 'auto', 'ipp' or 'opencv', got {weights!r}")
    n, c, hh, ww = x.shape
    oh, ow = int(out_size[0]), int(out_size[1])
    if boxes is None:
        b = torch.tensor([[0, 0, ww, hh]], dtype=torch.long, device=x.device).expand(n, 4)
    else:
        b = _boxes_tensor(boxes, n, (hh, ww), x.device)
    bh, bw = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
    if weights == "auto":
        exact = (bh >= 2) & (bw >= 2) & (c in _IPP_CHANNELS and _cv2_uses_ipp())
    else:
        exact = torch.full((n,), weights == "ipp", dtype=torch.bool, device=x.device)
    rows = _cv_linear_table(b[:, 1], bh, oh, exact)
    cols = _cv_linear_table(b[:, 0], bw, ow, exact)
    return _separable(x, rows, cols)


def paste_back(probs: torch.Tensor, boxes: BoxesLike | None, size: tuple[int, int]) -> torch.Tensor:
    """Resize every prediction to its box and paste it into a zero frame: ``gating.crop.paste_resize`` batched.

    The slices are grouped by box and each group is resized by one ``F.interpolate`` (bilinear,
    ``align_corners=False``) call, the op ``paste_resize`` runs, so the result is identical to
    ``paste_resize(probs[n], boxes[n], size)``. A loop over the distinct boxes of the batch, never over slices.
    (On a 2-core CPU, N=32, 3 classes, 384 -> 266 px, this was faster than a separable gather from per-slice tap
    tables and as fast as a masked ``grid_sample``, which is off by up to 5e-5.)

    Args:
        probs: ``(N, C, h, w)`` float predictions at the model size.
        boxes: int ``(N, 4)`` ``x0, y0, x1, y1`` the inputs were cropped to; None: the whole frame.
        size: the full frame ``(H, W)``.

    Returns:
        float ``(N, C, H, W)`` on ``probs``' device: zero outside each box.

    Raises:
        ValueError: ``probs`` not 4D, boxes not ``(N, 4)`` or outside the frame.

    >>> p = torch.ones(2, 1, 2, 2)
    >>> paste_back(p, [[0, 0, 1, 1], [1, 0, 3, 2]], (2, 3))[:, 0].tolist()
    [[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]]
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be (N, C, h, w), got shape {tuple(probs.shape)}")
    n, c = probs.shape[:2]
    hh, ww = int(size[0]), int(size[1])
    if boxes is None:
        return F.interpolate(probs.float(), size=(hh, ww), mode="bilinear", align_corners=False).to(probs.dtype)
    b = _boxes_tensor(boxes, n, (hh, ww), probs.device)
    out = probs.new_zeros((n, c, hh, ww))
    if n == 0:
        return out
    uniq, inverse = torch.unique(b, dim=0, return_inverse=True)
    for g, (x0, y0, x1, y1) in enumerate(uniq.tolist()):
        idx = (inverse == g).nonzero()[:, 0]
        part = F.interpolate(probs[idx].float(), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        out[:, :, y0:y1, x0:x1].index_copy_(0, idx, part.to(probs.dtype))
    return out


# ------------------------------------------------------------------------------------------------------- TTA


def _tta_forward(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "hflip":
        return x.flip(3)
    if name == "vflip":
        return x.flip(2)
    return torch.rot90(x, {"rot90": 1, "rot180": 2, "rot270": 3}[name], dims=(2, 3))


def _tta_back(x: torch.Tensor, name: str) -> torch.Tensor:
    if name in ("hflip", "vflip"):
        return _tta_forward(x, name)
    return torch.rot90(x, -{"rot90": 1, "rot180": 2, "rot270": 3}[name], dims=(2, 3))


def tta_inputs(x: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
    """The batch and its test-time variants: ``[x, t1(x), t2(x), ...]`` for the names of :data:`ensembles.spec.TTA_25D`.

    ``hflip`` flips the width, ``vflip`` the height, ``rotK`` is ``torch.rot90(x, K / 90, dims=(2, 3))``.
    With ``h != w``, ``rot90``/``rot270`` give ``(N, C, w, h)`` batches: run each variant as its own batch.

    Args:
        x: ``(N, C, h, w)``.
        names: TTA names (``()``: the plain batch only).

    Returns:
        ``1 + len(names)`` tensors on ``x``'s device.

    Raises:
        ValueError: an unknown name (the valid ones are listed).
    """
    names = check_tta_25d(names, "TTA")
    return [x] + [_tta_forward(x, t) for t in names]


def tta_merge(outputs: Sequence[torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """Map the model outputs of :func:`tta_inputs`'s variants back and average them (the plain one included).

    The sum runs in order (plain, then each variant mapped back) and is divided once, the rule of
    ``segmenters.mm.models`` ``predict_probs`` for ``hflip``/``vflip``.

    Args:
        outputs: ``1 + len(names)`` tensors ``(N, C, h, w)`` (a rotated variant's output in its rotated shape).
        names: the names given to :func:`tta_inputs`.

    Returns:
        ``(N, C, h, w)``, the mean.

    Raises:
        ValueError: an unknown name or a count of outputs that does not match.

    >>> from ensembles.spec import TTA_25D
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
    >>> bool(torch.equal(tta_merge(tta_inputs(x, TTA_25D), TTA_25D), x))
    True
    """
    names = check_tta_25d(names, "TTA")
    if len(outputs) != 1 + len(names):
        raise ValueError(
            f"need {1 + len(names)} outputs (the plain one, then one per TTA {list(names)}), got {len(outputs)}"
        )
    total = outputs[0]
    for out, t in zip(outputs[1:], names):
        total = total + _tta_back(out, t)
    return total / (1 + len(names))


# ------------------------------------------------------------------------------------------------------- planes


@dataclass(frozen=True)
class PlaneInfo:
    """How a volume was re-sliced by :func:`to_plane`, what :func:`from_plane` needs to go back.

    Attributes:
        plane: one of :data:`ensembles.spec.PLANES`.
        shape: the axial ``(D, H, W)``.
        spacing: ``(sz, sy, sx)`` mm.
        depth: the number of samples along the former z axis in the plane's slices (``D`` for axial).
    """

    plane: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    depth: int

    @property
    def plane_shape(self) -> tuple[int, int, int]:
        """``(D', H', W')`` of the re-sliced volume: slices first."""
        d, h, w = self.shape
        if self.plane == "coronal":
            return (h, self.depth, w)
        if self.plane == "sagittal":
            return (w, self.depth, h)
        return (d, h, w)

    def stride(self, stride: int) -> int:
        """:func:`plane_stride` of this plane."""
        return plane_stride(stride, self.plane, self.spacing)


def _check_plane(plane: str, spacing: Sequence[float]) -> tuple[float, float, float]:
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive numbers (sz, sy, sx) mm, got {list(spacing)}")
    return sp  # type: ignore[return-value]


def plane_stride(stride: int, plane: str, spacing: Sequence[float]) -> int:
    """The stack stride in ``plane`` that spans the same millimetres as ``stride`` axial slices.

    ``max(1, round(stride * sz / s))`` with ``s = sy`` (coronal slices step along y) or ``sx`` (sagittal);
    ``stride`` itself for axial.

    >>> plane_stride(2, "coronal", (3.0, 1.5, 1.5)), plane_stride(2, "axial", (3.0, 1.5, 1.5))
    (4, 2)
    """
    sz, sy, sx = _check_plane(plane, spacing)
    if plane == "axial":
        return int(stride)
    step = sy if plane == "coronal" else sx
    return max(1, int(round(stride * sz / step)))


def to_plane(vol: torch.Tensor, plane: str, spacing: Sequence[float]) -> tuple[torch.Tensor, PlaneInfo]:
    """Re-slice a volume so that the slices of ``plane`` come first, with square-ish pixels.

    ``axial``: the volume itself. ``coronal``: ``(K, H, D', W)``, slices along y, the former z axis resampled
    (linear, ``align_corners=False``) from ``D`` to ``D' = round(D * sz / sx)`` samples. ``sagittal``:
    ``(K, W, D', H)``, slices along x, ``D' = round(D * sz / sy)``.

    Args:
        vol: ``(K, D, H, W)`` float.
        plane: one of :data:`ensembles.spec.PLANES`.
        spacing: ``(sz, sy, sx)`` mm.

    Returns:
        the re-sliced float ``(K, D', H', W')`` (contiguous, on ``vol``'s device) and its :class:`PlaneInfo`.

    >>> v, info = to_plane(torch.zeros(1, 4, 6, 5), "sagittal", (3.0, 1.5, 1.0))
    >>> tuple(v.shape), info.stride(2)
    ((1, 5, 8, 6), 6)
    """
    sz, sy, sx = _check_plane(plane, spacing)
    if vol.ndim != 4:
        raise ValueError(f"vol must be (K, D, H, W), got shape {tuple(vol.shape)}")
    _, d, h, w = vol.shape
    if plane == "axial":
        return vol, PlaneInfo(plane, (d, h, w), (sz, sy, sx), d)
    if not vol.is_floating_point():
        vol = vol.to(torch.float32)
    if plane == "coronal":
        depth = max(1, int(round(d * sz / sx)))
        t = vol.permute(0, 2, 1, 3)  # (K, H, D, W)
        size = (depth, w)
    else:
        depth = max(1, int(round(d * sz / sy)))
        t = vol.permute(0, 3, 1, 2)  # (K, W, D, H)
        size = (depth, h)
    if depth != d:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return t.contiguous(), PlaneInfo(plane, (d, h, w), (sz, sy, sx), depth)


def from_plane(probs: torch.Tensor, info: PlaneInfo) -> torch.Tensor:
    """Bring predictions made on :func:`to_plane`'s slices back to the axial grid.

    Args:
        probs: ``(D', C, H', W')`` float, one prediction per slice of the plane (``info.plane_shape``).
        info: what :func:`to_plane` returned with the slices.

    Returns:
        ``(D, C, H, W)`` on the axial grid (the former z axis resampled back to ``D``, linear,
        ``align_corners=False``).

    Raises:
        ValueError: ``probs`` does not have the plane's shape.
    """
    dp, hp, wp = info.plane_shape
    if probs.ndim != 4 or (probs.shape[0], probs.shape[2], probs.shape[3]) != (dp, hp, wp):
        raise ValueError(
            f"probs must be (D', C, H', W') with (D', H', W') = {(dp, hp, wp)} for the {info.plane} plane, "
            f"got shape {tuple(probs.shape)}"
        )
    if info.plane == "axial":
        return probs
    d, h, w = info.shape
    t = probs
    if info.depth != d:
        t = F.interpolate(
            t.float() if not t.is_floating_point() else t, size=(d, wp), mode="bilinear", align_corners=False
        )
    if info.plane == "coronal":  # (H, C, D, W) -> (D, C, H, W)
        return t.permute(2, 1, 0, 3).contiguous()
    return t.permute(2, 1, 3, 0).contiguous()  # (W, C, D, H) -> (D, C, H, W)
