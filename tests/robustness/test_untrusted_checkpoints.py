"""A checkpoint that runs code when unpickled (a booby-trapped ``.pth``/``.pt``): every loader of model weights
(inference of each model kind, ``load_from``, pretrained backbones) refuses it with an error naming the file, and
the code never runs. Full unpickling is kept to resuming one's own runs (``common.engine.load_trusted``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from robust_helpers import REPO


class Trap:
    """Unpickling this creates the file ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def trapped(tmp_path: Path) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: a plausible checkpoint (state dict + meta) whose meta holds a :class:`Trap`."""
    marker = tmp_path / "code_ran"
    ck = tmp_path / "evil.pth"
    state = {"w": torch.zeros(2)}
    torch.save({"state_dict": state, "meta": {"model": "resnet10t", "channels": 3, "x": Trap(marker)}}, ck)
    return ck, marker


def test_trap_really_runs_code_when_fully_unpickled(trapped):
    """The control: full unpickling (what ``load_trusted`` does for one's own runs) does run it."""
    from common.engine import load_trusted

    ck, marker = trapped
    load_trusted(ck)
    assert marker.exists()


def test_load_weights_refuses(trapped):
    from common.engine import load_weights

    ck, marker = trapped
    with pytest.raises(ValueError, match=rf"cannot load {ck} with weights_only=True"):
        load_weights(ck)
    assert not marker.exists()


def test_classifier_inference_refuses(trapped):
    from gating.classifier import SliceClassifier

    ck, marker = trapped
    with pytest.raises(ValueError, match=str(ck)):
        SliceClassifier.load(ck, "cpu")  # reads the definition stored in the checkpoint
    with pytest.raises(ValueError, match=str(ck)):
        SliceClassifier.load(ck, "cpu", config=REPO / "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py")
    assert not marker.exists()


def test_classifier_never_runs_a_config_stored_in_a_checkpoint(tmp_path):
    """A config is Python: one stored in a checkpoint (mmengine writes ``meta["cfg"]``) is never executed, and the
    plain-data definition the classifier reads instead is checked before anything is built from it."""
    from gating.classifier import SliceClassifier

    marker = tmp_path / "code_ran"
    code = f"x = __import__('os').system('touch {marker}')\n"
    ck = tmp_path / "cfg.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {"cfg": code}}, ck)
    with pytest.raises(ValueError, match="no classifier definition"):
        SliceClassifier.load(ck, "cpu")
    bad = {"model": {"type": "os.system", "command": f"touch {marker}"}, "channels": 3, "stride": 2, "img_size": [8, 8]}
    torch.save({"state_dict": {}, "meta": {"cfg": code, "slice_classifier": bad}}, ck)
    with pytest.raises(ValueError, match="not a slice classifier"):
        SliceClassifier.load(ck, "cpu")
    assert not marker.exists()


def test_classifier_pretrained_refuses(trapped):
    """A local pretrained file of the classifier's timm model (model.pretrained) is read with weights_only=True."""
    from gating.mm import SliceClassifierModel

    ck, marker = trapped
    with pytest.raises(ValueError, match=str(ck)):
        SliceClassifierModel("resnet10t", in_channels=3, pretrained=str(ck))
    assert not marker.exists()


def test_3d_inference_refuses(trapped):
    from segmenters.monai.inference import Segmenter3D

    ck, marker = trapped
    with pytest.raises(ValueError, match=str(ck)):
        Segmenter3D.load(REPO / "mmcfg/monai3d/segresnet-tiny_1xb2-40_synth-32x32x16.py", ck, "cpu")
    assert not marker.exists()


def test_25d_inference_refuses(trapped):
    import segmenters.mm  # noqa: F401  (mmcv-lite shim, registrations)
    from segmenters.mm.inference import Segmenter

    ck, marker = trapped
    with pytest.raises(ValueError, match=str(ck)):
        Segmenter.load(REPO / "mmcfg/unet/unet_effb0_1xb4-40_gitract-128x128.py", ck, "cpu")
    assert not marker.exists()


def test_pretrained_backbone_refuses(trapped):
    """A local pretrained file for a timm backbone (mmseg plugin) is read with weights_only=True."""
    import segmenters.mm  # noqa: F401  (the mmcv-lite shim comes before mmseg)

    ck, marker = trapped
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from training.config import load_config

    init_default_scope("mmseg")

    cfg = load_config(str(REPO / "mmcfg/unet/unet_effb0_1xb4-40_gitract-128x128.py"))
    cfg.model.backbone.pretrained = str(ck)
    with pytest.raises(ValueError, match=str(ck)):
        MODELS.build(cfg.model)
    assert not marker.exists()


def test_detector_refuses(tmp_path):
    """A YOLO ``.pt`` is loaded against ultralytics' allow-list of its own classes (no arbitrary code)."""
    from gating.crop import Detector, yolo_offline_env

    yolo_offline_env(tmp_path / "yolo")
    marker = tmp_path / "code_ran"
    ck = tmp_path / "evil.pt"
    torch.save({"model": Trap(marker), "train_args": {}}, ck)
    with pytest.raises(TypeError, match=rf"{ck} references types outside the supported"):
        Detector.load(ck, "cpu")
    assert not marker.exists()  # ultralytics' default (full unpickling) would have run the trap
