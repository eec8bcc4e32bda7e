"""Peak memory of ``tools/infer.py`` against the size of the test tree: it must not grow with the number of case-days.

Set-up (not measured): tiny models of every kind the ensemble runs (a 2.5D U-Net, a 3D SegResNet and the slice
classifier from the project's tiny configs, weights freshly initialised and saved as bare state dicts,
``{"state_dict": ...}``, the part of a trainer's checkpoint that inference reads, each loaded with its config; with
``--detector``, an untrained YOLO crop detector saved by ultralytics), a spec that uses them all, and synthetic
test trees of ``N`` and ``FACTOR * N`` case-days (one synthetic case-day copied under new case/day names, so every
case-day is the same size and only their number changes).

Measured: ``tools/infer.py`` runs in a child process; its peak resident memory (``ru_maxrss`` of that child, from
``os.wait4``) and its wall time, for each tree. The streaming design (one case-day in memory at a time, only the
RLE strings kept) should give the same peak for both; the table shows the difference and its ratio.

    python benchmarks/bench_memory.py [--case-days 2] [--factor 10] [--slices 32] [--size 128x128] [--device cpu]
                                      [--detector] [--scratch DIR] [--keep]

On a CUDA device the child also reports its peak device memory (``torch.cuda.max_memory_allocated``), which must
not grow either. Prints a table and writes ``benchmarks/results/bench_memory.json`` (``bench_memory_cuda.json`` with
a CUDA device).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The peak may differ by this fraction between trees before the benchmark reports growth.
TOLERANCE = 0.10
CONFIGS = {
    "2.5d": "mmcfg/unet/unet_effb0_1xb4-40_gitract-128x128.py",
    "3d": "mmcfg/monai3d/segresnet-tiny_1xb2-40_synth-32x32x16.py",
    "classifier": "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py",
}


def make_checkpoints(out: Path, detector: bool) -> dict[str, Path]:
    """Save untrained tiny models as bare state dicts (``{"state_dict": ...}``); returns kind -> path."""
    import torch

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    from training.config import build_model

    paths = {}
    for kind in ("2.5d", "3d", "classifier"):  # any kind is built from its config, as tools/train.py builds it
        paths[kind] = out / f"{kind}.pth"
        torch.save({"state_dict": build_model(REPO / CONFIGS[kind]).state_dict()}, paths[kind])
    if detector:
        from gating.crop import yolo_offline_env

        yolo_offline_env(out / "yolo")
        from ultralytics import YOLO

        paths["detector"] = out / "det.pt"
        YOLO("yolov8n.yaml").save(str(paths["detector"]))
    return paths


def write_spec(path: Path, ckpts: dict[str, Path]) -> Path:
    """A spec running every tiny model: classifier gate, 2.5D with hflip, 3D with flips, fusion, post-processing."""
    import yaml

    models = []
    if "detector" in ckpts:
        models.append({"name": "det", "kind": "detector", "checkpoints": [str(ckpts["detector"])],
                       "options": {"imgsz": 64}})  # fmt: skip
    models += [
        {"name": "cls", "kind": "classifier", "config": CONFIGS["classifier"],
         "checkpoints": [str(ckpts["classifier"])]},
        {"name": "unet", "kind": "2.5d", "config": CONFIGS["2.5d"], "checkpoints": [str(ckpts["2.5d"])],
         "tta": ["hflip"]},
        {"name": "segres", "kind": "3d", "config": CONFIGS["3d"], "checkpoints": [str(ckpts["3d"])], "tta": ["flip"]},
    ]  # fmt: skip
    spec = {
        "name": "bench_memory",
        "folds": [0],
        "batch_size": 8,
        "models": models,
        "gate": {"method": "classifier", "thresholds": 0.3},
        "fusion": {"weight_2d": 0.6, "weight_3d": 0.4},
        "thresholds": 0.4,
        "post": {"max_prob_floor": 0.45, "min_component": 5},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def make_tree(root: Path, template: Path, n: int) -> Path:
    """A Kaggle-layout root whose ``test/`` holds ``n`` copies of the case-day folder ``template`` (new names)."""
    scans = sorted(template.glob("*.png"))
    for i in range(n):
        case, day = 1000 + i // 3, i % 3
        dst = root / "test" / f"case{case}" / f"case{case}_day{day}" / "scans"
        dst.mkdir(parents=True)
        for p in scans:
            shutil.copy(p, dst / p.name)
    (root / "sample_submission.csv").write_text("id,class,predicted\n")
    return root


#: Runs tools/infer.py as its ``__main__`` and, on CUDA, writes the peak device memory (MiB) to ``argv[1]``.
CUDA_WRAPPER = """
import runpy, sys, torch
peak_file = sys.argv.pop(1)
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    with open(peak_file, "w") as f:
        f.write(str(torch.cuda.max_memory_allocated() / 2**20))
"""


def measure(root: Path, spec: Path, out: Path, device: str) -> dict[str, float]:
    """Run tools/infer.py on ``root`` in a child process; its peak RSS (MiB), wall time (s) and, on CUDA, its peak
    device memory (MiB, ``torch.cuda.max_memory_allocated``)."""
    args = ["--data-root", str(root), "--spec", str(spec), "--root", str(REPO), "--out", str(out), "--device", device,
            "--no-progress", "--overwrite"]  # fmt: skip
    cmd = [sys.executable, str(REPO / "tools" / "infer.py"), *args]
    peak_file = out.with_suffix(".peak")
    if device.startswith("cuda"):
        cmd = [sys.executable, "-c", CUDA_WRAPPER, str(peak_file), str(REPO / "tools" / "infer.py"), *args]
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    t0 = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"tools/infer.py failed ({proc.returncode}); see {out.with_suffix('.log')}")
    res = {"peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": wall}
    if device.startswith("cuda"):
        res["peak_device_mib"] = float(peak_file.read_text())
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case-days", type=int, default=2, help="N: case-days of the small tree (default 2)")
    p.add_argument("--factor", type=int, default=10, help="the large tree has FACTOR * N case-days (default 10)")
    p.add_argument("--slices", type=int, default=32, help="slices per case-day (default 32)")
    p.add_argument("--size", default="128x128", help="WxH of the scans (default 128x128)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--detector", action="store_true", help="add the YOLO crop detector to the ensemble")
    p.add_argument("--scratch", default=None, help="folder for the trees and models (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/bench_memory[_cuda].json)")
    a = p.parse_args(argv)
    from data_prep.synth import synthesize

    w, h = (int(v) for v in a.size.lower().split("x"))
    scratch = Path(a.scratch or tempfile.mkdtemp(prefix="bench_memory_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        src = scratch / "synth"
        if not src.exists():
            synthesize(src, cases=1, seed=0, test_cases=1, slices=a.slices, sizes=[(w, h)])
        template = sorted((src / "test").glob("case*/case*_day*/scans"))[0]
        ckpts = make_checkpoints(scratch / "ckpt", a.detector)
        spec = write_spec(scratch / "spec.yaml", ckpts)
        rows = []
        for n in (a.case_days, a.case_days * a.factor):
            root = scratch / f"tree_{n}"
            if root.exists():
                shutil.rmtree(root)
            make_tree(root, template, n)
            m = measure(root, spec, scratch / f"submission_{n}.csv", a.device)
            rows.append({"case_days": n, "slices": n * a.slices, **m, "s_per_case_day": m["wall_s"] / n})
        small, large = rows
        ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
        device_ratio = large["peak_device_mib"] / small["peak_device_mib"] if "peak_device_mib" in small else None
        result = {
            "benchmark": "bench_memory",
            "what": "peak RSS of tools/infer.py (tiny models of every kind) on test trees of N and FACTOR*N case-days",
            "device": a.device,
            "size_wh": [w, h],
            "slices_per_case_day": a.slices,
            "detector": a.detector,
            "rows": rows,
            "peak_ratio": ratio,
            "peak_growth_mib": large["peak_rss_mib"] - small["peak_rss_mib"],
            "peak_device_ratio": device_ratio,
            "independent_of_size": bool(ratio <= 1 + TOLERANCE and (device_ratio or 1.0) <= 1 + TOLERANCE),
            "tolerance": TOLERANCE,
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        }
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\ntools/infer.py peak memory, {a.slices} slices of {w}x{h} per case-day, device {a.device}\n")
    print(f"| {'case-days':>9} | {'slices':>6} | {'peak RSS MiB':>12} | {'wall s':>7} | {'s / case-day':>12} |")
    print(f"|{'-' * 11}|{'-' * 8}|{'-' * 14}|{'-' * 9}|{'-' * 14}|")
    for r in rows:
        print(f"| {r['case_days']:>9} | {r['slices']:>6} | {r['peak_rss_mib']:>12.1f} | {r['wall_s']:>7.1f} | "
              f"{r['s_per_case_day']:>12.2f} |")  # fmt: skip
    if device_ratio is not None:
        print(f"\npeak device memory {small['peak_device_mib']:.0f} vs {large['peak_device_mib']:.0f} MiB "
              f"(ratio {device_ratio:.3f})")  # fmt: skip
    print(f"\npeak ratio {ratio:.3f} ({result['peak_growth_mib']:+.1f} MiB for {a.factor}x the case-days): "
          f"{'independent of the tree size' if result['independent_of_size'] else 'GROWS with the tree size'} "
          f"(tolerance {TOLERANCE:.0%})")  # fmt: skip
    default = "bench_memory_cuda.json" if a.device.startswith("cuda") else "bench_memory.json"
    out = Path(a.out) if a.out else REPO / "benchmarks" / "results" / default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if result["independent_of_size"] else 1


if __name__ == "__main__":
    sys.exit(main())
