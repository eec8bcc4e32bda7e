"""Write probability maps of a trained segmenter for a fold's val case-days or a whole WORK folder
(the library side of ``tools/test.py``), and score them when masks exist.

Output (docs/contracts.md, "Probability maps"): ``{out}/{case_day}.npy`` float16 ``(D, 3, H, W)`` and
``{out}/meta.json``; plus ``{out}/metrics.json`` when the WORK folder has masks.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep.constants import CLASSES, REPO_ROOT, default_work_dir
from segmenters.checks import check_work, parse_folds
from segmenters.configs import config_name

logger = logging.getLogger(__name__)


def default_out_dir(config: str | os.PathLike, fold: int | None) -> Path:
    """``work_dirs/{config}/fold_{k}/oof`` (a fold's val side) or ``work_dirs/{config}/test`` (no fold)."""
    base = REPO_ROOT / "work_dirs" / config_name(config)
    return base / f"fold_{fold}" / "oof" if fold is not None else base / "test"


def case_days_of(work: Path, fold: int | None) -> dict[str, list[str]]:
    """``{case_day: [slice ids in z order]}`` of a fold's val side (``fold``) or of every case-day (None)."""
    man = pd.read_csv(work / "manifest.csv")
    if fold is not None:
        from data_prep.splits import read_splits

        splits = read_splits(work)
        (k,) = parse_folds(fold, int(splits.get("n_folds", 5)))
        val = set(next(f for f in splits["folds"] if int(f["fold"]) == k)["val"])
        man = man[man["case_day"].isin(set(man.loc[man["id"].isin(val), "case_day"]))]
    man = man.sort_values(["case_day", "z"])
    return {cd: g["id"].tolist() for cd, g in man.groupby("case_day", sort=True)}


def predict_work(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike,
    work: str | os.PathLike | None = None,
    fold: int | str | None = None,
    out: str | os.PathLike | None = None,
    tta: Sequence[str] = ("hflip",),
    device: str = "cpu",
    batch_size: int = 16,
    boxes: str | os.PathLike | None = None,
    threshold: float = 0.5,
    overwrite: bool = False,
    cfg_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Predict every case-day of a fold's val side (or of the whole WORK folder) and write probability maps.

    Args:
        config, checkpoint: the model (``Segmenter.load``).
        work: data_prep's WORK folder (default ``default_work_dir()``).
        fold: ``0..4``: that fold's val case-days (out-of-fold predictions); None: every case-day (test time).
        out: output folder (default :func:`default_out_dir`).
        tta: flips averaged with the plain prediction.
        device, batch_size: where and how many slices per forward pass.
        boxes: optional crop-box CSV (``id, x0, y0, x1, y1``).
        threshold: for the metrics only (probabilities are written unthresholded).
        overwrite: replace an existing output folder's maps.
        cfg_options: config overrides.
        progress: tqdm over case-days.

    Returns:
        A summary dict (out dir, case-days, metrics when masks exist).

    Raises:
        FileExistsError: ``out`` already holds maps and ``overwrite`` is False.
    """
    from common.io import atomic_save_npy
    from data_prep.volumes import load_mask, load_volume, mask_path, unpack_mask
    from segmenters.inference import Segmenter

    work = check_work(work or default_work_dir(), need_masks=False, need_splits=fold is not None)
    k = parse_folds(fold)[0] if fold is not None else None
    out = Path(out) if out else default_out_dir(config, k)
    if (out / "meta.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds probability maps; pass --overwrite to replace them")
    groups = case_days_of(work, k)
    box_map = {}
    if boxes:
        from segmenters.mm.data import read_boxes

        box_map = read_boxes(boxes)
    seg = Segmenter.load(config, checkpoint, device, cfg_options)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    counts = []
    items = list(groups.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="case-days")
    for cd, ids in items:
        vol = load_volume(work, cd)
        if vol.shape[0] != len(ids):
            raise ValueError(f"{work}/volumes/{cd}.npy has {vol.shape[0]} slices, manifest.csv lists {len(ids)}")
        bx = None
        if box_map:
            h, w = vol.shape[1:]
            bx = np.array([box_map.get(i, (0, 0, w, h)) for i in ids], np.int64)
        probs = seg.predict_volume(vol, boxes=bx, tta=tuple(tta), batch_size=batch_size)
        atomic_save_npy(out / f"{cd}.npy", probs.astype(np.float16))
        if mask_path(work, cd).is_file():
            truth = unpack_mask(np.asarray(load_mask(work, cd))).astype(bool)
            pred = probs > threshold
            counts.append(
                np.stack([(pred & truth).sum((2, 3)), pred.sum((2, 3)), truth.sum((2, 3))], axis=-1)
            )  # (D, 3, 3)
            try:
                from ensembles.metric import score_case_day
            except ImportError:
                score_case_day = None
            if score_case_day is not None:
                records.append(score_case_day(cd, pred, truth))
    meta = dict(
        kind="2.5d",
        config=str(config),
        checkpoint=str(checkpoint),
        fold=k,
        tta=list(tta),
        classes=list(CLASSES),
        case_days=groups,
    )
    from common.io import atomic_write_bytes

    atomic_write_bytes(out / "meta.json", json.dumps(meta, indent=1).encode())
    summary: dict[str, Any] = dict(out=str(out), case_days=len(groups), slices=sum(len(v) for v in groups.values()))
    if counts:
        from segmenters.mm.metric import slice_dice_table

        c = np.concatenate(counts)
        metrics = slice_dice_table(c[..., 0], c[..., 1], c[..., 2])
        if records:
            from ensembles.metric import aggregate

            res = aggregate(records)
            metrics.update(score=res.score, hausdorff=res.hausdorff, dice_3d=res.dice)
        metrics = {k2: (None if isinstance(v, float) and np.isnan(v) else v) for k2, v in metrics.items()}
        atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=1).encode())
        summary["metrics"] = metrics
    return summary
