"""Generated volumes for the gating tests (importable by name: ``from gating_fixtures import ...``)."""

from __future__ import annotations

import cv2
import numpy as np


def make_body_volume(rng: np.random.Generator, depth: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """uint16 (D, H, W) with a bright noisy ellipse ("body") per slice, and its box int (D, 4)."""
    vol = rng.integers(0, 60, size=(depth, h, w)).astype(np.uint16)
    boxes = np.zeros((depth, 4), dtype=np.int64)
    cx, cy = w // 2 + rng.integers(-w // 10, w // 10 + 1), h // 2 + rng.integers(-h // 10, h // 10 + 1)
    ax, ay = int(w * rng.uniform(0.25, 0.38)), int(h * rng.uniform(0.22, 0.35))
    for z in range(depth):
        img = np.zeros((h, w), np.uint8)
        cv2.ellipse(img, (int(cx), int(cy)), (ax, ay), 0, 0, 360, 255, -1)
        vol[z][img > 0] += rng.integers(800, 1200, size=int((img > 0).sum())).astype(np.uint16)
        ys, xs = np.nonzero(img)
        boxes[z] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return vol, boxes
