"""``python -m data_prep prepare`` killed half-way (between case-days, in the middle of writing a volume, before
the splits): a rerun finishes and its WORK folder equals an uninterrupted run's, byte for byte."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from robust_helpers import PY, assert_killed, assert_ok, run, run_driver


def _files(work: Path) -> dict[str, bytes]:
    """Every file under ``work`` (relative path -> bytes)."""
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}


def _prepare_cmd(data: Path, work: Path) -> list[str]:
    return [PY, "-m", "data_prep", "-q", "prepare", "--data-root", str(data), "--out", str(work)]


@pytest.fixture(scope="module")
def reference(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of an uninterrupted run."""
    work = tmp_path_factory.mktemp("prep_ref") / "work"
    assert_ok(run(_prepare_cmd(synth_root, work)))
    files = _files(work)
    assert "manifest.csv" in files and "splits/splits.json" in files and len(files) > 20
    return files


#: Kill points, each a patch applied in the driver before the CLI runs.
KILLS = {
    # the 4th case-day is about to be read: 3 volumes + masks are complete
    "between_case_days": "kill_on_call(prep, '_prepare_case_day', 4)",
    # the 5th .npy is half-written to its temporary file when the process dies
    "mid_volume_write": """
        import io
        import numpy as np
        _orig_save, _n = np.save, [0]
        def half_save(f, arr, *a, **k):
            _n[0] += 1
            if _n[0] != 5:
                return _orig_save(f, arr, *a, **k)
            buf = io.BytesIO(); _orig_save(buf, arr, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush(); os.fsync(f.fileno())
            die()
        np.save = half_save
    """,
    # every volume and the manifest are written, the splits are not
    "before_splits": "import data_prep.splits as spl\nkill_on_call(spl, 'write_splits', 1)",
}


@pytest.mark.parametrize("point", sorted(KILLS))
def test_prepare_killed_then_rerun_equals_uninterrupted(synth_root, reference, tmp_path, point):
    work = tmp_path / "work"
    patch = textwrap.dedent(KILLS[point]).strip()
    code = f"""
import data_prep.prepare as prep
{patch}
from data_prep.__main__ import main
sys.exit(main(["-q", "prepare", "--data-root", {str(synth_root)!r}, "--out", {str(work)!r}]))
"""
    assert_killed(run_driver(code, tmp_path))
    state = json.loads((work / "prepare.json").read_text())
    assert state["status"] == "running"
    if point != "before_splits":
        assert not (work / "manifest.csv").exists()
    # what a kill leaves: complete volumes, maybe a hidden temporary file, never a truncated .npy
    for p in (work / "volumes").glob("*.npy"):
        ref = reference[f"volumes/{p.name}"]
        assert p.read_bytes() == ref, f"{p} differs from the uninterrupted run's"
    if point == "mid_volume_write":
        assert list(work.rglob(".*.tmp")), "the half-written temporary file should be there"
    # a reader refuses the unfinished WORK
    from data_prep.work import read_manifest

    with pytest.raises(FileNotFoundError, match="did not finish"):
        read_manifest(work)
    r = run(_prepare_cmd(synth_root, work))
    assert_ok(r)
    got = _files(work)
    assert sorted(got) == sorted(reference), "the rerun left other files than an uninterrupted run"
    diff = [k for k in reference if got[k] != reference[k]]
    assert not diff, f"files differ from the uninterrupted run: {diff}"


def test_truncated_volume_from_a_non_atomic_writer_is_redone(synth_root, reference, tmp_path):
    """A finished-looking but truncated ``.npy`` (e.g. copied in by hand) in an unfinished WORK is not trusted:
    the rerun verifies every file and redoes that case-day."""
    work = tmp_path / "work"
    code = f"""
import data_prep.prepare as prep
kill_on_call(prep, '_prepare_case_day', 4)
from data_prep.__main__ import main
main(["-q", "prepare", "--data-root", {str(synth_root)!r}, "--out", {str(work)!r}])
"""
    assert_killed(run_driver(code, tmp_path))
    done = sorted((work / "volumes").glob("*.npy"))
    assert len(done) == 3
    raw = done[1].read_bytes()
    done[1].write_bytes(raw[: len(raw) - 100])  # header intact, data short
    mask = work / "masks" / done[2].name
    arr = np.load(mask)
    np.save(mask, arr[:-1])  # a complete .npy of the wrong shape
    assert_ok(run(_prepare_cmd(synth_root, work)))
    got = _files(work)
    assert sorted(got) == sorted(reference) and all(got[k] == reference[k] for k in reference)
