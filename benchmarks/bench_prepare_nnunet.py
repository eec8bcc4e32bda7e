"""Benchmark of ``prepare --format nnunet`` against the I/O floor and nnU-Net v2's own preprocessing, in one run.

Set-up (not timed, cached): a generated nnU-Net v2 raw dataset of CT-like volumes in ``ROOT/ct_{N}x{S}x{S}x{D}_s
{seed}/nnUNet_raw/Dataset912_BenchCT`` (``--cases`` volumes of ``--size`` x ``--size`` x ``--depth`` voxels, int16
Hounsfield units, ``.nii.gz``, spacing 2.5 mm between slices and a 410 mm field of view in plane, i.e. 0.8 x 0.8 x
2.5 mm at 512): air -1000, a body of fat and soft tissue with a spine and lung bases, five organ-like ellipsoids,
Gaussian noise of 12 HU. The label file holds exclusive values (1 liver, 2 lesion, 3 kidney, 4 renal pelvis,
5 spleen); ``dataset.json`` turns them into five overlapping classes with nnU-Net's region convention:
``liver = [1, 2]``, ``lesion = [2]``, ``kidney = [3, 4]``, ``renal_pelvis = [4]``, ``spleen = [5]``,
``regions_class_order = [1, 2, 3, 4, 5]``.

Timed, each side in its own child process (wall time, CPU time, peak memory of the process and its workers; the
dataset's files are read once beforehand so every side starts from a warm page cache; ``--repeat`` rounds of the
cheap sides, the median stands), all with ``--workers`` processes:

- ``floor``: the I/O floor: SimpleITK reads every image and label once and ``np.save`` writes the arrays once,
  from a view of SimpleITK's buffer (``GetArrayViewFromImage``: no copy);
- ``floor_copy``: the same through ``GetArrayFromImage`` (one copy per array, as our reader and nnU-Net's
  ``SimpleITKIO`` read);
- ``ours``: ``python -m data_prep prepare --data-root RAW --out WORK --format nnunet --workers N`` (uint16 volumes,
  bit-field masks, manifest with per-slice class areas, dataset.json, splits);
- ``nnunet``: ``nnUNetv2_plan_and_preprocess -d 912 -c 3d_fullres -np N -npfp N`` from the ``nnunetv2`` of a
  separate venv (``--nnunet-python``), with ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` set into
  the cache folder; its fingerprint, planning and preprocessing phases are timed from its own log lines.

Targets (issue 12): ours within 1.5x the floor's wall time and faster than nnU-Net's plan-and-preprocess.

    nice -n 10 python benchmarks/bench_prepare_nnunet.py [--cases 40 --size 512 --depth 120] [--workers 2]
        [--root /work/bench] [--sides floor,floor_copy,ours,nnunet] [--repeat 3] [--keep]

Prints a table and writes ``benchmarks/results/prepare_nnunet.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASET_ID = 912
DATASET_NAME = f"Dataset{DATASET_ID:03d}_BenchCT"
SIDES = ("floor", "floor_copy", "ours", "nnunet")
TARGETS = {"ours_over_floor": 1.5, "ours_over_nnunet": 1.0}

#: label value -> (name, HU); the label file is exclusive, the classes below are overlapping regions of it.
LABEL_VALUES = {
    1: ("liver", 60.0),
    2: ("lesion", 25.0),
    3: ("kidney", 150.0),
    4: ("renal_pelvis", 10.0),
    5: ("spleen", 50.0),
}
REGIONS = {"liver": [1, 2], "lesion": [2], "kidney": [3, 4], "renal_pelvis": [4], "spleen": [5]}
FOV_MM = 409.6  # in-plane field of view (0.8 mm at 512)
SLICE_MM = 2.5
NOISE_HU = 12.0


# ----------------------------------------------------------------------------------------------- the dataset
def _ellipsoid(shape, spacing, center, radii):
    """Index box and boolean mask ``(z, y, x)`` of an ellipsoid given in mm about the volume's centre."""
    import numpy as np

    sl, grids = [], []
    for n, s, c, r in zip(shape, spacing, center, radii):
        lo = max(int(np.floor((c - r) / s + n / 2 - 0.5)), 0)
        hi = min(int(np.ceil((c + r) / s + n / 2 - 0.5)) + 1, n)
        hi = max(hi, lo)
        sl.append(slice(lo, hi))
        grids.append(((np.arange(lo, hi, dtype=np.float32) - n / 2 + 0.5) * s - c) / r)
    gz, gy, gx = grids
    mask = gz[:, None, None] ** 2 + gy[None, :, None] ** 2 + gx[None, None, :] ** 2 <= 1.0
    return tuple(sl), mask


def make_case(index: int, size: int, depth: int, seed: int):
    """One CT-like volume and its label.

    Returns:
        ``(image int16 (depth, size, size) HU, label uint8 (depth, size, size) values 0..5, spacing (sz, sy, sx))``.
    """
    import numpy as np

    rng = np.random.default_rng([seed, index])
    shape = (depth, size, size)
    sp = (SLICE_MM, FOV_MM / size, FOV_MM / size)
    zext = depth * SLICE_MM
    j = lambda v, f=0.1: v * rng.uniform(1 - f, 1 + f)  # noqa: E731
    y = (np.arange(size, dtype=np.float32) - size / 2 + 0.5) * sp[1]
    x = (np.arange(size, dtype=np.float32) - size / 2 + 0.5) * sp[2]
    ay, ax = j(115.0), j(165.0)
    r2 = (y[:, None] / ay) ** 2 + (x[None, :] / ax) ** 2
    plane = np.full((size, size), -1000.0, np.float32)
    plane[r2 <= 1.0] = -100.0  # subcutaneous fat
    plane[r2 <= (1 - 15.0 / ay) ** 2] = 35.0  # soft tissue
    sy0 = ay - 45.0  # spine: cortical ring around cancellous bone
    d2 = (y[:, None] - sy0) ** 2 + x[None, :] ** 2
    plane[d2 <= 18.0**2] = 700.0
    plane[d2 <= 13.0**2] = 250.0
    image = np.broadcast_to(plane, shape).copy()
    label = np.zeros(shape, np.uint8)
    for side in (-1, 1):  # lung bases at the top
        box, m = _ellipsoid(shape, sp, (0.45 * zext, -10.0, side * 75.0), (j(70.0), j(60.0), j(55.0)))
        image[box][m] = -850.0
    organs = [  # (value, centre z y x mm, radii mm), painted in this order
        (1, (j(0.15 * zext, 0.2), j(-5.0, 1.0), j(-60.0)), (j(70.0), j(65.0), j(75.0))),
        (5, (j(0.2 * zext, 0.2), j(30.0), j(80.0)), (j(50.0), j(45.0), j(35.0))),
        (3, (j(-0.05 * zext, 0.5), j(45.0), -60.0 * j(1.0)), (j(50.0), j(30.0), j(28.0))),
        (3, (j(-0.05 * zext, 0.5), j(45.0), 60.0 * j(1.0)), (j(50.0), j(30.0), j(28.0))),
    ]
    for value, centre, radii in organs:
        box, m = _ellipsoid(shape, sp, centre, radii)
        label[box][m] = value
        if value == 3:  # renal pelvis inside this kidney, towards the midline
            inner = (centre[0], centre[1], centre[2] - np.sign(centre[2]) * 8.0)
            box, m = _ellipsoid(shape, sp, inner, (radii[0] * 0.4, radii[1] * 0.35, radii[2] * 0.35))
            sub = label[box]
            sub[m & (sub == 3)] = 4
    liver_c, liver_r = organs[0][1], organs[0][2]
    centre = tuple(c + rng.uniform(-0.35, 0.35) * r for c, r in zip(liver_c, liver_r))
    box, m = _ellipsoid(shape, sp, centre, tuple(rng.uniform(10.0, 20.0, 3)))
    sub = label[box]
    sub[m & (sub == 1)] = 2
    for value, (_, hu) in LABEL_VALUES.items():
        image[label == value] = hu
    image += rng.standard_normal(shape, dtype=np.float32) * NOISE_HU
    np.clip(image, -1024, 3071, out=image)
    return np.rint(image).astype(np.int16), label, sp


def _write_case(job) -> str:
    """Write one case's image and label (``.nii.gz``, atomically); skip when both exist."""
    import SimpleITK as sitk

    raw, index, size, depth, seed = job
    key = f"BenchCT_{index:03d}"
    paths = (raw / "imagesTr" / f"{key}_0000.nii.gz", raw / "labelsTr" / f"{key}.nii.gz")
    if all(p.is_file() for p in paths):
        return key
    image, label, (sz, sy, sx) = make_case(index, size, depth, seed)
    origin = (-sx * size / 2, -sy * size / 2, -sz * depth / 2)
    for arr, path in zip((image, label), paths):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((sx, sy, sz))
        img.SetOrigin(origin)
        tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.tmp.nii.gz")
        sitk.WriteImage(img, str(tmp), useCompression=True)
        os.replace(tmp, path)
    return key


def make_dataset(cache: Path, cases: int, size: int, depth: int, seed: int, workers: int) -> Path:
    """Generate (once) the nnU-Net raw dataset; returns its folder ``cache/nnUNet_raw/Dataset912_BenchCT``."""
    raw = cache / "nnUNet_raw" / DATASET_NAME
    marker = cache / "bench_dataset.json"
    if marker.is_file():
        return raw
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(raw, i, size, depth, seed) for i in range(cases)]
    with Pool(workers) as pool:
        for k, key in enumerate(pool.imap_unordered(_write_case, jobs), 1):
            print(f"  generated {key} ({k}/{cases}, {time.perf_counter() - t0:.0f} s)", flush=True)
    labels = {"background": 0, **REGIONS}
    spec = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "regions_class_order": [1, 2, 3, 4, 5],
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": "BenchCT",
        "description": "bench_prepare_nnunet.py: CT-like phantoms, 5 overlapping region classes",
    }
    (raw / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n")
    nbytes, nfiles = tree_bytes(raw)
    info = {"cases": cases, "size": size, "depth": depth, "seed": seed, "bytes": nbytes, "files": nfiles}
    info["generate_s"] = round(time.perf_counter() - t0, 1)
    marker.write_text(json.dumps(info) + "\n")
    return raw


# ----------------------------------------------------------------------------------------------- the floor
def _floor_one(job) -> int:
    """Read one image or label with SimpleITK and ``np.save`` its array; returns the bytes written."""
    import numpy as np
    import SimpleITK as sitk

    src, dst, copy = job
    img = sitk.ReadImage(str(src))
    arr = sitk.GetArrayFromImage(img) if copy else sitk.GetArrayViewFromImage(img)  # the view needs img alive
    np.save(dst, arr)
    return arr.nbytes


def io_floor(raw: str, out: str, workers: int, copy: bool = False) -> dict:
    """The I/O floor: every image and label of ``raw`` read once and written once as ``.npy`` into ``out``.

    Args:
        copy: take the array with ``sitk.GetArrayFromImage`` (a copy, as most readers do) instead of a view of the
            image's buffer (the strict floor).
    """
    raw, out = Path(raw), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted((raw / "imagesTr").glob("*.nii.gz")) + sorted((raw / "labelsTr").glob("*.nii.gz"))
    jobs = [(f, out / f"{f.parent.name}_{f.name[: -len('.nii.gz')]}.npy", copy) for f in files]
    with Pool(workers) as pool:
        written = sum(pool.imap_unordered(_floor_one, jobs))
    return {"files": len(files), "array_bytes": written}


# ----------------------------------------------------------------------------------------------- measuring
WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "r = subprocess.run(json.loads(sys.argv[1]))\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print('@@RUSAGE ' + json.dumps({'rc': r.returncode, 'max_process_rss_kb': u.ru_maxrss,"
    " 'cpu_s': u.ru_utime + u.ru_stime}), flush=True)\n"
)


def measure(cmd: list[str], env: dict[str, str], marks: dict[str, str] | None = None, log: Path | None = None) -> dict:
    """Run ``cmd`` in its own process tree; wall time, CPU time, peak RSS and the times of ``marks`` in its output.

    Args:
        cmd: the command (its children, e.g. worker pools, are measured with it).
        env: its environment.
        marks: ``{name: text}``: the wall time (s since start) of the first output line containing ``text``.
        log: where its output (stdout and stderr together) is kept.

    Returns:
        ``wall_s``, ``cpu_s`` (the tree's user + system time), ``max_process_rss_kb`` (the largest single process),
        ``sampled_tree_rss_kb`` / ``sampled_tree_pss_kb`` (the largest sums of RSS / PSS over the tree, sampled
        every 0.1 s; RSS counts a shared library once per process, PSS splits it), ``marks_s``, ``tail``.
    """
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, json.dumps(cmd)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    peak = {"rss": 0, "pss": 0}
    stop = threading.Event()

    def sample() -> None:  # sums over the tree below the wrapper; PSS shares a shared page among its users
        try:
            wrapper = psutil.Process(proc.pid)
            while not stop.is_set():
                rss = pss = 0
                for p in wrapper.children(recursive=True):
                    try:
                        m = p.memory_full_info()
                        rss, pss = rss + m.rss, pss + m.pss
                    except psutil.Error:
                        pass
                peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
                time.sleep(0.1)
        except psutil.Error:
            return

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    seen: dict[str, float] = {}
    lines: list[str] = []
    usage = None
    logf = open(log, "w") if log is not None else None  # noqa: SIM115 (written line by line while it runs)
    for line in proc.stdout:
        if line.startswith("@@RUSAGE "):
            usage = json.loads(line[len("@@RUSAGE ") :])
            continue
        lines.append(line)
        if logf is not None:
            logf.write(line)
            logf.flush()
        pending = [(name, text) for name, text in (marks or {}).items() if name not in seen]
        if pending and pending[0][1] in line:  # marks are matched in their order
            seen[pending[0][0]] = time.perf_counter() - t0
    proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    if logf is not None:
        logf.close()
    if usage is None or usage["rc"] != 0:
        raise RuntimeError(f"{cmd[:4]} failed (rc {usage and usage['rc']}):\n{''.join(lines[-40:])}")
    return {
        "wall_s": wall,
        "cpu_s": usage["cpu_s"],
        "max_process_rss_kb": usage["max_process_rss_kb"],
        "sampled_tree_rss_kb": peak["rss"] // 1024,
        "sampled_tree_pss_kb": peak["pss"] // 1024,
        "marks_s": seen,
        "tail": "".join(lines[-5:]),
    }


def tree_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, files) of every file under ``path``."""
    total = n = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
            n += 1
    return total, n


def code_version() -> dict:
    """The commit measured and whether ``data_prep`` / ``common`` differ from it."""

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": git("status", "--short", "--", "data_prep", "common")}


def warm_cache(raw: Path) -> float:
    """Read every file of the dataset once (the page cache then holds it for every side); returns seconds."""
    t0 = time.perf_counter()
    for dirpath, _, files in os.walk(raw):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass
    return time.perf_counter() - t0


def check_ours(raw: Path, work: Path) -> dict:
    """Check the WORK of one case against its label file: per-class voxel counts equal the manifest's areas."""
    import numpy as np
    import pandas as pd
    import SimpleITK as sitk

    man = pd.read_csv(work / "manifest.csv")
    key = "BenchCT_000"
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{key}.nii.gz")))
    rows = man[man["case_day"] == key]
    counts = {}
    for name, values in REGIONS.items():
        expected = int(np.isin(lab, values).sum())
        col = f"area_{name}"
        got = int(rows[col].sum()) if col in rows else None
        counts[name] = {"label_voxels": expected, "manifest_area": got}
    ok = all(c["label_voxels"] == c["manifest_area"] for c in counts.values())
    return {"volumes": int(man["case_day"].nunique()), "slices": len(man), "case": key, "areas": counts, "ok": ok}


# ----------------------------------------------------------------------------------------------- the sides
def run_floor(raw: Path, cache: Path, workers: int, copy: bool = False) -> dict:
    out = cache / "floor_out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--io-floor", str(raw), str(out), "--workers", str(workers)]
    res = measure(cmd + (["--copy"] if copy else []), dict(os.environ), log=cache / "floor.log")
    res["output_bytes"] = tree_bytes(out)[0]
    how = "sitk.GetArrayFromImage (a copy)" if copy else "sitk.GetArrayViewFromImage (no copy)"
    res["what"] = f"SimpleITK read of every image + label, {how}, np.save of the arrays"
    shutil.rmtree(out, ignore_errors=True)
    return res


def run_ours(raw: Path, cache: Path, workers: int, keep: bool) -> dict:
    work = cache / "work_ours"
    shutil.rmtree(work, ignore_errors=True)
    cmd = [str(REPO / ".venv" / "bin" / "python"), "-m", "data_prep", "prepare", "--data-root", str(raw)]
    cmd += ["--out", str(work), "--format", "nnunet", "--workers", str(workers)]
    res = measure(cmd, dict(os.environ), log=cache / "ours.log")
    res["command"] = " ".join(cmd)
    res["output_bytes"] = tree_bytes(work)[0]
    res["check"] = check_ours(raw, work)
    res["what"] = "uint16 volumes, bit-field masks, manifest with per-slice class areas, dataset.json, splits"
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return res


def run_nnunet(cache: Path, python: Path, workers: int, config: str, keep: bool) -> dict:
    pre = cache / "nnUNet_preprocessed"
    shutil.rmtree(pre, ignore_errors=True)
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(cache / "nnUNet_raw"),
        nnUNet_preprocessed=str(pre),
        nnUNet_results=str(cache / "nnUNet_results"),
        PYTHONUNBUFFERED="1",
    )
    entry = python.parent / "nnUNetv2_plan_and_preprocess"
    cmd = [str(entry), "-d", str(DATASET_ID), "-c", config, "-np", str(workers), "-npfp", str(workers)]
    marks = {"fingerprint": "Fingerprint extraction", "planning": "Experiment planning", "preprocess": "Preprocessing"}
    res = measure(cmd, env, marks=marks, log=cache / "nnunet.log")
    m = res["marks_s"]
    if all(k in m for k in marks):
        res["phases_s"] = {
            "startup": m["fingerprint"],
            "fingerprint": m["planning"] - m["fingerprint"],
            "planning": m["preprocess"] - m["planning"],
            "preprocess": res["wall_s"] - m["preprocess"],
        }
    res["command"] = " ".join(["nnUNetv2_plan_and_preprocess", *cmd[1:]])
    res["output_bytes"] = tree_bytes(pre)[0]
    res["cases_written"] = len(list(pre.glob(f"{DATASET_NAME}/nnUNetPlans_{config}/*.pkl")))
    res["what"] = (
        "fingerprint (read every image + label, crop to non-zero, sample foreground intensities), plans, "
        f"preprocess {config} (read again, crop, resample to the target spacing if needed, CT normalisation, "
        "foreground locations per region, blosc2 write)"
    )
    if not keep:
        shutil.rmtree(pre, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=40, help="volumes (default %(default)s)")
    ap.add_argument("--size", type=int, default=512, help="in-plane size H = W (default %(default)s)")
    ap.add_argument("--depth", type=int, default=120, help="slices per volume (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="processes of every side (default %(default)s)")
    ap.add_argument("--root", type=Path, default=Path("/work/bench"), help="cache of the dataset and the outputs")
    ap.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ",".join(SIDES))
    ap.add_argument("--nnunet-python", type=Path, default=Path("/work/bench/nnunet-venv/bin/python"))
    ap.add_argument("--nnunet-config", default="3d_fullres", help="nnU-Net configuration (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of floor and ours (nnU-Net runs once)")
    ap.add_argument("--keep", action="store_true", help="keep the WORK and nnUNet_preprocessed folders")
    ap.add_argument("--setup-only", action="store_true", help="generate the dataset and stop")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prepare_nnunet.json")
    ap.add_argument("--io-floor", nargs=2, type=Path, metavar=("RAW", "OUT"), help=argparse.SUPPRESS)  # a child run
    ap.add_argument("--copy", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.io_floor is not None:  # the floor's own process (run_floor), so that its memory is measured alone
        print(json.dumps(io_floor(str(a.io_floor[0]), str(a.io_floor[1]), a.workers, copy=a.copy)))
        return 0
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        ap.error(f"unknown sides {unknown}; choose from {list(SIDES)}")
    cache = a.root / f"ct_{a.cases}x{a.size}x{a.size}x{a.depth}_s{a.seed}"
    raw = make_dataset(cache, a.cases, a.size, a.depth, a.seed, a.workers)
    if a.setup_only:
        return 0
    res: dict = {
        "dataset": json.loads((cache / "bench_dataset.json").read_text()),
        "workers": a.workers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1min_before": round(os.getloadavg()[0], 2),
        "warm_cache_s": round(warm_cache(raw), 1),
        "code": code_version(),
    }
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(a.repeat):
        for side in sides:
            if side == "nnunet" and round_ > 0:
                continue  # minutes per run: once is enough
            load = round(os.getloadavg()[0], 2)
            print(f"running {side} (round {round_ + 1}/{a.repeat}, load {load}) ...", flush=True)
            if side in ("floor", "floor_copy"):
                r = run_floor(raw, cache, a.workers, copy=side == "floor_copy")
            elif side == "ours":
                r = run_ours(raw, cache, a.workers, a.keep)
            else:
                r = run_nnunet(cache, a.nnunet_python, a.workers, a.nnunet_config, a.keep)
                r["config"] = a.nnunet_config
            r["load_avg_1min_before"] = load
            runs[side].append(r)
            print(f"  {side}: {r['wall_s']:.1f} s", flush=True)
    for side, rs in runs.items():  # the median run by wall time stands for the side; every wall time is kept
        res[side] = sorted(rs, key=lambda r: r["wall_s"])[(len(rs) - 1) // 2]
        res[side]["all_wall_s"] = [round(r["wall_s"], 1) for r in rs]
    res["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    if "floor" in res and "ours" in res:
        res["ours_over_floor"] = res["ours"]["wall_s"] / res["floor"]["wall_s"]
    if "floor_copy" in res and "ours" in res:
        res["ours_over_floor_copy"] = res["ours"]["wall_s"] / res["floor_copy"]["wall_s"]
    if runs.get("floor") and runs.get("ours"):  # the same round ran both under about the same load
        res["ours_over_floor_rounds"] = [o["wall_s"] / f["wall_s"] for f, o in zip(runs["floor"], runs["ours"])]
        res["ours_over_floor_cpu"] = res["ours"]["cpu_s"] / res["floor"]["cpu_s"]
    if "nnunet" in res and "ours" in res:
        res["ours_over_nnunet"] = res["ours"]["wall_s"] / res["nnunet"]["wall_s"]
    d = res["dataset"]
    print(
        f"\n{d['cases']} volumes of {d['size']}x{d['size']}x{d['depth']} int16 CT (.nii.gz, {d['bytes'] / 1e9:.2f} GB),"
        f" 5 overlapping region classes, {a.workers} workers, {os.cpu_count()} cores,"
        f" load {res['load_avg_1min_before']} -> {res['load_avg_1min_after']}\n"
    )
    floor = res.get("floor", {}).get("wall_s")
    gb = 1024**2
    head = ["side", "wall (s)", "x floor", "CPU (s)", "peak PSS, tree (GB)", "peak RSS, tree (GB)", "largest RSS (GB)"]
    head.append("output (GB)")
    print("| " + " | ".join(head) + " |\n|---|" + "---:|" * (len(head) - 1))
    for side in sides:
        r = res[side]
        wall = f"{r['wall_s']:.1f}"
        if len(r["all_wall_s"]) > 1:
            wall += " (median of " + " / ".join(f"{w:.1f}" for w in r["all_wall_s"]) + ")"
        cells = [
            side,
            wall,
            f"{r['wall_s'] / floor:.2f}" if floor else "-",
            f"{r['cpu_s']:.1f}",
            f"{r['sampled_tree_pss_kb'] / gb:.2f}",
            f"{r['sampled_tree_rss_kb'] / gb:.2f}",
            f"{r['max_process_rss_kb'] / gb:.2f}",
            f"{r['output_bytes'] / 1e9:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
    if "phases_s" in res.get("nnunet", {}):
        ph = res["nnunet"]["phases_s"]
        print("\nnnU-Net phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items()))
    if "ours" in res:
        print(f"ours check: {res['ours']['check']}")
    for key, target in TARGETS.items():
        if key in res:
            print(f"{key}: {res[key]:.2f} (target < {target})")
    if "ours_over_floor_rounds" in res:
        rounds = " / ".join(f"{x:.2f}" for x in res["ours_over_floor_rounds"])
        print(f"ours / floor, wall per round: {rounds}; CPU time: {res['ours_over_floor_cpu']:.2f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
