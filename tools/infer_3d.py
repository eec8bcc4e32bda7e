"""Predict probability maps with a trained 3D segmenter (docs/contracts.md "Probability maps").

    python tools/infer_3d.py CONFIG work_dirs/CONFIG/fold_0/best.pth --work WORK --fold 0     # OOF of fold 0
    python tools/infer_3d.py CONFIG CHECKPOINT --work TEST_WORK --out preds/3d/test --tta flip

With ``--fold K`` the val case-days of fold K are predicted into ``{checkpoint dir}/oof/`` (default); without it
every case-day of the WORK manifest goes to ``{checkpoint dir}/test/``. Each case-day becomes a float16
``(D, C, H, W)`` ``.npy`` at its original size (``C``: the classes of WORK/dataset.json), plus ``meta.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_prep.constants import default_work_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="3D config (mmcfg/monai3d/*.py)")
    p.add_argument("checkpoint", type=Path, help="best.pth (the best by seg3d/score) or iter_N.pth of a 3D run")
    p.add_argument("--work", type=Path, default=None, help="WORK folder (default $GITRACT_WORK or ./work)")
    p.add_argument("--fold", type=int, default=None, help="predict the val case-days of fold K (out-of-fold)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default {checkpoint dir}/oof or /test)")
    p.add_argument("--tta", nargs="*", default=None, help="TTA names: flip (default: the config's), hflip, dflip, ...")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    p.add_argument("--overwrite", action="store_true", help="replace maps already in --out")
    p.add_argument("--resume", action="store_true", help="continue a folder of the same settings after a kill")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("infer_3d")

    import torch

    from inference.predict import predict_work_3d

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        summary = predict_work_3d(
            args.config,
            args.checkpoint,
            work=args.work or default_work_dir(),
            fold=args.fold,
            out=args.out,
            tta=args.tta,
            device=device,
            overwrite=args.overwrite,
            progress=sys.stderr.isatty(),
            resume=args.resume,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        log.error("%s", e)
        return 2
    out = summary["out"]
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
