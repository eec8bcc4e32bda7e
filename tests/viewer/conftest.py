"""Fixtures of the viewer tests: a prepared nnU-Net-format WORK (oblique geometry, three classes) with a folder of
predictions that differ from the truth in known ways, and a prepared Kaggle-layout WORK with its label CSV."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from nnunet_fixtures import make_nnunet_dataset
from scipy import ndimage

from data_prep.__main__ import main as data_prep_main
from data_prep.readers.nnunet import read_prediction, write_prediction
from data_prep.synth import synthesize
from data_prep.work import load_mask, read_dataset

CLASSES = ("liver", "spleen", "kidney")


def perturb(truth: np.ndarray) -> np.ndarray:
    """The test predictions: class 0 dilated by 2 voxels in-plane, class 1 moved 3 columns, class 2 as true."""
    pred = truth.copy()
    pred[:, 0] = ndimage.binary_dilation(truth[:, 0], structure=np.ones((1, 5, 5), bool))
    pred[:, 1] = np.roll(truth[:, 1], 3, axis=2)
    return pred


@pytest.fixture(scope="session")
def nnunet_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``{"root", "work", "pred", "truth": {key: bool (D, C, H, W)}, "pred_masks": {...}}`` (read-only)."""
    tmp = tmp_path_factory.mktemp("viewer_nnunet")
    ds = make_nnunet_dataset(tmp / "ds", n_cases=5, shape=(16, 40, 48), classes=CLASSES, spacing=(2.5, 0.8, 0.7))
    work = tmp / "work"
    assert data_prep_main(["-q", "prepare", "--data-root", str(ds.root), "--out", str(work)]) == 0
    info = read_dataset(work)
    truth, preds = {}, {}
    for key in info.volumes:
        truth[key] = info.unpack(np.asarray(load_mask(work, key))).astype(bool)
        path = write_prediction(perturb(truth[key]), info, key, tmp / "pred")
        preds[key] = read_prediction(path, info, key).astype(bool)  # exclusive labels: later classes win overlaps
    return {"root": ds.root, "ds": ds, "work": work, "pred": tmp / "pred", "truth": truth, "pred_masks": preds}


@pytest.fixture(scope="session")
def scans_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An nnU-Net dataset with test images only (imagesTs), to "Segment"."""
    tmp = tmp_path_factory.mktemp("viewer_scans")
    ds = make_nnunet_dataset(tmp / "ds", n_cases=1, test_cases=2, shape=(12, 32, 40), classes=CLASSES, seed=3)
    shutil.rmtree(ds.root / "imagesTr")
    shutil.rmtree(ds.root / "labelsTr")
    meta = json.loads((ds.root / "dataset.json").read_text())
    (ds.root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 0}))
    return ds.root


@pytest.fixture(scope="session")
def kaggle_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small synthetic Kaggle tree prepared into a WORK: ``{"data", "work"}`` (read-only)."""
    tmp = tmp_path_factory.mktemp("viewer_kaggle")
    data = tmp / "data"
    synthesize(data, cases=5, seed=5, slices=12, sizes=[(64, 56)])
    work = tmp / "work"
    assert data_prep_main(["-q", "prepare", "--data-root", str(data), "--out", str(work)]) == 0
    return {"data": data, "work": work}
