"""The slice classifier: model factory, inputs, the mmengine modules (dataset, model, metric), training with
tools/train.py on a separable toy set (validation, best checkpoint, out-of-fold probabilities, resume, every fold,
torchrun), inference and files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import dist_train, load_tool, read_scalars

from data_prep.constants import CLASSES
from data_prep.volumes import pack_mask, stack_indices
from data_prep.work import fold_ids, load_volume, read_splits, save_mask
from evaluation.classification import classification_metrics
from gating.classifier import (
    SliceClassifier,
    build_classifier,
    check_ids,
    predict_work,
    preprocess_volume,
    read_cls_probs,
    stack_image,
    write_cls_probs,
)
from gating.mm import SliceClassifierModel, SliceClsMetric, SliceStackDataset
from training.config import build_model, load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py"
CONFIGS = {
    "effb0": REPO / "mmcfg/gating/cls_efficientnet-b0_1xb32-8k_uwmgi-256x256.py",
    "convnext": REPO / "mmcfg/gating/cls_convnext-tiny_1xb32-8k_uwmgi-5ch-256x256.py",
    "tiny": TINY,
}
#: The toy set (tests/gating/conftest.py) puts class c in the c-th vertical third of the image: a left-right flip
#: would swap the labels of large bowel and stomach, so the toy runs train without augmentation. Nor with dropout or
#: drop-path: nothing random is drawn during training, so a resumed run can equal an uninterrupted one.
TOY_CONFIG = f"""_base_ = [{str(TINY)!r}]
img_size = (32, 32)
model = dict(drop_rate=0.0, drop_path_rate=0.0)
train_dataloader = dict(batch_size=12, dataset=dict(aug=None))
optim_wrapper = dict(optimizer=dict(lr=4e-3, weight_decay=0.0), clip_grad=None)
param_scheduler = []
randomness = dict(seed=3)
"""
#: iterations, validation, checkpoints and logging of the toy runs (tools/train.py --cfg-options)
OPTS = ["train_cfg.max_iters=24", "train_cfg.val_interval=12", "default_hooks.checkpoint.interval=12",
        "default_hooks.logger.interval=1"]  # fmt: skip


def _toy_config(tmp: Path) -> Path:
    path = tmp / "cls_toy-32x32.py"
    path.write_text(TOY_CONFIG)
    return path


@pytest.fixture(scope="module")
def toy_config(tmp_path_factory) -> Path:
    return _toy_config(tmp_path_factory.mktemp("cls_cfg"))


@pytest.fixture(scope="module")
def trained(toy_work, toy_config, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cls_run") / "fold_0"
    args = [str(toy_config), "--work", str(toy_work), "--work-dir", str(run), "--device", "cpu"]
    assert load_tool("train").main([*args, "--cfg-options", *OPTS]) == 0
    return run


# ------------------------------------------------------------------------------------------------- model, inputs


def test_unknown_model_name_lists_close_names():
    with pytest.raises(ValueError, match="efficientnet_b0"):
        build_classifier("efficientnet_b00")


def test_pretrained_from_local_file_adapts_channels_and_head(tmp_path, toy_work, capsys):
    src = build_classifier("resnet10t", in_chans=3, num_classes=10)
    path = tmp_path / "resnet10t_local.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(FileNotFoundError, match="local files only"):
        build_classifier("resnet10t", pretrained=tmp_path / "missing.pth")
    m = build_classifier("resnet10t", in_chans=5, num_classes=3, pretrained=path).eval()
    assert m(torch.zeros(1, 5, 32, 32)).shape == (1, 3)
    assert torch.equal(m.layer2[0].conv1.weight, src.layer2[0].conv1.weight)
    assert m.conv1[0].weight.shape[1] == 5  # first conv adapted from 3 to 5 channels
    assert not torch.equal(m.fc.weight[:3], src.fc.weight[:3])  # head of another size: freshly initialised
    # the mmengine model keeps the pretrained weights (mmengine's init_weights must not re-initialise timm's)
    model = SliceClassifierModel("resnet10t", in_channels=5, pretrained=str(path))
    model.init_weights()
    assert torch.equal(model.timm_model.layer2[0].conv1.weight, src.layer2[0].conv1.weight)
    # tools/train.py refuses a missing pretrained file before anything is built
    args = [str(TINY), "--work", str(toy_work), "--work-dir", str(tmp_path / "run"), "--device", "cpu"]
    assert load_tool("train").main([*args, "--cfg-options", f"model.pretrained={tmp_path / 'none.pth'}"]) == 2
    assert "pretrained weights not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_stack_image_and_volume_preprocessing_agree():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 4000, size=(7, 40, 52)).astype(np.uint16)
    vol[3] = 0
    vol[1, 5, 5] = 60000
    x = stack_image(vol, 0, channels=3, stride=2)
    assert x.shape == (3, 40, 52) and x.dtype == np.float32
    np.testing.assert_allclose(x, vol[[0, 0, 2]] / vol[[0, 2]].max(), rtol=1e-6)
    assert x.max() == 1.0
    resized, smax = preprocess_volume(vol, channels=5, stride=1, img_size=(24, 30))
    assert resized.shape == (7, 24, 30) and smax.shape == (7,)
    for z in range(7):
        ref = stack_image(vol, z, channels=5, stride=1, img_size=(24, 30))
        np.testing.assert_allclose(resized[stack_indices(z, 7, 1, 5)] / smax[z], ref, atol=1e-5)
    # an all-zero stack stays zero (no division by zero)
    zero = np.zeros((3, 8, 8), np.uint16)
    assert stack_image(zero, 1, channels=1).max() == 0 and preprocess_volume(zero)[1].tolist() == [1, 1, 1]


def test_cls_probs_files_refuse_mismatching_ids(tmp_path):
    ids = [f"case1_day0_slice_{i:04d}" for i in range(1, 6)]
    p = np.linspace(0, 1, 15).reshape(5, 3)
    path = write_cls_probs(tmp_path / "cls_probs.csv", ids, p)
    df = read_cls_probs(path, expected_ids=ids)
    assert df.columns.tolist() == ["id", *CLASSES]
    np.testing.assert_allclose(df[list(CLASSES)].to_numpy(), p, atol=1e-6)
    manifest = ids[:4] + ["case2_day0_slice_0001", "case2_day0_slice_0002"]
    with pytest.raises(
        ValueError,
        match=r"2 slices of the manifest are missing.*case2_day0_slice_0001.*"
        r"1 ids are not in the manifest.*case1_day0_slice_0005",
    ):
        read_cls_probs(path, expected_ids=manifest)
    with pytest.raises(ValueError, match="do not match"):
        check_ids(["a"], ["b"])
    bad = pd.read_csv(path)
    bad.loc[0, "stomach"] = 1.5
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        read_cls_probs(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="predict_cls.py"):
        read_cls_probs(tmp_path / "none.csv")


# ------------------------------------------------------------------------------------------------- configs


def test_configs_use_mmengine_vocabulary_with_todays_defaults():
    eff = load_config(CONFIGS["effb0"])
    for cfg in (eff, load_config(CONFIGS["convnext"]), load_config(TINY)):
        assert not {"optim", "schedule", "data", "seed"} & set(cfg.keys())
        assert "default_scope" not in cfg and cfg.model.type == "SliceClassifierModel"
        assert cfg.train_dataloader.sampler.type == "InfiniteSampler"
        assert cfg.train_cfg.type == "IterBasedTrainLoop" and cfg.runner_type == "GIRunner"
        assert cfg.default_hooks.checkpoint.save_best == "cls/score" and cfg.default_hooks.checkpoint.rule == "greater"
        assert cfg.default_hooks.checkpoint.max_keep_ckpts == 2 and cfg.default_hooks.checkpoint.save_last
        assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.optim_wrapper.clip_grad == {"max_norm": 5.0}
        assert [h.type for h in cfg.custom_hooks] == ["TrainingCurveHook", "ClsInputMetaHook", "ClsOOFHook"]
        assert tuple(cfg.custom_hooks[0]["keys"]) == ("cls/score", "cls/mean_auc")
        assert cfg.train_dataloader.dataset.variant == "all" and cfg.val_dataloader.dataset.split == "val"
    # the hyper-parameters of the hand loop's DEFAULTS
    tr, va = eff.train_dataloader, eff.val_dataloader
    assert (tr.batch_size, va.batch_size, tr.num_workers, va.num_workers) == (32, 64, 4, 4)
    assert tr.dataset.img_size == va.dataset.img_size == (256, 256)
    assert (tr.dataset.channels, tr.dataset.stride, eff.model.in_channels) == (3, 2, 3)
    assert tr.dataset.aug == dict(hflip=0.5, affine=0.7, scale=(0.85, 1.15), rotate=15.0, shift=0.06, brightness=0.15)
    assert (eff.model.model_name, eff.model.drop_rate, eff.model.drop_path_rate) == ("efficientnet_b0", 0.2, 0.1)
    assert (eff.optim_wrapper.optimizer.lr, eff.optim_wrapper.optimizer.weight_decay) == (1e-3, 1e-2)
    warm, cos = eff.param_scheduler
    assert (warm.type, warm.start_factor, warm.end) == ("LinearLR", 1 / 200, 200)
    assert (cos.type, cos.begin, cos.eta_min_ratio, "end" in cos) == ("CosineAnnealingLR", 200, 0.01, False)
    assert (eff.train_cfg.max_iters, eff.train_cfg.val_interval, eff.default_hooks.checkpoint.interval) == (
        8000,
        1000,
        500,
    )
    assert eff.default_hooks.logger.interval == 50 and eff.randomness.seed == 42
    # the stack shortcut reaches the datasets and the model
    cnx = load_config(CONFIGS["convnext"])
    assert cnx.model.in_channels == cnx.train_dataloader.dataset.channels == cnx.val_dataloader.dataset.channels == 5
    assert (cnx.model.model_name, cnx.model.drop_path_rate, cnx.optim_wrapper.optimizer.lr) == (
        "convnext_tiny",
        0.2,
        2e-4,
    )
    tiny = load_config(TINY, {"img_size": (32, 48), "stack.channels": 5})
    assert tiny.train_dataloader.dataset.img_size == tiny.test_dataloader.dataset.img_size == (32, 48)
    assert tiny.model.in_channels == tiny.val_dataloader.dataset.channels == 5


def test_config_keys_are_checked(toy_work):
    cfg = load_config(TINY, {"model.drop_rat": 0.1})
    with pytest.raises(ValueError, match=r"model\.drop_rat.*resnet10t"):
        build_model(cfg)
    assert isinstance(build_model(load_config(TINY)), SliceClassifierModel)
    with pytest.raises(ValueError, match=r"aug\.hfilp.*did you mean 'hflip'"):
        SliceStackDataset(toy_work, aug={"hfilp": 0.5})
    with pytest.raises(ValueError, match="split variant"):
        SliceStackDataset(toy_work, variant="notale")
    with pytest.raises(ValueError, match=r"fold must be in \[0, 2\]"):
        SliceStackDataset(toy_work, fold=7)


def test_dataset_sides_inputs_and_targets(toy_work):
    splits = read_splits(toy_work)
    train = SliceStackDataset(toy_work, fold=0, split="train", img_size=(32, 32), aug=dict(hflip=1.0))
    val = SliceStackDataset(toy_work, fold=0, split="val", img_size=(32, 32), aug=dict(hflip=1.0), test_mode=True)
    assert len(train) == 64 and len(val) == 32 and len(SliceStackDataset(toy_work, split="all")) == 96
    assert [val.get_data_info(i)["id"] for i in range(len(val))] == fold_ids(splits, 0, "val")
    assert [train.get_data_info(i)["id"] for i in range(len(train))] == fold_ids(splits, 0, "train", "all")
    table = pd.read_csv(toy_work / "exports" / "classifier.csv").set_index("id")
    item = val[5]
    s = item["data_samples"]
    assert item["inputs"].shape == (3, 32, 32) and item["inputs"].dtype == torch.float32
    assert s.id == fold_ids(splits, 0, "val")[5] and s.z == table.loc[s.id, "z"] and s.case_day == "case1_day0"
    assert s.gt_label.tolist() == table.loc[s.id, list(CLASSES)].astype(float).tolist()
    ref = stack_image(load_volume(toy_work, s.case_day), s.z, 3, 2, (32, 32))
    np.testing.assert_array_equal(item["inputs"].numpy(), ref)  # test_mode: no augmentation
    flipped = train[0]["inputs"].numpy()  # hflip=1.0 on the training side
    info = train.get_data_info(0)
    np.testing.assert_array_equal(
        flipped, stack_image(load_volume(toy_work, info["case_day"]), info["z"], 3, 2, (32, 32))[..., ::-1]
    )


def test_model_modes():
    model = build_model(load_config(TINY)).eval()
    from mmengine.structures import BaseDataElement

    samples = [BaseDataElement(metainfo=dict(id=f"s{i}"), gt_label=torch.tensor([1.0, 0.0, 1.0])) for i in range(2)]
    data = model.data_preprocessor(dict(inputs=[torch.rand(3, 32, 32) for _ in range(2)], data_samples=samples))
    logits = model(data["inputs"], mode="tensor")
    assert logits.shape == (2, 3)
    loss = model(**data, mode="loss")["loss"]
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 0.0, 1.0]] * 2))
    torch.testing.assert_close(loss, want)
    out = model(**data, mode="predict")
    assert [o.id for o in out] == ["s0", "s1"]
    torch.testing.assert_close(torch.stack([o.pred_score for o in out]), torch.sigmoid(logits))
    with pytest.raises(ValueError, match="mode"):
        model(data["inputs"], mode="logits")


# ------------------------------------------------------------------------------------------------- metric


def test_classification_metrics_values():
    p = np.array([[0.9, 0.2, 0.6], [0.1, 0.3, 0.4], [0.8, 0.7, 0.55], [0.3, 0.1, 0.45]])
    t = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1]])
    m = classification_metrics(p, t)
    assert m["auc_large_bowel"] == 1.0 and m["f1_large_bowel"] == 1.0
    assert m["auc_small_bowel"] == 0.5  # positives 0.7, 0.1 vs negatives 0.2, 0.3
    assert m["f1_small_bowel"] == pytest.approx(2 / 3)
    assert m["auc_stomach"] == 0.75 and m["f1_stomach"] == pytest.approx(0.5)  # 3 of 4 pos/neg pairs ordered
    assert m["mean_auc"] == pytest.approx(0.75)


def test_metric_gate_score_on_a_hand_made_case_day(tmp_path):
    """One case-day of 4 slices: large bowel on slices 1-2, small bowel on slice 0, no stomach."""
    masks = np.zeros((4, 3, 8, 8), np.uint8)
    masks[1:3, 0, 2:5, 2:5] = 1
    masks[0, 1, 4:6, 1:3] = 1
    save_mask(tmp_path, "case1_day0", pack_mask(masks))
    present = masks.any(axis=(2, 3)).astype(np.float32)

    def evaluate(probs: np.ndarray) -> dict[str, float]:
        metric = SliceClsMetric(work=str(tmp_path))
        # scrambled order and a duplicate (a distributed sampler's padding): neither changes anything
        order = [2, 0, 3, 1, 2]
        metric.process(
            None, [dict(id=f"s{z}", case_day="case1_day0", z=z, pred_score=torch.tensor(probs[z])) for z in order]
        )
        return metric.evaluate(len(order))

    perfect = evaluate(present)  # keep = truth presence
    assert perfect["cls/score"] == 1.0 and perfect["cls/dice"] == 1.0 and perfect["cls/hausdorff"] == 1.0
    assert perfect["cls/mean_f1"] == 1.0 and perfect["cls/auc_large_bowel"] == 1.0
    # keep everything: 3 present (slice, class) pairs right, 9 empty ones kept = false positives (Dice 0); the
    # kept masks are the true ones, so the Hausdorff part is perfect: 0.4 * 3/12 + 0.6 * 1
    everything = evaluate(np.ones((4, 3), np.float32))
    assert everything["cls/dice"] == pytest.approx(0.25) and everything["cls/hausdorff"] == pytest.approx(1.0)
    assert everything["cls/score"] == pytest.approx(0.7)
    assert everything["cls/auc_large_bowel"] == 0.5 and np.isnan(everything["cls/auc_stomach"])
    assert everything["cls/f1_large_bowel"] == pytest.approx(2 / 3)  # precision 2/4, recall 1
    assert everything["cls/f1_small_bowel"] == pytest.approx(0.4) and everything["cls/f1_stomach"] == 0.0
    assert everything["cls/mean_f1"] == pytest.approx((2 / 3 + 0.4) / 3) and everything["cls/mean_auc"] == 0.5
    # drop everything: the 9 empty pairs are right; large and small bowel missed (distance 1), stomach empty in
    # both (distance 0): 0.4 * 9/12 + 0.6 * (1 - 2/3)
    nothing = evaluate(np.zeros((4, 3), np.float32))
    assert nothing["cls/score"] == pytest.approx(0.5) and nothing["cls/dice"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no mask of case2_day0"):
        metric = SliceClsMetric(work=str(tmp_path))
        metric.process(None, [dict(id="x", case_day="case2_day0", z=0, pred_score=torch.zeros(3))])
        metric.evaluate(1)


# ------------------------------------------------------------------------------------------------- training


def test_classifier_beats_chance_and_writes_oof(trained, toy_work):
    run = trained
    (rows,) = read_scalars(run)
    assert [r["iter"] for r in rows if "loss" in r] == list(range(1, 25))
    vals = [r for r in rows if "cls/mean_auc" in r]
    assert [r["step"] for r in vals] == [12, 24]
    assert {f"cls/{k}_{c}" for k in ("auc", "f1") for c in CLASSES} <= set(vals[0])
    assert max(r["cls/mean_auc"] for r in vals) > 0.7, vals  # chance is 0.5
    (best,) = run.glob("best_cls_score_iter_*.pth")
    assert (run / "best.pth").resolve() == best.resolve()  # the stable name points at the best cls/score
    best_iter = int(re.search(r"iter_(\d+)", best.name).group(1))
    assert (
        max(vals, key=lambda r: r["cls/score"])["cls/score"]
        == next(r for r in vals if r["step"] == best_iter)["cls/score"]
    )
    for name in ("iter_12.pth", "iter_24.pth", "last_checkpoint", "training_curve.png", "done.json"):
        assert (run / name).exists(), name
    # out-of-fold: exactly the val slices, by the best checkpoint (its metrics are the logged ones)
    val = fold_ids(read_splits(toy_work), 0, "val")
    oof = read_cls_probs(run / "oof" / "cls_probs.csv", expected_ids=val)
    assert oof["id"].tolist() == val
    table = pd.read_csv(toy_work / "exports" / "classifier.csv").set_index("id").loc[oof["id"]]
    probs = oof[list(CLASSES)].to_numpy()
    m = classification_metrics(probs, table[list(CLASSES)].to_numpy())
    logged = next(r for r in vals if r["step"] == best_iter)
    assert m["mean_auc"] == pytest.approx(logged["cls/mean_auc"], abs=1e-4)
    assert m["mean_f1"] == pytest.approx(logged["cls/mean_f1"], abs=1e-4)
    # the gate score of the out-of-fold probabilities is the logged cls/score of the best checkpoint
    metric = SliceClsMetric(work=str(toy_work))
    metric.process(None, [dict(id=i, case_day=r.case_day, z=r.z, pred_score=torch.tensor(p))
                          for i, r, p in zip(table.index, table.itertuples(), probs)])  # fmt: skip
    assert metric.evaluate(len(oof))["cls/score"] == pytest.approx(logged["cls/score"], abs=1e-6)


def test_slice_classifier_loads_with_and_without_config(trained, toy_work, toy_config, tmp_path, caplog):
    run = trained
    ck = torch.load(run / "best.pth", weights_only=True)  # inference weights load without unpickling code
    stored_def = ck["meta"]["slice_classifier"]  # plain data: the model is rebuilt from it without running code
    assert stored_def["model"]["type"] == "SliceClassifierModel" and stored_def["img_size"] == [32, 32]
    stored = SliceClassifier.load(run / "best.pth", "cpu")
    given = SliceClassifier.load(run / "best.pth", "cpu", config=toy_config)
    for clf in (stored, given):
        assert (clf.channels, clf.stride, clf.img_size) == (3, 2, (32, 32))
    oof = pd.read_csv(run / "oof" / "cls_probs.csv").set_index("id")
    vol = load_volume(toy_work, "case1_day0")  # case 1 is in fold 0's val
    p = stored.predict_volume(vol, batch_size=5)
    assert p.shape == (16, 3) and p.dtype == np.float32
    np.testing.assert_allclose(given.predict_volume(vol, batch_size=16), p, atol=1e-6)
    ids = [f"case1_day0_slice_{z + 1:04d}" for z in range(16)]
    np.testing.assert_allclose(p, oof.loc[ids, list(CLASSES)].to_numpy(), atol=1e-4)
    # a config that says another input size (the run trained with img_size=(32, 32)): the trained one is used
    with caplog.at_level("WARNING", logger="gating.classifier"):
        other = SliceClassifier.load(run / "best.pth", "cpu", config=TINY)
    assert other.img_size == (32, 32) and "(3, 2, (64, 64))" in caplog.text
    np.testing.assert_allclose(other.predict_volume(vol), p, atol=1e-6)
    out = predict_work(stored, toy_work, tmp_path / "test" / "cls_probs.csv", batch_size=16)
    manifest = pd.read_csv(toy_work / "manifest.csv")
    assert out["id"].tolist() == manifest["id"].tolist()
    np.testing.assert_allclose(out.set_index("id").loc[ids].to_numpy(), p, atol=1e-5)
    # a checkpoint of other classes (or another class order) is refused, with or without a config
    torch.save({**ck, "meta": {**ck["meta"], "slice_classifier": {**stored_def, "classes": CLASSES[::-1]}}},
               tmp_path / "reordered.pth")  # fmt: skip
    for config in (None, toy_config):
        with pytest.raises(ValueError, match=r"trained on the classes \['stomach', 'small_bowel', 'large_bowel'\]"):
            SliceClassifier.load(tmp_path / "reordered.pth", config=config)
    # a bare state dict needs its config
    torch.save({"state_dict": ck["state_dict"]}, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match=r"no classifier definition .*config="):
        SliceClassifier.load(tmp_path / "plain.pth")
    plain = SliceClassifier.load(tmp_path / "plain.pth", config=toy_config)
    np.testing.assert_allclose(plain.predict_volume(vol), p, atol=1e-6)
    with pytest.raises(ValueError, match="does not match config"):  # weights of another model
        SliceClassifier.load(tmp_path / "plain.pth", config=CONFIGS["effb0"])
    (tmp_path / "other.py").write_text("model = dict(type='MultiLabelEncoderDecoder')\n")
    with pytest.raises(ValueError, match="not a slice classifier config"):
        SliceClassifier.load(tmp_path / "plain.pth", config=tmp_path / "other.py")


def test_predict_cls_cli_refuses_to_overwrite(trained, toy_work, toy_config, tmp_path):
    tool = load_tool("predict_cls")
    out = tmp_path / "cls_probs.csv"
    argv = [str(trained / "best.pth"), "--work", str(toy_work), "--out", str(out), "--device", "cpu"]
    assert tool.main(argv) == 0
    first = read_cls_probs(out, expected_ids=pd.read_csv(toy_work / "manifest.csv")["id"])
    assert tool.main(argv) == 2  # exists, no --overwrite
    assert tool.main([*argv, "--overwrite", "--config", str(toy_config)]) == 0
    pd.testing.assert_frame_equal(read_cls_probs(out), first, atol=1e-6)


def test_resume_continues_from_last_checkpoint(toy_work, toy_config, tmp_path, capsys):
    """Stopped at 4 and resumed to 6: the iteration, the optimizer state and the weights go on from the checkpoint,
    and the final weights equal an uninterrupted run's, tensor for tensor (the toy config draws nothing random
    during training: no dropout, drop-path or augmentation)."""

    def args(wd: Path, max_iters: int) -> list[str]:
        return [str(toy_config), "--work", str(toy_work), "--work-dir", str(wd), "--device", "cpu", "--cfg-options",
                "default_hooks.checkpoint.interval=2", "train_cfg.val_interval=100",
                "default_hooks.logger.interval=1", f"train_cfg.max_iters={max_iters}"]  # fmt: skip

    ref, wd = tmp_path / "ref", tmp_path / "run"
    train = load_tool("train")
    assert train.main(args(ref, 6)) == 0  # the uninterrupted reference run
    assert train.main(args(wd, 4)) == 0
    assert train.main(args(wd, 6)) == 2  # a run is there: --resume or --overwrite
    assert "--resume" in capsys.readouterr().err
    assert train.main([*args(wd, 6), "--resume"]) == 0
    iters = [r["iter"] for rows in read_scalars(wd) for r in rows if "loss" in r]
    assert iters == [1, 2, 3, 4, 5, 6]  # the second run started at 5
    log = "\n".join(p.read_text() for p in sorted(wd.glob("*/*.log")))
    assert re.search(r"resumed from \S*iter_4.pth at iteration 4\b", log)
    ck = torch.load(wd / "iter_6.pth", weights_only=True)
    assert ck["meta"]["iter"] == 6
    # AdamW's step counter went on from the checkpoint: optimizer state was restored, not rebuilt
    assert {int(s["step"]) for s in ck["optimizer"]["state"].values()} == {6}
    want = torch.load(ref / "iter_6.pth", weights_only=True)["state_dict"]
    assert ck["state_dict"].keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(ck["state_dict"][k], v), f"{k} differs from the uninterrupted run"
    assert json.loads((wd / "done.json").read_text())["iterations"] == 6
    assert (wd / "oof" / "cls_probs.csv").is_file()  # validated at the last iteration, so a best.pth exists


def test_fold_all_trains_every_fold(toy_work_2folds, toy_config, tmp_path):
    work, wd = toy_work_2folds, tmp_path / "all"
    args = [str(toy_config), "--work", str(work), "--work-dir", str(wd), "--fold", "all", "--device", "cpu",
            "--cfg-options", "train_cfg.max_iters=2", "train_cfg.val_interval=2",
            "default_hooks.checkpoint.interval=2"]  # fmt: skip
    assert load_tool("train").main(args) == 0
    splits = read_splits(work)
    assert sorted(p.name for p in wd.iterdir()) == ["fold_0", "fold_1"]
    for k in range(2):
        run = wd / f"fold_{k}"
        assert json.loads((run / "done.json").read_text())["fold"] == k
        assert (run / "best.pth").is_file()
        read_cls_probs(run / "oof" / "cls_probs.csv", expected_ids=fold_ids(splits, k, "val"))


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(toy_work, toy_config, tmp_path):
    wd = tmp_path / "ddp"
    dist_train(toy_config, 2, [
        "--device", "cpu", "--work", str(toy_work), "--fold", "1", "--work-dir", str(wd),
        "--cfg-options", "train_cfg.max_iters=4", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
        "train_dataloader.batch_size=8", "default_hooks.logger.interval=1",
    ])  # fmt: skip
    assert torch.load(wd / "iter_4.pth", weights_only=True)["meta"]["iter"] == 4
    read_cls_probs(wd / "oof" / "cls_probs.csv", expected_ids=fold_ids(read_splits(toy_work), 1, "val"))
    (rows,) = read_scalars(wd)
    assert [r["step"] for r in rows if "cls/score" in r] == [2, 4]
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2, 3, 4]
