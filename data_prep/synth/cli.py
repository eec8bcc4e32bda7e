"""CLI: the ``synth`` subcommand of ``python -m data_prep`` (:func:`register`) and ``python -m data_prep.synth``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.constants import DEFAULT_SEED, REAL_DEPTHS
from data_prep.synth.labels import render_from_labels
from data_prep.synth.nnunet import synthesize_nnunet
from data_prep.synth.shapes import synthesize


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH like 266x266, got {text!r}") from None


def _cli(args: argparse.Namespace) -> int:
    """Entry point of ``python -m data_prep synth``; bad option combinations exit 2 with argparse's usage."""
    fail = args.synth_parser.error
    if args.labels is not None or args.manifest is not None:
        if args.labels is None or args.manifest is None:
            fail("--labels and --manifest go together (label-driven mode)")
        if args.cases is not None or args.test_cases or args.slices or args.sizes:
            fail("--cases/--test-cases/--slices/--sizes do not apply with --labels")
        render_from_labels(
            args.out,
            args.labels,
            args.manifest,
            case_days=args.case_days,
            seed=args.seed,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=True,
        )
    else:
        if args.cases is None:
            fail("give --cases N (shape model) or --labels and --manifest (label-driven)")
        if args.case_days:
            fail("--case-days applies only with --labels and --manifest")
        synthesize(
            args.out,
            args.cases,
            seed=args.seed,
            test_cases=args.test_cases,
            slices=args.slices,
            sizes=args.sizes,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=True,
        )
    return 0


def _parse_triple(text: str) -> tuple[float, float, float]:
    try:
        a, b, c = (float(v) for v in text.replace("x", ",").split(","))
        return a, b, c
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 48,128,128, got {text!r}") from None


def _cli_nnunet(args: argparse.Namespace) -> int:
    synthesize_nnunet(
        args.out,
        args.cases,
        test_cases=args.test_cases,
        shape=tuple(int(v) for v in args.shape),
        spacing=args.spacing,
        regions=args.regions,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    return 0


def _register_nnunet(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth-nnunet",
        help="write a synthetic abdominal-CT dataset in the nnU-Net v2 raw format",
        description=(
            "Write a synthetic CT dataset in the nnU-Net v2 raw format (dataset.json, imagesTr/, labelsTr/, "
            "imagesTs/ and labelsTs/ with --test-cases): liver, kidney, spleen, pancreas as an exclusive label map; "
            "--regions adds the overlapping region 'organs'."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="dataset folder")
    p.add_argument("--cases", type=int, required=True, help="training cases")
    p.add_argument("--test-cases", type=int, default=0, help="test cases (imagesTs/, truth in labelsTs/)")
    p.add_argument("--shape", type=_parse_triple, default=(48, 128, 128), metavar="D,H,W", help="voxels per volume")
    p.add_argument("--spacing", type=_parse_triple, default=(2.5, 0.8, 0.8), metavar="SZ,SY,SX", help="mm")
    p.add_argument("--regions", action="store_true", help="also declare the overlapping region 'organs'")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.set_defaults(func=_cli_nnunet)
    return p


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``synth`` subcommand (Kaggle layout) and ``synth-nnunet`` (:mod:`data_prep.synth.nnunet`) to an
    argparse ``subparsers`` object; each sets ``func``.

    Returns:
        The subcommand's parser.
    """
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic dataset in the Kaggle layout",
        description=(
            "Write a synthetic dataset in the Kaggle layout (train/ tree + train.csv; with --test-cases a test/ "
            "tree, a header-only sample_submission.csv and test_truth.csv). Shape model: --cases N --seed S. "
            "Label-driven: --labels train.csv --manifest scan_manifest.csv [--case-days ...]."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--cases", type=int, default=None, help="training cases (1-3 days each)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (same seed, same files)")
    p.add_argument("--test-cases", type=int, default=0, help="test cases (test/ tree, test_truth.csv)")
    p.add_argument("--slices", type=int, default=None, help=f"slices per case-day (default {REAL_DEPTHS})")
    p.add_argument("--sizes", type=_parse_size, nargs="+", default=None, metavar="WxH", help="image sizes to draw")
    p.add_argument("--labels", type=Path, default=None, help="train.csv whose masks to render")
    p.add_argument("--manifest", type=Path, default=None, help="scan manifest (size, spacing per slice)")
    p.add_argument("--case-days", nargs="+", default=None, metavar="CASE_DAY", help="render only these")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.set_defaults(func=_cli, synth_parser=p)
    _register_nnunet(subparsers)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m data_prep.synth ...`` (same options as ``python -m data_prep synth``)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.synth")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["synth", *(argv if argv is not None else __import__("sys").argv[1:])])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)
