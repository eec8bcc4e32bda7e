"""Inference on a prepared WORK folder of any format (``inference.pipeline.infer(work=...)``, ``tools/infer.py
--work``): predictions written in the input's format (a stand-in format module here; the real nnU-Net writer in
the last test), resumable, classes checked; a Kaggle WORK gives the same submission as its test tree."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from nclass_fixtures import (
    FIVE,
    SPACING,
    Oracle,
    Oracle3D,
    fake_format,
    make_work,
    truth_by_digest,
    write_truth_folder,
)

from ensembles.spec import SpecError, load_spec
from evaluation.predictions import PREDICTION_FORMATS, PREDICTIONS_JSON
from evaluation.scoring import score_folders
from inference.pipeline import infer

REPO = Path(__file__).resolve().parents[2]


class Const:
    """A stand-in returning a constant map (of the input's size, C classes)."""

    def __init__(self, value: float, n: int):
        self.value, self.n = value, n

    def predict_volume(self, volume, keep=None, boxes=None, tta=(), batch_size=16, spacing=None):
        d, h, w = np.shape(volume)[-3:]
        return np.full((d, self.n, h, w), self.value, np.float32)


class Presence:
    """Classifier stand-in: presence = 1 where the oracle's truth has the class."""

    def __init__(self, by_digest: dict):
        self.by_digest = by_digest

    def predict_volume(self, volume, batch_size=32):
        from nclass_fixtures import digest

        return self.by_digest[digest(np.asarray(volume))].any(axis=(2, 3)).astype(np.float32)


def _spec(tmp: Path, **over) -> Path:
    for name in ("good_0.pth", "flat_0.pth", "cls_0.pth", "m.py"):
        (tmp / name).write_text("")
    spec = {
        "name": "five",
        "folds": [0],
        "models": [
            {"name": "good", "kind": "3d", "config": "m.py", "checkpoints": "good_{fold}.pth"},
            {"name": "flat", "kind": "2.5d", "config": "m.py", "checkpoints": "flat_{fold}.pth"},
            {"name": "cls", "kind": "classifier", "config": "m.py", "checkpoints": ["cls_0.pth"]},
        ],
        "gate": {"method": "classifier", "thresholds": dict.fromkeys(FIVE, 0.5)},
        "fusion": {"weight_2d": 0.25, "weight_3d": 0.75},
        "thresholds": [0.5, 0.5, 0.5, 0.5, 0.6],
        "post": {"max_prob_floor": 0.0, "min_component": 0},
    }
    spec.update(over)
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _loaders(by_digest: dict, calls: dict, n: int = 5, model_classes=None) -> dict:
    return {
        "3d": lambda m, ck, d: Oracle3D(by_digest, 0.9, model_classes, calls.setdefault(m.name, [])),
        "2.5d": lambda m, ck, d: Const(0.3, n),
        "classifier": lambda m, ck, d: Presence(by_digest),
    }


@pytest.fixture()
def fmt(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setitem(PREDICTION_FORMATS, "slices", fake_format(calls))
    return calls


def test_infer_work_writes_each_volume_in_its_format_and_resumes(tmp_path, fmt):
    work, truth = make_work(tmp_path / "work", channels=2)
    by = truth_by_digest(work, truth)
    spec = load_spec(_spec(tmp_path), root=tmp_path, classes=FIVE)
    calls: dict = {}
    out = tmp_path / "pred"
    df = infer(None, spec, out, work=work, loaders=_loaders(by, calls), overlays=1, save_probs=tmp_path / "p")
    assert df["key"].tolist() == ["vol_a", "vol_b", "vol_c"] and not df["skipped"].any()
    # the models saw both image channels and the (sz, sy, sx) spacing of dataset.json
    assert calls["good"][0]["shape"] == (2, 6, 16, 20) and calls["good"][0]["spacing"] == SPACING
    index = json.loads((out / PREDICTIONS_JSON).read_text())
    assert index["volumes"] == {k: f"{k}.npy" for k in truth} and index["classes"] == list(FIVE)
    assert index["format"] == "slices" and index["label_kind"] == "overlapping"
    # 0.75 * 0.9 + 0.25 * 0.3 = 0.75 on the truth, 0.075 elsewhere: the masks are the truth
    info_unpack = fake_format().read_prediction
    from data_prep.work import read_dataset

    info = read_dataset(work)
    for k, t in truth.items():
        assert (info_unpack(out / f"{k}.npy", info, k) == t).all()
    assert len(list((tmp_path / "pred_overlays").glob("*.png"))) == 1
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["classes"] == list(FIVE)
    assert (tmp_path / "p" / "keep.csv").read_text().splitlines()[0] == "id," + ",".join(FIVE)
    # scored against the truth written by the same writer: exactly 1, and a 3D Dice of 1 per volume and class
    res = score_folders(write_truth_folder(work, tmp_path / "truth", fake_format()), out, info)
    assert res.score == pytest.approx(1.0) and res.dice == pytest.approx(1.0)
    assert res.per_class["class"].tolist() == [*FIVE, "all"] and (res.per_class["dsc_3d"] == 1.0).all()
    assert res.dsc_3d.shape == (3, 6) and (res.dsc_3d.drop(columns="case_day").to_numpy() == 1.0).all()
    # a rerun skips what is listed; a removed file is predicted again, nothing else
    fmt.clear()
    (out / "vol_b.npy").unlink()
    df = infer(None, spec, out, work=work, loaders=_loaders(by, {}))
    assert fmt == ["vol_b"] and df["skipped"].tolist() == [True, False, True]
    # another spec on the same folder is refused; --overwrite predicts every volume again
    other = load_spec(_spec(tmp_path, name="other", thresholds=0.4), root=tmp_path, classes=FIVE)
    other.source = str(tmp_path / "other.yaml")
    with pytest.raises(ValueError, match="other settings.*--overwrite"):
        infer(None, other, out, work=work, loaders=_loaders(by, {}))
    fmt.clear()
    infer(None, other, out, work=work, loaders=_loaders(by, {}), overwrite=True)
    assert fmt == ["vol_a", "vol_b", "vol_c"]
    # a folder of someone else's files is refused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.nii.gz").write_text("x")
    with pytest.raises(FileExistsError, match="mine holds files but no predictions.json"):
        infer(None, spec, tmp_path / "mine", work=work, loaders=_loaders(by, {}))


def test_infer_work_exclusive_classes_one_class_per_pixel(tmp_path, fmt):
    """Two models disagree on a pixel's class; for exclusive classes the most probable class over its threshold
    wins (ties: the first), as in the search."""
    work, truth = make_work(tmp_path / "work", label_kind="exclusive", keys=("vol_a",), shape=(3, 4, 5))
    by = truth_by_digest(work, truth)
    p = np.zeros((3, 5, 4, 5), np.float32)
    p[1, 0, 1, 1], p[1, 3, 1, 1] = 0.7, 0.9  # two classes over 0.5 at one pixel: class 3 wins
    p[1, 2, 2, 2], p[1, 4, 2, 2] = 0.8, 0.8  # a tie: class 2 (the first) wins
    p[2, 1, 0, 0] = 0.55  # alone: kept

    class Fixed:
        def predict_volume(self, volume, keep=None, boxes=None, tta=(), batch_size=16, spacing=None):
            return p.copy()

    raw = _spec(tmp_path, gate={"method": "none"}, thresholds=0.5, fusion={"weight_2d": 1.0, "weight_3d": 0.0})
    spec = load_spec(raw, root=tmp_path, classes=FIVE)
    loaders = {
        "2.5d": lambda m, ck, d: Fixed(),
        "3d": lambda m, ck, d: None,
        "classifier": lambda m, ck, d: Presence(by),
    }
    infer(None, spec, tmp_path / "pred", work=work, loaders=loaders)
    lab = np.load(tmp_path / "pred" / "vol_a.npy")  # the stand-in writes WORK's label map: 0 = background
    want = np.zeros((3, 4, 5), np.uint8)
    want[1, 1, 1], want[1, 2, 2], want[2, 0, 0] = 4, 3, 2
    assert (lab == want).all()


def test_classes_of_the_spec_and_the_models_must_be_the_data(tmp_path, fmt):
    work, truth = make_work(tmp_path / "work", keys=("vol_a",), shape=(3, 4, 5))
    by = truth_by_digest(work, truth)
    named = _spec(tmp_path, classes=["a", "b", "c"], thresholds=0.5, gate={"method": "none"})
    with pytest.raises(SpecError, match=r"spec is for classes \['a', 'b', 'c'\], the data has \['liver'"):
        load_spec(named, root=tmp_path, classes=FIVE)
    kaggle = load_spec(_spec(tmp_path, thresholds=[0.4, 0.5, 0.6], gate={"method": "none"}), root=tmp_path)
    with pytest.raises(SpecError, match="thresholds gives 3 values.*the data has 5 classes"):
        infer(None, kaggle, tmp_path / "x", work=work, loaders=_loaders(by, {}))
    spec = load_spec(_spec(tmp_path, gate={"method": "none"}), root=tmp_path, classes=FIVE)
    wrong = ("liver", "kidney_l", "kidney_r", "spleen", "stomach")
    with pytest.raises(ValueError, match=r"model 'good' \(.*good_0.pth\) predicts classes .*'stomach'.*the data has"):
        infer(None, spec, tmp_path / "y", work=work, loaders=_loaders(by, {}, model_classes=wrong))
    assert not (tmp_path / "y" / "vol_a.npy").exists()


def _tools_infer():
    mod_spec = importlib.util.spec_from_file_location("tools_infer", REPO / "tools" / "infer.py")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


class IntensitySeg:
    """Deterministic 2.5D stand-in of the Kaggle classes: the image scaled by its max, shifted per class."""

    def predict_volume(self, volume, keep=None, boxes=None, tta=(), batch_size=16, spacing=None):
        v = volume.astype(np.float32) / max(float(volume.max()), 1.0)
        p = np.stack([np.clip(v + off, 0, 1) for off in (0.0, -0.1, 0.1)], axis=1)
        if keep is not None:
            p[~np.asarray(keep, bool)] = 0
        return p


def test_kaggle_work_gives_the_submission_of_its_tree(tmp_path, monkeypatch):
    from data_prep.prepare import prepare
    from data_prep.synth import synthesize
    from inference import pipeline

    data = tmp_path / "data"
    synthesize(data, cases=1, seed=3, test_cases=2, slices=8, sizes=[(40, 32)])
    prepare(data, tmp_path / "work_test", split="test")
    (tmp_path / "seg_0.pth").write_text("")
    (tmp_path / "seg.py").write_text("")
    spec = {
        "name": "k",
        "folds": [0],
        "models": [{"name": "seg", "kind": "2.5d", "config": "seg.py", "checkpoints": "seg_{fold}.pth"}],
        "thresholds": 0.45,
        "post": {"max_prob_floor": 0.5, "min_component": 3},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setitem(pipeline.LOADERS, "2.5d", lambda m, ck, d: IntensitySeg())
    tools = _tools_infer()
    common = ["--spec", str(tmp_path / "spec.yaml"), "--root", str(tmp_path), "--no-progress"]
    assert tools.main(["--data-root", str(data), "--out", str(tmp_path / "tree.csv"), *common]) == 0
    assert tools.main(["--work", str(tmp_path / "work_test"), "--out", str(tmp_path / "work.csv"), *common]) == 0
    from data_prep.layout import read_layout

    tree = (tmp_path / "tree.csv").read_bytes()
    rows = tree.decode().splitlines()
    assert len(rows) == 1 + 3 * len(read_layout(data, "test")) and sum(r.split(",")[2] != "" for r in rows[1:]) > 9
    assert (tmp_path / "work.csv").read_bytes() == tree


def _nnunet_fixtures():
    try:
        return importlib.import_module("nnunet_fixtures")  # tests/nnunet_fixtures.py (tests/ is on sys.path)
    except ImportError:
        pytest.skip("the nnU-Net test fixtures (tests/nnunet_fixtures.py) are not there")


@pytest.mark.parametrize("regions", [False, True], ids=["exclusive", "regions"])
def test_nnunet_work_to_nifti_and_score_one(tmp_path, monkeypatch, regions):
    """nnU-Net dataset -> prepare -> ``tools/infer.py --work`` with the truth as the model -> NIfTI on the image's
    grid -> ``python -m ensembles score`` against labelsTr: score 1, Dice 1, 3D Dice 1 per volume and class."""
    import SimpleITK as sitk

    from data_prep.prepare_volumes import prepare_volumes
    from data_prep.work import load_mask, read_dataset
    from ensembles.__main__ import main as ensembles_main
    from inference import pipeline

    fx = _nnunet_fixtures()
    classes = ("liver", "spleen", "kidney")
    d = fx.make_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=(5, 12, 10), classes=classes, regions=regions)
    work = tmp_path / "work"
    prepare_volumes("nnunet", d.root, work, n_folds=2)
    info = read_dataset(work)
    truth = {k: info.unpack(np.asarray(load_mask(work, k))).astype(bool) for k in info.volumes}
    by = truth_by_digest(work, truth)
    for name in ("t_0.pth", "m.py"):
        (tmp_path / name).write_text("")
    raw = {
        "name": "truth",
        "folds": [0],
        "models": [{"name": "t", "kind": "2.5d", "config": "m.py", "checkpoints": "t_{fold}.pth"}],
        "thresholds": 0.5,
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setitem(pipeline.LOADERS, "2.5d", lambda m, ck, dev: Oracle(by, 0.9))
    argv = ["--work", str(work), "--spec", str(tmp_path / "spec.yaml"), "--root", str(tmp_path), "--no-progress"]
    assert _tools_infer().main([*argv, "--out", str(tmp_path / "pred")]) == 0
    for case in d.labels:
        got = sitk.ReadImage(str(tmp_path / "pred" / f"{case}.nii.gz"))
        ref = sitk.ReadImage(str(d.root / "labelsTr" / f"{case}.nii.gz"))
        assert got.GetSize() == ref.GetSize() and got.GetSpacing() == pytest.approx(ref.GetSpacing())
        assert got.GetOrigin() == pytest.approx(ref.GetOrigin()) and got.GetDirection() == pytest.approx(
            ref.GetDirection()
        )
        assert (sitk.GetArrayFromImage(got) == d.labels[case]).all()
    score = tmp_path / "score.json"
    argv = ["-q", "score", "--truth", str(d.root / "labelsTr"), "--pred", str(tmp_path / "pred"), "--work", str(work)]
    assert ensembles_main([*argv, "--out", str(score)]) == 0
    res = json.loads(score.read_text())
    assert res["score"] == pytest.approx(1.0) and res["dice"] == pytest.approx(1.0)
    assert [r["class"] for r in res["per_class"]] == [*classes, "all"]
    assert all(r[f"dsc_{c}"] == 1.0 for r in res["dsc_3d"] for c in classes) and len(res["dsc_3d"]) == 2
    assert "3D Dice per volume and class" in score.with_suffix(".md").read_text()
