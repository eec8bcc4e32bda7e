"""The fusion core: weights, gate, thresholds, weak classes, components, RLE rows, submission order."""

from __future__ import annotations

import numpy as np
import pytest

from ensembles import core


def test_fuse_normalises_weights():
    a = np.full((2, 3, 4, 5), 0.2, np.float16)
    b = np.full((2, 3, 4, 5), 0.6, np.float32)
    f1 = core.fuse([a, b], [2, 6])
    f2 = core.fuse([a, b], [0.25, 0.75])
    assert f1.dtype == np.float32
    np.testing.assert_allclose(f1, f2, atol=1e-7)
    assert float(f1[0, 0, 0, 0]) == pytest.approx(0.25 * float(np.float16(0.2)) + 0.75 * 0.6, abs=1e-6)
    assert float(core.fuse([a, b])[1, 2, 3, 4]) == pytest.approx((float(np.float16(0.2)) + 0.6) / 2, abs=1e-6)
    np.testing.assert_allclose(core.normalise_weights([1, 1, 2], 3), [0.25, 0.25, 0.5])


def test_fuse_errors():
    a = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="shape"):
        core.fuse([a, np.zeros((2, 3, 4, 5), np.float32)], names=["m1", "m2"])
    with pytest.raises(ValueError, match="expected 2 values"):
        core.fuse([a, a], [1.0])
    with pytest.raises(ValueError, match="sum to 0"):
        core.fuse([a, a], [0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        core.fuse([a, a], [1, -1])
    bad = a.copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="unet_b4.*NaN"):
        core.fuse([a, bad], names=["ok", "unet_b4"])


def test_apply_keep_and_threshold():
    p = np.full((3, 3, 2, 2), 0.5, np.float32)
    p[:, 1] = 0.7
    keep = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1]], bool)
    k = core.apply_keep(p, keep)
    assert k[0, 2].max() == 0 and k[1].max() == 0 and k[2, 2].min() == 0.5 and k[2, 1].max() == 0
    k2 = core.apply_keep(p, np.array([True, False, True]))
    assert k2[1].max() == 0 and k2[0].min() == 0.5
    m = core.threshold(p, [0.6, 0.6, 0.4])
    assert m[:, 0].sum() == 0 and m[:, 1].all() and m[:, 2].all()
    assert core.threshold(p, 0.5).sum() == 12  # strictly greater: 0.5 is not above 0.5
    with pytest.raises(ValueError, match="one value or 3"):
        core.threshold(p, [0.5, 0.5])


def test_empty_weak_classes():
    p = np.zeros((2, 3, 4, 4), np.float32)
    p[0, 0, :2, :2] = 0.45  # above the pixel threshold 0.4 but the peak is under 0.5
    p[1, 0, :2, :2] = 0.45
    p[1, 0, 0, 0] = 0.9  # this slice's peak passes
    m = core.threshold(p, 0.4)
    out = core.empty_weak(m, p, 0.5)
    assert out[0, 0].sum() == 0 and out[1, 0].sum() == 4
    assert core.postprocess(p, 0.4, max_prob_floor=0.5).sum() == 4


def test_remove_small_components_2d_and_3d():
    m = np.zeros((3, 3, 12, 12), bool)
    m[0, 0, 0:2, 0:2] = True  # 4 px
    m[0, 0, 5:8, 5:8] = True  # 9 px
    m[1, 1, 2:4, 2:5] = True  # 6 px on slice 1 ...
    m[2, 1, 2:4, 2:5] = True  # ... and 6 px right below: 12 voxels in 3D
    out = core.remove_small(m, [5, 7, 0], mode="2d")
    assert out[0, 0].sum() == 9 and out[1, 1].sum() == 0 and out[2, 1].sum() == 0
    out3 = core.remove_small(m, [5, 7, 0], mode="3d")
    assert out3[0, 0].sum() == 9 and out3[1:, 1].sum() == 12
    # a component of exactly n pixels stays (removal is of components *under* n pixels)
    assert core.remove_small(m, [4, 0, 0])[0, 0].sum() == 13
    assert (core.remove_small(m, 0) == m).all()


def test_weighted_mean_equals_fuse():
    rng = np.random.default_rng(1)
    maps = [rng.random((3, 3, 5, 6)).astype(np.float16) for _ in range(4)]
    w = [0.2, 0.3, 0.1, 0.4]
    acc = core.WeightedMean()
    for m, wi in zip(maps, w):
        acc.add(m, wi * 10)
    with pytest.raises(ValueError, match="cannot fuse b of shape"):
        acc.add(maps[0][:1], 1.0, "b")
    np.testing.assert_allclose(acc.result(), core.fuse(maps, w), atol=1e-6)
    # the accumulator handed its array over and is empty again: a map of another shape starts a new mean
    assert acc.weight == 0
    acc.add(maps[0][:1], 2.0)
    np.testing.assert_array_equal(acc.result(), maps[0][:1].astype(np.float32))
    with pytest.raises(ValueError, match="nothing to fuse"):
        core.WeightedMean().result()
    bad = maps[1].copy()
    bad[2, 1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="model x: probability map holds NaN"):
        acc.add(bad, 1.0, "model x")


def test_fuse_models_groups_weights_and_laziness():
    a = np.full((2, 3, 4, 4), 0.2, np.float32)
    b = np.full((2, 3, 4, 4), 0.8, np.float32)
    c = np.full((2, 3, 4, 4), 0.5, np.float32)
    called = []

    def lazy(x, name):
        def f():
            called.append(name)
            return x

        return f

    maps = [
        core.ModelMap("a", "2.5d", 1.0, lazy(a, "a")),
        core.ModelMap("b", "2.5d", 3.0, lazy(b, "b")),
        core.ModelMap("z", "2.5d", 0.0, lazy(c, "z")),  # weight 0: never computed
        core.ModelMap("c", "3d", 1.0, lazy(c, "c")),
    ]
    fused = core.fuse_models(maps, weight_2d=0.6, weight_3d=0.4)
    # 2.5D group: (0.2 + 3 * 0.8) / 4 = 0.65; then 0.6 * 0.65 + 0.4 * 0.5 = 0.59
    np.testing.assert_allclose(fused, 0.59, atol=1e-6)
    assert called == ["a", "b", "c"]
    called.clear()
    only_2d = core.fuse_models(maps, weight_2d=1.0, weight_3d=0.0)  # a group of weight 0 is not computed
    np.testing.assert_allclose(only_2d, 0.65, atol=1e-6)
    assert called == ["a", "b"]
    zero = [core.ModelMap(m.name, m.kind, 0.0, m.probs) for m in maps]
    assert core.fuse_models(zero, 0.6, 0.4) is None  # nothing has a positive weight
    with pytest.raises(ValueError, match="kind 'classifier'"):
        core.fuse_models([core.ModelMap("x", "classifier", 1.0, a)], 1.0, 1.0)


def test_ensemble_rule_gate_threshold_post_and_all_zero_weights():
    p = np.zeros((3, 3, 6, 6), np.float32)
    p[:, 0, 1:4, 1:4] = 0.7
    p[1, 1, 0:2, 0:2] = 0.45  # under the 0.5 floor: emptied
    keep = np.ones((3, 3), bool)
    keep[2] = False  # the gate drops slice 2
    post = {"max_prob_floor": 0.5, "min_component": 0, "component_mode": "2d"}
    fusion = {"weight_2d": 1.0, "weight_3d": 0.0}
    probs, masks = core.ensemble([core.ModelMap("m", "2.5d", 1.0, p)], p.shape, fusion, keep, 0.4, post)
    assert masks[:, 0].sum(axis=(1, 2)).tolist() == [9, 9, 0]
    assert masks[:, 1].sum() == 0  # 0.45 > threshold 0.4 but its class peak is under the floor
    assert probs[2].max() == 0.0
    # every weight 0: the rule predicts nothing (the same in the search and in inference)
    probs0, masks0 = core.ensemble([core.ModelMap("m", "2.5d", 0.0, p)], p.shape, fusion, None, 0.4, post)
    assert probs0.shape == p.shape and not probs0.any() and not masks0.any()


def test_gate_keep_methods():
    cls = np.array([[0.9, 0.1, 0.6], [0.2, 0.8, 0.4]])
    keep = core.gate_keep({"method": "classifier", "thresholds": 0.5}, (2, 3), cls_probs=cls)
    assert keep.tolist() == [[True, False, True], [False, True, False]]
    assert core.gate_keep({"method": "none"}, (2, 3)).all()
    probs = np.zeros((2, 3, 8, 8), np.float32)
    probs[0, 2, :4, :4] = 0.9  # 16 pixels over 0.6
    g = {"method": "unet_count", "pixel_thr": 0.6, "min_pixels": 12}
    assert core.gate_keep(g, (2, 3), gate_probs=lambda: probs).tolist() == [[False, False, True], [False] * 3]
    with pytest.raises(ValueError, match="needs the classifier"):
        core.gate_keep({"method": "classifier"}, (2, 3))
