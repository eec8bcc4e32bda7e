"""Train any model kind of the project fold by fold on mmengine's Runner (the library side of ``tools/train.py``,
``tools/train_cls.py`` and ``tools/train_3d.py``).

A fold is one run in its own work dir. ``fold`` is ``K`` (that fold) or ``"all"`` (every fold of the WORK's
``splits.json`` in turn, each in ``{work_dir}/fold_{k}``), the same for the 2.5D segmenters, the slice classifier
and the 3D segmenters. Every check (WORK, fold, split variant, timm names, pretrained files, an existing run)
happens before the first fold trains.

>>> # train("mmcfg/unet/unet_effb0_1xb4-40_gitract-128x128.py", fold="0", work="work")  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_prep.constants import REPO_ROOT
from data_prep.work import check_variant, check_work, n_folds_of, parse_folds, read_dataset, read_splits
from training.checks import check_model_cfg
from training.config import config_name, dataset_summary, load_config, model_classes

logger = logging.getLogger(__name__)

DONE_FILE = "done.json"
DEVICES = ("cpu", "cuda")


#: Runs started by this process (:func:`train_one` names each mmengine experiment with it).
_RUNS = itertools.count()


def default_work_dir(config: str | os.PathLike, fold: int) -> Path:
    """``work_dirs/{config name}/fold_{k}`` under the repository."""
    return REPO_ROOT / "work_dirs" / config_name(config) / f"fold_{fold}"


def has_checkpoints(work_dir: Path) -> bool:
    """True when ``work_dir`` holds checkpoints of an earlier run."""
    return work_dir.is_dir() and (any(work_dir.glob("*.pth")) or (work_dir / "last_checkpoint").exists())


def _clear_run(work_dir: Path) -> None:
    for p in list(work_dir.glob("*.pth")) + [work_dir / "last_checkpoint", work_dir / DONE_FILE]:
        p.unlink(missing_ok=True)


def select_device(device: str | None) -> None:
    """Make ``device`` the one mmengine trains on: ``"cpu"`` hides the GPUs from this process (mmengine places the
    model on CUDA whenever it sees one); ``"cuda"`` requires one; None keeps mmengine's choice.

    Call it before CUDA is first used (tools do it first thing).

    Raises:
        ValueError: unknown device, or ``"cuda"`` without a GPU.
    """
    if device is None:
        return
    if device not in DEVICES:
        raise ValueError(
            f"device must be one of {DEVICES} (mmengine picks the GPU index from LOCAL_RANK), got {device!r}"
        )
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to this process")


def build_train_cfg(
    config: str | os.PathLike,
    fold: int,
    work: str | os.PathLike | None = None,
    split_variant: str | None = None,
    work_dir: str | os.PathLike | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    amp: bool = False,
    resume: bool = False,
    launcher: str = "none",
) -> Any:
    """The checked mmengine config of one fold's run (no model built yet).

    Checks, in order: WORK holds data_prep's output (with masks and splits), the config's classes and image channels
    are the WORK's (``dataset_info``, ``num_classes``: :mod:`training.config`), the split variant, timm names and
    pretrained files.

    Raises:
        FileNotFoundError / ValueError: bad input, with what to do about it.
    """
    cfg = load_config(
        config, cfg_options, work=str(work) if work else None, fold=int(fold), split_variant=split_variant
    )
    check_work(cfg.work, need_masks=True, need_splits=True)
    _check_dataset(cfg)
    check_variant(cfg.get("split_variant", "all"))
    check_model_cfg(cfg.model)
    cfg.work_dir = str(work_dir) if work_dir else str(default_work_dir(config, fold))
    cfg.launcher = launcher
    cfg.resume = bool(resume)
    cfg.overwrite = False
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    _fit_schedule(cfg)
    from common.engine import default_device

    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper" and default_device() != "cuda":
        logger.warning("%s: mixed precision needs CUDA; training in float32 (OptimWrapper)", config_name(config))
        cfg.optim_wrapper.type = "OptimWrapper"
        for key in ("loss_scale", "dtype"):
            cfg.optim_wrapper.pop(key, None)
    return cfg


def _check_dataset(cfg: Any) -> None:
    """The config trains on what its WORK holds: ``dataset_info`` (if given) and ``num_classes`` (if explicit) agree
    with ``WORK/dataset.json``.

    Raises:
        ValueError: naming the config's and the WORK's values.
    """
    work = dataset_summary(read_dataset(cfg.work))
    given = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(cfg.dataset_info).items()}
    if given != work:
        raise ValueError(
            f"{config_name(cfg.filename or 'config')}: dataset_info {given} differs from the WORK's "
            f"{work} ({cfg.work}/dataset.json); leave dataset_info=None to train on the WORK's classes"
        )
    model_classes(cfg)


def _fit_schedule(cfg: Any) -> None:
    """Keep a shortened run valid (``--cfg-options train_cfg.max_iters=N``): a parameter scheduler that would only
    begin at or after the last iteration is dropped (mmengine refuses one whose default end, ``max_iters``, comes
    before its begin), so the ones that do run keep their shape."""
    max_iters = int(cfg.get("train_cfg", {}).get("max_iters", 0) or 0)
    schedulers = cfg.get("param_scheduler")
    if not max_iters or not isinstance(schedulers, list):
        return
    kept = [s for s in schedulers if s.get("by_epoch", True) is True or int(s.get("begin", 0)) < max_iters]
    if len(kept) != len(schedulers):
        logger.info(
            "%d parameter scheduler(s) begin after iteration %d: not used", len(schedulers) - len(kept), max_iters
        )
        cfg.param_scheduler = kept


class SetupError(ValueError):
    """A run that failed before its first training iteration (bad data, config or checkpoint): its message says
    what to fix, and nothing was trained."""


def plan_runs(
    config: str | os.PathLike,
    fold: str | int = 0,
    work: str | os.PathLike | None = None,
    split_variant: str | None = None,
    work_dir: str | os.PathLike | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    amp: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    launcher: str = "none",
) -> list[Any]:
    """Checked configs of every requested fold (arguments as :func:`train`); nothing is built or written.

    Raises:
        FileNotFoundError / ValueError: bad input (WORK, fold, variant, backbone, pretrained path).
        FileExistsError: a work dir holds checkpoints and neither ``resume`` nor ``overwrite`` was given.
    """
    probe = load_config(config, cfg_options, work=str(work) if work else None)
    folds = parse_folds(fold, n_folds_of(read_splits(check_work(probe.work, need_masks=True, need_splits=True))))
    cfgs = []
    for k in folds:
        wd = (Path(work_dir) / f"fold_{k}" if len(folds) > 1 else Path(work_dir)) if work_dir else None
        cfg = build_train_cfg(config, k, work, split_variant, wd, cfg_options, amp, resume, launcher)
        if has_checkpoints(Path(cfg.work_dir)) and not resume and not overwrite:
            raise FileExistsError(
                f"{cfg.work_dir} already holds checkpoints of an earlier run. Pass --resume to continue it or "
                "--overwrite to start over (its checkpoints are deleted)."
            )
        cfg.overwrite = bool(overwrite)
        cfgs.append(cfg)
    return cfgs


def train_one(cfg: Any) -> Path:
    """Run one fold from a config made by :func:`plan_runs`; returns the work dir.

    With ``cfg.overwrite`` the checkpoints of an earlier run in the work dir are deleted first (logs kept). Writes
    ``done.json`` (iterations, seconds, checkpoints) when the run ends.

    Raises:
        SetupError: a ``FileNotFoundError`` or ``ValueError`` (missing export, unknown model key, checkpoint of
            another config, ...) raised before the first iteration completes; later errors propagate as they are.
    """
    from common.engine import is_main_process, setup_distributed
    from common.io import atomic_write_bytes
    from training.runner import GIRunner

    work_dir = Path(cfg.work_dir)
    if has_checkpoints(work_dir) and not cfg.resume and cfg.get("overwrite") and is_main_process():
        _clear_run(work_dir)
    if cfg.launcher != "none":
        setup_distributed(cfg.launcher)  # gloo on CPU before the Runner (it then skips its own init)
    t0 = time.time()
    runner = None
    try:
        if not cfg.get("experiment_name"):
            # mmengine names its logger and visualizer instances `{config}_{timestamp to the second}`: two runs of one
            # config started in the same second in one process (folds, tests) would share them and write into the
            # first run's folder. A counter keeps every run of this process apart and is the same on every rank.
            cfg.experiment_name = f"{config_name(cfg.filename or 'config')}_fold{cfg.fold}_run{next(_RUNS)}"
        runner = GIRunner.from_cfg(cfg)
        runner.train()
    except (FileNotFoundError, ValueError) as e:
        if runner is not None and runner.iterations_done() > 0:
            raise
        raise SetupError(f"{config_name(cfg.filename or 'config')} fold {cfg.fold}: {e}") from e
    if is_main_process():
        last = work_dir / "last_checkpoint"
        summary = dict(
            config=str(cfg.filename),
            fold=int(cfg.fold),
            split_variant=cfg.get("split_variant"),
            iterations=int(runner.iter),
            seconds=round(time.time() - t0, 1),
            last_checkpoint=last.read_text().strip() if last.exists() else None,
            best_checkpoints=sorted(str(p) for p in work_dir.glob("best_*.pth")),
        )
        atomic_write_bytes(work_dir / DONE_FILE, json.dumps(summary, indent=2).encode())
    return work_dir


def train(
    config: str | os.PathLike,
    fold: str | int = 0,
    work: str | os.PathLike | None = None,
    split_variant: str | None = None,
    work_dir: str | os.PathLike | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    amp: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    launcher: str = "none",
) -> list[Path]:
    """Train ``config`` on one fold or on every fold (one after the other); returns the work dirs.

    Args:
        config: an ``mmcfg/`` config of any kind (2.5D, classifier, 3D).
        fold: ``K`` or ``"all"`` (every fold of the WORK's ``splits.json``).
        work: data_prep's WORK folder (default: the config's ``work``, else ``default_work_dir()``).
        split_variant: ``all``, ``notail`` or ``noanno`` (default: the config's).
        work_dir: output folder (default ``work_dirs/{config}/fold_{k}``; with ``fold='all'`` a ``fold_{k}``
            folder is made inside it).
        cfg_options: ``--cfg-options`` dotted keys.
        amp: mixed precision (``AmpOptimWrapper``).
        resume: continue from the newest readable checkpoint of the work dir.
        overwrite: start over in a work dir that has checkpoints.
        launcher: ``none``, ``pytorch`` (torchrun) or ``slurm``.
    """
    cfgs = plan_runs(config, fold, work, split_variant, work_dir, cfg_options, amp, resume, overwrite, launcher)
    return [train_one(cfg) for cfg in cfgs]
