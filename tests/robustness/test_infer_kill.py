"""``tools/infer.py`` killed half-way (in the middle of the case-days, in the middle of writing the submission):
no partial ``submission.csv`` exists, and a rerun writes the same file, byte for byte, as an uninterrupted run
(the ``--save-probs`` folder too)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from fake_models import write_spec
from robust_helpers import PY, assert_killed, assert_ok, run_driver

HERE = Path(__file__).resolve().parent


def _files(d: Path) -> dict[str, bytes]:
    """Files under ``d``; in meta.json the spec path (which names the run's folder) is left out."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            raw = p.read_bytes()
            if p.name == "meta.json":
                meta = json.loads(raw)
                assert meta.pop("config").endswith("spec.yaml")
                raw = json.dumps(meta, sort_keys=True).encode()
            out[str(p.relative_to(d))] = raw
    return out


def _driver(data: Path, tmp: Path, out: Path, probs: Path, patch: str = "") -> str:
    """tools/infer.py's main with the stand-in models, after ``patch``."""
    args = [
        "--data-root",
        str(data),
        "--split",
        "test",
        "--spec",
        str(tmp / "spec.yaml"),
        "--root",
        str(tmp),
        "--out",
        str(out),
        "--save-probs",
        str(probs),
        "--no-progress",
    ]
    return f"""
import importlib.util
_fm = importlib.util.spec_from_file_location("fake_models", {str(HERE / "fake_models.py")!r})
fake_models = importlib.util.module_from_spec(_fm); _fm.loader.exec_module(fake_models)
import inference.pipeline as pipeline
pipeline.LOADERS.update(fake_models.LOADERS)
{textwrap.dedent(patch).strip()}
import importlib.util
spec = importlib.util.spec_from_file_location("tools_infer", {str(HERE.parents[1] / "tools" / "infer.py")!r})
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
sys.exit(mod.main({args!r}))
"""


@pytest.fixture(scope="module")
def reference(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, bytes]]:
    """Submission bytes and --save-probs files of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("infer_ref")
    write_spec(tmp)
    out, probs = tmp / "submission.csv", tmp / "probs"
    assert_ok(run_driver(_driver(synth_root, tmp, out, probs), tmp))
    sub = pd.read_csv(out, keep_default_na=False)
    n = sum(1 for _ in (synth_root / "test").glob("case*/case*/scans/*.png"))
    assert len(sub) == 3 * n and (sub["predicted"] != "").sum() > 0 and (sub["predicted"] == "").sum() > 0
    return out.read_bytes(), _files(probs)


KILLS = {
    # the second of three case-days is being predicted (after the writer thread has written the first one's files)
    "mid_case_days": """
        import time
        _predict = pipeline.predict_case_day
        _calls = [0]
        def predict_case_day(*a, **k):
            _calls[0] += 1
            if _calls[0] == 2:
                time.sleep(1.0)
                die()
            return _predict(*a, **k)
        pipeline.predict_case_day = predict_case_day
    """,
    # every case-day is done and the CSV is fully written to its temporary file, but not yet renamed
    # (os.replace / os.fdopen are patched process-wide: whichever module does the atomic write uses them)
    "before_rename": """
        _replace = os.replace
        def replace(src, dst):
            if str(dst).endswith("submission.csv"):
                die()
            return _replace(src, dst)
        os.replace = replace
    """,
    # half of the CSV's text is on disk when the process dies
    "mid_csv_write": """
        _fdopen = os.fdopen
        class HalfWriter:
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *a): return self.f.__exit__(*a)
            def write(self, text):
                if text[:18] in ("id,class,predicted", b"id,class,predicted"):  # the submission (str or bytes)
                    self.f.write(text[: len(text) // 2]); self.f.flush(); os.fsync(self.f.fileno()); die()
                return self.f.write(text)
            def __getattr__(self, k): return getattr(self.f, k)
        os.fdopen = lambda *a, **k: HalfWriter(_fdopen(*a, **k))
    """,
}


@pytest.mark.parametrize("point", sorted(KILLS))
def test_infer_killed_then_rerun_is_byte_identical(synth_root, reference, tmp_path, point):
    write_spec(tmp_path)
    out, probs = tmp_path / "submission.csv", tmp_path / "probs"
    assert_killed(run_driver(_driver(synth_root, tmp_path, out, probs, KILLS[point]), tmp_path, "killed.py"))
    assert not out.exists(), "a killed run must not leave a submission.csv"
    if point == "mid_case_days":
        assert len(list(probs.glob("*.npy"))) == 1  # the first case-day's probabilities were saved
    else:
        leftovers = list(tmp_path.glob(".submission.csv.*.tmp"))
        assert len(leftovers) == 1  # only the hidden temporary file, which no reader picks up
        if point == "mid_csv_write":
            assert 0 < len(leftovers[0].read_bytes()) < len(reference[0])
    r = run_driver(_driver(synth_root, tmp_path, out, probs), tmp_path)
    assert_ok(r)
    assert out.read_bytes() == reference[0]
    assert _files(probs) == reference[1]


def test_infer_refuses_to_overwrite_without_flag_and_keeps_the_old_file(synth_root, reference, tmp_path):
    write_spec(tmp_path)
    out, probs = tmp_path / "submission.csv", tmp_path / "probs"
    out.write_text("made by the user\n")
    r = run_driver(_driver(synth_root, tmp_path, out, probs), tmp_path)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    assert out.read_text() == "made by the user\n"
    assert PY  # the interpreter the drivers ran with
