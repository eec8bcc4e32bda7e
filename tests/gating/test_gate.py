"""Gate rules on hand-made probability sequences."""

from __future__ import annotations

import numpy as np
import pytest

from gating.gate import (
    check_thresholds,
    gate_decisions,
    min_run_filter,
    pixel_counts,
    presence_from_masks,
    search_thresholds,
    smooth_z,
)


def test_per_class_thresholds():
    p = np.array([[0.2, 0.5, 0.9], [0.6, 0.4, 0.1], [0.35, 0.7, 0.5]])
    keep = gate_decisions(p, thresholds=[0.3, 0.5, 0.5])
    assert keep.tolist() == [[False, True, True], [True, False, False], [True, True, True]]
    assert gate_decisions(p, 0.6).tolist() == [[False, False, True], [True, False, False], [False, True, False]]


def test_smoothing_removes_isolated_spike_and_fills_gap():
    # class 0: an isolated spike; class 1: a run with a one-slice dip.
    p = np.array([[0.0, 0.9], [0.9, 0.9], [0.0, 0.1], [0.0, 0.9], [0.0, 0.9], [0.0, 0.0]])
    raw = gate_decisions(p, 0.5)
    assert raw[:, 0].tolist() == [False, True, False, False, False, False]
    assert raw[:, 1].tolist() == [True, True, False, True, True, False]
    sm = gate_decisions(p, 0.5, smooth=1)
    # means over +-1 (cut at the ends): col0 [0.45, 0.3, 0.3, 0, 0, 0]; col1 [0.9, 0.633, 0.633, 0.633, 0.6, 0.45]
    assert sm[:, 0].tolist() == [False, False, False, False, False, False]
    assert sm[:, 1].tolist() == [True, True, True, True, True, False]
    np.testing.assert_allclose(smooth_z(p, 1)[:, 1], [0.9, 1.9 / 3, 1.9 / 3, 1.9 / 3, 0.6, 0.45])


def test_min_consecutive():
    p = np.array([0.9, 0.0, 0.9, 0.9, 0.0, 0.9, 0.9, 0.9, 0.0])[:, None].repeat(3, axis=1)
    expected = {
        1: [1, 0, 1, 1, 0, 1, 1, 1, 0],
        2: [0, 0, 1, 1, 0, 1, 1, 1, 0],
        3: [0, 0, 0, 0, 0, 1, 1, 1, 0],
        4: [0, 0, 0, 0, 0, 0, 0, 0, 0],
    }
    for n, exp in expected.items():
        keep = gate_decisions(p, 0.5, min_consecutive=n)
        assert keep[:, 0].astype(int).tolist() == exp, n
        assert (keep[:, 0] == keep[:, 2]).all()
    # a run touching the end of the volume counts too
    assert min_run_filter(np.array([[0], [1], [1]], bool), 2)[:, 0].tolist() == [False, True, True]


def test_smoothing_then_min_consecutive_and_threshold_equality():
    p = np.full((4, 3), 0.3)
    assert gate_decisions(p, 0.3, smooth=2).all()  # a constant equal to the threshold is kept after smoothing
    assert not gate_decisions(p, 0.31).any()


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), [0.5, 0.5], [0.2, 1.2, 0.3]])
def test_thresholds_outside_unit_interval_raise(bad):
    with pytest.raises(ValueError, match="threshold"):
        gate_decisions(np.full((3, 3), 0.5), bad)


def test_bad_probabilities_and_windows_raise():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gate_decisions(np.array([[1.5, 0.0, 0.0]]), 0.5)
    with pytest.raises(ValueError, match="D, C"):
        gate_decisions(np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="k must be"):
        gate_decisions(np.zeros((3, 3)), 0.5, smooth=-1)
    with pytest.raises(ValueError, match="min_consecutive"):
        gate_decisions(np.zeros((3, 3)), 0.5, min_consecutive=0)
    assert check_thresholds([0, 0.5, 1], 3).tolist() == [0.0, 0.5, 1.0]


def test_presence_from_masks_counts_more_than_min_pixels():
    m = np.zeros((2, 3, 10, 10), np.float32)
    m[0, 0].flat[:12] = 0.7  # exactly 12 pixels: not kept (more than 12 needed)
    m[0, 1].flat[:13] = 0.7  # 13: kept
    m[0, 2].flat[:50] = 0.6  # 0.6 is not above 0.6
    m[1, 2].flat[:20] = 0.61
    m[1, 0].flat[:5] = 1.0
    assert pixel_counts(m).tolist() == [[12, 13, 0], [5, 0, 20]]
    keep = presence_from_masks(m)
    assert keep.dtype == bool
    assert keep.tolist() == [[False, True, False], [False, False, True]]
    assert presence_from_masks(m, pixel_thr=0.5, min_pixels=4).tolist() == [[True, True, True], [True, False, True]]
    f = presence_from_masks(m, as_float=True)
    assert f.dtype == np.float32 and f.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="D, C, H, W"):
        presence_from_masks(m[0])


def test_search_thresholds_maximises_f1_per_class():
    p = np.array([[0.1, 0.9], [0.3, 0.8], [0.45, 0.7], [0.6, 0.2], [0.8, 0.1]])
    t = np.array([[0, 1], [0, 1], [1, 1], [1, 0], [1, 0]])
    thr, scores = search_thresholds(p, t, grid=[0.2, 0.4, 0.5, 0.75], return_scores=True)
    # class 0: 0.4 separates perfectly (0.2 would add a false positive); class 1: 0.4 and 0.5 both perfect -> 0.4
    assert thr.tolist() == [0.4, 0.4]
    assert scores.tolist() == [1.0, 1.0]
    # a custom objective: recall (keep everything that is present) picks the smallest threshold
    recall = lambda pred, truth: float((pred & truth).sum() / max(truth.sum(), 1))  # noqa: E731
    assert search_thresholds(p, t, grid=[0.2, 0.4, 0.75], objective=recall).tolist() == [0.2, 0.2]
    acc = search_thresholds(p, t, grid=[0.5, 0.75], objective="accuracy")
    assert acc.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="threshold"):
        search_thresholds(p, t, grid=[0.5, 1.1])
    with pytest.raises(ValueError, match="shape"):
        search_thresholds(p, t[:3])
    with pytest.raises(ValueError, match="objective"):
        search_thresholds(p, t, objective="auc")
