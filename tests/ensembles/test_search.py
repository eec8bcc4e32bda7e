"""Search on out-of-fold probability folders: improves the score, writes the tuned spec and report, refuses
folders whose case-day sets differ."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import yaml

from data_prep.constants import CLASSES
from data_prep.layout import read_rle_table
from data_prep.rle import decode_case_day, rle_encode
from ensembles.search import Evaluator, Params, parse_oof, run_search
from ensembles.spec import load_spec, validate_spec
from evaluation.metric import aggregate, score_case_day

REPO = Path(__file__).resolve().parents[2]
CDS = ["case1_day0", "case1_day1", "case2_day0", "case3_day5"]
D, H, W = 6, 20, 24


def _truth(rng):
    out = {}
    for cd in CDS:
        m = np.zeros((D, 3, H, W), bool)
        for c in range(3):
            f = ndi.gaussian_filter(rng.random((D, H, W)), (1, 3, 3))
            m[:, c] = f > np.quantile(f, 0.8)
        m[0] = False
        out[cd] = m
    return out


def _write_dir(path: Path, probs: dict, config: str):
    path.mkdir(parents=True)
    meta = {
        "kind": "2.5d",
        "config": config,
        "checkpoint": "x",
        "fold": 0,
        "tta": [],
        "classes": list(CLASSES),
        "case_days": {cd: [f"{cd}_slice_{z + 1:04d}" for z in range(D)] for cd in probs},
    }
    (path / "meta.json").write_text(json.dumps(meta))
    for cd, p in probs.items():
        np.save(path / f"{cd}.npy", p.astype(np.float16))


@pytest.fixture()
def oof(tmp_path):
    rng = np.random.default_rng(0)
    truth = _truth(rng)
    rows = [
        (f"{cd}_slice_{z + 1:04d}", cls, rle_encode(m[z, c]))
        for cd, m in truth.items()
        for z in range(D)
        for c, cls in enumerate(CLASSES)
    ]
    pd.DataFrame(rows, columns=["id", "class", "segmentation"]).to_csv(tmp_path / "train.csv", index=False)
    good = {cd: np.clip(0.7 * m + 0.1 * rng.random(m.shape), 0, 1) for cd, m in truth.items()}
    bad = {cd: np.clip(0.5 * np.roll(m, 4, axis=3) + 0.3 * rng.random(m.shape), 0, 1) for cd, m in truth.items()}
    for name, probs in (("good", good), ("bad", bad)):
        _write_dir(tmp_path / name / "fold_0", {cd: probs[cd] for cd in CDS[:2]}, f"{name}.py")
        _write_dir(tmp_path / name / "fold_1", {cd: probs[cd] for cd in CDS[2:]}, f"{name}.py")
    spec = {
        "name": "t",
        "folds": [0, 1],
        "models": [
            {"name": "good", "kind": "2.5d", "config": "good.py", "checkpoints": "g{fold}", "weight": 1},
            {"name": "bad", "kind": "2.5d", "config": "bad.py", "checkpoints": "b{fold}", "weight": 1},
        ],
        "thresholds": 0.75,
        "post": {"min_component": 0},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path


def test_search_improves_and_writes(oof):
    spec = load_spec(oof / "spec.yaml", root=oof)
    items = [
        str(oof / "good" / "fold_0"),
        str(oof / "good" / "fold_1"),
        f"bad={oof / 'bad' / 'fold_0'}",
        f"bad={oof / 'bad' / 'fold_1'}",
    ]
    tuned, before, after = run_search(spec, items, oof / "train.csv", oof / "tuned.yaml", log=lambda s: None)
    assert after.score > before.score + 0.05
    assert tuned.model("good").weight > tuned.model("bad").weight
    assert max(tuned.thresholds) < 0.75
    again = load_spec(oof / "tuned.yaml", root=oof)
    assert again.thresholds == tuned.thresholds and again.model("bad").weight == tuned.model("bad").weight
    rep = pd.read_csv(oof / "tuned_report.csv")
    assert rep["class"].tolist() == [*CLASSES, "all"]
    assert rep.loc[3, "score_after"] == pytest.approx(after.score) and rep.loc[3, "score_before"] == pytest.approx(
        before.score
    )
    assert "score_before" in (oof / "tuned_report.md").read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_search(spec, items, oof / "train.csv", oof / "tuned.yaml")


def test_evaluator_scores_each_candidate_once_and_equals_the_metric(oof):
    spec = load_spec(oof / "spec.yaml", root=oof)
    items = [f"{m}={oof / m / f}" for m in ("good", "bad") for f in ("fold_0", "fold_1")]
    ev = Evaluator(spec, parse_oof(spec, items), read_rle_table(oof / "train.csv"))
    base = Params.from_spec(spec, ev.models)
    low = copy.deepcopy(base)
    low.thresholds = np.full(3, 0.4)
    first = ev([base, low, copy.deepcopy(base)])
    assert ev.n_evals == 2 and first[0] is first[2]
    assert ev([low])[0] is first[1] and ev.n_evals == 2
    # each case-day: one mask per class and candidate, one distance for each non-empty on both sides (all here)
    st = ev.stats()
    assert (st["masks"], st["hausdorff"], st["truth_decoded"], st["fused"]) == (24, 24, 4, 4)
    # a candidate whose class settings were all seen before comes from the caches (no map, no mask, no distance)
    # and equals the metric computed anew
    mixed = copy.deepcopy(base)
    mixed.thresholds = np.array([0.75, 0.4, 0.75])
    got = ev([mixed])[0]
    st = ev.stats()
    assert ev.n_evals == 3 and (st["masks"], st["hausdorff"], st["cached_candidates"]) == (24, 24, 4)
    truth = read_rle_table(oof / "train.csv").set_index("id")
    manual = []
    for cd in CDS:
        probs = {m: np.load(oof / m / ("fold_0" if cd in CDS[:2] else "fold_1") / f"{cd}.npy") for m in ("good", "bad")}
        fused = (probs["good"].astype(np.float64) + probs["bad"]) / 2
        pred = fused > mixed.thresholds[None, :, None, None]
        ids = [f"{cd}_slice_{z + 1:04d}" for z in range(D)]
        t = decode_case_day(truth.reindex(ids)[list(CLASSES)].fillna("").to_numpy().tolist(), H, W, ids)
        manual.append(score_case_day(cd, pred, t))
    assert got.score == pytest.approx(aggregate(manual).score, abs=1e-12)


def test_search_refuses_different_case_days(oof):
    spec = load_spec(oof / "spec.yaml", root=oof)
    items = [f"good={oof / 'good' / 'fold_0'}", f"good={oof / 'good' / 'fold_1'}", f"bad={oof / 'bad' / 'fold_0'}"]
    with pytest.raises(ValueError, match=r"cover different case-days.*bad/fold_0.*only in the first \['case2_day0'"):
        run_search(spec, items, oof / "train.csv", oof / "t2.yaml")
    with pytest.raises(ValueError, match="no model named 'goood'.*did you mean 'good'"):
        parse_oof(spec, [f"goood={oof / 'good' / 'fold_0'}"])
    with pytest.raises(ValueError, match="case1_day0 is in both"):
        parse_oof(spec, [f"good={oof / 'good' / 'fold_0'}", f"good={oof / 'good' / 'fold_0'}"])
    # NaN in a probability map: the error names the .npy file
    p = np.load(oof / "bad" / "fold_1" / "case3_day5.npy")
    p[1, 1, 1, 1] = np.nan
    np.save(oof / "bad" / "fold_1" / "case3_day5.npy", p)
    items = [f"good={oof / 'good' / f}" for f in ("fold_0", "fold_1")] + [
        f"bad={oof / 'bad' / f}" for f in ("fold_0", "fold_1")
    ]
    with pytest.raises(ValueError, match=r"bad/fold_1/case3_day5.npy: probability map holds NaN"):
        run_search(spec, items, oof / "train.csv", oof / "t3.yaml")


def test_search_cli(oof):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensembles",
            "search",
            "--oof",
            f"good={oof / 'good' / 'fold_0'}",
            f"good={oof / 'good' / 'fold_1'}",
            f"bad={oof / 'bad' / 'fold_0'}",
            f"bad={oof / 'bad' / 'fold_1'}",
            "--truth",
            str(oof / "train.csv"),
            "--spec",
            str(oof / "spec.yaml"),
            "--out",
            str(oof / "cli.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=str(oof),
    )
    assert r.returncode == 0, r.stderr
    assert "->" in r.stdout
    validate_spec(yaml.safe_load((oof / "cli.yaml").read_text()), "cli.yaml", oof)


def test_search_with_3d_and_gate(oof):
    rng = np.random.default_rng(5)
    for name in ("m3", "gate"):
        for f, cds in (("fold_0", CDS[:2]), ("fold_1", CDS[2:])):
            src = oof / "good" / f
            probs = {cd: np.load(src / f"{cd}.npy").astype(np.float32) for cd in cds}
            if name == "m3":
                probs = {cd: np.clip(p + 0.1 * rng.random(p.shape), 0, 1) for cd, p in probs.items()}
            _write_dir(oof / name / f, probs, f"{name}.py")
    spec = yaml.safe_load((oof / "spec.yaml").read_text())
    spec["models"].append({"name": "m3", "kind": "3d", "config": "m3.py", "checkpoints": "c{fold}", "weight": 1})
    spec["models"].append(
        {"name": "gate", "kind": "2.5d", "role": "gate", "config": "gate.py", "checkpoints": "x{fold}", "weight": 1}
    )
    spec["gate"] = {"method": "unet_count", "pixel_thr": 0.6, "min_pixels": 3}
    spec["fusion"] = {"weight_2d": 0.5, "weight_3d": 0.5}
    s = validate_spec(spec, "s.yaml", oof)
    items = [f"{n}={oof / n / f}" for n in ("good", "bad", "m3", "gate") for f in ("fold_0", "fold_1")]
    tuned, before, after = run_search(s, items, oof / "train.csv", oof / "t3d.yaml", log=lambda m: None)
    assert after.score >= before.score
    assert tuned.fusion["weight_2d"] + tuned.fusion["weight_3d"] == pytest.approx(1.0)
    assert tuned.gate["method"] == "unet_count"


def test_search_tunes_classifier_gate(oof):
    """A model with a false blob on every empty first slice; a classifier that knows those slices are empty. The
    search starts from a gate that keeps everything (threshold 0) and must learn to drop them."""
    rng = np.random.default_rng(7)
    truth = _truth(np.random.default_rng(0))
    rows = []
    for f, cds in (("fold_0", CDS[:2]), ("fold_1", CDS[2:])):
        probs = {}
        for cd in cds:
            p = np.load(oof / "good" / f / f"{cd}.npy").astype(np.float32)
            p[0, :, 5:12, 5:12] = 0.9  # false positives where the truth is empty (z = 0)
            probs[cd] = p
            present = truth[cd].reshape(D, 3, -1).any(-1)
            for z in range(D):
                pz = np.where(present[z], 0.9, 0.05) + 0.02 * rng.random(3)
                rows.append((f"{cd}_slice_{z + 1:04d}", *pz.tolist()))
        _write_dir(oof / "fp" / f, probs, "fp.py")
    pd.DataFrame(rows, columns=["id", *CLASSES]).to_csv(oof / "cls_probs.csv", index=False)
    spec = {
        "name": "g",
        "folds": [0, 1],
        "models": [
            {"name": "fp", "kind": "2.5d", "config": "fp.py", "checkpoints": "f{fold}"},
            {"name": "cls", "kind": "classifier", "config": "cls.py", "checkpoints": "c{fold}"},
        ],
        "gate": {"method": "classifier", "thresholds": 0.0},
        "thresholds": 0.5,
    }
    s = validate_spec(spec, "g.yaml", oof)
    items = [f"fp={oof / 'fp' / f}" for f in ("fold_0", "fold_1")] + [f"cls={oof / 'cls_probs.csv'}"]
    tuned, before, after = run_search(s, items, oof / "train.csv", oof / "tg.yaml", log=lambda m: None)
    assert after.score > before.score + 0.05
    assert all(0.05 < t <= 0.8 for t in tuned.gate["thresholds"])
    _, no_gate_before, _ = run_search(
        validate_spec(dict(spec, gate={"method": "none"}), "n.yaml", oof),
        items[:2],
        oof / "train.csv",
        oof / "tn.yaml",
        log=lambda m: None,
    )
    assert before.score == pytest.approx(no_gate_before.score)  # threshold 0 keeps every slice
    with pytest.raises(ValueError, match="classifier"):
        run_search(s, items[:2] + [f"fp={oof / 'cls_probs.csv'}"], oof / "train.csv", oof / "x.yaml")
