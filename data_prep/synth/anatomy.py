"""The anatomy of one case-day: body and arms, the three labelled organs, liver and kidneys, spine.

Shapes live in the normalised frame of :mod:`data_prep.synth.geometry`; every mask is bool, (D, H, W) or (H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from data_prep.synth.geometry import _blob, _Frame, _spline_points, _stamp_tube


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
