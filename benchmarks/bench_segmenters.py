"""Throughput of the 2.5D segmenters: training (images/s) and inference (slices/s), peak memory, and the
fraction of training step time spent waiting for data (real DataLoader with workers over a prepared WORK).

    python benchmarks/bench_segmenters.py --device cpu            # tiny configs + one concrete config at batch 2
    python benchmarks/bench_segmenters.py --device cuda           # every config, batch 16, AMP + channels_last

Without --work, a small synthetic Kaggle tree is written and prepared with data_prep (synth + prepare) in a
temporary folder. Prints a table and writes benchmarks/results/segmenters_{device}.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import segmenters.mmcv_compat  # noqa: F401  (mmcv-lite shim before mmseg)

REPO = Path(__file__).resolve().parents[1]

CONCRETE = sorted(str(p.relative_to(REPO)) for d in ("unet", "upernet") for p in (REPO / "mmcfg" / d).glob("*.py"))
TINY = [c for c in CONCRETE if "-128x128" in c]
BIG = [c for c in CONCRETE if c not in TINY]


def make_work(root: Path, cases: int, slices: int) -> Path:
    """data_prep synth + prepare into ``root``; returns the WORK folder."""
    raw, work = root / "raw", root / "work"
    py = sys.executable
    subprocess.run(
        [
            py,
            "-m",
            "data_prep",
            "-q",
            "synth",
            "--out",
            str(raw),
            "--cases",
            str(cases),
            "--seed",
            "0",
            "--slices",
            str(slices),
            "--sizes",
            "266x266",
            "360x310",
        ],
        check=True,
        cwd=REPO,
    )
    subprocess.run(
        [py, "-m", "data_prep", "-q", "prepare", "--data-root", str(raw), "--out", str(work)], check=True, cwd=REPO
    )
    return work


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def bench_config(config: str, work: Path, device_name: str, batch: int, iters: int, warmup: int, workers: int) -> dict:
    """One config: training and inference throughput at the config's input size."""
    import torch
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS, MODELS
    from torch.utils.data import DataLoader

    from segmenters.mm.inference import Segmenter
    from training.config import load_config

    init_default_scope("mmseg")
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    cfg = load_config(config, work=str(work), fold=0)
    size = tuple(cfg.img_size)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
    ds_cfg = dict(cfg.train_dataloader.dataset)
    ds_cfg["split"] = "train"
    ds_cfg["variant"] = "all"
    dataset = DATASETS.build(ds_cfg)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=pseudo_collate,
        pin_memory=cuda,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    model.train()

    def batches():
        while True:
            yield from loader

    it = batches()
    waits, totals = [], []
    for step in range(warmup + iters):
        t0 = time.perf_counter()
        data = next(it)
        t1 = time.perf_counter()
        data = model.data_preprocessor(data, True)
        inputs = data["inputs"]
        if cuda:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            losses = model.loss(inputs, data["data_samples"])
            loss = sum(v for k, v in losses.items() if "loss" in k)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if cuda:
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        if step >= warmup:
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    train_ips = batch * iters / sum(totals)
    wait_frac = sum(waits) / sum(totals)
    train_peak = _peak_mb(device)

    model.eval()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    x = torch.rand(batch, int(cfg.stack["channels"]), *size, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
        for step in range(warmup + iters):
            t0 = time.perf_counter()
            model.predict_probs(x, tta=())
            if cuda:
                torch.cuda.synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - t0)
    infer_sps = batch * iters / sum(times)
    infer_peak = _peak_mb(device)

    # end to end on one case-day: stacks from the memmap, crop/resize, hflip TTA, paste back
    seg = Segmenter(model, cfg, device)
    from data_prep.work import load_volume

    cd = dataset.get_data_info(0)["case_day"]
    vol = load_volume(work, cd)
    seg.predict_volume(vol[: min(len(vol), batch)], batch_size=batch)  # warm-up
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    seg.predict_volume(vol, batch_size=batch)
    if cuda:
        torch.cuda.synchronize(device)
    volume_sps = len(vol) / (time.perf_counter() - t0)
    return dict(
        config=Path(config).stem,
        size=f"{size[0]}x{size[1]}",
        batch=batch,
        train_img_s=round(train_ips, 2),
        data_wait_frac=round(wait_frac, 3),
        train_peak_mb=round(train_peak),
        infer_slices_s=round(infer_sps, 2),
        volume_hflip_slices_s=round(volume_sps, 2),
        infer_peak_mb=round(infer_peak),
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", nargs="+", help="configs to measure (default depends on the device)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--big-batch-cpu", type=int, default=2, help="batch of the concrete config on CPU")
    p.add_argument("--iters", type=int, default=None, help="timed steps (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 8 on CUDA, 2 on CPU)")
    p.add_argument("--work", help="prepared WORK folder (default: synthesize one)")
    p.add_argument("--out", help="JSON output (default benchmarks/results/segmenters_{device}.json)")
    args = p.parse_args(argv)
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    iters = args.iters or (20 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    workers = args.workers if args.workers is not None else (8 if cuda else 2)
    if args.configs:
        plan = [(c, args.batch_size) for c in args.configs]
    elif cuda:
        plan = [(c, args.batch_size) for c in BIG + TINY]
    else:
        plan = [(c, args.batch_size) for c in TINY] + [(BIG[0], args.big_batch_cpu)]
    with tempfile.TemporaryDirectory(prefix="bench_seg_") as tmp:
        work = Path(args.work) if args.work else make_work(Path(tmp), cases=6, slices=80)
        rows = []
        for config, batch in plan:
            try:
                row = bench_config(config, work, args.device, batch, iters, warmup, workers)
            except torch.OutOfMemoryError as e:  # noqa: PERF203
                row = dict(config=Path(config).stem, batch=batch, error=f"out of memory: {e}"[:200])
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = [
        "config",
        "size",
        "batch",
        "params_m",
        "train_img_s",
        "data_wait_frac",
        "train_peak_mb",
        "infer_slices_s",
        "volume_hflip_slices_s",
        "infer_peak_mb",
    ]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    info = dict(
        device=args.device,
        device_name=torch.cuda.get_device_name() if cuda else "cpu",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        iters=iters,
        warmup=warmup,
        workers=workers,
        amp=cuda,
        channels_last=cuda,
        rows=rows,
    )
    out = (
        Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"segmenters_{args.device.split(':')[0]}.json"
    )
    from common.io import atomic_write_bytes

    atomic_write_bytes(out, json.dumps(info, indent=1).encode())
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
