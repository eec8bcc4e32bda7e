"""Fixtures of the data_prep tests: a small synthetic Kaggle-layout dataset, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.synth import synthesize

#: Parameters of the shared synthetic dataset (small: 4 train cases, 1 test case, 24 slices, small images).
SYNTH_KW = dict(cases=4, seed=7, test_cases=1, slices=24, sizes=[(96, 80), (80, 80)])


@pytest.fixture(scope="session")
def synth_kw() -> dict:
    """The arguments ``synth_root`` was made with."""
    return dict(SYNTH_KW)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic dataset root (train/, train.csv, test/, test_truth.csv, sample_submission.csv).

    Read-only for tests: copy it before changing anything.
    """
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(out, **SYNTH_KW)
    return out
