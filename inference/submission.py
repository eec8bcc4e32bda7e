"""Submissions: RLE rows of one case-day's masks, and the rows in ``sample_submission.csv`` order.

The submission contract (docs/contracts.md, "Submission"): ``id,class,predicted``, one row per slice and class in
class order, RLE from :func:`data_prep.rle.rle_encode`, rows in ``sample_submission.csv`` order (manifest order
when it is header-only or absent).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.dataset import KAGGLE
from data_prep.rle import rle_encode

SUBMISSION_COLUMNS: tuple[str, ...] = ("id", "class", "predicted")


def read_sample(path: Path | None) -> pd.DataFrame | None:
    """The sample submission (``id, class``) or None when absent."""
    if path is None or not path.is_file():
        return None
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "id" not in df.columns or "class" not in df.columns:
        raise ValueError(f"{path}: expected columns id,class,predicted, got {list(df.columns)}")
    return df[["id", "class"]]


def encode_rows(
    ids: Sequence[str], masks: np.ndarray, classes: Sequence[str] = KAGGLE.classes
) -> list[tuple[str, str, str]]:
    """Submission rows of one case-day: ``(id, class, rle)``, one per slice and class in class order.

    Args:
        ids: ``D`` slice ids, z order.
        masks: bool ``(D, C, H, W)``.
        classes: the ``C`` class names (the Kaggle layout's by default).

    Returns:
        ``D * C`` tuples.
    """
    if len(ids) != masks.shape[0] or masks.shape[1] != len(classes):
        raise ValueError(f"{len(ids)} ids and {len(classes)} classes do not match masks of shape {masks.shape}")
    return [(sid, cls, rle_encode(masks[z, c])) for z, sid in enumerate(ids) for c, cls in enumerate(classes)]


def order_rows(rows: pd.DataFrame, sample: pd.DataFrame | None, source: str = "sample_submission.csv") -> pd.DataFrame:
    """Put submission rows in ``sample_submission`` order (or keep their order when it is header-only / None).

    Args:
        rows: DataFrame ``id, class, predicted`` covering every slice predicted.
        sample: the sample submission (``id, class`` columns, may be empty).
        source: named in errors.

    Returns:
        DataFrame ``id, class, predicted`` in the sample's order (exactly its rows) or ``rows``' order.

    Raises:
        ValueError: ids/classes of the sample that were not predicted (absent from the tree), named.
    """
    if sample is None or len(sample) == 0:
        return rows.reset_index(drop=True)
    key = ["id", "class"]
    merged = sample[key].merge(rows, on=key, how="left", indicator=True)
    missing = merged.loc[merged["_merge"] == "left_only", "id"].unique().tolist()
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} id(s) are not in the test tree: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
            + "; give the sample_submission.csv that belongs to this tree"
        )
    return merged.drop(columns="_merge").reset_index(drop=True)
