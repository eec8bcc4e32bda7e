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
