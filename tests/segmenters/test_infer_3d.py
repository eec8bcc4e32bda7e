"""3D inference: sliding window, TTA, resampling back to the real slice sizes, probability-map folders
(:func:`inference.predict.predict_work_3d`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from data_prep.constants import CLASSES, REAL_DEPTHS, REAL_SIZES, REPO_ROOT

pytest.importorskip("mmengine")
pytest.importorskip("monai")

from work3d import make_synthetic_work  # noqa: E402

from common.engine import atomic_torch_save  # noqa: E402
from common.probmaps import ProbDir  # noqa: E402
from inference.predict import predict_work_3d  # noqa: E402
from segmenters.monai.inference import Segmenter3D, tta_variants  # noqa: E402
from segmenters.monai.model import Monai3DSegmenter  # noqa: E402
from segmenters.monai.volumes import resize_hw  # noqa: E402
from training.checks import CheckpointMismatchError  # noqa: E402
from training.config import build_model, load_config  # noqa: E402

TINY = REPO_ROOT / "mmcfg" / "monai3d" / "segresnet-tiny_1xb2-40_synth-32x32x16.py"
DEFAULT = REPO_ROOT / "mmcfg" / "monai3d" / "segresnet_1xb2-20k_uwmgi-224x224x80.py"


@pytest.fixture(autouse=True)
def one_thread():
    """Two busy cores: OpenMP with 2 threads is ~40x slower on tiny 3D convolutions here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_cfg(resample: dict | None = None):
    """The tiny config (48 x 48 in-plane, 32 x 32 x 16 window, overlap 0.5, flip TTA)."""
    cfg = load_config(TINY)
    if resample is not None:
        cfg.test_dataloader.dataset.resample = resample
    return cfg


def segmenter(net: nn.Module | None = None, resample: dict | None = None, **window) -> Segmenter3D:
    """A Segmenter3D of the tiny config; ``net`` replaces its network, ``window`` updates ``model.test_cfg``."""
    cfg = tiny_cfg(resample)
    if net is None:
        model = build_model(cfg)
    else:
        model = Monai3DSegmenter(net=net, test_cfg={**cfg.model.test_cfg, **window})
    return Segmenter3D(model, cfg)


class Pointwise(nn.Module):
    """Logits ``scale * (x - 0.5)`` on 3 channels: flip-equivariant, so TTA must give the plain result."""

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x.repeat(1, 3, 1, 1, 1) - 0.5)


class Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 3, *x.shape[2:]), self.value)


def ellipse_volume(depth: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - 0.45 * h) / (0.25 * h)) ** 2 + ((xx - 0.55 * w) / (0.2 * w)) ** 2 <= 1
    mask = np.repeat(inside[None], depth, 0)
    vol = np.where(mask, 3000, 300).astype(np.uint16)
    return vol, mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_tta_variants():
    assert tta_variants(()) == [()]
    assert tta_variants(("flip",)) == [(), (3,), (4,)]
    assert tta_variants(("hflip", "vflip", "hflip")) == [(), (3,), (2,)]
    with pytest.raises(ValueError, match="unknown TTA"):
        tta_variants(("rot90",))


def test_sliding_window_shape_and_range_tiny_segresnet():
    torch.manual_seed(0)
    seg = segmenter()
    assert seg.default_tta == ("flip",) and seg.roi_size == (32, 32, 16) and seg.overlap == 0.5 and not seg.amp
    vol = np.random.default_rng(0).integers(0, 4000, size=(20, 40, 56), dtype=np.uint16)
    out = seg.predict_volume(vol, tta=("flip",))
    assert out.shape == (20, 3, 40, 56) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.std() > 0
    np.testing.assert_array_equal(seg.predict_volume(vol), out)  # tta=None: the config's ("flip",)
    with pytest.raises(ValueError, match="unknown TTA"):
        seg.predict_volume(vol, tta=("rot90",))


def test_volume_smaller_than_patch_is_padded():
    """2 slices of 20x24 pixels with a 32x32x16 window and no in-plane resampling: padded, never a crash."""
    torch.manual_seed(0)
    seg = segmenter(resample={"mode": "none"})
    vol = np.random.default_rng(1).integers(0, 4000, size=(2, 20, 24), dtype=np.uint16)
    out = seg.predict_volume(vol, tta=("flip",))
    assert out.shape == (2, 3, 20, 24) and 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("depth", REAL_DEPTHS)
def test_real_sizes_come_back_exactly(depth):
    """Each real slice size (W x H) and depth survives resampling to 48x48 and back; 80 slices with a window that
    expects 144 (padding in depth) included."""
    seg = segmenter(Pointwise(), roi_size=(32, 32, 144), overlap=0.0)
    for w, h in REAL_SIZES:
        vol, mask = ellipse_volume(depth, h, w)
        out = seg.predict_volume(vol, tta=())
        assert out.shape == (depth, 3, h, w), (w, h)
        # the Pointwise model reproduces the (normalised) scan: a thresholded channel is the ellipse again
        assert dice(out[:, 1] > 0.5, mask) > 0.95, (w, h)


def test_all_zero_stays_zero_and_mask_round_trip():
    for w, h in REAL_SIZES:
        zero = torch.zeros(3, h, w, 5)
        down = resize_hw(zero, (256, 256))
        assert tuple(down.shape) == (3, 256, 256, 5) and not down.any()
        assert tuple(resize_hw(down, (h, w)).shape) == (3, h, w, 5) and not resize_hw(down, (h, w)).any()
        _, mask = ellipse_volume(5, h, w)
        m = torch.from_numpy(mask.transpose(1, 2, 0)[None].astype(np.float32))  # (1, H, W, D)
        back = resize_hw(resize_hw(m, (256, 256)), (h, w)) > 0.5
        assert back.shape == m.shape
        assert dice(back.numpy(), mask.transpose(1, 2, 0)[None]) > 0.95, (w, h)
    seg = segmenter(Constant(-1e4))
    out = seg.predict_volume(np.full((9, 31, 45), 1000, np.uint16), tta=("flip",))
    assert out.shape == (9, 3, 31, 45) and not out.any()


def test_flip_tta_is_undone():
    """With a flip-equivariant model, TTA must equal the plain prediction (a flip not undone would not)."""
    seg = segmenter(Pointwise(2.0), overlap=0.5)
    vol, _ = ellipse_volume(12, 40, 52)
    vol[:3] = 100  # asymmetric in depth too
    plain = seg.predict_volume(vol, tta=())
    for tta in (("flip",), ("hflip",), ("vflip",), ("dflip",)):
        np.testing.assert_allclose(seg.predict_volume(vol, tta=tta), plain, atol=1e-5)


def test_validation_and_inference_compute_the_same(tmp_path):
    """The model's predict path (validation) and Segmenter3D give the same probabilities for one case-day."""
    from mmengine.dataset import pseudo_collate

    from data_prep.work import load_volume
    from segmenters.monai.data import CaseDayVolumeDataset

    work = make_synthetic_work(tmp_path / "work", n_cases=2, sizes=((40, 32),), depths=(10,))
    torch.manual_seed(0)
    seg = segmenter()
    cfg = tiny_cfg()
    pre = {k: cfg.test_dataloader.dataset[k] for k in ("norm", "resample")}
    ds = CaseDayVolumeDataset(str(work), fold=0, split="val", **pre)
    data = seg.model.data_preprocessor(pseudo_collate([ds[0]]))
    (sample,) = seg.model.predict(data["inputs"], data["data_samples"], seg.window)
    want = seg.predict_volume(load_volume(work, "case1_day0"))
    assert sample.probs.shape == want.shape == (10, 3, 32, 40)
    np.testing.assert_allclose(sample.probs.numpy(), want, atol=1e-6)


def test_load_checkpoint_and_mismatch(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg)
    atomic_torch_save({"state_dict": model.state_dict(), "meta": {"iter": 3}}, tmp_path / "best.pth")
    seg = Segmenter3D.load(TINY, tmp_path / "best.pth", "cpu")
    assert seg.config_path == str(TINY) and seg.checkpoint == str(tmp_path / "best.pth")
    vol = np.random.default_rng(2).integers(0, 4000, size=(8, 24, 24), dtype=np.uint16)
    ref = Segmenter3D(model, cfg).predict_volume(vol, tta=())
    np.testing.assert_array_equal(seg.predict_volume(vol, tta=()), ref)
    by_cfg = Segmenter3D.load(cfg, tmp_path / "best.pth")  # a loaded Config: its file names it, not a dump of it
    assert by_cfg.config_path == str(TINY) and by_cfg.cfg is cfg
    np.testing.assert_array_equal(by_cfg.predict_volume(vol, tta=()), ref)
    with pytest.raises(CheckpointMismatchError, match="does not match config"):
        Segmenter3D.load(DEFAULT, tmp_path / "best.pth", "cpu")
    with pytest.raises(CheckpointMismatchError, match=f"does not match config {DEFAULT}: "):
        Segmenter3D.load(load_config(DEFAULT), tmp_path / "best.pth", "cpu")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        Segmenter3D.load(TINY, tmp_path / "missing.pth", "cpu")
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        seg.predict_volume(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="Monai3DSegmenter"):
        Segmenter3D(Pointwise(), cfg)


def test_probability_folders_of_a_work(tmp_path):
    """predict_work_3d (tools/infer_3d.py): the contract's layout, the manifest's ids, the original sizes."""
    work = make_synthetic_work(tmp_path / "work", n_cases=2, sizes=((40, 32), (36, 44)), depths=(10, 6))
    torch.manual_seed(0)
    ck = tmp_path / "fold_1" / "best.pth"
    ck.parent.mkdir()
    atomic_torch_save({"state_dict": build_model(tiny_cfg()).state_dict()}, ck)
    summary = predict_work_3d(TINY, ck, work=work, fold=1, tta=("flip",))  # fold 1 validates case 2
    out = tmp_path / "fold_1" / "oof"
    assert summary["out"] == str(out) and summary["case_days"] == 1 and summary["slices"] == 6
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "3d" and meta["fold"] == 1 and meta["tta"] == ["flip"]
    assert meta["classes"] == list(CLASSES) and meta["config"] == str(TINY) and meta["checkpoint"] == str(ck)
    assert meta["case_days"] == {"case2_day0": [f"case2_day0_slice_{i:04d}" for i in range(1, 7)]}
    arr = np.load(out / "case2_day0.npy")
    assert arr.dtype == np.float16 and arr.shape == (6, 3, 44, 36)
    assert 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0
    assert sorted(p.name for p in out.iterdir()) == ["case2_day0.npy", "meta.json", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["score"] <= 1.0 and metrics["threshold"] == 0.5
    prob_dir = ProbDir(out)  # the ensembles' reader accepts the folder
    np.testing.assert_array_equal(prob_dir.load("case2_day0"), arr.astype(np.float32))
    with pytest.raises(FileExistsError, match="overwrite"):
        predict_work_3d(TINY, ck, work=work, fold=1)
    test = tmp_path / "test"
    predict_work_3d(TINY, ck, work=work, out=test, tta=())  # every case-day of the manifest, the config's TTA off
    meta = json.loads((test / "meta.json").read_text())
    assert sorted(meta["case_days"]) == ["case1_day0", "case2_day0"] and meta["fold"] is None and meta["tta"] == []
    assert np.load(test / "case1_day0.npy").shape == (10, 3, 32, 40)
    predict_work_3d(TINY, ck, work=work, out=tmp_path / "default", case_days=["case1_day0"])
    assert json.loads((tmp_path / "default" / "meta.json").read_text())["tta"] == ["flip"]  # None: the config's
    with pytest.raises(ValueError, match="not in the manifest"):
        predict_work_3d(TINY, ck, work=work, out=tmp_path / "x", case_days=["case9_day0"])
