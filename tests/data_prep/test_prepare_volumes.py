"""The volume engine (data_prep.prepare_volumes) on generated nnU-Net datasets: WORK values, the run contract
(no-op, overwrite, resume, workers), intensity and label rules, groups, failures, exports and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nnunet_fixtures import make_nnunet_dataset, write_volume

from data_prep import prepare_volumes as engine
from data_prep.dataset import DatasetInfo
from data_prep.exports import export_3d, export_classifier
from data_prep.prepare_volumes import labels_to_mask, prepare_volumes, resolve_groups, to_uint16
from data_prep.readers import detect_format, get_reader
from data_prep.readers.base import SourceVolume
from data_prep.work import load_mask, load_volume, read_dataset, read_manifest, read_splits

SHAPE = (6, 12, 10)
SPACING = (2.5, 0.8, 0.7)


def tree_bytes(work: Path) -> dict[str, bytes]:
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet") / "Dataset001_Blobs"
    return make_nnunet_dataset(root, n_cases=5, shape=SHAPE, spacing=SPACING, channels=2, values=(1, 4), seed=3)


@pytest.fixture(scope="module")
def done(data, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    prepare_volumes("nnunet", data.root, work, n_folds=3)
    return work


def test_manifest_volumes_masks_and_dataset_values(data, done):
    work = done
    man = read_manifest(work)
    assert list(man.columns) == [
        "id", "case", "day", "slice", "case_day", "path", "width", "height", "px_w", "px_h", "z", "depth",
        "has_liver", "has_spleen", "area_liver", "area_spleen",
    ]  # fmt: skip
    assert len(man) == 5 * 6 and man["case"].tolist()[:7] == ["case_000"] * 6 + ["case_001"]
    r = man.iloc[7]
    assert (r["id"], r["case_day"], r["day"], r["slice"], r["z"], r["depth"]) == (
        "case_001_slice_0001",
        "case_001",
        0,
        1,
        1,
        6,
    )
    assert (r["width"], r["height"]) == (10, 12) and r["path"] == str(data.root / "imagesTr" / "case_001_0000.nii.gz")
    assert (r["px_h"], r["px_w"]) == pytest.approx((0.8, 0.7))
    info = read_dataset(work)
    assert (info.format, info.classes, info.label_kind, info.channels) == (
        "nnunet",
        ("liver", "spleen"),
        "exclusive",
        ("CT", "T2"),
    )
    for case, lab in data.labels.items():
        v = info.volumes[case]
        assert (v.shape, v.axes, v.group, v.offset, v.scale) == (SHAPE, (0, 1, 2), case, -1024.0, 1.0)
        assert v.spacing == pytest.approx(SPACING) and v.origin == pytest.approx((-41.5, 17.25, 103.0))
        # two channels, one mapping: CT (int16) and T2 (uint16) both shifted by 1024
        for k in range(2):
            np.testing.assert_array_equal(load_volume(work, case, k).astype(np.int64) - 1024, data.images[case][k])
        mask = load_mask(work, case)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, np.select([lab == 1, lab == 4], [1, 2], 0))
        rows = man[man["case_day"] == case]
        np.testing.assert_array_equal(rows["area_liver"], (lab == 1).sum(axis=(1, 2)))
        np.testing.assert_array_equal(rows["has_spleen"], (lab == 4).any(axis=(1, 2)))
    splits = read_splits(work)
    assert splits["faulty_case_days"] == [] and splits["n_folds"] == 3
    assert sorted(c for f in splits["folds"] for c in f["val_cases"]) == sorted(data.labels)  # strings
    state = json.loads((work / "prepare.json").read_text())
    assert state["status"] == "done" and state["args"]["format"] == "nnunet" and state["n_slices"] == 30
    assert not (work / ".progress").exists()


def test_same_args_noop_other_args_need_overwrite(data, done, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()}
    prepare_volumes("nnunet", data.root, done, n_folds=3)
    assert {p: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()} == before
    with pytest.raises(FileExistsError, match=r"slice_axis: None -> 1.*--overwrite"):
        prepare_volumes("nnunet", data.root, done, n_folds=3, slice_axis=1)
    work = tmp_path / "w"
    shutil.copytree(done, work)
    (work / "notes.txt").write_text("mine")
    prepare_volumes("nnunet", data.root, work, n_folds=3, slice_axis=1, overwrite=True)
    info = read_dataset(work)
    assert info.volumes["case_000"].axes == (1, 0, 2) and info.volumes["case_000"].shape == (12, 6, 10)
    np.testing.assert_array_equal(
        load_volume(work, "case_002", 1).astype(np.int64) - 1024, data.images["case_002"][1].transpose(1, 0, 2)
    )
    assert read_manifest(work)["px_h"].iloc[0] == pytest.approx(2.5)  # WORK axes (y, z, x): rows are z
    assert (work / "notes.txt").read_text() == "mine"


def test_resume_after_crash_gives_identical_output(data, done, tmp_path, monkeypatch):
    work = tmp_path / "w"
    real = engine._prepare_volume
    calls = {"n": 0}

    def crash_on_third(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(task)

    monkeypatch.setattr(engine, "_prepare_volume", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_volumes("nnunet", data.root, work, n_folds=3)
    assert json.loads((work / "prepare.json").read_text())["status"] == "running"
    assert sorted(p.name for p in (work / "volumes").glob("*.npy")) == [
        "case_000.npy", "case_000_ch1.npy", "case_001.npy", "case_001_ch1.npy",
    ]  # fmt: skip
    vol = work / "volumes" / "case_001_ch1.npy"
    vol.write_bytes(vol.read_bytes()[:100])  # as a kill during a write of another tool could leave it
    (work / "masks" / ".case_002.npy.x.tmp").write_bytes(b"junk")
    kept = (work / "volumes" / "case_000.npy").stat().st_ino
    monkeypatch.setattr(engine, "_prepare_volume", real)
    prepare_volumes("nnunet", data.root, work, n_folds=3)
    assert tree_bytes(work) == tree_bytes(done)
    assert (work / "volumes" / "case_000.npy").stat().st_ino == kept  # verified, not redone


def test_workers_give_the_same_bytes(data, done, tmp_path):
    work = tmp_path / "w"
    prepare_volumes("nnunet", data.root, work, n_folds=3, workers=2)
    assert tree_bytes(work) == tree_bytes(done)


def test_failure_leaves_nothing_half_written_and_a_rerun_resumes(tmp_path):
    d = make_nnunet_dataset(tmp_path / "ds", n_cases=3, shape=(4, 6, 5), values=(1, 2), seed=1)
    bad = d.labels["case_001"].copy()
    bad[0, 0, :2] = 3  # undeclared label value
    path = d.root / "labelsTr" / "case_001.nii.gz"
    write_volume(path, bad, (2.5, 0.8, 0.7))
    work = tmp_path / "w"
    with pytest.raises(ValueError, match=r"case_001\.nii\.gz: label values \[3\] are not declared"):
        prepare_volumes("nnunet", d.root, work, n_folds=2)
    assert json.loads((work / "prepare.json").read_text())["status"] == "running"
    assert sorted(p.name for p in work.rglob("*.npy")) == ["case_000.npy", "case_000.npy"]  # volume + mask
    assert not list(work.rglob("*.tmp")) and not (work / "manifest.csv").exists()
    write_volume(path, d.labels["case_001"], (2.5, 0.8, 0.7))
    prepare_volumes("nnunet", d.root, work, n_folds=2)
    clean = tmp_path / "clean"
    prepare_volumes("nnunet", d.root, clean, n_folds=2)
    assert tree_bytes(work) == tree_bytes(clean)


def test_to_uint16_rules():
    s, o, k = to_uint16(np.array([0, 7, 65535], np.uint16))
    assert s.tolist() == [0, 7, 65535] and (o, k) == (0.0, 1.0)
    s, o, k = to_uint16(np.array([-1000, 0, 2000], np.int16))  # CT: HU + 1024
    assert s.tolist() == [24, 1024, 3024] and (o, k) == (-1024.0, 1.0)
    s, o, k = to_uint16(np.array([-3000, 10], np.int32))  # below -1024: shifted by the minimum
    assert s.tolist() == [0, 3010] and (o, k) == (-3000.0, 1.0)
    s, o, k = to_uint16(np.array([0, 131070], np.int64))  # beyond uint16: linear
    assert s.tolist() == [0, 65535] and (o, k) == (0.0, 2.0)
    s, o, k = to_uint16(np.array([-1.0, 0.0, 1.0], np.float32))
    assert s.tolist() == [0, 32768, 65535] and o == -1.0 and k == pytest.approx(2 / 65535)
    assert to_uint16(np.full(3, 5.5))[1:] == (5.5, 1.0)
    with pytest.raises(ValueError, match="scan.nii: the image holds NaN"):
        to_uint16(np.array([np.nan, 1.0]), where="scan.nii")


def test_labels_to_mask_rules():
    lab = np.array([[[0, 2, 5], [9, 5.0, 0]]])  # floats holding whole numbers, as NIfTI labels often are
    excl = DatasetInfo(
        classes=("a", "b"), label_kind="exclusive", format="nnunet", source={"label_values": {"a": [2], "b": [5, 9]}}
    )
    assert labels_to_mask(lab, excl).tolist() == [[[0, 1, 2], [2, 2, 0]]]
    over = DatasetInfo(
        classes=("w", "c", "e"), format="nnunet", source={"label_values": {"w": [2, 5, 9], "c": [5, 9], "e": [9]}}
    )
    assert labels_to_mask(lab, over).tolist() == [[[0, 1, 3], [7, 3, 0]]]
    with pytest.raises(ValueError, match=r"lab\.nii: label values \[9\] are not declared.*\[0, 2, 5\]"):
        labels_to_mask(lab, DatasetInfo(classes=("a",), source={"label_values": {"a": [2, 5]}}), where="lab.nii")
    with pytest.raises(ValueError, match="whole numbers"):
        labels_to_mask(lab + 0.5, excl, where="x")
    ignore = DatasetInfo(classes=("a",), source={"label_values": {"a": [2]}, "ignore_values": [5, 9]})
    assert labels_to_mask(lab, ignore).tolist() == [[[0, 1, 0], [0, 0, 0]]]


def test_groups_from_regex_and_csv(data, tmp_path):
    sources = [SourceVolume(k, k, ("x",)) for k in ("p01_scan_a", "p01_scan_b", "p02_scan_a")]
    assert resolve_groups(sources, r"^(p\d+)_") == {"p01_scan_a": "p01", "p01_scan_b": "p01", "p02_scan_a": "p02"}
    assert resolve_groups(sources, r"p0\d") == {"p01_scan_a": "p01", "p01_scan_b": "p01", "p02_scan_a": "p02"}
    with pytest.raises(ValueError, match="does not match volume key 'p02_scan_a'"):
        resolve_groups(sources, r"_b$|_a$(?<=p01_scan_a)")
    table = tmp_path / "groups.csv"
    table.write_text("key,group\ncase_000,p1\ncase_001,p1\ncase_002,p2\ncase_003,p2\n")
    with pytest.raises(ValueError, match=r"groups\.csv: no group for volume key\(s\) \['case_004'\]"):
        prepare_volumes("nnunet", data.root, tmp_path / "w", n_folds=2, group_by=table)
    assert not (tmp_path / "w").exists()  # refused before anything was written
    table.write_text(table.read_text() + "case_004,p3\n")
    prepare_volumes("nnunet", data.root, tmp_path / "w", n_folds=3, group_by=table)
    man = read_manifest(tmp_path / "w")
    assert dict(zip(man["case_day"], man["case"])) == {
        "case_000": "p1", "case_001": "p1", "case_002": "p2", "case_003": "p2", "case_004": "p3",
    }  # fmt: skip
    assert sorted(sorted(f["val_cases"]) for f in read_splits(tmp_path / "w")["folds"]) == [["p1"], ["p2"], ["p3"]]
    assert read_dataset(tmp_path / "w").volumes["case_001"].group == "p1"


def test_test_split_without_labels(data, tmp_path):
    d = make_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=(3, 4, 5), test_cases=2, seed=2)
    work = tmp_path / "w"
    state = prepare_volumes("nnunet", d.root, work, split="test")
    assert state["labels"] is False and state["n_volumes"] == 2
    assert not (work / "masks").exists() and not (work / "splits").exists()
    man = read_manifest(work)
    assert sorted(man["case_day"].unique()) == ["case_002", "case_003"] and "has_class1" not in man.columns
    np.testing.assert_array_equal(load_volume(work, "case_003").astype(np.int64) - 1024, d.images["case_003"][0])


def test_exports_use_the_dataset_classes_spacing_and_channels(data, done):
    table = pd.read_csv(export_classifier(done))
    assert list(table.columns) == ["id", "case_day", "z", "fold", "liver", "spleen"]
    lab = data.labels["case_002"]
    rows = table[table["case_day"] == "case_002"]
    assert rows["spleen"].tolist() == (lab == 4).any(axis=(1, 2)).astype(int).tolist()
    d = json.loads(export_3d(done, fold=0)[0].read_text())
    e = (d["training"] + d["validation"])[0]
    assert e["spacing"] == pytest.approx(list(SPACING)) and e["shape"] == list(SHAPE)
    assert [Path(p).name for p in e["channels"]] == [f"{e['case_day']}.npy", f"{e['case_day']}_ch1.npy"]


def test_detect_format_and_command_line(data, tmp_path, capsys):
    from data_prep.__main__ import main

    assert detect_format(data.root) == "nnunet"
    (tmp_path / "k" / "train" / "case1").mkdir(parents=True)
    assert detect_format(tmp_path / "k") == "kaggle"
    (tmp_path / "s" / "images" / "vol1").mkdir(parents=True)
    (tmp_path / "s" / "images" / "vol1" / "0001.tif").write_bytes(b"")
    assert detect_format(tmp_path / "s") == "slices"
    (tmp_path / "d" / "series").mkdir(parents=True)
    (tmp_path / "d" / "series" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)
    assert detect_format(tmp_path / "d") == "dicom"
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match=r"cannot tell the data format.*dataset\.json \+ imagesTr"):
        detect_format(tmp_path / "e")
    with pytest.raises(ValueError, match="did you mean 'nnunet'"):
        get_reader("nnunet2")

    work = tmp_path / "w"
    args = ["-q", "prepare", "--data-root", str(data.root), "--out", str(work), "--folds", "3"]
    assert main(args) == 0
    assert json.loads((work / "prepare.json").read_text())["args"]["format"] == "nnunet"
    assert main([*args, "--classes", "a,b"]) == 2
    assert "takes its classes" in capsys.readouterr().err
    assert main(["-q", "prepare", "--data-root", str(tmp_path / "k"), "--out", str(work), "--slice-axis", "1"]) == 2
    assert "--slice-axis: not used by the Kaggle layout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--spacing", "1,2"])
    assert "three positive numbers" in capsys.readouterr().err
    assert main(["-q", "splits", "--work", str(work)]) == 0  # a bare `splits` on a non-Kaggle WORK: its own settings
    assert read_splits(work)["faulty_case_days"] == []
