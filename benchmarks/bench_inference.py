"""Throughput of the inference engine against the forward passes alone and against the path it replaced.

For one ensemble spec, on the same generated test tree (``N`` case-days of ``D`` slices), in one run, each stage in
its own child process (so that peak memory is its own):

- ``model``: the forward passes alone: every 2.5D predictor on every slice (the same batch size, layout
  (channels_last) and TTA batching as the engine, AMP on CUDA), every 3D predictor on every volume; no reading,
  no preprocessing, no writing. The floor the engine is held to.
- ``engine``: ``inference.pipeline.infer`` end to end (read the PNG tree -> submission.csv), this checkout.
- ``old``: the same call on the path before the engine (``--old-ref``, default the last commit before it: host
  preprocessing per slice and per model and fold, fusion on the CPU), checked out with ``git archive``.

Models are untrained (weights drawn from a fixed seed, one checkpoint per config, fold and seed, saved as
``{"state_dict": ...}``; gate U-Net ``i`` and segmenter U-Net ``i`` share one: the same compute), loaded before the
clock starts. The gate keeps every slice (``pixel_thr: 0``), so every model runs on every slice in every stage.
Specs:

- ``one``: one 2.5D U-Net with hflip.
- ``first``: the 1st place's size: 4 gate U-Nets and 7 segmenters (5 U-Nets, 2 UPerNets) at hflip, 3 SegResNets,
  ``--folds`` folds each. On CUDA the real configs (EfficientNet B4-B7 and ConvNeXt S/B at 384 px, SegResNet at
  224x224x80); on CPU the tiny configs of the same families.

Reported per stage: wall time, slices/s, the ratio engine / model-only (the target on a GPU is >= 0.9), on CUDA the
device's busy fraction (model-only time / engine time) and peak device memory, and the peak host RSS; the fraction
of submission rows on which the engine and the old path agree.

    python benchmarks/bench_inference.py                                  # CPU: tiny configs, both specs
    python benchmarks/bench_inference.py --device cuda --spec first --folds 5 --case-days 20 --slices 144

Prints a table and writes ``benchmarks/results/bench_inference_{cpu|cuda}.json``.
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
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The last commit whose inference had no engine (``--old-ref``).
OLD_REF = "15a004d"

TINY = {
    "unet": "mmcfg/unet/unet_effb0_1xb4-40_gitract-128x128.py",
    "upernet": "mmcfg/upernet/upernet_convnext-atto_1xb4-40_gitract-128x128.py",
    "3d": "mmcfg/monai3d/segresnet-tiny_1xb2-40_synth-32x32x16.py",
}
REAL = {
    "b4": "mmcfg/unet/unet_effb4_2xb16-20k_gitract-384x384.py",
    "b5": "mmcfg/unet/unet_effb5_2xb16-20k_gitract-384x384.py",
    "b6": "mmcfg/unet/unet_effb6_2xb16-20k_gitract-384x384.py",
    "b7": "mmcfg/unet/unet_effb7_2xb16-20k_gitract-384x384.py",
    "convnext-s": "mmcfg/upernet/upernet_convnext-s_2xb16-20k_gitract-384x384.py",
    "convnext-b": "mmcfg/upernet/upernet_convnext-b_2xb16-20k_gitract-384x384.py",
    "3d": "mmcfg/monai3d/segresnet_1xb2-20k_uwmgi-224x224x80.py",
}


def spec_models(which: str, cuda: bool) -> list[dict]:
    """``(name, kind, role, config, seed, weight, tta)`` of the spec's models (see the module docstring)."""
    if which == "one":
        cfg = REAL["b4"] if cuda else TINY["unet"]
        return [dict(name="unet", kind="2.5d", role="segment", config=cfg, seed=0, weight=1.0, tta=["hflip"])]
    unets = [REAL[b] for b in ("b4", "b5", "b6", "b7")] if cuda else [TINY["unet"]] * 4
    upers = [REAL["convnext-s"], REAL["convnext-b"]] if cuda else [TINY["upernet"]] * 2
    models = [
        dict(name=f"gate{i}", kind="2.5d", role="gate", config=c, seed=i, weight=1.0, tta=["hflip"])
        for i, c in enumerate(unets)
    ]
    segs = [(c, i) for i, c in enumerate(unets)] + [(unets[3], 4)] + [(c, 10 + i) for i, c in enumerate(upers)]
    weights = [0.2, 0.2, 0.3, 0.2, 0.1, 0.1, 0.1]
    models += [
        dict(name=f"seg{i}", kind="2.5d", role="segment", config=c, seed=s, weight=w, tta=["hflip"])
        for i, ((c, s), w) in enumerate(zip(segs, weights))
    ]
    cfg3d = REAL["3d"] if cuda else TINY["3d"]
    models += [
        dict(name=f"seg3d{i}", kind="3d", role="segment", config=cfg3d, seed=20 + i, weight=1.0, tta=[])
        for i in range(3)
    ]
    return models


def make_checkpoints(models: list[dict], folds: int, out: Path) -> dict[tuple[str, int, int], Path]:
    """One untrained checkpoint per (config, seed, fold), shared by the models that name the same."""
    import torch

    import segmenters.mmcv_compat  # noqa: F401  (mmcv-lite shim before mmseg)
    from training.config import build_model

    paths: dict[tuple[str, int, int], Path] = {}
    out.mkdir(parents=True, exist_ok=True)
    for m in models:
        for f in range(folds):
            key = (m["config"], m["seed"], f)
            if key in paths:
                continue
            torch.manual_seed(1000 * m["seed"] + f)
            p = out / f"{Path(m['config']).stem}_s{m['seed']}_f{f}.pth"
            torch.save({"state_dict": build_model(REPO / m["config"]).state_dict()}, p)
            paths[key] = p
    return paths


def write_spec(path: Path, models: list[dict], folds: int, ckpts: dict, batch_size: int) -> Path:
    import yaml

    raw = []
    for m in models:
        d = {k: m[k] for k in ("name", "kind", "config", "tta", "weight")}
        if m["kind"] == "2.5d":
            d["role"] = m["role"]
        d["checkpoints"] = [str(ckpts[(m["config"], m["seed"], f)]) for f in range(folds)]
        raw.append(d)
    has_gate = any(m["role"] == "gate" for m in models)
    spec = {
        "name": "bench_inference",
        "folds": list(range(folds)),
        "batch_size": batch_size,
        "models": raw,
        "gate": {"method": "unet_count", "pixel_thr": 0.0, "min_pixels": 1} if has_gate else {"method": "none"},
        "fusion": {"weight_2d": 0.6, "weight_3d": 0.4},
        "thresholds": 0.4,
        "post": {"max_prob_floor": 0.45},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def make_tree(root: Path, n: int, slices: int, size: tuple[int, int]) -> Path:
    """A Kaggle test tree of ``n`` copies of one synthetic case-day (``size`` = (w, h))."""
    from data_prep.synth import synthesize

    src = root.parent / f"synth_{slices}_{size[0]}x{size[1]}"
    if not src.exists():
        synthesize(src, cases=1, seed=0, test_cases=1, slices=slices, sizes=[size])
    template = sorted((src / "test").glob("case*/case*_day*/scans"))[0]
    for i in range(n):
        case, day = 1000 + i // 3, i % 3
        dst = root / "test" / f"case{case}" / f"case{case}_day{day}" / "scans"
        dst.mkdir(parents=True)
        for p in sorted(template.glob("*.png")):
            shutil.copy(p, dst / p.name)
    (root / "sample_submission.csv").write_text("id,class,predicted\n")
    return root


# ---- the child processes (one stage each) ----


def _peak(device) -> dict[str, float]:
    import torch

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child(stage: str, setup: dict) -> dict:
    """Run one stage (see the module docstring); returns its measurements."""
    import numpy as np
    import torch

    from ensembles.spec import load_spec
    from inference import pipeline

    device = torch.device(setup["device"])
    spec = load_spec(setup["spec"], root=REPO)
    models = pipeline.load_models(spec, setup["device"])
    n, d, (w, h) = setup["case_days"], setup["slices"], setup["size"]
    bs = int(setup["batch_size"])
    if stage == "model":
        rng = np.random.default_rng(0)

        def one_pass(n_case_days: int) -> None:
            for lm in models:
                for _, p in lm.folds:
                    if lm.spec.kind == "2.5d":
                        planes = p.channels * len(p.image_channels)
                        # as the engine feeds it: channels_last; the TTA variants in one batch on CUDA, one pass
                        # each on the CPU (inference.engine.forward_tta)
                        x = torch.rand((bs, planes, *p.img_size), device=device)
                        x = x.contiguous(memory_format=torch.channels_last)
                        n_var = 1 + len(lm.spec.tta)
                        batches = [torch.cat([x] * n_var)] if device.type == "cuda" else [x] * n_var
                        for _ in range(n_case_days * -(-d // bs)):
                            for b in batches:
                                p.predict_batch(b, tta=())
                    else:
                        vol = rng.integers(0, 4000, (d, h, w), dtype=np.uint16)
                        for _ in range(n_case_days):
                            p.predict_volume(vol, (1.5, 1.5), tuple(lm.spec.tta))
            _sync(device)

        one_pass(1)  # warm-up (cudnn, allocator)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        one_pass(n)
        wall = time.perf_counter() - t0
        return {"wall_s": wall, **_peak(device)}
    pipeline.load_models = lambda *a, **k: models  # loaded once, before the clock
    kw = dict(split="test", device=setup["device"], batch_size=bs, overwrite=True)
    pipeline.infer(setup["warm_root"], spec, Path(setup["out"]).with_name(f"warm_{stage}.csv"), **kw)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    pipeline.infer(setup["root"], spec, setup["out"], **kw)
    _sync(device)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, **_peak(device)}


def run_child(stage: str, setup_path: Path, pythonpath: Path | None) -> dict:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--setup", str(setup_path)]
    r = subprocess.run(cmd, env=env, cwd=str(pythonpath or REPO), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"stage {stage} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def agreement(a: Path, b: Path) -> float:
    """Fraction of submission rows (same id and class) whose predicted RLE is equal."""
    import pandas as pd

    x = pd.read_csv(a).fillna("").set_index(["id", "class"])["predicted"]
    y = pd.read_csv(b).fillna("").set_index(["id", "class"])["predicted"]
    y = y.reindex(x.index)
    return float((x == y).mean())


def bench_spec(which: str, a: argparse.Namespace, scratch: Path, old_tree: Path | None) -> dict:
    cuda = a.device.startswith("cuda")
    models = spec_models(which, cuda)
    ckpts = make_checkpoints(models, a.folds, scratch / "ckpt")
    spec = write_spec(scratch / f"spec_{which}.yaml", models, a.folds, ckpts, a.batch_size)
    size = tuple(int(v) for v in a.size.lower().split("x"))
    root, warm = scratch / f"tree_{a.case_days}", scratch / "tree_warm"
    if not root.exists():
        make_tree(root, a.case_days, a.slices, size)
    if not warm.exists():
        make_tree(warm, 1, a.slices, size)
    rows = {}
    for stage in ("model", "engine", "old"):
        if stage == "old" and old_tree is None:
            continue
        setup = dict(
            spec=str(spec), root=str(root), warm_root=str(warm), out=str(scratch / f"sub_{which}_{stage}.csv"),
            device=a.device, batch_size=a.batch_size, case_days=a.case_days, slices=a.slices, size=size,
        )  # fmt: skip
        sp = scratch / f"setup_{which}_{stage}.json"
        sp.write_text(json.dumps(setup))
        rows[stage] = run_child(stage, sp, old_tree if stage == "old" else None)
        rows[stage]["slices_per_s"] = a.case_days * a.slices / rows[stage]["wall_s"]
        print(f"  {which} {stage}: {rows[stage]['wall_s']:.2f} s", flush=True)
    n25 = sum(a.folds for m in models if m["kind"] == "2.5d")
    n3 = sum(a.folds for m in models if m["kind"] == "3d")
    res = {
        "spec": which,
        "predictors_2d": n25,
        "predictors_3d": n3,
        "configs": sorted({m["config"] for m in models}),
        "rows": rows,
        "engine_over_model": rows["model"]["wall_s"] / rows["engine"]["wall_s"],
    }
    if "old" in rows:
        res["engine_speedup_over_old"] = rows["old"]["wall_s"] / rows["engine"]["wall_s"]
        res["rows_equal_to_old"] = agreement(scratch / f"sub_{which}_engine.csv", scratch / f"sub_{which}_old.csv")
    return res


def print_table(results: list[dict], a: argparse.Namespace) -> None:
    cuda = a.device.startswith("cuda")
    print(f"\ninference, {a.case_days} case-days x {a.slices} slices of {a.size}, device {a.device}, "
          f"batch {a.batch_size}, {a.folds} fold(s)\n")  # fmt: skip
    head = "| spec | predictors | stage | wall s | slices/s | / model-only | peak RSS MiB |"
    head += " peak device MiB |" if cuda else ""
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results:
        for stage, row in r["rows"].items():
            ratio = r["rows"]["model"]["wall_s"] / row["wall_s"]
            who = f"{r['predictors_2d']} 2.5D + {r['predictors_3d']} 3D"
            line = (f"| {r['spec']} | {who} | {stage} | {row['wall_s']:.2f} | {row['slices_per_s']:.1f} | "
                    f"{ratio:.2f} | {row['peak_rss_mib']:.0f} |")  # fmt: skip
            if cuda:
                line += f" {row.get('peak_device_mib', float('nan')):.0f} |"
            print(line)
    for r in results:
        extra = ""
        if "engine_speedup_over_old" in r:
            extra = (f"; {r['engine_speedup_over_old']:.2f}x the old path, "
                     f"{r['rows_equal_to_old']:.2%} of the submission rows equal to its")  # fmt: skip
        busy = f" (device busy {r['engine_over_model']:.0%} of the engine's time)" if cuda else ""
        print(f"{r['spec']}: engine / model-only = {r['engine_over_model']:.2f}{busy}{extra}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--spec", default="both", choices=("one", "first", "both"))
    p.add_argument("--case-days", type=int, default=None, help="N (default 4 on CPU, 20 on CUDA)")
    p.add_argument("--slices", type=int, default=None, help="slices per case-day (default 32 on CPU, 144 on CUDA)")
    p.add_argument("--size", default="266x266", help="WxH of the scans (default 266x266, the most common)")
    p.add_argument("--folds", type=int, default=None, help="checkpoints per model (default 1 on CPU, 5 on CUDA)")
    p.add_argument("--batch-size", type=int, default=None, help="slices per batch (default 8 on CPU, 32 on CUDA)")
    p.add_argument("--old-ref", default=OLD_REF, help=f"the commit of the old path (default {OLD_REF}); '' skips it")
    p.add_argument("--scratch", default=None, help="working folder (default: a temporary one, removed)")
    p.add_argument("--out", default=None, help="JSON (default benchmarks/results/bench_inference_{device}.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--setup", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, json.loads(Path(a.setup).read_text()))))
        return 0
    cuda = a.device.startswith("cuda")
    a.case_days = a.case_days or (20 if cuda else 4)
    a.slices = a.slices or (144 if cuda else 32)
    a.folds = a.folds or (5 if cuda else 1)
    a.batch_size = a.batch_size or (32 if cuda else 8)
    scratch = Path(a.scratch or tempfile.mkdtemp(prefix="bench_inference_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        old_tree = None
        if a.old_ref:
            old_tree = scratch / "old"
            if not old_tree.exists():
                old_tree.mkdir()
                archive = subprocess.run(["git", "archive", a.old_ref], cwd=REPO, capture_output=True, check=True)
                subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive.stdout, check=True)
        specs = ("one", "first") if a.spec == "both" else (a.spec,)
        results = [bench_spec(s, a, scratch, old_tree) for s in specs]
    finally:
        if not a.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print_table(results, a)
    out = (
        Path(a.out) if a.out else REPO / "benchmarks" / "results" / f"bench_inference_{'cuda' if cuda else 'cpu'}.json"
    )
    meta = dict(device=a.device, case_days=a.case_days, slices=a.slices, size=a.size, folds=a.folds,
                batch_size=a.batch_size, old_ref=a.old_ref)  # fmt: skip
    env = dict(platform=platform.platform(), python=sys.version.split()[0], cpus=os.cpu_count())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "bench_inference", **meta, "results": results, **env}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
