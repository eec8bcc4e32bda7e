"""Train the YOLO crop detector on data_prep's YOLO export (offline; model from a YAML).

    python tools/train_yolo.py --work WORK --fold 0 --imgsz 384 --epochs 30 --batch 32
    python tools/train_yolo.py --data WORK/exports/yolo/data.yaml --work-dir work_dirs/yolo/fold_0 lr0=0.005

``--fold K|all`` trains fold K or every fold in turn (``{work-dir}/fold_{k}``); each fold's YOLO export
(``python -m data_prep export yolo``) is made first when WORK holds another. Extra ``key=value`` arguments go to
ultralytics (checked against its defaults). Weights land in ``{work-dir}/weights/best.pt``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_prep.constants import REPO_ROOT, default_work_dir
from gating.yolo_train import parse_overrides, train_detector, train_detector_folds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=None, help="WORK folder (default $GITRACT_WORK or ./work)")
    p.add_argument("--fold", default="0", help="fold K, or 'all' (every fold in turn); its export is made first")
    p.add_argument("--step", type=int, default=1, help="export every N-th slice of a case-day (default 1)")
    p.add_argument("--data", type=Path, default=None, help="data.yaml to use instead of WORK's export")
    p.add_argument("--model", default="yolov8n.yaml", help="model YAML (never a .pt name)")
    p.add_argument("--weights", type=Path, default=None, help="local pretrained .pt (optional)")
    p.add_argument("--imgsz", type=int, default=384)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu, 0, 0,1 (default: CUDA when available)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on GPU")
    p.add_argument("--work-dir", type=Path, default=None, help="run folder (default work_dirs/yolo_{model}/fold_K)")
    p.add_argument("--resume", action="store_true", help="continue {work-dir}/weights/last.pt")
    p.add_argument("--overwrite", action="store_true", help="train again into a folder holding a finished run")
    p.add_argument("overrides", nargs="*", help="extra ultralytics arguments as key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        train_args = dict(
            model=args.model,
            weights=args.weights,
            imgsz=args.imgsz,
            epochs=args.epochs,
            batch=args.batch,
            device=args.device,
            workers=args.workers,
            seed=args.seed,
            amp=not args.no_amp,
            resume=args.resume,
            overwrite=args.overwrite,
            overrides=parse_overrides(args.overrides),
        )
        if args.data is not None:
            work_dir = args.work_dir or REPO_ROOT / "work_dirs" / f"yolo_{Path(args.model).stem}" / "data"
            best = [train_detector(args.data, work_dir, **train_args)]
        else:
            work = args.work or default_work_dir()
            best = train_detector_folds(work, args.fold, args.work_dir, step=args.step, **train_args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        logging.getLogger("train_yolo").error("%s", e)
        return 2
    for b in best:
        logging.getLogger("train_yolo").info("best weights: %s", b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
