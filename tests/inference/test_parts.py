"""Resumable inference in parts (``inference.parts``, ``tools/infer.py --num-parts/--part-id/--merge``, torchrun):
a run killed with SIGKILL resumes and gives the same bytes, predicting only what is missing; parts written by
sequential processes or under torchrun merge into the same bytes as one uninterrupted run."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from nclass_fixtures import fake_format, make_work

from data_prep.dataset import KAGGLE
from ensembles.spec import load_spec
from evaluation.predictions import PREDICTION_FORMATS, PREDICTIONS_JSON
from inference.parts import KEEP, PartPlan, PartStore, env_part, split_parts
from inference.pipeline import infer

REPO = Path(__file__).resolve().parents[2]
KEYS = ("case1_day1", "case1_day3", "case2_day1", "case3_day7", "case4_day2")

#: A stand-in 2.5D model, shared by the in-process tests and the subprocess driver: probabilities from the image
#: (class c: image / max + 0.1 (c - 1)), each call logged (one line per case-day: the volume's sum) to $PARTS_LOG;
#: the $PARTS_KILL_AT-th call kills its own process with SIGKILL (a part is written, by the writer thread, after its
#: call returns).
FAKE = """
import os, signal, time
import numpy as np

class Seg:
    def predict_volume(self, volume, keep=None, boxes=None, tta=(), batch_size=16, spacing=None):
        log = os.environ.get("PARTS_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{int(np.asarray(volume, np.int64).sum())}\\n")
            with open(log) as f:
                n = len(f.read().splitlines())
            if n == int(os.environ.get("PARTS_KILL_AT", "0")):
                time.sleep(1.0)  # the writer thread finishes the parts of the case-days before this one
                os.kill(os.getpid(), signal.SIGKILL)
        v = np.asarray(volume, np.float32)
        v = v / max(float(v.max()), 1.0)
        p = np.stack([np.clip(v + 0.1 * (c - 1), 0, 1) for c in range(3)], axis=1)
        if keep is not None:
            p[~np.asarray(keep, bool)] = 0
        return p

LOADERS = {"2.5d": lambda m, ck, device: Seg()}
"""

#: Runs tools/infer.py's main with the stand-in (argv after the script name).
DRIVER = """
import importlib.util, sys
sys.path.insert(0, {repo!r})
{fake}
spec = importlib.util.spec_from_file_location("tools_infer", {tool!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.exit(mod.main(sys.argv[1:], loaders=LOADERS))
"""

ns: dict = {}
exec(FAKE, ns)  # noqa: S102 - our own stand-in, defined above
LOADERS = ns["LOADERS"]


def _tool():
    spec = importlib.util.spec_from_file_location("tools_infer_parts", REPO / "tools" / "infer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> tuple[Path, Path]:
    """A Kaggle WORK of 5 case-days (4 slices of 12 x 10) and a one-model spec (no gate)."""
    tmp = tmp_path_factory.mktemp("parts")
    work, _ = make_work(tmp / "work", classes=KAGGLE.classes, fmt="kaggle", keys=KEYS, shape=(4, 12, 10))
    post = {"post": {"max_prob_floor": 0.0, "min_component": 0}}
    _one_model_spec(tmp, "spec.yaml", **post)
    _one_model_spec(tmp, "other.yaml", thresholds=0.6, **post)
    return work, tmp


def _one_model_spec(folder: Path, name: str = "spec.yaml", **changes) -> Path:
    """A spec of one stand-in 2.5D model (fold 0; its checkpoint and config files exist, empty) in ``folder``."""
    for f in ("seg_0.pth", "m.py"):
        (folder / f).write_text("")
    raw = {
        "name": "one",
        "folds": [0],
        "models": [{"name": "seg", "kind": "2.5d", "config": "m.py", "checkpoints": "seg_{fold}.pth"}],
        "gate": {"method": "none"},
        "fusion": {"weight_2d": 1.0, "weight_3d": 0.0},
        "thresholds": 0.5,
        **changes,
    }
    (folder / name).write_text(yaml.safe_dump(raw))
    return folder / name


@pytest.fixture(scope="module")
def reference(kaggle, tmp_path_factory) -> tuple[bytes, bytes]:
    """The submission and keep.csv of one uninterrupted run (in-process)."""
    work, tmp = kaggle
    out = tmp_path_factory.mktemp("ref") / "sub.csv"
    spec = load_spec(tmp / "spec.yaml", root=tmp, classes=KAGGLE.classes)
    sub = infer(None, spec, out, work=work, loaders=LOADERS, save_probs=out.parent / "probs")
    assert len(sub) == 3 * 4 * len(KEYS) and sub["predicted"].str.len().gt(0).any()
    return out.read_bytes(), (out.parent / "probs" / "keep.csv").read_bytes()


def _args(work: Path, tmp: Path, out: Path, *more: str) -> list[str]:
    return ["--work", str(work), "--spec", str(tmp / "spec.yaml"), "--root", str(tmp), "--out", str(out)] + [
        "--no-progress",
        *more,
    ]


def _driver(tmp_path: Path) -> Path:
    p = tmp_path / "driver.py"
    p.write_text(DRIVER.format(repo=str(REPO), fake=FAKE, tool=str(REPO / "tools" / "infer.py")))
    return p


def _sums(work: Path) -> dict[str, str]:
    """What the stand-in logs for each case-day (its volume's sum)."""
    from data_prep.work import read_dataset
    from inference.predict import load_channels

    info = read_dataset(work)
    return {k: str(int(np.asarray(load_channels(work, k, info), np.int64).sum())) for k in KEYS}


def _log(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_split_parts_and_env_part(monkeypatch):
    keys = ["d", "b", "e", "a", "c"]
    assert [split_parts(keys, 3, k) for k in range(3)] == [["a", "d"], ["b", "e"], ["c"]]
    assert sorted(sum((split_parts(keys, 2, k) for k in range(2)), [])) == sorted(keys)
    with pytest.raises(ValueError, match=r"--part-id must be in \[0, 2\)"):
        split_parts(keys, 2, 2)
    assert PartPlan(2, 1).mine(keys) == ["d", "b"]  # the share of sorted keys, in the caller's order
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert env_part() == (1, 0, None) and env_part(4, 3) == (4, 3, None)
    with pytest.raises(ValueError, match="--part-id 1 needs --num-parts"):
        env_part(None, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_part() == (2, 1, 1) and env_part(2, 1) == (2, 1, 1)
    with pytest.raises(ValueError, match="disagree with torchrun's WORLD_SIZE=2 RANK=1"):
        env_part(3, 1)


def test_part_store_meta_digest_and_clear(tmp_path):
    folder = tmp_path / "x.parts"
    store = PartStore(folder, {"spec": "a"}, tables=("rows", KEEP))
    store.write("k1", [("s1", "c", "1 2")], ["id", "class", "predicted"])
    assert not store.done("k1")  # its keep part is missing
    store.write("k1", pd.DataFrame({"id": ["s1"], "c": [1]}), table=KEEP)
    assert store.done("k1") and store.missing(["k0", "k1"]) == ["k0"]
    assert (folder / "k1.csv").read_text() == f"# {store.digest}\nid,class,predicted\ns1,c,1 2\n"
    with pytest.raises(ValueError, match=r"x.parts holds the parts of another run \(differing: spec\).*--overwrite"):
        PartStore(folder, {"spec": "b"})
    other = PartStore(folder, {"spec": "b"}, overwrite=True, clear_keys=["k9"])  # only k9 cleared: k1 stays ...
    assert (folder / "k1.csv").is_file() and not other.done("k1")  # ... but no longer counts
    PartStore(folder, {"spec": "b"}, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="mine holds files but no meta.json"):
        PartStore(tmp_path / "mine", {"spec": "a"})


def test_resume_after_sigkill_is_byte_identical(kaggle, reference, tmp_path, monkeypatch):
    work, tmp = kaggle
    out = tmp_path / "sub.csv"
    args = _args(work, tmp, out, "--save-probs", str(tmp_path / "probs"))
    env = {**os.environ, "PARTS_LOG": str(tmp_path / "run1.log"), "PARTS_KILL_AT": "3"}
    cmd = [sys.executable, str(_driver(tmp_path)), *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists()
    parts = sorted(p.stem for p in (tmp_path / "sub.csv.parts").glob("*.csv"))
    n = len(parts)
    assert parts == list(KEYS[:2])
    # the rerun (here in-process, the same main) predicts only the case-days without a part, in order
    monkeypatch.setenv("PARTS_LOG", str(tmp_path / "run2.log"))
    assert _tool().main(args, loaders=LOADERS) == 0
    sums = _sums(work)
    assert _log(tmp_path / "run1.log") == [sums[k] for k in KEYS[:3]]  # the third was killed mid-way
    assert _log(tmp_path / "run2.log") == [sums[k] for k in KEYS[n:]]
    assert out.read_bytes() == reference[0]
    assert (tmp_path / "probs" / "keep.csv").read_bytes() == reference[1]  # keep.csv survives the resume
    meta = json.loads((tmp_path / "probs" / "meta.json").read_text())
    assert sorted(meta["case_days"]) == sorted(KEYS)


def test_num_parts_sequential_merge_and_other_spec(kaggle, reference, tmp_path, capsys):
    work, tmp = kaggle
    tool = _tool()
    out = tmp_path / "sub.csv"
    probs = ["--save-probs", str(tmp_path / "probs")]
    assert tool.main(_args(work, tmp, out, "--num-parts", "2", "--part-id", "1", *probs), loaders=LOADERS) == 0
    assert "part 1 of 2: 2 case-day(s) predicted" in capsys.readouterr().out and not out.exists()
    assert sorted(p.stem for p in (tmp_path / "sub.csv.parts").glob("*.csv")) == split_parts(KEYS, 2, 1)
    # --merge with part 0 missing: an error naming its case-days; nothing written
    assert tool.main(_args(work, tmp, out, "--merge"), loaders=LOADERS) == 2
    err = capsys.readouterr().err
    assert "3 of 5 case-day(s) not predicted yet: case1_day1, case2_day1, case4_day2" in err and not out.exists()
    # another spec on these parts is refused
    other = _args(work, tmp, out, "--num-parts", "2", "--part-id", "0")
    other[other.index("--spec") + 1] = str(tmp / "other.yaml")
    assert tool.main(other, loaders=LOADERS) == 2
    assert "holds the parts of another run (differing: spec); pass --overwrite" in capsys.readouterr().err
    # part 0 ends last: it finds every part and writes the submission, the same bytes as one run
    assert tool.main(_args(work, tmp, out, "--num-parts", "2", "--part-id", "0", *probs), loaders=LOADERS) == 0
    assert out.read_bytes() == reference[0]
    assert (tmp_path / "probs" / "keep.csv").read_bytes() == reference[1]
    # --merge alone rewrites it from the parts (no model loaded: a loader that fails is never called)
    boom = {"2.5d": lambda m, ck, d: (_ for _ in ()).throw(RuntimeError("loaded"))}
    out.unlink()
    assert tool.main(_args(work, tmp, out, "--merge", *probs), loaders=boom) == 0
    assert out.read_bytes() == reference[0]


def test_num_parts_of_a_volume_folder(tmp_path, monkeypatch):
    """Another format: each part writes its volumes; the last one writes predictions.json for all."""
    calls: list = []
    monkeypatch.setitem(PREDICTION_FORMATS, "slices", fake_format(calls))
    work, _ = make_work(tmp_path / "work", classes=KAGGLE.classes, keys=KEYS[:3], shape=(3, 8, 6))
    spec = load_spec(_one_model_spec(tmp_path), root=tmp_path, classes=KAGGLE.classes)
    one = infer(None, spec, tmp_path / "one", work=work, loaders=LOADERS)
    out = tmp_path / "pred"
    pp = tmp_path / "elsewhere"  # --parts-dir
    first = infer(None, spec, out, work=work, loaders=LOADERS, parts=PartPlan(2, 0, pp))
    assert len(first) == 0 and first.attrs["missing"] == split_parts(KEYS[:3], 2, 1)
    assert sorted(p.name for p in pp.iterdir()) == ["case1_day1.csv", "case2_day1.csv", "meta.json"]
    assert pd.read_csv(pp / "case1_day1.csv", comment="#").values.tolist() == [["case1_day1", "case1_day1.npy"]]
    assert json.loads((out / PREDICTIONS_JSON).read_text())["volumes"] == {}
    second = infer(None, spec, out, work=work, loaders=LOADERS, parts=PartPlan(2, 1, pp))
    assert second["key"].tolist() == list(KEYS[:3]) and second["skipped"].tolist() == [True, False, True]
    index = json.loads((out / PREDICTIONS_JSON).read_text())
    assert index["volumes"] == json.loads((tmp_path / "one" / PREDICTIONS_JSON).read_text())["volumes"]
    for k in KEYS[:3]:
        assert (out / f"{k}.npy").read_bytes() == (tmp_path / "one" / f"{k}.npy").read_bytes()
    assert one["skipped"].tolist() == [False] * 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # three processes that each import torch and mmseg: ~20 s on two busy cores
def test_torchrun_two_processes_gloo(kaggle, reference, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.is_file() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed beside this python")
    work, tmp = kaggle
    out = tmp_path / "sub.csv"
    cmd = [str(torchrun if torchrun.is_file() else "torchrun"), "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(_driver(tmp_path)), *_args(work, tmp, out, "--device", "cpu")]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PARTS_LOG=str(tmp_path / "calls.log"), OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(REPO), timeout=180)
    if r.returncode != 0 and ("errno" in r.stderr.lower() and "address" in r.stderr.lower()):
        pytest.skip(f"torchrun could not start its rendezvous here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(_log(tmp_path / "calls.log")) == len(KEYS)  # each case-day predicted once, by one of the two
    assert out.read_bytes() == reference[0]
    assert "part 1 of 2: " in r.stdout and f"wrote {out}: {3 * 4 * len(KEYS)} rows" in r.stdout
