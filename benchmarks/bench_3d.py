"""Benchmark of 3D inference (and optionally training steps) of the MONAI segmenters.

Seconds per case-day of ``Segmenter3D.predict_volume`` (preprocessing, sliding window with Gaussian blending,
TTA, resampling back to the original size) on two real case-day shapes: 144 x 266 x 266 and 80 x 310 x 360
(D x H x W), with randomly initialised weights (speed does not depend on them). Optionally seconds per training
iteration of the config's model (``train_step`` with the config's optimizer wrapper: AdamW, gradient clipping,
AMP on CUDA; batch of the config, last-stage patch of ``PatchStageHook``) on random tensors.

Prints a table and writes ``benchmarks/results/bench_3d_{device}.json``.

    python benchmarks/bench_3d.py                                   # CPU, no TTA, default SegResNet config
    python benchmarks/bench_3d.py --device cuda --tta flip --train-iters 20
    python benchmarks/bench_3d.py --config mmcfg/monai3d/dynunet_1xb2-20k_uwmgi-224x224x80.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from segmenters.monai.hooks import parse_stages
from segmenters.monai.inference import Segmenter3D
from segmenters.monai.volumes import target_hw, tta_variants
from training.config import build_model, load_config

REPO = Path(__file__).resolve().parents[1]

SHAPES = ((144, 266, 266), (80, 310, 360))  # (D, H, W)
DEFAULT_CONFIG = REPO / "mmcfg" / "monai3d" / "segresnet_1xb2-20k_uwmgi-224x224x80.py"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def n_windows(shape_hwd: tuple[int, int, int], roi: tuple[int, int, int], overlap: float) -> int:
    """Sliding-window positions MONAI visits for one pass (roi larger than the volume: 1 along that axis)."""
    n = 1
    for s, r in zip(shape_hwd, roi):
        if s <= r:
            continue
        step = max(1, int(r * (1 - overlap)))
        n *= int(np.ceil((s - r) / step)) + 1
    return n


def bench_infer(seg: Segmenter3D, tta: tuple[str, ...], repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for d, h, w in SHAPES:
        vol = rng.integers(0, 4000, size=(d, h, w), dtype=np.uint16)
        hw = target_hw((h, w), seg.resample)
        seg.predict_volume(vol[: min(d, 16)], tta=())  # warm-up (cudnn, allocator)
        times = []
        for _ in range(repeats):
            _sync(seg.device)
            t = time.perf_counter()
            out = seg.predict_volume(vol, tta=tta)
            _sync(seg.device)
            times.append(time.perf_counter() - t)
        assert out.shape == (d, 3, h, w)
        rows.append(
            {
                "shape_dhw": [d, h, w],
                "resampled_hwd": [*hw, d],
                "windows_per_pass": n_windows((*hw, d), seg.roi_size, seg.overlap),
                "passes": len(tta_variants(tta)),
                "seconds": float(np.median(times)),
                "seconds_all": times,
            }
        )
    return rows


def bench_train(cfg, device: torch.device, iters: int, amp: bool) -> dict:
    """Seconds per ``train_step`` of the config's model on random patches of the last stage."""
    from mmengine.optim import build_optim_wrapper

    stages = next(h["stages"] for h in cfg.custom_hooks if h["type"] == "PatchStageHook")
    roi = parse_stages(stages)[-1][1]
    ds = cfg.train_dataloader.dataset
    bs = int(cfg.train_dataloader.batch_size) * int(ds.get("num_samples", 1))
    model = build_model(cfg).to(device).train()
    optim_cfg = cfg.optim_wrapper.copy()
    optim_cfg.type = "AmpOptimWrapper" if amp else "OptimWrapper"
    optim_wrapper = build_optim_wrapper(model, optim_cfg)
    data = {"inputs": torch.randn(bs, 1, *roi), "data_samples": {"labels": (torch.rand(bs, 3, *roi) > 0.9).byte()}}
    times = []
    for i in range(iters + 2):
        _sync(device)
        t = time.perf_counter()
        model.train_step(data, optim_wrapper)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "roi_hwd": list(roi),
        "batch": bs,
        "amp": amp,
        "seconds_per_iter": float(np.median(times)),
        "max_mem_gib": mem,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tta", nargs="*", default=[], help="TTA names (default none; 'flip' = 3 passes)")
    p.add_argument("--overlap", type=float, default=None, help="model.test_cfg.overlap (default: the config's)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--train-iters", type=int, default=0, help="also time N training iterations")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/bench_3d_{device}.json)"
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda but CUDA is not available")
        torch.backends.cudnn.benchmark = True
    cfg = load_config(a.config, {"model.test_cfg.overlap": a.overlap} if a.overlap is not None else None)
    torch.manual_seed(0)
    seg = Segmenter3D(build_model(cfg), cfg, device)
    tta = tuple(a.tta)
    rows = bench_infer(seg, tta, a.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(
        f"\n3D inference, {a.config.name}, device {name}, roi {seg.roi_size}, overlap {seg.overlap}, "
        f"tta {list(tta) or 'none'}, amp {seg.amp}"
    )
    print(f"{'case-day D x H x W':>20} | {'resampled H x W x D':>20} | {'windows x passes':>16} | {'s / case-day':>12}")
    for r in rows:
        d, h, w = r["shape_dhw"]
        rh, rw, rd = r["resampled_hwd"]
        cells = (f"{d} x {h} x {w}", f"{rh} x {rw} x {rd}", f"{r['windows_per_pass']} x {r['passes']}")
        print(f"{cells[0]:>20} | {cells[1]:>20} | {cells[2]:>16} | {r['seconds']:12.2f}")
    result = {
        "config": a.config.name,
        "device": name,
        "torch": torch.__version__,
        "roi_size": list(seg.roi_size),
        "overlap": seg.overlap,
        "tta": list(tta),
        "amp": seg.amp,
        "inference": rows,
    }
    if a.train_iters:
        amp = device.type == "cuda"
        tr = bench_train(cfg, device, a.train_iters, amp)
        result["train"] = tr
        print(
            f"training: roi {tuple(tr['roi_hwd'])} batch {tr['batch']} amp {amp}: "
            f"{tr['seconds_per_iter']:.3f} s/iter"
            + (f", max mem {tr['max_mem_gib']:.1f} GiB" if tr["max_mem_gib"] else "")
        )
    out = a.out or REPO / "benchmarks" / "results" / f"bench_3d_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
