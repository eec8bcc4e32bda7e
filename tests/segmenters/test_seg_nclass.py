"""Any dataset: the 2.5D U-Net and the 3D SegResNet take their classes and image channels from WORK/dataset.json
(5 overlapping classes on 2 image channels; 4 exclusive classes on 1), record them in every checkpoint, build the
right head from a config whose num_classes is None, predict (D, C, H, W), refuse a WORK of other classes; the 3D
models resample anisotropic volumes to a target spacing and back; the val metrics name the dataset's classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from seg_fixtures import FIVE, FOUR, REPO, TINY_UNET, TINY_UPERNET, make_work
from train_helpers import read_scalars
from work3d import make_synthetic_work

import segmenters.mm  # noqa: F401  (mmcv-lite shim before mmseg)
from data_prep.work import load_mask, load_volume, read_dataset
from segmenters.monai.inference import Segmenter3D
from segmenters.monai.model import Monai3DSegmenter
from segmenters.monai.volumes import resample_plan, resize_volume, target_shape
from training.checks import DatasetMismatchError
from training.config import build_model, load_config
from training.train import build_train_cfg, train

TINY_3D = REPO / "mmcfg" / "monai3d" / "segresnet-tiny_1xb2-40_synth-32x32x16.py"
TINY_CLS = REPO / "mmcfg" / "gating" / "cls_resnet10t_1xb16-40_toy-64x64.py"
#: 2 iterations, one validation and one checkpoint at the end, 32 x 32 inputs.
OPTS_25D = {
    "img_size": (32, 32),
    "train_dataloader.batch_size": 2,
    "val_dataloader.batch_size": 8,
    "train_cfg.max_iters": 2,
    "train_cfg.val_interval": 2,
    "default_hooks.checkpoint.interval": 2,
    "default_hooks.logger.interval": 1,
    "param_scheduler": [],
    "randomness.seed": 0,
    "custom_hooks": [],  # no training curve: seconds a run
}
OPTS_3D = {
    "train_cfg.max_iters": 2,
    "train_cfg.val_interval": 2,
    "default_hooks.checkpoint.interval": 2,
    "default_hooks.logger.interval": 1,
    "randomness.seed": 0,
    "model.test_cfg.tta": (),
    "custom_hooks": [dict(type="PatchStageHook", stages=[dict(roi_size=(32, 32, 16), begin=0)])],
}


@pytest.fixture(autouse=True)
def one_thread():
    """Two busy cores: one OpenMP thread is faster on tiny convolutions here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def five(tmp_path_factory) -> Path:
    """5 cases of 8 slices of 40 x 48, 5 overlapping classes, 2 image channels (T1, T2)."""
    return make_work(tmp_path_factory.mktemp("five") / "work", depth=8, hw=(40, 48), dataset=FIVE)


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    """5 cases of 8 slices of 40 x 48, 4 exclusive classes (a label map), 1 image channel."""
    return make_work(tmp_path_factory.mktemp("four") / "work", depth=8, hw=(40, 48), dataset=FOUR)


# ------------------------------------------------------------------------------------------------------ configs


def test_shortcuts_take_classes_and_channels_from_the_work(five, four) -> None:
    unet = load_config(TINY_UNET, work=five)
    assert unet.dataset_info == {"classes": list(FIVE.classes), "label_kind": "overlapping", "channels": ["T1", "T2"]}
    assert unet.model.decode_head.num_classes == 5 and unet.model.backbone.in_channels == 3 * 2  # stack x K
    assert unet.val_evaluator.classes == list(FIVE.classes)
    upernet = load_config(TINY_UPERNET, work=four, stack=dict(stride=2, channels=5, norm="max"))
    assert (upernet.model.decode_head.num_classes, upernet.model.auxiliary_head.num_classes) == (4, 4)
    assert upernet.model.backbone.in_channels == 5  # 5 slices x 1 image channel
    seg3d = load_config(TINY_3D, work=five)
    assert (seg3d.model.net.in_channels, seg3d.model.net.out_channels) == (2, 5)
    cls = load_config(TINY_CLS, work=five)
    assert (cls.model.in_channels, cls.model.num_classes) == (6, 5)
    # no dataset.json (a Kaggle WORK, or none at all): the 3 UW-Madison classes on one MR channel
    for cfg in (load_config(TINY_UNET, work="/nonexistent"), load_config(TINY_3D, work="/nonexistent")):
        assert cfg.dataset_info["classes"] == ["large_bowel", "small_bowel", "stomach"]
    assert load_config(TINY_3D, work="/nonexistent").model.net.out_channels == 3
    # an explicit class count wins in the model, and training refuses it when the WORK has another
    assert load_config(TINY_UNET, {"num_classes": 7}, work=five).model.decode_head.num_classes == 7
    with pytest.raises(ValueError, match=r"num_classes=7 .*5 classes \['liver', 'kidney'"):
        build_train_cfg(TINY_UNET, 0, work=five, cfg_options={"num_classes": 7})


def test_load_gi_stack_reads_every_channel_and_unpacks_any_mask(five, four) -> None:
    from segmenters.mm.data import LoadGIStack

    load = LoadGIStack(stride=1, channels=3, norm="max")
    out = load.transform(dict(work=str(five), case_day="case10_day1", z=4))
    assert out["img"].shape == (40, 48, 6) and out["gt_masks"].shape == (40, 48, 5)
    t1, t2 = load_volume(five, "case10_day1", 0), load_volume(five, "case10_day1", 1)
    np.testing.assert_allclose(out["img"][..., 1], t1[4] / t1[3:6].max(), rtol=1e-6)  # channel 0's stack first
    np.testing.assert_allclose(out["img"][..., 4], t2[4] / t2[3:6].max(), rtol=1e-6)
    bits = np.asarray(load_mask(five, "case10_day1")[4])
    assert bits.dtype == np.uint8 and ((bits >> 4) & 1).any()
    np.testing.assert_array_equal(out["gt_masks"][..., 4], (bits >> 4) & 1)
    ex = load.transform(dict(work=str(four), case_day="case10_day1", z=4))
    labels = np.asarray(load_mask(four, "case10_day1")[4])
    assert ex["img"].shape == (40, 48, 3) and set(np.unique(labels)) == {0, 1, 2, 3, 4}
    for c in range(4):
        np.testing.assert_array_equal(ex["gt_masks"][..., c], labels == c + 1)
    assert ex["gt_masks"].sum(axis=2).max() == 1  # exclusive: one class per pixel


# ------------------------------------------------------------------------------------------------- 2.5D models


@pytest.fixture(scope="module")
def unet_runs(five, four, tmp_path_factory) -> dict[str, Path]:
    """The tiny U-Net trained 2 iterations on each WORK: {"five": work_dir, "four": work_dir}."""
    root = tmp_path_factory.mktemp("unet_nclass")
    runs = {}
    for name, work in (("five", five), ("four", four)):
        (wd,) = train(TINY_UNET, fold=0, work=work, work_dir=root / name, cfg_options=OPTS_25D)
        runs[name] = wd
    return runs


@pytest.mark.parametrize("name", ["five", "four"])
def test_unet_trains_records_its_classes_and_predicts_them(name, unet_runs, five, four) -> None:
    from segmenters.mm.inference import Segmenter

    work, info = {"five": (five, FIVE), "four": (four, FOUR)}[name]
    wd = unet_runs[name]
    (val,) = [r for run in read_scalars(wd) for r in run if "gi/score" in r]
    assert {f"gi/dice_{c}" for c in info.classes} <= set(val) and "gi/dice_large_bowel" not in val
    ck = torch.load(wd / "best.pth", weights_only=True)
    want = {"classes": list(info.classes), "label_kind": info.label_kind, "channels": list(info.channels)}
    assert ck["meta"]["dataset"] == want
    assert ck["state_dict"]["decode_head.conv_seg.weight"].shape[0] == info.num_classes
    # the config says num_classes=None and names no WORK: the head comes from the checkpoint
    seg = Segmenter.load(TINY_UNET, wd / "best.pth", "cpu", cfg_options={"img_size": (32, 32)})
    assert seg.classes == info.classes and seg.image_channels == info.channels
    vols = [load_volume(work, "case10_day1", k) for k in range(info.num_channels)]
    probs = seg.predict_volume(vols, tta=(), batch_size=4)
    assert probs.shape == (8, info.num_classes, 40, 48) and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    if info.num_channels == 2:
        np.testing.assert_array_equal(seg.predict_volume(np.stack(vols), tta=(), batch_size=4), probs)
        with pytest.raises(ValueError, match=r"\(2, D, H, W\) or a list of 2"):
            seg.predict_volume(vols[0])
    # a WORK of other classes is refused, naming both lists
    other = four if name == "five" else five
    with pytest.raises(DatasetMismatchError, match=r"trained on the classes \['liver', .*but .*lists the classes"):
        Segmenter.load(TINY_UNET, wd / "best.pth", "cpu", cfg_options={"img_size": (32, 32)}, work=other)
    assert Segmenter.load(TINY_UNET, wd / "best.pth", "cpu", {"img_size": (32, 32)}, work=work).classes == info.classes
    # an explicit class count that is not the checkpoint's: refused before building
    with pytest.raises(ValueError, match=rf"num_classes=3, but .* {info.num_classes} classes"):
        Segmenter.load(TINY_UNET, wd / "best.pth", "cpu", cfg_options={"num_classes": 3, "img_size": (32, 32)})


# --------------------------------------------------------------------------------------------------- 3D models


def test_resample_to_a_target_spacing_and_back() -> None:
    # (D, H, W) = (10, 32, 24) at (4, 1, 1) mm -> 2 mm everywhere: d = 20, h = 16, w = 12
    assert target_shape((10, 32, 24), {"mode": "spacing", "spacing": (2.0, 2.0, 2.0)}, (4.0, 1.0, 1.0)) == (20, 16, 12)
    assert resample_plan((10, 32, 24), {"spacing": (2.0, 2.0, 2.0)}, (4.0, 1.0, 1.0)) == (16, 12, 20)
    assert resample_plan((10, 32, 24), {"mode": "spacing", "pixdim": (2.0, 2.0)}, (4.0, 1.0, 1.0)) == (16, 12, 10)
    with pytest.raises(ValueError, match=r"exactly one of spacing=\(sz, sy, sx\)"):
        resample_plan((10, 32, 24), {"mode": "spacing", "spacing": (2, 2, 2), "pixdim": (2, 2)}, (4.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="needs the volume's spacing"):
        target_shape((10, 32, 24), {"mode": "spacing", "spacing": (2.0, 2.0, 2.0)}, (1.0, 1.0))
    # a smooth probability map (C, H, W, D) resampled there and back: the original grid, values within 0.04
    hh, ww, dd = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 24), np.linspace(-1, 1, 10), indexing="ij")
    p = torch.from_numpy(np.stack([np.exp(-(hh**2 + ww**2 + dd**2)), 0.5 + 0.25 * hh * dd]).astype(np.float32))
    there = resize_volume(p, (16, 12, 20))
    assert tuple(there.shape) == (2, 16, 12, 20)
    back = resize_volume(there, (32, 24, 10))
    assert tuple(back.shape) == (2, 32, 24, 10)
    assert float((back - p)[:, 2:-2, 2:-2, 1:-1].abs().max()) < 0.04


class Identity(torch.nn.Module):
    """Logits ``logit(x)`` of the first image channel, ``C`` times: the probabilities are the normalised scan."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(x[:, :1].clamp(1e-4, 1 - 1e-4)).repeat(1, self.classes, 1, 1, 1)


def test_identity_model_resampled_to_a_target_spacing_returns_the_scan_on_its_grid() -> None:
    cfg = load_config(TINY_3D, {"norm": dict(mode="max"), "resample": dict(mode="spacing", spacing=(2.0, 2.0, 2.0))})
    resample = cfg.test_dataloader.dataset.resample  # every dataset preprocesses alike
    assert (resample.mode, resample.spacing) == ("spacing", (2.0, 2.0, 2.0))
    model = Monai3DSegmenter(net=Identity(3), test_cfg={**cfg.model.test_cfg, "tta": ()})
    seg = Segmenter3D(model, cfg)
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 36), np.linspace(-1, 1, 28), indexing="ij")
    vol = (4000 * np.exp(-(zz**2 + yy**2 + xx**2))).astype(np.uint16)
    out = seg.predict_volume(vol, spacing=(4.0, 1.0, 1.0))  # model grid: 24 x 18 x 14 (d, h, w)
    assert out.shape == (12, 3, 36, 28) and out.dtype == np.float32
    ref = vol / vol.max()
    assert np.abs(out[:, 0] - ref)[1:-1, 2:-2, 2:-2].max() < 0.03
    np.testing.assert_array_equal(out[:, 0], out[:, 2])
    with pytest.raises(ValueError, match="needs the volume's pixel spacing"):
        seg.predict_volume(vol)


@pytest.fixture(scope="module")
def work3d_five(tmp_path_factory) -> Path:
    """5 cases of 16 slices of 48 x 48 at (3, 1.5, 1.5) mm, 5 overlapping classes, 2 image channels."""
    return make_synthetic_work(tmp_path_factory.mktemp("w3d5") / "work", dataset=FIVE)


@pytest.fixture(scope="module")
def work3d_four(tmp_path_factory) -> Path:
    """5 cases of 16 slices of 48 x 48 at (3, 1.5, 1.5) mm, 4 exclusive classes, 1 image channel."""
    return make_synthetic_work(tmp_path_factory.mktemp("w3d4") / "work", dataset=FOUR)


@pytest.mark.parametrize("name", ["five", "four"])
def test_segresnet_trains_records_its_classes_and_predicts_them(name, work3d_five, work3d_four, tmp_path) -> None:
    work, info = {"five": (work3d_five, FIVE), "four": (work3d_four, FOUR)}[name]
    opts = dict(OPTS_3D)
    if name == "five":  # 3 mm everywhere: the 48 x 48 x 16 volumes become 24 x 24 x 16 for the model
        opts["resample"] = dict(mode="spacing", spacing=(3.0, 3.0, 3.0))
    (wd,) = train(TINY_3D, fold=0, work=work, work_dir=tmp_path / "run", cfg_options=opts)
    (val,) = [r for run in read_scalars(wd) for r in run if "seg3d/score" in r]
    assert {f"seg3d/dice_{c}" for c in info.classes} <= set(val)
    ck = torch.load(wd / "best.pth", weights_only=True)
    assert ck["meta"]["dataset"]["classes"] == list(info.classes)
    assert ck["meta"]["dataset"]["channels"] == list(info.channels)
    if name == "five":  # the run's config records the target spacing
        assert "spacing=(" in (wd / TINY_3D.name).read_text()
    cfg = load_config(TINY_3D, {k: v for k, v in opts.items() if k == "resample"})
    seg = Segmenter3D.load(cfg, wd / "best.pth", "cpu")  # num_classes None: the checkpoint's
    assert seg.classes == info.classes and seg.model.num_classes == info.num_classes
    assert seg.model.in_channels == info.num_channels
    vols = [load_volume(work, "case1_day0", k) for k in range(info.num_channels)]
    spacing = read_dataset(work).spacing("case1_day0")
    assert spacing == (3.0, 1.5, 1.5)
    probs = seg.predict_volume(vols, spacing, tta=())
    assert probs.shape == (16, info.num_classes, 48, 48) and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    other = work3d_four if name == "five" else work3d_five
    with pytest.raises(DatasetMismatchError, match=r"trained on the classes .* lists the classes"):
        Segmenter3D.load(TINY_3D, wd / "best.pth", "cpu", work=other)
    with pytest.raises(ValueError, match=rf"num_classes=3, but .* {info.num_classes} classes"):
        Segmenter3D.load(load_config(TINY_3D, {"num_classes": 3}), wd / "best.pth", "cpu")
    model = build_model(load_config(TINY_3D, work=work))
    assert model.num_classes == info.num_classes


# ------------------------------------------------------------------------------------------------------ metrics


def test_val_metrics_name_the_dataset_classes() -> None:
    from segmenters.mm.metric import GIMultiLabelMetric
    from segmenters.monai.metric import CaseDay3DMetric

    metric = GIMultiLabelMetric(compute_score=False, classes=FIVE.classes)
    gt = np.zeros((5, 4, 4), np.uint8)
    pred = np.zeros((5, 4, 4), np.uint8)
    gt[0, :2, :2] = pred[0, :2, :2] = 1  # liver: Dice 1
    gt[1, 0, :2] = 1
    pred[1, 0, 1:3] = 1  # kidney: 2 and 2 pixels, 1 shared: Dice 0.5; the other classes empty in both
    sample = {"pred_sem_seg": {"data": torch.from_numpy(pred)}, "gt_sem_seg": {"data": torch.from_numpy(gt)}}
    metric.process(None, [{**sample, "id": "a_slice_0000", "case_day": "a", "z": 0}])
    got = metric.evaluate(1)
    assert got["gi/dice_liver"] == 1.0 and got["gi/dice_kidney"] == 0.5 and np.isnan(got["gi/dice_vessel"])
    assert got["gi/dice"] == pytest.approx((1 + 0.5 + 1 + 1 + 1) / 5)
    # the 3D metric reads an exclusive label map: classes 1 and 3 of 4 present, predicted 1 right and 3 half
    m3 = CaseDay3DMetric(classes=FOUR.classes)
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[:, :2, :2] = 1
    labels[:, 2:, :2] = 3  # 8 voxels of "spleen"
    probs = np.zeros((2, 4, 4, 4), np.float32)
    probs[:, 0, :2, :2] = 0.9
    probs[:, 2, 2:, 0] = 0.9  # half of "spleen"
    m3.process(None, [{"probs": probs, "gt_mask": labels, "case_day": "a", "label_kind": "exclusive"}])
    got3 = m3.evaluate(1)
    assert got3["seg3d/dice_liver"] == 1.0 and got3["seg3d/dice_spleen"] == pytest.approx(2 * 2 / (2 + 4))
    assert np.isnan(got3["seg3d/dice_kidney"]) and np.isnan(got3["seg3d/dice_pancreas"])
