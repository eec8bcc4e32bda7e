"""Benchmark of the surface metrics (DSC, NSD, HD95, ASSD) against DeepMind's reference implementation.

Every real case-day (``../shared/data/uwmgi_labels``), every class present in it: the true mask against a seeded
perturbed copy (a shift of up to one slice and two pixels, then an erosion or a dilation, in-plane or 3D, one
iteration, and now and then a dropped slice; case-day ``k`` uses ``default_rng(seed + k)``), spacing
``(3.0, px_h, px_w)`` mm, NSD at one voxel (the largest side: 3 mm). Timed per class volume, in this process, the
two in turns (ours first on even volumes, the reference first on odd ones), wall and CPU time:

- ours: :func:`evaluation.surface.surface_scores` (both surfaces, both directions, all four numbers);
- the reference: ``surface_distance.compute_surface_distances`` + ``compute_dice_coefficient`` +
  ``compute_surface_dice_at_tolerance`` + ``compute_robust_hausdorff(95)`` + ``compute_average_surface_distance``.

The masks are decoded and perturbed before the clocks start. Then the product path: the perturbed masks as a
submission scored against the labels with :func:`evaluation.scoring.score_tables` (RLE decoding included), with
``--workers`` processes and with one, with and without the surface metrics. Prints a Markdown table (seconds,
ratio, max |difference| per metric) and writes ``benchmarks/results/bench_surface.json``.

    python benchmarks/bench_surface.py [--limit N] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.ndimage as ndi

from common.io import atomic_write_text
from data_prep.constants import CLASSES
from data_prep.layout import RLEVolumes, read_rle_table, shapes_manifest
from data_prep.rle import rle_encode
from evaluation.scoring import kaggle_spacings, score_tables
from evaluation.surface import SURFACE_METRICS, default_tolerance, surface_scores

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "uwmgi_labels"


def perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A perturbed copy of one class volume bool ``(D, H, W)``: shift, then erode or dilate, maybe drop a slice."""
    dz, dy, dx = int(rng.integers(-1, 2)), int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
    out = np.roll(mask, (dz, dy, dx), axis=(0, 1, 2))
    st = ndi.generate_binary_structure(3, 1)
    if rng.random() < 0.5:
        st[0] = st[2] = False  # in-plane
    out = (ndi.binary_erosion if rng.random() < 0.5 else ndi.binary_dilation)(out, st)
    zs = np.flatnonzero(out.any(axis=(1, 2)))
    if len(zs) > 2 and rng.random() < 0.3:
        out[zs[len(zs) // 2]] = False
    return out


def reference_scores(pred: np.ndarray, truth: np.ndarray, spacing: tuple, tolerance: float) -> np.ndarray:
    from surface_distance import metrics as sd

    d = sd.compute_surface_distances(truth, pred, spacing)
    return np.array(
        [
            sd.compute_dice_coefficient(truth, pred),
            sd.compute_surface_dice_at_tolerance(d, tolerance),
            sd.compute_robust_hausdorff(d, 95),
            float(np.mean(sd.compute_average_surface_distance(d))),
        ]
    )


def case_day_pairs(vol: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(perturbed, true) contiguous class volumes of one case-day, every class (an empty one stays empty)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(vol.shape[1]):
        t = np.ascontiguousarray(vol[:, c])
        out.append((perturb(t, rng) if t.any() else t.copy(), t))
    return out


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="only the first N case-days (0: all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_surface.json"))
    a = ap.parse_args(argv)
    try:
        import surface_distance  # noqa: F401
    except ImportError:
        print("the reference is not installed: pip install -r requirements-dev.txt (surface-distance)")
        return 1
    if not (DATA / "train.csv.gz").is_file():
        print(f"real labels not found under {DATA}; nothing to benchmark")
        return 1
    truth = read_rle_table(DATA / "train.csv.gz")
    raw = pd.read_csv(DATA / "scan_manifest.csv.gz")
    manifest = shapes_manifest(raw)
    keys = sorted(manifest["case_day"].unique())
    if a.limit:
        keys = keys[: a.limit]
        truth = truth[truth["id"].str.rsplit("_slice_", n=1).str[0].isin(set(keys))]
    spacings = kaggle_spacings(raw)
    vols = RLEVolumes(truth, manifest, case_days=keys)
    wall = np.zeros(2)  # ours, reference
    cpu = np.zeros(2)
    n = 0
    diff = np.zeros(4)
    rows = []
    for k, cd in enumerate(keys):
        spacing = spacings[cd]
        tol = default_tolerance(spacing)
        vol = vols[cd]
        pred = np.zeros_like(vol)
        for c, (p, t) in enumerate(case_day_pairs(vol, a.seed + k)):
            pred[:, c] = p
            if not (p.any() and t.any()):
                continue
            got = {}
            for side in (0, 1) if n % 2 == 0 else (1, 0):
                w0, c0 = _clock()
                got[side] = surface_scores(p, t, spacing, tol) if side == 0 else reference_scores(p, t, spacing, tol)
                w1, c1 = _clock()
                wall[side] += w1 - w0
                cpu[side] += c1 - c0
            diff = np.maximum(diff, np.abs(got[0] - got[1]))
            n += 1
        ids, *_ = vols.rles(cd)
        rows += [(sid, cls, rle_encode(pred[z, c])) for z, sid in enumerate(ids) for c, cls in enumerate(CLASSES)]
        print(f"\r{k + 1}/{len(keys)} case-days, {n} class volumes", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    sub = read_rle_table(pd.DataFrame(rows, columns=["id", "class", "predicted"]))
    product = {}
    for workers, surface in ((a.workers, True), (0, True), (a.workers, False)):
        w0, _ = _clock()
        res = score_tables(truth, sub, raw, workers=workers, surface=surface)
        product[(workers, surface)] = (time.perf_counter() - w0, res)
    nsd = float(product[(a.workers, True)][1].per_class.set_index("class").loc["all", "nsd"])
    table = [
        ("case-days", len(keys)),
        ("class volumes (both masks non-empty)", n),
        ("reference (surface-distance 0.1), 1 process, wall s / CPU s", f"{wall[1]:.1f} / {cpu[1]:.1f}"),
        ("ours (evaluation.surface), 1 process, wall s / CPU s", f"{wall[0]:.2f} / {cpu[0]:.2f}"),
        ("speed-up reference / ours, wall / CPU", f"{wall[1] / wall[0]:.1f} / {cpu[1] / cpu[0]:.1f}"),
        ("ours per class volume, ms CPU", round(1000 * cpu[0] / max(n, 1), 2)),
        ("reference per class volume, ms CPU", round(1000 * cpu[1] / max(n, 1), 1)),
        *[(f"max |ours - reference| {m}", float(v)) for m, v in zip(SURFACE_METRICS, diff)],
        (
            f"score_tables with the surface metrics, RLE decoding included, wall s, --workers {a.workers} / 1",
            f"{product[(a.workers, True)][0]:.1f} / {product[(0, True)][0]:.1f}",
        ),
        (
            f"score_tables, competition score only, --workers {a.workers}, wall s",
            round(product[(a.workers, False)][0], 1),
        ),
        ("NSD at 3 mm of the perturbed copies, all classes (score_tables)", round(nsd, 4)),
        ("1-min load average at the end (machine shared?)", round(os.getloadavg()[0], 2)),
    ]
    width = max(len(r[0]) for r in table)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for key, v in table:
        print(f"| {key.ljust(width)} | {v} |")
    out = Path(a.out)
    payload = {key: v for key, v in table}
    payload.update({"cpu_count": os.cpu_count(), "seed": a.seed, "workers": a.workers})
    atomic_write_text(out, json.dumps(payload, indent=1), overwrite=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
