"""data_prep.work.fold_case_days: the case-days of a fold's sides, the variant's filtering, corrupt splits."""

from __future__ import annotations

import pytest

from data_prep.work import fold_case_days


def _ids(case_day: str, n: int = 3) -> list[str]:
    return [f"{case_day}_slice_{z:04d}" for z in range(1, n + 1)]


def toy_splits() -> dict:
    """2 folds over 4 case-days. Fold 0 validates case1; its ``notail`` side lacks one slice of case2_day4 (the
    case-day stays), its ``noanno`` side every slice of case2_day1 (the case-day goes). Fold 1 validates case2."""
    train0 = _ids("case3_day0") + _ids("case2_day1") + _ids("case2_day4")
    return {
        "n_folds": 2,
        "folds": [
            {
                "fold": 0,
                "val_cases": [1],
                "val": _ids("case1_day0", 4),
                "train": {"all": train0, "notail": train0[:-1], "noanno": _ids("case3_day0") + _ids("case2_day4")},
            },
            {
                "fold": 1,
                "val_cases": [2],
                "val": _ids("case2_day4") + _ids("case2_day1"),
                "train": {"all": _ids("case3_day0") + _ids("case1_day0", 4)},
            },
        ],
    }


def test_fold_case_days_sides_and_variants():
    splits = toy_splits()
    assert fold_case_days(splits, 0) == (["case2_day1", "case2_day4", "case3_day0"], ["case1_day0"])
    assert fold_case_days(splits, "0", "notail") == (["case2_day1", "case2_day4", "case3_day0"], ["case1_day0"])
    assert fold_case_days(splits, 0, "noanno") == (["case2_day4", "case3_day0"], ["case1_day0"])
    assert fold_case_days(splits, 1) == (["case1_day0", "case3_day0"], ["case2_day1", "case2_day4"])


def test_fold_case_days_errors():
    splits = toy_splits()
    with pytest.raises(ValueError, match=r"fold must be in \[0, 1\]"):
        fold_case_days(splits, 2)
    with pytest.raises(ValueError, match="no training variant 'notail'"):
        fold_case_days(splits, 1, "notail")
    with pytest.raises(ValueError, match="split variant must be one of"):
        fold_case_days(splits, 0, "tail")
    # one slice of the val case-day on the train side: corrupt splits, named with the case-day
    splits["folds"][0]["train"]["all"].append("case1_day0_slice_0004")
    with pytest.raises(ValueError, match=r"fold 0: case-days on both the train and the val side: \['case1_day0'\]"):
        fold_case_days(splits, 0)
    assert fold_case_days(splits, 0, "noanno")[0] == ["case2_day4", "case3_day0"]  # the other variants are intact
