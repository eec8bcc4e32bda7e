"""Train the slice classifier (timm, 3 presence logits) on one fold or on all data.

    python tools/train_cls.py mmcfg/gating/cls_efficientnet-b0_1xb32-8k_uwmgi-256x256.py --work WORK --fold 0
    torchrun --nproc_per_node=2 tools/train_cls.py CONFIG --work WORK --fold 0 --launcher pytorch
    python tools/train_cls.py CONFIG --fold all --cfg-options schedule.max_iters=2000 data.batch_size=16

Run folder: ``--work-dir`` or ``work_dirs/{config name}/fold_{K}``; ``--resume`` continues its ``last.pth``.
Out-of-fold probabilities land in ``{run}/oof/cls_probs.csv``.
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
    p.add_argument("config", type=Path, help="classifier config (mmcfg/gating/cls_*.py)")
    p.add_argument("--work", type=Path, default=None, help="WORK folder (default $GITRACT_WORK or ./work)")
    p.add_argument("--fold", default="0", help="fold K, or 'all' (no validation)")
    p.add_argument("--work-dir", type=Path, default=None, help="run folder (default work_dirs/{config}/fold_K)")
    p.add_argument("--resume", action="store_true", help="continue from {work-dir}/last.pth")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default=None, help="override config keys a.b=v")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("train_cls")

    from common.engine import is_main_process
    from gating.cls_train import train_classifier

    if not args.config.is_file():
        log.error("config not found: %s", args.config)
        return 2
    cfg = Config.fromfile(str(args.config))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    work_dir = args.work_dir or REPO_ROOT / "work_dirs" / args.config.stem / f"fold_{args.fold}"
    try:
        result = train_classifier(
            cfg.to_dict(),
            work=args.work or default_work_dir(),
            work_dir=work_dir,
            fold=args.fold,
            resume=args.resume,
            amp=args.amp,
            launcher=args.launcher,
            device=args.device,
            config_text=cfg.pretty_text,
            progress=sys.stderr.isatty(),
        )
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    if is_main_process():
        log.info(
            "done at iteration %d; best val mean AUC %.4f at iteration %d; run folder %s",
            result["iteration"],
            result["best_score"],
            result["best_iteration"],
            work_dir,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
