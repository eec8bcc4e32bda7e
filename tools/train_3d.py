"""Train a 3D segmenter (MONAI SegResNet / DynUNet) on whole case-day volumes, one fold or every fold.

    python tools/train_3d.py mmcfg/monai3d/segresnet_1xb2-20k_uwmgi-224x224x80.py --work WORK --fold 0 --amp
    torchrun --nproc_per_node=2 tools/train_3d.py CONFIG --work WORK --fold 0 --launcher pytorch
    python tools/train_3d.py CONFIG --fold all --cfg-options train.batch_size=4 data.num_workers=8

Run folder: ``--work-dir`` or ``work_dirs/{config name}/fold_{K}`` (with ``--fold all``: ``{work-dir}/fold_{K}``
for every fold of splits.json in turn). It receives last.pth, best.pth (by val Dice), log.csv, curve.png and
config.py; ``--resume`` continues from last.pth (model, optimizer, scheduler, iteration).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.constants import REPO_ROOT, default_work_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from mmengine.config import Config, DictAction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="3D config (mmcfg/monai3d/*.py)")
    p.add_argument("--work", type=Path, default=None, help="WORK folder (default $GITRACT_WORK or ./work)")
    p.add_argument("--fold", default="0", help="fold K of splits.json, or 'all' (every fold in turn)")
    p.add_argument("--work-dir", type=Path, default=None, help="run folder (default work_dirs/{config}/fold_K)")
    p.add_argument("--resume", action="store_true", help="continue from {work-dir}/last.pth")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (default: the config's train.amp)")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default=None, help="override config keys a.b=v")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("train_3d")

    from common.engine import is_main_process
    from segmenters.monai3d import read_splits
    from segmenters.monai3d_train import train_3d

    if not args.config.is_file():
        log.error("config not found: %s", args.config)
        return 2
    cfg = Config.fromfile(str(args.config))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.device:
        cfg.merge_from_dict({"train.device": args.device})
    work = args.work or default_work_dir()
    try:
        if args.fold == "all":
            folds = sorted(int(f["fold"]) for f in read_splits(work)["folds"])
        else:
            folds = [int(args.fold)]
    except ValueError as e:
        log.error("--fold must be an integer or 'all' (%s)", e)
        return 2
    except FileNotFoundError as e:
        log.error("%s", e)
        return 2
    for k in folds:
        if args.work_dir is None:
            work_dir = REPO_ROOT / "work_dirs" / args.config.stem / f"fold_{k}"
        else:
            work_dir = args.work_dir / f"fold_{k}" if args.fold == "all" else args.work_dir
        try:
            result = train_3d(
                cfg.to_dict(),
                work=work,
                fold=k,
                work_dir=work_dir,
                resume=args.resume,
                amp=True if args.amp else None,
                launcher=args.launcher,
                progress=sys.stderr.isatty(),
                config_text=cfg.pretty_text,
            )
        except (FileNotFoundError, FileExistsError, ValueError) as e:
            log.error("%s", e)
            return 2
        if is_main_process():
            log.info(
                "fold %d done at iteration %d; best val Dice %.4f at iteration %d; run folder %s",
                k,
                result["iter"],
                result["best_score"],
                result["best_iter"],
                work_dir,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
