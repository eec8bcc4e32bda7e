"""Shared test fixtures: where the real labels live (tests that read them skip when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ``../shared/data`` beside the repository (never copied into it); see its README.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
REAL_LABELS = SHARED_DATA / "uwmgi_labels" / "train.csv.gz"
REAL_MANIFEST = SHARED_DATA / "uwmgi_labels" / "scan_manifest.csv.gz"
REAL_SLICES = SHARED_DATA / "uwmgi_real_slices"


@pytest.fixture(scope="session")
def real_labels_path() -> Path:
    """Path of the real ``train.csv.gz`` (115,488 rows); skips the test when absent."""
    if not REAL_LABELS.is_file():
        pytest.skip(f"real labels not found at {REAL_LABELS}")
    return REAL_LABELS


@pytest.fixture(scope="session")
def real_manifest_path() -> Path:
    """Path of the real ``scan_manifest.csv.gz`` (38,496 slices); skips the test when absent."""
    if not REAL_MANIFEST.is_file():
        pytest.skip(f"real scan manifest not found at {REAL_MANIFEST}")
    return REAL_MANIFEST


@pytest.fixture(scope="session")
def real_slices_root() -> Path:
    """Kaggle-layout folder with two real 16-bit scans and their label rows; skips when absent."""
    if not (REAL_SLICES / "train.csv").is_file():
        pytest.skip(f"real slices not found at {REAL_SLICES}")
    return REAL_SLICES
