"""Training loop of the 3D segmenters: a plain torch loop over MONAI patches, one fold at a time.

``train_3d(cfg, work, fold, work_dir)`` trains on the case-days of the fold's ``train["all"]`` ids and validates on
its val case-days (``splits.json``, the same folds as the 2.5D models). Patches are sampled around labels
(``RandCropByPosNegLabeld``) after padding to the patch size, then flipped and intensity-jittered. The schedule
is a list of stages (e.g. 160x160x80 then 224x224x80 patches) run back to back. Writes into ``work_dir``:
``last.pth`` (model, optimizer, scheduler, scaler, iteration: ``resume=True`` continues from it), ``best.pth``
(weights + meta, by mean val Dice), ``log.csv`` and ``curve.png``, ``config.py``.

Distributed: ``launcher="pytorch"`` (torchrun) or ``"slurm"``; ``gloo`` on CPU, ``nccl`` on GPUs; each rank gets a
``DistributedSampler`` shard; rank 0 validates and writes.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.transforms import Transform
from torch import nn

from common.engine import (
    atomic_torch_save,
    is_main_process,
    load_trusted,
    rank_and_world,
    seed_everything,
    setup_distributed,
)
from common.io import atomic_write_bytes
from common.viz import save_training_curves
from data_prep.constants import CLASSES
from data_prep.exports import read_datalist
from data_prep.work import fold_case_days, read_splits
from segmenters.monai.volumes import (
    build_loss,
    build_model,
    cfg_get,
    check_roi,
    dice_per_class,
    load_case_day,
    preprocess_image,
    preprocess_label,
    to_dict,
)

logger = logging.getLogger(__name__)

LOG_FIELDS = ("iter", "stage", "lr", "loss", "val_dice", *[f"val_dice_{c}" for c in CLASSES])


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------


class LoadCaseDayd(Transform):
    """Deterministic MONAI dict transform: ``{"case_day", "image": path, "label": path, "spacing"}`` ->
    ``{"image": float32 (1, h, w, D), "label": uint8 (3, h, w, D), "case_day"}`` (normalised, resampled).

    A ``Transform`` that is not ``Randomizable``, so ``monai.data.CacheDataset`` caches its output (the label stays
    uint8 in the cache; the loop casts patches to float).
    """

    def __init__(self, cfg: Mapping[str, Any], work: str | os.PathLike) -> None:
        self.cfg = to_dict(dict(cfg))
        self.work = str(work)

    def __call__(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        cd = str(entry["case_day"])
        volume, mask, spacing = load_case_day(self.work, cd, entry)
        if mask is None:
            raise FileNotFoundError(f"no mask for {cd} ({entry.get('label')}): training needs labels")
        image = preprocess_image(np.asarray(volume), self.cfg, spacing)
        label = preprocess_label(np.asarray(mask), image.shape[1:3]).to(torch.uint8)
        return {"image": image, "label": label, "case_day": cd}


def build_train_transforms(cfg: Mapping[str, Any], work: str | os.PathLike, roi_size: Sequence[int]) -> Any:
    """Load (cached), pad to the patch, crops around labels, flips, intensity jitter (MONAI ``Compose``)."""
    from monai import transforms as T

    aug = to_dict(dict(cfg_get(cfg, "augment", {}) or {}))
    roi = tuple(int(r) for r in roi_size)
    keys = ("image", "label")
    ts: list[Any] = [
        LoadCaseDayd(cfg, work),
        T.SpatialPadd(keys, spatial_size=roi, mode="constant"),
        T.RandCropByPosNegLabeld(
            keys,
            label_key="label",
            spatial_size=roi,
            pos=float(aug.get("pos", 1.0)),
            neg=float(aug.get("neg", 1.0)),
            num_samples=int(aug.get("num_samples", 1)),
        ),
    ]
    for axis in aug.get("flip_axes", (1, 2)):
        ts.append(T.RandFlipd(keys, prob=float(aug.get("flip_prob", 0.5)), spatial_axis=int(axis)))
    if aug.get("intensity_prob", 0.5) > 0:
        p = float(aug.get("intensity_prob", 0.5))
        ts.append(T.RandScaleIntensityd("image", factors=float(aug.get("scale_intensity", 0.1)), prob=p))
        ts.append(T.RandShiftIntensityd("image", offsets=float(aug.get("shift_intensity", 0.1)), prob=p))
    ts.append(T.ToTensord(keys, track_meta=False))
    return T.Compose(ts)


def build_train_loader(
    cfg: Mapping[str, Any], work: str | os.PathLike, entries: list[dict[str, Any]], roi_size: Sequence[int], seed: int
) -> tuple[Any, Any]:
    """``(loader, sampler)``: a MONAI DataLoader of patches and its DistributedSampler (None when single).

    With ``data.cache_rate > 0`` under torch distributed, every rank caches only its own shard of the case-days
    (``entries[rank::world]``, padded to equal length) and shuffles it locally: the MONAI recipe that keeps
    memory per node flat; without a cache a ``DistributedSampler`` shards each epoch.
    """
    from monai.data import CacheDataset, DataLoader, Dataset

    data = cfg_get(cfg, "data", {})
    train = cfg_get(cfg, "train", {})
    transform = build_train_transforms(cfg, work, roi_size)
    cache_rate = float(cfg_get(data, "cache_rate", 0.0))
    num_workers = int(cfg_get(data, "num_workers", 0))
    rank, world = rank_and_world()
    sampler = None
    if cache_rate > 0:
        if world > 1:
            n = -(-len(entries) // world) * world
            padded = [entries[i % len(entries)] for i in range(n)]
            entries = padded[rank::world]
        ds = CacheDataset(entries, transform, cache_rate=cache_rate, num_workers=None, progress=False)
    else:
        ds = Dataset(entries, transform)
        if world > 1:
            sampler = torch.utils.data.DistributedSampler(ds, shuffle=True, seed=seed, drop_last=False)
    g = torch.Generator()
    g.manual_seed(seed)
    loader = DataLoader(
        ds,
        batch_size=int(cfg_get(train, "batch_size", 2)),
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        generator=g,
        drop_last=False,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return loader, sampler


# ----------------------------------------------------------------------------------------------------------------
# schedule
# ----------------------------------------------------------------------------------------------------------------


def lr_factor(it: int, max_iters: int, warmup_iters: int = 0, min_ratio: float = 0.01) -> float:
    """Linear warm-up then cosine decay to ``min_ratio``; ``it`` is the 0-based iteration.

    >>> lr_factor(0, 100, 10), lr_factor(10, 100, 10), round(lr_factor(100, 100, 10), 3)
    (0.1, 1.0, 0.01)
    """
    if warmup_iters > 0 and it < warmup_iters:
        return (it + 1) / warmup_iters
    span = max(1, max_iters - warmup_iters)
    t = min(1.0, (it - warmup_iters) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def parse_stages(cfg: Mapping[str, Any]) -> list[tuple[tuple[int, int, int], int]]:
    """``train.stages = [dict(roi_size=(H, W, D), iters=N), ...]`` as ``[(roi, end_iter), ...]`` (cumulative)."""
    train = cfg_get(cfg, "train", {})
    stages = cfg_get(train, "stages", None)
    if not stages:
        raise ValueError("train.stages must list at least one dict(roi_size=(H, W, D), iters=N)")
    model_cfg = to_dict(dict(cfg_get(cfg, "model")))
    out, end = [], 0
    for i, s in enumerate(stages):
        iters = int(s["iters"])
        if iters < 1:
            raise ValueError(f"train.stages[{i}].iters must be >= 1, got {iters}")
        end += iters
        out.append((check_roi(s["roi_size"], model_cfg, f"train.stages[{i}].roi_size"), end))
    return out


# ----------------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def validate(
    model: nn.Module,
    cfg: Mapping[str, Any],
    work: str | os.PathLike,
    entries: Sequence[Mapping[str, Any]],
    roi_size: Sequence[int],
    device: torch.device,
    amp: bool = False,
) -> dict[str, float]:
    """Mean 3D Dice per class on the val case-days at the model's resolution (sliding window, sigmoid > thr).

    Returns ``{"val_dice": mean over (case-day, class) pairs where not both empty, "val_dice_{class}": ...}``.
    """
    from monai.inferers import sliding_window_inference

    val = cfg_get(cfg, "val", {})
    thr = float(cfg_get(val, "threshold", 0.5))
    loader = LoadCaseDayd(cfg, work)
    model.eval()
    per_class: list[list[float]] = [[] for _ in CLASSES]
    for e in entries:
        item = loader(e)
        x = item["image"][None].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = sliding_window_inference(
                x,
                roi_size=tuple(roi_size),
                sw_batch_size=int(cfg_get(val, "sw_batch_size", 2)),
                predictor=model,
                overlap=float(cfg_get(val, "overlap", 0.5)),
                mode=str(cfg_get(val, "mode", "gaussian")),
            )
        pred = torch.sigmoid(logits.float())[0].cpu() > thr
        for c, d in enumerate(dice_per_class(pred, item["label"] > 0.5)):
            if not math.isnan(d):
                per_class[c].append(d)
    model.train()
    out = {f"val_dice_{c}": float(np.mean(v)) if v else math.nan for c, v in zip(CLASSES, per_class)}
    allv = [d for v in per_class for d in v]
    out["val_dice"] = float(np.mean(allv)) if allv else math.nan
    return out


# ----------------------------------------------------------------------------------------------------------------
# logs
# ----------------------------------------------------------------------------------------------------------------


def write_log(history: Sequence[Mapping[str, Any]], work_dir: Path) -> None:
    """``log.csv`` (one row per logged iteration) and ``curve.png`` (loss and val Dice), both atomic."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOG_FIELDS})
    atomic_write_bytes(work_dir / "log.csv", buf.getvalue().encode())
    tr = [(r["iter"], r["loss"]) for r in history if r.get("loss") is not None]
    va = [(r["iter"], r["val_dice"]) for r in history if r.get("val_dice") is not None]
    save_training_curves(
        work_dir / "curve.png",
        ([i for i, _ in tr], [v for _, v in tr]),
        {"iter": [i for i, _ in va], "val Dice": [v for _, v in va]},
        "validation Dice",
    )


# ----------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------


def _device(cfg: Mapping[str, Any]) -> torch.device:
    want = cfg_get(cfg_get(cfg, "train", {}), "device", None)
    if want:
        return torch.device(want)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def train_3d(
    cfg: Mapping[str, Any],
    work: str | os.PathLike,
    fold: int,
    work_dir: str | os.PathLike,
    resume: bool = False,
    amp: bool | None = None,
    launcher: str = "none",
    progress: bool = False,
    config_text: str | None = None,
) -> dict[str, Any]:
    """Train one fold of a 3D segmenter.

    Args:
        cfg: loaded config (``model``, ``data``, ``augment``, ``train``, ``optimizer``, ``scheduler``, ``loss``,
            ``val``; see ``mmcfg/monai3d/``).
        work: data_prep's WORK folder (needs ``splits/splits.json`` and the 3D export
            ``exports/3d/fold_{k}/datalist.json``).
        fold: fold index in ``splits.json``.
        work_dir: output folder of this fold.
        resume: continue from ``work_dir/last.pth`` (model, optimizer, scheduler, scaler, iteration, history).
        amp: mixed precision on CUDA (``None``: ``train.amp`` of the config); ignored on CPU.
        launcher: ``none`` | ``pytorch`` | ``slurm`` (see ``common.engine.setup_distributed``).
        progress: tqdm bar on rank 0.
        config_text: the config file's text, saved as ``work_dir/config.py``.

    Returns:
        ``{"iter", "best_score", "best_iter", "history"}`` (history: list of logged rows).

    Raises:
        FileNotFoundError: missing WORK pieces (with the command that makes them); ``resume`` without last.pth.
    """
    setup_distributed(launcher)
    rank, world = rank_and_world()
    work, work_dir = Path(work), Path(work_dir)
    train_cfg = cfg_get(cfg, "train", {})
    seed = int(cfg_get(train_cfg, "seed", 42))
    seed_everything(seed + rank)
    device = _device(cfg)
    use_amp = bool(cfg_get(train_cfg, "amp", False) if amp is None else amp) and device.type == "cuda"
    if (amp or (amp is None and cfg_get(train_cfg, "amp", False))) and device.type != "cuda":
        logger.info("AMP requested but running on %s: training in float32", device)

    entries = read_datalist(work, fold)
    train_cds, val_cds = fold_case_days(read_splits(work), fold)
    missing = [cd for cd in train_cds + val_cds if cd not in entries]
    if missing:
        raise ValueError(
            f"{len(missing)} case-days of fold {fold} are not in the 3D export of {work} (e.g. {missing[:3]}); "
            "re-run `python -m data_prep export 3d --work WORK --overwrite`"
        )
    train_entries = [entries[cd] for cd in train_cds]
    val_entries = [entries[cd] for cd in val_cds]
    stages = parse_stages(cfg)
    max_iters = stages[-1][1]
    logger.info("fold %d: %d train / %d val case-days, %d iterations", fold, len(train_cds), len(val_cds), max_iters)

    model = build_model(cfg_get(cfg, "model")).to(device)
    loss_fn = build_loss(cfg_get(cfg, "loss", None))
    opt_cfg = to_dict(dict(cfg_get(cfg, "optimizer", {}) or {}))
    opt_type = opt_cfg.pop("type", "AdamW")
    clip_grad = opt_cfg.pop("clip_grad", None)
    if not hasattr(torch.optim, opt_type):
        raise ValueError(f"optimizer type {opt_type!r} is not in torch.optim")
    optimizer = getattr(torch.optim, opt_type)(model.parameters(), **opt_cfg)
    sch = to_dict(dict(cfg_get(cfg, "scheduler", {}) or {}))
    warmup, min_ratio = int(sch.get("warmup_iters", 0)), float(sch.get("min_lr_ratio", 0.01))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, max_iters, warmup, min_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    it, best_score, best_iter, history = 0, -math.inf, -1, []
    last_path, best_path = work_dir / "last.pth", work_dir / "best.pth"
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: {last_path} not found (start without --resume)")
        ckpt = load_trusted(last_path, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        it, best_score, best_iter = int(ckpt["iter"]), float(ckpt["best_score"]), int(ckpt["best_iter"])
        history = list(ckpt["history"])
        logger.info("resumed from %s at iteration %d", last_path, it)
    elif last_path.is_file():
        raise FileExistsError(f"{last_path} exists: pass --resume to continue it, or choose another --work-dir")

    if world > 1:
        ddp_ids = [device.index] if device.type == "cuda" else None
        net: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=ddp_ids)
    else:
        net = model
    if is_main_process():
        work_dir.mkdir(parents=True, exist_ok=True)
        if config_text is not None:
            atomic_write_bytes(work_dir / "config.py", config_text.encode())

    val_cfg = cfg_get(cfg, "val", {})
    val_interval = int(cfg_get(train_cfg, "val_interval", 1000))
    log_interval = int(cfg_get(train_cfg, "log_interval", 50))
    ckpt_interval = int(cfg_get(train_cfg, "checkpoint_interval", val_interval))
    val_roi_override = cfg_get(val_cfg, "roi_size", None)

    def save_last() -> None:
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "iter": it,
                "best_score": best_score,
                "best_iter": best_iter,
                "history": history,
                "meta": {"fold": fold, "kind": "3d", "classes": list(CLASSES)},
            },
            last_path,
        )

    bar = None
    if progress and is_main_process():
        from tqdm import tqdm

        bar = tqdm(total=max_iters, initial=it, desc=f"fold {fold}", dynamic_ncols=True)
    net.train()
    running: list[float] = []
    for stage_idx, (roi, stage_end) in enumerate(stages):
        if it >= stage_end:
            continue
        loader, sampler = build_train_loader(cfg, work, train_entries, roi, seed + 1000 * stage_idx + it)
        epoch = it  # a distinct shuffle per (re)start
        while it < stage_end:
            if sampler is not None:
                sampler.set_epoch(epoch)
            for batch in loader:
                x = batch["image"].to(device, non_blocking=True).float()
                y = batch["label"].to(device, non_blocking=True).float()
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    logits = net(x)
                loss = loss_fn(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), float(clip_grad))
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                it += 1
                running.append(float(loss.detach()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{running[-1]:.4f}")
                row: dict[str, Any] | None = None
                if it % log_interval == 0 or it == stage_end:
                    mean_loss = float(np.mean(running))
                    if world > 1:  # the mean over ranks
                        t = torch.tensor([mean_loss], dtype=torch.float64, device=device)
                        dist.all_reduce(t)
                        mean_loss = float(t.item()) / world
                    row = {"iter": it, "stage": stage_idx, "lr": lr, "loss": mean_loss}
                    running = []
                do_val = bool(val_entries) and (it % val_interval == 0 or it == max_iters)
                if do_val and is_main_process():
                    vroi = check_roi(val_roi_override or roi, to_dict(dict(cfg_get(cfg, "model"))), "val.roi_size")
                    scores = validate(model, cfg, work, val_entries, vroi, device, use_amp)
                    row = {**(row or {"iter": it, "stage": stage_idx, "lr": lr}), **scores}
                    logger.info("iter %d: val Dice %.4f", it, scores["val_dice"])
                    if not math.isnan(scores["val_dice"]) and scores["val_dice"] > best_score:
                        best_score, best_iter = scores["val_dice"], it
                        atomic_torch_save(
                            {
                                "model": model.state_dict(),
                                "meta": {"iter": it, "val_dice": best_score, "fold": fold, "kind": "3d"},
                            },
                            best_path,
                        )
                if row is not None:
                    history.append(row)
                    if is_main_process():
                        logger.info("iter %d/%d loss %s lr %.2e", it, max_iters, row.get("loss"), lr)
                if is_main_process() and (do_val or it % ckpt_interval == 0 or it == stage_end):
                    save_last()
                    write_log(history, work_dir)
                if world > 1 and (do_val or it % ckpt_interval == 0):
                    dist.barrier()
                if it >= stage_end:
                    break
            epoch += 1
    if bar is not None:
        bar.close()
    if is_main_process() and not best_path.is_file():  # no val set (or all-nan): the last weights are the best known
        atomic_torch_save({"model": model.state_dict(), "meta": {"iter": it, "fold": fold, "kind": "3d"}}, best_path)
    if world > 1:
        dist.barrier()
    return {"iter": it, "best_score": best_score, "best_iter": best_iter, "history": history}
