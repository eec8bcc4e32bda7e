"""Train the ultralytics YOLO crop detector on data_prep's YOLO export, offline.

The export (``python -m data_prep export yolo --work WORK --fold K``) writes
``WORK/exports/yolo/data.yaml`` with ``images/{train,val}`` and ``labels/{train,val}``. The model is built
from a model YAML (``yolov8n.yaml`` by default, shipped inside ultralytics); pretrained weights come only from
a local ``.pt``. ``YOLO_OFFLINE=1`` and the ultralytics / matplotlib settings folders are put inside the run
folder before ultralytics is imported, so nothing is fetched and no per-user settings file is written.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from data_prep.constants import REPO_ROOT
from data_prep.exports import YOLO_EXPORT_HINT, export_yolo
from data_prep.work import n_folds_of, parse_folds, read_splits

logger = logging.getLogger(__name__)

__all__ = ["parse_overrides", "train_detector", "train_detector_folds"]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings into a dict, values parsed as YAML, keys checked against ultralytics' defaults.

    Raises:
        ValueError: a malformed item or an unknown key (close matches are named).
    """
    if not items:
        return {}
    from gating.crop import yolo_offline_env

    yolo_offline_env(None)  # before the first ultralytics import: offline, no per-user settings file
    from ultralytics.cfg import DEFAULT_CFG_DICT

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"overrides are key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in DEFAULT_CFG_DICT:
            close = difflib.get_close_matches(key, list(DEFAULT_CFG_DICT), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"{key!r} is not an ultralytics training argument{hint}")
        out[key] = yaml.safe_load(value)
    return out


def _set_run_env(run_dir: Path) -> None:
    os.environ["YOLO_OFFLINE"] = "1"
    if "ultralytics" in sys.modules:
        logger.debug("ultralytics already imported: its settings folder stays %s", os.environ.get("YOLO_CONFIG_DIR"))
    else:
        os.environ["YOLO_CONFIG_DIR"] = str(run_dir / ".ultralytics")
    os.environ["MPLCONFIGDIR"] = str(run_dir / ".matplotlib")
    for key in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR"):
        if os.environ.get(key):
            Path(os.environ[key]).mkdir(parents=True, exist_ok=True)


def _check_run_dir(out_dir: Path, resume: bool, overwrite: bool) -> Path:
    """The run folder may be trained into (``resume`` needs ``last.pt``; a finished run needs ``overwrite``);
    returns the path of ``last.pt``."""
    last = out_dir / "weights" / "last.pt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"cannot resume: {last} does not exist")
    if not resume and (out_dir / "weights" / "best.pt").exists() and not overwrite:
        raise ValueError(f"{out_dir} already holds a trained detector; pass --overwrite or --resume")
    return last


def train_detector(
    data_yaml: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: str = "yolov8n.yaml",
    weights: str | os.PathLike | None = None,
    imgsz: int = 384,
    epochs: int = 30,
    batch: int = 32,
    device: str | None = None,
    workers: int = 4,
    seed: int = 42,
    amp: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Train a YOLO detector and return the path of its ``best.pt``.

    Args:
        data_yaml: the export's ``data.yaml`` (:func:`data_prep.exports.export_yolo` returns its path).
        out_dir: run folder; ultralytics writes ``weights/{best,last}.pt``, ``results.csv`` and plots there.
        model: a model YAML (``yolov8n.yaml``, ``yolo11s.yaml``, or a path); never a ``.pt`` name.
        weights: optional local ``.pt`` whose matching weights are loaded before training.
        imgsz, epochs, batch, workers, seed, amp: ultralytics training arguments.
        device: ``"cpu"``, ``"0"``, ``"0,1"``; None picks CUDA when available.
        resume: continue ``out_dir/weights/last.pt``.
        overwrite: allow training into a folder that already holds ``weights/best.pt``.
        overrides: further ultralytics arguments (see :func:`parse_overrides`).

    Raises:
        FileNotFoundError: ``data_yaml``, ``weights`` or (with ``resume``) ``last.pt`` is missing.
        ValueError: ``model`` names a ``.pt`` file, or ``out_dir`` holds a finished run without ``overwrite``.
    """
    data_yaml = Path(data_yaml).resolve()
    out_dir = Path(out_dir).resolve()
    if not data_yaml.is_file():
        raise FileNotFoundError(
            f"YOLO dataset YAML not found: {data_yaml}; make it with `{YOLO_EXPORT_HINT.format(work='WORK', fold='K')}`"
        )
    if str(model).endswith(".pt"):
        raise ValueError(
            f"model must be a model YAML such as 'yolov8n.yaml' (a .pt name would be downloaded), got {model!r}; "
            "pass local pretrained weights with weights=PATH"
        )
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"pretrained detector weights not found: {weights} (local files only)")
    last = _check_run_dir(out_dir, resume, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    _set_run_env(out_dir)
    if device is None:
        import torch

        device = "0" if torch.cuda.is_available() else "cpu"

    from ultralytics import YOLO

    if resume:
        yolo = YOLO(str(last))
        yolo.train(resume=True)
    else:
        from unittest import mock

        import ultralytics.nn.tasks as yolo_tasks

        # a given .pt (model or pretrained weights) is read against ultralytics' allow-list: no code runs
        with mock.patch.object(yolo_tasks, "SAFE_LOAD", True):
            yolo = YOLO(str(model), task="detect")
            if weights is not None:
                yolo.load(str(weights))
        args = dict(
            data=str(data_yaml),
            imgsz=imgsz,
            epochs=epochs,
            batch=batch,
            device=device,
            workers=workers,
            seed=seed,
            amp=amp,
            project=str(out_dir.parent),
            name=out_dir.name,
            exist_ok=True,
            plots=True,
            verbose=False,
        )
        args.update(overrides or {})
        yolo.train(**args)
    trainer = getattr(yolo, "trainer", None)
    best = Path(trainer.best) if trainer is not None and getattr(trainer, "best", None) else out_dir / "weights/best.pt"
    if not best.is_file():
        best = last
    logger.info("detector weights: %s", best)
    return best


def train_detector_folds(
    work: str | os.PathLike,
    fold: int | str = 0,
    work_dir: str | os.PathLike | None = None,
    model: str = "yolov8n.yaml",
    step: int = 1,
    **kwargs: Any,
) -> list[Path]:
    """Train the detector of fold ``K``, or of every fold in turn (``"all"``), each on its own YOLO export.

    ``--fold K|all`` means what it means for every trainer of the project. The export of each fold
    (``WORK/exports/yolo``, :func:`data_prep.exports.export_yolo`) is made or replaced first when it is missing
    or was made for another fold: it is derived data that only this step reads.

    Args:
        work: the WORK folder.
        fold: ``K`` or ``"all"``.
        work_dir: run folder (default ``work_dirs/yolo_{model}/fold_{k}``; with ``"all"``: ``{work_dir}/fold_{k}``).
        model: model YAML.
        step: export every ``step``-th slice.
        **kwargs: :func:`train_detector` arguments.

    Returns:
        The ``best.pt`` of every fold trained.
    """
    folds = parse_folds(fold, n_folds_of(read_splits(work)))
    if work_dir is None:
        dirs = [REPO_ROOT / "work_dirs" / f"yolo_{Path(model).stem}" / f"fold_{k}" for k in folds]
    else:
        dirs = [Path(work_dir) / f"fold_{k}" if len(folds) > 1 else Path(work_dir) for k in folds]
    for wd in dirs:  # every run folder is checked before any export or training
        _check_run_dir(wd.resolve(), kwargs.get("resume", False), kwargs.get("overwrite", False))
    out = []
    for k, wd in zip(folds, dirs):
        data = export_yolo(work, fold=k, overwrite=True, step=step)
        logger.info("fold %d: detector -> %s", k, wd)
        out.append(train_detector(data, wd, model=model, **kwargs))
    return out
