"""Rendering: a label map of tissue codes, then intensities, blur, bias field, gain and noise."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from data_prep.synth.anatomy import _Body, _body_masks, _spine_masks
from data_prep.synth.geometry import _Frame, _smooth_field

# Tissue codes of the label map; painted in this order (a later code wins where shapes overlap).
# The 3D masks are painted with np.maximum (fast), so a higher code wins; 2D masks (arms, spine) are set.
_BG, _ARM_FAT, _ARM, _FAT, _BODY, _LIVER, _KIDNEY, _SPINE, _SPINE_RIM, _LB, _SB, _ST = range(12)
# Relative intensity, low-frequency and high-frequency texture amplitude of each tissue code.
_TISSUE_VALUE = np.array([0.0, 0.66, 0.30, 0.70, 0.33, 0.45, 0.55, 0.24, 0.08, 0.17, 0.78, 0.90], np.float32)
_TISSUE_TEX_LO = np.array([0.0, 0.10, 0.15, 0.10, 0.35, 0.08, 0.10, 0.10, 0.0, 0.20, 0.12, 0.06], np.float32)
_TISSUE_TEX_HI = np.array([0.0, 0.05, 0.05, 0.05, 0.10, 0.04, 0.05, 0.05, 0.0, 0.55, 0.15, 0.04], np.float32)
# Sum of two uniform bytes minus 255: a triangular variate with this standard deviation (cheap noise).
_TRI_SD = float(np.sqrt(2 * (256**2 - 1) / 12))
_CHUNK = 16  # slices rendered at a time (bounds memory; part of the determinism contract)


def _render(
    rng: np.random.Generator,
    body: _Body,
    frame: _Frame,
    organs: np.ndarray,
    distract: dict[str, np.ndarray],
) -> np.ndarray:
    """Render uint16 (D, H, W) images of a case-day whose labelled organs are ``organs`` bool (D, 3, H, W)."""
    d, h, w = frame.d, frame.h, frame.w
    gain = float(np.exp(rng.uniform(np.log(500.0), np.log(12000.0))))
    values = _TISSUE_VALUE * rng.uniform(0.9, 1.1, len(_TISSUE_VALUE)).astype(np.float32)
    values[_BG] = 0.0
    spine, rim = _spine_masks(rng, body, frame)
    # Bias field: smooth in-plane polynomial times a gentle z ramp.
    u = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    v = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    c = rng.normal(0.0, 0.12, 5).astype(np.float32)
    bias2d = np.clip(1.0 + c[0] * u + c[1] * v + c[2] * u * v + c[3] * (u**2 + v**2 - 0.6), 0.5, 1.5)
    zn = np.linspace(0, 1, d, dtype=np.float32)
    bias_z = np.clip(1.0 + c[4] * (zn - 0.5), 0.7, 1.3)
    # Texture: smooth 2D fields at anchors along z, interpolated linearly.
    n_anchor = 5
    tex_lo = np.stack([_smooth_field(rng, 7, h, w) for _ in range(n_anchor)])
    tex_hi = np.stack([_smooth_field(rng, 28, h, w) for _ in range(n_anchor)])
    pos = zn * (n_anchor - 1)
    i0 = np.minimum(pos.astype(int), n_anchor - 2)
    wz = (pos - i0).astype(np.float32)[:, None, None]
    body_m, inner_m, arm_m, arm_in_m = _body_masks(body, frame)
    sigma = float(rng.uniform(0.6, 0.9))
    noise_sd = float(rng.uniform(0.01, 0.025))
    out = np.empty((d, h, w), np.uint16)
    for s in range(0, d, _CHUNK):
        e = min(s + _CHUNK, d)
        lab = np.zeros((e - s, h, w), np.uint8)
        lab[:, arm_m] = _ARM_FAT
        lab[:, arm_in_m] = _ARM
        inner = inner_m[s:e]
        for mask, code in (
            (body_m[s:e], _FAT),
            (inner, _BODY),
            (distract["liver"][s:e] & inner, _LIVER),
            (distract["kidney"][s:e] & inner, _KIDNEY),
        ):
            np.maximum(lab, mask.view(np.uint8) * np.uint8(code), out=lab)
        lab[:, spine] = _SPINE
        lab[:, rim] = _SPINE_RIM
        for c, code in enumerate((_LB, _SB, _ST)):
            np.maximum(lab, organs[s:e, c].view(np.uint8) * np.uint8(code), out=lab)
        w1 = wz[s:e]
        tex = tex_lo[i0[s:e]] * (1 - w1)
        tex += tex_lo[i0[s:e] + 1] * w1
        tex *= np.take(_TISSUE_TEX_LO, lab)
        t_hi = tex_hi[i0[s:e]] * (1 - w1)
        t_hi += tex_hi[i0[s:e] + 1] * w1
        t_hi *= np.take(_TISSUE_TEX_HI, lab)
        tex += t_hi
        tex += 1.0
        img = np.take(values, lab)
        img *= tex
        img = gaussian_filter1d(img, sigma, axis=1, mode="nearest")
        img = gaussian_filter1d(img, sigma, axis=2, mode="nearest", output=img)
        img *= bias2d[None] * bias_z[s:e, None, None]
        # Rician magnitude noise; each component a triangular variate (sum of two uniform bytes).
        raw = rng.integers(0, 256, size=(4, *img.shape), dtype=np.uint8)
        n = raw[0::2].astype(np.float32)
        n += raw[1::2]
        n -= 255.0
        n *= noise_sd / _TRI_SD
        img += n[0]
        np.square(img, out=img)
        np.square(n[1], out=n[1])
        img += n[1]
        np.sqrt(img, out=img)
        img *= gain
        np.rint(img, out=img)
        out[s:e] = np.clip(img, 0, 65535, out=img)
    return out
