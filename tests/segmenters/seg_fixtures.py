"""A small synthetic WORK folder written through data_prep.work (manifest, volumes, masks, splits, prepare.json and,
for a dataset other than the Kaggle one, dataset.json), for the segmenters' tests: a few case-days of uint16 volumes
with blob masks (overlapping classes: a bit field; exclusive ones: a label map), one volume per image channel, and
image intensity that depends on the classes (so a tiny model can learn something)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.dataset import KAGGLE, DatasetInfo, VolumeInfo
from data_prep.work import (
    save_mask,
    save_volume,
    write_dataset,
    write_manifest,
    write_prepare_json,
    write_splits_json,
)

REPO = Path(__file__).resolve().parents[2]
TINY_UPERNET = REPO / "mmcfg" / "upernet" / "upernet_convnext-atto_1xb4-40_gitract-128x128.py"
TINY_UNET = REPO / "mmcfg" / "unet" / "unet_effb0_1xb4-40_gitract-128x128.py"
TINY_SWIN = REPO / "mmcfg" / "upernet" / "upernet_swin-mini_1xb4-40_gitract-128x128.py"
#: Five overlapping classes on two image channels, and four exclusive classes on one (the N-class tests).
FIVE = DatasetInfo(
    classes=("liver", "kidney", "spleen", "pancreas", "vessel"), channels=("T1", "T2"), format="nnunet", name="five"
)
FOUR = DatasetInfo(
    classes=("liver", "kidney", "spleen", "pancreas"), label_kind="exclusive", intensity="CT", format="nnunet",
    name="four",
)  # fmt: skip
#: Blob centres (fractions of H, W) and intensities per class; the first three are the Kaggle fixture's.
_CENTRES = [(0.35, 0.35), (0.55, 0.5), (0.4, 0.65), (0.7, 0.3), (0.25, 0.75), (0.75, 0.75)]
_INTENSITY = [500, 900, 1400, 1900, 2400, 2900]


def _blob(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_volume(
    rng: np.random.Generator, depth: int, h: int, w: int, dataset: DatasetInfo = KAGGLE
) -> tuple[list[np.ndarray], np.ndarray]:
    """``([volume uint16 (D, H, W)] * K, masks uint8 (D, C, H, W))`` with blobs on the middle slices: ``C`` classes
    and ``K`` image channels of ``dataset`` (exclusive classes: a later class covers an earlier one). Channel ``k``
    shows class ``c`` with the intensity of class ``(c + k) % C``."""
    n = dataset.num_classes
    masks = np.zeros((depth, n, h, w), np.uint8)
    for z in range(depth):
        t = z / max(depth - 1, 1)
        if not 0.2 <= t <= 0.8:
            continue  # empty slices at both ends (as real scans)
        for c, (fy, fx) in enumerate(_CENTRES[:n]):
            cy, cx = fy * h + 3 * np.sin(6 * t + c), fx * w + 3 * np.cos(5 * t + c)
            masks[z, c] = _blob(h, w, cy, cx, 0.16 * h, 0.14 * w)
    if dataset.label_kind == "exclusive":
        masks = dataset.unpack(dataset.pack(masks))
    m = masks.astype(np.float64)
    vols = []
    for k in range(dataset.num_channels):
        vol = rng.normal(300, 40, (depth, h, w))
        vol += sum(_INTENSITY[(c + k) % n] * m[:, c] for c in range(n))
        vols.append(np.clip(vol, 0, 65535).astype(np.uint16))
    return vols, masks


def make_work(
    root: str | Path,
    cases: int = 5,
    days: int = 1,
    depth: int = 12,
    hw: tuple[int, int] = (80, 96),
    seed: int = 0,
    dataset: DatasetInfo = KAGGLE,
    spacing: tuple[float, float, float] = (3.0, 1.5, 1.5),
) -> Path:
    """Write a WORK folder with ``cases x days`` case-days; fold ``k`` validates case ``k % 5`` (GroupKFold by
    case). Returns the WORK path.

    ``dataset``: the classes, label kind and image channels (default the Kaggle layout: no ``dataset.json`` is
    written, as for a WORK prepared before descriptions existed); any other is written to ``WORK/dataset.json`` with
    each volume's ``spacing`` ``(sz, sy, sx)`` mm."""
    work = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    h, w = hw
    volumes = {}
    for ci in range(cases):
        case = 10 + ci
        for d in range(days):
            day = d * 3 + 1
            cd = f"case{case}_day{day}"
            vols, masks = make_volume(rng, depth, h, w, dataset)
            for k, vol in enumerate(vols):
                save_volume(work, cd, vol, channel=k)
            save_mask(work, cd, dataset.pack(masks))
            volumes[cd] = VolumeInfo(shape=(depth, h, w), spacing=spacing, group=str(case))
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
                    px_w=spacing[2],
                    px_h=spacing[1],
                    z=z,
                    depth=depth,
                )
                for c, name in enumerate(dataset.classes):
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
        anno = tr[[f"has_{c}" for c in dataset.classes]].sum(1) > 0
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
    if dataset != KAGGLE:
        write_dataset(work, dataset.with_volumes(volumes))
    args = dict(data_root="synthetic", split="train", labels="synthetic", stride=2, channels=3)
    write_prepare_json(work, dict(version=1, status="done", args=args, labels=True, n_slices=len(man)))
    return work
