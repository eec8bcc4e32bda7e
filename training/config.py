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
  (``LoadGIStack``, the classifier's dataset), and ``channels`` times the image channels of ``dataset_info`` -> the
  model's input channels (``model.backbone.in_channels`` or ``model.in_channels``);
- ``norm``, ``resample``: the 3D models' volume normalisation and resampling (in-plane to a size or a pixel
  spacing, or to a target spacing ``(sz, sy, sx)`` in all three axes: :func:`segmenters.monai.volumes.resample_plan`)
  -> every dataset that has the key, so that training, validation and inference preprocess alike;
- ``num_classes``: the classes the model predicts (None, the default: as many as the WORK's ``dataset.json`` lists;
  :func:`data_prep.work.read_dataset`, the Kaggle classes without one) -> ``model.decode_head.num_classes``,
  ``model.auxiliary_head.num_classes``, the classifier's ``model.num_classes`` and the 3D net's
  ``model.net.out_channels``, and the class names -> every evaluator that has a ``classes`` key;
- ``dataset_info``: what the model is trained on or predicts, ``{"classes": [...], "label_kind": ..., "channels":
  [...]}`` (:func:`dataset_summary`); None, the default, reads it from the WORK's ``dataset.json``. Inference
  loaders set it from the checkpoint's ``meta["dataset"]`` (which the training engine writes into every
  checkpoint). Its image channels (modalities) ``K`` set the input channels: ``stack.channels x K`` planes for the
  2.5D models and the classifier (modality-major: channel 0's stack, then channel 1's), ``K`` for the 3D net
  (``model.net.in_channels``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data_prep.constants import default_work_dir
from data_prep.dataset import DatasetInfo
from data_prep.work import read_dataset

SHORTCUTS = (
    "work",
    "fold",
    "split_variant",
    "img_size",
    "stack",
    "boxes",
    "norm",
    "resample",
    "num_classes",
    "dataset_info",
)
#: Key of :func:`dataset_summary` in the ``meta`` of every checkpoint the training engine writes.
DATASET_META_KEY = "dataset"
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


def dataset_summary(info: DatasetInfo) -> dict[str, Any]:
    """What a model trained on ``info`` predicts, as plain data: ``{"classes": [...], "label_kind": ...,
    "channels": [...]}`` (the ``dataset_info`` shortcut, ``meta["dataset"]`` of a checkpoint).

    >>> dataset_summary(DatasetInfo(classes=("a", "b"), label_kind="exclusive", channels=("T1", "T2")))
    {'classes': ['a', 'b'], 'label_kind': 'exclusive', 'channels': ['T1', 'T2']}
    """
    return {"classes": list(info.classes), "label_kind": info.label_kind, "channels": list(info.channels)}


def check_dataset_summary(summary: Any, where: str) -> dict[str, Any]:
    """A :func:`dataset_summary` dict, checked (class names, label kind, channels) and normalised.

    Raises:
        ValueError: not a dict with ``classes``, or an invalid value (``where`` names its source).
    """
    if not isinstance(summary, Mapping) or not summary.get("classes"):
        raise ValueError(
            f"{where}: expected {{'classes': [...], 'label_kind': ..., 'channels': [...]}}, got {summary!r}"
        )
    try:
        info = DatasetInfo(
            classes=tuple(str(c) for c in summary["classes"]),
            label_kind=str(summary.get("label_kind", "overlapping")),
            channels=tuple(str(c) for c in summary.get("channels") or ("MR",)),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid dataset description ({e})") from None
    return dataset_summary(info)


def _heads(model: Any) -> list[Any]:
    out = []
    for key in ("decode_head", "auxiliary_head"):
        head = model.get(key)
        out += list(head) if isinstance(head, (list, tuple)) else [head] if head else []
    return out


def apply_shortcuts(cfg: Any) -> Any:
    """Copy the top-level shortcut keys into datasets, pipelines, evaluators and the model (in place; returns
    ``cfg``). See the module docstring for where each one goes.

    Raises:
        ValueError: an invalid ``dataset_info``, or an invalid ``dataset.json`` in the WORK folder.
    """
    work = cfg.get("work") or str(default_work_dir())
    cfg["work"] = str(work)
    if cfg.get("dataset_info") is None:
        summary = dataset_summary(read_dataset(work))
    else:
        summary = check_dataset_summary(cfg["dataset_info"], "dataset_info")
    cfg["dataset_info"] = summary
    num_classes = int(cfg.get("num_classes") or len(summary["classes"]))
    image_channels = len(summary["channels"])
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
            if "classes" in e and num_classes == len(summary["classes"]):
                e["classes"] = list(summary["classes"])
    model = cfg.get("model") or {}
    for head in _heads(model):
        head["num_classes"] = num_classes
    if "num_classes" in model:
        model["num_classes"] = num_classes
    if isinstance(model.get("net"), Mapping):
        model["net"]["out_channels"] = num_classes
        model["net"]["in_channels"] = image_channels
    if stack.get("channels"):
        planes = int(stack["channels"]) * image_channels
        if model.get("backbone") is not None:
            model["backbone"]["in_channels"] = planes
        elif "in_channels" in model:
            model["in_channels"] = planes
    return cfg


def model_classes(cfg: Any) -> tuple[str, ...]:
    """The class names a loaded config's model predicts (its ``dataset_info``), checked against ``num_classes``.

    Raises:
        ValueError: the config's explicit ``num_classes`` differs from the number of classes of its
            ``dataset_info`` (the message names both).
    """
    summary = cfg.get("dataset_info") or dataset_summary(read_dataset(cfg.get("work") or default_work_dir()))
    classes = tuple(summary["classes"])
    explicit = cfg.get("num_classes")
    if explicit is not None and int(explicit) != len(classes):
        raise ValueError(
            f"{cfg.get('filename') or 'the config'} says num_classes={int(explicit)} but the dataset it is used with "
            f"has {len(classes)} classes {list(classes)}: set num_classes=None (the count then comes from "
            "WORK/dataset.json or the checkpoint) or use a matching WORK / checkpoint"
        )
    return classes


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
        **overrides: top-level keys (``work``, ``fold``, ``split_variant``, ``num_classes``, ``dataset_info``,
            ...).

    Raises:
        FileNotFoundError: the config file does not exist.
        ValueError: an invalid ``dataset_info`` or ``WORK/dataset.json``.
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


def config_for_checkpoint(
    config: str | os.PathLike | Any,
    checkpoint: str | os.PathLike,
    cfg_options: Mapping[str, Any] | None = None,
) -> Any:
    """The config to build the model of ``checkpoint`` with (the inference loaders use it).

    A path is loaded with :func:`load_config` (``cfg_options`` merged); a loaded mmengine ``Config`` is used as it is
    (copied only when the checkpoint's classes are not its ``dataset_info``). When
    the checkpoint records what it predicts (``meta["dataset"]``, written by the training engine), that becomes the
    config's ``dataset_info``, so a config whose ``num_classes`` is None builds the head the checkpoint was trained
    with (and its input channels), whatever WORK the config names. Checkpoints without it (older runs, bare state
    dicts) keep the config's own ``dataset_info`` (its WORK's, the Kaggle classes without one).

    Raises:
        FileNotFoundError: config or checkpoint missing.
        ValueError: the config's explicit ``num_classes`` differs from the checkpoint's classes (both named); an
            unreadable checkpoint.
    """
    from training.checks import checkpoint_meta

    source = str(getattr(config, "filename", None) or "the given config") if hasattr(config, "model") else str(config)
    stored = checkpoint_meta(checkpoint).get(DATASET_META_KEY)
    stored = check_dataset_summary(stored, f"{checkpoint} meta['dataset']") if stored is not None else None
    if hasattr(config, "model"):
        cfg = config
        current = cfg.get("dataset_info")
        current = check_dataset_summary(current, source) if current is not None else None
        if stored is not None and stored != current:
            cfg = copy.deepcopy(config)
            cfg["dataset_info"] = stored
            apply_shortcuts(cfg)
    else:
        cfg = load_config(config, cfg_options, dataset_info=stored)
    explicit = cfg.get("num_classes")
    if stored is not None and explicit is not None and int(explicit) != len(stored["classes"]):
        raise ValueError(
            f"{source} says num_classes={int(explicit)}, but {checkpoint} was trained on {len(stored['classes'])} "
            f"classes {stored['classes']}: set num_classes=None (the checkpoint then decides) or pass the config it "
            "was trained with"
        )
    model_classes(cfg)
    return cfg
