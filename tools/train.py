"""Train any model of the project: a 2.5D segmenter, the slice classifier or a 3D segmenter (mmengine Runner).

    python tools/train.py CONFIG [--fold K|all] [--split-variant V] [--work WORK] [--work-dir DIR] [--resume]
        [--overwrite] [--amp] [--device cpu|cuda] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

``--fold all`` trains every fold of the WORK's splits in turn. Work dirs default to ``work_dirs/{config}/fold_{k}/``
(with ``--work-dir DIR`` and ``--fold all``: ``DIR/fold_{k}``): checkpoints (``best.pth`` by the validation score),
logs, ``training_curve.png``, ``done.json``. Multi-GPU / multi-node: ``tools/dist_train.sh CONFIG GPUS [args]``.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file under mmcfg/ (any model kind)")
    p.add_argument("--fold", default="0", help="fold K of the WORK's splits, or 'all' (every fold in turn)")
    p.add_argument("--split-variant", choices=("all", "notail", "noanno"), help="training side (default: config)")
    p.add_argument("--work", help="data_prep WORK folder (default: config's `work`, $GITRACT_WORK, work/)")
    p.add_argument("--work-dir", help="output folder (default work_dirs/{config}/fold_{k})")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the work dir")
    p.add_argument("--overwrite", action="store_true", help="start over in a work dir that has checkpoints")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision")
    p.add_argument("--device", choices=("cpu", "cuda"), help="train on this device (default: CUDA when present)")
    p.add_argument(
        "--cfg-options",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="override config keys (mmengine style); may be given more than once",
    )
    p.add_argument("--launcher", choices=("none", "pytorch", "slurm"), default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))

    from training.config import parse_cfg_options
    from training.train import SetupError, plan_runs, select_device, train_one

    try:  # every check runs before the first fold trains
        select_device(args.device)
        cfgs = plan_runs(
            args.config,
            fold=args.fold,
            work=args.work,
            split_variant=args.split_variant,
            work_dir=args.work_dir,
            cfg_options=parse_cfg_options(args.cfg_options),
            amp=args.amp,
            resume=args.resume,
            overwrite=args.overwrite,
            launcher=args.launcher,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from common.engine import teardown_distributed

    try:
        for cfg in cfgs:
            try:
                print(train_one(cfg))
            except SetupError as e:  # bad data, config or checkpoint found before the first iteration
                print(f"error: {e}", file=sys.stderr)
                return 2
    finally:
        teardown_distributed()
    return 0


if __name__ == "__main__":
    from common.engine import exit_process

    exit_process(main())  # under torchrun: no interpreter teardown after the run (see its docstring)
