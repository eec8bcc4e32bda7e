"""Load an ``mmcfg/`` config and apply its top-level shortcuts.

Configs of this project carry a few top-level keys that :func:`load_config` copies into every place that
needs them, so that one ``--cfg-options`` value changes them all:

- ``work``: data_prep's WORK folder (None: ``--work``, else ``data_prep.constants.default_work_dir()``);
- ``fold`` and ``split_variant``: the training side (``splits.json``); val is the fold's val side;
- ``img_size``: ``(H, W)`` of the network input (``GIResize`` of every pipeline);
- ``stack``: ``dict(stride, channels, norm)`` of ``LoadGIStack`` (and the backbone's ``in_channels``);
- ``boxes``: optional crop-box CSV for every dataset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_prep.constants import default_work_dir

SHORTCUTS = ("work", "fold", "split_variant", "img_size", "stack", "boxes")


def config_name(config: str | os.PathLike) -> str:
    """The config's file stem, used for work dirs (``work_dirs/{name}/fold_{k}``)."""
    return Path(config).stem


def _datasets(cfg: Any) -> list[tuple[str, Any]]:
    out = []
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(key)
        if loader and loader.get("dataset"):
            out.append((key, loader["dataset"]))
    return out


def apply_shortcuts(cfg: Any) -> Any:
    """Copy the top-level shortcut keys into datasets, pipelines and the backbone (in place; returns ``cfg``)."""
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
        for t in ds.get("pipeline", []):
            if t.get("type") == "LoadGIStack" and stack:
                t.update(stack)
            if t.get("type") == "GIResize" and img_size is not None:
                t["size"] = tuple(img_size)
    if stack.get("channels") and cfg.get("model", {}).get("backbone") is not None:
        cfg.model.backbone["in_channels"] = int(stack["channels"])
    return cfg


def load_config(
    config: str | os.PathLike,
    cfg_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    """Read a config, merge ``cfg_options`` then ``overrides`` (None values ignored), apply the shortcuts.

    Args:
        config: path of an ``mmcfg/`` config.
        cfg_options: ``--cfg-options`` style dotted keys.
        **overrides: top-level keys (``work``, ``fold``, ``split_variant``, ...).

    Raises:
        FileNotFoundError: the config file does not exist.
    """
    from mmengine.config import Config

    import segmenters.mm  # noqa: F401  (compat shim + registrations before the config's custom_imports)

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
