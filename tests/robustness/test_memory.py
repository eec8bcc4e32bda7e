"""A test tree ten times larger is streamed: the peak of memory allocated by ``ensembles.pipeline.infer`` (traced
with ``tracemalloc``, which sees numpy's buffers) does not grow with the number of case-days. Not a timed test;
the peak RSS of ``tools/infer.py`` with real models is measured by ``benchmarks/bench_memory.py``."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

from fake_models import LOADERS, write_spec
from robust_helpers import synth

#: Per case-day the pipeline holds a few float32 (D, 3, H, W) maps: 16 x 3 x 128 x 128 x 4 B = 3 MiB each.
SLICES, SIZE = 16, "128x128"


def _tree(template: Path, root: Path, n: int) -> Path:
    """``root/test`` with ``n`` copies of the case-day folder ``template``; a header-only sample submission."""
    for i in range(n):
        case, day = 500 + i // 3, i % 3
        shutil.copytree(template, root / "test" / f"case{case}" / f"case{case}_day{day}" / "scans")
    (root / "sample_submission.csv").write_text("id,class,predicted\n")
    return root


def _peak_mib(root: Path, tmp: Path) -> float:
    from ensembles.spec import load_spec
    from inference.pipeline import infer

    spec = load_spec(write_spec(tmp), root=tmp)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        sub = infer(root, spec, tmp / "submission.csv", loaders=LOADERS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(sub) == 3 * SLICES * len(list((root / "test").glob("case*/case*")))
    return peak / 2**20


def test_infer_peak_memory_does_not_grow_with_the_tree(tmp_path):
    """Measured here: ~14.4 MiB for 2 case-days, ~15.6 MiB for 20; a pipeline that kept each case-day's result
    would reach ~83 MiB for 20."""
    n = 2
    src = synth(tmp_path / "src", cases=1, test_cases=1, slices=SLICES, sizes=SIZE, seed=0)
    template = sorted((src / "test").glob("case*/case*_day*/scans"))[0]
    (tmp_path / "s").mkdir()
    small = _peak_mib(_tree(template, tmp_path / "small", n), tmp_path / "s")
    (tmp_path / "l").mkdir()
    large = _peak_mib(_tree(template, tmp_path / "large", 10 * n), tmp_path / "l")
    # one case-day's maps are ~3 MiB each: holding every case-day would add ~18 x 3 MiB per map kept
    assert small > 3.0, small  # the measurement sees the per-case-day arrays
    assert large < small * 1.25 + 2.0, f"peak {small:.1f} MiB for {n} case-days, {large:.1f} MiB for {10 * n}"
