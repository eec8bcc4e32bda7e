"""Throughput of the gating stage: slice classifier and YOLO crop detector, in slices/s.

Inference on random uint16 volumes of a real size (266x266, 144 slices by default) through the public APIs
(``SliceClassifier.predict_volume``, ``Detector.predict_boxes``), after a warm-up, plus classifier training
steps (mmengine's ``train_step`` with the config's optimizer wrapper: preprocessing, forward, BCE loss, backward,
gradient clipping and AdamW, batch ``--train-batch``; ``AmpOptimWrapper`` on CUDA, as ``tools/train.py --amp``).
Each classifier is the EfficientNet-B0 config with another timm model, input size and channel count
(``--cfg-options``), built untrained (``training.config.build_model``), saved as a bare state dict
(``{"state_dict": ...}``, no stored definition) and loaded with that config; a detector from ``yolov8n.yaml``:
speed does not depend on the weights. Nothing is downloaded.

    python benchmarks/bench_gating.py                       # CPU, small settings
    python benchmarks/bench_gating.py --device cuda --models efficientnet_b0 convnext_tiny --img 256 --depth 144

Prints a table and writes ``benchmarks/results/bench_gating.json`` (``bench_gating_cuda.json`` on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.engine import atomic_torch_save
from gating.classifier import SliceClassifier
from gating.crop import Detector, yolo_offline_env
from training.config import build_model, load_config

REPO = Path(__file__).resolve().parents[1]
CLS_CONFIG = REPO / "mmcfg/gating/cls_efficientnet-b0_1xb32-8k_uwmgi-256x256.py"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _volume(depth: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, size=(depth, h, w)).astype(np.uint16)


def classifier_config(name: str, args: argparse.Namespace) -> Any:
    """The EfficientNet-B0 classifier config with timm model ``name``, ``--img`` and ``--channels`` (and
    ``AmpOptimWrapper`` on CUDA), as ``--cfg-options`` would give it."""
    options = {"model.model_name": name, "img_size": (args.img, args.img), "stack.channels": args.channels}
    if args.device.startswith("cuda"):
        options["optim_wrapper.type"] = "AmpOptimWrapper"
    return load_config(CLS_CONFIG, options)


def bench_classifier(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import BaseDataElement

    config = classifier_config(name, args)
    ckpt = tmp / f"{name}.pth"
    atomic_torch_save({"state_dict": build_model(config).state_dict()}, ckpt)
    clf = SliceClassifier.load(ckpt, args.device, config=config)
    vol = _volume(args.depth, args.height, args.width)
    clf.predict_volume(vol[: min(len(vol), args.batch)], args.batch)  # warm-up
    _sync(args.device)
    t = time.perf_counter()
    for _ in range(args.repeats):
        clf.predict_volume(vol, args.batch)
    _sync(args.device)
    infer = args.repeats * len(vol) / (time.perf_counter() - t)

    # training steps, as the Runner runs them: the config's optimizer wrapper (optimizer, clip_grad; AMP on CUDA)
    model = build_model(config).to(args.device).train()
    wrapper = build_optim_wrapper(model, config.optim_wrapper)
    gen = torch.Generator().manual_seed(0)
    data = dict(
        inputs=[torch.rand(args.channels, args.img, args.img, generator=gen) for _ in range(args.train_batch)],
        data_samples=[
            BaseDataElement(gt_label=(torch.rand(3, generator=gen) > 0.5).float()) for _ in range(args.train_batch)
        ],
    )
    model.train_step(data, wrapper)
    _sync(args.device)
    t = time.perf_counter()
    for _ in range(args.train_steps):
        model.train_step(data, wrapper)
    _sync(args.device)
    train = args.train_steps * args.train_batch / (time.perf_counter() - t)
    return {"model": name, "infer_slices_per_s": infer, "train_slices_per_s": train}


def bench_detector(args: argparse.Namespace, tmp: Path) -> dict:
    yolo_offline_env(tmp)
    from ultralytics import YOLO

    model = YOLO(args.yolo_model, task="detect")
    # an untrained model: save it the way ultralytics' trainer does, then load it through the public API
    path = tmp / "yolo_untrained.pt"
    model.save(str(path))
    det = Detector.load(path, "0" if args.device.startswith("cuda") else "cpu", imgsz=args.yolo_imgsz, conf=0.001)
    vol = _volume(args.depth, args.height, args.width, seed=1)
    det.predict_boxes(vol[: min(len(vol), args.batch)], args.batch)  # warm-up
    _sync(args.device)
    t = time.perf_counter()
    for _ in range(args.repeats):
        boxes = det.predict_boxes(vol, args.batch)
    _sync(args.device)
    rate = args.repeats * len(vol) / (time.perf_counter() - t)
    h, w = args.height, args.width
    inside = bool(((boxes[:, 0] >= 0) & (boxes[:, 2] <= w) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= h)).all())
    return {"model": args.yolo_model, "imgsz": args.yolo_imgsz, "infer_slices_per_s": rate, "boxes_inside": inside}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=["efficientnet_b0", "resnet18"])
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--img", type=int, default=None, help="classifier input size (default 128 CPU, 256 CUDA)")
    p.add_argument("--depth", type=int, default=None, help="slices per volume (default 32 CPU, 144 CUDA)")
    p.add_argument("--height", type=int, default=266)
    p.add_argument("--width", type=int, default=266)
    p.add_argument("--batch", type=int, default=32, help="inference batch")
    p.add_argument("--train-batch", type=int, default=None, help="default 8 CPU, 32 CUDA")
    p.add_argument("--train-steps", type=int, default=None, help="default 3 CPU, 20 CUDA")
    p.add_argument("--repeats", type=int, default=None, help="default 1 CPU, 3 CUDA")
    p.add_argument("--yolo-model", default="yolov8n.yaml")
    p.add_argument("--yolo-imgsz", type=int, default=None, help="default 192 CPU, 384 CUDA")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    defaults = {
        "img": (128, 256),
        "depth": (32, 144),
        "train_batch": (8, 32),
        "train_steps": (3, 20),
        "repeats": (1, 3),
        "yolo_imgsz": (192, 384),
    }
    for k, (cpu_v, gpu_v) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, gpu_v if cuda else cpu_v)

    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gating_") as d:
        tmp = Path(d)
        for name in args.models:
            r = bench_classifier(name, args, tmp)
            rows.append({"part": "classifier", **r})
            print(f"classifier {name:<20} infer {r['infer_slices_per_s']:8.1f} slices/s   "
                  f"train {r['train_slices_per_s']:8.1f} slices/s", flush=True)  # fmt: skip
        yolo_offline_env(tmp)  # before ultralytics is first imported
        try:
            import ultralytics  # noqa: F401
        except ImportError:
            print("detector   skipped: ultralytics is not installed")
        else:
            r = bench_detector(args, tmp)
            rows.append({"part": "detector", **r})
            print(f"detector   {r['model']:<20} infer {r['infer_slices_per_s']:8.1f} slices/s   (imgsz {r['imgsz']})")

    env = {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": threads,
        "cpu_count": os.cpu_count(),
    }
    settings = {k: getattr(args, k) for k in ("channels", "img", "depth", "height", "width", "batch",
                                              "train_batch", "train_steps", "repeats", "yolo_imgsz")}  # fmt: skip
    out = args.out or REPO / "benchmarks" / "results" / ("bench_gating_cuda.json" if cuda else "bench_gating.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "settings": settings, "results": rows}, indent=2) + "\n")
    print("\n| part | model | inference slices/s | training slices/s |\n|---|---|---|---|")
    for r in rows:
        train = f"{r['train_slices_per_s']:.1f}" if "train_slices_per_s" in r else "-"
        print(f"| {r['part']} | {r['model']} | {r['infer_slices_per_s']:.1f} | {train} |")
    print(f"\nsettings {settings}; {env}\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
