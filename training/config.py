"""Load an ``mmcfg/`` config (any model kind) and apply its top-level shortcuts.

Every config of the project uses mmengine's key vocabulary (``model``, ``train_dataloader``, ``val_dataloader``,
``val_evaluator``, ``optim_wrapper``, ``param_scheduler``, ``train_cfg``, ``val_cfg``, ``default_hooks``,
``custom_hooks``, ``visualizer``, ``randomness``) plus a few top-level shortcuts that :func:`load_config` copies into
every place that takes them, so that one ``--cfg-options`` value changes them all:

- ``work``: data_prep's WORK folder (None: ``--work``, else ``$GITRACT_WORK``, else ``work/``) -> every dataset and
  every evaluator that has a ``work`` key;
- ``fold`` -> every dataset; ``split_variant`` -> the training dataset's ``variant`` (val is never filtered);
- ``boxes``: optional crop-box CSV -> every dataset;
- ``img_size``: ``(H, W)`` of the network input -> ``GIResize`` transforms and datasets with an ``img_size`` key;
- ``stack``: ``dict(stride, channels, norm)`` -> the keys of it that a dataset or pipeline transform already has
  (``LoadGIStack``, the classifier's dataset), and ``channels`` -> the model's input channels
  (``model.backbone.in_channels`` or ``model.in_channels``);
- ``norm``, ``resample``: the 3D models' volume normalisation and in-plane resampling
  (:func:`segmenters.monai.volumes.preprocess_image`) -> every dataset that has the key, so that training,
  validation and inference preprocess alike.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data_prep.constants import default_work_dir

SHORTCUTS = ("work", "fold", "split_variant", "img_size", "stack", "boxes", "norm", "resample")
DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
EVALUATORS = ("val_evaluator", "test_evaluator")


def config_name(config: str | os.PathLike) -> str:
    """The config's file stem, used for work dirs (``work_dirs/{name}/fold_{k}``)."""
    return Path(config).stem


def _datasets(cfg: Any) -> list[tuple[str, Any]]:
    out = []
    for key in DATALOADERS:
        loader = cfg.get(key)
        if loader and loader.get("dataset"):
            out.append((key, loader["dataset"]))
    return out


def _update_present(target: Any, values: Mapping[str, Any]) -> None:
    for k, v in values.items():
        if k in target:
            target[k] = v


def apply_shortcuts(cfg: Any) -> Any:
    """Copy the top-level shortcut keys into datasets, pipelines, evaluators and the model (in place; returns
    ``cfg``). See the module docstring for where each one goes."""
    work = cfg.get("work") or str(default_work_dir())
    cfg["work"] = str(work)
    stack = dict(cfg.get("stack") or {})
    img_size = cfg.get("img_size")
    for key, ds in _datasets(cfg):
        ds["work"] = str(work)
        if "fold" in cfg:
            ds["fold"] = cfg["fold"]
        if key == "train_dataloader" and cfg.get("split_variant"):
            ds["variant"] = cfg["split_variant"]
        if "boxes" in cfg:
            ds["boxes"] = cfg["boxes"]
        if img_size is not None and "img_size" in ds:
            ds["img_size"] = tuple(img_size)
        _update_present(ds, {k: copy.deepcopy(cfg[k]) for k in ("norm", "resample") if cfg.get(k) is not None})
        _update_present(ds, stack)
        for t in ds.get("pipeline", []) or []:
            _update_present(t, stack)
            if t.get("type") == "GIResize" and img_size is not None:
                t["size"] = tuple(img_size)
    for key in EVALUATORS:
        ev = cfg.get(key)
        for e in ev if isinstance(ev, list) else [ev] if ev else []:
            if "work" in e:
                e["work"] = str(work)
    model = cfg.get("model") or {}
    if stack.get("channels"):
        if model.get("backbone") is not None:
            model["backbone"]["in_channels"] = int(stack["channels"])
        elif "in_channels" in model:
            model["in_channels"] = int(stack["channels"])
    return cfg


def load_config(
    config: str | os.PathLike,
    cfg_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    """Read a config, merge ``cfg_options`` then ``overrides`` (None values ignored), apply the shortcuts.

    The config's ``custom_imports`` (its kind's registered modules) are imported while it is read.

    Args:
        config: path of an ``mmcfg/`` config.
        cfg_options: ``--cfg-options`` style dotted keys.
        **overrides: top-level keys (``work``, ``fold``, ``split_variant``, ...).

    Raises:
        FileNotFoundError: the config file does not exist.
    """
    from mmengine.config import Config

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path} (configs live in mmcfg/, e.g. mmcfg/unet/...)")
    cfg = Config.fromfile(str(path))
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    for k, v in overrides.items():
        if v is not None:
            cfg[k] = v
    return apply_shortcuts(cfg)


def parse_cfg_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=(1,2)"]`` -> dict, values parsed as mmengine's ``DictAction`` does.

    Raises:
        ValueError: an entry without ``=``.
    """
    if not items:
        return {}
    from mmengine.config import DictAction

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--cfg-options entries must be key=value, got {item!r}")
        key, val = item.split("=", 1)
        out[key] = DictAction._parse_iterable(val)
    return out


def strip_pretrained(model_cfg: Any) -> Any:
    """Drop pretrained paths from a model config (inference: the weights come from the checkpoint)."""
    backbone = model_cfg.get("backbone") or {}
    if "pretrained" in backbone:
        backbone["pretrained"] = None
    if backbone.get("init_cfg"):
        backbone["init_cfg"] = None
    if "pretrained" in model_cfg:
        model_cfg["pretrained"] = None
    return model_cfg


def build_model(config: str | os.PathLike | Any, cfg_options: Mapping[str, Any] | None = None) -> Any:
    """The freshly initialised model of a config of any kind (2.5D, classifier, 3D), without pretrained weights.

    The config's registered modules are imported and its default scope set (``mmseg`` for the 2.5D models, the
    root registries otherwise). Inference loaders build with it and then load a checkpoint's weights.

    Args:
        config: a config path, or a loaded ``mmengine.Config``.
        cfg_options: overrides (path only).
    """
    from mmengine.registry import MODELS, init_default_scope

    cfg = config if hasattr(config, "model") else load_config(config, cfg_options)
    init_default_scope(cfg.get("default_scope") or "mmengine")
    model_cfg = cfg.model.copy() if hasattr(cfg.model, "copy") else dict(cfg.model)
    return MODELS.build(strip_pretrained(model_cfg))
