"""Every segmenter config in mmcfg/ loads, is named as mmsegmentation names configs, builds its model and gives
(N, 3, H, W) for 3- and 5-channel inputs."""

from __future__ import annotations

import re

import pytest
import torch
from mmseg.registry import MODELS
from seg_fixtures import REPO

import segmenters.mm  # noqa: F401  (mmcv-lite shim before mmseg)
from training.config import load_config

pytestmark = pytest.mark.usefixtures("mmseg_scope")

CONFIGS = sorted((REPO / "mmcfg" / "unet").glob("*.py")) + sorted((REPO / "mmcfg" / "upernet").glob("*.py"))
NAME_RE = re.compile(r"^(unet|upernet)_[a-z0-9\-]+_\d+xb\d+-\d+k?_gitract-\d+x\d+$")
TINY = [c for c in CONFIGS if "-128x128" in c.name]
BIG = [c for c in CONFIGS if c not in TINY]


def test_config_set() -> None:
    names = {c.stem for c in CONFIGS}
    for needed in (
        "unet_effb4_2xb16-20k_gitract-384x384",
        "unet_effb7_2xb16-20k_gitract-384x384",
        "upernet_convnext-s_2xb16-20k_gitract-384x384",
        "upernet_convnext-b_2xb16-20k_gitract-384x384",
        "upernet_swin-s_2xb16-20k_gitract-384x384",
    ):
        assert needed in names
    assert len(TINY) == 3  # one per family: U-Net/EfficientNet, UPerNet/ConvNeXt, UPerNet/Swin
    for c in CONFIGS:
        assert NAME_RE.match(c.stem), c.stem


@pytest.mark.parametrize("config", BIG, ids=lambda p: p.stem)
def test_big_config_defaults(config) -> None:
    cfg = load_config(config, work="/nonexistent")
    assert tuple(cfg.img_size) == (384, 384)
    assert cfg.stack == dict(stride=2, channels=3, norm="max")
    assert cfg.train_cfg.max_iters == 20000 and cfg.train_dataloader.batch_size == 16
    assert cfg.model.test_cfg.tta == ["hflip"]
    assert cfg.default_scope == "mmseg" and cfg.custom_imports.imports == [
        "training.runner",
        "training.hooks",
        "segmenters.mm",
    ]
    assert cfg.default_hooks.checkpoint.save_best == "gi/score"
    losses = {d["type"]: d["loss_weight"] for d in cfg.model.decode_head.loss_decode}
    assert losses == {"MultiLabelBCELoss": 1.0, "MultiLabelDiceLoss": 1.0}
    resize = [t for t in cfg.train_dataloader.dataset.pipeline if t["type"] == "GIResize"]
    assert resize[0]["size"] == (384, 384)


@pytest.mark.parametrize("channels", [3, 5])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_and_outputs(config, channels: int) -> None:
    cfg = load_config(config, work="/nonexistent", stack=dict(stride=2, channels=channels, norm="max"))
    assert cfg.model.backbone.in_channels == channels
    load = [t for t in cfg.val_dataloader.dataset.pipeline if t["type"] == "LoadGIStack"][0]
    assert load["channels"] == channels
    swin = cfg.model.backbone.type == "SwinTransformer"
    if config in TINY or swin:  # real weights on CPU (mmseg's Swin cannot be built on the meta device)
        torch.manual_seed(0)
        model = MODELS.build(cfg.model).eval()
        x = torch.rand(2, channels, 64, 96)
        with torch.no_grad():
            probs = model.predict_probs(x, tta=("hflip",))
            res = model.predict(x)
        assert probs.shape == (2, 3, 64, 96)
        assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0
        assert res[0].pred_sem_seg.data.shape == (3, 64, 96)
        assert torch.equal(res[0].pred_sem_seg.data.bool(), res[0].seg_logits.data > 0.5)
    else:  # large timm models: shapes on the meta device (no memory, no init cost)
        with torch.device("meta"):
            model = MODELS.build(cfg.model).eval()
            probs = model.predict_probs(torch.empty(2, channels, 64, 96))
        assert tuple(probs.shape) == (2, 3, 64, 96)
