"""The incremental search equals today's loop exactly, for every objective.

``OldLoop`` is the evaluation as it was before the caches: for every batch of candidates each case-day's maps are
read, each candidate is fused, gated, thresholded and post-processed by :func:`ensembles.core.ensemble` (the rule
inference runs) and scored in full by :func:`evaluation.metric.score_case_day`. The search run on it and on the
incremental :class:`Evaluator` (in this process and in 2 workers, with and without a cache budget) must evaluate
the same candidates, get bit-identical scores and choose the same values, on seeded OOF sets that exercise every
step: a classifier gate and a U-Net count gate, 2.5D and 3D models, floors and component sizes in 2D and 3D, the
``union`` Hausdorff and the ``skip`` empty convention, exclusive classes, and thresholds under the kept support.
With ``objective="nsd"`` every record equals :func:`evaluation.metric.score_case_day` with the spacing (surface
metrics included); with ``"dsc"`` the DSC (from voxel counts, no surface) equals that function's.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import yaml

from common.probmaps import ProbDir
from data_prep.constants import CLASSES
from data_prep.layout import read_rle_table
from data_prep.rle import rle_encode
from ensembles import core
from ensembles.search import (
    Evaluator,
    Params,
    _apply,
    _remove_small,
    _Support,
    _truth_masks,
    objective_values,
    parse_oof,
    read_classifier_oof,
    search,
)
from ensembles.spec import validate_spec
from evaluation.metric import aggregate, score_case_day

REPO = Path(__file__).resolve().parents[2]
_fx = importlib.util.spec_from_file_location("nclass_fixtures", REPO / "tests" / "inference" / "nclass_fixtures.py")
fx = importlib.util.module_from_spec(_fx)
_fx.loader.exec_module(fx)

CDS = ["case1_day0", "case1_day3", "case7_day2", "case9_day1", "case12_day4"]
D, H, W = 7, 18, 22


class OldLoop(Evaluator):
    """Today's evaluation (see the module docstring): no cache but the scores of whole candidates."""

    def _score(self, cands: list[Params]) -> list:
        per_cd = []
        for cd in self.case_days:
            probs = {n: ProbDir(self.where[n][cd]).load(cd) for n in self.models}
            gate = None
            if self.gate_models:
                weights = [self.spec.model(n).weight for n in self.gate_models]
                gate = core.fuse([ProbDir(self.where[n][cd]).load(cd) for n in self.gate_models], weights)
            cls = None if self.cls_probs is None else self.cls_probs.loc[self.ids[cd]].to_numpy(np.float64)
            job = self._job(cd)
            truth = _truth_masks(job.truth, cd, job.ids, job.hw)
            shape = next(iter(probs.values())).shape
            recs = []
            for p in cands:
                keep = None
                if cls is not None or gate is not None:
                    keep = core.gate_keep(p.gate, shape[:2], cls_probs=cls, gate_probs=gate)
                maps = [core.ModelMap(n, self.kinds[n], p.weights[n], probs[n]) for n in self.models]
                post = {"max_prob_floor": p.floor, "min_component": p.min_component, "component_mode": p.component_mode}
                fusion = {"weight_2d": p.weight_2d, "weight_3d": p.weight_3d}
                _, masks = core.ensemble(maps, shape, fusion, keep, p.thresholds, post, p.exclusive)
                spacing = None
                if self.objective != "competition":  # dsc: any spacing gives the DSC column
                    spacing = self.spacing[cd] if self.objective == "nsd" else (1.0, 1.0, 1.0)
                recs.append(
                    score_case_day(
                        cd, masks, truth, self.empty, self.hausdorff, spacing=spacing, tolerance=self.tolerance
                    )
                )
            per_cd.append(recs)
        self.n_evals += len(cands)
        return [aggregate([r[i] for r in per_cd], self.empty, self.hausdorff, self.classes) for i in range(len(cands))]


def _truth(rng: np.random.Generator, n: int = 3) -> np.ndarray:
    m = np.zeros((D, n, H, W), bool)
    for c in range(n):
        f = ndi.gaussian_filter(rng.random((D, H, W)), (1, 2.5, 2.5))
        m[:, c] = f > np.quantile(f, 0.85)
    m[0] = False
    m[-1, 1] = False
    return m


def _models(truth: dict[str, np.ndarray], seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Seeded maps with different errors: blurred and noisy (good), shifted with a false blob (bad), smooth with
    noise (m3, the 3D model), and a very noisy one (a support that is not sparse)."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {"good": {}, "bad": {}, "m3": {}, "noisy": {}}
    for cd, t in truth.items():
        tf = t.astype(np.float32)
        out["good"][cd] = np.clip(0.75 * ndi.gaussian_filter(tf, (0, 0, 1, 1)) + 0.15 * rng.random(t.shape), 0, 1)
        bad = 0.55 * np.roll(tf, 3, axis=3) + 0.25 * rng.random(t.shape)
        bad[2, :, 2:6, 2:6] = 0.9
        out["bad"][cd] = np.clip(bad, 0, 1)
        out["m3"][cd] = np.clip(0.6 * ndi.gaussian_filter(tf, (1, 0, 1.5, 1.5)) + 0.2 * rng.random(t.shape), 0, 1)
        out["noisy"][cd] = np.clip(0.4 * tf + 0.6 * rng.random(t.shape), 0, 1)
    return out


def _write(path: Path, probs: dict[str, np.ndarray], classes, config: str, ids) -> None:
    fx.write_probdir(path, probs, tuple(classes), config)
    # the slice ids of the Kaggle layout (the fixture writes its own)
    meta = json.loads((path / "meta.json").read_text())
    meta["case_days"] = {cd: ids(cd, len(p)) for cd, p in probs.items()}
    (path / "meta.json").write_text(json.dumps(meta))


def _kaggle_ids(cd: str, d: int) -> list[str]:
    return [f"{cd}_slice_{z + 1:04d}" for z in range(d)]


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    """RLE truth of 5 case-days, 4 segmenters and a gate U-Net in two folds each, classifier probabilities."""
    root = tmp_path_factory.mktemp("kaggle")
    rng = np.random.default_rng(3)
    truth = {cd: _truth(rng) for cd in CDS}
    rows = [
        (f"{cd}_slice_{z + 1:04d}", cls, rle_encode(m[z, c]))
        for cd, m in truth.items()
        for z in range(D)
        for c, cls in enumerate(CLASSES)
    ]
    pd.DataFrame(rows, columns=["id", "class", "segmentation"]).to_csv(root / "train.csv", index=False)
    maps = _models(truth, 4)
    maps["gate"] = {cd: np.clip(p + 0.05, 0, 1) for cd, p in maps["good"].items()}
    for name, probs in maps.items():
        _write(root / name / "f0", {cd: probs[cd] for cd in CDS[:2]}, CLASSES, f"{name}.py", _kaggle_ids)
        _write(root / name / "f1", {cd: probs[cd] for cd in CDS[2:]}, CLASSES, f"{name}.py", _kaggle_ids)
    cls_rows = []
    for cd, t in truth.items():
        present = t.reshape(D, 3, -1).any(-1)
        for z in range(D):
            p = np.where(present[z], 0.85, 0.15) + 0.1 * rng.random(3) - 0.05
            cls_rows.append((f"{cd}_slice_{z + 1:04d}", *p.tolist()))
    pd.DataFrame(cls_rows, columns=["id", *CLASSES]).to_csv(root / "cls_probs.csv", index=False)
    man = [(f"{cd}_slice_{z + 1:04d}", W, H, 1.5 + 0.1 * i, 1.6) for i, cd in enumerate(CDS) for z in range(D)]
    pd.DataFrame(man, columns=["id", "width", "height", "px_h", "px_w"]).to_csv(root / "manifest.csv", index=False)
    return root


def _spec(models: list[dict], **over):
    return validate_spec(_raw_spec(models, **over), "t.yaml")


def _raw_spec(models: list[dict], **over) -> dict:
    raw = {
        "name": "t",
        "folds": [0, 1],
        "models": models,
        "thresholds": 0.5,
        "post": {"max_prob_floor": 0.0, "min_component": 0, "component_mode": "2d"},
    }
    raw.update(over)
    return raw


def _seg(name: str, kind: str = "2.5d", weight: float = 1.0, role: str = "segment") -> dict:
    return {
        "name": name,
        "kind": kind,
        "role": role,
        "config": f"{name}.py",
        "checkpoints": "c{fold}",
        "weight": weight,
    }


def _items(root: Path, names) -> list[str]:
    return [f"{n}={root / n / f}" for n in names for f in ("f0", "f1")]


def _same(a, b) -> None:
    """Bit-identical score results."""
    assert a.score == b.score and a.dice == b.dice and a.hausdorff == b.hausdorff
    pd.testing.assert_frame_equal(a.per_class, b.per_class, check_exact=True)
    pd.testing.assert_frame_equal(a.per_case_day, b.per_case_day, check_exact=True)


def _compare(make, steps=None, setups=({}, {"workers": 2, "cache_mb": 0})) -> dict:
    """Run the search on ``OldLoop`` and on the incremental evaluator in each set-up (``Evaluator`` options);
    every candidate, score and choice equal."""
    old = make(OldLoop, {})
    kw = {} if steps is None else {"steps": steps}
    p_old, b_old, a_old = search(old.spec, old, lambda m: None, **kw)
    for opts in setups:
        with make(Evaluator, opts) as ev:
            p_new, b_new, a_new = search(ev.spec, ev, lambda m: None, **kw)
            assert ev.n_evals == old.n_evals and list(ev._scores) == list(old._scores), opts
            for k in old._scores:
                _same(ev._scores[k], old._scores[k])
            _same(b_new, b_old)
            _same(a_new, a_old)
            assert p_new.weights == p_old.weights and (p_new.weight_2d, p_new.weight_3d) == (
                p_old.weight_2d,
                p_old.weight_3d,
            )
            for attr in ("thresholds", "floor", "min_component"):
                assert np.array_equal(getattr(p_new, attr), getattr(p_old, attr)), attr
            assert p_new.gate == p_old.gate
            stats = ev.stats()
    assert a_old.score > b_old.score  # the search did something
    assert stats["cache_bytes"] == 0 or setups[-1].get("cache_mb") != 0  # a budget of 0 keeps nothing
    return {**stats, "exclusive": ev.exclusive}


def test_classifier_gate_3d_floors_and_components_equal_the_old_loop(kaggle):
    models = [_seg("good"), _seg("bad", weight=2.0), _seg("m3", "3d"), {**_seg("cls", "classifier"), "weight": 1}]
    spec = _spec(
        models,
        gate={"method": "classifier", "thresholds": 0.3, "smooth": 1},
        fusion={"weight_2d": 0.6, "weight_3d": 0.4},
        post={"max_prob_floor": [0.0, 0.5, 0.6], "min_component": [0, 4, 9], "component_mode": "2d"},
    )
    items = _items(kaggle, ("good", "bad", "m3"))
    cls = read_classifier_oof(spec, [f"cls={kaggle / 'cls_probs.csv'}"])
    truth = read_rle_table(kaggle / "train.csv")

    def make(cls_, opts):
        return cls_(spec, parse_oof(spec, items), truth, cls_probs=cls, **opts)

    stats = _compare(make, setups=({"workers": 2},))
    # trial candidates made of per-class choices already scored cost nothing
    assert stats["cached_candidates"] >= 5 * 4


def test_union_skip_3d_components_and_a_gate_unet_equal_the_old_loop(kaggle):
    models = [_seg("good"), _seg("bad"), _seg("gate", role="gate")]
    spec = _spec(
        models,
        gate={"method": "unet_count", "pixel_thr": 0.6, "min_pixels": 4},
        thresholds=[0.45, 0.5, 0.55],
        post={"max_prob_floor": 0.4, "min_component": [10, 0, 25], "component_mode": "3d"},
    )
    items = _items(kaggle, ("good", "bad", "gate"))
    truth = read_rle_table(kaggle / "train.csv")

    def make(cls_, opts):
        return cls_(spec, parse_oof(spec, items), truth, None, "skip", "union", **opts)

    _compare(make)


def test_low_thresholds_and_a_dense_support_equal_the_old_loop(kaggle):
    """Start under the kept level (0.1: the support is rebuilt lower) with a model whose noise fills the maps."""
    spec = _spec([_seg("good"), _seg("noisy")], thresholds=0.1)
    items = _items(kaggle, ("good", "noisy"))
    truth = read_rle_table(kaggle / "train.csv")

    def make(cls_, opts):
        return cls_(spec, parse_oof(spec, items), truth, **opts)

    _compare(make, steps=("thresholds", "weights", "floor"))
    # a support kept from 0.3 up, then candidates under it: rebuilt lower, the same scores as the old loop
    spec = _spec([_seg("good"), _seg("bad")])
    items = _items(kaggle, ("good", "bad"))
    cands = []
    for t in (0.5, 0.1, 0.35, 0.0):
        p = Params.from_spec(spec, ["good", "bad"])
        p.thresholds = np.array([t, 0.5, t])
        cands.append(p)
    old = make(OldLoop, {})
    with make(Evaluator, {}) as ev:
        for p in cands:  # one by one: each call sees the support the previous one left
            _same(ev([p])[0], old([p])[0])
        assert ev.stats()["supports"] == 3 * len(CDS)  # at 0.3 (for 0.5), 0.1, 0.0


@pytest.mark.parametrize("kind", ["exclusive", "overlapping"])
def test_five_classes_from_a_work_equal_the_old_loop(tmp_path, kind):
    keys = ("v1", "v2", "v3")
    work, truth = fx.make_work(tmp_path / "work", label_kind=kind, keys=keys, shape=(6, 16, 20), seed=2)
    maps = _models(truth, 5)
    for name in ("good", "bad"):
        fx.write_probdir(tmp_path / name / "f0", {k: maps[name][k] for k in keys[:1]}, fx.FIVE, f"{name}.py")
        fx.write_probdir(tmp_path / name / "f1", {k: maps[name][k] for k in keys[1:]}, fx.FIVE, f"{name}.py")
    spec = _spec([_seg("good"), _seg("bad")], thresholds=0.6, post={"max_prob_floor": 0.5, "min_component": 3})
    items = _items(tmp_path, ("good", "bad"))

    def make(cls_, opts):
        return cls_(spec, parse_oof(spec, items), work, **opts)

    assert _compare(make)["exclusive"] == (kind == "exclusive")


def test_masks_class_by_class_equal_the_rule_on_random_candidates():
    """:func:`_apply` (the support, the fusion on it, class-by-class masks) against :func:`core.ensemble` on random
    weights (zeros too), thresholds (0 and 1 too), floors, component sizes, gates and both label kinds."""
    rng = np.random.default_rng(11)
    t = _truth(rng, 4)
    probs = {
        "a": np.clip(0.7 * t + 0.2 * rng.random(t.shape), 0, 1).astype(np.float32),
        "b": np.clip(0.5 * np.roll(t, 1, axis=2) + 0.25 * rng.random(t.shape), 0, 1).astype(np.float16),
        "c": rng.random(t.shape).astype(np.float32) ** 20,
    }
    # at the kept level every class's support is sparse; under 0.2 they are dense (fused from the maps)
    assert all(part is not None for part in _Support.build(list(probs.values()), 0.3).parts)
    assert all(part is None for part in _Support.build(list(probs.values()), 0.2).parts)
    kinds = {"a": "2.5d", "b": "2.5d", "c": "3d"}
    cls_probs = rng.random((D, 4))
    for i in range(60):
        p = Params(
            weights={n: float(rng.choice([0.0, 0.5, 1.0, 2.5])) for n in probs},
            weight_2d=float(rng.choice([0.0, 0.3, 1.0])),
            weight_3d=float(rng.choice([0.0, 0.7])),
            thresholds=rng.choice([0.3, 0.3001, 0.45, 0.5, 0.7, 1.0], 4) if i % 5 else rng.choice([0.0, 0.2, 0.6], 4),
            floor=rng.choice([0.0, 0.0, 0.4, 0.6, 0.8], 4),
            min_component=rng.choice([0, 0, 1, 3, 12], 4),
            component_mode=str(rng.choice(["2d", "3d"])),
            gate={"method": "classifier", "thresholds": rng.choice([0.0, 0.3, 0.6], 4).tolist(), "smooth": 1},
            exclusive=bool(i % 2),
        )
        gated = i % 3 != 0
        maps = [core.ModelMap(n, kinds[n], p.weights[n], probs[n]) for n in probs]
        keep = core.gate_keep(p.gate, (D, 4), cls_probs=cls_probs) if gated else None
        post = {"max_prob_floor": p.floor, "min_component": p.min_component, "component_mode": p.component_mode}
        fusion = {"weight_2d": p.weight_2d, "weight_3d": p.weight_3d}
        _, want = core.ensemble(maps, t.shape, fusion, keep, p.thresholds, post, p.exclusive)
        got = _apply(copy.deepcopy(p), probs, kinds, cls_probs if gated else None, None)
        assert got.dtype == bool and got.shape == want.shape
        assert np.array_equal(got, want), (i, p)


def _same_dsc(a, b) -> None:
    """Equal competition scores and equal DSC (the DSC objective's records carry no other surface metric)."""
    assert a.score == b.score
    pd.testing.assert_frame_equal(a.per_case_day[b.per_case_day.columns[:10]], b.per_case_day.iloc[:, :10])
    (oa, pa), (ob, pb) = objective_values(a, "dsc"), objective_values(b, "dsc")
    assert oa == ob and np.array_equal(pa, pb)


@pytest.mark.parametrize("objective, tolerance", [("nsd", None), ("nsd", 2.0), ("dsc", None)])
def test_surface_objectives_equal_score_case_day_with_the_spacing(kaggle, objective, tolerance):
    """NSD at one voxel (3 mm here) and at 2 mm, and DSC: the search on the incremental evaluator chooses what the
    old loop scoring every candidate with ``score_case_day(spacing=...)`` chooses, with the same records."""
    models = [_seg("good"), _seg("bad", weight=2.0), _seg("m3", "3d")]
    spec = _spec(models, fusion={"weight_2d": 0.6, "weight_3d": 0.4}, post={"max_prob_floor": 0.0, "min_component": 4})
    items = _items(kaggle, ("good", "bad", "m3"))
    truth = read_rle_table(kaggle / "train.csv")
    manifest = pd.read_csv(kaggle / "manifest.csv")
    kw = {"objective": objective, "tolerance": tolerance}
    old = OldLoop(spec, parse_oof(spec, items), truth, manifest, **kw)
    p_old, b_old, a_old = search(old.spec, old, lambda m: None)
    with Evaluator(spec, parse_oof(spec, items), truth, manifest, workers=2, **kw) as ev:
        assert ev.spacing == (
            None if objective == "dsc" else {cd: (3.0, 1.5 + 0.1 * i, 1.6) for i, cd in enumerate(CDS)}
        )
        p_new, b_new, a_new = search(ev.spec, ev, lambda m: None)
        assert list(ev._scores) == list(old._scores)
        for k in old._scores:
            (_same if objective == "nsd" else _same_dsc)(ev._scores[k], old._scores[k])
        stats = ev.stats()
    assert p_new.weights == p_old.weights and np.array_equal(p_new.thresholds, p_old.thresholds)
    assert np.array_equal(p_new.min_component, p_old.min_component) and p_new.weight_2d == p_old.weight_2d
    before, after = objective_values(b_new, objective)[0], objective_values(a_new, objective)[0]
    assert after > before
    if objective == "nsd":
        assert a_new.tolerances == ((2.0,) if tolerance else (3.0,)) and stats["surfaces"] > 0
    else:
        assert stats.get("surfaces", 0) == 0  # the DSC comes from voxel counts


def test_objective_errors_report_and_cli(kaggle, tmp_path):
    from ensembles.__main__ import main as ensembles_main

    spec = _spec([_seg("good"), _seg("bad")])
    items = _items(kaggle, ("good", "bad"))
    truth = read_rle_table(kaggle / "train.csv")
    no_px = pd.read_csv(kaggle / "manifest.csv")[["id", "width", "height"]]
    with pytest.raises(
        ValueError, match=r"'nsd' scores surfaces in mm.*no pixel spacing of \['case12_day4'.*--data-root"
    ):
        Evaluator(spec, parse_oof(spec, items), truth, no_px, objective="nsd")
    with pytest.raises(ValueError, match="objective must be one of competition, dsc, nsd, got 'hd95'"):
        Evaluator(spec, parse_oof(spec, items), truth, objective="hd95")
    with Evaluator(spec, parse_oof(spec, items), truth) as ev, pytest.raises(ValueError, match="make it with"):
        search(ev.spec, ev, lambda m: None, objective="nsd")
    # the DSC needs no spacing; competition computes no surface
    assert Evaluator(spec, parse_oof(spec, items), truth, no_px, objective="dsc").spacing is None
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(_raw_spec([_seg("good"), _seg("bad")])))
    argv = [
        "-q",
        "search",
        "--oof",
        *items,
        "--truth",
        str(kaggle / "train.csv"),
        "--spec",
        str(tmp_path / "spec.yaml"),
    ]
    argv += ["--manifest", str(kaggle / "manifest.csv"), "--steps", "thresholds", "--out", str(tmp_path / "t.yaml")]
    assert ensembles_main([*argv, "--objective", "nsd", "--tolerance", "2"]) == 0
    rep = pd.read_csv(tmp_path / "t_report.csv")
    assert rep.columns[:3].tolist() == ["class", "nsd_before", "nsd_after"] and rep["class"].tolist()[-1] == "all"
    assert rep["nsd_after"].iloc[-1] > rep["nsd_before"].iloc[-1]
    md = (tmp_path / "t_report.md").read_text()
    assert "objective: the mean NSD at 2 mm" in md
    assert (tmp_path / "t.yaml").read_text().startswith("# tuned from") and "nsd " in (tmp_path / "t.yaml").read_text()


def test_nsd_with_the_spacing_of_a_work(tmp_path):
    """A WORK's volumes give the spacing (``dataset.json``: 2.5 x 0.7 x 0.8 mm, one voxel = 2.5 mm)."""
    keys = ("v1", "v2")
    work, truth = fx.make_work(tmp_path / "work", label_kind="exclusive", keys=keys, shape=(6, 16, 20), seed=4)
    maps = _models(truth, 6)
    for name in ("good", "bad"):
        fx.write_probdir(tmp_path / name / "f0", {k: maps[name][k] for k in keys}, fx.FIVE, f"{name}.py")
    spec = _spec([_seg("good"), _seg("bad")], folds=[0])
    items = [f"{n}={tmp_path / n / 'f0'}" for n in ("good", "bad")]
    old = OldLoop(spec, parse_oof(spec, items), work, objective="nsd")
    p_old, *_ = search(old.spec, old, lambda m: None, steps=("thresholds", "weights"))
    with Evaluator(spec, parse_oof(spec, items), work, objective="nsd") as ev:
        assert ev.spacing == dict.fromkeys(keys, fx.SPACING) and ev.tolerance_text() == "1 voxel = 2.5 mm"
        p_new, *_ = search(ev.spec, ev, lambda m: None, steps=("thresholds", "weights"))
        for k in old._scores:
            _same(ev._scores[k], old._scores[k])
    assert np.array_equal(p_new.thresholds, p_old.thresholds) and p_new.weights == p_old.weights


def test_remove_small_on_voxel_indices_equals_the_rule():
    """``_remove_small`` (on the slices that hold voxels) equals ``core.remove_small`` on the whole volume, in 2D
    and 3D, also for slices taller than wide, where ``cc3d.dust`` depends on the slice's shape (a crop would not
    do: it keeps a lone last-row pixel of a 5 x 2 slice, and removes it from a 5 x 5 one)."""
    rng = np.random.default_rng(0)
    for _ in range(150):
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 20)), int(rng.integers(1, 20)))
        m = ndi.gaussian_filter(rng.random(shape), (0, 1, 1)) > rng.uniform(0.5, 0.6)
        if not m.any():
            continue
        for n in (2, 4, 9):
            for mode in ("2d", "3d"):
                want = core.remove_small(m[:, None], [n], mode)[:, 0]
                got = _remove_small(np.flatnonzero(m), shape, n, mode)
                assert np.array_equal(got, np.flatnonzero(want)), (shape, n, mode)
    lone = np.zeros((2, 5, 2), bool)
    lone[1, 4, 0] = True
    assert core.remove_small(lone[:, None], [2])[1, 0, 4, 0]  # the quirk, kept by the rule itself
    assert np.array_equal(_remove_small(np.flatnonzero(lone), lone.shape, 2, "2d"), [np.flatnonzero(lone)[0]])
