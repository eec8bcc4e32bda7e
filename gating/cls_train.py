"""Train the slice classifier: a clean torch loop with checkpoints, resume, AMP and torch distributed.

One function, :func:`train_classifier`, called by ``tools/train_cls.py``. The config is an mmengine ``Config``
(plain python file under ``mmcfg/gating/``) with four sections checked against :data:`DEFAULTS`:
``model`` (timm name and kwargs, optional local ``pretrained`` path), ``data`` (channels, stride, img_size,
batch sizes, workers, aug), ``optim`` (AdamW) and ``schedule`` (iterations, warmup + cosine, intervals).

The classifier trains on ALL slices of the fold (variant ``all`` of ``splits.json``; the fault list applies,
nothing else is filtered) and validates on the fold's val slices every ``val_interval`` iterations: per-class
AUC and F1 at 0.5 (sklearn). Run folder ``{work_dir}``:

```
last.pth            every ckpt_interval iterations and at the end: model, optimizer, scheduler, scaler,
                    iteration, RNG states, history (resume with --resume; a trusted pickle)
best.pth            weights + meta of the best val mean AUC (the last weights with --fold all); weights_only
oof/cls_probs.csv   out-of-fold probabilities of the val fold by the best weights (docs/contracts.md)
metrics.csv         iteration, loss, lr and the val metrics
curve.png           training loss and val mean AUC
train.log, config.py
```
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from common.engine import atomic_torch_save, is_main_process, load_trusted, seed_everything, setup_distributed
from common.io import atomic_write_bytes
from common.viz import save_training_curves
from data_prep.constants import CLASSES, NUM_CLASSES
from gating.classifier import SliceStackDataset, build_classifier, read_slice_table, write_cls_probs

logger = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "classification_metrics", "fold_ids", "merge_defaults", "train_classifier"]

#: Every config key and its default; a config key not listed here is refused with close matches.
DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"name": "efficientnet_b0", "pretrained": None, "kwargs": {}},
    "data": {
        "channels": 3,
        "stride": 2,
        "img_size": (256, 256),
        "batch_size": 32,
        "val_batch_size": 64,
        "num_workers": 4,
        "aug": {"hflip": 0.5, "affine": 0.7, "scale": (0.85, 1.15), "rotate": 15.0, "shift": 0.06, "brightness": 0.15},
    },
    "optim": {"lr": 1e-3, "weight_decay": 1e-2, "grad_clip": 5.0},
    "schedule": {
        "max_iters": 8000,
        "warmup_iters": 200,
        "min_lr_ratio": 0.01,
        "val_interval": 1000,
        "ckpt_interval": 500,
        "log_interval": 50,
    },
    "seed": 42,
}


def merge_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """Config dict merged over :data:`DEFAULTS` (one level deep per section).

    Raises:
        ValueError: unknown section or key (close matches are named).
    """

    def _unknown(key: str, known: list[str], where: str) -> ValueError:
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
        return ValueError(f"unknown config key {where}{key!r}{hint}")

    out = json.loads(json.dumps(DEFAULTS))  # deep copy, tuples become lists
    skip = {"filename", "work_dir", "_base_"}
    for key, value in cfg.items():
        if key in skip or key.startswith("_"):
            continue
        if key not in DEFAULTS:
            raise _unknown(key, list(DEFAULTS), "")
        if isinstance(DEFAULTS[key], dict):
            for sub, v in dict(value).items():
                if sub not in DEFAULTS[key]:
                    raise _unknown(sub, list(DEFAULTS[key]), f"{key}.")
                out[key][sub] = dict(v) if isinstance(v, dict) else v
        else:
            out[key] = value
    if key_aug := out["data"].get("aug"):
        bad = set(key_aug) - set(DEFAULTS["data"]["aug"])
        if bad:
            raise _unknown(sorted(bad)[0], list(DEFAULTS["data"]["aug"]), "data.aug.")
    return out


def fold_ids(work: str | os.PathLike, fold: int | str) -> tuple[list[str], list[str]]:
    """``(train ids, val ids)`` of a fold from ``WORK/splits/splits.json``: train = variant ``all``.

    ``fold="all"``: every training id of any fold (the fault list still applies), no val ids.

    Raises:
        FileNotFoundError: no splits file (names the command that makes it).
        ValueError: a fold that does not exist.
    """
    path = Path(work) / "splits" / "splits.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m data_prep prepare --data-root DIR --out {work}`")
    splits = json.loads(path.read_text())
    folds = {int(f["fold"]): f for f in splits["folds"]}
    if str(fold) == "all":
        seen: dict[str, None] = {}
        for f in splits["folds"]:
            for sid in f["train"]["all"]:
                seen.setdefault(sid, None)
        return list(seen), []
    k = int(fold)
    if k not in folds:
        raise ValueError(f"fold {k} is not in {path} (folds: {sorted(folds)})")
    return list(folds[k]["train"]["all"]), list(folds[k]["val"])


def classification_metrics(probs: np.ndarray, truth: np.ndarray, thr: float = 0.5) -> dict[str, float]:
    """Per-class AUC and F1 (at ``thr``) and their means; AUC is NaN for a class with one label value only.

    Args:
        probs: ``(N, 3)`` probabilities; truth: ``(N, 3)`` 0/1.
    """
    from sklearn.metrics import f1_score, roc_auc_score

    out: dict[str, float] = {}
    aucs, f1s = [], []
    for c, name in enumerate(CLASSES):
        t = truth[:, c].astype(int)
        auc = float(roc_auc_score(t, probs[:, c])) if 0 < t.sum() < len(t) else float("nan")
        f1 = float(f1_score(t, probs[:, c] >= thr, zero_division=1.0))
        out[f"auc_{name}"], out[f"f1_{name}"] = auc, f1
        aucs.append(auc)
        f1s.append(f1)
    out["mean_auc"] = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")
    out["mean_f1"] = float(np.mean(f1s))
    return out


class ResumableBatchSampler(Sampler):
    """Endless batches of ``(index, aug_seed)`` from a :class:`DistributedSampler`, starting at any iteration.

    Epoch ``e`` uses ``sampler.set_epoch(e)``; incomplete last batches are dropped, so iteration ``i`` always
    sees the same batch whether or not the run was interrupted before it.
    """

    def __init__(self, sampler: DistributedSampler, batch_size: int, start_iter: int, seed: int) -> None:
        self.sampler, self.batch_size, self.start_iter, self.seed = sampler, batch_size, start_iter, seed
        self.per_epoch = len(sampler) // batch_size
        if self.per_epoch < 1:
            raise ValueError(
                f"a batch of {batch_size} needs at least that many training slices per process, got {len(sampler)}"
            )

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = divmod(self.start_iter, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            idx = list(self.sampler)
            for b in range(skip, self.per_epoch):
                chunk = idx[b * self.batch_size : (b + 1) * self.batch_size]
                yield [(int(i), (self.seed * 1_000_003 + epoch * 100_003 + int(i)) % 2**63) for i in chunk]
            skip = 0
            epoch += 1


def _lr_lambda(warmup: int, max_iters: int, min_ratio: float):
    def f(it: int) -> float:
        if warmup > 0 and it < warmup:
            return (it + 1) / warmup
        t = (it - warmup) / max(1, max_iters - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def _predict(model, loader, device, amp: bool, n: int) -> np.ndarray:
    """Probabilities for this rank's part of the loader, gathered over ranks: ``float32 (n, 3)``."""
    model.eval()
    idx_all, p_all = [], []
    for x, _, idx in loader:
        with torch.autocast("cuda", enabled=amp):
            logits = model(x.to(device, non_blocking=True))
        p_all.append(torch.sigmoid(logits.float()).cpu().numpy())
        idx_all.append(idx.numpy())
    part = (
        np.concatenate(idx_all) if idx_all else np.zeros(0, int),
        np.concatenate(p_all) if p_all else np.zeros((0, NUM_CLASSES), np.float32),
    )
    parts = [part]
    if dist.is_available() and dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, part)
    out = np.zeros((n, NUM_CLASSES), np.float32)
    for idx, p in parts:
        out[idx] = p
    model.train()
    return out


def _save_curve(history: list[dict[str, Any]], path: Path) -> None:
    df = pd.DataFrame(history)
    tr = df.dropna(subset=["loss"]) if "loss" in df else df.iloc[:0]
    val: dict[str, list] = {"iter": []}
    if "mean_auc" in df:
        va = df.dropna(subset=["mean_auc"])
        val = {"iter": va["iteration"].tolist(), **{c: va[f"auc_{c}"].tolist() for c in CLASSES}}
        val["mean"] = va["mean_auc"].tolist()
    save_training_curves(path, (tr["iteration"].tolist(), tr["loss"].tolist() if len(tr) else []), val, "val AUC")


def _write_metrics(history: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    pd.DataFrame(history).to_csv(buf, index=False)
    atomic_write_bytes(path, buf.getvalue().encode())


def _file_logger(path: Path) -> logging.Handler:
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("gating").addHandler(h)
    return h


def train_classifier(
    cfg: dict[str, Any],
    work: str | os.PathLike,
    work_dir: str | os.PathLike,
    fold: int | str = 0,
    resume: bool = False,
    amp: bool = False,
    launcher: str = "none",
    device: str | None = None,
    stop_at: int | None = None,
    config_text: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train (or resume) the slice classifier of one fold; see the module docstring for what is written.

    Args:
        cfg: the config as a dict (``mmengine.Config.to_dict()`` or hand-made), merged over :data:`DEFAULTS`.
        work: WORK folder of data_prep.
        work_dir: run folder of this fold.
        fold: fold index, or ``"all"`` (train on every fold's training slices, no validation).
        resume: continue from ``{work_dir}/last.pth`` (model, optimizer, scheduler, scaler, iteration, RNG).
        amp: mixed precision (``torch.autocast`` + ``GradScaler``) when CUDA is used; ignored on CPU.
        launcher: ``none``, ``pytorch`` (torchrun) or ``slurm``.
        device: ``"cpu"`` / ``"cuda"``; default CUDA when available.
        stop_at: stop after this iteration (the schedule still spans ``max_iters``): run a long schedule in
            pieces, each piece started with ``resume``.
        config_text: the config file's text, saved as ``{work_dir}/config.py``.
        progress: show a tqdm bar (rank 0).

    Returns:
        ``{"iteration", "best_score", "best_iteration", "last_val"}``.

    Raises:
        FileNotFoundError: WORK files, ``last.pth`` on resume, or pretrained weights are missing.
        ValueError: a bad config, or ``work_dir`` holds a run and neither ``resume`` nor a fresh folder was given.
    """
    c = merge_defaults(cfg)
    mcfg, dcfg, ocfg, scfg = c["model"], c["data"], c["optim"], c["schedule"]
    work, work_dir = Path(work), Path(work_dir)
    last_path, best_path = work_dir / "last.pth", work_dir / "best.pth"
    if resume and not last_path.is_file():
        raise FileNotFoundError(f"cannot resume: {last_path} does not exist (train without --resume first)")
    if not resume and last_path.exists():
        raise ValueError(f"{work_dir} already holds a run (last.pth): pass --resume, or choose another --work-dir")

    rank, world = setup_distributed(launcher)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count()))
    use_amp = bool(amp) and dev.type == "cuda"
    if amp and not use_amp:
        logger.warning("--amp ignored: mixed precision is used on CUDA only")
    main = is_main_process()
    handler = None
    if main:
        work_dir.mkdir(parents=True, exist_ok=True)
        handler = _file_logger(work_dir / "train.log")
        if config_text is not None:
            atomic_write_bytes(work_dir / "config.py", config_text.encode())
    try:
        seed = int(c["seed"])
        seed_everything(seed + rank)
        table = read_slice_table(work)
        train_ids, val_ids = fold_ids(work, fold)
        img_size = tuple(int(v) for v in dcfg["img_size"])
        ch, stride = int(dcfg["channels"]), int(dcfg["stride"])
        train_ds = SliceStackDataset(work, train_ids, ch, stride, img_size, aug=dcfg["aug"] or None, table=table)
        val_ds = SliceStackDataset(work, val_ids, ch, stride, img_size, aug=None, table=table) if val_ids else None
        logger.info(
            "fold %s: %d training slices, %d val slices, %d process(es), device %s",
            fold,
            len(train_ds),
            len(val_ids),
            world,
            dev,
        )

        model = build_classifier(mcfg["name"], in_chans=ch, pretrained=mcfg["pretrained"], **mcfg["kwargs"]).to(dev)
        meta = {
            "model": mcfg["name"],
            "model_kwargs": dict(mcfg["kwargs"]),
            "channels": ch,
            "stride": stride,
            "img_size": list(img_size),
            "classes": list(CLASSES),
            "fold": str(fold),
        }
        optimizer = torch.optim.AdamW(model.parameters(), lr=ocfg["lr"], weight_decay=ocfg["weight_decay"])
        max_iters = int(scfg["max_iters"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(int(scfg["warmup_iters"]), max_iters, float(scfg["min_lr_ratio"]))
        )
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        start, best_score, best_iter, history = 0, -math.inf, -1, []
        resume_rng: dict[str, list[Any]] = {}
        if resume:
            ck = load_trusted(last_path)
            model.load_state_dict(ck["state_dict"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            scaler.load_state_dict(ck["scaler"])
            start, best_score, best_iter = int(ck["iteration"]), float(ck["best_score"]), int(ck["best_iteration"])
            history = list(ck["history"])
            resume_rng = ck.get("rng", {})
            logger.info("resumed from %s at iteration %d (best mean AUC %.4f)", last_path, start, best_score)
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None
            )

        dsampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        bs = int(dcfg["batch_size"])
        nw = int(dcfg["num_workers"])
        train_loader = DataLoader(
            train_ds,
            batch_sampler=ResumableBatchSampler(dsampler, bs, start, seed),
            num_workers=nw,
            pin_memory=dev.type == "cuda",
            persistent_workers=False,
        )
        val_loader = None
        if val_ds is not None:
            vs = list(range(rank, len(val_ds), world))
            val_loader = DataLoader(
                torch.utils.data.Subset(val_ds, vs) if world > 1 else val_ds,
                batch_size=int(dcfg["val_batch_size"]),
                shuffle=False,
                num_workers=nw,
            )
        criterion = torch.nn.BCEWithLogitsLoss()

        def rng_states() -> dict[str, list[Any]]:
            mine = (torch.get_rng_state(), np.random.get_state(), random.getstate())
            alls = [mine]
            if world > 1:
                alls = [None] * world
                dist.all_gather_object(alls, mine)
            return {"torch": [a[0] for a in alls], "numpy": [a[1] for a in alls], "python": [a[2] for a in alls]}

        def save_last(it: int) -> None:
            states = rng_states()
            if main:
                atomic_torch_save(
                    {
                        "state_dict": _unwrap(model).state_dict(),
                        "meta": {**meta, "iteration": it},
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "iteration": it,
                        "best_score": best_score,
                        "best_iteration": best_iter,
                        "history": history,
                        "rng": states,
                    },
                    last_path,
                )

        def save_best(it: int) -> None:
            atomic_torch_save({"state_dict": _unwrap(model).state_dict(), "meta": {**meta, "iteration": it}}, best_path)

        end = max_iters if stop_at is None else min(max_iters, int(stop_at))
        bar = None
        if progress and main:
            from tqdm import tqdm

            bar = tqdm(total=end, initial=start, desc=f"classifier fold {fold}", unit="it")
        model.train()
        it = start
        last_val: dict[str, float] = {}
        t0, seen = time.time(), 0
        loader_iter = iter(train_loader) if start < end else None
        if rank < len(resume_rng.get("torch", [])):
            # restored after iter(train_loader), which draws from the torch RNG: the resumed run then draws the
            # same dropout masks as an uninterrupted run from here on (tests/robustness/test_training_kill.py)
            torch.set_rng_state(resume_rng["torch"][rank])
            np.random.set_state(resume_rng["numpy"][rank])
            random.setstate(resume_rng["python"][rank])
        while it < end:
            x, y, _ = next(loader_iter)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.autocast("cuda", enabled=use_amp):
                logits = model(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if ocfg["grad_clip"]:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(ocfg["grad_clip"]))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            it += 1
            seen += x.shape[0]
            if bar is not None:
                bar.update(1)
            if it % int(scfg["log_interval"]) == 0 or it == end:
                lr = optimizer.param_groups[0]["lr"]
                rate = seen * world / max(1e-9, time.time() - t0)
                history.append({"iteration": it, "loss": float(loss.item()), "lr": lr})
                if main:
                    logger.info("iter %d/%d loss %.4f lr %.2e %.1f slices/s", it, max_iters, loss.item(), lr, rate)
            is_val = val_loader is not None and (it % int(scfg["val_interval"]) == 0 or it == max_iters)
            if is_val:
                probs = _predict(model, val_loader, dev, use_amp, len(val_ds))
                if main:
                    last_val = classification_metrics(probs, val_ds.targets)
                    history.append({"iteration": it, **last_val})
                    logger.info(
                        "val iter %d: mean AUC %.4f mean F1 %.4f | %s",
                        it,
                        last_val["mean_auc"],
                        last_val["mean_f1"],
                        " ".join(f"{c} AUC {last_val[f'auc_{c}']:.3f} F1 {last_val[f'f1_{c}']:.3f}" for c in CLASSES),
                    )
                    score = last_val["mean_auc"]
                    if not math.isnan(score) and score > best_score:
                        best_score, best_iter = score, it
                        save_best(it)
                        write_cls_probs(work_dir / "oof" / "cls_probs.csv", val_ds.ids, probs)
                        logger.info("new best mean AUC %.4f at iteration %d: %s", score, it, best_path)
                if world > 1:
                    obj = [best_score, best_iter]
                    dist.broadcast_object_list(obj, src=0)
                    best_score, best_iter = obj
            if it % int(scfg["ckpt_interval"]) == 0 or it == end:
                if val_loader is None and main:
                    save_best(it)
                save_last(it)
                if main:
                    _write_metrics(history, work_dir / "metrics.csv")
                    _save_curve(history, work_dir / "curve.png")
        if bar is not None:
            bar.close()
        if val_loader is not None and main and not best_path.exists():
            save_best(it)  # no val yet (stopped early): keep the current weights as best for now
        if world > 1:
            dist.barrier()
        return {"iteration": it, "best_score": best_score, "best_iteration": best_iter, "last_val": last_val}
    finally:
        if handler is not None:
            logging.getLogger("gating").removeHandler(handler)
            handler.close()
