"""The batched torch preprocessing of ``inference.device_ops`` equals the host path slice by slice.

References: ``data_prep.volumes.stack_indices``, ``segmenters.mm.stacks.normalise_stack``,
``gating.crop.crop_resize`` (cv2) and ``gating.crop.paste_resize`` (torch), and the TTA rule of
``segmenters.mm.models`` ``predict_probs``; plus hand-computed values. Everything runs on the CPU.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data_prep.volumes import stack_indices
from ensembles.spec import PLANES, TTA_25D
from gating.crop import crop_resize, full_box, paste_resize
from inference.device_ops import (
    crop_resize_batch,
    from_plane,
    gather_stacks,
    normalise_stacks,
    paste_back,
    plane_stride,
    stack_index,
    to_plane,
    tta_inputs,
    tta_merge,
    volume_to_device,
)
from segmenters.mm.stacks import normalise_stack


def _volume(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)


def _boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Random boxes inside (h, w); every 3rd one 1 pixel thin along a random axis, the first the full frame."""
    out = []
    for i in range(n):
        x0 = int(rng.integers(0, w))
        x1 = int(rng.integers(x0 + 1, w + 1))
        y0 = int(rng.integers(0, h))
        y1 = int(rng.integers(y0 + 1, h + 1))
        if i % 3 == 2:
            if rng.random() < 0.5:
                x1 = x0 + 1
            else:
                y1 = y0 + 1
        out.append([x0, y0, x1, y1])
    out[0] = [0, 0, w, h]
    return np.array(out, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ volume, stacks


def test_volume_to_device_keeps_uint16_values(tmp_path):
    vol = np.array([[[0, 1, 32767], [32768, 40000, 65535]]], np.uint16)  # values above int16's range
    t = volume_to_device(vol, "cpu")
    assert t.shape == (1, 1, 2, 3) and t.dtype == torch.float32
    assert t.flatten().tolist() == [0.0, 1.0, 32767.0, 32768.0, 40000.0, 65535.0]
    path = tmp_path / "v.npy"
    np.save(path, _volume(0, (2, 3, 4, 5)))
    mm = np.load(path, mmap_mode="r")  # a read-only memmap, (K, D, H, W)
    assert torch.equal(volume_to_device(mm, "cpu"), torch.from_numpy(np.asarray(mm).astype(np.float32)))
    other = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    assert torch.equal(volume_to_device(other, torch.device("cpu"))[0], torch.from_numpy(other.astype(np.float32)))
    with pytest.raises(ValueError, match="shape"):
        volume_to_device(np.zeros((3, 4), np.uint16), "cpu")
    with pytest.raises(ValueError, match="dtype"):
        volume_to_device(np.zeros((1, 2, 2), complex), "cpu")


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("d", [1, 2, 7])
def test_stack_index_matches_stack_indices(d, channels, stride):
    got = stack_index(d, list(range(d)), stride, channels)
    want = np.stack([stack_indices(z, d, stride, channels) for z in range(d)])
    assert got.dtype == torch.long and np.array_equal(got.numpy(), want)
    assert np.array_equal(stack_index(d, torch.arange(d), stride, channels).numpy(), want)


def test_stack_index_hand_values_and_errors():
    assert stack_index(10, [0, 5, 9], 2, 5).tolist() == [[0, 0, 0, 2, 4], [1, 3, 5, 7, 9], [5, 7, 9, 9, 9]]
    with pytest.raises(ValueError, match="odd"):
        stack_index(10, [0], 1, 4)
    with pytest.raises(ValueError, match="stride"):
        stack_index(10, [0], 0, 3)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        stack_index(10, [10], 1, 3)


def test_gather_stacks_matches_host_stacks():
    vol = _volume(1, (2, 7, 5, 6))
    zs = [0, 1, 3, 6]
    got = gather_stacks(volume_to_device(vol, "cpu"), zs, 2, 3)
    assert got.shape == (4, 2, 3, 5, 6)
    for n, z in enumerate(zs):
        for k in range(2):
            assert np.array_equal(got[n, k].numpy(), vol[k][stack_indices(z, 7, 2, 3)].astype(np.float32))


# ------------------------------------------------------------------------------------------------ normalisation

CT1 = {"mode": "ct", "clip": (1000, 50000), "mean": 20000.5, "std": 9000.25}
CT2 = {"mode": "ct", "clip": [(1000, 50000), (0, 30000)], "mean": [20000.5, 100.0], "std": [9000.25, 3.5]}


@pytest.mark.parametrize(
    "norm", ["max", "minmax", "percentile", {"mode": "percentile"}, "volume_max", "none", CT1, CT2]
)
@pytest.mark.parametrize(("stride", "channels"), [(1, 1), (2, 3), (1, 5)])
def test_normalise_stacks_matches_normalise_stack(norm, stride, channels):
    vol = _volume(2, (2, 6, 7, 9))
    vol[:, :3] = 0  # all-zero stacks at the start (the zero-stack rules)
    vol[1, 3:] = 1234  # constant stacks in channel 1 (minmax's rule)
    vmax = vol.reshape(2, -1).max(axis=1).astype(np.float64)
    zs = list(range(6))
    got = normalise_stacks(gather_stacks(volume_to_device(vol, "cpu"), zs, stride, channels), norm, torch.tensor(vmax))
    assert got.shape == (6, 2 * channels, 7, 9) and got.dtype == torch.float32
    for z in zs:
        idx = stack_indices(z, 6, stride, channels)
        want = np.concatenate([normalise_stack(vol[k][idx], norm, vmax[k], k) for k in range(2)])
        np.testing.assert_allclose(got[z].numpy(), want, rtol=1e-6, atol=1e-7)


def test_normalise_stacks_hand_values():
    x = torch.arange(200, dtype=torch.float32).reshape(1, 1, 2, 10, 10)
    # np.percentile(0..199, 99.5): index 199 * 0.995 = 198.005 -> 198 + 0.005 * (199 - 198)
    got = normalise_stacks(x, "percentile").flatten()
    assert got[99].item() == pytest.approx(99 / 198.005, rel=1e-6) and got[199].item() == 1.0
    got = normalise_stacks(x + 10, "minmax").flatten()
    assert got[0].item() == 0.0 and got[50].item() == pytest.approx(50 / 199) and got[199].item() == 1.0
    zero = torch.zeros(2, 1, 1, 2, 2)
    for norm in ("max", "minmax", "percentile"):
        assert torch.equal(normalise_stacks(zero, norm), torch.zeros(2, 1, 2, 2))
    assert torch.equal(normalise_stacks(torch.full((1, 1, 1, 2, 2), 7.0), "minmax"), torch.zeros(1, 1, 2, 2))
    assert torch.equal(normalise_stacks(x, "volume_max", torch.tensor([0.0])), torch.zeros(1, 2, 10, 10))
    ct = normalise_stacks(zero[:1], {"mode": "ct", "clip": (1, 5), "mean": 3, "std": 2})
    assert ct.flatten().tolist() == [-1.0] * 4  # (clip(0, 1, 5) - 3) / 2: ct maps zeros too
    with pytest.raises(ValueError, match="volume_max"):
        normalise_stacks(x, "volume_max")
    with pytest.raises(ValueError, match="one of"):
        normalise_stacks(x, "zscore")
    with pytest.raises(ValueError, match="per-channel"):
        normalise_stacks(torch.zeros(1, 3, 1, 2, 2), CT2)


# ------------------------------------------------------------------------------------------------ crop / paste


@pytest.mark.parametrize("c", [1, 3, 5])  # cv2 weighs through Intel IPP for 1, 3, 4 channels, on its own otherwise
@pytest.mark.parametrize(("hw", "out"), [((37, 41), (64, 48)), ((64, 70), (17, 23)), ((30, 30), (30, 30))])
def test_crop_resize_batch_matches_cv2(c, hw, out):
    rng = np.random.default_rng(c * 100 + out[0])
    h, w = hw
    x = rng.random((9, c, h, w), dtype=np.float32)
    boxes = _boxes(rng, 9, h, w)
    got = crop_resize_batch(torch.from_numpy(x), boxes, out)
    assert got.shape == (9, c) + out
    want = np.stack([crop_resize(x[n], boxes[n], out) for n in range(9)])
    assert np.abs(got.numpy() - want).max() < 1e-6
    full = crop_resize_batch(torch.from_numpy(x), None, out).numpy()
    want = np.stack([crop_resize(x[n], full_box((h, w)), out) for n in range(9)])
    assert np.abs(full - want).max() < 1e-6


def test_crop_resize_batch_opencv_rule_without_ipp():
    rng = np.random.default_rng(5)
    x = rng.random((4, 3, 300, 290), dtype=np.float32)
    boxes = _boxes(rng, 4, 300, 290)
    was = cv2.useOptimized()
    try:
        cv2.setUseOptimized(False)
        want = np.stack([crop_resize(x[n], boxes[n], (256, 260)) for n in range(4)])
        auto = crop_resize_batch(torch.from_numpy(x), boxes, (256, 260)).numpy()  # asks cv2, which says no IPP
    finally:
        cv2.setUseOptimized(was)
    got = crop_resize_batch(torch.from_numpy(x), torch.from_numpy(boxes), (256, 260), weights="opencv").numpy()
    assert np.abs(got - want).max() < 1e-6 and np.array_equal(auto, got)
    # the two weight rules differ by less than 3e-5 on [0, 1] data
    ipp = crop_resize_batch(torch.from_numpy(x), boxes, (256, 260), weights="ipp").numpy()
    assert 0 < np.abs(ipp - got).max() < 3e-5


def test_crop_resize_batch_hand_values_and_errors():
    row = torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]])
    assert crop_resize_batch(row, None, (1, 2)).flatten().tolist() == [0.5, 2.5]  # (0+1)/2, (2+3)/2
    # a box of 2 pixels [1, 2] upscaled to 4: positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    got = crop_resize_batch(row, [[1, 0, 3, 1]], (1, 4)).flatten().tolist()
    assert got == pytest.approx([1.0, 1.25, 1.75, 2.0])
    assert crop_resize_batch(row, [[2, 0, 3, 1]], (2, 3)).flatten().tolist() == [2.0] * 6  # a 1-pixel box
    with pytest.raises(ValueError, match="inside an image"):
        crop_resize_batch(row, [[2, 0, 5, 1]], (1, 4))
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        crop_resize_batch(row, [[0, 0, 1, 1], [0, 0, 1, 1]], (1, 4))
    with pytest.raises(ValueError, match="weights"):
        crop_resize_batch(row, None, (1, 4), weights="cubic")


@pytest.mark.parametrize(("small", "size"), [((24, 20), (31, 37)), ((8, 8), (40, 33))])
def test_paste_back_matches_paste_resize(small, size):
    rng = np.random.default_rng(small[0])
    probs = torch.from_numpy(rng.random((10, 3) + small, dtype=np.float32))
    boxes = _boxes(rng, 10, *size)
    boxes[5] = boxes[4]  # a box shared by two slices
    got = paste_back(probs, boxes, size)
    want = torch.stack([paste_resize(probs[n], boxes[n], size) for n in range(10)])
    assert torch.equal(got, want)
    full = paste_back(probs, None, size)
    assert torch.equal(full, torch.stack([paste_resize(probs[n], full_box(size), size) for n in range(10)]))
    with pytest.raises(ValueError, match="inside an image"):
        paste_back(probs[:1], [[0, 0, size[1] + 1, 2]], size)


# ------------------------------------------------------------------------------------------------ TTA


def _predict_probs_rule(model, x: torch.Tensor, tta: tuple[str, ...]) -> torch.Tensor:
    """The flip TTA of ``segmenters.mm.models`` ``predict_probs``, written out."""
    dims = {"hflip": (3,), "vflip": (2,)}
    probs = model(x)
    for t in tta:
        probs = probs + model(x.flip(dims[t])).flip(dims[t])
    return probs / (1 + len(tta))


def test_tta_identity_model_gives_the_input_back():
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    outs = tta_inputs(x, TTA_25D)
    assert len(outs) == 6 and torch.equal(outs[0], x) and torch.equal(outs[3], torch.rot90(x, 1, dims=(2, 3)))
    assert torch.allclose(tta_merge(outs, TTA_25D), x, atol=1e-7)
    rect = torch.rand(1, 2, 4, 7)
    outs = tta_inputs(rect, ("rot90", "hflip"))
    assert outs[1].shape == (1, 2, 7, 4)  # h != w: rot90 swaps them
    assert torch.allclose(tta_merge(outs, ("rot90", "hflip")), rect)


def test_tta_flip_merge_is_the_predict_probs_rule():
    x = torch.rand(2, 1, 5, 6, generator=torch.Generator().manual_seed(1))
    ramp = torch.arange(30, dtype=torch.float32).reshape(5, 6) / 29

    def model(t: torch.Tensor) -> torch.Tensor:
        return t * ramp  # not flip-equivariant

    for tta in [("hflip",), ("vflip",), ("hflip", "vflip"), ()]:
        merged = tta_merge([model(t) for t in tta_inputs(x, tta)], tta)
        assert torch.equal(merged, _predict_probs_rule(model, x, tta))
    by_hand = (x * ramp + x * ramp.flip(1)) / 2  # hflip: the ramp mirrored
    assert torch.allclose(tta_merge([model(t) for t in tta_inputs(x, ("hflip",))], ("hflip",)), by_hand)
    with pytest.raises(ValueError, match="rot270"):
        tta_inputs(x, ("dflip",))
    with pytest.raises(ValueError, match="need 2 outputs"):
        tta_merge([x], ("hflip",))


# ------------------------------------------------------------------------------------------------ planes


def test_plane_stride_values():
    assert plane_stride(2, "coronal", (3.0, 1.5, 1.5)) == 4
    assert plane_stride(2, "sagittal", (3.0, 1.5, 0.8)) == 8  # 7.5 -> 8
    assert plane_stride(2, "axial", (3.0, 1.5, 1.5)) == 2
    assert plane_stride(1, "coronal", (1.0, 3.0, 3.0)) == 1  # never below 1
    with pytest.raises(ValueError, match="plane"):
        plane_stride(2, "oblique", (3.0, 1.5, 1.5))
    with pytest.raises(ValueError, match="spacing"):
        plane_stride(2, "coronal", (3.0, 0.0, 1.5))


def test_to_plane_shapes_and_hand_values():
    vol = torch.zeros(2, 5, 6, 7)
    spacing = (3.0, 1.2, 1.5)  # D' = round(5 * 3 / 1.5) = 10 (coronal), round(5 * 3 / 1.2) = 12 (sagittal)
    shapes = {p: tuple(to_plane(vol, p, spacing)[0].shape) for p in PLANES}
    assert shapes == {"axial": (2, 5, 6, 7), "coronal": (2, 6, 10, 7), "sagittal": (2, 7, 12, 6)}
    # z = [0, 1] resampled to 4 samples (linear, align_corners=False): positions -0.25, 0.25, 0.75, 1.25
    col = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1).expand(1, 2, 1, 1)
    t, info = to_plane(col, "coronal", (3.0, 1.5, 1.5))
    assert t.flatten().tolist() == [0.0, 0.25, 0.75, 1.0] and info.stride(2) == 4
    assert info.plane_shape == (1, 4, 1)


@pytest.mark.parametrize("plane", PLANES)
def test_planes_there_and_back(plane):
    rng = np.random.default_rng(3)
    d, h, w = 6, 5, 7
    yx = torch.from_numpy(rng.random((2, 1, h, w), dtype=np.float32))  # (K, 1, H, W): constant along z
    vol = yx.expand(2, d, h, w).contiguous()
    t, info = to_plane(vol, plane, (2.5, 0.9, 1.1))
    dp, hp, wp = info.plane_shape
    assert t.shape == (2, dp, hp, wp)
    probs = t.permute(1, 0, 2, 3)  # a stand-in model: the input's channels as classes (D', C=K, H', W')
    back = from_plane(probs, info)
    assert back.shape == (d, 2, h, w)
    assert torch.allclose(back, vol.permute(1, 0, 2, 3), atol=1e-6)
    with pytest.raises(ValueError, match="plane"):
        from_plane(probs[:, :, :-1], info) if plane != "axial" else from_plane(probs[:-1], info)


def test_doctests():
    import doctest

    import inference.device_ops as mod

    assert doctest.testmod(mod).failed == 0
