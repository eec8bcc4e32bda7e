"""Command line of the ensembles stage.

python -m ensembles score --truth train.csv --pred submission.csv --data-root DIR [--split train|test]
    [--empty one|skip] [--hausdorff per_class|union] [--tolerance MM] [--no-surface] [--workers N] [--out score.json]
python -m ensembles score --truth LABELS_DIR --pred PRED_DIR --work WORK [--out score.json]
    (folders of label volumes in WORK's input format, matched by file name; adds the 3D Dice per volume and class)
python -m ensembles search --oof [NAME=]DIR [...] (--truth train.csv | --work WORK) --spec SPEC --out tuned.yaml
    [--data-root DIR | --manifest CSV] [--objective competition|dsc|nsd] [--tolerance MM] [--workers N]

score prints one table (and --out writes it as JSON, Markdown and CSV): per class the competition score, the
per-slice Dice, and in mm from the voxel spacing DSC, NSD at the tolerance, HD95 and ASSD (mean ± sd over
case-days), then all classes, then one row per case-day. --no-surface leaves the surface metrics out.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ensembles.search import DEFAULT_CACHE_MB
from evaluation.metric import DEFAULT_EMPTY, DEFAULT_HAUSDORFF, EMPTY_CONVENTIONS, HAUSDORFF_VARIANTS, OBJECTIVES


def _metric_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--empty",
        choices=EMPTY_CONVENTIONS,
        default=DEFAULT_EMPTY,
        help=f"both-empty convention (default {DEFAULT_EMPTY}: Dice 1 / distance 0; skip: left out)",
    )
    p.add_argument(
        "--hausdorff",
        choices=HAUSDORFF_VARIANTS,
        default=DEFAULT_HAUSDORFF,
        help=f"3D Hausdorff per class or on the classes OR-ed (default {DEFAULT_HAUSDORFF})",
    )
    p.add_argument("--workers", type=int, default=0, help="processes (0: this one)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="MM",
        help="NSD tolerance in mm (default: one voxel of each volume, its largest side; 3 mm for the Kaggle layout)",
    )


MANIFEST_HELP = "instead of --data-root: a CSV with id,width,height (and px_h,px_w in mm for the surface metrics)"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m ensembles", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-q", "--quiet", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score a submission against labels")
    s.add_argument(
        "--truth",
        required=True,
        help="labels: a CSV (id,class,segmentation, e.g. train.csv) or a folder of label volumes (e.g. labelsTr)",
    )
    s.add_argument("--pred", required=True, help="a submission CSV (id,class,predicted) or a folder of predictions")
    s.add_argument("--work", default=None, help="folders: the WORK folder of the volumes (classes, geometry)")
    s.add_argument("--data-root", default=None, help="scan tree root: image sizes and slice order")
    s.add_argument("--split", default="train", help="sub-folder of --data-root (train or test)")
    s.add_argument("--manifest", default=None, help=MANIFEST_HELP)
    s.add_argument("--out", default=None, help="JSON to write (a Markdown table goes beside it, .md)")
    s.add_argument("--per-case-day", type=int, default=20, help="case-day rows to print (all go to --out)")
    s.add_argument(
        "--no-surface",
        action="store_true",
        help="leave out DSC, NSD, HD95 and ASSD (in mm; they need each volume's spacing): the competition score only",
    )
    _metric_args(s)
    r = sub.add_parser("search", help="search weights, thresholds and post-processing on OOF predictions")
    r.add_argument("--oof", nargs="+", required=True, help="probability folders, NAME=DIR or DIR (matched by config)")
    r.add_argument("--truth", default=None, help="labels (train.csv); or --work")
    r.add_argument("--work", default=None, help="instead of --truth: the WORK folder the maps were predicted from")
    r.add_argument("--spec", required=True, help="the ensemble spec to start from")
    r.add_argument("--out", required=True, help="tuned spec YAML (report: {stem}_report.md/.csv)")
    r.add_argument("--data-root", default=None, help="scan tree (image sizes); default: from the .npy shapes")
    r.add_argument("--split", default="train")
    r.add_argument("--manifest", default=None, help=MANIFEST_HELP)
    r.add_argument("--overwrite", action="store_true")
    r.add_argument(
        "--steps",
        default="thresholds,gate,weights,floor,min_component",
        help="comma-separated search steps, in this order (default: all)",
    )
    r.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="competition",
        help="what the search maximises: the competition score (default), the mean 3D DSC or the mean NSD at "
        "--tolerance (these two need each case-day's voxel spacing)",
    )
    r.add_argument(
        "--cache-mb",
        type=float,
        default=None,
        help="memory for what candidates share (decoded truth, fused maps), all workers together (default "
        f"{DEFAULT_CACHE_MB:.0f}); what does not fit is recomputed when needed",
    )
    _metric_args(r)
    return ap


def _score(a: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from evaluation.scoring import PIXEL_COLUMNS, report_markdown, score_files, score_folders, write_report

    progress = lambda it, total: tqdm(it, total=total, desc="case-days", disable=a.quiet)  # noqa: E731
    folders = [Path(p).is_dir() for p in (a.truth, a.pred)]
    if any(folders):
        if not all(folders):
            raise ValueError(
                f"--truth {a.truth} and --pred {a.pred}: both must be CSV files or both folders of label volumes"
            )
        if a.work is None:
            raise ValueError("scoring folders of label volumes needs --work WORK (their classes and geometry)")
        from data_prep.work import check_work, read_dataset

        info = read_dataset(check_work(a.work, need_masks=False, need_splits=False))
        res = score_folders(
            a.truth,
            a.pred,
            info,
            a.empty,
            a.hausdorff,
            a.workers,
            progress=progress,
            surface=not a.no_surface,
            tolerance=a.tolerance,
        )
    else:
        surface = not a.no_surface
        if surface and a.manifest and not a.data_root:
            import pandas as pd

            cols = set(pd.read_csv(a.manifest, nrows=0).columns)
            if not any({h, w} <= cols for h, w in PIXEL_COLUMNS):
                logging.getLogger("ensembles").warning(
                    "%s has no pixel spacing (px_h, px_w in mm): DSC, NSD, HD95 and ASSD are left out", a.manifest
                )
                surface = False
        res = score_files(
            a.truth,
            a.pred,
            a.data_root,
            a.split,
            a.manifest,
            a.empty,
            a.hausdorff,
            a.workers,
            progress=progress,
            surface=surface,
            tolerance=a.tolerance,
        )
    print(
        f"score {res.score:.5f}  dice {res.dice:.5f}  1-hausdorff {res.hausdorff:.5f}  "
        f"(empty={res.empty}, hausdorff={res.hausdorff_variant})"
    )
    print(report_markdown(res, max_cases=a.per_case_day), end="")
    if res.dsc_3d is not None:
        print("3D Dice per volume and class:")
        print(res.dsc_3d.head(a.per_case_day).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if a.out:
        js, md = write_report(res, a.out)
        print(f"wrote {js} and {md}")
    return 0


def _search(a: argparse.Namespace) -> int:
    from ensembles.search import classes_of_items, run_search
    from ensembles.spec import load_spec
    from evaluation.scoring import manifest_for

    spec = load_spec(a.spec, classes=classes_of_items(a.oof))
    manifest = manifest_for(a.data_root, a.split, a.manifest) if (a.data_root or a.manifest) else None
    tuned, before, after = run_search(
        spec,
        a.oof,
        a.truth,
        a.out,
        manifest,
        a.empty,
        a.hausdorff,
        a.workers,
        a.overwrite,
        log=print,
        steps=a.steps.split(","),
        work=a.work,
        objective=a.objective,
        tolerance=a.tolerance,
        **({} if a.cache_mb is None else {"cache_mb": a.cache_mb}),
    )
    print(f"score {before.score:.5f} -> {after.score:.5f}; wrote {a.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if a.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return _score(a) if a.cmd == "score" else _search(a)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
