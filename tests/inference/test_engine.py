"""The inference engine: equal to the per-slice host path it replaces, each input recipe prepared once per
case-day whatever the number of models and folds, TTA and three-plane inference computed as defined."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import segmenters.mm  # noqa: F401  (mmcv-lite shim before mmseg)
from data_prep.plan import norm_mode
from data_prep.volumes import stack_indices
from ensembles.spec import validate_spec
from gating.crop import crop_resize, full_box, paste_resize
from inference.device_ops import from_plane, plane_stride, to_plane, volume_to_device
from inference.engine import Engine, EngineModel, Job, Recipe, forward_tta, run_25d
from inference.pipeline import LoadedModel, make_engine, predict_case_day
from segmenters.mm.inference import Segmenter
from segmenters.mm.stacks import normalise_stack
from training.config import build_model, load_config

REPO = Path(__file__).resolve().parents[2]
TINY_UNET = REPO / "mmcfg" / "unet" / "unet_effb0_1xb4-40_gitract-128x128.py"
CT = {"mode": "ct", "clip": [300.0, 2500.0], "mean": 1200.0, "std": 400.0}


def _segmenter(img_size=(32, 32), norm="max", stride=2, channels=3, seed=0) -> Segmenter:
    torch.manual_seed(seed)
    cfg = load_config(TINY_UNET, img_size=img_size, stack=dict(stride=stride, channels=channels, norm=norm))
    return Segmenter(build_model(cfg).eval(), cfg, "cpu", amp=False)


def _volume(d=7, h=40, w=36, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    vol = np.empty((d, h, w), np.uint16)
    for z in range(d):
        blob = np.hypot(yy - h * (0.3 + 0.05 * z), xx - w * 0.5) < 8 + z
        vol[z] = (400 + 1500 * blob + rng.integers(0, 300, (h, w))).astype(np.uint16)
    return vol


def host_reference(seg, volume, keep=None, boxes=None, tta=("hflip",)) -> np.ndarray:
    """The path the engine replaces (``Segmenter.predict_volume`` before issue 14): per slice on the host, numpy
    stacks and OpenCV resize, the model's own flip TTA, paste-back per slice."""
    d, h, w = volume.shape
    out = np.zeros((d, len(seg.classes), h, w), np.float32)
    vmax = float(volume.max()) if norm_mode(seg.norm) == "volume_max" else None
    for z in range(d):
        if keep is not None and not keep[z]:
            continue
        idx = stack_indices(z, d, seg.stride, seg.channels)
        stack = normalise_stack(np.asarray(volume[idx]), seg.norm, vmax, 0)
        box = np.asarray(boxes[z]) if boxes is not None else full_box((h, w))
        x = torch.from_numpy(crop_resize(stack, box, seg.img_size)[None])
        with torch.inference_mode():
            p = seg.model.predict_probs(x.float(), tta=tuple(tta))[0]
        out[z] = paste_resize(p, box, (h, w)).clamp_(0, 1).numpy()
    return out


@pytest.mark.parametrize("norm", ["max", "percentile", "volume_max", CT])
def test_engine_equals_the_host_path(norm) -> None:
    seg = _segmenter(norm=norm)
    vol = _volume()
    d, h, w = vol.shape
    rng = np.random.default_rng(1)
    x0, y0 = rng.integers(0, 8, d), rng.integers(0, 8, d)
    boxes = np.stack([x0, y0, x0 + rng.integers(20, w - 8, d), y0 + rng.integers(1, h - 8, d)], axis=1)
    boxes[2] = full_box((h, w))
    boxes[3] = [5, 6, 6, 30]  # one pixel wide
    keep = np.array([1, 1, 1, 1, 0, 1, 1], bool)
    ref = host_reference(seg, vol, keep, boxes)
    acc = torch.zeros((d, len(seg.classes), h, w))
    stats = Counter()
    run_25d(volume_to_device(vol, "cpu"), [Job(seg, acc, 1.0, ("hflip",))], keep, boxes, batch_size=3, stats=stats)
    got = acc.numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert np.all(got[4] == 0) and ref[2:4].max() > 0.1
    assert stats["prepared"] == 2 and stats["forward"] == 2  # 6 kept slices in batches of 3
    # the Segmenter's own predict_volume takes the same path
    np.testing.assert_allclose(seg.predict_volume(vol, keep, boxes, ("hflip",), batch_size=4), ref, atol=1e-4)


def test_each_recipe_is_prepared_once_per_case_day() -> None:
    a = [_segmenter(seed=s) for s in range(3)]  # 3 folds of one model
    b = [_segmenter(seed=10 + s) for s in range(2)]  # 2 folds of another with the same input recipe
    c = [_segmenter(img_size=(64, 32), seed=20)]  # another input size: its own recipe
    assert Recipe.of(a[0]) == Recipe.of(b[1]) != Recipe.of(c[0])
    vol = _volume(d=9)
    models = [
        EngineModel("a", "2.5d", "segment", 1.0, ("hflip",), ("axial",), a),
        EngineModel("b", "2.5d", "segment", 2.0, (), ("axial",), b),
        EngineModel("c", "2.5d", "segment", 1.0, ("vflip",), ("axial",), c),
    ]
    post = {"max_prob_floor": 0.0, "min_component": 0, "component_mode": "2d"}
    eng = Engine(models, {"method": "none"}, {"weight_2d": 1.0, "weight_3d": 0.0}, 0.5, post, "cpu", batch_size=4)
    probs, keep, masks = eng.predict(vol, (1.5, 1.5), 3)
    # 9 slices in batches of 4: 3 batches per recipe, 2 recipes; 6 predictors run on each batch
    assert eng.stats["prepared"] == 6 and eng.stats["forward"] == 18
    assert eng.stats[f"prepared:{Recipe.of(c[0])}"] == 3
    # the fused map is the shares' weighted mean of the fold means: a 1/4, b 2/4, c 1/4
    ref = sum(host_reference(s, vol, tta=("hflip",)) for s in a) / 3 * 0.25
    ref += sum(host_reference(s, vol, tta=()) for s in b) / 2 * 0.5
    ref += host_reference(c[0], vol, tta=("vflip",)) * 0.25
    assert np.abs(probs - ref).max() < 1e-4
    assert keep.all() and np.array_equal(masks, probs > 0.5)


def test_rot90_tta_is_the_mean_of_rotated_predictions() -> None:
    seg = _segmenter(img_size=(32, 32))
    x = torch.rand(2, 3, 32, 32)
    plain = seg.predict_batch(x, tta=())
    rots = [torch.rot90(seg.predict_batch(torch.rot90(x, k, (2, 3)), tta=()), -k, (2, 3)) for k in (1, 2, 3)]
    got = forward_tta(seg, x, ("rot90", "rot180", "rot270"))
    torch.testing.assert_close(got, (plain + sum(rots)) / 4, atol=1e-6, rtol=1e-5)
    flips = (plain + seg.predict_batch(x.flip(3), tta=()).flip(3) + seg.predict_batch(x.flip(2), tta=()).flip(2)) / 3
    torch.testing.assert_close(forward_tta(seg, x, ("hflip", "vflip")), flips, atol=1e-6, rtol=1e-5)


def test_three_planes_average_the_planes_on_the_axial_grid() -> None:
    seg = _segmenter(img_size=(32, 32), stride=2)
    vol = _volume(d=6, h=24, w=20)
    spacing = (3.0, 1.5, 1.5)
    t = volume_to_device(vol, "cpu")
    acc = torch.zeros((6, 3, 24, 20))
    run_25d(t, [Job(seg, acc, 1.0, (), ("axial", "coronal", "sagittal"))], spacing=spacing, batch_size=8)
    # by hand: each plane's volume predicted slice by slice on the host with the plane's stride, mapped back
    ref = host_reference(seg, vol, tta=())
    for plane in ("coronal", "sagittal"):
        pv, info = to_plane(t, plane, spacing)
        assert pv.shape[1] == (24 if plane == "coronal" else 20) and pv.shape[2] == 12  # 6 slices of 3 mm -> 12
        stride = plane_stride(2, plane, spacing)
        assert stride == 4
        plane_seg = _segmenter(img_size=(32, 32), stride=stride)
        plane_seg.model.load_state_dict(seg.model.state_dict())
        pred = host_reference(plane_seg, np.asarray(pv[0].numpy()), tta=())
        ref += from_plane(torch.from_numpy(pred), info).numpy()
    assert np.abs(acc.numpy() - ref / 3).max() < 1e-4


def test_predict_case_day_runs_the_engine_with_the_spec() -> None:
    seg = _segmenter()
    vol = _volume()
    raw = {
        "name": "one",
        "folds": [0],
        "models": [
            {"name": "u", "kind": "2.5d", "config": "u.py", "checkpoints": ["u.pth"], "tta": ["hflip", "rot90"]},
            {"name": "v", "kind": "2.5d", "config": "u.py", "checkpoints": ["u.pth"], "planes": ["coronal"]},
        ],
        "fusion": {"weight_2d": 1.0, "weight_3d": 0.0},
        "thresholds": 0.5,
    }
    spec = validate_spec(raw)
    models = [LoadedModel(m, [(Path("u.pth"), seg)]) for m in spec.models]
    eng = make_engine(spec, models, batch_size=4)
    res = predict_case_day(spec, models, vol, (3.0, 1.5, 1.5), engine=eng)
    t = volume_to_device(vol, "cpu")
    a, b = torch.zeros((7, 3, 40, 36)), torch.zeros((7, 3, 40, 36))
    run_25d(t, [Job(seg, a, 1.0, ("hflip", "rot90"))], batch_size=4)
    run_25d(t, [Job(seg, b, 1.0, (), ("coronal",))], spacing=(3.0, 1.5, 1.5), batch_size=4)
    np.testing.assert_allclose(res.probs, ((a + b) / 2).numpy(), atol=1e-6)
    # the planes survive the spec's round trip (the search writes its tuned spec with to_dict)
    again = validate_spec(spec.to_dict())
    assert [m.planes for m in again.models] == [["axial"], ["coronal"]]
    assert [m.tta for m in again.models] == [["hflip", "rot90"], []]
    with pytest.raises(ValueError, match="unknown 2.5d tta"):
        validate_spec({**raw, "models": [{**raw["models"][0], "tta": ["rot45"]}]})
    with pytest.raises(ValueError, match="planes"):
        validate_spec({**raw, "models": [{**raw["models"][0], "planes": ["oblique"]}]})
