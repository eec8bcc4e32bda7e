"""Fixtures of the 2.5D segmenters' tests: a synthetic WORK folder (docs/contracts.md) and the tiny configs.

Nothing here imports mmseg (the 3D tests in this folder run without it); the mmseg-based test modules ask for
the ``mmseg_scope`` fixture.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from seg_fixtures import TINY_SWIN, TINY_UNET, TINY_UPERNET  # noqa: F401  (re-exported)

# the mmcv-lite shim must precede any mmseg import of the test modules (it imports neither mmseg nor, when
# mmcv is absent, anything else: the 3D tests of this folder run without OpenMMLab packages)
import segmenters.mmcv_compat  # noqa: F401, I001


@pytest.fixture(scope="session")
def seg_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 cases x 1 day, 12 slices of 80 x 96 (H x W); fold k validates case 10 + k."""
    from seg_fixtures import make_work

    return make_work(tmp_path_factory.mktemp("segwork") / "work")


@pytest.fixture
def mmseg_scope() -> None:
    """Import the registered modules (mmcv-lite shim first) and set mmengine's default scope to mmseg."""
    from mmengine.registry import init_default_scope

    import segmenters.mm  # noqa: F401

    init_default_scope("mmseg")
