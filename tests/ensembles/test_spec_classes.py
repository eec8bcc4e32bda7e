"""Ensembles for any class list: per-class spec values by name or position, specs refused for other classes, the
one-class-per-pixel rule of exclusive classes, and the search on 5 classes (exclusive and overlapping) with the
truth from the WORK folder."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ensembles import core
from ensembles.__main__ import main as ensembles_main
from ensembles.search import Evaluator, Params, parse_oof, run_search
from ensembles.spec import SpecError, load_spec, validate_spec
from evaluation.metric import aggregate, score_case_day

REPO = Path(__file__).resolve().parents[2]
_fx = importlib.util.spec_from_file_location("nclass_fixtures", REPO / "tests" / "inference" / "nclass_fixtures.py")
fx = importlib.util.module_from_spec(_fx)
_fx.loader.exec_module(fx)
FIVE = fx.FIVE


def _raw(**over) -> dict:
    raw = {
        "name": "t",
        "folds": [0],
        "models": [
            {"name": "good", "kind": "2.5d", "config": "good.py", "checkpoints": "g{fold}", "weight": 1},
            {"name": "bad", "kind": "2.5d", "config": "bad.py", "checkpoints": "b{fold}", "weight": 1},
        ],
        "thresholds": 0.75,
    }
    raw.update(over)
    return raw


def test_per_class_values_by_name_or_position():
    by_name = dict(zip(FIVE, [0.1, 0.2, 0.3, 0.4, 0.5]))
    s = validate_spec(_raw(thresholds=by_name, post={"min_component": [0, 1, 2, 3, 4]}), "s.yaml", classes=FIVE)
    assert s.thresholds == [0.1, 0.2, 0.3, 0.4, 0.5] and s.post["min_component"] == [0, 1, 2, 3, 4]
    assert s.classes == FIVE and s.classes_named
    again = validate_spec(yaml.safe_load(s.dump()), "dump.yaml")  # the dump names its classes
    assert again.classes == FIVE and again.thresholds == s.thresholds
    with pytest.raises(SpecError, match="names unknown class 'kidney_x'.*did you mean 'kidney_r'"):
        validate_spec(_raw(thresholds={**by_name, "kidney_x": 0.2}), "s.yaml", classes=FIVE)
    with pytest.raises(SpecError, match=r"must name every class; missing \['pancreas'\]"):
        validate_spec(_raw(thresholds={c: 0.5 for c in FIVE[:4]}), "s.yaml", classes=FIVE)
    with pytest.raises(SpecError, match="one number or 5"):
        validate_spec(_raw(thresholds=[0.4, 0.5, 0.6]), "s.yaml", classes=FIVE)
    # a spec without classes holds for the Kaggle layout; taken for 5 classes when its values are scalars
    kaggle = validate_spec(_raw(), "k.yaml")
    assert kaggle.classes == ("large_bowel", "small_bowel", "stomach") and not kaggle.classes_named
    assert kaggle.for_classes(FIVE).classes == FIVE
    with pytest.raises(SpecError, match="max_prob_floor gives 3 values.*5 classes"):
        validate_spec(_raw(post={"max_prob_floor": [0.5, 0.5, 0.4]}), "k.yaml").for_classes(FIVE)
    with pytest.raises(SpecError, match=r"spec is for classes \['liver'.*the data has \['a', 'b'\]"):
        s.for_classes(("a", "b"))
    with pytest.raises(SpecError, match="spec is for classes"):
        validate_spec(_raw(classes=list(FIVE)), "s.yaml", classes=("a", "b"))


def test_exclusive_rule_by_hand():
    p = np.zeros((1, 3, 2, 2), np.float32)
    p[0, :, 0, 0] = [0.6, 0.9, 0.2]  # two over 0.5: class 1
    p[0, :, 0, 1] = [0.7, 0.1, 0.7]  # a tie: class 0
    p[0, :, 1, 0] = [0.2, 0.3, 0.4]  # none
    p[0, :, 1, 1] = [0.1, 0.1, 0.8]  # one: class 2
    m = core.postprocess(p, 0.5, exclusive_classes=True)
    assert m[0].argmax(axis=0).tolist() == [[1, 0], [0, 2]] and m.sum(axis=1).tolist() == [[[1, 1], [0, 1]]]
    assert core.postprocess(p, 0.5).sum() == 5  # overlapping classes keep both


@pytest.fixture(params=["overlapping", "exclusive"])
def five(request, tmp_path):
    """A 5-class WORK, a good and a bad model's OOF folders (two folds), and a spec at a poor threshold."""
    kind = request.param
    work, truth = fx.make_work(tmp_path / "work", label_kind=kind, keys=("v1", "v2", "v3", "v4"), shape=(6, 16, 20))
    rng = np.random.default_rng(1)
    good = {k: 0.7 * t + 0.1 * rng.random(t.shape) for k, t in truth.items()}
    bad = {k: 0.5 * np.roll(t, 4, axis=3) + 0.3 * rng.random(t.shape) for k, t in truth.items()}
    for name, probs in (("good", good), ("bad", bad)):
        fx.write_probdir(tmp_path / name / "f0", {k: probs[k] for k in ("v1", "v2")}, FIVE, f"{name}.py")
        fx.write_probdir(tmp_path / name / "f1", {k: probs[k] for k in ("v3", "v4")}, FIVE, f"{name}.py")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(_raw()))
    items = [f"{m}={tmp_path / m / f}" for m in ("good", "bad") for f in ("f0", "f1")]
    return tmp_path, work, truth, items, kind


def test_search_five_classes_with_the_work_as_truth(five):
    tmp, work, truth, items, kind = five
    spec = load_spec(tmp / "spec.yaml", root=tmp)  # no classes: taken for the folders' five
    tuned, before, after = run_search(spec, items, None, tmp / "tuned.yaml", work=work, log=lambda m: None)
    assert after.score > before.score + 0.05
    assert tuned.model("good").weight > tuned.model("bad").weight
    assert tuned.classes == FIVE and len(tuned.thresholds) == 5 and max(tuned.thresholds) < 0.75
    again = load_spec(tmp / "tuned.yaml", root=tmp)
    assert again.classes == FIVE and again.classes_named and again.thresholds == tuned.thresholds
    rep = pd.read_csv(tmp / "tuned_report.csv")
    assert rep["class"].tolist() == [*FIVE, "all"] and rep.loc[5, "score_after"] == pytest.approx(after.score)
    with pytest.raises(ValueError, match="label table .* Kaggle layout's classes.*--work"):
        run_search(spec, items, _kaggle_labels(tmp), tmp / "x.yaml")


def _kaggle_labels(tmp: Path) -> Path:
    pd.DataFrame(columns=["id", "class", "segmentation"]).to_csv(tmp / "train.csv", index=False)
    return tmp / "train.csv"


def test_evaluator_equals_the_metric_with_the_exclusive_rule(five):
    tmp, work, truth, items, kind = five
    spec = load_spec(tmp / "spec.yaml", root=tmp)
    ev = Evaluator(spec, parse_oof(spec, items), work)
    assert ev.classes == FIVE and ev.exclusive == (kind == "exclusive")
    cand = Params.from_spec(ev.spec, ev.models, ev.exclusive)
    cand.thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.35])
    got = ev([cand])[0]
    manual = []
    for k, t in truth.items():
        f = "f0" if k in ("v1", "v2") else "f1"
        p = {m: np.load(tmp / m / f / f"{k}.npy").astype(np.float32) for m in ("good", "bad")}
        fused = (p["good"] + p["bad"]) / np.float32(2)
        pred = fused > cand.thresholds.astype(np.float32)[None, :, None, None]
        if kind == "exclusive":
            pred = core.exclusive(pred, fused)
            assert pred.sum(axis=1).max() == 1
        manual.append(score_case_day(k, pred, t))
    want = aggregate(manual, classes=FIVE)
    assert got.score == pytest.approx(want.score, abs=1e-12)
    assert got.per_class["class"].tolist() == [*FIVE, "all"]
    # one more candidate differing in one class's threshold is scored once more, and only then
    other = copy.deepcopy(cand)
    other.thresholds[4] = 0.7
    ev([cand, other])
    assert ev.n_evals == 2


def test_search_cli_with_work(five):
    tmp, work, truth, items, kind = five
    argv = ["-q", "search", "--oof", *items, "--work", str(work), "--spec", str(tmp / "spec.yaml")]
    assert ensembles_main([*argv, "--out", str(tmp / "cli.yaml"), "--steps", "thresholds"]) == 0
    tuned = yaml.safe_load((tmp / "cli.yaml").read_text())
    assert tuned["classes"] == list(FIVE) and len(tuned["thresholds"]) == 5
    assert ensembles_main([*argv, "--out", str(tmp / "cli.yaml")]) == 2  # exists: --overwrite
