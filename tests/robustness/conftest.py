"""Fixtures of the fault-injection tests (helpers in ``robust_helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from robust_helpers import synth


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 train cases (1-3 days), 2 test cases, 12 slices of 64x64; read-only (copy before breaking it)."""
    return synth(tmp_path_factory.mktemp("robust_synth") / "data")
