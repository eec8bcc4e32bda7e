"""prepare(): volumes, masks and manifest values; idempotence, --overwrite, resume after a crash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_prep import prepare as prepare_mod
from data_prep.constants import CLASSES
from data_prep.dataset import KAGGLE
from data_prep.prepare import prepare
from data_prep.rle import rle_encode
from data_prep.volumes import unpack_mask
from data_prep.work import load_mask, load_volume, read_dataset, read_manifest


def make_tree(root: Path, n_cases: int = 6, depth: int = 10, hw: tuple[int, int] = (24, 32), seed: int = 0) -> dict:
    """A tiny Kaggle-style tree: one case-day per case, known images and masks.

    Returns ``{case_day: (volume uint16 (D, H, W), masks uint8 (D, 3, H, W))}``.
    """
    rng = np.random.default_rng(seed)
    h, w = hw
    rows, truth = [], {}
    for case in range(1, n_cases + 1):
        day = case % 3
        cd = f"case{case}_day{day}"
        scans = root / "train" / f"case{case}" / cd / "scans"
        scans.mkdir(parents=True)
        vol = rng.integers(0, 4000, size=(depth, h, w), dtype=np.uint16)
        masks = np.zeros((depth, 3, h, w), np.uint8)
        masks[2 : 2 + case % 4 + 1, 0, 2:8, 3:9] = 1  # large bowel on a few slices
        masks[3:5, 1, 4:10, 5:12] = 1  # small bowel overlaps it
        masks[4, 2, 10:14, 20:25] = 1  # stomach on one slice
        for z in range(depth):
            cv2.imwrite(str(scans / f"slice_{z + 1:04d}_{w}_{h}_1.50_1.50.png"), vol[z])
            for c, name in enumerate(CLASSES):
                rows.append((f"{cd}_slice_{z + 1:04d}", name, rle_encode(masks[z, c])))
        truth[cd] = (vol, masks)
    pd.DataFrame(rows, columns=["id", "class", "segmentation"]).to_csv(root / "train.csv", index=False)
    return truth


def tree_bytes(work: Path) -> dict[str, bytes]:
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, make_tree(root)


@pytest.fixture(scope="module")
def done(data, tmp_path_factory):
    root, truth = data
    work = tmp_path_factory.mktemp("work")
    prepare(root, work, workers=1, n_folds=3)
    return work, truth


def test_volumes_masks_and_manifest_values(done):
    work, truth = done
    man = read_manifest(work)
    assert len(man) == 6 * 10 and man["case_day"].nunique() == 6
    for cd, (vol, masks) in truth.items():
        v = load_volume(work, cd)
        assert isinstance(v, np.memmap) and v.dtype == np.uint16 and v.shape == (10, 24, 32)
        np.testing.assert_array_equal(v, vol)
        np.testing.assert_array_equal(unpack_mask(load_mask(work, cd)), masks)
        rows = man[man["case_day"] == cd].sort_values("z")
        assert rows["z"].tolist() == list(range(10)) and set(rows["depth"]) == {10}
        for c, name in enumerate(CLASSES):
            np.testing.assert_array_equal(rows[f"area_{name}"].to_numpy(), masks[:, c].sum(axis=(1, 2)))
            np.testing.assert_array_equal(rows[f"has_{name}"].to_numpy(), masks[:, c].any(axis=(1, 2)))
    # case 3: large bowel on slices 2..5 (4 slices of 6x6), small bowel 2 slices of 6x7, stomach 1 slice of 4x5
    r = man[man["case_day"] == "case3_day0"]
    assert r["area_large_bowel"].sum() == 4 * 36 and r["area_small_bowel"].sum() == 2 * 42
    assert r["area_stomach"].sum() == 20
    assert not any(c in man.columns for c in CLASSES)  # no RLE columns
    state = json.loads((work / "prepare.json").read_text())
    assert state["status"] == "done" and state["n_slices"] == 60 and state["args"]["splits"]["n_folds"] == 3
    assert (work / "splits" / "splits.json").is_file()


def test_same_args_is_noop_other_args_need_overwrite(done, data):
    work, _ = done
    root, _ = data
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    prepare(root, work, workers=1, n_folds=3)
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()} == before
    with pytest.raises(FileExistsError, match=r"stride: 2 -> 1.*--overwrite"):
        prepare(root, work, stride=1, n_folds=3)
    with pytest.raises(FileExistsError, match="seed"):
        prepare(root, work, n_folds=3, seed=7)
    assert json.loads((work / "prepare.json").read_text())["args"]["stride"] == 2


def test_dataset_description_and_old_works_stay_noops(done, data, tmp_path):
    work, _ = done
    info = read_dataset(work)
    assert (info.format, info.classes, info.label_kind, info.channels) == ("kaggle", CLASSES, "overlapping", ("MR",))
    assert sorted(info.volumes) == sorted(read_manifest(work)["case_day"].unique())
    v = info.volumes["case3_day0"]
    assert (v.shape, v.spacing, v.group, v.axes) == ((10, 24, 32), (3.0, 1.5, 1.5), "3", (0, 1, 2))
    assert v.source == str(data[0].resolve() / "train" / "case3" / "case3_day0")
    old = tmp_path / "old"  # a WORK prepared before dataset.json existed: the same command is still a no-op
    shutil.copytree(work, old)
    (old / "dataset.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in old.rglob("*") if p.is_file()}
    prepare(data[0], old, workers=1, n_folds=3)
    assert {p: p.stat().st_mtime_ns for p in old.rglob("*") if p.is_file()} == before
    assert read_dataset(old) == KAGGLE


def test_overwrite_and_unknown_outputs(data, tmp_path):
    root, _ = data
    work = tmp_path / "w"
    (work / "volumes").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no prepare.json"):
        prepare(root, work, n_folds=3)
    prepare(root, work, n_folds=3, overwrite=True)
    prepare(root, work, n_folds=3, stride=1, channels=5, overwrite=True)
    assert json.loads((work / "prepare.json").read_text())["args"]["channels"] == 5
    assert (work / "notes.txt").read_text() == "mine"  # not ours: untouched


def test_resume_after_crash_gives_identical_output(data, done, tmp_path, monkeypatch):
    root, _ = data
    ref, _ = done
    work = tmp_path / "w"
    real = prepare_mod._prepare_case_day
    calls = {"n": 0}

    def crash_on_third(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(task)

    monkeypatch.setattr(prepare_mod, "_prepare_case_day", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(root, work, n_folds=3)
    assert json.loads((work / "prepare.json").read_text())["status"] == "running"
    assert len(list((work / "volumes").glob("*.npy"))) == 2 and not (work / "manifest.csv").exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        read_manifest(work)
    # a half-written volume and a stray temporary file, as a kill in the middle of a write could leave
    vol = work / "volumes" / "case2_day2.npy"
    vol.write_bytes(vol.read_bytes()[:200])
    (work / "volumes" / ".case3_day0.npy.x.tmp").write_bytes(b"junk")
    kept = (work / "volumes" / "case1_day1.npy").stat().st_ino
    monkeypatch.setattr(prepare_mod, "_prepare_case_day", real)
    prepare(root, work, n_folds=3)
    assert tree_bytes(work) == tree_bytes(ref)
    assert (work / "volumes" / "case1_day1.npy").stat().st_ino == kept  # verified, not redone
    assert not list(work.rglob("*.tmp"))


def test_test_split_without_labels_and_workers(data, tmp_path):
    root, truth = data
    test_root = tmp_path / "d"
    (test_root / "test").mkdir(parents=True)
    for src in (root / "train").iterdir():
        (test_root / "test" / src.name).symlink_to(src, target_is_directory=True)
    work = tmp_path / "w"
    state = prepare(test_root, work, split="test", workers=2)
    assert state["labels"] is False and state["n_case_days"] == 6
    assert not (work / "masks").exists() and not (work / "splits").exists()
    np.testing.assert_array_equal(load_volume(work, "case4_day1"), truth["case4_day1"][0])
    assert "has_stomach" not in read_manifest(work).columns


def test_bad_arguments(data, tmp_path):
    root, _ = data
    with pytest.raises(ValueError, match="channels must be odd"):
        prepare(root, tmp_path / "w", channels=4)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        prepare(root, tmp_path / "w", workers=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare(tmp_path / "nowhere", tmp_path / "w")


def test_cli_prepare_splits_export(data, tmp_path, monkeypatch, capsys):
    from data_prep.__main__ import main

    root, _ = data
    work = tmp_path / "w"
    assert main(["-q", "prepare", "--data-root", str(root), "--out", str(work), "--folds", "3", "--faulty"]) == 0
    s = json.loads((work / "splits" / "splits.json").read_text())
    assert s["n_folds"] == 3 and s["faulty_case_days"] == []
    monkeypatch.setenv("GITRACT_WORK", str(work))  # --work from the environment
    mtime = (work / "splits" / "splits.json").stat().st_mtime_ns
    assert main(["-q", "splits"]) == 0  # no options: the WORK's own settings, a no-op that prints the report
    assert main(["-q", "splits", "--folds", "3", "--faulty"]) == 0  # same settings given: no-op
    assert "Counts per fold and variant" in capsys.readouterr().out
    assert (work / "splits" / "splits.json").stat().st_mtime_ns == mtime
    assert main(["-q", "splits", "--seed", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["-q", "splits", "--seed", "1", "--overwrite"]) == 0
    s1 = json.loads((work / "splits" / "splits.json").read_text())
    assert (s1["seed"], s1["n_folds"], s1["faulty_case_days"]) == (1, 3, [])
    assert main(["-q", "export", "classifier"]) == 0
    assert len(pd.read_csv(work / "exports" / "classifier.csv")) == 60
    assert main(["-q", "prepare", "--data-root", str(root), "--out", str(work), "--stride", "1"]) == 2
    assert "other arguments" in capsys.readouterr().err
