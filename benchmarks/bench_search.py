"""Benchmark of the ensemble search: the search before issue 13 (every candidate re-scored on every case-day) and
the incremental one, side by side on the same inputs in one run.

Inputs (generated once into ``--data``, reused by later runs):

- the truth: the real UW-Madison labels of all 274 case-days (``../shared/data/uwmgi_labels``) at 1/4 in-plane
  size (each 4x4 block is in a class when at least 8 of its 16 pixels are), as an RLE table ``train.csv`` and a
  manifest ``manifest.csv`` (``id, height, width``, pixel spacing x 4);
- three models' out-of-fold probability folders (``ProbWriter``, one folder per model and fold, ``meta.json`` as
  ``tools/test.py`` writes it), seeded, made from the truth with different errors: a U-Net (blurred edges, missed
  and extra blobs, noise), an UPerNet (one pixel off, blurrier, more extra blobs), a 3D model (blurred along z too,
  less confident, missed and extra 3D blobs); and a classifier's presence probabilities (``cls_probs.csv``);
- the spec of the README's quickstart (classifier gate 0.5, fusion 0.6 / 0.4, thresholds 0.5, no post-processing).

Runs ``python -m ensembles search`` (all steps) in a subprocess for each side: the old code from ``--old-rev``
(``git archive`` of ``ensembles evaluation common data_prep gating`` at that revision, first on ``PYTHONPATH``) on
the first ``--old-limit`` case-days (sorted), and the new code on the same case-days (the tuned specs and reports
must be equal) and on all of them with ``--workers 0`` and ``--workers 2``. Reported: wall time, candidates
evaluated (from the report), candidates per second, peak RSS of the process tree, the chosen values and the
final score. The old side on all case-days is an EXTRAPOLATION (linear in the case-days) when ``--old-limit`` is
smaller than the set, and the table says so.

``--demo DIR`` also times the four searches of a finished demo (``tools/demo.py --out DIR``: the ensemble search
and the three single-model threshold searches, ``--workers 2`` as the demo runs them), old and new.

    python benchmarks/bench_search.py [--data /tmp/bench_search] [--old-limit 40] [--demo demo_out]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import scipy.ndimage as ndi
import yaml

from common.probmaps import ProbWriter
from data_prep.constants import CLASSES
from data_prep.layout import RLEVolumes, read_rle_table, shapes_manifest
from data_prep.rle import rle_encode

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO.parent / "shared" / "data" / "uwmgi_labels"
#: The last revision before the incremental search.
OLD_REV = "d31f32d1f7bd602bbbd8aa350413bcda67d846e2"
MODELS = {"unet": "2.5d", "upernet": "2.5d", "seg3d": "3d"}
FOLDS = 5
SCALE = 4
SPEC = {
    "name": "bench",
    "folds": list(range(FOLDS)),
    "models": [
        {"name": "classifier", "kind": "classifier", "config": "cls.py", "checkpoints": "cls_{fold}.pth"},
        {"name": "unet", "kind": "2.5d", "config": "unet.py", "checkpoints": "unet_{fold}.pth"},
        {"name": "upernet", "kind": "2.5d", "config": "upernet.py", "checkpoints": "upernet_{fold}.pth"},
        {"name": "seg3d", "kind": "3d", "config": "seg3d.py", "checkpoints": "seg3d_{fold}.pth"},
    ],
    "gate": {"method": "classifier", "thresholds": 0.5, "smooth": 1},
    "fusion": {"weight_2d": 0.6, "weight_3d": 0.4},
    "thresholds": 0.5,
    "post": {"max_prob_floor": 0.0, "min_component": 0, "component_mode": "2d"},
}


# ---------------------------------------------------------------------------------------------------- the inputs


def downsample(masks: np.ndarray, f: int = SCALE) -> np.ndarray:
    """bool ``(D, C, H, W)`` -> ``(D, C, H // f, W // f)``: a block is in a class when half its pixels are."""
    if f == 1:
        return masks
    d, c, h, w = masks.shape
    m = masks[:, :, : h // f * f, : w // f * f].reshape(d, c, h // f, f, w // f, f)
    return m.sum(axis=(3, 5), dtype=np.int32) * 2 >= f * f


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], n: int, sigma: tuple, peak: float) -> np.ndarray:
    """``n`` smooth blobs of height about ``peak`` at random places of a float32 ``shape`` volume."""
    out = np.zeros(shape, np.float32)
    if n == 0:
        return out
    idx = tuple(rng.integers(0, s, n) for s in shape)
    out[idx] = 1.0
    out = ndi.gaussian_filter(out, sigma)
    return out * (peak / max(float(out.max()), 1e-6))


def model_maps(truth: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """float16 ``(D, C, H, W)`` probabilities of one model for one case-day, made from bool truth ``(D, C, H, W)``."""
    t = truth.astype(np.float32)
    d, c, h, w = t.shape
    if name == "unet":
        p = 1.15 * ndi.gaussian_filter(t, (0, 0, 1.0, 1.0)) - 0.05
        miss, extra, sigma_blob, noise = 0.08, 0.03, (0, 2.0, 2.0), 0.04
    elif name == "upernet":
        p = 1.1 * ndi.gaussian_filter(np.roll(t, 1, axis=3), (0, 0, 1.5, 1.5)) - 0.05
        miss, extra, sigma_blob, noise = 0.05, 0.06, (0, 2.5, 2.5), 0.05
    else:
        p = 0.95 * ndi.gaussian_filter(t, (1.0, 0, 1.2, 1.2))
        miss, extra, sigma_blob, noise = 0.06, 0.02, (1.5, 2.0, 2.0), 0.03
    for k in range(c):
        present = np.flatnonzero(truth[:, k].reshape(d, -1).any(axis=1))
        lost = present[rng.random(len(present)) < miss]
        p[lost, k] *= 0.3  # missed: the model sees the organ only faintly
        n_extra = int(rng.binomial(d, extra))
        p[:, k] += _blobs(rng, (d, h, w), n_extra, sigma_blob, 0.85)
    p += noise * np.abs(rng.standard_normal(p.shape, dtype=np.float32))
    return np.clip(p, 0, 1).astype(np.float16)


def build_inputs(data: Path, scale: int = SCALE, case_days: list[str] | None = None) -> dict:
    """Write the truth, the manifest, the probability folders, the classifier CSV and the spec into ``data``: the
    real labels' ``case_days`` (default: all) at ``1 / scale`` in-plane size."""
    done = data / "inputs.json"
    if done.is_file():
        return json.loads(done.read_text())
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    labels = read_rle_table(LABELS / "train.csv.gz")
    scan = pd.read_csv(LABELS / "scan_manifest.csv.gz")
    manifest = shapes_manifest(scan)
    vols = RLEVolumes(labels, manifest)
    rng = np.random.default_rng(0)
    writers = {
        (m, k): ProbWriter(
            data / m / f"fold_{k}" / "oof",
            {"kind": kind, "config": f"{m}.py", "checkpoint": f"{m}_{k}.pth", "fold": k, "tta": [],
             "classes": list(CLASSES)},
            overwrite=True,
        )
        for m, kind in MODELS.items()
        for k in range(FOLDS)
    }  # fmt: skip
    rows, cls_rows, man_rows = [], [], []
    sp = scan.set_index("id")
    for cd in vols if case_days is None else case_days:
        ids, *_ = vols.rles(cd)
        small = downsample(vols[cd], scale)
        d, c, h, w = small.shape
        fold = int(cd.split("_")[0][4:]) % FOLDS
        for m in MODELS:
            writers[(m, fold)].add(cd, ids, model_maps(small, m, rng))
        present = small.reshape(d, c, -1).any(axis=2)
        cls = np.clip(np.where(present, 0.85, 0.12) + 0.12 * rng.standard_normal(present.shape), 0, 1)
        for z, sid in enumerate(ids):
            for k, name in enumerate(CLASSES):
                rows.append((sid, name, rle_encode(small[z, k])))
            cls_rows.append((sid, *cls[z].round(4).tolist()))
            man_rows.append((sid, w, h, sp.at[sid, "px_w_mm"] * scale, sp.at[sid, "px_h_mm"] * scale))
    for wr in writers.values():
        if wr.case_days:
            wr.finish()
    pd.DataFrame(rows, columns=["id", "class", "segmentation"]).to_csv(data / "train.csv", index=False)
    pd.DataFrame(cls_rows, columns=["id", *CLASSES]).to_csv(data / "cls_probs.csv", index=False)
    pd.DataFrame(man_rows, columns=["id", "width", "height", "px_w", "px_h"]).to_csv(data / "manifest.csv", index=False)
    (data / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    info = {
        "case_days": sorted(vols if case_days is None else case_days),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    done.write_text(json.dumps(info))
    return info


def subset(data: Path, case_days: list[str]) -> Path:
    """The probability folders and labels restricted to ``case_days`` (links to the maps), in ``data/subset_N``."""
    out = data / f"subset_{len(case_days)}"
    if (out / "train.csv").is_file():
        return out
    keep = set(case_days)
    for m in MODELS:
        for k in range(FOLDS):
            src = data / m / f"fold_{k}" / "oof"
            meta = json.loads((src / "meta.json").read_text())
            meta["case_days"] = {cd: ids for cd, ids in meta["case_days"].items() if cd in keep}
            dst = out / m / f"fold_{k}" / "oof"
            dst.mkdir(parents=True, exist_ok=True)
            for cd in meta["case_days"]:
                link = dst / f"{cd}.npy"
                if not link.exists():
                    link.symlink_to(src / f"{cd}.npy")
            if meta["case_days"]:
                (dst / "meta.json").write_text(json.dumps(meta))
    for name in ("train.csv", "cls_probs.csv", "manifest.csv"):
        df = pd.read_csv(data / name, dtype=str, keep_default_na=False)
        df[df["id"].str.rsplit("_slice_", n=1).str[0].isin(keep)].to_csv(out / name, index=False)
    (out / "spec.yaml").write_text((data / "spec.yaml").read_text())
    return out


# ------------------------------------------------------------------------------------------------------- the runs


def _tree_rss(proc: psutil.Process) -> int:
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_search(pythonpath: str, data: Path, out: Path, workers: int) -> dict:
    """One ``python -m ensembles search`` on ``data``; wall time, peak RSS of its process tree, what it chose."""
    items = [f"{m}={data / m / f'fold_{k}' / 'oof'}" for m in MODELS for k in range(FOLDS)]
    items = [i for i in items if (Path(i.split("=", 1)[1]) / "meta.json").is_file()]
    argv = [sys.executable, "-m", "ensembles", "search", "--oof", *items, f"classifier={data / 'cls_probs.csv'}",
            "--truth", str(data / "train.csv"), "--manifest", str(data / "manifest.csv"), "--spec",
            str(data / "spec.yaml"), "--out", str(out), "--workers", str(workers), "--overwrite"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=pythonpath)
    peak = 0
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # cwd: not the repository, whose packages ``-m`` would import before those of PYTHONPATH
    proc = subprocess.Popen(argv, env=env, cwd=data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, _tree_rss(ps))
        time.sleep(0.1)
    reader.join()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    log = "".join(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"search failed ({' '.join(argv)}):\n{log[-3000:]}")
    report = out.with_name(out.stem + "_report.md").read_text()
    n_evals = int(re.search(r"(\d+) evaluations", report).group(1))
    tuned = out.read_text()
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "candidates": n_evals,
        "candidates_per_s": round(n_evals / wall, 2),
        "peak_rss_mb": round(peak / 2**20),
        "score_log": [ln.split("; wrote")[0] for ln in log.splitlines() if "score" in ln],
        "tuned": tuned.split("\n", 1)[1],
        "header": tuned.split("\n", 1)[0],
        "report_csv": out.with_name(out.stem + "_report.csv").read_text(),
    }


def export_old(rev: str, where: Path) -> Path:
    """The search's packages at ``rev`` (``git archive``) in ``where``; checks that a search run with ``where``
    first on ``PYTHONPATH`` (and not from the repository) imports them."""
    where.mkdir(parents=True, exist_ok=True)
    pkgs = ["ensembles", "evaluation", "common", "data_prep", "gating"]
    archive = subprocess.run(["git", "archive", rev, *pkgs], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    probe = [sys.executable, "-c", "import ensembles.search as s; print(s.__file__)"]
    env = dict(os.environ, PYTHONPATH=f"{where}{os.pathsep}{REPO}")
    got = subprocess.run(probe, env=env, cwd=where.parent, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(got).resolve().is_relative_to(where.resolve()):
        raise RuntimeError(f"the old search would be imported from {got}, not from {where}")
    return where


def demo_searches(demo: Path, pythonpath: str, out: Path) -> dict[str, float]:
    """The four searches of a finished demo, as ``tools/demo.py`` runs them; seconds each."""
    runs = demo / "runs"
    oof = {"unet": f"unet={runs / 'unet' / 'oof'}", "upernet": f"upernet={runs / 'upernet' / 'oof'}",
           "seg3d": f"seg3d={runs / 'seg3d' / 'oof'}"}  # fmt: skip
    jobs = {"ensemble": ([*oof.values(), f"classifier={runs / 'cls' / 'oof' / 'cls_probs.csv'}"], [])}
    jobs.update({m: ([oof[m]], ["--steps", "thresholds"]) for m in oof})
    times = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, (items, extra) in jobs.items():
        argv = [sys.executable, "-m", "ensembles", "search", "--oof", *items, "--truth",
                str(demo / "data" / "train.csv"), "--spec", str(demo / "specs" / f"{name}.yaml"), "--out",
                str(out / f"{name}_tuned.yaml"), "--data-root", str(demo / "data"), "--workers", "2", "--overwrite",
                *extra]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(argv, env=dict(os.environ, PYTHONPATH=pythonpath), cwd=out, check=True, capture_output=True)
        times[name] = round(time.perf_counter() - t0, 1)
    return times


def _row(r: dict) -> str:
    return (f"{r['wall_s']} s wall, {r['cpu_s']} s CPU, {r['candidates']} candidates, {r['candidates_per_s']}/s, "
            f"peak RSS {r['peak_rss_mb']} MB")  # fmt: skip


def _chosen(tuned: str) -> dict:
    spec = yaml.safe_load(tuned)
    return {
        "weights": {m["name"]: m.get("weight") for m in spec["models"] if m["name"] in MODELS},
        "fusion": spec["fusion"],
        "gate": spec["gate"].get("thresholds"),
        "thresholds": spec["thresholds"],
        "post": spec["post"],
    }


def _compare(old: dict, new: dict) -> bool:
    """The same tuned spec (header with the scores included), report and logged steps."""
    return all(old[k] == new[k] for k in ("tuned", "header", "report_csv", "score_log"))


def _speedup(old: dict, new: dict) -> str:
    return f"{old['wall_s'] / new['wall_s']:.1f}x wall, {old['cpu_s'] / new['cpu_s']:.1f}x CPU"


def _strip(runs: dict) -> dict:
    return {k: {kk: vv for kk, vv in v.items() if kk != "report_csv"} for k, v in runs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bench_search")
    ap.add_argument("--old-rev", default=OLD_REV, help="the revision of the old search (git archive)")
    ap.add_argument("--old-limit", type=int, default=0, help="the old search on the first N case-days (0: all)")
    ap.add_argument("--skip-new-workers", action="store_true", help="no --workers 2 run of the new search")
    ap.add_argument("--full", type=int, default=0, help="also N case-days at the full size, old and new (0: none)")
    ap.add_argument("--demo", type=Path, default=None, help="a finished demo folder: time its four searches")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_search.json")
    a = ap.parse_args(argv)
    if not (LABELS / "train.csv.gz").is_file():
        print(f"real labels not found under {LABELS}; nothing to benchmark")
        return 1
    info = build_inputs(a.data)
    cds = info["case_days"]
    old_path = export_old(a.old_rev, a.data / f"old_{a.old_rev[:8]}")
    new_pp, old_pp = str(REPO), f"{old_path}{os.pathsep}{REPO}"
    n_old = len(cds) if a.old_limit <= 0 else min(a.old_limit, len(cds))
    sub = a.data if n_old == len(cds) else subset(a.data, cds[:n_old])
    runs = a.data / "runs"
    rows: list[tuple[str, Any]] = [("1-min load average before the runs", round(os.getloadavg()[0], 2))]
    payload: dict = {"inputs": info | {"case_days": len(cds)}}

    # 1/4 size: the old search on n_old case-days, the new one on the same and on all
    res = {
        "old": run_search(old_pp, sub, runs / "old.yaml", 0),
        "new": run_search(new_pp, sub, runs / "new.yaml", 0),
    }
    same = _compare(res["old"], res["new"])
    if n_old < len(cds):
        res["new_all"] = run_search(new_pp, a.data, runs / "new_all.yaml", 0)
    if not a.skip_new_workers:
        res["new_all_w2"] = run_search(new_pp, a.data, runs / "new_all_w2.yaml", 2)
        same = same and res["new_all_w2"]["tuned"] == res.get("new_all", res["new"])["tuned"]
    rows.append((f"1/4 size, {n_old} case-days: old, 1 process", _row(res["old"])))
    rows.append((f"1/4 size, {n_old} case-days: new, 1 process", _row(res["new"])))
    if "new_all" in res:
        rows.append((f"1/4 size, {len(cds)} case-days: new, 1 process", _row(res["new_all"])))
    if "new_all_w2" in res:
        rows.append((f"1/4 size, {len(cds)} case-days: new, --workers 2", _row(res["new_all_w2"])))
    if n_old < len(cds):
        k = len(cds) / n_old
        rows.append(
            (f"1/4 size, {len(cds)} case-days: old (EXTRAPOLATED x{k:.2f})", f"{res['old']['wall_s'] * k:.0f} s")
        )
    rows.append((f"1/4 size: speed-up old / new ({n_old} case-days, 1 process)", _speedup(res["old"], res["new"])))
    rows.append(("1/4 size: the same choices, scores, reports and logs (old / new, 1 / 2 workers)", same))
    final = res.get("new_all", res["new"])
    rows.append(("1/4 size: tuned", final["header"].split(": ", 1)[1]))
    rows.append(("1/4 size: chosen", json.dumps(_chosen(final["tuned"]))))
    payload["quarter"] = _strip(res)

    if a.full:  # full size: every k-th case-day (all four image sizes), old and new
        picks = cds[:: max(1, len(cds) // a.full)][: a.full]
        full = a.data / f"full_{len(picks)}"
        build_inputs(full, 1, picks)
        fres = {
            "old": run_search(old_pp, full, runs / "full_old.yaml", 0),
            "new": run_search(new_pp, full, runs / "full_new.yaml", 0),
            "new_w2": run_search(new_pp, full, runs / "full_new_w2.yaml", 2),
        }
        fsame = _compare(fres["old"], fres["new"]) and fres["new_w2"]["tuned"] == fres["new"]["tuned"]
        same = same and fsame
        k = len(cds) / len(picks)
        rows.append((f"full size, {len(picks)} case-days: old, 1 process", _row(fres["old"])))
        rows.append((f"full size, {len(picks)} case-days: new, 1 process", _row(fres["new"])))
        rows.append((f"full size, {len(picks)} case-days: new, --workers 2", _row(fres["new_w2"])))
        rows.append(("full size: speed-up old / new (1 process)", _speedup(fres["old"], fres["new"])))
        rows.append(
            (
                f"full size, {len(cds)} case-days: old / new, 1 process (EXTRAPOLATED x{k:.1f})",
                f"{fres['old']['wall_s'] * k / 60:.0f} min / {fres['new']['wall_s'] * k / 60:.0f} min",
            )
        )
        rows.append(("full size: the same choices, scores, reports and logs", fsame))
        payload["full"] = {"case_days": picks, **_strip(fres)}

    if a.demo is not None:
        demo = {
            "old": demo_searches(a.demo, old_pp, runs / "demo_old"),
            "new": demo_searches(a.demo, new_pp, runs / "demo_new"),
        }
        demo["same_tuned_specs"] = all(
            (runs / "demo_old" / f"{n}_tuned.yaml").read_text() == (runs / "demo_new" / f"{n}_tuned.yaml").read_text()
            for n in demo["old"]
        )
        same = same and demo["same_tuned_specs"]
        payload["demo"] = demo
        rows.append(
            ("demo's 4 searches, old (s, --workers 2)", f"{json.dumps(demo['old'])} = {sum(demo['old'].values()):.1f}")
        )
        rows.append(
            ("demo's 4 searches, new (s, --workers 2)", f"{json.dumps(demo['new'])} = {sum(demo['new'].values()):.1f}")
        )
        rows.append(("demo: the same tuned specs", demo["same_tuned_specs"]))

    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for k_, v in rows:
        print(f"| {k_.ljust(width)} | {v} |")
    payload["rows"] = dict(rows)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")
    return 0 if same else 2


if __name__ == "__main__":
    sys.exit(main())
