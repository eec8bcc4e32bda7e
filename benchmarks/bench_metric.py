"""Benchmark of the competition metric and of the fusion + post-processing + RLE path.

1. Scores all real case-days (``../shared/data/uwmgi_labels``) against a perturbed copy of themselves (each
   case-day gets one of: dilate, erode, shift, drop slices; round-robin in sorted order) with the fast metric,
   in ``--workers`` processes, timed (decoding included, building the perturbed table excluded).
2. Runs the plain reference (``scipy.spatial.distance.directed_hausdorff`` on all voxel coordinates) on a
   measured subset (``--ref-case-days``, every k-th case-day), extrapolates it to all case-days (said so in the
   table) and checks the fast result equals it (max abs difference).
3. Fusion (3 models) + gate + threshold + weak-class emptying + small-component removal + RLE throughput in
   slices/s on random probability maps of the real size 266x266.

Prints a table and writes ``benchmarks/results/bench_metric.json``.

    python benchmarks/bench_metric.py [--workers 2] [--ref-case-days 8] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.ndimage as ndi

from data_prep.constants import CLASSES
from data_prep.layout import RLEVolumes, read_rle_table, shapes_manifest
from data_prep.rle import rle_encode
from ensembles import core
from evaluation.metric import score_case_day
from evaluation.scoring import score_tables

REPO = Path(__file__).resolve().parents[1]

DATA = REPO.parent / "shared" / "data" / "uwmgi_labels"
PERTURBATIONS = ("dilate", "erode", "shift", "drop")


def perturb(vol: np.ndarray, kind: str) -> np.ndarray:
    """A perturbed copy of bool ``(D, C, H, W)`` masks."""
    st = np.zeros((3, 3, 3, 3), bool)
    st[1, 1] = ndi.generate_binary_structure(2, 1)
    if kind == "dilate":
        return ndi.binary_dilation(vol, st, iterations=2)
    if kind == "erode":
        return ndi.binary_erosion(vol, st, iterations=2)
    if kind == "shift":
        return np.roll(np.roll(vol, 3, axis=3), -2, axis=2)
    if kind == "drop":
        out = vol.copy()
        out[::9] = False
        return out
    raise ValueError(kind)


def build_pred(truth: pd.DataFrame, manifest: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    vols = RLEVolumes(truth, manifest, case_days=keys)
    rows = []
    for i, cd in enumerate(keys):
        ids, *_ = vols.rles(cd)
        p = perturb(vols[cd], PERTURBATIONS[i % len(PERTURBATIONS)])
        for z, sid in enumerate(ids):
            for c, cls in enumerate(CLASSES):
                rows.append((sid, cls, rle_encode(p[z, c])))
    df = pd.DataFrame(rows, columns=["id", "class", "predicted"])
    return read_rle_table(df)


def _cpu() -> float:
    """CPU seconds of this process and its reaped children."""
    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def bench_fusion(n_slices: int = 144, hw: int = 266, repeats: int = 2) -> float:
    rng = np.random.default_rng(0)
    base = ndi.gaussian_filter(rng.random((n_slices, 3, hw, hw)).astype(np.float32), (0, 0, 6, 6))
    base = (base - base.min()) / (base.max() - base.min())
    probs = [
        np.clip(base + 0.05 * rng.standard_normal(base.shape).astype(np.float32), 0, 1).astype(np.float16)
        for _ in range(3)
    ]
    keep = rng.random((n_slices, 3)) > 0.3
    ids = [f"case1_day0_slice_{i + 1:04d}" for i in range(n_slices)]
    t0 = time.perf_counter()
    for _ in range(repeats):
        fused = core.fuse(probs, [0.2, 0.3, 0.5])
        fused = core.apply_keep(fused, keep)
        masks = core.postprocess(fused, 0.5, max_prob_floor=0.55, min_component=25, component_mode="2d")
        core.encode_rows(ids, masks)
    return n_slices * repeats / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ref-case-days", type=int, default=4, help="case-days for the slow reference")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N case-days (0: all)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_metric.json"))
    a = ap.parse_args(argv)
    if not (DATA / "train.csv.gz").is_file():
        print(f"real labels not found under {DATA}; nothing to benchmark")
        return 1
    truth = read_rle_table(DATA / "train.csv.gz")
    manifest = shapes_manifest(pd.read_csv(DATA / "scan_manifest.csv.gz"))
    keys = sorted(manifest["case_day"].unique())
    if a.limit:
        keys = keys[: a.limit]
        truth = truth[truth["id"].str.rsplit("_slice_", n=1).str[0].isin(set(keys))]
    t0 = time.perf_counter()
    pred = build_pred(truth, manifest, keys)
    t_build = time.perf_counter() - t0

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    c0 = _cpu()
    fast = score_tables(truth, pred, manifest, workers=a.workers)
    t_fast = time.perf_counter() - t0
    cpu_fast = _cpu() - c0

    # reference on a subset: every k-th case-day, one process, same decoded volumes
    # (k * step + k) so that the subset holds every perturbation (they go round-robin over the sorted keys)
    step = max(1, len(keys) // max(1, a.ref_case_days))
    sub = sorted({keys[min(len(keys) - 1, k * step + k % len(PERTURBATIONS))] for k in range(a.ref_case_days)})
    tv, pv = RLEVolumes(truth, manifest, case_days=sub), RLEVolumes(pred, manifest, case_days=sub)
    t_ref = t_fast_sub = 0.0
    max_diff = 0.0
    for cd in sub:
        t, p = tv[cd], pv[cd]
        s = time.perf_counter()
        r_fast = score_case_day(cd, p, t)
        t_fast_sub += time.perf_counter() - s
        s = time.perf_counter()
        r_ref = score_case_day(cd, p, t, reference=True)
        t_ref += time.perf_counter() - s
        max_diff = max(max_diff, float(np.nanmax(np.abs(r_fast.distance - r_ref.distance))))
    ref_extrapolated = t_ref / len(sub) * len(keys)
    fast_1proc_extrapolated = t_fast_sub / len(sub) * len(keys)

    sps = bench_fusion()
    rows = [
        ("case-days scored", len(keys)),
        ("slices", int(manifest["case_day"].isin(set(keys)).sum())),
        (f"fast metric, all case-days, wall s (workers={a.workers}, decoding included)", round(t_fast, 2)),
        ("fast metric, all case-days, CPU s of all processes", round(cpu_fast, 2)),
        ("fast metric, subset, s per case-day (1 process)", round(t_fast_sub / len(sub), 4)),
        (f"reference, subset, s per case-day (1 process, measured on {len(sub)})", round(t_ref / len(sub), 3)),
        ("reference, all case-days, s (EXTRAPOLATED from the subset, 1 process)", round(ref_extrapolated, 1)),
        ("fast, all case-days, s (extrapolated, 1 process)", round(fast_1proc_extrapolated, 1)),
        ("speed-up reference / fast (same subset, 1 process)", round(t_ref / max(t_fast_sub, 1e-9), 1)),
        ("max |fast - reference| Hausdorff distance on the subset", max_diff),
        ("score (perturbed vs truth)", round(fast.score, 5)),
        ("dice", round(fast.dice, 5)),
        ("1 - hausdorff", round(fast.hausdorff, 5)),
        ("fusion(3) + gate + post + RLE, slices/s (266x266, 1 process)", round(sps, 1)),
        ("building the perturbed table, s (not timed above)", round(t_build, 1)),
        ("1-min load average before the timed run (machine shared?)", round(load_before, 2)),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: v for k, v in rows}
    payload.update({"cpu_count": os.cpu_count(), "subset": sub})
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
