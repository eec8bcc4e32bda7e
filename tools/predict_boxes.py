"""Crop boxes of a trained YOLO detector for every slice of a WORK folder.

    python tools/predict_boxes.py work_dirs/yolo_yolov8n/fold_0/weights/best.pt --work WORK --out preds/boxes.csv

Writes ``boxes.csv`` (``id, x0, y0, x1, y1, fallback``; docs/contracts.md): one box per slice, smoothed over
``±--smooth-k`` slices, expanded by the margins, the whole image where nothing was found.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_prep.constants import default_work_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", type=Path, help="detector weights (best.pt of tools/train_yolo.py)")
    p.add_argument("--work", type=Path, default=None, help="WORK folder (default $GITRACT_WORK or ./work)")
    p.add_argument("--out", type=Path, required=True, help="boxes.csv to write")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 (default cpu)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--smooth-k", type=int, default=2)
    p.add_argument("--margin-frac", type=float, default=0.1)
    p.add_argument("--margin-px", type=int, default=4)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("predict_boxes")

    from gating.crop import Detector, predict_boxes_work

    if args.out.exists() and not args.overwrite:
        log.error("%s exists; pass --overwrite to replace it", args.out)
        return 2
    try:
        det = Detector.load(
            args.weights,
            args.device,
            conf=args.conf,
            smooth_k=args.smooth_k,
            margin_frac=args.margin_frac,
            margin_px=args.margin_px,
        )
        totals = predict_boxes_work(det, args.work or default_work_dir(), args.out, args.batch_size, progress=True)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    log.info("%s", totals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
