"""Checks of user input made before any model is built or trained, each with a clear error.

No mmseg import here: these run first, so that a bad backbone name, pretrained path or checkpoint is reported in
one sentence instead of a stack trace from deep inside mmengine (WORK folders and folds: :mod:`data_prep.work`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class CheckpointMismatchError(ValueError):
    """A checkpoint made by another config than the one given."""


class DatasetMismatchError(ValueError):
    """A model applied to a dataset of other classes (or another number of image channels) than it was trained on."""


def checkpoint_meta(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` dict of a checkpoint (read with ``weights_only=True``, memory-mapped: the weights are not read);
    ``{}`` for a bare state dict or a checkpoint without one.

    Raises:
        FileNotFoundError: no such file. ValueError: not readable with ``weights_only=True`` (the file is named).
    """
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. Weights are read from local files only; nothing is downloaded."
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(
            f"cannot load {path} with weights_only=True ({type(e).__name__}: {e}); only trusted files may be "
            "unpickled, and model weights never need it"
        ) from e
    meta = raw.get("meta") if isinstance(raw, dict) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def check_dataset_matches(
    predicts: Mapping[str, Any], classes: Iterable[str], channels: int, model: str, dataset: str
) -> None:
    """Refuse a model for a dataset of other classes (names and order) or another number of image channels.

    Args:
        predicts: what the model predicts (``training.config.dataset_summary``: ``classes``, ``channels``).
        classes: the dataset's class names in order (``DatasetInfo.classes``).
        channels: the dataset's number of image channels.
        model, dataset: names for the message (the checkpoint; ``WORK/dataset.json``).

    Raises:
        DatasetMismatchError: (a ValueError) naming both class lists, or both channel counts.
    """
    mine, theirs = [str(c) for c in predicts["classes"]], [str(c) for c in classes]
    if mine != theirs:
        raise DatasetMismatchError(
            f"{model} was trained on the classes {mine}, but {dataset} lists the classes {theirs} (in this order): "
            "use a model trained on this dataset"
        )
    trained = len(predicts.get("channels") or [None])
    if trained != int(channels):
        raise DatasetMismatchError(
            f"{model} was trained on {trained} image channel(s) {list(predicts.get('channels') or [])}, but "
            f"{dataset} has {int(channels)}: use a model trained on this dataset"
        )


def check_timm_name(name: str) -> str:
    """Check that timm knows ``name``; otherwise answer with close timm model names.

    Raises:
        ValueError: unknown name (the message lists close matches from ``timm.list_models()``).
    """
    import timm

    if timm.is_model(name):
        return name
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f" Close timm names: {', '.join(close)}." if close else " See timm.list_models('*pattern*')."
    raise ValueError(f"unknown timm backbone {name!r}.{hint}")


def _walk(obj: Any, path: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, obj


def check_model_cfg(model_cfg: Mapping[str, Any]) -> None:
    """Check a model config before building it: timm backbone names, and that every pretrained path exists.

    Looks at every ``model_name`` (timm backbones of the 2.5D models, the slice classifier's timm model) and at
    every ``pretrained`` / ``checkpoint`` / ``checkpoint_path`` value that is a non-empty string.

    Raises:
        ValueError: unknown timm backbone.
        FileNotFoundError: a pretrained file that does not exist (weights are never downloaded).
    """
    for key, value in _walk(model_cfg, "model"):
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "model_name" and isinstance(value, str):
            check_timm_name(value)
        if leaf in ("pretrained", "checkpoint", "checkpoint_path") and isinstance(value, str) and value:
            if "://" in value:
                raise ValueError(
                    f"{key} = {value!r} is a URL; weights are read from local files only. Download it yourself "
                    "and give the local path."
                )
            if not Path(value).expanduser().is_file():
                raise FileNotFoundError(
                    f"pretrained weights not found: {value} (config key {key}). Give an existing local file, "
                    f"or pretrained=None to train from scratch; nothing is downloaded."
                )


def volume_channels(volume: Any, channels: int, what: str = "volume") -> list[Any]:
    """The image channels of one case-day volume, as a list of ``channels`` arrays ``(D, H, W)``.

    Args:
        volume: ``(D, H, W)`` (one image channel), ``(K, D, H, W)``, or a sequence of ``K`` ``(D, H, W)`` arrays of
            one shape (memory maps are kept as they are: nothing is read here).
        channels: ``K``, the image channels the model was trained on.
        what: names the input in errors.

    Raises:
        ValueError: another number of channels, or not ``(D, H, W)`` arrays of one shape.
    """
    import numpy as np

    if isinstance(volume, (list, tuple)):
        parts = [np.asarray(v) if not hasattr(v, "shape") else v for v in volume]
    else:
        arr = volume if hasattr(volume, "shape") else np.asarray(volume)
        if arr.ndim == 3:
            parts = [arr]
        elif arr.ndim == 4:
            parts = [arr[k] for k in range(arr.shape[0])]
        else:
            parts = None
    if parts is None or len(parts) != int(channels) or any(p.ndim != 3 for p in parts):
        got = f"{len(volume)} arrays" if isinstance(volume, (list, tuple)) else f"shape {np.shape(volume)}"
        want = (
            "(D, H, W)" if int(channels) == 1 else f"({int(channels)}, D, H, W) or a list of {int(channels)} (D, H, W)"
        )
        raise ValueError(f"{what} must be {want} for a model of {int(channels)} image channel(s), got {got}")
    if len({tuple(p.shape) for p in parts}) != 1:
        raise ValueError(f"{what}: the image channels differ in shape: {[tuple(p.shape) for p in parts]}")
    return parts


def check_state_dict_matches(
    model_state: Mapping[str, Any], ckpt_state: Mapping[str, Any], checkpoint: str | os.PathLike, config: str
) -> None:
    """Refuse a checkpoint whose weights do not fit the model built from ``config``.

    Keys are compared after stripping a leading ``module.``; a missing or unexpected parameter or a shape
    mismatch means the checkpoint was made by another config.

    Raises:
        CheckpointMismatchError: (a ValueError) names the checkpoint, the config and the first differences.
    """
    ckpt = {k[7:] if k.startswith("module.") else k: v for k, v in ckpt_state.items()}
    missing = [k for k in model_state if k not in ckpt and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in ckpt if k not in model_state]
    shapes = [
        f"{k}: {tuple(ckpt[k].shape)} vs {tuple(v.shape)}"
        for k, v in model_state.items()
        if k in ckpt and hasattr(ckpt[k], "shape") and hasattr(v, "shape") and tuple(ckpt[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[:2]})")
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint} does not match config {config}: " + "; ".join(parts) + ". It was made by "
            "another config; pass the config it was trained with."
        )


def load_checked_weights(model: Any, checkpoint: str | os.PathLike, config: str | os.PathLike) -> Any:
    """Load a checkpoint's weights into ``model`` (``weights_only=True``: no code runs), after checking that they
    fit the model built from ``config`` (:func:`check_state_dict_matches`); a leading ``module.`` (DDP) is dropped.

    Returns:
        ``model``.

    Raises:
        FileNotFoundError: no such checkpoint. CheckpointMismatchError: weights of another config.
    """
    from common.engine import load_weights

    state = load_weights(checkpoint)
    check_state_dict_matches(model.state_dict(), state, checkpoint, str(config))
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
    return model


def timm_pretrained_overlay(path: str | os.PathLike) -> dict[str, Any]:
    """The ``timm.create_model`` keywords that load a local checkpoint: ``pretrained=True`` and a
    ``pretrained_cfg_overlay`` holding its state dict, with every download source cleared (nothing is downloaded).
    timm then adapts the first conv to ``in_chans`` and drops a classifier head of another size.

    Args:
        path: a ``.safetensors`` file (tensors only), or a ``.pth`` / ``.bin`` checkpoint read with
            ``weights_only=True`` (a bare state dict or one under ``state_dict`` / ``model``).

    Raises:
        FileNotFoundError: no such file (named; weights are read from local files only).
        ValueError: a file that cannot be read with ``weights_only=True`` (named).
    """
    from common.engine import load_weights

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights not found: {path}. Weights are read from local files only (nothing is "
            "downloaded): put the timm checkpoint there, or set pretrained=None to start from scratch."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))  # tensors only by design: no code can run
    else:
        state = load_weights(path)  # weights_only=True; a file that would run code is refused, naming it
    overlay = dict(state_dict=state, source="", file=None, url=None, hf_hub_id=None)
    return {"pretrained": True, "pretrained_cfg_overlay": overlay}
