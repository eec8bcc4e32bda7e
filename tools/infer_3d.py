"""Predict probability maps with a trained 3D segmenter (docs/contracts.md "Probability maps").

    python tools/infer_3d.py CONFIG work_dirs/CONFIG/fold_0/best.pth --work WORK --fold 0     # OOF of fold 0
    python tools/infer_3d.py CONFIG CHECKPOINT --work TEST_WORK --out preds/3d/test --tta flip

With ``--fold K`` the val case-days of fold K are predicted into ``{checkpoint dir}/oof/`` (default); without it
every case-day of the WORK manifest goes to ``{checkpoint dir}/test/``. Each case-day becomes a float16
``(D, 3, H, W)`` ``.npy`` at its original size, plus ``meta.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.constants import default_work_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="3D config (mmcfg/monai3d/*.py)")
    p.add_argument("checkpoint", type=Path, help="best.pth or last.pth of a 3D run")
    p.add_argument("--work", type=Path, default=None, help="WORK folder (default $GITRACT_WORK or ./work)")
    p.add_argument("--fold", type=int, default=None, help="predict the val case-days of fold K (out-of-fold)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default {checkpoint dir}/oof or /test)")
    p.add_argument("--tta", nargs="*", default=None, help="TTA names: flip (default: the config's), hflip, dflip, ...")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    p.add_argument("--overwrite", action="store_true", help="replace maps already in --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("infer_3d")

    import torch

    from segmenters.infer_3d import Segmenter3D, write_prob_maps
    from segmenters.monai3d import fold_case_days, read_splits

    work = args.work or default_work_dir()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        seg = Segmenter3D.load(args.config, args.checkpoint, device)
        case_days = None
        if args.fold is not None:
            case_days = fold_case_days(read_splits(work), args.fold)[1]
        out = args.out or args.checkpoint.parent / ("oof" if args.fold is not None else "test")
        write_prob_maps(
            seg,
            work,
            out,
            case_days=case_days,
            fold=args.fold,
            tta=args.tta,
            overwrite=args.overwrite,
            progress=sys.stderr.isatty(),
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        log.error("%s", e)
        return 2
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
