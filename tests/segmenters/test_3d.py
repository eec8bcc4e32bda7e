"""3D segmenters (MONAI) on the training engine: preprocessing, loss, configs, datasets, sampler, model, metric, the
patch-stage hook (switch at the right iteration, resume into stage 2; the weights of a killed and resumed run are
compared with an uninterrupted one in tests/robustness/test_training_kill.py), training through tools/train.py
(best.pth, --fold all, 2 processes over gloo)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.constants import CLASSES, REPO_ROOT

pytest.importorskip("mmengine")
pytest.importorskip("monai")

from mmengine.dataset import default_collate, pseudo_collate  # noqa: E402
from train_helpers import dist_train, load_tool, read_scalars  # noqa: E402
from work3d import make_synthetic_work  # noqa: E402

from data_prep.volumes import unpack_mask  # noqa: E402
from data_prep.work import load_volume, read_splits, write_splits_json  # noqa: E402
from evaluation.metric import aggregate, score_case_day  # noqa: E402
from segmenters.monai.data import (  # noqa: E402
    CaseDayPatchDataset,
    CaseDayPatchSampler,
    CaseDayVolumeDataset,
    fold_entries,
)
from segmenters.monai.hooks import PatchStageHook, parse_stages  # noqa: E402
from segmenters.monai.inference import Segmenter3D  # noqa: E402
from segmenters.monai.metric import CaseDay3DMetric  # noqa: E402
from segmenters.monai.model import Monai3DSegmenter, SlidingWindow  # noqa: E402
from segmenters.monai.volumes import (  # noqa: E402
    DiceBCELoss,
    build_net,
    check_roi,
    normalize_intensity,
    preprocess_image,
    preprocess_label,
    target_hw,
)
from training.config import build_model, load_config  # noqa: E402
from training.train import train  # noqa: E402

TINY = REPO_ROOT / "mmcfg" / "monai3d" / "segresnet-tiny_1xb2-40_synth-32x32x16.py"
CONFIGS = sorted((REPO_ROOT / "mmcfg" / "monai3d").glob("*.py"))
#: mmengine's vocabulary, the shared runtime and the shortcuts: the only top-level keys a 3D config may have.
ALLOWED_KEYS = {
    "model", "train_dataloader", "val_dataloader", "test_dataloader", "val_evaluator", "test_evaluator",
    "optim_wrapper", "param_scheduler", "train_cfg", "val_cfg", "test_cfg", "default_hooks", "custom_hooks",
    "randomness", "custom_imports", "work", "fold", "split_variant", "norm", "resample", "num_classes", "dataset_info",
    # mmcfg/_base_/default_runtime.py
    "runner_type", "env_cfg", "model_wrapper_cfg", "vis_backends", "visualizer", "log_processor", "log_level",
    "load_from", "resume",
}  # fmt: skip
SMALL = {"mode": "size", "size": (48, 48)}


@pytest.fixture(autouse=True)
def one_thread():
    """Two busy cores: OpenMP with 2 threads is ~40x slower on tiny 3D convolutions here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """5 case-days of 48x48 (16 and 12 slices), 5 folds: fold k validates case k + 1."""
    return make_synthetic_work(tmp_path_factory.mktemp("w3d") / "work", n_cases=5, depths=(16, 12), seed=0)


def stage_config(tmp_path: Path, stages: list[dict]) -> Path:
    """The tiny config with other patch-size stages."""
    path = tmp_path / "tiny_stages.py"
    path.write_text(
        f"_base_ = [{str(TINY)!r}]\n"
        "custom_hooks = [\n"
        "    dict(type='TrainingCurveHook', keys=('seg3d/score', 'seg3d/dice')),\n"
        f"    dict(type='PatchStageHook', stages={stages!r}),\n"
        "]\n"
    )
    return path


# ------------------------------------------------------------------------------------------------ pure functions


def test_normalize_intensity_modes():
    v = np.array([[[0, 100], [200, 400]]], dtype=np.uint16)
    assert normalize_intensity(v, "max").ravel().tolist() == [0.0, 0.25, 0.5, 1.0]
    p = normalize_intensity(v, "percentile", (0.0, 100.0))
    assert p.dtype == np.float32 and p.ravel().tolist() == [0.0, 0.25, 0.5, 1.0]
    z = normalize_intensity(v, "zscore")
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1.0) < 1e-5
    assert not normalize_intensity(np.full((2, 3, 3), 7, np.uint16), "percentile").any()
    with pytest.raises(ValueError, match="norm mode"):
        normalize_intensity(v, "minmax")


def test_target_hw_and_preprocess_shapes():
    assert target_hw((310, 360), {"mode": "size", "size": (256, 256)}) == (256, 256)
    assert target_hw((310, 360), {"mode": "none"}) == (310, 360)
    assert target_hw((310, 360), {"mode": "spacing", "pixdim": (3.0, 3.0)}, (3.0, 1.5, 1.5)) == (155, 180)
    with pytest.raises(ValueError, match="spacing"):
        target_hw((310, 360), {"mode": "spacing", "pixdim": (3.0, 3.0)})
    vol = np.zeros((7, 31, 17), np.uint16)
    vol[:, 10:20, 5:9] = 1000
    x = preprocess_image(vol, {"mode": "max"}, {"mode": "size", "size": (40, 24)})
    assert tuple(x.shape) == (1, 40, 24, 7) and x.dtype == torch.float32
    assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0 and float(x.max()) > 0.9
    mask = np.zeros((7, 31, 17), np.uint8)
    mask[2, 10:20, 5:9] = 0b101  # large bowel + stomach
    y = preprocess_label(mask, (40, 24))
    assert tuple(y.shape) == (3, 40, 24, 7)
    assert y[0, :, :, 2].sum() > 0 and y[1].sum() == 0 and torch.equal(y[0], y[2])
    assert y[:, :, :, [0, 1, 3, 4, 5, 6]].sum() == 0  # depth untouched


def test_check_roi_and_networks():
    seg = {"type": "SegResNet", "blocks_down": (1, 2, 2, 4)}
    assert check_roi((224, 224, 80), seg) == (224, 224, 80)
    with pytest.raises(ValueError, match="multiple of"):
        check_roi((224, 224, 84), seg)
    dyn = {"type": "DynUNet", "strides": [1, 2, 2, 2, (2, 2, 1)]}
    assert check_roi((160, 160, 80), dyn) == (160, 160, 80)
    with pytest.raises(ValueError, match=r"\(16, 16, 8\)"):
        check_roi((168, 160, 80), dyn)
    with pytest.raises(ValueError, match="out_channels must be a positive int .*WORK/dataset.json"):
        build_net({"type": "SegResNet", "in_channels": 1})  # the configs leave it to training.config
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        build_net({"type": "SegResNet", "out_channels": 3, "in_channels": None})
    with pytest.raises(ValueError, match="unknown network type 'SegResNett'.*SegResNet"):
        build_net({"type": "SegResNett"})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_configs_load_and_build(path):
    """mmengine's vocabulary only; the model builds; the name's patch size is the last stage's and the window's."""
    cfg = load_config(path)
    assert set(cfg.keys()) <= ALLOWED_KEYS, sorted(set(cfg.keys()) - ALLOWED_KEYS)
    assert "default_scope" not in cfg and cfg.split_variant == "all"
    model = build_model(cfg)
    assert isinstance(model, Monai3DSegmenter) and sum(p.numel() for p in model.parameters()) > 1000
    (stage_hook,) = [h for h in cfg.custom_hooks if h["type"] == "PatchStageHook"]
    stages = parse_stages(stage_hook["stages"])
    for _, roi in stages:
        check_roi(roi, model.net_cfg)
    h, w, d = stages[-1][1]
    assert path.name.endswith(f"-{h}x{w}x{d}.py")
    assert model.test_window.roi_size == (h, w, d)
    assert cfg.train_dataloader.dataset.roi_size == stages[0][1]
    assert cfg.default_hooks.checkpoint.save_best == "seg3d/score" and cfg.default_hooks.checkpoint.rule == "greater"
    assert [h["type"] for h in cfg.custom_hooks] == ["TrainingCurveHook", "PatchStageHook"]
    assert tuple(cfg.custom_hooks[0]["keys"]) == ("seg3d/score", "seg3d/dice")
    # the same preprocessing in training, validation and inference: the top-level shortcuts, stated once
    for key in ("norm", "resample"):
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            assert cfg[loader].dataset[key] == cfg[key], (loader, key)


def test_norm_and_resample_shortcuts_reach_every_dataset():
    cfg = load_config(TINY, {"resample.size": (40, 40), "norm.mode": "max"})
    want_norm = {"mode": "max", "percentiles": (0.0, 99.5)}
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert cfg[loader].dataset.resample == {"mode": "size", "size": (40, 40)}
        assert cfg[loader].dataset.norm == want_norm
    cfg.train_dataloader.dataset.resample["size"] = (8, 8)  # each dataset holds its own copy
    assert cfg.val_dataloader.dataset.resample["size"] == (40, 40) and cfg.resample["size"] == (40, 40)


def test_real_configs_keep_the_hyper_parameters():
    cfg = load_config(REPO_ROOT / "mmcfg/monai3d/segresnet_1xb2-20k_uwmgi-224x224x80.py")
    assert parse_stages(cfg.custom_hooks[1]["stages"]) == [(0, (160, 160, 80)), (10000, (224, 224, 80))]
    assert cfg.train_cfg.max_iters == 20000 and cfg.train_cfg.val_interval == 1000
    assert cfg.default_hooks.checkpoint.interval == 1000
    assert cfg.train_dataloader.batch_size == 2 and cfg.train_dataloader.dataset.cache_rate == 1.0
    assert cfg.train_dataloader.dataset.num_samples == 2
    assert cfg.optim_wrapper.optimizer.lr == 3e-4 and cfg.optim_wrapper.clip_grad.max_norm == 12.0
    assert cfg.optim_wrapper.type == "AmpOptimWrapper"
    ds = cfg.val_dataloader.dataset
    assert ds.resample == {"mode": "size", "size": (256, 256)}
    assert ds.norm == {"mode": "percentile", "percentiles": (0.0, 99.5)}
    model = build_model(cfg)
    assert model.test_window == SlidingWindow((224, 224, 80), 0.7, "gaussian", 0.125, 2, ("flip",), True)
    assert model.val_window.overlap == 0.5 and model.val_window.tta == ()
    dyn = load_config(REPO_ROOT / "mmcfg/monai3d/dynunet_1xb2-20k_uwmgi-224x224x80.py")
    assert dyn.optim_wrapper.optimizer.lr == 1e-3 and dyn.model.net.type == "DynUNet"


def test_schedule_is_linear_warmup_then_cosine():
    """Linear warm-up over 500 iterations (``lr * (i + 1) / 500``, as the former loop), then cosine to 1% of the lr
    at max_iters."""
    from mmengine.registry import PARAM_SCHEDULERS

    cfg = load_config(REPO_ROOT / "mmcfg/monai3d/segresnet_1xb2-20k_uwmgi-224x224x80.py")
    max_iters = 2000
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    scheds = [PARAM_SCHEDULERS.build({"end": max_iters, **s, "optimizer": opt}) for s in cfg.param_scheduler]
    lrs = []
    for _ in range(max_iters):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        for s in scheds:
            s.step()
    lr = 3e-4
    assert lrs[:500] == pytest.approx([lr * (i + 1) / 500 for i in range(500)])
    assert lrs[500] == pytest.approx(lr)
    assert lrs[500 + 750] == pytest.approx(0.01 * lr + (lr - 0.01 * lr) / 2, rel=1e-3)  # half-way down the cosine
    assert lrs[-1] == pytest.approx(0.01 * lr, rel=0.01)
    assert all(a >= b for a, b in zip(lrs[500:], lrs[501:]))


def test_dice_bce_loss_values():
    loss = DiceBCELoss(lambda_dice=1.0, lambda_bce=1.0)
    t = torch.zeros(1, 3, 4, 4, 4)
    t[:, 0, :2] = 1
    good = torch.where(t > 0, 20.0, -20.0)
    assert float(loss(good, t)) < 0.01
    bad = -good
    assert float(loss(bad, t)) > 10.0
    deep = torch.stack([good, bad], dim=1)  # (B, S, C, ...): head 0 weighs 1, head 1 weighs 0.5
    expect = (float(loss(good, t)) + 0.5 * float(loss(bad, t))) / 1.5
    assert float(loss(deep, t)) == pytest.approx(expect, rel=1e-5)


def test_sliding_window_settings_are_checked():
    seg = {"type": "SegResNet", "blocks_down": (1, 1, 1)}
    w = SlidingWindow.from_cfg({"roi_size": (32, 32, 16), "tta": "flip"}, seg, "model.test_cfg")
    assert w.tta == ("flip",) and w.overlap == 0.7 and w.mode == "gaussian"
    for bad, match in (
        ({}, r"model.test_cfg.roi_size is required"),
        ({"roi_size": (30, 32, 16)}, r"model.test_cfg.roi_size .* multiple of \(4, 4, 4\)"),
        ({"roi_size": (32, 32, 16), "overlap": 1.0}, r"overlap must be in \[0, 1\)"),
        ({"roi_size": (32, 32, 16), "mode": "mean"}, "mode must be one of"),
        ({"roi_size": (32, 32, 16), "tta": ("rot90",)}, "unknown TTA"),
        ({"roi_size": (32, 32, 16), "overlpa": 0.5}, r"unknown keys \['overlpa'\]"),
    ):
        with pytest.raises(ValueError, match=match):
            SlidingWindow.from_cfg(bad, seg, "model.test_cfg")


PRIOR_NET = dict(
    type="DynUNet", spatial_dims=3, in_channels=1, out_channels=3, kernel_size=[3, 3, 3], strides=[1, 2, 2],
    upsample_kernel_size=[2, 2], deep_supervision=True, deep_supr_num=1,
)  # fmt: skip
LOGIT_2PCT = float(np.log(0.02 / 0.98))


def _heads(model: Monai3DSegmenter) -> list[torch.nn.Conv3d]:
    return [m for m in model.net.modules() if isinstance(m, torch.nn.Conv3d) and m.out_channels == 3]


def test_prior_prob_sets_the_output_biases():
    window = {"roi_size": (16, 16, 16)}
    model = Monai3DSegmenter(PRIOR_NET, prior_prob=0.02, test_cfg=window)
    model.init_weights()  # what mmengine's Runner does when training starts
    heads = _heads(model)
    assert len(heads) == 2  # the output block and the deep-supervision head
    for h in heads:
        np.testing.assert_allclose(h.bias.detach().numpy(), LOGIT_2PCT, rtol=1e-6)
    plain = Monai3DSegmenter(PRIOR_NET, test_cfg=window)  # MONAI's own initialisation: biases near 0, not logit(0.02)
    plain.init_weights()
    assert all(
        float(m.bias.detach().abs().max()) < 1.0
        for m in plain.net.modules()
        if isinstance(m, torch.nn.Conv3d) and m.bias is not None
    )
    with pytest.raises(ValueError, match="prior_prob must be in"):
        Monai3DSegmenter(PRIOR_NET, prior_prob=0.0, test_cfg=window)


def test_prior_prob_outlives_an_init_cfg():
    """init_weights() runs init_cfg first (Kaiming: every Conv3d bias 0), then sets the prior biases."""
    window, kaiming = {"roi_size": (16, 16, 16)}, dict(type="Kaiming", layer="Conv3d")
    model = Monai3DSegmenter(PRIOR_NET, prior_prob=0.02, test_cfg=window, init_cfg=kaiming)
    plain = Monai3DSegmenter(PRIOR_NET, test_cfg=window, init_cfg=kaiming)
    for m in (model, plain):
        for h in _heads(m):
            torch.nn.init.constant_(h.bias, 0.5)  # neither 0 nor logit(0.02): init_weights must overwrite it
        m.init_weights()
    for h in _heads(model):
        np.testing.assert_allclose(h.bias.detach().numpy(), LOGIT_2PCT, rtol=1e-6)
    for h in _heads(plain):  # without prior_prob the init_cfg's bias stays
        assert not h.bias.detach().any()


# ------------------------------------------------------------------------------------------------ data


def test_patch_dataset_of_a_fold_and_its_draws(work):
    ds = CaseDayPatchDataset(str(work), fold=0, roi_size=(32, 32, 16), resample=SMALL, num_samples=2)
    assert ds.case_days == ["case2_day0", "case3_day0", "case4_day0", "case5_day0"] and not ds.sharded
    s = ds[(1, 123)]
    x, y = s["inputs"], s["data_samples"]["labels"]
    assert x.shape == (2, 1, 32, 32, 16) and x.dtype == torch.float32
    assert y.shape == (2, 3, 32, 32, 16) and y.dtype == torch.uint8 and set(y.unique().tolist()) <= {0, 1}
    assert y.any()  # pos=neg=1: patches are centred on labels half of the time, and the anatomy is large
    again = ds[(1, 123)]  # a draw's seed fixes its patches
    assert torch.equal(again["inputs"], x) and torch.equal(again["data_samples"]["labels"], y)
    assert not torch.equal(ds[(1, 124)]["inputs"], x)
    ds.set_roi_size((64, 64, 24))  # larger than every volume (48 x 48, 12 / 16 slices): padded
    big = ds[(2, 5)]
    assert big["inputs"].shape == (2, 1, 64, 64, 24) and big["data_samples"]["labels"].shape == (2, 3, 64, 64, 24)
    batch = default_collate([ds[(0, 1)], ds[(3, 2)]])
    assert batch["inputs"].shape == (2, 2, 1, 64, 64, 24)
    with pytest.raises(ValueError, match="cache_rate"):
        CaseDayPatchDataset(str(work), fold=0, cache_rate=1.5)


def test_patch_dataset_leaves_out_case_days_missing_from_the_training_side(work, tmp_path):
    """A faulty case-day (data_prep drops its ids from every training side) is not trained on; an unknown fold
    is refused before any export is read."""
    w = tmp_path / "work"
    shutil.copytree(work, w)
    splits = read_splits(w)
    side = splits["folds"][0]["train"]
    side["all"] = [i for i in side["all"] if not i.startswith("case3_day0_slice_")]
    write_splits_json(w, splits)
    ds = CaseDayPatchDataset(str(w), fold=0, roi_size=(32, 32, 16), resample=SMALL, cache_rate=0.0)
    assert ds.case_days == ["case2_day0", "case4_day0", "case5_day0"]
    assert [e["case_day"] for e in fold_entries(w, 0, "val")] == ["case1_day0"]
    assert len(fold_entries(w, 0, "all")) == 5  # still in the export, only not on the training side
    with pytest.raises(ValueError, match=r"fold must be in \[0, 4\]"):
        CaseDayPatchDataset(str(w), fold=7, roi_size=(32, 32, 16))


def test_volume_dataset_keeps_the_original_size_truth(work):
    ds = CaseDayVolumeDataset(str(work), fold=0, split="val", resample=SMALL)
    assert len(ds) == 1
    s = ds[0]
    sample = s["data_samples"]
    assert s["inputs"].shape == (1, 48, 48, 16) and s["inputs"].dtype == torch.float32
    assert sample.case_day == "case1_day0" and sample.ori_shape == (16, 48, 48)
    assert sample.gt_mask.dtype == np.uint8 and sample.gt_mask.shape == (16, 48, 48) and sample.gt_mask.any()
    assert [e["case_day"] for e in fold_entries(work, 3, "val")] == ["case4_day0"]
    assert len(fold_entries(work, 3, "all")) == 5


def test_missing_export_names_the_command(work, tmp_path):
    bare = tmp_path / "work"
    shutil.copytree(work, bare, ignore=shutil.ignore_patterns("exports"))
    with pytest.raises(FileNotFoundError, match="python -m data_prep export 3d"):
        fold_entries(bare, 0, "train")
    with pytest.raises(FileNotFoundError, match="data_prep's finished output"):
        fold_entries(tmp_path / "nowhere", 0, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        fold_entries(work, 0, "test")


def test_sampler_draws_are_a_pure_function_of_the_draw_number():
    dataset = list(range(4))
    s = CaseDayPatchSampler(dataset, shuffle=True, seed=3)
    draws = [next(iter(s)) for _ in range(12)]
    for k in range(3):  # each pass is a permutation
        assert sorted(i for i, _ in draws[4 * k : 4 * k + 4]) == [0, 1, 2, 3]
    assert len({seed for _, seed in draws}) == 12
    draw_12 = next(iter(s))  # iterating again continues the stream: the 13th draw
    s.restart(5)
    assert [next(iter(s)) for _ in range(8)] == [*draws[5:], draw_12]
    fresh = CaseDayPatchSampler(dataset, shuffle=True, seed=3)
    assert list(zip(range(12), iter(fresh))) == list(enumerate(draws))
    other = CaseDayPatchSampler(dataset, shuffle=True, seed=4)
    assert [next(iter(other)) for _ in range(12)] != draws


# ------------------------------------------------------------------------------------------------ model and metric


def test_model_loss_and_predict_at_the_original_size(work):
    torch.manual_seed(0)
    model = build_model(load_config(TINY))
    ds = CaseDayPatchDataset(str(work), fold=0, roi_size=(32, 32, 16), resample=SMALL, num_samples=2)
    data = model.data_preprocessor(default_collate([ds[(0, 1)], ds[(1, 2)]]), True)
    assert data["inputs"].shape == (4, 1, 32, 32, 16) and data["data_samples"]["labels"].dtype == torch.float32
    loss = model(**data, mode="loss")["loss"]
    assert loss.ndim == 0 and float(loss.detach()) > 0
    loss.backward()
    assert model(data["inputs"], mode="tensor").shape == (4, 3, 32, 32, 16)
    with pytest.raises(ValueError, match="labels"):
        model.data_preprocessor({"inputs": data["inputs"]}, True)
    val = CaseDayVolumeDataset(str(work), fold=0, split="val", resample={"mode": "size", "size": (40, 40)})
    model.eval()
    (out,) = model.val_step(pseudo_collate([val[0]]))
    assert out.probs.shape == (16, 3, 48, 48) and out.probs.dtype == torch.float32  # back at 48 x 48
    metric = CaseDay3DMetric()
    metric.process({}, [out.to_dict()])
    got = metric.compute_metrics(metric.results)
    assert {"score", "dice", "dice_3d", "hausdorff", *[f"dice_{c}" for c in CLASSES]} <= set(got)
    truth = unpack_mask(out.gt_mask).astype(bool)  # the original-size truth, scored directly
    want = aggregate([score_case_day(out.case_day, out.probs.numpy() > 0.5, truth)])
    assert got["score"] == pytest.approx(want.score) and got["hausdorff"] == pytest.approx(want.hausdorff)


def test_metric_scores_perfect_and_empty_predictions(work):
    sample = CaseDayVolumeDataset(str(work), fold=0, split="val", resample=SMALL)[0]["data_samples"]
    truth = torch.from_numpy(unpack_mask(sample.gt_mask).astype(np.float32))  # (D, 3, H, W)
    rec = {"case_day": sample.case_day, "gt_mask": sample.gt_mask}
    perfect, empty = CaseDay3DMetric(), CaseDay3DMetric()
    perfect.process({}, [{**rec, "probs": truth * 0.9}])
    empty.process({}, [{**rec, "probs": truth * 0.4}])  # below the threshold everywhere
    p, e = perfect.compute_metrics(perfect.results), empty.compute_metrics(empty.results)
    assert p["score"] == pytest.approx(1.0) and p["dice"] == pytest.approx(1.0) and p["hausdorff"] == 1.0
    # an empty prediction: Dice 1 on the (slice, class) pairs without truth, 0 on the others
    no_truth = float((truth.sum(dim=(2, 3)) == 0).float().mean())
    assert 0.0 < no_truth < 1.0
    assert e["hausdorff"] == 0.0 and e["dice"] == pytest.approx(no_truth)
    assert e["score"] == pytest.approx(0.4 * no_truth)
    if "dice_skip" in e:
        assert e["dice_skip"] == 0.0
    with pytest.raises(ValueError, match="differ"):
        CaseDay3DMetric().process({}, [{**rec, "probs": truth[:, :, :10]}])


# ------------------------------------------------------------------------------------------------ the stage hook


def test_parse_stages_errors():
    assert parse_stages([dict(roi_size=(8, 8, 8), begin=5), dict(roi_size=(4, 4, 4), begin=0)])[0] == (0, (4, 4, 4))
    hook = PatchStageHook([dict(roi_size=(4, 4, 4), begin=0), dict(roi_size=(8, 8, 8), begin=5)])
    assert [hook.roi_at(i) for i in (0, 4, 5, 99)] == [(4, 4, 4), (4, 4, 4), (8, 8, 8), (8, 8, 8)]
    with pytest.raises(ValueError, match="begin at iteration 0"):
        parse_stages([dict(roi_size=(4, 4, 4), begin=3)])
    with pytest.raises(ValueError, match="same iteration"):
        parse_stages([dict(roi_size=(4, 4, 4), begin=0), dict(roi_size=(8, 8, 8), begin=0)])
    with pytest.raises(ValueError, match=r"stages\[0\] must be dict"):
        parse_stages([dict(roi=(4, 4, 4), begin=0)])


def test_stage_hook_switches_at_the_right_iteration_and_after_resume(work, tmp_path, monkeypatch):
    """Stage 2 (48x48x16 patches) begins at iteration 3 (0-based). A run stopped at 2 and resumed crosses the
    switch at the right iteration; a run resumed at 4 (in stage 2) trains on stage-2 patches at once, without
    building the batches mmengine's loop skips. (That the weights equal those of an uninterrupted run is
    test_3d_killed_in_save_and_in_iteration_resumes of tests/robustness/test_training_kill.py, same stages.)"""
    cfg = stage_config(tmp_path, [dict(roi_size=(32, 32, 16), begin=0), dict(roi_size=(48, 48, 16), begin=3)])
    shapes: list[tuple[int, ...]] = []
    loads = [0]
    forward, getitem = Monai3DSegmenter.forward, CaseDayPatchDataset.__getitem__

    def record_forward(self, inputs, data_samples=None, mode="tensor"):
        if mode == "loss":
            shapes.append(tuple(inputs.shape[2:]))
        return forward(self, inputs, data_samples, mode)

    def count_getitem(self, key):
        loads[0] += 1
        return getitem(self, key)

    monkeypatch.setattr(Monai3DSegmenter, "forward", record_forward)
    monkeypatch.setattr(CaseDayPatchDataset, "__getitem__", count_getitem)

    def run(work_dir: Path, iters: int, name: str, resume: bool = False) -> list[tuple[int, ...]]:
        shapes.clear()
        loads[0] = 0
        opts = {
            "train_cfg.max_iters": iters,
            "train_cfg.val_interval": 100,
            "default_hooks.checkpoint.interval": 2,
            "param_scheduler": [],
            "experiment_name": name,
        }
        train(cfg, fold=0, work=work, work_dir=work_dir, cfg_options=opts, resume=resume)
        return list(shapes)

    small, big = (32, 32, 16), (48, 48, 16)
    # each run builds only the batches it trains on (2 iterations of batch 2): the skipped ones never
    assert run(tmp_path / "run", 2, "a") == [small] * 2 and loads[0] == 2 * 2
    assert run(tmp_path / "run", 4, "b", resume=True) == [small, big] and loads[0] == 2 * 2  # resumed at 2
    assert run(tmp_path / "run", 6, "c", resume=True) == [big, big] and loads[0] == 2 * 2  # resumed at 4


# ------------------------------------------------------------------------------------------------ training runs


def test_train_tool_reaches_max_iters_and_best_loads_weights_only(work, tmp_path, capsys):
    wd = tmp_path / "run"
    args = [str(TINY), "--work", str(work), "--work-dir", str(wd), "--cfg-options"]
    opts = ["train_cfg.max_iters=12", "train_cfg.val_interval=6", "default_hooks.checkpoint.interval=6"]
    opts += ["default_hooks.logger.interval=1", "randomness.seed=0"]
    assert load_tool("train").main([*args, *opts]) == 0
    (rows,) = read_scalars(wd)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert [r["iter"] for r in rows if "loss" in r] == list(range(1, 13))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    vals = [r for r in rows if "seg3d/score" in r]
    assert [r["step"] for r in vals] == [6, 12]
    for v in vals:
        assert {f"seg3d/dice_{c}" for c in CLASSES} | {"seg3d/hausdorff", "seg3d/dice_3d"} <= set(v)
    (best,) = wd.glob("best_seg3d_score_iter_*.pth")
    assert (wd / "best.pth").resolve() == best.resolve()
    best_iter = int(re.fullmatch(r"best_seg3d_score_iter_(\d+)\.pth", best.name).group(1))
    assert best_iter == max(vals, key=lambda v: v["seg3d/score"])["step"], vals
    assert json.loads((wd / "done.json").read_text())["iterations"] == 12
    assert (wd / "iter_12.pth").is_file() and (wd / "training_curve.png").stat().st_size > 1000
    state = torch.load(wd / "best.pth", weights_only=True)["state_dict"]  # inference loads weights only
    cfg = load_config(TINY)
    model = build_model(cfg)
    assert state.keys() == model.state_dict().keys()
    model.load_state_dict(state)
    volume = load_volume(work, "case1_day0")
    probs = Segmenter3D.load(TINY, wd / "best.pth", "cpu").predict_volume(volume, tta=())
    assert probs.shape == (16, 3, 48, 48)
    np.testing.assert_array_equal(probs, Segmenter3D(model, cfg).predict_volume(volume, tta=()))
    capsys.readouterr()
    assert load_tool("train").main([*args, *opts]) == 2  # an existing run needs --resume or --overwrite
    assert "--resume" in capsys.readouterr().err


def test_fold_all_trains_every_fold(tmp_path):
    w2 = make_synthetic_work(tmp_path / "w2", n_cases=2, n_folds=2, depths=(12,), seed=1)
    opts = {"train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "default_hooks.checkpoint.interval": 2}
    dirs = train(TINY, fold="all", work=w2, work_dir=tmp_path / "run", cfg_options=opts)
    assert dirs == [tmp_path / "run" / "fold_0", tmp_path / "run" / "fold_1"]
    for k, wd in enumerate(dirs):
        done = json.loads((wd / "done.json").read_text())
        assert done["fold"] == k and done["iterations"] == 2
        assert (wd / "iter_2.pth").is_file() and (wd / "best.pth").resolve().name == "best_seg3d_score_iter_2.pth"


@pytest.mark.slow
def test_dist_train_two_cpu_processes(work, tmp_path):
    wd = tmp_path / "dist"
    opts = ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2"]
    dist_train(TINY, 2, ["--work", str(work), "--work-dir", str(wd), "--cfg-options", *opts])
    assert sorted(p.name for p in wd.glob("iter_*.pth")) == ["iter_2.pth"]
    log = next(wd.glob("*/*.log")).read_text()
    assert "Distributed training: True" in log and "GPU number: 2" in log
    # each rank caches its share of the 4 training case-days; the one val case-day is scored once
    assert "CaseDayPatchDataset fold 0 (all): 2 case-days (rank 0 of 2)" in log
    assert "Iter(val) [1/1]" in log and "seg3d/score" in log
    assert torch.load(wd / "best.pth", weights_only=True)["meta"]["iter"] == 2
