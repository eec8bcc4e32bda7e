"""The layers are enforced: import-linter passes on the project, and fails on a copy of it with one import that
points up the stack, also when the import hides inside a function."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "common",
    "data_prep",
    "evaluation",
    "training",
    "gating",
    "segmenters",
    "ensembles",
    "inference",
    "viewer",
    "tools",
)
LINT = Path(sys.executable).with_name("lint-imports")


def _copy(dst: Path) -> Path:
    """The packages' Python files and setup.cfg (the contracts) under ``dst``."""
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "setup.cfg", dst / "setup.cfg")
    return dst


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))  # the copy, not the installed project
    return subprocess.run([str(LINT)], cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not LINT.exists(), reason=f"import-linter is not installed beside {sys.executable}")
def test_layer_contracts_hold_and_an_upward_import_breaks_them(tmp_path: Path) -> None:
    root = _copy(tmp_path / "tree")
    ok = _lint(root)
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert "3 kept, 0 broken" in ok.stdout
    # a lazy import from the bottom layer to the top one
    with open(root / "data_prep" / "rle.py", "a") as f:
        f.write("\n\ndef _upward():\n    from inference import pipeline  # noqa: F401\n")
    bad = _lint(root)
    assert bad.returncode != 0
    assert "data_prep is not allowed to import inference" in bad.stdout
    assert "data_prep.rle -> inference.pipeline" in bad.stdout


@pytest.mark.skipif(not LINT.exists(), reason=f"import-linter is not installed beside {sys.executable}")
def test_no_package_imports_a_tool(tmp_path: Path) -> None:
    root = _copy(tmp_path / "tree")
    with open(root / "inference" / "predict.py", "a") as f:
        f.write("\n\nimport tools.visualize  # noqa: E402, F401\n")
    bad = _lint(root)
    assert bad.returncode != 0 and "Tools are entry points: no package imports them BROKEN" in bad.stdout
