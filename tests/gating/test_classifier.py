"""The slice classifier: model factory, inputs, training on a separable toy set, resume, inference, files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data_prep.constants import CLASSES
from data_prep.volumes import stack_indices
from data_prep.work import load_volume
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
from gating.cls_train import classification_metrics, fold_ids, merge_defaults, train_classifier

TOY_CFG = {
    "model": {"name": "resnet10t", "kwargs": {}},
    "data": {"img_size": (32, 32), "batch_size": 12, "val_batch_size": 64, "num_workers": 0, "aug": {}},
    "optim": {"lr": 4e-3, "weight_decay": 0.0, "grad_clip": 0},
    "schedule": {"max_iters": 24, "warmup_iters": 0, "val_interval": 12, "ckpt_interval": 12, "log_interval": 6},
    "seed": 3,
}


def _cfg(**sched):
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TOY_CFG.items()}
    cfg["schedule"] = {**TOY_CFG["schedule"], **sched}
    return cfg


@pytest.fixture(scope="module")
def trained(toy_work, tmp_path_factory):
    run = tmp_path_factory.mktemp("cls_run")
    result = train_classifier(TOY_CFG, toy_work, run, fold=0)
    return run, result


def test_unknown_model_name_lists_close_names():
    with pytest.raises(ValueError, match="efficientnet_b0"):
        build_classifier("efficientnet_b00")


def test_pretrained_from_local_file_adapts_channels_and_head(tmp_path):
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


def test_config_keys_are_checked():
    with pytest.raises(ValueError, match="did you mean batch_size"):
        merge_defaults({"data": {"batchsize": 4}})
    with pytest.raises(ValueError, match="did you mean schedule"):
        merge_defaults({"schedul": {}})
    assert merge_defaults({"data": {"channels": 5}})["data"]["stride"] == 2


def test_fold_ids_use_unfiltered_training_variant(toy_work):
    train, val = fold_ids(toy_work, 0)
    assert len(train) == 64 and len(val) == 32 and not set(train) & set(val)
    all_train, none = fold_ids(toy_work, "all")
    assert len(all_train) == 96 and none == []
    with pytest.raises(ValueError, match="fold 7"):
        fold_ids(toy_work, 7)


def test_classification_metrics_values():
    p = np.array([[0.9, 0.2, 0.6], [0.1, 0.3, 0.4], [0.8, 0.7, 0.55], [0.3, 0.1, 0.45]])
    t = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1]])
    m = classification_metrics(p, t)
    assert m["auc_large_bowel"] == 1.0 and m["f1_large_bowel"] == 1.0
    assert m["auc_small_bowel"] == 0.5  # positives 0.7, 0.1 vs negatives 0.2, 0.3
    assert m["f1_small_bowel"] == pytest.approx(2 / 3)
    assert m["auc_stomach"] == 0.75 and m["f1_stomach"] == pytest.approx(0.5)  # 3 of 4 pos/neg pairs ordered
    assert m["mean_auc"] == pytest.approx(0.75)


def test_classifier_beats_chance_and_writes_oof(trained, toy_work):
    run, result = trained
    assert result["iteration"] == 24
    assert result["best_score"] > 0.7, result  # chance is 0.5; seeds 3-5 give 0.80-0.87
    for name in ("last.pth", "best.pth", "metrics.csv", "curve.png", "train.log", "oof/cls_probs.csv"):
        assert (run / name).is_file(), name
    _, val = fold_ids(toy_work, 0)
    oof = read_cls_probs(run / "oof" / "cls_probs.csv", expected_ids=val)
    truth = pd.read_csv(toy_work / "exports" / "classifier.csv").set_index("id").loc[oof["id"], list(CLASSES)]
    m = classification_metrics(oof[list(CLASSES)].to_numpy(), truth.to_numpy())
    assert m["mean_auc"] == pytest.approx(result["best_score"], abs=1e-4)
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["iteration"].max() == 24 and metrics["mean_auc"].notna().sum() == 2


def test_slice_classifier_predicts_like_validation(trained, toy_work, tmp_path):
    run, _ = trained
    clf = SliceClassifier.load(run / "best.pth", "cpu")
    assert clf.channels == 3 and clf.img_size == (32, 32)
    oof = pd.read_csv(run / "oof" / "cls_probs.csv").set_index("id")
    vol = load_volume(toy_work, "case1_day0")  # case 1 is in fold 0's val
    p = clf.predict_volume(vol, batch_size=5)
    assert p.shape == (16, 3) and p.dtype == np.float32
    ids = [f"case1_day0_slice_{z + 1:04d}" for z in range(16)]
    np.testing.assert_allclose(p, oof.loc[ids, list(CLASSES)].to_numpy(), atol=1e-4)
    out = predict_work(clf, toy_work, tmp_path / "test" / "cls_probs.csv", batch_size=16)
    manifest = pd.read_csv(toy_work / "manifest.csv")
    assert out["id"].tolist() == manifest["id"].tolist()
    np.testing.assert_allclose(out.set_index("id").loc[ids].to_numpy(), p, atol=1e-5)
    with pytest.raises(ValueError, match="meta"):
        torch.save({"state_dict": clf.model.state_dict()}, tmp_path / "plain.pth")
        SliceClassifier.load(tmp_path / "plain.pth")


def test_resume_continues_from_saved_iteration_identically(toy_work, tmp_path):
    cfg = _cfg(max_iters=6, val_interval=3, ckpt_interval=3, log_interval=1)
    full = train_classifier(cfg, toy_work, tmp_path / "full", fold=0)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train_classifier(cfg, toy_work, tmp_path / "piece", fold=0, resume=True)
    first = train_classifier(cfg, toy_work, tmp_path / "piece", fold=0, stop_at=3)
    assert first["iteration"] == 3
    assert torch.load(tmp_path / "piece" / "last.pth", weights_only=False)["iteration"] == 3
    with pytest.raises(ValueError, match="--resume"):
        train_classifier(cfg, toy_work, tmp_path / "piece", fold=0)
    second = train_classifier(cfg, toy_work, tmp_path / "piece", fold=0, resume=True)
    assert second["iteration"] == 6
    hist = pd.read_csv(tmp_path / "piece" / "metrics.csv")
    assert hist.dropna(subset=["loss"])["iteration"].tolist() == [1, 2, 3, 4, 5, 6]
    ref = pd.read_csv(tmp_path / "full" / "metrics.csv")
    np.testing.assert_allclose(hist["loss"].dropna(), ref["loss"].dropna(), rtol=1e-4)
    a = torch.load(tmp_path / "full" / "last.pth", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "piece" / "last.pth", weights_only=False)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert second["best_score"] == pytest.approx(full["best_score"], abs=1e-4)


def test_predict_cls_cli_refuses_to_overwrite(trained, toy_work, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "predict_cls.py"
    spec = importlib.util.spec_from_file_location("_tool_predict_cls", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    run, _ = trained
    out = tmp_path / "cls_probs.csv"
    argv = [str(run / "best.pth"), "--work", str(toy_work), "--out", str(out), "--device", "cpu"]
    assert tool.main(argv) == 0
    first = read_cls_probs(out, expected_ids=pd.read_csv(toy_work / "manifest.csv")["id"])
    assert tool.main(argv) == 2  # exists, no --overwrite
    assert tool.main([*argv, "--overwrite"]) == 0
    pd.testing.assert_frame_equal(read_cls_probs(out), first)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(toy_work, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29577",
        str(repo / "tools" / "train_cls.py"), str(repo / "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py"),
        "--work", str(toy_work), "--fold", "1", "--launcher", "pytorch", "--device", "cpu",
        "--work-dir", str(tmp_path / "ddp"), "--cfg-options", "schedule.max_iters=4", "schedule.val_interval=2",
        "schedule.ckpt_interval=2", "data.batch_size=8", "data.img_size=[32,32]",
    ]  # fmt: skip
    r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(tmp_path / "ddp" / "last.pth", weights_only=False)
    assert ck["iteration"] == 4 and len(ck["rng"]["torch"]) == 2  # one RNG state per rank
    _, val = fold_ids(toy_work, 1)
    read_cls_probs(tmp_path / "ddp" / "oof" / "cls_probs.csv", expected_ids=val)
    metrics = pd.read_csv(tmp_path / "ddp" / "metrics.csv")
    assert metrics["mean_auc"].notna().sum() == 2


def test_fold_all_trains_without_validation(toy_work, tmp_path):
    cfg = _cfg(max_iters=2, val_interval=1, ckpt_interval=2, log_interval=1)
    result = train_classifier(cfg, toy_work, tmp_path / "all", fold="all")
    assert result["iteration"] == 2 and result["last_val"] == {}
    assert (tmp_path / "all" / "best.pth").is_file() and not (tmp_path / "all" / "oof").exists()
    clf = SliceClassifier.load(tmp_path / "all" / "best.pth")
    assert clf.meta["fold"] == "all" and clf.meta["iteration"] == 2
