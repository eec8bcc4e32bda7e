"""Bad input in the data tree: each fault gives a clear error naming the file (or, where the user chose so, a
skip that is counted in the log), and nothing is half-written (no WORK manifest, no submission.csv).

Faults: a truncated PNG (header intact / header cut), a PNG of the wrong size, of the wrong pixel format
(colour, 8-bit), a case-day with a slice missing in the middle, an id in train.csv with no scan, malformed RLE
(every kind the codec refuses), a test tree with one case-day empty.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from robust_helpers import PY, run

from data_prep.layout import LayoutWarning, read_layout
from data_prep.prepare import prepare
from data_prep.rle import RLEError
from data_prep.work import read_manifest

# ---------------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def data(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic data root, free to break."""
    out = tmp_path / "data"
    shutil.copytree(synth_root, out)
    return out


def _scans(root: Path, split: str = "train") -> list[Path]:
    return sorted((root / split).glob("case*/case*_day*/scans/*.png"))


def _middle_scan(root: Path, split: str = "train") -> Path:
    """The 6th slice of the first case-day (never its first or last)."""
    first_dir = _scans(root, split)[0].parent
    return sorted(first_dir.glob("*.png"))[5]


def _assert_nothing_prepared(work: Path) -> None:
    """A failed prepare leaves no manifest, no splits and a prepare.json that is not 'done'."""
    assert not (work / "manifest.csv").exists()
    assert not (work / "splits").exists()
    state = json.loads((work / "prepare.json").read_text()) if (work / "prepare.json").exists() else None
    assert state is None or state["status"] == "running"
    with pytest.raises(FileNotFoundError, match="did not finish|not found"):
        read_manifest(work)
    assert not list(work.rglob("*.tmp"))


def _prepare_cli(data: Path, work: Path, *extra: str):
    return run([PY, "-m", "data_prep", "-q", "prepare", "--data-root", str(data), "--out", str(work), *extra])


class ConstSeg:
    """A stand-in 2.5D model: probability = the image scaled by its own max (deterministic)."""

    def predict_volume(self, volume, keep=None, boxes=None, tta=(), batch_size=16, spacing=None):
        v = volume.astype(np.float32) / max(float(volume.max()), 1.0)
        return np.repeat(v[:, None], 3, axis=1)


def _fake_spec(tmp: Path) -> Path:
    (tmp / "m.py").write_text("")
    (tmp / "m_0.json").write_text("{}")
    spec = {
        "name": "fake",
        "folds": [0],
        "models": [{"name": "m", "kind": "2.5d", "config": "m.py", "checkpoints": "m_{fold}.json"}],
        "gate": {"method": "none"},
        "fusion": {"weight_2d": 1.0, "weight_3d": 0.0},
        "thresholds": 0.5,
        "post": {"max_prob_floor": 0.0, "min_component": 0},
    }
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp / "spec.yaml"


def _infer(data: Path, tmp: Path, out: Path, **kw) -> pd.DataFrame:
    from ensembles.spec import load_spec
    from inference.pipeline import infer

    spec = load_spec(_fake_spec(tmp), root=tmp)
    return infer(data, spec, out, split="test", loaders={"2.5d": lambda m, ck, d: ConstSeg()}, **kw)


# ---------------------------------------------------------------------------------------------------------------
# broken PNGs


def test_truncated_png_body_named_by_prepare_and_infer(data, tmp_path):
    victim = _middle_scan(data)
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])  # header intact: only decoding finds it
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=rf"{victim}.*cannot be decoded"):
        prepare(data, work)
    _assert_nothing_prepared(work)
    r = _prepare_cli(data, work)
    assert r.returncode == 2 and str(victim) in r.stderr and "Traceback" not in r.stderr
    _assert_nothing_prepared(work)
    # the same fault in a test tree: the error names the scan and no submission.csv appears
    tvictim = _middle_scan(data, "test")
    raw = tvictim.read_bytes()
    tvictim.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "submission.csv"
    with pytest.raises(ValueError, match=rf"{tvictim}.*cannot be decoded"):
        _infer(data, tmp_path, out)
    assert not out.exists() and not list(tmp_path.glob(".submission.csv*"))


def test_truncated_png_header_named(data, tmp_path):
    victim = _middle_scan(data)
    victim.write_bytes(victim.read_bytes()[:20])  # not even a full IHDR chunk
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=rf"{victim}: not a PNG file"):
        prepare(data, work)
    _assert_nothing_prepared(work)


def test_png_of_wrong_size_named(data, tmp_path):
    victim = _middle_scan(data)  # named ..._64_64_...
    cv2.imwrite(str(victim), np.full((48, 64), 500, np.uint16))  # 64 wide, 48 high
    work = tmp_path / "work"
    msg = rf"1 scan\(s\) whose image size differs.*{victim} \(name says 64x64, image is 64x48\)"
    with pytest.raises(ValueError, match=msg):
        prepare(data, work)
    _assert_nothing_prepared(work)


def test_png_of_wrong_pixel_format(data, tmp_path):
    victim = _middle_scan(data)
    cv2.imwrite(str(victim), np.full((64, 64, 3), 500, np.uint16))  # 16-bit colour
    work = tmp_path / "work"
    msg = rf"1 scan\(s\) are not 8- or 16-bit single-channel.*{victim} \(PNG colour type 2\)"
    with pytest.raises(ValueError, match=msg):
        prepare(data, work)
    _assert_nothing_prepared(work)


def test_8bit_png_is_read_with_values_unchanged_and_counted(data, tmp_path):
    """The one pixel-format fault that is recoverable: an 8-bit scan, read as uint16 with a counted warning."""
    victim = _middle_scan(data)
    img = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    cv2.imwrite(str(victim), img)
    with pytest.warns(LayoutWarning, match=rf"1 of \d+ scans are 8-bit.*{victim}"):
        man = read_layout(data, "train")
    work = tmp_path / "work"
    with pytest.warns(LayoutWarning):
        prepare(data, work)
    row = read_manifest(work).set_index("path").loc[str(victim)]
    vol = np.load(work / "volumes" / f"{row['case_day']}.npy")
    assert vol.dtype == np.uint16 and (vol[int(row["z"])] == img).all()
    assert len(man) == len(read_manifest(work))


# ---------------------------------------------------------------------------------------------------------------
# missing slices, ids, case-days


def test_slice_missing_in_the_middle(data, tmp_path):
    victim = _middle_scan(data)
    case_day = victim.parents[1].name
    victim.unlink()
    # strict: an error naming the case-day and the slice; nothing written
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=rf"{case_day} lacks slice\(s\) 6.*strict"):
        prepare(data, work, strict=True)
    _assert_nothing_prepared(work)
    # default: a counted warning, the case-day is kept with one slice less
    with pytest.warns(LayoutWarning, match=rf"1 case-day\(s\) have missing slices.*{case_day} lacks slice\(s\) 6"):
        prepare(data, work)
    man = read_manifest(work)
    assert (man["case_day"] == case_day).sum() == 11 and (man.loc[man["case_day"] == case_day, "depth"] == 11).all()
    # in a test tree a gap is always an error (2.5D stacks and 3D models need every slice); no submission
    tvictim = _middle_scan(data, "test")
    tvictim.unlink()
    out = tmp_path / "submission.csv"
    msg = rf"{tvictim.parent}: case-day {tvictim.parents[1].name} lacks slice\(s\) \[6\]"
    with pytest.raises(ValueError, match=msg):
        _infer(data, tmp_path, out)
    assert not out.exists()


def test_label_id_with_no_scan(data, tmp_path):
    labels = pd.read_csv(data / "train.csv", keep_default_na=False)
    ghost = "case6_day99_slice_0001"
    extra = pd.DataFrame({"id": [ghost] * 3, "class": ["large_bowel", "small_bowel", "stomach"], "segmentation": ""})
    pd.concat([labels, extra]).to_csv(data / "train.csv", index=False)
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=rf"1 id\(s\) of {data / 'train.csv'} have no scan in .*{ghost}.*strict"):
        prepare(data, work, strict=True)
    _assert_nothing_prepared(work)
    r = _prepare_cli(data, work, "--strict")
    assert r.returncode == 2 and ghost in r.stderr and "Traceback" not in r.stderr
    # default: the orphan id is ignored with a counted warning; the manifest holds exactly the scans
    with pytest.warns(LayoutWarning, match=rf"1 id\(s\) of .*train.csv have no scan.*{ghost}"):
        prepare(data, work)
    man = read_manifest(work)
    assert ghost not in set(man["id"]) and len(man) == len(_scans(data))


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("5 3 9", r"odd number of values \(3\)"),
        ("5 x", r"non-integer value 'x'"),
        ("2.5 3", r"non-integer value '2.5'"),
        ("0 3", r"start below 1: 0"),
        ("5 0", r"length not positive: 0"),
        ("5 -2", r"length not positive: -2"),
        ("4090 10", r"run 4090 10 goes past the image end \(4096 pixels\)"),
        ("20 5 10 3", r"runs are unsorted"),
        ("10 5 12 3", r"runs are overlapping"),
    ],
)
def test_malformed_rle_each_kind(data, tmp_path, rle, message):
    labels = pd.read_csv(data / "train.csv", keep_default_na=False)
    row = labels.index[labels["class"] == "stomach"][4]
    labels.loc[row, "segmentation"] = rle
    labels.to_csv(data / "train.csv", index=False)
    sid = labels.loc[row, "id"]
    work = tmp_path / "work"
    with pytest.raises(RLEError, match=rf"{data / 'train.csv'}: RLE .*{message}.*row id '{sid}/stomach'"):
        prepare(data, work)
    _assert_nothing_prepared(work)


def test_test_tree_with_an_empty_case_day(data, tmp_path, caplog):
    scans = _middle_scan(data, "test").parent
    for p in scans.glob("*.png"):
        p.unlink()
    out = tmp_path / "submission.csv"
    # by default an error naming the folder; nothing written
    with pytest.raises(ValueError, match=rf"1 case-day folder\(s\) hold no scans: {scans}.*--skip-empty"):
        _infer(data, tmp_path, out)
    assert not out.exists()
    # the user chose to skip it: the skip is counted in the log and the other case-days are predicted
    with caplog.at_level(logging.WARNING), pytest.warns(LayoutWarning, match=r"1 case-day folder\(s\) hold no scans"):
        sub = _infer(data, tmp_path, out, skip_empty=True)
    assert any(
        "skipped 1 empty case-day folder(s)" in r.getMessage() and str(scans) in r.getMessage() for r in caplog.records
    )
    man = read_layout(data, "test", strict=False)
    empty_cd = scans.parent.name
    assert empty_cd not in set(man["case_day"])
    assert len(sub) == 3 * len(man) and not sub["id"].str.startswith(empty_cd + "_").any()
    # the command line says the same, without a traceback
    out2 = tmp_path / "sub2.csv"
    r = run(
        [
            PY,
            "tools/infer.py",
            "--data-root",
            str(data),
            "--spec",
            str(tmp_path / "spec.yaml"),
            "--root",
            str(tmp_path),
            "--out",
            str(out2),
            "--no-progress",
        ]
    )
    assert r.returncode == 2 and "hold no scans" in r.stderr and str(scans) in r.stderr and "Traceback" not in r.stderr
    assert not out2.exists()
    # prepare: strict refuses it, the default skips it with a counted warning
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=rf"1 case-day folder\(s\) hold no scans: {scans}"):
        prepare(data, work, split="test", strict=True)
    _assert_nothing_prepared(work)
    with pytest.warns(LayoutWarning, match=rf"1 case-day folder\(s\) hold no scans: {scans}"):
        state = prepare(data, work, split="test")
    assert state["n_case_days"] == man["case_day"].nunique()
