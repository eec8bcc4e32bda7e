"""Command line of the data stage: ``python -m data_prep {synth,prepare,splits,export,plan} ...``.

Examples::

    python -m data_prep synth --out demo_data --cases 6 --seed 0
    python -m data_prep prepare --data-root demo_data --out work --workers 2
    python -m data_prep prepare --data-root Dataset003_Liver --out work_liver   # nnU-Net raw (detected)
    python -m data_prep prepare --data-root tiffs --out work_k --format slices --spacing 0.05,0.05,0.05 \
        --classes vessel --label-kind exclusive
    python -m data_prep splits --work work --seed 42            # no-op when prepare made them already
    python -m data_prep export classifier --work work
    python -m data_prep export yolo --work work --fold 0
    python -m data_prep plan --work work --gpu-memory 24       # fingerprint + configs in mmcfg/generated/{dataset}/

The WORK folder comes from ``--out`` / ``--work``, else ``$GITRACT_WORK``, else ``work/`` under the repository.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep.constants import (
    DEFAULT_CHANNELS,
    DEFAULT_FAULTY_CASE_DAYS,
    DEFAULT_FOLDS,
    DEFAULT_SEED,
    DEFAULT_STRIDE,
    DEFAULT_TAIL,
    WORK_ENV,
    default_work_dir,
)
from data_prep.dataset import FORMATS, LABEL_KINDS

EXPORT_KINDS = ("classifier", "boxes", "yolo", "3d")
#: ``prepare`` flags that only the volume formats (nnunet, dicom, slices) use: (flag, attribute).
VOLUME_FLAGS = (
    ("--slice-axis", "slice_axis"),
    ("--group-by", "group_by"),
    ("--spacing", "spacing"),
    ("--classes", "classes"),
    ("--label-kind", "label_kind"),
)


def _work(value: str | None) -> Path:
    return Path(value) if value else default_work_dir()


SPLIT_DEFAULTS = {
    "folds": DEFAULT_FOLDS,
    "seed": DEFAULT_SEED,
    "split_method": "group",
    "tail": DEFAULT_TAIL,
    "tail_before": 0,
    "faulty": list(DEFAULT_FAULTY_CASE_DAYS),
}


def _add_split_options(p: argparse.ArgumentParser, defaults: dict | None) -> None:
    """Split options; with ``defaults=None`` they default to None (filled in later from the WORK's settings)."""
    d = defaults or dict.fromkeys(SPLIT_DEFAULTS)
    g = p.add_argument_group("splits")
    g.add_argument("--folds", type=int, default=d["folds"], help=f"number of folds (default {SPLIT_DEFAULTS['folds']})")
    g.add_argument("--seed", type=int, default=d["seed"], help=f"seed of the case order (default {DEFAULT_SEED})")
    g.add_argument(
        "--split-method",
        choices=("group", "stratified"),
        default=d["split_method"],
        help="GroupKFold by case, or StratifiedGroupKFold on 'slice has any mask' (default group)",
    )
    g.add_argument(
        "--tail", type=int, default=d["tail"], help=f"notail: slices after the last annotated one ({DEFAULT_TAIL})"
    )
    g.add_argument(
        "--tail-before", type=int, default=d["tail_before"], help="notail: slices before the first annotated one"
    )
    g.add_argument(
        "--faulty",
        nargs="*",
        default=d["faulty"],
        metavar="CASE_DAY",
        help=f"case-days (volume keys) dropped from every training variant (default: Kaggle layout "
        f"{' '.join(DEFAULT_FAULTY_CASE_DAYS)}, other formats none; give the flag alone to keep all)",
    )


def _split_kwargs(a: argparse.Namespace) -> dict:
    return {
        "n_folds": a.folds,
        "seed": a.seed,
        "tail": a.tail,
        "tail_before": a.tail_before,
        "faulty_case_days": a.faulty,
    }


def _spacing(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected three positive numbers SZ,SY,SX (mm), got {text!r}")
    return values  # type: ignore[return-value]


def _classes(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected class names a,b,c, got {text!r}")
    return names


def _reader_options(a: argparse.Namespace) -> dict:
    """The reader options of ``prepare`` (only those given, so that the recorded arguments stay minimal)."""
    options = {"spacing": a.spacing, "classes": a.classes, "label_kind": a.label_kind}
    return {k: v for k, v in options.items() if v is not None}


def _cmd_prepare(a: argparse.Namespace) -> None:
    from data_prep.readers import detect_format  # noqa: PLC0415

    fmt = a.format or detect_format(a.data_root)
    log = logging.getLogger("data_prep")
    if a.format is None:
        log.info("%s: detected format %s", a.data_root, fmt)
    if fmt == "kaggle":
        given = [flag for flag, attr in VOLUME_FLAGS if getattr(a, attr) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: not used by the Kaggle layout (they apply to nnunet, dicom, slices)")
        from data_prep.prepare import prepare  # noqa: PLC0415

        if a.faulty is None:
            a.faulty = list(DEFAULT_FAULTY_CASE_DAYS)
        state = prepare(
            a.data_root,
            _work(a.out),
            stride=a.stride,
            channels=a.channels,
            workers=a.workers,
            overwrite=a.overwrite,
            strict=a.strict,
            progress=True,
            split=a.split,
            split_method=a.split_method,
            **_split_kwargs(a),
        )
    else:
        if a.strict:
            raise ValueError("--strict applies to the Kaggle layout only (the volume formats are always strict)")
        from data_prep.prepare_volumes import prepare_volumes  # noqa: PLC0415

        if a.faulty is None:
            a.faulty = []
        state = prepare_volumes(
            fmt,
            a.data_root,
            _work(a.out),
            split=a.split,
            options=_reader_options(a),
            slice_axis=a.slice_axis,
            group_by=a.group_by,
            stride=a.stride,
            channels=a.channels,
            workers=a.workers,
            overwrite=a.overwrite,
            progress=True,
            split_method=a.split_method,
            **_split_kwargs(a),
        )
    log.info(
        "WORK %s (%s): %s slices, %s volumes, labels: %s",
        _work(a.out).resolve(),
        fmt,
        state.get("n_slices"),
        state.get("n_case_days"),
        state.get("labels"),
    )


def _cmd_splits(a: argparse.Namespace) -> None:
    from data_prep.splits import write_splits  # noqa: PLC0415
    from data_prep.work import read_dataset, read_manifest, read_splits  # noqa: PLC0415

    work = _work(a.work)
    manifest = read_manifest(work)
    # options not given default to the WORK's current splits (so a bare `splits` checks them), else the defaults
    current = dict(SPLIT_DEFAULTS)
    if read_dataset(work).format != "kaggle":
        current["faulty"] = []  # the Kaggle fault list names Kaggle case-days
    try:
        old = read_splits(work)
        current.update(
            folds=old["n_folds"], seed=old["seed"], tail=old["tail"], tail_before=old["tail_before"],
            faulty=old["faulty_case_days"], split_method="group" if old["method"] == "group" else "stratified",
        )  # fmt: skip
    except FileNotFoundError:
        pass
    for key, value in current.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    write_splits(work, manifest, method=a.split_method, overwrite=a.overwrite, **_split_kwargs(a))
    print((work / "splits" / "report.md").read_text(encoding="utf-8"))


def _cmd_export(a: argparse.Namespace) -> None:
    from data_prep import exports  # noqa: PLC0415

    work = _work(a.work)
    if a.kind == "classifier":
        paths = [exports.export_classifier(work, overwrite=a.overwrite)]
    elif a.kind == "boxes":
        paths = [exports.export_boxes(work, overwrite=a.overwrite, progress=True, workers=a.workers)]
    elif a.kind == "yolo":
        paths = [exports.export_yolo(work, fold=a.fold or 0, overwrite=a.overwrite, step=a.step, progress=True)]
    else:
        paths = exports.export_3d(work, fold=a.fold, overwrite=a.overwrite, z_spacing=a.z_spacing)
    for p in paths:
        print(p)


def _cmd_plan(a: argparse.Namespace) -> None:
    from data_prep.plan import run_plan  # noqa: PLC0415

    work = _work(a.work)
    plan = run_plan(
        work,
        out=a.out,
        gpu_memory_gb=a.gpu_memory,
        models=a.models,
        workers=a.workers,
        overwrite=a.overwrite,
        progress=True,
    )
    log = logging.getLogger("data_prep")
    for name, d in plan["decisions"].items():
        log.info("%s = %s: %s", name, d["value"], d["why"])
    for path in plan["files"]:
        print(path)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m data_prep`` argument parser (sub-commands synth, prepare, splits, export, plan)."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="The data stage: synthetic data, WORK preparation, cross-validation splits, exports.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{synth,prepare,splits,export,plan}")

    from data_prep import synth  # noqa: PLC0415

    synth.register(sub)

    p = sub.add_parser(
        "prepare", help="read a data root of any format into a WORK folder (volumes, masks, manifest, splits)"
    )
    p.add_argument(
        "--data-root",
        required=True,
        help="the input: a Kaggle tree (train/, train.csv, test/), an nnU-Net raw dataset (dataset.json, imagesTr/), "
        "DICOM series, or folders of 2D slices (docs/datasets.md)",
    )
    p.add_argument("--out", default=None, help=f"WORK folder (default ${WORK_ENV}, else work/ in the repository)")
    p.add_argument("--format", choices=FORMATS, default=None, help="input format (default: detected from the folder)")
    p.add_argument("--split", choices=("train", "test"), default="train", help="which part to read (test: no labels)")
    p.add_argument("--stride", type=int, default=DEFAULT_STRIDE, help="2.5D stride recorded for loaders")
    p.add_argument("--channels", type=int, default=DEFAULT_CHANNELS, help="2.5D channels (odd) recorded for loaders")
    p.add_argument("--workers", type=int, default=1, help="processes, one volume (case-day) each (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a WORK prepared with other arguments")
    p.add_argument("--strict", action="store_true", help="kaggle: label/scan mismatches and slice gaps are errors")
    v = p.add_argument_group("volume formats (nnunet, dicom, slices)")
    v.add_argument(
        "--slice-axis",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="array axis (z, y, x order) whose slices the 2.5D models see (default: the acquisition's slice axis)",
    )
    v.add_argument(
        "--group-by",
        default=None,
        metavar="REGEX|CSV",
        help="patient groups for the splits: a regex on the volume key (its first group) or a CSV key,group "
        "(default: the format's: nnU-Net case id, DICOM PatientID, the slice folder)",
    )
    v.add_argument("--spacing", type=_spacing, default=None, metavar="SZ,SY,SX", help="slices: spacing in mm")
    v.add_argument("--classes", type=_classes, default=None, metavar="A,B,C", help="slices/dicom: class names")
    v.add_argument("--label-kind", choices=LABEL_KINDS, default=None, help="slices/dicom: overlapping or exclusive")
    _add_split_options(p, {**SPLIT_DEFAULTS, "faulty": None})
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("splits", help="make (once) or check the folds and variants of a prepared WORK")
    p.add_argument("--work", default=None, help=f"WORK folder (default ${WORK_ENV}, else work/)")
    p.add_argument("--overwrite", action="store_true", help="replace splits made with other settings")
    _add_split_options(p, None)
    p.set_defaults(func=_cmd_splits)

    p = sub.add_parser("export", help="exports for the other stages")
    p.add_argument("kind", choices=EXPORT_KINDS)
    p.add_argument("--work", default=None, help=f"WORK folder (default ${WORK_ENV}, else work/)")
    p.add_argument("--fold", type=int, default=None, help="fold (yolo: default 0; 3d: default every fold)")
    p.add_argument("--overwrite", action="store_true", help="replace an export that would change")
    p.add_argument("--step", type=int, default=1, help="yolo: keep every N-th slice of a case-day")
    p.add_argument("--workers", type=int, default=1, help="boxes: processes (default %(default)s)")
    p.add_argument("--z-spacing", type=float, default=3.0, help="3d: slice thickness in mm (default %(default)s)")
    p.set_defaults(func=_cmd_export)

    from data_prep.plan import DEFAULT_GPU_MEMORY_GB, FIRST_PLACE_MODELS  # noqa: PLC0415

    p = sub.add_parser(
        "plan",
        help="fingerprint a prepared WORK and write the configs for it (WORK/plan/, mmcfg/generated/{dataset}/)",
        description="Fingerprint the WORK (WORK/plan/fingerprint.json, .md), decide every setting from it "
        "(WORK/plan/plan.json, .md: value and why) and write one config per model that inherits its shipped base, "
        "an ensemble spec and the commands (docs/plan.md).",
    )
    p.add_argument("--work", default=None, help=f"WORK folder (default ${WORK_ENV}, else work/)")
    p.add_argument(
        "--out", default=None, help="folder of the generated configs (default mmcfg/generated/{dataset name})"
    )
    p.add_argument(
        "--gpu-memory",
        type=float,
        default=DEFAULT_GPU_MEMORY_GB,
        metavar="GB",
        help="memory of one training GPU; batch sizes and 3D patches fit it (default %(default)s)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="CONFIG",
        help="base configs to plan for (default: the 1st place's set: " + ", ".join(FIRST_PLACE_MODELS) + ")",
    )
    p.add_argument("--workers", type=int, default=1, help="processes for the fingerprint (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier plan and its generated configs")
    p.set_defaults(func=_cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 on bad input, with the message on stderr)."""
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if a.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        rc = a.func(a)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"python -m data_prep {a.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
