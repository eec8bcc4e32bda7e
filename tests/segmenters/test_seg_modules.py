"""Registered modules of the 2.5D segmenters: dataset, transforms, losses, post-processing, metric, checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.registry import DATASETS, MODELS, TRANSFORMS
from mmseg.structures import SegDataSample
from seg_fixtures import TINY_SWIN, TINY_UNET, TINY_UPERNET

import segmenters.mm  # noqa: F401  (mmcv-lite shim before mmseg)
from data_prep.volumes import unpack_mask
from data_prep.work import check_work, load_mask, load_volume, parse_folds
from evaluation.metric import slice_dice_table
from segmenters.mm.metric import GIMultiLabelMetric
from segmenters.mm.stacks import normalise_stack, read_stack
from training.checks import CheckpointMismatchError, check_model_cfg, check_timm_name
from training.config import load_config

pytestmark = pytest.mark.usefixtures("mmseg_scope")


def _dataset(work, split, size=(80, 96), variant="all", pipeline_extra=()):
    pipeline = [
        dict(type="LoadGIStack", stride=2, channels=3, norm="max"),
        dict(type="GICropBox"),
        dict(type="GIResize", size=size),
        *pipeline_extra,
        dict(type="PackGIInputs"),
    ]
    return DATASETS.build(
        dict(type="GITractDataset", work=str(work), fold=0, split=split, variant=variant, pipeline=pipeline)
    )


def test_dataset_sides_and_samples(seg_work) -> None:
    splits = json.loads((seg_work / "splits" / "splits.json").read_text())
    val = _dataset(seg_work, "val")
    train = _dataset(seg_work, "train")
    noanno = _dataset(seg_work, "train", variant="noanno")
    assert len(val) == 12 and len(train) == 48
    assert len(noanno) == len(splits["folds"][0]["train"]["noanno"]) < 48
    assert {val.get_data_info(i)["case_day"] for i in range(len(val))} == {"case10_day1"}
    # a sample: the [z-2, z, z+2] stack divided by its own max, and the unpacked 3-channel mask
    item = val[5]
    z = item["data_samples"].z
    vol = load_volume(seg_work, "case10_day1")
    expected = vol[[z - 2, z, z + 2]].astype(np.float32)
    expected /= expected.max()
    assert item["inputs"].shape == (3, 80, 96)
    np.testing.assert_allclose(item["inputs"].numpy(), expected, rtol=1e-6)
    gt = item["data_samples"].gt_sem_seg.data.numpy()
    assert gt.shape == (3, 80, 96)
    np.testing.assert_array_equal(gt, unpack_mask(np.asarray(load_mask(seg_work, "case10_day1")[z])))
    # clamped at the volume start
    assert read_stack(vol, 0)[..., 0].tolist() == read_stack(vol, 0)[..., 1].tolist()


def test_normalise_modes() -> None:
    s = np.array([[[10, 20], [30, 40]]], np.uint16)
    assert normalise_stack(s, "max").max() == 1.0 and normalise_stack(s, "max")[0, 0, 0] == pytest.approx(0.25)
    assert normalise_stack(s, "minmax")[0, 0, 0] == 0.0
    assert normalise_stack(s, "volume_max", volume_max=80)[0, 1, 1] == pytest.approx(0.5)
    assert normalise_stack(np.zeros((3, 2, 2), np.uint16)).max() == 0.0
    with pytest.raises(ValueError, match="normalise mode"):
        normalise_stack(s, "zscore")


def test_crop_boxes(seg_work, tmp_path) -> None:
    boxes = tmp_path / "boxes.csv"
    val = _dataset(seg_work, "val")
    ids = [val.get_data_info(i)["id"] for i in range(len(val))]
    boxes.write_text("id,x0,y0,x1,y1\n" + "".join(f"{i},10,20,60,70\n" for i in ids))
    ds = DATASETS.build(
        dict(
            type="GITractDataset",
            work=str(seg_work),
            fold=0,
            split="val",
            boxes=str(boxes),
            pipeline=[dict(type="LoadGIStack"), dict(type="GICropBox"), dict(type="PackGIInputs")],
        )
    )
    item = ds[6]
    z = item["data_samples"].z
    full = unpack_mask(np.asarray(load_mask(seg_work, "case10_day1")[z]))
    assert item["inputs"].shape == (3, 50, 50)
    np.testing.assert_array_equal(item["data_samples"].gt_sem_seg.data.numpy(), full[:, 20:70, 10:60])


def test_augmentation_moves_image_and_mask_together() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((96, 96, 3), np.uint8)
    mask[10:40, 20:70, 0] = 1  # an off-centre L-shape per class, overlapping
    mask[30:80, 50:60, 1] = 1
    mask[60:90, 5:30, 2] = 1
    mask[35:45, 55:58, 0] = 1
    img = np.concatenate([mask.astype(np.float32), rng.random((96, 96, 2), dtype=np.float32) * 0.1], axis=2)
    aug = TRANSFORMS.build(
        dict(
            type="AlbuSeg",
            transforms=[
                dict(type="HorizontalFlip", p=1.0),
                dict(type="Affine", translate_percent=(0.1, 0.1), scale=(1.1, 1.1), rotate=(20, 20), p=1.0),
                dict(
                    type="OneOf", transforms=[dict(type="GridDistortion", num_steps=5, distort_limit=0.3, p=1.0)], p=1.0
                ),
                dict(type="RandomBrightnessContrast", brightness_limit=0.0, contrast_limit=0.0, p=1.0),
            ],
        )
    )
    out = aug.transform(dict(img=img.copy(), gt_masks=mask.copy()))
    moved_img, moved_mask = out["img"], out["gt_masks"]
    assert moved_img.shape == (96, 96, 5) and moved_mask.shape == (96, 96, 3) and moved_mask.dtype == np.uint8
    for c in range(3):
        a, b = moved_img[..., c] > 0.5, moved_mask[..., c] > 0
        iou = (a & b).sum() / max((a | b).sum(), 1)
        assert iou > 0.9, (c, iou)  # the image's copy of the mask and the mask moved together
        assert (b != (mask[..., c] > 0)).sum() > 50  # and they did move


def test_losses_hand_computed() -> None:
    target = torch.zeros(1, 3, 4, 4)
    target[0, 0, :2] = 1
    logits = torch.where(target > 0, 20.0, -20.0)
    dice = MODELS.build(dict(type="MultiLabelDiceLoss", loss_weight=2.0, smooth=1.0))
    bce = MODELS.build(dict(type="MultiLabelBCELoss", loss_weight=0.5))
    assert float(dice(logits, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(bce(logits, target)) == pytest.approx(0.0, abs=1e-6)
    zero = torch.zeros(1, 3, 4, 4)  # p = 0.5 everywhere
    # class 0: (2 * 4 + 1) / (8 + 8 + 1); classes 1, 2: 1 / (8 + 1)
    expected = 2.0 * (1 - np.mean([9 / 17, 1 / 9, 1 / 9]))
    assert float(dice(zero, target)) == pytest.approx(expected, rel=1e-5)
    assert float(bce(zero, target)) == pytest.approx(0.5 * np.log(2), rel=1e-5)


def test_overlapping_classes_survive_postprocessing() -> None:
    cfg = load_config(TINY_UPERNET, work="/nonexistent")
    model = MODELS.build(cfg.model).eval()
    probs = torch.zeros(1, 3, 4, 4)
    probs[0, 0, 1, 1] = 0.9  # large and small bowel both present at (1, 1): argmax would keep one
    probs[0, 1, 1, 1] = 0.8
    probs[0, 2, 2, 2] = 0.4  # below the threshold
    res = model.postprocess_result(probs, [SegDataSample()])[0]
    pred = res.pred_sem_seg.data
    assert pred.shape == (3, 4, 4)
    assert pred[0, 1, 1] == 1 and pred[1, 1, 1] == 1 and pred[:, 2, 2].sum() == 0
    assert int(pred.sum()) == 2
    torch.testing.assert_close(res.seg_logits.data, probs[0])
    # the training loss path takes (3, H, W) targets with overlaps too
    sample = SegDataSample()
    gt = torch.zeros(3, 64, 64, dtype=torch.uint8)
    gt[0, 10:30, 10:30] = 1
    gt[1, 20:40, 20:40] = 1
    sample.gt_sem_seg = PixelData(data=gt)
    sample.set_metainfo(dict(img_shape=(64, 64)))
    losses = model.loss(torch.rand(1, 3, 64, 64), [sample])
    assert {"decode.loss_bce", "decode.loss_dice", "aux.loss_aux_bce"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_slice_dice_table_and_metric() -> None:
    t = slice_dice_table(
        np.array([[1, 0, 0], [0, 0, 0]]), np.array([[2, 0, 1], [0, 0, 0]]), np.array([[2, 0, 0], [0, 0, 3]])
    )
    # slice 0: 0.5, 1 (both empty), 0 ; slice 1: 1, 1, 0
    assert t["dice"] == pytest.approx((0.5 + 1 + 0 + 1 + 1 + 0) / 6)
    assert t["dice_skip"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert t["dice_large_bowel"] == pytest.approx(0.5) and np.isnan(t["dice_small_bowel"]) and t["dice_stomach"] == 0
    metric = GIMultiLabelMetric(compute_score=False)
    gt = torch.zeros(3, 4, 4, dtype=torch.uint8)
    gt[0, :2] = 1
    pred = gt.clone()
    pred[0, 0] = 0  # 4 of 8 pixels found: dice 2*4/(4+8)
    metric.process({}, [dict(pred_sem_seg=dict(data=pred), gt_sem_seg=dict(data=gt), id="a", case_day="c", z=0)])
    res = metric.compute_metrics(metric.results)
    assert res["dice_large_bowel"] == pytest.approx(8 / 12)
    assert res["dice"] == pytest.approx((8 / 12 + 1 + 1) / 3)


def test_bad_input_errors(seg_work, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m data_prep prepare"):
        check_work(tmp_path / "empty")
    for bad in ("5", "-1", "x", "1.5"):
        with pytest.raises(ValueError, match=r"\[0, 4\] or 'all'"):
            parse_folds(bad)
    assert parse_folds("all") == [0, 1, 2, 3, 4] and parse_folds(3) == [3]
    with pytest.raises(ValueError, match="efficientnet_b4"):
        check_timm_name("efficientnet_b44")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        check_model_cfg(
            dict(backbone=dict(type="GITimmBackbone", model_name="efficientnet_b0", pretrained="/no/w.pth"))
        )
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        check_model_cfg(
            dict(backbone=dict(type="SwinTransformer", init_cfg=dict(type="Pretrained", checkpoint="/no.pth")))
        )
    with pytest.raises(ValueError, match="unknown timm backbone"):
        MODELS.build(dict(type="GITimmBackbone", model_name="convnext_smal"))


def test_train_tool_rejects_bad_input_before_training(seg_work, tmp_path, capsys) -> None:
    import importlib.util

    from seg_fixtures import REPO

    spec = importlib.util.spec_from_file_location("seg_train_tool", REPO / "tools" / "train.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = str(TINY_UPERNET)
    assert tool.main([cfg, "--work", str(tmp_path / "nothing"), "--work-dir", str(tmp_path / "wd")]) == 2
    assert "python -m data_prep prepare" in capsys.readouterr().err
    assert tool.main([cfg, "--work", str(seg_work), "--fold", "7", "--work-dir", str(tmp_path / "wd")]) == 2
    assert "[0, 4] or 'all'" in capsys.readouterr().err
    opts = ["--cfg-options", "model.backbone.model_name=convnext_attto"]
    assert tool.main([cfg, "--work", str(seg_work), "--work-dir", str(tmp_path / "wd"), *opts]) == 2
    assert "convnext_atto" in capsys.readouterr().err
    opts = ["--cfg-options", "model.backbone.pretrained=/no/such/weights.pth"]
    assert tool.main([cfg, "--work", str(seg_work), "--work-dir", str(tmp_path / "wd"), *opts]) == 2
    assert "/no/such/weights.pth" in capsys.readouterr().err
    assert not (tmp_path / "wd").exists()  # nothing started


def test_pretrained_from_local_file_adapts_stem(tmp_path) -> None:
    import timm

    torch.manual_seed(0)
    full = timm.create_model("efficientnet_b0", pretrained=False)
    path = tmp_path / "effb0.pth"
    torch.save(full.state_dict(), path)
    bb = MODELS.build(dict(type="GITimmBackbone", model_name="efficientnet_b0", pretrained=str(path), in_channels=5))
    sd = bb.timm_model.state_dict()
    torch.testing.assert_close(sd["blocks.0.0.conv_dw.weight"], full.state_dict()["blocks.0.0.conv_dw.weight"])
    assert sd["conv_stem.weight"].shape[1] == 5  # the 3-channel stem was adapted to 5 channels
    assert bb.out_channels == [16, 24, 40, 112, 320]


def test_checkpoint_from_another_config_is_refused(tmp_path) -> None:
    from segmenters.mm.inference import Segmenter

    cfg = load_config(TINY_SWIN, work="/nonexistent")
    path = tmp_path / "swin.pth"
    torch.save({"state_dict": MODELS.build(cfg.model).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match="does not match config"):
        Segmenter.load(TINY_UNET, path)


def test_checkpoints_are_weights_only_loadable_and_resumable(tmp_path) -> None:
    from mmengine.logging import HistoryBuffer

    from training.runner import atomic_save_checkpoint, load_full_checkpoint, resume_candidates

    buf = HistoryBuffer([1.5, np.float64(2.5)], [1, 1])
    ckpt = {
        "state_dict": {"w": torch.ones(2)},
        "meta": {"iter": np.int64(8)},
        "message_hub": {"log_scalars": {"train/loss": buf}, "runtime_info": {"x": np.float32(1.0)}},
    }
    atomic_save_checkpoint(ckpt, str(tmp_path / "iter_8.pth"))
    raw = torch.load(tmp_path / "iter_8.pth", weights_only=True)  # no pickle of foreign classes
    assert raw["meta"]["iter"] == 8
    back = load_full_checkpoint(tmp_path / "iter_8.pth")
    restored = back["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(restored, HistoryBuffer) and restored.data[0].tolist() == [1.5, 2.5]
    # a truncated newer checkpoint: resume candidates list it first, it fails to load, the older one is used
    (tmp_path / "iter_12.pth").write_bytes((tmp_path / "iter_8.pth").read_bytes()[:100])
    cands = resume_candidates(tmp_path)
    assert [c.name for c in cands] == ["iter_12.pth", "iter_8.pth"]
    with pytest.raises((RuntimeError, EOFError, ValueError)):
        load_full_checkpoint(cands[0])
    assert not list(tmp_path.glob("*.tmp"))


def test_prior_prob_initialises_the_classifier_bias() -> None:
    head = MODELS.build(
        dict(type="GIUNetHead", in_channels=[8, 16], decoder_channels=(8, 4), num_classes=3, prior_prob=0.02)
    )
    head.init_weights()
    np.testing.assert_allclose(head.conv_seg.bias.detach().numpy(), np.log(0.02 / 0.98), rtol=1e-6)
    feats = [torch.zeros(1, 8, 16, 16), torch.zeros(1, 16, 8, 8)]
    probs = head(feats).sigmoid().detach()
    assert abs(float(probs.mean()) - 0.02) < 0.01  # every pixel starts near the prior, not at 0.5
    with pytest.raises(ValueError, match="prior_prob must be in"):
        MODELS.build(dict(type="MultiLabelFCNHead", in_channels=8, channels=4, num_classes=3, prior_prob=1.5))


def test_augmentations_follow_the_global_seed() -> None:
    """albumentations keeps its own generator; AlbuSeg seeds it from numpy's (which mmengine seeds), so a seeded run
    augments the same way every time."""
    cfg = dict(type="AlbuSeg", transforms=[dict(type="Affine", rotate=(-30, 30), scale=(0.8, 1.2), p=1.0)])
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    mask = (img[..., :3] > 0.5).astype(np.uint8)

    def augmented(seed: int) -> np.ndarray:
        np.random.seed(seed)
        t = TRANSFORMS.build(cfg)
        return np.stack([t.transform(dict(img=img.copy(), gt_masks=mask.copy()))["img"] for _ in range(3)])

    a, b, c = augmented(3), augmented(3), augmented(4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # successive samples still differ
