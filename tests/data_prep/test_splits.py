"""Folds grouped by case, training variants, the fault list and the report; checked on real labels when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.constants import CLASSES
from data_prep.splits import drop_table, make_splits, write_splits
from data_prep.work import read_splits

REPO_ROOT = Path(__file__).resolve().parents[2]
LABELS = REPO_ROOT.parent / "shared" / "data" / "uwmgi_labels"


def toy_manifest() -> pd.DataFrame:
    """8 cases x 1-2 days x 12 slices; annotations at known slices."""
    rows = []
    for case in range(1, 9):
        for day in range(1 + case % 2):
            cd = f"case{case}_day{day}"
            for z in range(12):
                pos = 4 <= z <= 6 if case != 3 else False  # case3 has no annotation at all
                rows.append(
                    {"id": f"{cd}_slice_{z + 1:04d}", "case": case, "day": day, "slice": z + 1, "case_day": cd,
                     "z": z, "has_large_bowel": int(pos), "has_small_bowel": int(pos and z == 5), "has_stomach": 0}
                )  # fmt: skip
    return pd.DataFrame(rows)


def check_partition(splits: dict, manifest: pd.DataFrame) -> None:
    case_of = dict(zip(manifest["id"], manifest["case"]))
    all_ids = set(manifest["id"])
    seen: list[str] = []
    fold_cases = []
    for f in splits["folds"]:
        val_cases = {case_of[i] for i in f["val"]}
        assert val_cases == set(f["val_cases"])
        for v, ids in f["train"].items():
            assert not {case_of[i] for i in ids} & val_cases, f"fold {f['fold']} {v}: a val case is in train"
        assert set(f["train"]["all"]) | set(f["val"]) <= all_ids
        seen += f["val"]
        fold_cases.append(val_cases)
    assert len(seen) == len(all_ids) and set(seen) == all_ids  # every slice in exactly one val fold
    for i in range(len(fold_cases)):
        for j in range(i + 1, len(fold_cases)):
            assert not fold_cases[i] & fold_cases[j]  # no case in two folds


@pytest.mark.parametrize("method", ["group", "stratified"])
def test_toy_partition_and_variants(method):
    man = toy_manifest()
    s = make_splits(man, n_folds=4, seed=3, method=method, tail=2, tail_before=1, faulty_case_days=["case2_day0"])
    check_partition(s, man)
    assert s["method"] == ("group" if method == "group" else "stratified_group")
    for f in s["folds"]:
        val = set(f["val"])
        train_all = [i for i in man["id"] if i not in val and not i.startswith("case2_day0_")]
        assert f["train"]["all"] == train_all  # manifest order, fault list dropped
        # notail: z 7, 8 dropped (tail 2 after z=6) and z 3 (1 before z=4); case3 (no annotation) keeps all
        expect_notail = [i for i in train_all if i.startswith("case3_") or int(i[-4:]) - 1 not in (3, 7, 8)]
        assert f["train"]["notail"] == expect_notail
        assert f["train"]["noanno"] == [
            i for i in train_all if not i.startswith("case3_") and 4 <= int(i[-4:]) - 1 <= 6
        ]
    # validation is never filtered: the faulty case-day and empty slices are validated
    assert sum(i.startswith("case2_day0_") for f in s["folds"] for i in f["val"]) == 12


def test_seed_changes_the_case_order_deterministically():
    man = toy_manifest()
    a = make_splits(man, n_folds=4, seed=1)
    assert make_splits(man, n_folds=4, seed=1) == a
    others = [make_splits(man, n_folds=4, seed=s) for s in range(2, 8)]
    assert any([f["val_cases"] for f in o["folds"]] != [f["val_cases"] for f in a["folds"]] for o in others)


def test_drop_table_reasons():
    man = toy_manifest()
    d = drop_table(man, tail=2, tail_before=1, faulty_case_days=["case2_day0", "case99_day1"])
    counts = d["reason"].value_counts().to_dict()
    n_cd = man["case_day"].nunique() - 2  # 12 case-days, 10 with annotations (case3's two days have none)
    assert counts == {"fault": 12, "tail": 2 * n_cd, "head": n_cd, "noanno": len(man) - 3 * n_cd}
    assert d.loc[d["reason"] == "tail", "z"].unique().tolist() == [7, 8]
    assert list(d.columns) == ["id", "case_day", "z", "reason"]


def test_bad_settings():
    man = toy_manifest()
    with pytest.raises(ValueError, match="at least 9 cases"):
        make_splits(man, n_folds=9)
    with pytest.raises(ValueError, match="split method"):
        make_splits(man, method="kfold")
    with pytest.raises(ValueError, match="tail"):
        make_splits(man, tail=-1)
    with pytest.raises(ValueError, match="no labels"):
        make_splits(man.drop(columns=["has_stomach"]))


def test_written_once(tmp_path):
    man = toy_manifest()
    s = write_splits(tmp_path, man, n_folds=4, seed=5)
    path = tmp_path / "splits" / "splits.json"
    mtime = path.stat().st_mtime_ns
    assert write_splits(tmp_path, man, n_folds=4, seed=5) == s and path.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_splits(tmp_path, man, n_folds=4, seed=6)
    with pytest.raises(FileExistsError, match="other slices"):
        write_splits(tmp_path, man.iloc[:-12], n_folds=4, seed=5)
    assert read_splits(tmp_path) == s
    s6 = write_splits(tmp_path, man, n_folds=4, seed=6, overwrite=True)
    assert read_splits(tmp_path) == s6 and s6["seed"] == 6
    report = pd.read_csv(tmp_path / "splits" / "report.csv")
    assert len(report) == 4 * 3
    r = report.set_index(["fold", "variant"])
    for f in s6["folds"]:
        assert r.loc[(f["fold"], "notail"), "train_slices"] == len(f["train"]["notail"])
        assert r.loc[(f["fold"], "all"), "val_slices"] == len(f["val"])
    dropped = pd.read_csv(tmp_path / "splits" / "dropped.csv")
    assert dropped["reason"].value_counts().to_dict() == drop_table(man).reason.value_counts().to_dict()
    assert "| fault |" in (tmp_path / "splits" / "report.md").read_text()
    with pytest.raises(FileNotFoundError, match="data_prep splits"):
        read_splits(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- real labels


@pytest.fixture(scope="module")
def real():
    if not (LABELS / "train.csv.gz").is_file():
        pytest.skip(f"real labels not found in {LABELS}")
    lab = pd.read_csv(LABELS / "train.csv.gz", keep_default_na=False)
    scans = pd.read_csv(LABELS / "scan_manifest.csv.gz")
    wide = lab.pivot(index="id", columns="class", values="segmentation").reset_index()
    man = scans[["id", "case", "day", "slice"]].merge(wide, on="id", how="left")
    man["case_day"] = "case" + man["case"].astype(str) + "_day" + man["day"].astype(str)
    man = man.sort_values(["case", "day", "slice"]).reset_index(drop=True)
    return lab, scans, man


def test_real_labels_drops_match_an_independent_count(real):
    lab, scans, man = real
    tail = 5
    faulty = ["case7_day0", "case81_day30"]
    s = make_splits(man, tail=tail, faulty_case_days=faulty)
    check_partition(s, man)
    assert s["n_folds"] == 5 and len(s["folds"]) == 5

    # independent computation, straight from the long label table and plain Python loops
    annotated: dict[str, bool] = {}
    for sid, seg in zip(lab["id"], lab["segmentation"]):
        annotated[sid] = annotated.get(sid, False) or bool(seg)
    by_cd: dict[str, list[tuple[int, str]]] = {}
    for sid, case, day, slc in zip(scans["id"], scans["case"], scans["day"], scans["slice"]):
        by_cd.setdefault(f"case{case}_day{day}", []).append((slc, sid))
    want_fault = {sid for cd in faulty for _, sid in by_cd[cd]}
    want_noanno = {sid for sid, a in annotated.items() if not a}
    want_tail = set()
    for items in by_cd.values():
        ids = [sid for _, sid in sorted(items)]
        pos = [k for k, sid in enumerate(ids) if annotated[sid]]
        if pos:
            want_tail |= set(ids[pos[-1] + 1 : pos[-1] + 1 + tail])
    assert len(want_fault) == 144 + 144

    all_ids = set(man["id"])
    got = {"fault": set(), "notail": set(), "noanno": set()}
    for f in s["folds"]:
        train_side = all_ids - set(f["val"])
        got["fault"] |= train_side - set(f["train"]["all"])
        got["notail"] |= set(f["train"]["all"]) - set(f["train"]["notail"])
        got["noanno"] |= set(f["train"]["all"]) - set(f["train"]["noanno"])
    assert got["fault"] == want_fault
    assert got["notail"] == want_tail - want_fault
    assert got["noanno"] == want_noanno - want_fault
    d = drop_table(man, tail=tail, faulty_case_days=faulty)
    counts = d["reason"].value_counts().to_dict()
    assert counts == {"fault": len(want_fault), "tail": len(want_tail), "noanno": len(want_noanno)}
    # the slices with any mask: 33,913 non-empty rows spread over them (the real labels' counts)
    assert int((lab["segmentation"] != "").sum()) == 33913
    assert len(all_ids) - len(want_noanno) == int(man[list(CLASSES)].ne("").any(axis=1).sum())


def test_real_labels_stratified_is_balanced(real):
    _, _, man = real
    s = make_splits(man, method="stratified", seed=42)
    check_partition(s, man)
    pos = dict(zip(man["id"], man[list(CLASSES)].ne("").any(axis=1)))
    frac = [np.mean([pos[i] for i in f["val"]]) for f in s["folds"]]
    assert max(frac) - min(frac) < 0.05
    assert json.loads(json.dumps(s)) == s  # JSON-serialisable as is
