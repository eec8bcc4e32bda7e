"""The competition metric: equal to the plain reference, hand-computed values, both conventions and variants."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi

from data_prep.constants import CLASSES
from data_prep.layout import RLEVolumes, read_rle_table, shapes_manifest
from data_prep.rle import rle_encode
from evaluation.metric import (
    TruthDistances,
    dice_per_slice,
    hausdorff_distance,
    hausdorff_reference,
    mask_digest,
    score_case_day,
    score_volumes,
)
from evaluation.scoring import score_tables

SQ3 = math.sqrt(3.0)


def _blobs(rng, shape, n=3, level=0.55):
    f = ndi.gaussian_filter(rng.random(shape), sigma=(1.0, 2.0, 2.0))
    f = (f - f.min()) / (f.max() - f.min() + 1e-12)
    return f > level


@pytest.mark.parametrize("shape", [(5, 7, 11), (9, 13, 6), (3, 17, 19), (12, 10, 15)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hausdorff_equals_reference_random(shape, seed):
    rng = np.random.default_rng(seed * 100 + shape[0])
    a = rng.random(shape) < 0.15
    b = rng.random(shape) < 0.15
    assert abs(hausdorff_distance(a, b) - hausdorff_reference(a, b)) < 1e-9
    # smooth blobs (interiors, holes: exercises the surface-only argument)
    a, b = _blobs(rng, shape), _blobs(rng, shape)
    if a.any() and b.any():
        assert abs(hausdorff_distance(a, b) - hausdorff_reference(a, b)) < 1e-9


def test_hausdorff_ring_interior_point():
    # truth: a ring; pred: a filled disk inside it. The farthest point of pred from truth is the disk centre
    # (an interior point), so the query side must not be reduced to surface voxels.
    yy, xx = np.mgrid[:41, :41]
    r = np.hypot(yy - 20, xx - 20)
    truth = np.repeat(((r >= 15) & (r <= 17))[None], 3, axis=0)
    pred = np.repeat((r <= 8)[None], 3, axis=0)
    got = hausdorff_distance(pred, truth)
    assert abs(got - hausdorff_reference(pred, truth)) < 1e-9
    # d(pred -> truth) is attained at the disk centre: 15 pixels to the inner edge of the ring (W = 41);
    # d(truth -> pred) is only about 9 pixels (outer ring edge at 17, disk edge at 8)
    assert got == pytest.approx((15 / 41) / SQ3, abs=1e-12)


def test_one_voxel_shift_hand_computed():
    shape = (6, 8, 10)
    a = np.zeros(shape, bool)
    a[2, 3, 4] = True
    b = np.zeros(shape, bool)
    b[2, 3, 5] = True  # one voxel along x: 1/W in normalised coordinates
    assert hausdorff_distance(a, b) == pytest.approx((1 / 10) / SQ3, abs=1e-15)
    c = np.zeros(shape, bool)
    c[1:4, 2:6, 2:7] = True
    d = np.roll(c, 1, axis=0)  # a box moved by one slice: 1/D
    assert hausdorff_distance(c, d) == pytest.approx((1 / 6) / SQ3, abs=1e-15)
    # in the score: per_class, one class moved, two classes empty in both ("one": distance 0)
    pred = np.zeros((6, 3, 8, 10), bool)
    truth = np.zeros_like(pred)
    pred[:, 0], truth[:, 0] = d, c
    r = score_volumes({"case1_day0": pred}, {"case1_day0": truth})
    assert r.hausdorff == pytest.approx(1 - ((1 / 6) / SQ3) / 3, abs=1e-12)


def test_identical_masks_score_one():
    rng = np.random.default_rng(3)
    m = rng.random((7, 3, 9, 11)) < 0.3
    m[:, 2] = False  # an empty class: both empty
    for empty in ("one", "skip"):
        for hd in ("per_class", "union"):
            r = score_volumes({"case2_day1": m}, {"case2_day1": m.copy()}, empty=empty, hausdorff=hd)
            assert r.score == pytest.approx(1.0, abs=1e-12)
            assert r.dice == pytest.approx(1.0) and r.hausdorff == pytest.approx(1.0)


def test_empty_versus_nonempty_conventions():
    truth = np.zeros((2, 3, 4, 4), bool)
    truth[0, 0, 1:3, 1:3] = True
    pred = np.zeros_like(truth)
    one = score_volumes({"c": pred}, {"c": truth}, empty="one")
    # Dice: 6 (slice, class) pairs, 5 both empty (1) and one miss (0); Hausdorff: class 0 distance 1, others 0
    assert one.dice == pytest.approx(5 / 6)
    assert one.hausdorff == pytest.approx(2 / 3)
    assert one.score == pytest.approx(0.4 * 5 / 6 + 0.6 * 2 / 3)
    skip = score_volumes({"c": pred}, {"c": truth}, empty="skip")
    assert skip.dice == 0.0 and skip.hausdorff == 0.0 and skip.score == 0.0
    pc = skip.per_class.set_index("class")
    assert np.isnan(pc.loc["small_bowel", "dice"]) and pc.loc["large_bowel", "dice"] == 0.0
    # both empty everywhere: "one" -> 1, "skip" -> NaN
    z = np.zeros((2, 3, 4, 4), bool)
    assert score_volumes({"c": z}, {"c": z}, empty="one").score == 1.0
    assert np.isnan(score_volumes({"c": z}, {"c": z}, empty="skip").score)


def test_dice_per_slice_values():
    t = np.zeros((2, 1, 4, 4), bool)
    p = np.zeros_like(t)
    t[0, 0, :2, :2] = True  # 4 px
    p[0, 0, :2, :1] = True  # 2 px, inside
    d = dice_per_slice(p, t, "one")
    assert d[0, 0] == pytest.approx(2 * 2 / 6) and d[1, 0] == 1.0
    assert np.isnan(dice_per_slice(p, t, "skip")[1, 0])


def test_union_versus_per_class():
    # classes swapped: per class they are far apart; OR-ed they are identical
    truth = np.zeros((4, 3, 10, 10), bool)
    truth[1:3, 0, 1:3, 1:3] = True
    truth[1:3, 1, 6:9, 6:9] = True
    pred = truth[:, [1, 0, 2]]
    per = score_volumes({"c": pred}, {"c": truth}, hausdorff="per_class")
    uni = score_volumes({"c": pred}, {"c": truth}, hausdorff="union")
    assert uni.hausdorff == pytest.approx(1.0)
    assert per.hausdorff < 0.9
    ref = score_case_day("c", pred, truth, hausdorff="per_class", reference=True)
    assert np.allclose(1 - ref.distance.mean(), per.hausdorff, atol=1e-12)
    assert np.isnan(uni.per_class.set_index("class").loc["stomach", "hausdorff"])


def test_distance_cache_is_filled_and_read():
    rng = np.random.default_rng(3)
    truth = np.stack([_blobs(rng, (6, 16, 18)) for _ in range(3)], axis=1)
    pred = np.stack([_blobs(rng, (6, 16, 18)) for _ in range(3)], axis=1)
    pred[:, 2] = False  # class 2: one side empty, distance 1 without any volume work (nothing cached)
    plain = score_case_day("c", pred, truth)
    cache: dict = {}
    cached = score_case_day("c", pred, truth, distances=cache)
    np.testing.assert_array_equal(cached.distance, plain.distance)
    assert sorted(k[0] for k in cache) == [0, 1]
    assert cache[(1, mask_digest(pred[:, 1]))] == plain.distance[1]
    # the cache is read: a planted value comes back, and only for the mask it was stored under
    cache[(0, mask_digest(pred[:, 0]))] = 0.25
    again = score_case_day("c", pred, truth, distances=cache)
    assert again.distance.tolist() == [0.25, plain.distance[1], 1.0]
    moved = pred.copy()
    moved[2, 0, 0, 0] = ~moved[2, 0, 0, 0]
    assert score_case_day("c", moved, truth, distances=cache).distance[0] != 0.25
    assert len(cache) == 3
    # union: one entry under class -1
    uni: dict = {}
    u = score_case_day("c", pred, truth, hausdorff="union", distances=uni)
    assert (
        list(k[0] for k in uni) == [-1]
        and u.distance[0] == score_case_day("c", pred, truth, hausdorff="union").distance[0]
    )
    assert mask_digest(pred[:, 0]) != mask_digest(pred[:, 0].reshape(16, 6, 18))  # same voxels, other shape


def test_bad_arguments():
    m = np.zeros((2, 3, 4, 4), bool)
    with pytest.raises(ValueError, match="empty must be one of"):
        score_volumes({"c": m}, {"c": m}, empty="zero")
    with pytest.raises(ValueError, match="hausdorff must be one of"):
        score_volumes({"c": m}, {"c": m}, hausdorff="mean")
    with pytest.raises(ValueError, match="different case-days"):
        score_volumes({"c": m}, {"d": m})
    with pytest.raises(ValueError, match="same shape"):
        score_volumes({"c": m}, {"c": m[:1]})


_CACHE: dict = {}


def _real(real_labels_path, real_manifest_path, case_days):
    if "t" not in _CACHE:
        _CACHE["t"] = read_rle_table(real_labels_path)
        _CACHE["m"] = shapes_manifest(pd.read_csv(real_manifest_path))
    truth, man = _CACHE["t"], _CACHE["m"]
    return truth, man, RLEVolumes(truth, man, case_days=case_days)


def test_equals_reference_on_real_masks(real_labels_path, real_manifest_path):
    cds = ["case123_day20", "case2_day1"]
    _, _, vols = _real(real_labels_path, real_manifest_path, cds)
    checked = 0
    for cd in cds:
        t = vols[cd]
        for c in range(3):
            tc = t[:, c]
            if not tc.any():
                continue
            z = np.flatnonzero(tc.any(axis=(1, 2)))
            # shifted in-plane and the last annotated slices dropped: both directions non-trivial
            p = np.roll(np.roll(tc, 2, axis=2), -1, axis=1)
            p[z[-3:]] = False
            got, ref = hausdorff_distance(p, tc), hausdorff_reference(p, tc)
            assert abs(got - ref) < 1e-9, (cd, c, got, ref)
            assert got > 0
            checked += 1
    assert checked >= 3


def test_score_tables_and_cli(tmp_path, real_labels_path, real_manifest_path):
    cds = ["case123_day20"]
    truth, man, vols = _real(real_labels_path, real_manifest_path, cds)
    t = vols[cds[0]]
    p = ndi.binary_dilation(t, np.ones((1, 1, 3, 3), bool))
    ids = man.loc[man["case_day"] == cds[0], "id"].tolist()
    rows = [(sid, cls, rle_encode(p[z, c])) for z, sid in enumerate(ids) for c, cls in enumerate(CLASSES)]
    sub = pd.DataFrame(rows, columns=["id", "class", "predicted"])
    sub.to_csv(tmp_path / "sub.csv", index=False)
    man[man["case_day"].isin(cds)].to_csv(tmp_path / "man.csv", index=False)
    expected = score_volumes({cds[0]: p}, {cds[0]: t})
    got = score_tables(truth[truth["id"].isin(set(ids))], read_rle_table(sub), man)
    assert got.score == pytest.approx(expected.score, abs=1e-12)
    assert 0.5 < got.score < 1.0
    out = tmp_path / "score.json"
    cmd = [
        sys.executable,
        "-m",
        "ensembles",
        "-q",
        "score",
        "--truth",
        str(real_labels_path),
        "--pred",
        str(tmp_path / "sub.csv"),
        "--manifest",
        str(tmp_path / "man.csv"),
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert r.returncode == 0, r.stderr
    js = json.loads(out.read_text())
    assert js["score"] == pytest.approx(expected.score, abs=1e-9)
    assert [row["class"] for row in js["per_class"]] == [*CLASSES, "all"]
    assert "| class / case-day |" in out.with_suffix(".md").read_text()
    # missing rows in the prediction: a clear error naming the file
    sub.iloc[3:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ValueError, match="short.csv.*have no rows"):
        score_tables(truth[truth["id"].isin(set(ids))], read_rle_table(tmp_path / "short.csv"), man)


@pytest.mark.parametrize("kind", ["dilate", "erode", "shift", "drop", "far"])
@pytest.mark.parametrize("seed", [0, 1])
def test_ring_pruning_stays_exact(kind, seed):
    # perturbations whose query points sit a few in-plane steps from the other mask (where rings are skipped)
    rng = np.random.default_rng(seed)
    t = _blobs(rng, (8, 30, 26), level=0.5)
    cross = np.zeros((3, 3, 3), bool)
    cross[1] = ndi.generate_binary_structure(2, 1)
    if kind == "dilate":
        p = ndi.binary_dilation(t, cross, iterations=3)
    elif kind == "erode":
        p = ndi.binary_erosion(t, cross, iterations=1)
    elif kind == "shift":
        p = np.roll(np.roll(t, 3, axis=2), -2, axis=1)
    elif kind == "drop":
        p = t.copy()
        p[::3] = False
    else:
        p = t.copy()
        p[2, 1, 1] = True  # one far outlier among near points
        p = ndi.binary_dilation(p, cross)
    if p.any() and t.any():
        assert abs(hausdorff_distance(p, t) - hausdorff_reference(p, t)) < 1e-9
        assert abs(hausdorff_distance(t, p) - hausdorff_reference(t, p)) < 1e-9


def test_truth_distances_reuse_equals_the_plain_distance():
    # one truth, a series of predictions as a threshold search makes them (nested, then a far blob, then one
    # seen before): the shared object gives hausdorff_distance's value each time and queries only new voxels
    rng = np.random.default_rng(7)
    f = ndi.gaussian_filter(rng.random((10, 32, 28)), sigma=(1.0, 2.5, 2.5))
    truth = f > np.quantile(f, 0.85)
    td = TruthDistances(truth)
    preds = [f > np.quantile(f, q) for q in (0.9, 0.8, 0.7, 0.95)]
    far = preds[1].copy()
    lone = np.unravel_index(np.argmin(f), f.shape)  # the voxel least like the truth
    assert not truth[lone] and not preds[1][lone]
    far[lone] = far[9, 31, 27] = True
    preds += [far, preds[1], truth]
    seen = np.zeros(truth.shape, bool)
    for p in preds:
        assert td.distance(p, np.flatnonzero(p)) == pytest.approx(hausdorff_distance(p, truth), abs=1e-15)
        assert td.distance(p) == pytest.approx(hausdorff_reference(p, truth), abs=1e-12)
        seen |= p & ~truth
        assert td._idx.tolist() == np.flatnonzero(seen).tolist()  # every predicted-only voxel queried once
    # the lone voxel is kept with its distance to the nearest truth voxel, in normalised units
    zyx = (np.argwhere(truth) - np.array(lone)) / np.array(truth.shape)
    at = np.searchsorted(td._idx, np.ravel_multi_index(lone, truth.shape))
    assert td._dist[at] == pytest.approx(np.sqrt((zyx**2).sum(axis=1)).min(), abs=1e-15)
    assert td.distance(np.zeros_like(truth)) == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        TruthDistances(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match="shape"):
        td.distance(np.zeros((2, 3, 4), bool))
