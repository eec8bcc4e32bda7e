"""Geometry helpers. Voxel coordinates are (z, y, x); the normalised frame has u, v in [-1, 1] across the
image (x, y) and zn in [0, 1] across the slices.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.interpolate import CubicSpline

#: Slice thickness (mm) of a 144-slice case-day; a case-day of depth D covers the same length.
SLICE_MM_144: float = 3.0


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
