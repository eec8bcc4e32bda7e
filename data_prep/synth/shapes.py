"""Shape-model mode: :func:`synthesize` draws the case-days (:func:`_plan`), renders them and writes the CSVs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep.constants import CLASSES, DEFAULT_SEED, REAL_SIZES
from data_prep.synth.output import _prepare_out, _write_csv
from data_prep.synth.workers import CaseDayTask, _render_shape_task, _run_tasks

logger = logging.getLogger(__name__)

#: Probability of each real size (W, H) for a synthetic case (rarer real sizes are over-represented).
SIZE_WEIGHTS: dict[tuple[int, int], float] = {(266, 266): 0.5, (360, 310): 0.3, (276, 276): 0.12, (234, 234): 0.08}
#: Pixel spacing (mm) by size; every other size gets 1.5 mm.
SPACING_BY_SIZE: dict[tuple[int, int], float] = {(276, 276): 1.63}
#: Probability of each real depth for a synthetic case.
DEPTH_WEIGHTS: dict[int, float] = {144: 0.9, 80: 0.1}
#: Days per case and their probabilities.
DAYS_PER_CASE: dict[int, float] = {1: 0.3, 2: 0.4, 3: 0.3}


def _check_sizes(sizes: Iterable[tuple[int, int]] | None) -> list[tuple[int, int]]:
    if sizes is None:
        return list(REAL_SIZES)
    out = []
    for s in sizes:
        try:
            w, h = (int(x) for x in s)
        except (TypeError, ValueError):
            raise ValueError(f"sizes must be (width, height) pairs of ints, got {s!r}") from None
        if w < 32 or h < 32:
            raise ValueError(f"sizes must be at least 32x32, got {w}x{h}")
        out.append((w, h))
    if not out:
        raise ValueError("sizes is empty; give at least one (width, height)")
    return out


def _plan(
    cases: int, test_cases: int, seed: int, slices: int | None, sizes: list[tuple[int, int]]
) -> list[tuple[str, int, int, int, int, int, float]]:
    """Draw case numbers, days, depth and size: rows (split, case, day, depth, width, height, spacing)."""
    rng = np.random.default_rng([seed, 0, 0, 0])
    n = cases + test_cases
    pool = np.arange(1, max(160, 2 * n) + 1)
    numbers = rng.choice(pool, size=n, replace=False)
    train, test = sorted(int(x) for x in numbers[:cases]), sorted(int(x) for x in numbers[cases:])
    real = sizes == list(REAL_SIZES)
    weights = np.array([SIZE_WEIGHTS[s] for s in sizes]) if real else np.ones(len(sizes))
    weights = weights / weights.sum()
    plan = []
    for split, nums in (("train", train), ("test", test)):
        for case in nums:
            n_days = int(rng.choice(list(DAYS_PER_CASE), p=list(DAYS_PER_CASE.values())))
            days = sorted(int(x) for x in rng.choice(np.arange(0, 36), size=n_days, replace=False))
            w, h = sizes[int(rng.choice(len(sizes), p=weights))]
            depth = int(rng.choice(list(DEPTH_WEIGHTS), p=list(DEPTH_WEIGHTS.values())))
            depth = slices if slices is not None else depth
            for day in days:
                plan.append((split, case, day, depth, w, h, SPACING_BY_SIZE.get((w, h), 1.5)))
    return plan


def synthesize(
    out: str | os.PathLike,
    cases: int,
    seed: int = DEFAULT_SEED,
    test_cases: int = 0,
    slices: int | None = None,
    sizes: Iterable[tuple[int, int]] | None = None,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a synthetic dataset in the Kaggle layout drawn by the shape model.

    Args:
        out: output folder (created); must not already hold a dataset unless ``overwrite``.
        cases: number of training cases (1-3 days each).
        seed: random seed; the same seed gives byte-identical files.
        test_cases: number of test cases (``test/`` tree, header-only ``sample_submission.csv`` and
            ``test_truth.csv``); 0 writes no test files.
        slices: slices per case-day (default: 144 or 80 as in the real data); small values for tests.
        sizes: (width, height) pairs to draw from (default: the four real sizes).
        overwrite: replace an existing dataset in ``out`` (only the dataset's own entries are removed).
        workers: processes rendering case-days in parallel.
        progress: show a tqdm bar.

    Returns:
        Summary: ``{"out", "case_days": {"train": n, "test": m}, "slices": {...}, "presence": {class: fraction
        of train slices}, "any": fraction of train slices with any class}``.

    Raises:
        ValueError: bad counts or sizes. FileExistsError: ``out`` holds a dataset and not ``overwrite``.
    """
    if cases < 1 or test_cases < 0:
        raise ValueError(f"cases must be >= 1 and test_cases >= 0, got cases={cases}, test_cases={test_cases}")
    if slices is not None and slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    size_list = _check_sizes(sizes)
    out_p = Path(out).resolve()
    _prepare_out(out_p, overwrite)
    plan = _plan(cases, test_cases, seed, slices, size_list)
    tasks = [CaseDayTask(str(out_p), sp, c, d, dep, w, h, px, seed) for sp, c, d, dep, w, h, px in plan]
    results = _run_tasks(_render_shape_task, tasks, workers, progress, "synth")
    summary: dict[str, Any] = {"out": str(out_p), "case_days": {}, "slices": {}}
    for split, csv_name in (("train", "train.csv"), ("test", "test_truth.csv")):
        rows = [r for t, res in zip(tasks, results, strict=True) if t.split == split for r in res]
        if split == "test" and not test_cases:
            continue
        df = pd.DataFrame(rows, columns=["id", "class", "segmentation"])
        _write_csv(df, out_p / csv_name)
        summary["case_days"][split] = sum(t.split == split for t in tasks)
        summary["slices"][split] = len(df) // len(CLASSES)
        if split == "train":
            pos = df.assign(p=df["segmentation"] != "").pivot(index="id", columns="class", values="p")
            summary["presence"] = {c: float(pos[c].mean()) for c in CLASSES}
            summary["any"] = float(pos.any(axis=1).mean())
    if test_cases:
        _write_csv(pd.DataFrame(columns=["id", "class", "predicted"]), out_p / "sample_submission.csv")
    logger.info("synthetic dataset in %s: %s", out_p, summary)
    return summary
