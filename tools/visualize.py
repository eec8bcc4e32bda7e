"""Overlays of any case-day (volume): the image, the truth and a prediction, any number of classes (legend).

Examples:
    python tools/visualize.py --data-root DATA --split train --case-day case2_day1 --truth DATA/train.csv \
        --pred submission.csv --out pictures/ --slices 6
    python tools/visualize.py --data-root DATA --split test --case-day case9_day0 --probs work_dirs/m/fold_0/test
    python tools/visualize.py --work WORK --case-day liver_007 --pred OUT/ --out pictures/

With ``--data-root`` (a Kaggle tree) the truth is ``--truth`` (an RLE table); with ``--work`` (a prepared WORK of
any format) the truth is the WORK's mask and ``--pred`` a folder of predictions in the input's format
(``tools/infer.py --work``) or, for a Kaggle WORK, a submission. Writes ``{out}/{case_day}_montage.png`` (every
few slices, prediction coloured) and ``{out}/{slice id}.png`` (image | truth | prediction) for the slices with the
most foreground.
"""

from __future__ import annotations

import argparse
import logging
import sys

from evaluation.pictures import visualize_case_day, visualize_volume

logger = logging.getLogger("visualize")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-root", help="a Kaggle tree")
    where.add_argument("--work", help="a prepared WORK folder of any format")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--case-day", required=True, help="e.g. case2_day1")
    p.add_argument("--out", default="pictures")
    p.add_argument("--truth", help="--data-root: train.csv (or test_truth.csv) for the truth panel")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pred", help="a submission.csv, or (--work) a folder of predictions in the input's format")
    src.add_argument("--probs", help="a probability folder (meta.json + {case_day}.npy)")
    p.add_argument("--threshold", type=float, default=0.5, help="for --probs")
    p.add_argument("--slices", type=int, default=6, help="overlays of the slices with the most foreground")
    p.add_argument("--per-class", action="store_true", help="--slices slices with the most of each class")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if a.work:
            files = visualize_volume(a.work, a.case_day, a.out, a.pred, a.probs, a.threshold, a.slices, a.per_class)
        else:
            files = visualize_case_day(
                a.data_root, a.split, a.case_day, a.out, a.truth, a.pred, a.probs, a.threshold, a.slices, a.per_class
            )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in files:
        logger.info("wrote %s", f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
