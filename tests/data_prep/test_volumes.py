"""2.5D channel indices, the mask bit field, memory-mapped loading."""

from __future__ import annotations

import numpy as np
import pytest

from common.io import atomic_save_npy
from data_prep.volumes import (
    pack_mask,
    stack_25d,
    stack_indices,
    to_uint8,
    unpack_mask,
)
from data_prep.work import load_mask, load_volume, mask_path, volume_path


@pytest.mark.parametrize(
    ("z", "depth", "stride", "channels", "expected"),
    [
        # stride 1, 3 channels
        (0, 80, 1, 3, [0, 0, 1]),
        (40, 80, 1, 3, [39, 40, 41]),
        (79, 80, 1, 3, [78, 79, 79]),
        # stride 2, 3 channels: [i-2, i, i+2]
        (0, 144, 2, 3, [0, 0, 2]),
        (1, 144, 2, 3, [0, 1, 3]),
        (2, 144, 2, 3, [0, 2, 4]),
        (142, 144, 2, 3, [140, 142, 143]),
        (143, 144, 2, 3, [141, 143, 143]),
        # stride 1, 5 channels
        (0, 80, 1, 5, [0, 0, 0, 1, 2]),
        (1, 80, 1, 5, [0, 0, 1, 2, 3]),
        (78, 80, 1, 5, [76, 77, 78, 79, 79]),
        (79, 80, 1, 5, [77, 78, 79, 79, 79]),
        # stride 2, 5 channels
        (0, 144, 2, 5, [0, 0, 0, 2, 4]),
        (3, 144, 2, 5, [0, 1, 3, 5, 7]),
        (50, 144, 2, 5, [46, 48, 50, 52, 54]),
        (142, 144, 2, 5, [138, 140, 142, 143, 143]),
        (143, 144, 2, 5, [139, 141, 143, 143, 143]),
        # one-slice volume
        (0, 1, 2, 5, [0, 0, 0, 0, 0]),
    ],
)
def test_stack_indices(z, depth, stride, channels, expected):
    assert stack_indices(z, depth, stride, channels).tolist() == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"z": 0, "depth": 5, "channels": 4}, "channels must be odd"),
        ({"z": 0, "depth": 5, "stride": 0}, "stride must be >= 1"),
        ({"z": 5, "depth": 5}, r"z must be in \[0, 4\]"),
        ({"z": -1, "depth": 5}, "z must be in"),
    ],
)
def test_stack_indices_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stack_indices(**kwargs)


def test_stack_25d_gathers_the_slices():
    vol = np.arange(6, dtype=np.uint16)[:, None, None] * np.ones((1, 2, 3), np.uint16)  # slice z holds value z
    s = stack_25d(vol, 1, stride=2, channels=3)
    assert s.shape == (3, 2, 3) and s.dtype == np.uint16
    assert s[:, 0, 0].tolist() == [0, 1, 3]
    assert stack_25d(vol, 5, stride=1, channels=5)[:, 1, 2].tolist() == [3, 4, 5, 5, 5]


def test_pack_unpack_round_trip_and_bits():
    rng = np.random.default_rng(0)
    masks = (rng.random((4, 3, 7, 9)) < 0.3).astype(np.uint8)
    packed = pack_mask(masks)
    assert packed.shape == (4, 7, 9) and packed.dtype == np.uint8
    expected = masks[:, 0] + 2 * masks[:, 1] + 4 * masks[:, 2]
    np.testing.assert_array_equal(packed, expected)
    np.testing.assert_array_equal(unpack_mask(packed), masks)
    np.testing.assert_array_equal(unpack_mask(packed[2]), masks[2])  # one slice
    with pytest.raises(ValueError, match="masks must be"):
        pack_mask(np.zeros((2, 5, 5)))


def test_load_memmap(tmp_path):
    vol = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    atomic_save_npy(volume_path(tmp_path, "case1_day0"), vol)
    atomic_save_npy(mask_path(tmp_path, "case1_day0"), np.ones((2, 3, 4), np.uint8) * 5)
    v = load_volume(tmp_path, "case1_day0")
    assert isinstance(v, np.memmap) and not v.flags.writeable
    np.testing.assert_array_equal(v, vol)
    assert unpack_mask(load_mask(tmp_path, "case1_day0"))[1, :, 0, 0].tolist() == [1, 0, 1]
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(FileNotFoundError, match=r"case9_day9\.npy.*data_prep prepare"):
        load_volume(tmp_path, "case9_day9")


def test_to_uint8():
    img = np.array([[0, 100], [200, 400]], np.uint16)
    assert to_uint8(img).tolist() == [[0, 64], [128, 255]]
    assert to_uint8(np.zeros((2, 2), np.uint16)).tolist() == [[0, 0], [0, 0]]
