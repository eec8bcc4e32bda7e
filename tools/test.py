"""Evaluate a 2.5D segmenter and write its probability maps (docs/contracts.md, "Probability maps"):
``python tools/test.py CONFIG CHECKPOINT [--fold K] [--work WORK] [--out DIR] [--tta hflip,...] [--planes axial,...]
[--device cuda] [--resume]``.

With ``--fold K``: the fold's val case-days (out-of-fold input of the ensembles), default out
``work_dirs/{config}/fold_{k}/oof``; without: every case-day of WORK (test time), default ``work_dirs/{config}/test``.
The maps have one channel per class of WORK/dataset.json, listed in ``meta.json`` ``classes``. The model runs on the
inference engine's device path (``inference/engine.py``); ``--planes coronal`` writes the maps of the model applied
along another axis (one folder per plane: the ensemble search weighs them as models). ``--resume`` continues a
folder after a kill (the case-days written are kept; the result equals an uninterrupted run's).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write float16 probability maps per case-day and score them.")
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--fold", help="0..4: that fold's val case-days; omitted: every case-day of WORK")
    p.add_argument("--work", help="data_prep WORK folder (default $GITRACT_WORK, else work/)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--tta", default="hflip", help="comma-separated: hflip,vflip,rot90,rot180,rot270; 'none' for no TTA")
    p.add_argument("--planes", default="axial", help="comma-separated: axial,coronal,sagittal (maps averaged)")
    p.add_argument("--boxes", help="crop-box CSV (id, x0, y0, x1, y1)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when a GPU is visible)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue a folder of the same settings after a kill")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    tta = () if args.tta.strip().lower() in ("", "none") else tuple(t.strip() for t in args.tta.split(","))

    from common.engine import default_device
    from inference.predict import predict_work
    from training.checks import CheckpointMismatchError
    from training.config import parse_cfg_options

    try:
        summary = predict_work(
            args.config,
            args.checkpoint,
            work=args.work,
            fold=args.fold,
            out=args.out,
            tta=tta,
            device=args.device or default_device(),
            batch_size=args.batch_size,
            boxes=args.boxes,
            overwrite=args.overwrite,
            cfg_options=parse_cfg_options(args.cfg_options),
            progress=True,
            planes=tuple(t.strip() for t in args.planes.split(",") if t.strip()),
            resume=args.resume,
        )
    except (FileNotFoundError, FileExistsError, CheckpointMismatchError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
