"""The planner's CT normalisation in the models: values by hand on tiny arrays (2.5D stacks, 3D volumes, the slice
classifier), per-channel values, refused settings, and training and inference preprocessing alike (the 2.5D
training pipeline against the predictor's inputs; the classifier's slice and whole-volume paths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from seg_fixtures import FIVE, FOUR, TINY_UNET, make_work

import segmenters.mm  # noqa: F401  (mmcv-lite shim before mmseg)
from data_prep.plan import ct_normalise, ct_params
from data_prep.work import load_volume
from gating.classifier import SliceClassifier, check_cls_norm, input_norm, preprocess_volume, stack_image
from segmenters.mm.stacks import check_norm, normalise_stack, read_stack
from segmenters.monai.inference import preprocessing_of
from segmenters.monai.volumes import normalize_intensity, preprocess_image
from training.config import load_config

REPO = Path(__file__).resolve().parents[2]
TINY_3D = REPO / "mmcfg" / "monai3d" / "segresnet-tiny_1xb2-40_synth-32x32x16.py"
TINY_CLS = REPO / "mmcfg" / "gating" / "cls_resnet10t_1xb16-40_toy-64x64.py"
CT = {"mode": "ct", "clip": [400.0, 1600.0], "mean": 1000.0, "std": 200.0}
#: Two image channels with their own figures.
CT2 = {"mode": "ct", "clip": [[400.0, 1600.0], [0.0, 3000.0]], "mean": [1000.0, 1500.0], "std": [200.0, 500.0]}


@pytest.fixture(scope="module")
def five(tmp_path_factory) -> Path:
    """5 cases of 8 slices of 40 x 48, 5 overlapping classes, 2 image channels."""
    return make_work(tmp_path_factory.mktemp("five_norm") / "work", depth=8, hw=(40, 48), dataset=FIVE)


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    """5 cases of 8 slices of 40 x 48, 4 exclusive classes, 1 CT channel."""
    return make_work(tmp_path_factory.mktemp("four_norm") / "work", depth=8, hw=(40, 48), dataset=FOUR)


def test_ct_values_by_hand() -> None:
    x = np.array([[[0, 400], [1000, 2000]]], np.uint16)
    want = [[[-3.0, -3.0], [0.0, 3.0]]]  # clip to [400, 1600], minus 1000, over 200
    assert normalise_stack(x, CT).tolist() == want
    assert read_stack(x, 0, stride=1, channels=1, norm=CT)[..., 0].tolist() == want[0]
    assert normalize_intensity(x, "ct", ct=CT).tolist() == want
    assert ct_normalise(x, 400, 1600, 1000, 200).dtype == np.float32
    # per image channel: channel 1 clips to [0, 3000] and uses mean 1500, std 500
    np.testing.assert_allclose(normalise_stack(x, CT2, channel=1), [[[-3.0, -2.2], [-1.0, 1.0]]], rtol=1e-6)
    assert ct_params(CT2, 1) == (0.0, 3000.0, 1500.0, 500.0)
    # 3D: each channel of a (K, D, H, W) volume with its own figures, no resampling
    vol = np.stack([x, x]).astype(np.uint16)
    got = preprocess_image(vol, norm=CT2, resample={"mode": "none"})  # (K, H, W, D)
    assert tuple(got.shape) == (2, 2, 2, 1)
    np.testing.assert_allclose(got[0, ..., 0].numpy(), want[0])
    np.testing.assert_allclose(got[1, ..., 0].numpy(), [[-3.0, -2.2], [-1.0, 1.0]])
    # existing modes are unchanged
    assert normalise_stack(np.array([[[0, 50], [100, 200]]], np.uint16), "max").tolist() == [[[0.0, 0.25], [0.5, 1.0]]]
    assert normalise_stack(x, {"mode": "max"}).max() == 1.0


def test_bad_ct_settings_are_refused() -> None:
    assert check_norm("max") == "max" and check_norm(CT) == CT
    with pytest.raises(ValueError, match="needs its parameters"):
        check_norm("ct")
    with pytest.raises(ValueError, match=r"missing \['std'\]"):
        check_norm({"mode": "ct", "clip": (0, 1), "mean": 0})
    with pytest.raises(ValueError, match="lo < hi and std > 0"):
        check_norm({"mode": "ct", "clip": (5, 1), "mean": 0, "std": 1})
    with pytest.raises(ValueError, match="image channel 2 has none"):
        check_norm(CT2, channels=3)
    with pytest.raises(ValueError, match="mode must be one of"):
        check_norm({"mode": "zscore"})
    with pytest.raises(ValueError, match="norm mode 'ct' needs"):
        normalize_intensity(np.zeros(3), "ct")
    with pytest.raises(ValueError, match="must be 'max' or dict"):
        check_cls_norm("minmax")


class _Recorder(torch.nn.Module):
    """Records the inputs it is given; returns zero probabilities (2.5D) or logits (classifier) of ``c`` classes."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c, self.seen = c, []

    def predict_probs(self, x: torch.Tensor, tta=()) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], self.c, *x.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], self.c)


@pytest.mark.parametrize("size", [(40, 48), (32, 32)])
def test_25d_training_pipeline_and_inference_see_the_same_ct_input(five, size) -> None:
    from segmenters.mm.data import GICropBox, GIResize, LoadGIStack, PackGIInputs
    from segmenters.mm.inference import Segmenter

    cfg = load_config(TINY_UNET, work=five, stack=dict(stride=1, channels=3, norm=CT2), img_size=size)
    pipe = cfg.test_dataloader.dataset.pipeline
    assert dict(pipe[0].norm) == CT2 and tuple(pipe[2].size) == size  # the shortcut reached the test pipeline
    kinds = {"LoadGIStack": LoadGIStack, "GICropBox": GICropBox, "GIResize": GIResize, "PackGIInputs": PackGIInputs}
    steps = [kinds[t["type"]](**{k: v for k, v in t.items() if k != "type"}) for t in pipe]

    def load(results: dict) -> dict:
        for step in steps:
            results = step(results)
        return results

    model = _Recorder(5)
    seg = Segmenter(model, cfg, "cpu", amp=False)
    assert seg.norm == CT2
    vols = [load_volume(five, "case10_day1", k) for k in range(2)]
    seg.predict_volume(vols, tta=(), batch_size=8)
    seen = torch.cat(model.seen)
    assert tuple(seen.shape) == (8, 6, *size)
    for z in range(8):
        ref = load(dict(work=str(five), case_day="case10_day1", z=z))["inputs"]
        np.testing.assert_allclose(seen[z].numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    # channel 1 of slice 4 by hand (native size): its own clip, mean and std
    if size == (40, 48):
        t2 = np.asarray(vols[1][4], np.float64)
        np.testing.assert_allclose(seen[4, 4].numpy(), (np.clip(t2, 0, 3000) - 1500) / 500, rtol=1e-5, atol=1e-6)


def test_3d_datasets_and_inference_take_the_config_norm(four) -> None:
    cfg = load_config(TINY_3D, work=four, norm=CT)
    assert dict(cfg.train_dataloader.dataset.norm) == dict(cfg.val_dataloader.dataset.norm) == CT
    norm, _ = preprocessing_of(cfg)
    assert norm == CT
    vol = np.asarray(load_volume(four, "case10_day1"), np.float64)
    got = preprocess_image(vol, norm, {"mode": "none"})[0].numpy()  # (H, W, D)
    np.testing.assert_allclose(got, ((np.clip(vol, 400, 1600) - 1000) / 200).transpose(1, 2, 0), rtol=1e-6)


def test_classifier_slice_and_volume_paths_agree_under_ct(four, five) -> None:
    vol = load_volume(four, "case10_day1")
    x = stack_image(vol, 3, channels=3, stride=1, norm=CT)
    np.testing.assert_allclose(x, (np.clip(np.asarray(vol[2:5], np.float64), 400, 1600) - 1000) / 200, rtol=1e-6)
    resized, smax = preprocess_volume(vol, channels=3, stride=2, img_size=(24, 30), norm=CT)
    assert smax.tolist() == [1.0] * 8
    for z in range(8):
        ref = stack_image(vol, z, channels=3, stride=2, img_size=(24, 30), norm=CT)
        idx = np.clip([z - 2, z, z + 2], 0, 7)
        np.testing.assert_allclose(resized[idx], ref, rtol=1e-5, atol=1e-5)
    # the predictor feeds the model what stack_image makes, channel by channel (two CT channels)
    model = _Recorder(5)
    clf = SliceClassifier(model, torch.device("cpu"), 3, 1, (24, 30), FIVE.classes, "overlapping", ("T1", "T2"), CT2)
    vols = [load_volume(five, "case10_day1", k) for k in range(2)]
    clf.predict_volume(vols, batch_size=8)
    seen = torch.cat(model.seen).numpy()
    for z in range(8):
        np.testing.assert_allclose(seen[z], stack_image(vols, z, 3, 1, (24, 30), CT2), rtol=1e-5, atol=1e-5)
    # the config's dataset norm (the planner's stack.norm, copied by the shortcut once the dataset takes it)
    cfg = load_config(TINY_CLS, work=four)
    assert input_norm(cfg) == "max"
    cfg.test_dataloader.dataset.norm = CT
    assert input_norm(cfg) == CT
