"""Surface metrics in mm (evaluation.surface) and where they enter the scores: hand-computed cases, the empty
conventions, equality with DeepMind's reference (``surface-distance``) on real UW-Madison label shapes and the
mricron atlases, MONAI's subvoxel NSD as a second reference, the score tables, the objectives and the CLI table."""

from __future__ import annotations

import doctest
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi

import evaluation.metric
import evaluation.scoring
import evaluation.surface
from data_prep.constants import CLASSES
from data_prep.layout import RLEVolumes, read_rle_table, shapes_manifest
from data_prep.rle import rle_encode
from ensembles.__main__ import build_parser
from ensembles.__main__ import main as ensembles_main
from evaluation.metric import (
    OBJECTIVES,
    aggregate,
    dsc_3d_table,
    objective_scores,
    score_case_day,
)
from evaluation.scoring import report_markdown, score_table, score_tables, write_report
from evaluation.surface import (
    SURFACE_METRICS,
    default_tolerance,
    mask_surface,
    surface_distances,
    surface_scores,
    surfel_areas,
    volume_diagonal,
)

ATLASES = Path("/usr/share/mricron/templates")
ISO = (1.0, 1.0, 1.0)
#: Surfel areas with unit spacing: a cube corner (one voxel of eight in), an edge (two), a face (four).
VERTEX, EDGE, FACE = math.sqrt(3) / 8, math.sqrt(2) / 2, 1.0


def _reference():
    try:
        from surface_distance import metrics
    except ImportError:
        pytest.skip("the reference surface-distance is not installed (pip install -r requirements-dev.txt)")
    return metrics


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 1.5) -> np.ndarray:
    return ndi.gaussian_filter(rng.random(shape), sigma) > 0.5


def _assert_as_reference(pred: np.ndarray, truth: np.ndarray, spacing, where: str = "") -> None:
    """Our distances equal the reference's (same sorted values, same areas), and so do NSD at 0-3 mm, HD95,
    HD100 and both average distances (within 1e-6)."""
    ref = _reference()
    r = ref.compute_surface_distances(truth, pred, tuple(float(v) for v in spacing))
    ours = surface_distances(pred, truth, spacing)
    for key, attr in (
        ("distances_gt_to_pred", "truth_to_pred"),
        ("distances_pred_to_gt", "pred_to_truth"),
        ("surfel_areas_gt", "truth_areas"),
        ("surfel_areas_pred", "pred_areas"),
    ):
        np.testing.assert_allclose(getattr(ours, attr), r[key], rtol=0, atol=1e-9, err_msg=f"{where} {key}")
    for tol in (0.0, 1.0, 2.0, 3.0):
        assert ours.surface_dice(tol) == pytest.approx(ref.compute_surface_dice_at_tolerance(r, tol), abs=1e-6)
    for pct in (95, 100):
        assert ours.robust_hausdorff(pct) == pytest.approx(ref.compute_robust_hausdorff(r, pct), abs=1e-6), where
    assert ours.average_distances() == pytest.approx(ref.compute_average_surface_distance(r), abs=1e-6)


# ------------------------------------------------------------------------------------------------ by hand


def test_one_voxel_shifted_two_voxels_by_hand():
    # a voxel has a surfel at each of its 8 corners; 2 voxels along x: 4 corners of each are 1 voxel from the
    # other voxel's nearest corners, 4 are 2 voxels away; all 8 areas equal
    t = np.zeros((3, 3, 6), bool)
    t[1, 1, 1] = True
    p = np.roll(t, 2, axis=2)
    assert surface_scores(p, t, ISO, tolerance=1.0) == pytest.approx([0.0, 0.5, 2.0, 1.5])
    assert surface_scores(p, t, ISO, tolerance=2.0)[1] == 1.0
    # anisotropic: x is 1.5 mm, so 1.5 and 3 mm
    assert surface_scores(p, t, (3.0, 1.5, 1.5), tolerance=1.5) == pytest.approx([0.0, 0.5, 3.0, 2.25])
    # one slice (3 mm) along z: the 4 shared corners coincide (NSD at 0 mm, the SenNet surface Dice: 1/2)
    pz = np.roll(t, 1, axis=0)
    assert surface_scores(pz, t, (3.0, 1.5, 1.5), tolerance=0.0) == pytest.approx([0.0, 0.5, 3.0, 1.5])


def test_cube_shifted_two_voxels_by_hand():
    # a 2x2x2 cube, 27 corners on its 3x3x3 corner grid, 26 surfels (not the centre): 8 corners (VERTEX), 12 edge
    # midpoints (EDGE), 6 face centres (FACE). Moved 2 voxels along x, the truth's corners in the plane x = 2
    # (4 V, 4 E, 1 F) lie on the prediction's surface, those at x = 1 (4 E, 4 F) are 1 voxel from it and those
    # at x = 0 (4 V, 4 E, 1 F) 2 voxels; the prediction's surfels mirror them.
    t = np.zeros((4, 4, 7), bool)
    t[1:3, 1:3, 1:3] = True
    p = np.roll(t, 2, axis=2)
    total = 8 * VERTEX + 12 * EDGE + 6 * FACE
    at0, at1 = 4 * VERTEX + 4 * EDGE + FACE, 4 * EDGE + 4 * FACE
    assert mask_surface(t, ISO).area == pytest.approx(total)
    assert surface_scores(p, t, ISO, tolerance=0.0)[1] == pytest.approx(at0 / total)
    assert surface_scores(p, t, ISO, tolerance=1.0)[1] == pytest.approx((at0 + at1) / total)
    assert surface_scores(p, t, ISO, tolerance=2.0)[1] == pytest.approx(1.0)
    # HD95: the area before the 2-voxel group is (at0 + at1) / total = 71% < 95%, so 2; the Hausdorff too
    assert surface_scores(p, t, ISO, tolerance=1.0)[2] == pytest.approx(2.0)
    assert surface_scores(p, t, ISO, tolerance=1.0, percentile=100)[2] == pytest.approx(2.0)
    assert surface_scores(p, t, ISO, tolerance=1.0, percentile=50)[2] == pytest.approx(1.0)
    # ASSD: (1 * at1 + 2 * (4 V + 4 E + F)) / total = 1 exactly, both directions
    assert surface_scores(p, t, ISO, tolerance=1.0)[3] == pytest.approx(1.0)
    # DSC: the cube moved by its own width does not overlap; by one voxel it keeps half
    assert surface_scores(p, t, ISO, tolerance=1.0)[0] == 0.0
    assert surface_scores(np.roll(t, 1, axis=2), t, ISO, tolerance=1.0)[0] == pytest.approx(0.5)


def test_surfel_areas_scale_with_the_spacing():
    a = surfel_areas((2.0, 3.0, 5.0))
    # a face across z (4 voxels below the corner, 4 above) is a y-x square: sy * sx; across x: sz * sy
    assert a[0b11110000] == pytest.approx(3.0 * 5.0) and a[0b10101010] == pytest.approx(2.0 * 3.0)
    assert a[0] == a[255] == 0.0
    iso = surfel_areas(ISO)
    assert (iso[0b00000001], iso[0b00000011], iso[0b00001111]) == pytest.approx((VERTEX, EDGE, FACE))


def test_defaults_and_diagonal():
    assert default_tolerance((3.0, 1.5, 1.63)) == 3.0
    assert volume_diagonal((2, 3, 4), (3.0, 1.0, 1.0)) == pytest.approx(math.sqrt(36 + 9 + 16))
    with pytest.raises(ValueError, match="three positive voxel sides"):
        default_tolerance((1.0, 0.0, 1.0))


def test_empty_conventions_and_identical_masks():
    z = np.zeros((3, 4, 5), bool)
    m = z.copy()
    m[1, 1:3, 1:4] = True
    assert surface_scores(z, z, ISO, 1.0).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert np.isnan(surface_scores(z, z, ISO, 1.0, empty="skip")).all()
    diag = volume_diagonal(m.shape, (2.0, 1.0, 1.0))
    for empty in ("one", "skip"):
        assert surface_scores(z, m, (2.0, 1.0, 1.0), 1.0, empty=empty).tolist() == [0.0, 0.0, diag, diag]
        assert surface_scores(m, z, (2.0, 1.0, 1.0), 1.0, empty=empty).tolist() == [0.0, 0.0, diag, diag]
    assert surface_scores(m, m, ISO, 0.0).tolist() == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="empty must be one of"):
        surface_scores(m, m, ISO, 1.0, empty="zero")
    with pytest.raises(ValueError, match="tolerance must be a distance"):
        surface_scores(m, m, ISO, -1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        surface_scores(m, m[:, :3], ISO, 1.0)
    with pytest.raises(ValueError, match=r"a 3D mask \(D, H, W\)"):
        mask_surface(m[0], ISO)


def test_truth_surface_is_reused_and_checked():
    rng = np.random.default_rng(3)
    t, p = _blobs(rng, (8, 20, 22)), _blobs(rng, (8, 20, 22))
    sp = (2.5, 0.8, 0.9)
    ts = mask_surface(t, sp)
    assert surface_scores(p, t, sp, 1.0, truth_surface=ts).tolist() == surface_scores(p, t, sp, 1.0).tolist()
    assert len(ts) == len(ts.points) == len(ts.areas) and ts.points.shape[1] == 3 and ts.count == t.sum()
    with pytest.raises(ValueError, match="truth_surface was made for shape"):
        surface_scores(p, t, (2.5, 0.8, 1.0), 1.0, truth_surface=ts)


def test_z_range_hint_reads_only_those_slices():
    rng = np.random.default_rng(4)
    t = np.zeros((10, 16, 18), bool)
    p = np.zeros_like(t)
    t[2:7], p[3:8] = _blobs(rng, (5, 16, 18)), _blobs(rng, (5, 16, 18))
    sp = (2.0, 0.9, 0.9)
    full = surface_scores(p, t, sp, 1.0)
    assert surface_scores(p, t, sp, 1.0, z_range=(2, 8)).tolist() == full.tolist()
    a, b = mask_surface(t, sp), mask_surface(t, sp, z_range=(1, 9))
    assert a.zyx.tolist() == b.zyx.tolist() and a.codes.tolist() == b.codes.tolist()


def test_doctests():
    for mod in (evaluation.surface, evaluation.metric, evaluation.scoring):
        assert doctest.testmod(mod).failed == 0, mod.__name__


# ------------------------------------------------------------------------------------------------ references


@pytest.mark.parametrize("seed", range(8))
def test_equals_reference_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 24, 3))  # includes single slices (1, H, W)
    spacing = (1.0, 1.0, 1.0) if seed % 2 else tuple(float(v) for v in rng.uniform(0.5, 3.0, 3))
    if seed >= 6:  # very anisotropic voxels (thick slices of fine pixels)
        spacing = (6.0, 0.3, 0.4) if seed == 6 else (0.4, 5.0, 0.5)
    t = _blobs(rng, shape, sigma=float(rng.uniform(0.8, 2.5)))
    p = _blobs(rng, shape, sigma=float(rng.uniform(0.8, 2.5))) if seed % 3 else np.roll(t, 1, axis=seed % 3)
    if not t.any() or not p.any():
        t[0, 0, 0] = p[-1, -1, -1] = True
    _assert_as_reference(p, t, spacing, f"seed {seed}")


def test_far_surfaces_equal_reference(monkeypatch):
    # a second blob far from the truth: its surfels are beyond the grid search and go to a KD-tree, on the part of
    # the truth's surface that can hold their nearest surfels (the truth has more than _SMALL surfels)
    t = np.zeros((40, 90, 90), bool)
    t[5:25, 10:50, 10:50] = True
    p = t.copy()
    p[30:38, 60:88, 55:88] = True
    p[8:10, 20:30, 20:30] = False  # a hole inside
    calls = []
    nearest = evaluation.surface._nearest
    monkeypatch.setattr(evaluation.surface, "_nearest", lambda c, b: calls.append(len(b)) or nearest(c, b))
    _assert_as_reference(p, t, (1.0, 1.0, 1.0), "far blob")
    _assert_as_reference(t, p, (2.0, 0.7, 0.7), "far blob, reversed")
    assert len(calls) == 2 and min(calls) > evaluation.surface._SMALL


_REAL: dict = {}


def _real_case_days(labels: Path, manifest: Path, case_days: list[str]):
    if "truth" not in _REAL:
        raw = pd.read_csv(manifest)
        _REAL["truth"] = read_rle_table(labels)
        _REAL["raw"] = raw
        _REAL["man"] = shapes_manifest(raw)
    raw = _REAL["raw"]
    vols = RLEVolumes(_REAL["truth"], _REAL["man"], case_days=case_days)
    out = {}
    for cd in case_days:
        px = raw.loc[raw["id"].str.startswith(cd + "_slice_"), ["px_h_mm", "px_w_mm"]].iloc[0]
        out[cd] = (vols[cd], (3.0, float(px["px_h_mm"]), float(px["px_w_mm"])))
    return out


def _perturbed(vol: np.ndarray, c: int, kind: str) -> np.ndarray:
    t = vol[:, c]
    if kind == "shift_z":
        return np.roll(t, 1, axis=0)
    if kind == "shift_xy":
        return np.roll(t, (1, -1), axis=(1, 2))
    if kind == "erode":
        return ndi.binary_erosion(t)
    if kind == "dilate":
        return ndi.binary_dilation(t)
    if kind == "drop":
        out = t.copy()
        zs = np.flatnonzero(t.any(axis=(1, 2)))
        out[zs[len(zs) // 2]] = False
        return out
    if kind == "second_organ":
        return t | vol[:, (c + 1) % vol.shape[1]]
    raise ValueError(kind)


KINDS = ("shift_z", "shift_xy", "erode", "dilate", "drop", "second_organ")


def test_equals_reference_on_real_labels(real_labels_path, real_manifest_path):
    _reference()
    data = _real_case_days(real_labels_path, real_manifest_path, ["case123_day20", "case2_day1"])
    checked = set()
    i = 0
    for cd, (vol, spacing) in data.items():
        for c in range(vol.shape[1]):
            if not vol[:, c].any():
                continue
            for kind in (KINDS[i % 6], KINDS[(i + 1) % 6]):  # every kind twice, spread over the classes
                p = np.ascontiguousarray(_perturbed(vol, c, kind))
                _assert_as_reference(p, np.ascontiguousarray(vol[:, c]), spacing, f"{cd} class {c} {kind}")
                checked.add(kind)
            i += 2
    assert checked == set(KINDS)


def _atlas(name: str) -> np.ndarray:
    path = ATLASES / f"{name}.nii.gz"
    if not path.is_file():
        pytest.skip(f"mricron-data atlas not found at {path}")
    nib = pytest.importorskip("nibabel")
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.mark.parametrize("name,labels", [("aal", (5, 9)), ("brodmann", (1, 2))])
def test_equals_reference_on_atlas_regions(name, labels):
    _reference()
    atlas = _atlas(name)
    for label in labels:
        region = atlas == label
        lo = np.argwhere(region).min(axis=0) - 3
        hi = np.argwhere(region).max(axis=0) + 4
        t = np.ascontiguousarray(region[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
        for spacing in ((1.0, 1.0, 1.0), (2.5, 0.9, 1.3)):
            _assert_as_reference(ndi.binary_erosion(t), t, spacing, f"{name} {label} eroded")
            _assert_as_reference(np.roll(t, (1, 2), axis=(0, 2)), t, spacing, f"{name} {label} shifted")


def test_nsd_equals_monai_subvoxel_surface_dice():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_surface_dice

    rng = np.random.default_rng(7)
    t = _blobs(rng, (12, 24, 26), sigma=2.0)
    p = np.roll(ndi.binary_erosion(t), 1, axis=2)
    spacing, tol = (3.0, 1.5, 1.2), 1.5

    def onehot(m):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai = float(compute_surface_dice(onehot(p), onehot(t), [tol], spacing=spacing, use_subvoxels=True))
    assert surface_scores(p, t, spacing, tol)[1] == pytest.approx(monai, abs=1e-5)


# ------------------------------------------------------------------------------------------------ scores


def _two_class_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.zeros((6, 2, 18, 20), bool)
    t[:, 0] = _blobs(rng, (6, 18, 20))
    t[0] = False
    p = t.copy()
    p[:, 0] = np.roll(p[:, 0], 1, axis=2)
    p[2, 1, 5:8, 5:9] = True  # class 1: empty in the truth, a false positive in the prediction
    return p, t


def test_score_case_day_adds_surface_per_class():
    p, t = _two_class_case()
    sp = (2.0, 0.8, 0.8)
    plain = score_case_day("v", p, t)
    rec = score_case_day("v", p, t, spacing=sp)
    assert plain.surface is None and plain.tolerance is None
    np.testing.assert_array_equal(rec.distance, plain.distance)
    np.testing.assert_array_equal(rec.dice_sum, plain.dice_sum)
    assert rec.tolerance == 2.0 and rec.surface.shape == (2, 4)
    assert rec.surface[0].tolist() == surface_scores(p[:, 0], t[:, 0], sp, 2.0).tolist()
    diag = volume_diagonal(t[:, 0].shape, sp)
    assert rec.surface[1].tolist() == [0.0, 0.0, diag, diag]
    # both empty: 1, 1, 0, 0 (or NaN)
    e = np.zeros_like(t)
    assert score_case_day("v", e, e, spacing=sp).surface.tolist() == [[1.0, 1.0, 0.0, 0.0]] * 2
    assert np.isnan(score_case_day("v", e, e, empty="skip", spacing=sp).surface).all()
    assert score_case_day("v", p, t, spacing=sp, tolerance=0.5).tolerance == 0.5
    with pytest.raises(ValueError, match="tolerance must be a distance"):
        score_case_day("v", p, t, spacing=sp, tolerance=-1.0)


def test_surfaces_cache_is_filled_and_read():
    p, t = _two_class_case(1)
    sp = (2.0, 0.8, 0.8)
    cache: dict = {}
    first = score_case_day("v", p, t, spacing=sp, surfaces=cache)
    assert isinstance(cache[("truth", 0)], evaluation.surface.Surface)
    keys = [k for k in cache if k[0] != "truth"]
    assert len(keys) == 1 and keys[0][0] == 0 and keys[0][2:] == (2.0, "one")  # class 1 (one empty): no work
    cache[keys[0]] = np.array([0.1, 0.2, 0.3, 0.4])  # a planted value proves the cache is read
    assert score_case_day("v", p, t, spacing=sp, surfaces=cache).surface[0].tolist() == [0.1, 0.2, 0.3, 0.4]
    moved = p.copy()
    moved[:, 0] = np.roll(moved[:, 0], 1, axis=1)
    again = score_case_day("v", moved, t, spacing=sp, surfaces=cache)
    assert again.surface[0].tolist() == surface_scores(moved[:, 0], t[:, 0], sp, 2.0).tolist()
    assert first.surface[0].tolist() != again.surface[0].tolist()


def test_aggregate_columns_and_objectives():
    sp = (2.0, 0.8, 0.8)
    recs = [score_case_day(f"v{i}", *_two_class_case(i), spacing=sp) for i in range(3)]
    res = aggregate(recs, classes=("a", "b"))
    assert res.tolerances == (2.0,) and res.percentile == 95.0 and res.has_surface
    pc = res.per_class.set_index("class")
    table = np.stack([r.surface for r in recs])  # (3, 2, 4)
    for m, name in enumerate(SURFACE_METRICS):
        assert pc.loc["a", name] == pytest.approx(table[:, 0, m].mean())
        assert pc.loc["a", f"{name}_sd"] == pytest.approx(table[:, 0, m].std(ddof=1))
        assert pc.loc["all", name] == pytest.approx(table[:, :, m].mean())
        assert res.per_case_day[f"{name}_b"].tolist() == table[:, 1, m].tolist()
        assert res.per_case_day[name].tolist() == pytest.approx(table[:, :, m].mean(axis=1).tolist())
    # the DSC is the plain 3D Dice of the voxel counts
    d3 = dsc_3d_table(recs, ("a", "b"))
    assert res.per_case_day["dsc_a"].tolist() == d3["dsc_a"].tolist()
    assert res.per_case_day["tolerance"].tolist() == [2.0] * 3
    js = res.to_dict()
    assert js["tolerance_mm"] == [2.0] and js["hausdorff_percentile"] == 95.0
    # objectives: overall and per class
    assert objective_scores(res, "competition")[0] == res.score
    assert objective_scores(res, "competition")[1].tolist() == pc.loc[["a", "b"], "score"].tolist()
    overall, per = objective_scores(res, "nsd")
    assert overall == pytest.approx(table[:, :, 1].mean()) and per.tolist() == pytest.approx(table[:, :, 1].mean(0))
    assert objective_scores(res, "dsc")[1].tolist() == pytest.approx(table[:, :, 0].mean(0).tolist())
    assert OBJECTIVES == ("competition", "dsc", "nsd")
    with pytest.raises(ValueError, match="objective must be one of"):
        objective_scores(res, "hd95")
    plain = aggregate([score_case_day("v", *_two_class_case())], classes=("a", "b"))
    assert not plain.has_surface and "dsc" not in plain.per_class
    with pytest.raises(ValueError, match="needs the surface metrics"):
        objective_scores(plain, "dsc")
    with pytest.raises(ValueError, match="scored without a spacing"):
        aggregate([recs[0], score_case_day("w", *_two_class_case())], classes=("a", "b"))


def test_skip_convention_leaves_both_empty_out():
    sp = (2.0, 0.8, 0.8)
    p, t = _two_class_case(2)
    e = np.zeros_like(t)
    recs = [score_case_day("v", p, t, empty="skip", spacing=sp), score_case_day("w", e, e, empty="skip", spacing=sp)]
    res = aggregate(recs, empty="skip", classes=("a", "b"))
    pc = res.per_class.set_index("class")
    assert pc.loc["a", "nsd"] == recs[0].surface[0, 1] and np.isnan(pc.loc["a", "nsd_sd"])  # one value: no sd
    assert np.isnan(res.per_case_day.loc[1, "dsc"])


def _kaggle_tables(rng: np.random.Generator, cd: str = "case7_day3", d: int = 5, h: int = 24, w: int = 26):
    """Label and prediction tables of one synthetic case-day, its manifest (with the pixel spacing) and volumes."""
    ids = [f"{cd}_slice_{z + 1:04d}" for z in range(d)]
    t = np.zeros((d, 3, h, w), bool)
    for c in range(3):
        t[1:4, c] = _blobs(rng, (3, h, w), sigma=2.0)
    p = np.roll(t, 1, axis=3)
    p[:, 2] = False  # stomach missed
    truth = pd.DataFrame(
        [(i, cls, rle_encode(t[z, c])) for z, i in enumerate(ids) for c, cls in enumerate(CLASSES)],
        columns=["id", "class", "segmentation"],
    )
    pred = pd.DataFrame(
        [(i, cls, rle_encode(p[z, c])) for z, i in enumerate(ids) for c, cls in enumerate(CLASSES)],
        columns=["id", "class", "predicted"],
    )
    man = pd.DataFrame({"id": ids, "width": w, "height": h, "px_w": 1.25, "px_h": 1.5})
    return truth, pred, man, p, t


def test_score_tables_surface_and_report(tmp_path):
    truth, pred, man, p, t = _kaggle_tables(np.random.default_rng(5))
    sp = (3.0, 1.5, 1.25)
    plain = score_tables(read_rle_table(truth), read_rle_table(pred), man)
    res = score_tables(read_rle_table(truth), read_rle_table(pred), man, surface=True)
    assert plain.score == res.score and not plain.has_surface and res.tolerances == (3.0,)
    want = np.stack([surface_scores(p[:, c], t[:, c], sp, 3.0) for c in range(3)])
    pc = res.per_class.set_index("class")
    assert pc.loc[list(CLASSES), "nsd"].tolist() == want[:, 1].tolist()
    assert pc.loc["stomach", "dsc"] == 0.0 and pc.loc["stomach", "hd95"] == volume_diagonal(t[:, 0].shape, sp)
    # the same with another tolerance; without the pixel spacing a clear error
    assert score_tables(read_rle_table(truth), read_rle_table(pred), man, surface=True, tolerance=1.25).tolerances == (
        1.25,
    )
    with pytest.raises(ValueError, match="need each case-day's pixel spacing.*--no-surface"):
        score_tables(read_rle_table(truth), read_rle_table(pred), man.drop(columns=["px_h"]), surface=True)
    # the report: one table, classes then all then case-days, numbers as the result has them
    tab = score_table(res)
    assert tab["row"].tolist() == [*CLASSES, "all", "case7_day3"]
    assert tab["kind"].tolist() == ["class"] * 3 + ["all", "case_day"]
    md = report_markdown(res)
    assert "τ = 3 mm" in md and "Empty convention `one`" in md and "Hausdorff `per_class`" in md
    row = next(line for line in md.splitlines() if line.startswith("| large_bowel |"))
    assert f"{want[0, 1]:.4f}" in row and f"{want[0, 2]:.2f}" in row
    js, md_path = write_report(res, tmp_path / "score.json")
    assert json.loads(js.read_text())["tolerance_mm"] == [3.0] and md_path.read_text() == md
    csv = pd.read_csv(tmp_path / "score.csv")
    assert csv.loc[csv["row"] == "all", "nsd"].item() == pytest.approx(pc.loc["all", "nsd"])


def test_cli_score_prints_the_table(tmp_path, capsys):
    truth, pred, man, p, t = _kaggle_tables(np.random.default_rng(6))
    truth.to_csv(tmp_path / "truth.csv", index=False)
    pred.to_csv(tmp_path / "sub.csv", index=False)
    man.to_csv(tmp_path / "man.csv", index=False)
    base = ["-q", "score", "--truth", str(tmp_path / "truth.csv"), "--pred", str(tmp_path / "sub.csv")]
    base += ["--manifest", str(tmp_path / "man.csv")]
    assert ensembles_main([*base, "--tolerance", "1.5", "--out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    sp = (3.0, 1.5, 1.25)
    nsd = surface_scores(p[:, 1], t[:, 1], sp, 1.5)[1]
    row = next(line for line in out.splitlines() if line.startswith("| small_bowel |"))
    assert f"{nsd:.4f}" in row and "NSD@1.5mm" in out
    js = json.loads((tmp_path / "s.json").read_text())
    assert js["tolerance_mm"] == [1.5]
    assert [r["nsd"] for r in js["per_class"] if r["class"] == "small_bowel"] == [pytest.approx(nsd)]
    # --no-surface: the competition columns only; a manifest without pixel spacing: the same, with a warning
    assert ensembles_main([*base, "--no-surface"]) == 0
    assert "NSD@" not in capsys.readouterr().out
    man.drop(columns=["px_h", "px_w"]).to_csv(tmp_path / "man.csv", index=False)
    assert ensembles_main(base) == 0
    assert "NSD@" not in capsys.readouterr().out


def test_cli_search_passes_objective_and_tolerance(monkeypatch):
    import ensembles.search
    import ensembles.spec

    a = build_parser().parse_args(["search", "--oof", "d", "--truth", "t.csv", "--spec", "s.yaml", "--out", "o.yaml"])
    assert a.objective == "competition" and a.tolerance is None
    seen = {}

    def fake_run_search(*args, **kwargs):
        seen.update(kwargs)
        res = aggregate([score_case_day("v", *_two_class_case())], classes=("a", "b"))
        return None, res, res

    monkeypatch.setattr(ensembles.search, "run_search", fake_run_search)
    monkeypatch.setattr(ensembles.search, "classes_of_items", lambda items: None)
    monkeypatch.setattr(ensembles.spec, "load_spec", lambda path, classes=None: object())
    argv = ["search", "--oof", "d", "--truth", "t.csv", "--spec", "s.yaml", "--out", "o.yaml"]
    assert ensembles_main([*argv, "--objective", "nsd", "--tolerance", "2"]) == 0
    assert seen["objective"] == "nsd" and seen["tolerance"] == 2.0
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--objective", "hd95"])


def test_score_folders_surface(tmp_path, monkeypatch):
    import importlib.util

    from data_prep.work import read_dataset
    from evaluation.predictions import PREDICTION_FORMATS, PredictionIndex
    from evaluation.scoring import score_folders

    repo = Path(__file__).resolve().parents[2]
    path = repo / "tests" / "inference" / "nclass_fixtures.py"
    spec = importlib.util.spec_from_file_location("nclass_fixtures", path)
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)
    fmt = fx.fake_format()
    monkeypatch.setitem(PREDICTION_FORMATS, "slices", fmt)
    work, truth = fx.make_work(tmp_path / "work", keys=("v1", "v2"), shape=(5, 14, 16))
    info = read_dataset(work)
    truth_dir = fx.write_truth_folder(work, tmp_path / "truth", fmt)
    index = PredictionIndex(tmp_path / "pred", {"format": "slices"})
    pred = {k: np.roll(v, 1, axis=3) for k, v in truth.items()}
    for k, v in pred.items():
        index.add(k, fmt.write_prediction(v, info, k, tmp_path / "pred"))
    res = score_folders(truth_dir, tmp_path / "pred", info, surface=True, tolerance=0.8)
    sp = info.volumes["v2"].spacing
    want = surface_scores(pred["v2"][:, 3], truth["v2"][:, 3], sp, 0.8)
    row = res.per_case_day.set_index("case_day").loc["v2"]
    assert [row[f"{m}_{info.classes[3]}"] for m in SURFACE_METRICS] == want.tolist()
    assert res.per_class["dsc"].tolist() == pytest.approx(res.per_class["dsc_3d"].tolist())
