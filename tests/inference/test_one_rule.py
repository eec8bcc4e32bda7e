"""The search scores its candidates with the rule inference runs: the same arrays give the same masks.

Stand-in models return fixed probability maps; ``inference.pipeline.predict_case_day`` (what ``tools/infer.py``
runs) and ``ensembles.search._apply`` (what ``python -m ensembles search`` scores) must agree exactly, for an
ordinary spec and for a candidate whose weights are all 0.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from ensembles.search import Params, _apply
from ensembles.spec import validate_spec
from inference.pipeline import LoadedModel, predict_case_day

SHAPE = (6, 3, 16, 16)


class Fixed:
    """A 2.5D / 3D stand-in returning one fixed map (and zeros on slices a gate skips)."""

    def __init__(self, probs: np.ndarray):
        self.probs = probs

    def predict_volume(self, volume, keep=None, boxes=None, tta=(), batch_size=16, spacing=None):
        p = self.probs.copy()
        if keep is not None:
            p[~np.asarray(keep, bool)] = 0
        return p


class FixedCls:
    def __init__(self, probs: np.ndarray):
        self.probs = probs

    def predict_volume(self, volume, batch_size=32):
        return self.probs


def _maps(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("u", "v", "w"):
        p = rng.random(SHAPE).astype(np.float32) * 0.5
        p[1:5, :, 4:12, 4:12] += 0.45  # a block of confident pixels on the middle slices
        out[name] = p.clip(0, 1)
    return out


def _spec(gate: dict):
    raw = {
        "name": "rule",
        "folds": [0],
        "models": [
            {"name": "u", "kind": "2.5d", "config": "u.py", "checkpoints": ["u.pth"], "weight": 1.0},
            {"name": "v", "kind": "2.5d", "config": "v.py", "checkpoints": ["v.pth"], "weight": 3.0},
            {"name": "w", "kind": "3d", "config": "w.py", "checkpoints": ["w.pth"], "weight": 1.0},
            {"name": "c", "kind": "classifier", "config": "c.py", "checkpoints": ["c.pth"]},
        ],
        "gate": gate,
        "fusion": {"weight_2d": 0.7, "weight_3d": 0.3},
        "thresholds": [0.45, 0.5, 0.55],
        "post": {"max_prob_floor": [0.6, 0.5, 0.6], "min_component": [0, 4, 9], "component_mode": "2d"},
    }
    return validate_spec(raw, "rule.yaml")


def _loaded(spec, maps, cls_probs) -> list[LoadedModel]:
    out = []
    for m in spec.models:
        predictor = FixedCls(cls_probs) if m.kind == "classifier" else Fixed(maps[m.name])
        out.append(LoadedModel(m, [(m.checkpoints[0], predictor)]))
    return out


@pytest.mark.parametrize("gate", [{"method": "classifier", "thresholds": 0.5, "smooth": 1}, {"method": "none"}])
def test_search_and_inference_give_the_same_masks(gate):
    maps = _maps(0)
    cls_probs = np.random.default_rng(1).random(SHAPE[:2])
    spec = _spec(gate)
    res = predict_case_day(spec, _loaded(spec, maps, cls_probs), np.zeros((SHAPE[0], *SHAPE[2:]), np.uint16))
    params = Params.from_spec(spec, ["u", "v", "w"])
    kinds = {m.name: m.kind for m in spec.models if m.kind in ("2.5d", "3d")}
    searched = _apply(params, maps, kinds, cls_probs if gate["method"] == "classifier" else None, None)
    assert res.masks.any() and (res.masks == searched).all()
    if gate["method"] == "classifier":  # the gate acted: it emptied some (slice, class) pairs
        ungated = _apply(params, maps, kinds, None, None)
        assert ungated.any(axis=(2, 3)).sum() > searched.any(axis=(2, 3)).sum()


def test_all_zero_weights_predict_nothing_in_both():
    maps = _maps(2)
    spec = _spec({"method": "none"})
    params = Params.from_spec(spec, ["u", "v", "w"])
    params.weights = dict.fromkeys(params.weights, 0.0)
    kinds = {"u": "2.5d", "v": "2.5d", "w": "3d"}
    assert not _apply(params, maps, kinds, None, None).any()
    zero = copy.deepcopy(spec)
    for m in zero.models:
        m.weight = 0.0
    res = predict_case_day(zero, _loaded(zero, maps, None), np.zeros((SHAPE[0], *SHAPE[2:]), np.uint16))
    assert not res.masks.any() and not res.probs.any()
