"""The viewer's data and server: scores equal the metric's, difference volumes equal hand counts, the API serves the
bundle, "Segment" checks its input and runs one job at a time, the static report holds what the page needs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from robustness.fake_models import LOADERS, write_spec

from data_prep.layout import read_layout
from evaluation.surface import surface_scores
from viewer.app import create_app, make_state
from viewer.export import export_report
from viewer.study import case_bundle, open_study

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _array(data: bytes, tmp_path: Path, name: str) -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(data)
    return np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)


def test_case_scores_and_difference_equal_hand_computations(nnunet_study, tmp_path) -> None:
    study = open_study(nnunet_study["work"], nnunet_study["pred"])
    assert study.classes == ("liver", "spleen", "kidney")
    key = study.keys[0]
    truth, pred = nnunet_study["truth"][key], nnunet_study["pred_masks"][key]
    bundle = case_bundle(study, key)
    s = bundle.meta["scores"]
    spacing = study.spacing(key)
    assert s["tolerance"] == max(spacing)
    for c, name in enumerate(study.classes):
        t, p = truth[:, c], pred[:, c]
        dsc = 2 * (t & p).sum() / (t.sum() + p.sum())
        assert s["classes"][name]["dsc"] == pytest.approx(dsc, abs=1e-12)
        ref = surface_scores(p, t, spacing, max(spacing))
        assert s["classes"][name]["nsd"] == pytest.approx(ref[1], abs=1e-12)
        assert s["classes"][name]["hd95"] == pytest.approx(ref[2], abs=1e-12)
        diff = _array(bundle.files[f"diff_{c}.nii.gz"], tmp_path, f"d{c}.nii.gz")
        assert (diff == 1).sum() == (t & p).sum()
        assert (diff == 2).sum() == (p & ~t).sum()
        assert (diff == 3).sum() == (t & ~p).sum()
        np.testing.assert_array_equal(_array(bundle.files[f"pred_{c}.nii.gz"], tmp_path, f"p{c}.nii.gz"), p)
        assert bundle.meta["voxels"]["pred"][c] == p.sum()
    assert s["classes"]["kidney"]["dsc"] == 1.0 and s["classes"]["liver"]["dsc"] < 0.9  # as perturbed
    box = bundle.meta["boxes"]["truth"][2]
    zs, ys, xs = np.nonzero(truth[:, 2])
    assert box == [[zs.min(), ys.min(), xs.min()], [zs.max() + 1, ys.max() + 1, xs.max() + 1]]


def test_kaggle_study_reads_a_submission_csv(kaggle_study) -> None:
    """A label CSV as the prediction: decoded as the scoring decodes it, equal to the WORK's masks (score 1)."""
    data, work = kaggle_study["data"], kaggle_study["work"]
    study = open_study(work, data / "train.csv")
    man = read_layout(data, "train")
    key = study.keys[0]
    first = man[man["case_day"] == key].iloc[0]
    assert study.spacing(key) == (3.0, float(first["px_h"]), float(first["px_w"]))
    m = study.masks(key)
    np.testing.assert_array_equal(m["pred"], m["truth"])
    s = study.scores(key)
    assert s["score"] == pytest.approx(1.0)
    assert all(v["dsc"] == 1.0 for v in s["classes"].values())


def test_bad_inputs_are_named(nnunet_study, kaggle_study, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing"):
        open_study(nnunet_study["work"], tmp_path / "nothing")
    csv = tmp_path / "sub.csv"
    csv.write_text("id,class,predicted\n")
    with pytest.raises(ValueError, match="Kaggle layout"):
        open_study(nnunet_study["work"], csv)
    other = tmp_path / "other"
    other.mkdir()
    src = next(Path(nnunet_study["pred"]).glob("case_000*"))
    (other / src.name.replace("case_000", "case_999")).write_bytes(src.read_bytes())
    with pytest.raises(ValueError, match="case_999"):
        open_study(nnunet_study["work"], other)


@pytest.fixture
def client(nnunet_study, tmp_path) -> TestClient:
    state = make_state(nnunet_study["work"], nnunet_study["pred"], runs_dir=tmp_path / "runs", loaders=LOADERS)
    return TestClient(create_app(state))


def test_api_serves_the_study_and_the_case_files(client, nnunet_study, tmp_path) -> None:
    study = client.get("/api/study").json()
    assert study["classes"] == ["liver", "spleen", "kidney"] and len(study["colours"]) == 3
    keys = [c["key"] for c in study["cases"]]
    assert keys == sorted(nnunet_study["truth"])
    assert all(c["has_pred"] and c["has_truth"] for c in study["cases"])
    meta = client.get(f"/api/case/{keys[0]}").json()
    assert meta["sources"] == ["pred", "truth"] and "diff_2.nii.gz" in meta["files"]
    raw = client.get(f"/api/case/{keys[0]}/file/truth_1.nii.gz")
    assert raw.status_code == 200
    np.testing.assert_array_equal(_array(raw.content, tmp_path, "t.nii.gz"), nnunet_study["truth"][keys[0]][:, 1])
    assert client.get("/api/case/nope").status_code == 404
    assert client.get(f"/api/case/{keys[0]}/file/nope.nii.gz").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and "static/vendor/niivue.umd.js" in page.text
    assert client.get("/static/vendor/niivue.umd.js").status_code == 200


def test_segment_refuses_bad_folders_and_a_second_job(client, tmp_path, scans_folder, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the spec's relative paths start from the server's working folder
    spec = write_spec(tmp_path)
    r = client.post("/api/segment", json={"folder": str(tmp_path / "missing"), "spec": str(spec)})
    assert r.status_code == 400 and "missing: no such folder" in r.json()["error"]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    r = client.post("/api/segment", json={"folder": str(tmp_path / "junk"), "spec": str(spec)})
    assert r.status_code == 400 and "cannot tell the data format" in r.json()["error"]
    r = client.post("/api/segment", json={"folder": str(scans_folder), "spec": str(tmp_path / "none.yaml")})
    assert r.status_code == 400 and "none.yaml" in r.json()["error"]

    jobs = client.app.state.viewer.jobs
    gate, started = threading.Event(), threading.Event()
    original = jobs._run

    def slow_run(*args):
        started.set()
        gate.wait(30)
        original(*args)

    jobs._run = slow_run
    r = client.post("/api/segment", json={"folder": str(scans_folder), "spec": str(spec)})
    assert r.status_code == 200 and r.json()["state"] == "running"
    assert started.wait(10)
    second = client.post("/api/segment", json={"folder": str(scans_folder), "spec": str(spec)})
    assert second.status_code == 409 and "already running" in second.json()["error"]
    gate.set()
    done = jobs.wait(120)
    assert done["state"] == "done", done["message"]
    # the result is what the page now shows: the new WORK with its predictions
    study = client.get("/api/study").json()
    assert study["work"] == done["result"]["work"] and study["pred"] == done["result"]["pred"]
    assert [c["key"] for c in study["cases"]] == ["case_001", "case_002"]
    assert all(c["has_pred"] and not c["has_truth"] for c in study["cases"])
    meta = client.get("/api/case/case_001").json()
    assert meta["sources"] == ["pred"] and sum(meta["voxels"]["pred"]) > 0 and meta["scores"] is None
    assert client.get("/api/segment").json()["state"] == "done"


def test_export_writes_a_report_that_holds_the_cases(nnunet_study, tmp_path) -> None:
    runs = tmp_path / "runs" / "unet" / "fold_0"
    runs.mkdir(parents=True)
    (runs / "training_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    keys = sorted(nnunet_study["truth"])
    out = export_report(nnunet_study["work"], tmp_path / "report", nnunet_study["pred"], cases=keys[:2],
                        runs=[tmp_path / "runs"])  # fmt: skip
    assert (out / "index.html").read_text().count("data/report.js") == 1
    assert (out / "static" / "vendor" / "niivue.umd.js").is_file() and (out / "curves" / "0.png").is_file()
    text = (out / "data" / "report.js").read_text()
    report = json.loads(text[text.index("=") + 1 :].strip().rstrip(";"))
    assert sorted(report["cases"]) == keys[:2] and report["curves"][0]["name"] == "unet/fold_0"
    assert [c["key"] for c in report["study"]["cases"]] == keys[:2]
    table = (out / "scores.csv").read_text().splitlines()
    assert table[0].startswith("case,score,dsc,dsc_liver,nsd_liver,hd95_liver") and len(table) == 1 + len(keys)
    study = open_study(nnunet_study["work"], nnunet_study["pred"])
    s = study.scores(keys[0])
    row = table[1].split(",")
    assert row[0] == keys[0] and float(row[3]) == pytest.approx(s["classes"]["liver"]["dsc"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_report(nnunet_study["work"], out, nnunet_study["pred"])
    with pytest.raises(ValueError, match="case_00"):
        export_report(nnunet_study["work"], tmp_path / "r2", nnunet_study["pred"], cases=["case_00"])


def test_command_line_names_bad_input(tmp_path, capsys) -> None:
    from viewer.__main__ import main  # noqa: PLC0415

    assert main(["--work", str(tmp_path / "no_work")]) == 2
    assert "no_work" in capsys.readouterr().err


def test_segment_a_kaggle_tree_gives_a_submission_shown_over_its_truth(kaggle_study, tmp_path, monkeypatch) -> None:
    """A Kaggle tree without test/ is predicted on its train/ scans; their labels become the truth shown."""
    from viewer.jobs import SegmentJobs  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    opened = {}
    jobs = SegmentJobs(tmp_path / "runs", loaders=LOADERS, on_done=lambda w, p: opened.update(study=open_study(w, p)))
    jobs.submit(str(kaggle_study["data"]), str(write_spec(tmp_path)))
    status = jobs.wait(120)
    assert status["state"] == "done", status["message"]
    study = opened["study"]
    days = len(open_study(kaggle_study["work"]).keys)  # the same scans, prepared by the fixture
    assert status["done"] == status["total"] == days == len(study.keys) > 5
    assert status["result"]["pred"].endswith("submission.csv")
    assert study.pred.kind == "csv" and study.truth.kind == "work" and len(study.scorable()) == days
    s = study.scores(study.keys[0])
    assert 0.0 <= s["score"] <= 1.0 and set(s["classes"]) == {"large_bowel", "small_bowel", "stomach"}
