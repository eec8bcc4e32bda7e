"""Synthetic data in the exact Kaggle layout, for tests, demos and benchmarks.

Two modes:

- ``synthesize``: a shape model draws the anatomy. Per case 1-3 days, 144 or 80 slices per case-day,
  the real sizes (W x H 266x266, 360x310, 276x276, 234x234). Each case-day is a 16-bit volume: a body
  ellipse with a subcutaneous fat ring, "arms" beside it (what a crop detector must cut away), liver,
  kidneys and spine as distractors, and the three labelled organs as smooth 3D shapes: the stomach a
  blob (sum of Gaussians), the large bowel a tube framing the abdomen (ascending, transverse, descending,
  sigmoid), the small bowel a tangle of thinner tubes. The organs start and end on different slices, so
  about half of all slices are empty and many hold two or three classes, sometimes overlapping. Each
  tissue has its own intensity and texture (learnable), then an in-plane blur, a smooth bias field, a
  per-case gain and Rician noise.
- ``render_from_labels``: the masks come from a ``train.csv`` (e.g. the real labels) and a scan
  manifest (size, spacing, path of each slice); the same renderer paints images around them: a dataset
  with real anatomy at real scale.

Outputs (``docs/contracts.md``): ``OUT/train/case{N}/case{N}_day{D}/scans/slice_{SSSS}_{W}_{H}_{PW}_{PH}.png``
and ``OUT/train.csv``; with test cases also ``OUT/test/...``, a header-only ``OUT/sample_submission.csv``
and ``OUT/test_truth.csv`` (the test labels, kept apart for scoring). Every file is written atomically;
an existing dataset is only replaced with ``overwrite=True``. Each case-day draws its randomness from
``(seed, case, day)``, so the files are byte-identical for a seed whatever the number of workers.

>>> from data_prep.synth import synthesize  # doctest: +SKIP
>>> synthesize("demo_data", cases=4, seed=0, test_cases=1, slices=24, sizes=[(128, 112)])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d

from common.io import atomic_write
from data_prep.constants import CLASSES, DEFAULT_SEED, REAL_DEPTHS, REAL_SIZES, slice_id
from data_prep.layout import read_labels, validate_rles
from data_prep.rle import rle_decode, rle_encode

logger = logging.getLogger(__name__)

#: Probability of each real size (W, H) for a synthetic case (rarer real sizes are over-represented).
SIZE_WEIGHTS: dict[tuple[int, int], float] = {(266, 266): 0.5, (360, 310): 0.3, (276, 276): 0.12, (234, 234): 0.08}
#: Pixel spacing (mm) by size; every other size gets 1.5 mm.
SPACING_BY_SIZE: dict[tuple[int, int], float] = {(276, 276): 1.63}
#: Probability of each real depth for a synthetic case.
DEPTH_WEIGHTS: dict[int, float] = {144: 0.9, 80: 0.1}
#: Days per case and their probabilities.
DAYS_PER_CASE: dict[int, float] = {1: 0.3, 2: 0.4, 3: 0.3}
#: Slice thickness (mm) of a 144-slice case-day; a case-day of depth D covers the same length.
SLICE_MM_144: float = 3.0
#: Files and folders a synthetic dataset consists of (the only paths ``overwrite`` removes).
DATASET_ENTRIES: tuple[str, ...] = ("train", "train.csv", "test", "test_truth.csv", "sample_submission.csv")

# Tissue codes of the label map; painted in this order (a later code wins where shapes overlap).
# The 3D masks are painted with np.maximum (fast), so a higher code wins; 2D masks (arms, spine) are set.
_BG, _ARM_FAT, _ARM, _FAT, _BODY, _LIVER, _KIDNEY, _SPINE, _SPINE_RIM, _LB, _SB, _ST = range(12)
# Relative intensity, low-frequency and high-frequency texture amplitude of each tissue code.
_TISSUE_VALUE = np.array([0.0, 0.66, 0.30, 0.70, 0.33, 0.45, 0.55, 0.24, 0.08, 0.17, 0.78, 0.90], np.float32)
_TISSUE_TEX_LO = np.array([0.0, 0.10, 0.15, 0.10, 0.35, 0.08, 0.10, 0.10, 0.0, 0.20, 0.12, 0.06], np.float32)
_TISSUE_TEX_HI = np.array([0.0, 0.05, 0.05, 0.05, 0.10, 0.04, 0.05, 0.05, 0.0, 0.55, 0.15, 0.04], np.float32)
# Sum of two uniform bytes minus 255: a triangular variate with this standard deviation (cheap noise).
_TRI_SD = float(np.sqrt(2 * (256**2 - 1) / 12))
#: Fast PNG settings: zlib level 1 with the SUB filter (about 30% faster than adaptive filters, same size).
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
_CHUNK = 16  # slices rendered at a time (bounds memory; part of the determinism contract)


@dataclass(frozen=True)
class CaseDayTask:
    """Everything a worker needs to render one case-day."""

    out: str
    split: str
    case: int
    day: int
    depth: int
    width: int
    height: int
    spacing: float
    seed: int
    #: label-driven mode: slice numbers (in z order) and their RLE strings (D, 3); None: shape model.
    slices: tuple[int, ...] | None = None
    rles: tuple[tuple[str, str, str], ...] | None = None


# ----------------------------------------------------------------------------------------------------------
# Geometry helpers. Voxel coordinates are (z, y, x); the normalised frame has u, v in [-1, 1] across the
# image (x, y) and zn in [0, 1] across the slices.


class _Frame:
    """Maps normalised (u, v, zn) to voxels and knows the physical anisotropy of the volume."""

    def __init__(self, depth: int, height: int, width: int, spacing: float) -> None:
        self.d, self.h, self.w = depth, height, width
        self.spacing = spacing
        self.thick = SLICE_MM_144 * 144.0 / depth  # mm per slice
        self.zscale = spacing / self.thick  # slices per in-plane pixel (physically)

    def to_voxel(self, u: np.ndarray, v: np.ndarray, zn: np.ndarray) -> np.ndarray:
        """(N,) normalised coordinates -> (N, 3) float voxel coordinates (z, y, x)."""
        return np.stack([zn * (self.d - 1), (v + 1) * (self.h - 1) / 2, (u + 1) * (self.w - 1) / 2], axis=1)


def _stamp_tube(vol: np.ndarray, pts: np.ndarray, radii: np.ndarray, zscale: float) -> None:
    """OR ellipsoids of in-plane radius ``radii[i]`` (pixels) centred on ``pts[i]`` (z, y, x) into ``vol``.

    ``vol`` is bool (D, H, W); the z radius is ``radii * zscale`` slices (at least half a slice so a tube
    always marks its nearest slice). Points are assumed dense (spacing below the radius).
    """
    d, h, w = vol.shape
    for (pz, py, px), r in zip(pts, radii, strict=True):
        rz = max(r * zscale, 0.5)
        z0, z1 = max(int(np.ceil(pz - rz)), 0), min(int(np.floor(pz + rz)), d - 1)
        y0, y1 = max(int(np.ceil(py - r)), 0), min(int(np.floor(py + r)), h - 1)
        x0, x1 = max(int(np.ceil(px - r)), 0), min(int(np.floor(px + r)), w - 1)
        if z0 > z1 or y0 > y1 or x0 > x1:
            continue
        dz = ((np.arange(z0, z1 + 1) - pz) / rz) ** 2
        dy = ((np.arange(y0, y1 + 1) - py) / r) ** 2
        dx = ((np.arange(x0, x1 + 1) - px) / r) ** 2
        vol[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1] |= (dz[:, None, None] + dy[None, :, None] + dx[None, None, :]) <= 1.0


def _spline_points(ctrl: np.ndarray, step: float, zscale: float) -> np.ndarray:
    """Resample a smooth curve through control points (K, 3) voxel (z, y, x) at ``step`` pixel spacing."""
    phys = ctrl / np.array([zscale, 1.0, 1.0])  # z in in-plane pixel units
    seg = np.linalg.norm(np.diff(phys, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-6])
    ctrl, phys = ctrl[keep], phys[keep]
    t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(phys, axis=0), axis=1))])
    if len(t) < 2:
        return ctrl
    spline = CubicSpline(t, ctrl, axis=0, bc_type="natural")
    n = max(int(np.ceil(t[-1] / step)) + 1, 2)
    return spline(np.linspace(0.0, t[-1], n))


def _blob(shape: tuple[int, int, int], centers: np.ndarray, sigmas: np.ndarray, level: float = 0.6) -> np.ndarray:
    """Metaball: bool (D, H, W) where the sum of Gaussians (centres/sigmas (K, 3), voxel z, y, x) > level."""
    d, h, w = shape
    sigmas = np.maximum(sigmas, 0.5)
    lo = np.clip(np.floor((centers - 3 * sigmas).min(axis=0)), 0, None).astype(int)
    hi = np.minimum(np.ceil((centers + 3 * sigmas).max(axis=0)).astype(int), np.array(shape) - 1)
    out = np.zeros(shape, bool)
    if (lo > hi).any():
        return out
    zz = np.arange(lo[0], hi[0] + 1, dtype=np.float32)
    yy = np.arange(lo[1], hi[1] + 1, dtype=np.float32)
    xx = np.arange(lo[2], hi[2] + 1, dtype=np.float32)
    fieldv = np.zeros((len(zz), len(yy), len(xx)), np.float32)
    for (cz, cy, cx), (sz, sy, sx) in zip(centers, sigmas, strict=True):
        fz = np.exp(-0.5 * ((zz - cz) / sz) ** 2)
        fy = np.exp(-0.5 * ((yy - cy) / sy) ** 2)
        fx = np.exp(-0.5 * ((xx - cx) / sx) ** 2)
        fieldv += fz[:, None, None] * fy[None, :, None] * fx[None, None, :]
    out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = fieldv > level
    return out


def _smooth_field(rng: np.random.Generator, grid: int, h: int, w: int) -> np.ndarray:
    """A smooth random field float32 (H, W) with values in about [-1, 1]."""
    g = rng.uniform(-1.0, 1.0, size=(grid, grid)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC).clip(-1.5, 1.5)


# ----------------------------------------------------------------------------------------------------------
# The anatomy of one case-day.


@dataclass
class _Body:
    cu: float
    cv: float
    a: float  # semi-axis in u
    b: float  # semi-axis in v
    fat: float  # subcutaneous fat thickness (normalised)
    arms: bool
    arm_gap: float
    arm_ru: float
    arm_rv: float
    arm_dv: float


def _draw_body(rng: np.random.Generator) -> _Body:
    return _Body(
        cu=float(rng.normal(0.0, 0.02)),
        cv=float(rng.normal(0.04, 0.02)),
        a=float(rng.uniform(0.60, 0.70)),
        b=float(rng.uniform(0.52, 0.64)),
        fat=float(rng.uniform(0.05, 0.10)),
        arms=bool(rng.random() < 0.75),
        arm_gap=float(rng.uniform(0.015, 0.05)),
        arm_ru=float(rng.uniform(0.08, 0.11)),
        arm_rv=float(rng.uniform(0.15, 0.21)),
        arm_dv=float(rng.normal(0.0, 0.04)),
    )


def _fit_body(body: _Body, organs: np.ndarray, frame: _Frame) -> _Body:
    """Grow the body ellipse so it holds every labelled pixel of ``organs`` bool (D, 3, H, W) inside its fat."""
    union = organs.any(axis=(0, 1))
    if not union.any():
        return body
    ys, xs = np.nonzero(union)
    u = xs / ((frame.w - 1) / 2) - 1 - body.cu
    v = ys / ((frame.h - 1) / 2) - 1 - body.cv
    inner_a, inner_b = body.a - body.fat, body.b - body.fat
    worst = float(np.sqrt(((u / inner_a) ** 2 + (v / inner_b) ** 2).max()))
    if worst > 0.97:
        grow = worst / 0.97
        body.a, body.b = (body.a - body.fat) * grow + body.fat, (body.b - body.fat) * grow + body.fat
    return body


def _body_masks(body: _Body, frame: _Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Body, inner (inside the fat ring), arm and arm-inner masks; body/inner bool (D, H, W), arms (H, W)."""
    d, h, w = frame.d, frame.h, frame.w
    u = np.linspace(-1, 1, w, dtype=np.float32)[None, :] - body.cu
    v = np.linspace(-1, 1, h, dtype=np.float32)[:, None] - body.cv
    zn = np.linspace(0, 1, d, dtype=np.float32)
    swell2 = ((0.93 + 0.07 * np.sin(np.pi * zn)) ** 2).astype(np.float32)[:, None, None]  # widest mid-volume
    q = (u / body.a) ** 2 + (v / body.b) ** 2
    q_in = (u / (body.a - body.fat)) ** 2 + (v / (body.b - body.fat)) ** 2
    arm = np.zeros((h, w), bool)
    arm_in = np.zeros((h, w), bool)
    if body.arms:
        for side in (-1, 1):
            au = u - side * (body.a + body.arm_gap + body.arm_ru)
            av = v - body.arm_dv
            arm |= (au / body.arm_ru) ** 2 + (av / body.arm_rv) ** 2 <= 1
            arm_in |= (au / (body.arm_ru - 0.025)) ** 2 + (av / (body.arm_rv - 0.025)) ** 2 <= 1
    return q[None] <= swell2, q_in[None] <= swell2, arm, arm_in


def _organ_window(rng: np.random.Generator) -> tuple[float, float]:
    z0 = float(rng.uniform(0.26, 0.36))
    return z0, z0 + float(rng.uniform(0.30, 0.38))


# Large bowel centreline in (u, v, t): u, v relative to the body's inner semi-axes, t in the organ window.
_LB_PATH = np.array(
    [
        [-0.62, 0.20, 0.95],  # caecum
        [-0.68, 0.10, 0.62],  # ascending colon
        [-0.60, -0.12, 0.24],  # hepatic flexure
        [-0.30, -0.50, 0.30],  # transverse colon
        [0.00, -0.56, 0.42],
        [0.32, -0.50, 0.30],
        [0.64, -0.18, 0.04],  # splenic flexure
        [0.70, 0.08, 0.40],  # descending colon
        [0.64, 0.18, 0.78],
        [0.32, -0.05, 0.95],  # sigmoid
        [0.00, 0.30, 1.00],  # rectum
    ]
)


def _organ_masks(
    case_rng: np.random.Generator, day_rng: np.random.Generator, body: _Body, frame: _Frame
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw the three labelled organs and the distractors.

    Returns:
        ``organs`` bool (D, 3, H, W) in CLASSES order, and distractor masks ``{"liver", "kidney"}`` bool (D, H, W).
    """
    d, h, w = frame.d, frame.h, frame.w
    half = min(h, w) / 2
    ia, ib = body.a - body.fat, body.b - body.fat
    z0, z1 = _organ_window(case_rng)
    dz = float(day_rng.normal(0.0, 0.02))
    du, dv = day_rng.normal(0.0, 0.02, size=2)

    def place(uvt: np.ndarray) -> np.ndarray:
        u = body.cu + (uvt[:, 0] + du) * ia
        v = body.cv + (uvt[:, 1] + dv) * ib
        zn = np.clip(z0 + dz + uvt[:, 2] * (z1 - z0), 0.0, 1.0)
        return frame.to_voxel(u, v, zn)

    organs = np.zeros((d, 3, h, w), bool)
    # Large bowel: a tube framing the abdomen, haustra as a radius ripple.
    ctrl = _LB_PATH + case_rng.normal(0.0, 0.04, _LB_PATH.shape) + day_rng.normal(0.0, 0.015, _LB_PATH.shape)
    r_lb = float(case_rng.uniform(0.075, 0.10)) * half
    pts = _spline_points(place(ctrl), step=max(r_lb / 2.5, 0.5), zscale=frame.zscale)
    ripple = 1.0 + 0.18 * np.sin(np.arange(len(pts)) * (2.5 / max(r_lb, 1.0)) * 2.0)
    lb = np.zeros((d, h, w), bool)
    _stamp_tube(lb, pts, r_lb * ripple, frame.zscale)
    # Organs push each other aside: only a thin rim of a tube may overlap another organ (as annotations do).
    lb_core = np.zeros((d, h, w), bool)
    _stamp_tube(lb_core, pts, r_lb * ripple * 0.96, frame.zscale)
    # Small bowel: a tangle of thinner tubes in the central and lower abdomen.
    sb = np.zeros((d, h, w), bool)
    n_tubes = int(case_rng.integers(3, 6))
    r_sb = float(case_rng.uniform(0.042, 0.055)) * half
    for _ in range(n_tubes):
        k = int(case_rng.integers(6, 10))
        c = np.stack(
            [case_rng.uniform(-0.45, 0.45, k), case_rng.uniform(-0.30, 0.40, k), case_rng.uniform(0.30, 0.98, k)],
            axis=1,
        )
        c = c + day_rng.normal(0.0, 0.05, c.shape)  # peristalsis between days
        c = c[np.argsort(c[:, 2])] if case_rng.random() < 0.5 else c
        pts = _spline_points(place(c), step=max(r_sb / 2.5, 0.5), zscale=frame.zscale)
        _stamp_tube(sb, pts, np.full(len(pts), r_sb), frame.zscale)
    # Stomach: a curved blob under the left diaphragm (image right), superior.
    n_st = 3
    axis = np.array([-0.16, 0.10, 0.16]) + case_rng.normal(0.0, 0.04, 3)
    start = np.array([0.40, -0.30, 0.02]) + case_rng.normal(0.0, 0.05, 3)
    c = start[None] + np.arange(n_st)[:, None] * axis[None]
    st_c = place(c)
    s_xy = case_rng.uniform(0.10, 0.15, n_st) * half * np.array([1.0, 0.85, 0.7])
    s_z = case_rng.uniform(0.05, 0.08, n_st) * (z1 - z0) * (d - 1) / 0.5 * np.array([1.0, 0.9, 0.7])
    st_s = np.stack([s_z, s_xy, s_xy], axis=1)
    st = _blob((d, h, w), st_c, st_s)
    st_core = _blob((d, h, w), st_c, st_s * 0.99)
    lb &= ~st_core
    sb &= ~(lb_core | st_core)
    organs[:, 0], organs[:, 1], organs[:, 2] = lb, sb, st
    distract = _distractors(case_rng, body, frame, z0 + dz, z1 + dz, place)
    return organs, distract


def _distractors(
    rng: np.random.Generator, body: _Body, frame: _Frame, z0: float, z1: float, place: Any
) -> dict[str, np.ndarray]:
    """Liver (a large blob, image left, superior) and kidneys (two blobs, posterior); bool (D, H, W) each."""
    d, h, w = frame.d, frame.h, frame.w
    half = min(h, w) / 2
    span = max(z1 - z0, 0.2) * (d - 1)  # slices the organs cover (at least a fifth of the volume)
    liver_c = place(np.array([[-0.45, -0.15, 0.02], [-0.30, 0.05, 0.18]]) + rng.normal(0, 0.04, (2, 3)))
    liver_s = np.array([[0.16 * span, 0.30 * half, 0.28 * half], [0.12 * span, 0.2 * half, 0.22 * half]])
    liver = _blob((d, h, w), liver_c, liver_s * rng.uniform(0.85, 1.1))
    kid_c = place(np.array([[-0.42, 0.55, 0.40], [0.42, 0.55, 0.36]]) + rng.normal(0, 0.03, (2, 3)))
    kid_s = np.array([[0.10 * span, 0.09 * half, 0.06 * half]] * 2) * rng.uniform(0.85, 1.15)
    kidney = _blob((d, h, w), kid_c, kid_s)
    return {"liver": liver, "kidney": kidney}


def _spine_masks(rng: np.random.Generator, body: _Body, frame: _Frame) -> tuple[np.ndarray, np.ndarray]:
    """Vertebral body and its dark rim, bool (H, W) each (a cylinder along z, posterior midline)."""
    h, w = frame.h, frame.w
    half = min(h, w) / 2
    cx = (body.cu + 1) * (w - 1) / 2
    cy = (body.cv + (body.b - body.fat) * rng.uniform(0.70, 0.82) + 1) * (h - 1) / 2
    r = rng.uniform(0.08, 0.10) * half
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return dist <= r, (dist <= r + max(1.5, 0.012 * half)) & (dist > r)


# ----------------------------------------------------------------------------------------------------------
# Rendering: a label map of tissue codes, then intensities, blur, bias field, gain and noise.


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


# ----------------------------------------------------------------------------------------------------------
# Workers.


def scan_name(slc: int, width: int, height: int, spacing: float) -> str:
    """Kaggle scan file name, e.g. ``slice_0001_266_266_1.50_1.50.png``."""
    return f"slice_{slc:04d}_{width}_{height}_{spacing:.2f}_{spacing:.2f}.png"


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), fsync=False)


def _write_pngs(task: CaseDayTask, volume: np.ndarray, slices: Sequence[int]) -> None:
    """Write ``volume`` uint16 (D, H, W) as the case-day's scans, one atomic PNG per slice number."""
    case_day = f"case{task.case}_day{task.day}"
    folder = Path(task.out) / task.split / f"case{task.case}" / case_day / "scans"
    folder.mkdir(parents=True, exist_ok=True)
    for z, slc in enumerate(slices):
        ok, buf = cv2.imencode(".png", volume[z], _PNG_PARAMS)
        if not ok:
            raise RuntimeError(f"cv2 could not encode slice {slc} of {case_day}")
        _atomic_write(folder / scan_name(slc, task.width, task.height, task.spacing), buf.tobytes())


def _rngs(seed: int, case: int, day: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent streams for the case's anatomy, the day's changes and the rendering."""
    return (
        np.random.default_rng([seed, case, 0, 1]),
        np.random.default_rng([seed, case, day, 2]),
        np.random.default_rng([seed, case, day, 3]),
    )


def _render_shape_task(task: CaseDayTask) -> list[tuple[str, str, str]]:
    """Shape-model mode: draw, render and write one case-day; return its label rows (id, class, rle)."""
    case_rng, day_rng, render_rng = _rngs(task.seed, task.case, task.day)
    frame = _Frame(task.depth, task.height, task.width, task.spacing)
    body = _draw_body(case_rng)
    organs, distract = _organ_masks(case_rng, day_rng, body, frame)
    volume = _render(render_rng, body, frame, organs, distract)
    slices = list(range(1, task.depth + 1))
    _write_pngs(task, volume, slices)
    rows = []
    for z, slc in enumerate(slices):
        sid = slice_id(task.case, task.day, slc)
        for c, cls in enumerate(CLASSES):
            rows.append((sid, cls, rle_encode(organs[z, c])))
    return rows


def _render_label_task(task: CaseDayTask) -> int:
    """Label-driven mode: decode the given masks, render around them and write; return the slice count."""
    assert task.slices is not None and task.rles is not None
    case_rng, day_rng, render_rng = _rngs(task.seed, task.case, task.day)
    frame = _Frame(task.depth, task.height, task.width, task.spacing)
    organs = np.zeros((task.depth, 3, task.height, task.width), bool)
    for z, (slc, rles) in enumerate(zip(task.slices, task.rles, strict=True)):
        sid = slice_id(task.case, task.day, slc)
        for c, rle in enumerate(rles):
            if rle:
                organs[z, c] = rle_decode(rle, (task.height, task.width), row_id=f"{sid}/{CLASSES[c]}") > 0
    body = _fit_body(_draw_body(case_rng), organs, frame)
    # Distractors follow the labelled organs along z (window of the annotated slices).
    annotated = np.flatnonzero(organs.any(axis=(1, 2, 3)))
    if len(annotated):
        z0, z1 = annotated[0] / max(task.depth - 1, 1), annotated[-1] / max(task.depth - 1, 1)
    else:
        z0, z1 = _organ_window(case_rng)
    ia, ib = body.a - body.fat, body.b - body.fat

    def place(uvt: np.ndarray) -> np.ndarray:
        return frame.to_voxel(
            body.cu + uvt[:, 0] * ia, body.cv + uvt[:, 1] * ib, np.clip(z0 + uvt[:, 2] * (z1 - z0), 0, 1)
        )

    distract = _distractors(case_rng, body, frame, z0, z1, place)
    volume = _render(render_rng, body, frame, organs, distract)
    _write_pngs(task, volume, task.slices)
    return len(task.slices)


def _run_tasks(fn: Any, tasks: list[CaseDayTask], workers: int, progress: bool, desc: str) -> list[Any]:
    """Run ``fn`` over ``tasks`` in order (in ``workers`` processes when > 1); results in task order."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=desc, unit="case-day")
    results = []
    try:
        if workers <= 1:
            for t in tasks:
                results.append(fn(t))
                if bar is not None:
                    bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
                for r in pool.map(fn, tasks, chunksize=1):
                    results.append(r)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results


# ----------------------------------------------------------------------------------------------------------
# Public API.


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to write over an existing dataset unless ``overwrite``; then remove only dataset entries."""
    existing = [out / n for n in DATASET_ENTRIES if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a dataset ({', '.join(p.name for p in existing)}); "
            "pass overwrite=True (--overwrite) to replace it, or choose another --out"
        )
    for p in existing:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    _atomic_write(path, df.to_csv(index=False, lineterminator="\n").encode())


def _check_sizes(sizes: Iterable[tuple[int, int]] | None) -> list[tuple[int, int]]:
    if sizes is None:
        return list(REAL_SIZES)
    out = []
    for s in sizes:
        try:
            w, h = (int(x) for x in s)
        except (TypeError, ValueError):
            raise ValueError(f"sizes must be (width, height) pairs of ints, got {s!r}") from None
        if w < 32 or h < 32:
            raise ValueError(f"sizes must be at least 32x32, got {w}x{h}")
        out.append((w, h))
    if not out:
        raise ValueError("sizes is empty; give at least one (width, height)")
    return out


def _plan(
    cases: int, test_cases: int, seed: int, slices: int | None, sizes: list[tuple[int, int]]
) -> list[tuple[str, int, int, int, int, int, float]]:
    """Draw case numbers, days, depth and size: rows (split, case, day, depth, width, height, spacing)."""
    rng = np.random.default_rng([seed, 0, 0, 0])
    n = cases + test_cases
    pool = np.arange(1, max(160, 2 * n) + 1)
    numbers = rng.choice(pool, size=n, replace=False)
    train, test = sorted(int(x) for x in numbers[:cases]), sorted(int(x) for x in numbers[cases:])
    real = sizes == list(REAL_SIZES)
    weights = np.array([SIZE_WEIGHTS[s] for s in sizes]) if real else np.ones(len(sizes))
    weights = weights / weights.sum()
    plan = []
    for split, nums in (("train", train), ("test", test)):
        for case in nums:
            n_days = int(rng.choice(list(DAYS_PER_CASE), p=list(DAYS_PER_CASE.values())))
            days = sorted(int(x) for x in rng.choice(np.arange(0, 36), size=n_days, replace=False))
            w, h = sizes[int(rng.choice(len(sizes), p=weights))]
            depth = int(rng.choice(list(DEPTH_WEIGHTS), p=list(DEPTH_WEIGHTS.values())))
            depth = slices if slices is not None else depth
            for day in days:
                plan.append((split, case, day, depth, w, h, SPACING_BY_SIZE.get((w, h), 1.5)))
    return plan


def synthesize(
    out: str | os.PathLike,
    cases: int,
    seed: int = DEFAULT_SEED,
    test_cases: int = 0,
    slices: int | None = None,
    sizes: Iterable[tuple[int, int]] | None = None,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a synthetic dataset in the Kaggle layout drawn by the shape model.

    Args:
        out: output folder (created); must not already hold a dataset unless ``overwrite``.
        cases: number of training cases (1-3 days each).
        seed: random seed; the same seed gives byte-identical files.
        test_cases: number of test cases (``test/`` tree, header-only ``sample_submission.csv`` and
            ``test_truth.csv``); 0 writes no test files.
        slices: slices per case-day (default: 144 or 80 as in the real data); small values for tests.
        sizes: (width, height) pairs to draw from (default: the four real sizes).
        overwrite: replace an existing dataset in ``out`` (only the dataset's own entries are removed).
        workers: processes rendering case-days in parallel.
        progress: show a tqdm bar.

    Returns:
        Summary: ``{"out", "case_days": {"train": n, "test": m}, "slices": {...}, "presence": {class: fraction
        of train slices}, "any": fraction of train slices with any class}``.

    Raises:
        ValueError: bad counts or sizes. FileExistsError: ``out`` holds a dataset and not ``overwrite``.
    """
    if cases < 1 or test_cases < 0:
        raise ValueError(f"cases must be >= 1 and test_cases >= 0, got cases={cases}, test_cases={test_cases}")
    if slices is not None and slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    size_list = _check_sizes(sizes)
    out_p = Path(out).resolve()
    _prepare_out(out_p, overwrite)
    plan = _plan(cases, test_cases, seed, slices, size_list)
    tasks = [CaseDayTask(str(out_p), sp, c, d, dep, w, h, px, seed) for sp, c, d, dep, w, h, px in plan]
    results = _run_tasks(_render_shape_task, tasks, workers, progress, "synth")
    summary: dict[str, Any] = {"out": str(out_p), "case_days": {}, "slices": {}}
    for split, csv_name in (("train", "train.csv"), ("test", "test_truth.csv")):
        rows = [r for t, res in zip(tasks, results, strict=True) if t.split == split for r in res]
        if split == "test" and not test_cases:
            continue
        df = pd.DataFrame(rows, columns=["id", "class", "segmentation"])
        _write_csv(df, out_p / csv_name)
        summary["case_days"][split] = sum(t.split == split for t in tasks)
        summary["slices"][split] = len(df) // len(CLASSES)
        if split == "train":
            pos = df.assign(p=df["segmentation"] != "").pivot(index="id", columns="class", values="p")
            summary["presence"] = {c: float(pos[c].mean()) for c in CLASSES}
            summary["any"] = float(pos.any(axis=1).mean())
    if test_cases:
        _write_csv(pd.DataFrame(columns=["id", "class", "predicted"]), out_p / "sample_submission.csv")
    logger.info("synthetic dataset in %s: %s", out_p, summary)
    return summary


_MANIFEST_ALIASES = {"px_w_mm": "px_w", "px_h_mm": "px_h"}


def _read_scan_manifest(manifest: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    if isinstance(manifest, pd.DataFrame):
        df, where = manifest.copy(), "manifest DataFrame"
    else:
        p = Path(manifest)
        if not p.is_file():
            raise FileNotFoundError(
                f"scan manifest {p} not found; expected a CSV with id,case,day,slice,width,height,px_w_mm,px_h_mm"
            )
        df, where = pd.read_csv(p), str(p)
    df = df.rename(columns=_MANIFEST_ALIASES)
    need = ["id", "case", "day", "slice", "width", "height", "px_w", "px_h"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; expected {need}")
    df["case_day"] = "case" + df["case"].astype(str) + "_day" + df["day"].astype(str)
    return df.sort_values(["case", "day", "slice"], kind="stable").reset_index(drop=True)


def render_from_labels(
    out: str | os.PathLike,
    labels: str | os.PathLike | pd.DataFrame,
    manifest: str | os.PathLike | pd.DataFrame,
    case_days: Sequence[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Render a ``train/`` tree whose masks are given, and copy their labels to ``OUT/train.csv``.

    Args:
        out: output folder; must not already hold a dataset unless ``overwrite``.
        labels: ``train.csv`` path (``.csv.gz`` too) or DataFrame (``id,class,segmentation``).
        manifest: scan manifest path or DataFrame: ``id, case, day, slice, width, height, px_w_mm, px_h_mm``
            (or ``px_w, px_h``); file names are made from them (other columns, e.g. ``kaggle_path``, are ignored).
        case_days: keys ``case{N}_day{D}`` to render (default: all of the manifest).
        seed: random seed of the rendering (the masks are the labels').
        overwrite: replace an existing dataset in ``out``.
        workers: processes.
        progress: show a tqdm bar.

    Returns:
        Summary ``{"out", "case_days", "slices"}``.

    Raises:
        FileNotFoundError: a missing input file. ValueError: wrong columns, unknown case-days, malformed RLE
        (names the row id). FileExistsError: ``out`` holds a dataset and not ``overwrite``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    lab = read_labels(labels).set_index("id")
    man = _read_scan_manifest(manifest)
    if case_days is not None:
        known = set(man["case_day"])
        unknown = [cd for cd in case_days if cd not in known]
        if unknown:
            hints = {cd: difflib.get_close_matches(cd, sorted(known), n=2) for cd in unknown[:3]}
            raise ValueError(f"case-day(s) not in the manifest: {unknown[:5]}; close matches: {hints}")
        man = man[man["case_day"].isin(set(case_days))].reset_index(drop=True)
    if man.empty:
        raise ValueError("nothing to render: the manifest (after --case-days) has no slices")
    missing = ~man["id"].isin(lab.index)
    if missing.any():
        logger.warning("%d manifest slices have no label rows; they are rendered with empty masks", int(missing.sum()))
    rles = lab.reindex(man["id"])[list(CLASSES)].fillna("")
    # Validate every RLE against its slice's size before anything is written (errors name row and file).
    check = pd.concat([man[["id", "width", "height"]], rles.reset_index(drop=True)], axis=1)
    validate_rles(check, lab.attrs.get("source", "labels"))
    out_p = Path(out).resolve()
    _prepare_out(out_p, overwrite)
    tasks = []
    for cd, idx in man.groupby("case_day", sort=False).indices.items():
        g = man.iloc[idx]
        sizes = g[["width", "height", "px_w"]].drop_duplicates()
        if len(sizes) != 1:
            raise ValueError(f"{cd}: slices of one case-day have different sizes or spacings in the manifest")
        w, h, px = int(g["width"].iloc[0]), int(g["height"].iloc[0]), float(g["px_w"].iloc[0])
        tasks.append(
            CaseDayTask(
                str(out_p),
                "train",
                int(g["case"].iloc[0]),
                int(g["day"].iloc[0]),
                len(g),
                w,
                h,
                px,
                seed,
                slices=tuple(int(s) for s in g["slice"]),
                rles=tuple(map(tuple, rles.iloc[idx].to_numpy().tolist())),
            )
        )
    counts = _run_tasks(_render_label_task, tasks, workers, progress, "render")
    long = rles.set_axis(man["id"].to_numpy()).rename_axis("id").reset_index()
    long = long.melt(id_vars="id", value_vars=list(CLASSES), var_name="class", value_name="segmentation")
    order = {c: i for i, c in enumerate(CLASSES)}
    long["_z"] = long["id"].map({sid: i for i, sid in enumerate(man["id"])})
    long["_c"] = long["class"].map(order)
    long = long.sort_values(["_z", "_c"], kind="stable")[["id", "class", "segmentation"]]
    _write_csv(long, out_p / "train.csv")
    summary = {"out": str(out_p), "case_days": len(tasks), "slices": int(sum(counts))}
    logger.info("rendered %s", summary)
    return summary


# ----------------------------------------------------------------------------------------------------------
# CLI.


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH like 266x266, got {text!r}") from None


def _cli(args: argparse.Namespace) -> int:
    """Entry point of ``python -m data_prep synth``; bad option combinations exit 2 with argparse's usage."""
    fail = args.synth_parser.error
    if args.labels is not None or args.manifest is not None:
        if args.labels is None or args.manifest is None:
            fail("--labels and --manifest go together (label-driven mode)")
        if args.cases is not None or args.test_cases or args.slices or args.sizes:
            fail("--cases/--test-cases/--slices/--sizes do not apply with --labels")
        render_from_labels(
            args.out,
            args.labels,
            args.manifest,
            case_days=args.case_days,
            seed=args.seed,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=True,
        )
    else:
        if args.cases is None:
            fail("give --cases N (shape model) or --labels and --manifest (label-driven)")
        if args.case_days:
            fail("--case-days applies only with --labels and --manifest")
        synthesize(
            args.out,
            args.cases,
            seed=args.seed,
            test_cases=args.test_cases,
            slices=args.slices,
            sizes=args.sizes,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=True,
        )
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``synth`` subcommand to an argparse ``subparsers`` object; it sets ``func``.

    Returns:
        The subcommand's parser.
    """
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic dataset in the Kaggle layout",
        description=(
            "Write a synthetic dataset in the Kaggle layout (train/ tree + train.csv; with --test-cases a test/ "
            "tree, a header-only sample_submission.csv and test_truth.csv). Shape model: --cases N --seed S. "
            "Label-driven: --labels train.csv --manifest scan_manifest.csv [--case-days ...]."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--cases", type=int, default=None, help="training cases (1-3 days each)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (same seed, same files)")
    p.add_argument("--test-cases", type=int, default=0, help="test cases (test/ tree, test_truth.csv)")
    p.add_argument("--slices", type=int, default=None, help=f"slices per case-day (default {REAL_DEPTHS})")
    p.add_argument("--sizes", type=_parse_size, nargs="+", default=None, metavar="WxH", help="image sizes to draw")
    p.add_argument("--labels", type=Path, default=None, help="train.csv whose masks to render")
    p.add_argument("--manifest", type=Path, default=None, help="scan manifest (size, spacing per slice)")
    p.add_argument("--case-days", nargs="+", default=None, metavar="CASE_DAY", help="render only these")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.set_defaults(func=_cli, synth_parser=p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m data_prep.synth ...`` (same options as ``python -m data_prep synth``)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.synth")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["synth", *(argv if argv is not None else __import__("sys").argv[1:])])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
