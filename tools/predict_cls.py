"""Slice presence probabilities of a trained classifier for every slice of a WORK folder (e.g. the test tree).

    python tools/predict_cls.py work_dirs/cls_.../fold_0/best.pth --work WORK_TEST --out preds/cls_fold0/cls_probs.csv \
        [--config mmcfg/gating/cls_....py]

The model is rebuilt from the definition stored in the checkpoint (``meta["slice_classifier"]``, plain data written
by ``tools/train.py``), or from ``--config`` (needed for a checkpoint without one). Writes ``cls_probs.csv`` (``id,
large_bowel, small_bowel, stomach``, docs/contracts.md) atomically; an existing file is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_prep.constants import default_work_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="best.pth / iter_N.pth written by tools/train.py")
    p.add_argument("--config", type=Path, default=None, help="its mmcfg/gating/ config (default: the checkpoint's)")
    p.add_argument("--work", type=Path, default=None, help="WORK folder (default $GITRACT_WORK or ./work)")
    p.add_argument("--out", type=Path, required=True, help="cls_probs.csv to write")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("predict_cls")

    from common.engine import default_device
    from gating.classifier import SliceClassifier, predict_work

    if args.out.exists() and not args.overwrite:
        log.error("%s exists; pass --overwrite to replace it", args.out)
        return 2
    device = args.device or default_device()
    try:
        clf = SliceClassifier.load(args.checkpoint, device, config=args.config)
        df = predict_work(clf, args.work or default_work_dir(), args.out, args.batch_size, progress=True)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    log.info("%d slices -> %s", len(df), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
