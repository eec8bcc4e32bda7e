"""mmcv-lite compatibility: lets mmseg import when mmcv's compiled ops (``mmcv._ext``) are absent.

``mmcv-lite`` ships no compiled ops, yet a few mmseg modules import ``mmcv.ops`` at module level
(``point_sample``, ``sigmoid_focal_loss``, ...). :func:`install` puts a small pure-Python ``mmcv.ops`` in
``sys.modules``: ``point_sample`` is implemented with ``F.grid_sample``; every other name resolves to a
stand-in that raises a clear ``RuntimeError`` only when it is called (or instantiated). None of the models
of this project (UPerNet, U-Net, FCN heads, timm backbones, mmseg's Swin) uses a compiled op.

With full mmcv installed (``mmcv._ext`` importable) :func:`install` does nothing. Import this module
before anything imports mmseg (``segmenters.mm`` does it first).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_SHIM_NAME = "mmcv.ops"


def has_compiled_ops() -> bool:
    """True when full mmcv (with ``mmcv._ext``) is installed."""
    try:
        return importlib.util.find_spec("mmcv._ext") is not None
    except (ImportError, ValueError):
        return False


def point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False, **kwargs: Any) -> torch.Tensor:
    """Pure-PyTorch ``mmcv.ops.point_sample``: sample ``input`` at normalised ``points``.

    Args:
        input: ``(N, C, H, W)`` features.
        points: ``(N, P, 2)`` or ``(N, Hg, Wg, 2)`` coordinates in ``[0, 1]`` (x, y).
        align_corners: passed to ``F.grid_sample``.

    Returns:
        ``(N, C, P)`` or ``(N, C, Hg, Wg)`` sampled features.
    """
    add_dim = False
    if points.dim() == 3:
        add_dim = True
        points = points.unsqueeze(2)
    out = F.grid_sample(input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
    if add_dim:
        out = out.squeeze(3)
    return out


def _missing(name: str) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"mmcv.ops.{name} needs mmcv's compiled ops, which mmcv-lite does not have. Use a model without it "
            "(this project's configs need none) or install full mmcv built for your torch."
        )

    class Missing:  # usable as a base class or a callable; fails only when used
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            fail()

    Missing.__name__ = name
    Missing.__qualname__ = name
    # classes (CamelCase) must stay classes so that `class X(nn.Module)`-style imports still parse
    return Missing if name[:1].isupper() else fail


class _OpsModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _missing(name)
        setattr(self, name, value)
        return value


def install() -> bool:
    """Install the ``mmcv.ops`` shim when compiled ops are missing.

    Returns:
        True when the shim was installed (now or before), False under full mmcv.
    """
    current = sys.modules.get(_SHIM_NAME)
    if isinstance(current, _OpsModule):
        return True
    if has_compiled_ops():
        return False
    try:
        import mmcv  # noqa: F401  (the parent package itself imports without compiled ops)
    except ImportError:  # no mmcv at all: nothing to patch (mmseg will not import either)
        return False

    shim = _OpsModule(_SHIM_NAME, "Pure-PyTorch stand-in for mmcv.ops (mmcv-lite); see segmenters.mmcv_compat.")
    shim.point_sample = point_sample  # type: ignore[attr-defined]
    shim.__path__ = []  # type: ignore[attr-defined]  # a package, so `from mmcv.ops.x import y` fails clearly
    sys.modules[_SHIM_NAME] = shim
    sys.modules["mmcv"].ops = shim  # type: ignore[attr-defined]
    logger.debug("installed the mmcv.ops shim (mmcv-lite)")
    return True


INSTALLED = install()
