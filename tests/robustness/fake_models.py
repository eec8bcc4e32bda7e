"""Deterministic stand-in models with the contract's ``predict_volume`` (docs/contracts.md, inference APIs), for the
fault tests of ``tools/infer.py`` that run it in a subprocess: cheap, and their outputs depend on the scans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml


class IntensitySeg:
    """2.5D stand-in: per class, the image scaled by its own max, shifted by a class offset."""

    def predict_volume(self, volume, keep=None, boxes=None, tta=(), batch_size=16, spacing=None):
        v = volume.astype(np.float32) / max(float(volume.max()), 1.0)
        p = np.stack([np.clip(v + off, 0, 1) for off in (0.0, -0.1, 0.1)], axis=1)
        if keep is not None:
            p[~np.asarray(keep, bool)] = 0
        return p


class MeanCls:
    """Classifier stand-in: presence = mean intensity of the slice relative to the volume's brightest slice."""

    def predict_volume(self, volume, batch_size=32):
        m = volume.reshape(len(volume), -1).astype(np.float64).mean(1)
        p = (m / max(m.max(), 1.0)).astype(np.float32)
        return np.stack([p, p * 0.9, p * 0.8], axis=1)


LOADERS = {"2.5d": lambda m, ck, d: IntensitySeg(), "classifier": lambda m, ck, d: MeanCls()}


def write_spec(tmp: Path) -> Path:
    """A spec of one stand-in 2.5D model (2 folds) gated by the stand-in classifier; returns its path."""
    for name in ("seg_0.json", "seg_1.json", "cls_0.json"):
        (tmp / name).write_text(json.dumps({}))
    (tmp / "seg.py").write_text("")
    spec = {
        "name": "fake",
        "folds": [0, 1],
        "models": [
            {"name": "seg", "kind": "2.5d", "config": "seg.py", "checkpoints": "seg_{fold}.json", "tta": ["hflip"]},
            {"name": "cls", "kind": "classifier", "config": "seg.py", "checkpoints": ["cls_0.json"]},
        ],
        "gate": {"method": "classifier", "thresholds": 0.75},
        "fusion": {"weight_2d": 1.0, "weight_3d": 0.0},
        "thresholds": 0.45,
        "post": {"max_prob_floor": 0.5, "min_component": 3},
    }
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp / "spec.yaml"
