"""A small synthetic WORK folder written through data_prep.work (manifest, volumes, bit-field masks, splits,
prepare.json), for the segmenters' tests: a few case-days of uint16 volumes with blob masks whose
classes overlap, and image intensity that depends on the classes (so a tiny model can learn something)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.constants import CLASSES
from data_prep.volumes import pack_mask
from data_prep.work import save_mask, save_volume, write_manifest, write_prepare_json, write_splits_json

REPO = Path(__file__).resolve().parents[2]
TINY_UPERNET = REPO / "mmcfg" / "upernet" / "upernet_convnext-atto_1xb4-40_gitract-128x128.py"
TINY_UNET = REPO / "mmcfg" / "unet" / "unet_effb0_1xb4-40_gitract-128x128.py"
TINY_SWIN = REPO / "mmcfg" / "upernet" / "upernet_swin-mini_1xb4-40_gitract-128x128.py"


def _blob(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_volume(rng: np.random.Generator, depth: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(volume uint16 (D, H, W), masks uint8 (D, 3, H, W))`` with blobs on the middle slices."""
    masks = np.zeros((depth, 3, h, w), np.uint8)
    base = [(0.35, 0.35), (0.55, 0.5), (0.4, 0.65)]
    for z in range(depth):
        t = z / max(depth - 1, 1)
        if not 0.2 <= t <= 0.8:
            continue  # empty slices at both ends (as real scans)
        for c, (fy, fx) in enumerate(base):
            cy, cx = fy * h + 3 * np.sin(6 * t + c), fx * w + 3 * np.cos(5 * t + c)
            masks[z, c] = _blob(h, w, cy, cx, 0.16 * h, 0.14 * w)
    vol = rng.normal(300, 40, (depth, h, w))
    m = masks.astype(np.float64)
    vol += 500 * m[:, 0] + 900 * m[:, 1] + 1400 * m[:, 2]
    return np.clip(vol, 0, 65535).astype(np.uint16), masks


def make_work(
    root: str | Path,
    cases: int = 5,
    days: int = 1,
    depth: int = 12,
    hw: tuple[int, int] = (80, 96),
    seed: int = 0,
) -> Path:
    """Write a WORK folder with ``cases x days`` case-days; fold ``k`` validates case ``k % 5`` (GroupKFold by
    case). Returns the WORK path."""
    work = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    h, w = hw
    for ci in range(cases):
        case = 10 + ci
        for d in range(days):
            day = d * 3 + 1
            cd = f"case{case}_day{day}"
            vol, masks = make_volume(rng, depth, h, w)
            save_volume(work, cd, vol)
            save_mask(work, cd, pack_mask(masks))
            for z in range(depth):
                sid = f"{cd}_slice_{z + 1:04d}"
                row = dict(
                    id=sid,
                    case=case,
                    day=day,
                    slice=z + 1,
                    case_day=cd,
                    path=f"/nonexistent/train/case{case}/{cd}/scans/slice_{z + 1:04d}_{w}_{h}_1.50_1.50.png",
                    width=w,
                    height=h,
                    px_w=1.5,
                    px_h=1.5,
                    z=z,
                    depth=depth,
                )
                for c, name in enumerate(CLASSES):
                    area = int(masks[z, c].sum())
                    row[f"has_{name}"] = int(area > 0)
                    row[f"area_{name}"] = area
                rows.append(row)
    man = pd.DataFrame(rows)
    write_manifest(work, man)
    folds = []
    case_list = sorted(man["case"].unique())
    for k in range(5):
        val_cases = [c for i, c in enumerate(case_list) if i % 5 == k]
        val = man[man["case"].isin(val_cases)]
        tr = man[~man["case"].isin(val_cases)]
        anno = tr[[f"has_{c}" for c in CLASSES]].sum(1) > 0
        folds.append(
            dict(
                fold=k,
                val_cases=[int(c) for c in val_cases],
                val=val["id"].tolist(),
                train=dict(all=tr["id"].tolist(), notail=tr["id"].tolist(), noanno=tr[anno]["id"].tolist()),
            )
        )
    splits = dict(
        version=1,
        n_folds=5,
        seed=42,
        method="group",
        tail=5,
        tail_before=0,
        faulty_case_days=["case7_day0", "case81_day30"],
        folds=folds,
    )
    write_splits_json(work, splits)
    args = dict(data_root="synthetic", split="train", labels="synthetic", stride=2, channels=3)
    write_prepare_json(work, dict(version=1, status="done", args=args, labels=True, n_slices=len(man)))
    return work
