"""The slice classifier on any dataset: 5 overlapping classes on 2 image channels, 4 exclusive classes on 1 (from
WORK/dataset.json). It trains a few iterations, records its classes in every checkpoint, loads with and without a
config (num_classes None: the checkpoint's), predicts (D, C), writes cls_probs.csv with the dataset's class columns,
and refuses a WORK of other classes; the gate works for any number of classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from gating_fixtures import make_toy_work
from train_helpers import read_scalars

from data_prep.dataset import DatasetInfo
from data_prep.work import fold_ids, load_volume, read_splits
from gating.classifier import SliceClassifier, read_cls_probs, stack_image, write_cls_probs
from gating.gate import gate_decisions, presence_from_masks
from gating.mm import SliceStackDataset
from training.checks import DatasetMismatchError
from training.config import load_config
from training.train import train

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py"
FIVE = DatasetInfo(classes=("a1", "b2", "c3", "d4", "e5"), channels=("T1", "T2"), format="nnunet", name="five")
FOUR = DatasetInfo(
    classes=("wall", "xeno", "yolk", "zinc"), label_kind="exclusive", intensity="CT", format="nnunet", name="four"
)
OPTS = {
    "img_size": (32, 32),
    "train_dataloader.batch_size": 8,
    "train_dataloader.dataset.aug": None,
    "train_cfg.max_iters": 3,
    "train_cfg.val_interval": 3,
    "default_hooks.checkpoint.interval": 3,
    "default_hooks.logger.interval": 1,
    "param_scheduler": [],
    "randomness.seed": 0,
    "custom_hooks": [dict(type="ClsInputMetaHook"), dict(type="ClsOOFHook")],  # no training curve
}


@pytest.fixture(scope="module")
def works(tmp_path_factory) -> dict[str, Path]:
    """4 cases of 12 slices of 40 x 40 in 2 folds, for each dataset."""
    root = tmp_path_factory.mktemp("cls_nclass")
    return {
        name: make_toy_work(root / name, n_cases=4, depth=12, size=(40, 40), n_folds=2, dataset=info)
        for name, info in (("five", FIVE), ("four", FOUR))
    }


@pytest.fixture(scope="module")
def runs(works, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cls_nclass_runs")
    return {name: train(TINY, 0, work, work_dir=root / name, cfg_options=OPTS)[0] for name, work in works.items()}


def test_dataset_stacks_every_channel_and_reads_the_class_columns(works) -> None:
    ds = SliceStackDataset(works["five"], fold=0, split="val", channels=3, stride=1, img_size=(40, 40), test_mode=True)
    assert ds.metainfo["classes"] == FIVE.classes
    s = ds[0]
    assert s["inputs"].shape == (6, 40, 40) and s["data_samples"].gt_label.shape == (5,)
    info = ds.get_data_info(0)
    t1, t2 = (load_volume(works["five"], info["case_day"], k) for k in (0, 1))
    np.testing.assert_allclose(s["inputs"].numpy(), stack_image([t1, t2], info["z"], 3, 1), rtol=1e-6)
    table = pd.read_csv(works["five"] / "exports" / "classifier.csv").set_index("id")
    assert s["data_samples"].gt_label.tolist() == table.loc[info["id"], list(FIVE.classes)].astype(float).tolist()


@pytest.mark.parametrize("name", ["five", "four"])
def test_classifier_trains_records_its_classes_and_predicts_them(name, runs, works, tmp_path) -> None:
    info, work, run = {"five": FIVE, "four": FOUR}[name], works[name], runs[name]
    (val,) = [r for rs in read_scalars(run) for r in rs if "cls/score" in r]
    assert {f"cls/auc_{c}" for c in info.classes} <= set(val)
    ck = torch.load(run / "best.pth", weights_only=True)
    want = {"classes": list(info.classes), "label_kind": info.label_kind, "channels": list(info.channels)}
    assert ck["meta"]["dataset"] == want and ck["meta"]["slice_classifier"]["classes"] == list(info.classes)
    # out-of-fold probabilities of the run: the fold's val slices, one column per class of the dataset
    oof = read_cls_probs(run / "oof" / "cls_probs.csv", fold_ids(read_splits(work), 0, "val"), info.classes)
    assert oof.columns.tolist() == ["id", *info.classes]
    stored = SliceClassifier.load(run / "best.pth", "cpu")  # the definition stored in the checkpoint
    given = SliceClassifier.load(run / "best.pth", "cpu", config=load_config(TINY, OPTS), work=work)  # None: 5 / 4
    vols = [load_volume(work, "case1_day0", k) for k in range(info.num_channels)]
    p = stored.predict_volume(vols, batch_size=5)
    assert stored.classes == given.classes == info.classes and p.shape == (12, info.num_classes)
    np.testing.assert_allclose(given.predict_volume(vols), p, atol=1e-6)
    ids = [f"case1_day0_slice_{z + 1:04d}" for z in range(12)]
    np.testing.assert_allclose(oof.set_index("id").loc[ids].to_numpy(), p, atol=1e-5)  # case 1: fold 0's val
    other = works["four" if name == "five" else "five"]
    with pytest.raises(DatasetMismatchError, match=r"trained on the classes .* lists the classes"):
        SliceClassifier.load(run / "best.pth", "cpu", work=other)
    with pytest.raises(ValueError, match=rf"num_classes=3, but .* {info.num_classes} classes"):
        SliceClassifier.load(run / "best.pth", "cpu", config=load_config(TINY, {**OPTS, "num_classes": 3}))


def test_cls_probs_files_of_any_classes(tmp_path) -> None:
    p = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 0.0, 0.5, 0.25, 0.75]])
    path = write_cls_probs(tmp_path / "cls_probs.csv", ["s0", "s1"], p, FIVE.classes)
    assert path.read_text().splitlines()[0] == "id,a1,b2,c3,d4,e5"
    np.testing.assert_allclose(read_cls_probs(path)[list(FIVE.classes)].to_numpy(), p)  # columns from the file
    np.testing.assert_allclose(read_cls_probs(path, classes=("e5", "a1")).iloc[:, 1:].to_numpy(), p[:, [4, 0]])
    with pytest.raises(ValueError, match=r"must have columns \['id', 'large_bowel'"):
        read_cls_probs(path, classes=("large_bowel", "small_bowel", "stomach"))
    with pytest.raises(ValueError, match=r"\(2, 3\) for the classes"):
        write_cls_probs(tmp_path / "bad.csv", ["s0", "s1"], p)  # the Kaggle classes by default


def test_gate_for_five_classes() -> None:
    probs = np.array([[0.2, 0.9, 0.6, 0.05, 0.5], [0.8, 0.1, 0.6, 0.5, 0.49]])
    keep = gate_decisions(probs, thresholds=[0.1, 0.95, 0.5, 0.5, 0.5])
    assert keep.tolist() == [[True, False, True, False, True], [True, False, True, True, False]]
    maps = np.zeros((1, 5, 8, 8), np.float32)
    maps[0, 4, :2, :7] = 0.7  # 14 pixels of the 5th class
    assert presence_from_masks(maps).tolist() == [[False, False, False, False, True]]
