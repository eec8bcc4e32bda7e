"""Benchmark of the data stage at real scale: prepare + splits on the full label-driven rendering, and the RLE codec.

Set-up (not timed, cached): render the 274 case-days / 38,496 slices of the real labels in
``../shared/data/uwmgi_labels`` with :func:`data_prep.synth.render_from_labels` into ``SCRATCH/gitract_bench_data``.
Timed, in a child process whose peak memory is measured (max RSS of it and of its worker processes):
``prepare`` (volumes, masks, manifest) + splits into a fresh ``SCRATCH/gitract_bench_work``. Also timed: RLE
decode + encode of all 115,488 label rows. Disk: bytes of the WORK folder against the scan tree.

Targets (issue 2): prepare + splits under 90 s wall on 2 cores, peak memory under 4 GB, RLE under 5 s.

    python benchmarks/bench_data_prep.py [--scratch /tmp] [--workers 2] [--keep]

Prints a table and writes ``benchmarks/results/bench_data_prep.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LABELS_DIR = REPO.parent / "shared" / "data" / "uwmgi_labels"
TARGETS = {"prepare_splits_s": 90.0, "peak_rss_gb": 4.0, "rle_s": 5.0}


def tree_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, files) of every file under ``path``."""
    total = n = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
            n += 1
    return total, n


def render(scratch: Path, workers: int) -> Path:
    """Render (once) the real-scale dataset; returns its data root."""
    from data_prep.synth import render_from_labels

    root = scratch / "gitract_bench_data"
    marker = root / "bench_render.json"
    if marker.is_file():
        return root
    t0 = time.perf_counter()
    summary = render_from_labels(
        root,
        LABELS_DIR / "train.csv.gz",
        LABELS_DIR / "scan_manifest.csv.gz",
        seed=0,
        overwrite=True,
        workers=workers,
        progress=True,
    )
    summary["render_s"] = round(time.perf_counter() - t0, 1)
    marker.write_text(json.dumps(summary) + "\n")
    return root


def timed_prepare(root: Path, work: Path, workers: int) -> dict:
    """Run prepare + splits in a child process; wall time and peak RSS of it and its workers."""
    code = (
        "import json, resource, sys, time; t0 = time.perf_counter()\n"
        "from data_prep.prepare import prepare\n"
        f"s = prepare({str(root)!r}, {str(work)!r}, workers={workers})\n"
        "t1 = time.perf_counter()\n"
        "print(json.dumps({'wall_s': t1 - t0, 'n_slices': s['n_slices'], 'n_case_days': s['n_case_days'],"
        " 'self_rss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " 'children_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " 'cpu_s': sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)"
        " for f in ('ru_utime', 'ru_stime'))}))\n"
    )
    env = dict(os.environ)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    peak_sum = [0]
    stop = threading.Event()

    def sample() -> None:  # sum of RSS over the process tree, every 0.1 s
        try:
            import psutil
        except ImportError:
            return
        try:
            root_p = psutil.Process(proc.pid)
            while not stop.is_set():
                total = 0
                for p in [root_p, *root_p.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak_sum[0] = max(peak_sum[0], total)
                time.sleep(0.1)
        except psutil.Error:
            return

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, stderr = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"prepare failed:\n{stderr[-4000:].decode(errors='replace')}")
    stdout = stdout.decode()
    out = json.loads(stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    out["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    # ru_maxrss of RUSAGE_CHILDREN in this process = the largest of the child and (its reaped) workers
    out["max_process_rss_kb"] = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, out["self_rss_kb"])
    out["sampled_tree_rss_kb"] = peak_sum[0] // 1024
    # bound on the concurrent sum: the main process and every worker at its own peak at the same moment
    out["tree_peak_rss_kb"] = max(out["sampled_tree_rss_kb"], out["self_rss_kb"] + workers * out["children_rss_kb"])
    return out


def time_rle() -> dict:
    """Decode + encode every row of the real train.csv (with its image size from the scan manifest)."""
    import numpy as np
    import pandas as pd

    from data_prep.rle import rle_decode, rle_encode

    lab = pd.read_csv(LABELS_DIR / "train.csv.gz", keep_default_na=False)
    man = pd.read_csv(LABELS_DIR / "scan_manifest.csv.gz")[["id", "width", "height"]]
    df = lab.merge(man, on="id", how="left")
    seg, hs, ws = df["segmentation"].tolist(), df["height"].to_numpy(), df["width"].to_numpy()
    t0, c0 = time.perf_counter(), time.process_time()
    same = 0
    for s, h, w in zip(seg, hs, ws):
        same += rle_encode(rle_decode(s, (int(h), int(w)))) == s
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "rle_rows": len(df),
        "rle_s": dt,
        "rle_cpu_s": cpu,
        "rle_round_trip_equal": int(same),
        "rle_nonempty": int(np.sum(df["segmentation"] != "")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scratch", type=Path, default=Path("/tmp"), help="cache of the rendered set and the WORK")
    ap.add_argument("--workers", type=int, default=2, help="prepare workers (default %(default)s)")
    ap.add_argument("--render-workers", type=int, default=2, help="workers of the (untimed) rendering")
    ap.add_argument("--keep", action="store_true", help="keep the WORK folder after the run")
    ap.add_argument("--setup-only", action="store_true", help="render the dataset and stop")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_data_prep.json")
    a = ap.parse_args(argv)
    if not (LABELS_DIR / "train.csv.gz").is_file():
        print(f"real labels not found in {LABELS_DIR}; this benchmark needs ../shared/data", file=sys.stderr)
        return 2
    a.scratch.mkdir(parents=True, exist_ok=True)
    root = render(a.scratch, a.render_workers)
    if a.setup_only:
        return 0
    work = a.scratch / "gitract_bench_work"
    if work.exists():
        shutil.rmtree(work)
    res = timed_prepare(root, work, a.workers)
    scan_bytes, scan_files = tree_bytes(root / "train")
    work_bytes, _ = tree_bytes(work)
    vol_bytes, _ = tree_bytes(work / "volumes")
    mask_bytes, _ = tree_bytes(work / "masks")
    res.update(time_rle())
    res.update(
        {
            "scan_tree_bytes": scan_bytes,
            "scan_files": scan_files,
            "work_bytes": work_bytes,
            "volumes_bytes": vol_bytes,
            "masks_bytes": mask_bytes,
            "work_over_scans": work_bytes / scan_bytes,
            "peak_rss_gb": res["tree_peak_rss_kb"] / 1024**2,
            "prepare_splits_s": res["wall_s"],
            "workers": a.workers,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "render": json.loads((root / "bench_render.json").read_text()),
        }
    )
    if not a.keep:
        shutil.rmtree(work)
    gb = 1024**2
    rest = work_bytes - vol_bytes - mask_bytes
    parts = f"{work_bytes / 1e9:.2f} = {vol_bytes / 1e9:.2f} + {mask_bytes / 1e9:.2f} + {rest / 1e9:.3f}"
    rows = [
        ("prepare + splits wall (s)", f"{res['prepare_splits_s']:.1f}", f"< {TARGETS['prepare_splits_s']:.0f}"),
        ("  child process incl. imports (s)", f"{res['process_wall_s']:.1f}", ""),
        ("  CPU time, process tree (s)", f"{res['cpu_s']:.1f}", ""),
        ("  CPU time / workers (s)", f"{res['cpu_s'] / a.workers:.1f}", "wall on free cores"),
        ("  load average before / after", " / ".join(str(x) for x in res["load_avg_1min"]), f"{os.cpu_count()} cores"),
        ("peak RSS, process tree, sampled (GB)", f"{res['sampled_tree_rss_kb'] / gb:.2f}", ""),
        ("peak RSS, process tree, bound (GB)", f"{res['peak_rss_gb']:.2f}", f"< {TARGETS['peak_rss_gb']:.0f}"),
        ("  main / largest worker (GB)", f"{res['self_rss_kb'] / gb:.2f} / {res['children_rss_kb'] / gb:.2f}", ""),
        (f"RLE decode+encode, {res['rle_rows']} rows (s)", f"{res['rle_s']:.2f}", f"< {TARGETS['rle_s']:.0f}"),
        ("  CPU time (s)", f"{res['rle_cpu_s']:.2f}", ""),
        ("  round trips equal", f"{res['rle_round_trip_equal']} / {res['rle_rows']}", "all"),
        ("slices / case-days", f"{res['n_slices']} / {res['n_case_days']}", "38496 / 274"),
        ("scan tree (GB, PNG)", f"{scan_bytes / 1e9:.2f}", ""),
        ("WORK (GB): volumes + masks + rest", parts, ""),
        ("WORK / scan tree", f"{res['work_over_scans']:.2f}x", "<= 2x (see report)"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'value':>28}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>28}  {target}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
