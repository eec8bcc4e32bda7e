"""The folders-of-2D-slices reader and writer on generated folders (16-bit TIFF and 8-bit PNG)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep.dataset import VolumeInfo
from data_prep.readers.slices import SliceFolderReader, natural_key, read_prediction, write_prediction

H, W = 12, 10


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _dataset(
    root: Path,
    volumes: dict[str, int],
    ext: str = ".tif",
    label_ext: str = ".png",
    n_classes: int = 2,
    kind: str = "exclusive",
    config: dict | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Slices ``slice_{z+1}{ext}`` (unpadded numbers: natural order differs from the string order) holding
    ``1000 * (volume index + 1) + z`` at pixel (0, 0), and random labels; returns the labels ``(Z, H, W)``."""
    rng = np.random.default_rng(seed)
    labels = {}
    for i, (name, depth) in enumerate(volumes.items()):
        lab = np.zeros((depth, H, W), np.uint16 if kind == "overlapping" and n_classes > 8 else np.uint8)
        for z in range(depth):
            img = rng.integers(0, 60000, (H, W)).astype(np.uint16 if ext != ".png" else np.uint8)
            img[0, 0] = 1000 * (i + 1) + z if ext != ".png" else 10 * (i + 1) + z
            _write(root / "images" / name / f"slice_{z + 1}{ext}", img)
            if kind == "overlapping":
                lab[z] = rng.integers(0, 2**n_classes, (H, W))
            elif n_classes == 1:
                lab[z] = rng.integers(0, 2, (H, W)) * 255
            else:
                lab[z] = rng.integers(0, n_classes + 1, (H, W))
            _write(root / "labels" / name / f"slice_{z + 1}{label_ext}", lab[z])
        labels[name] = lab
    cfg = {"classes": [f"c{c}" for c in range(n_classes)], "label_kind": kind, "spacing": [2.0, 0.5, 0.25]}
    cfg.update(config or {})
    (root / "dataset.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    return labels


def _masks(label: np.ndarray, n: int, kind: str) -> np.ndarray:
    """Hand decoding: (Z, H, W) label values -> bool (Z, C, H, W)."""
    if kind == "overlapping":
        return np.stack([(label >> c) & 1 == 1 for c in range(n)], axis=1)
    if n == 1:
        return (label == 255)[:, None]
    return np.stack([label == c + 1 for c in range(n)], axis=1)


def _engine_masks(label: np.ndarray, info) -> np.ndarray:
    """What the prepare engine makes of a label with ``label_values``: bool (Z, C, H, W)."""
    return np.stack([np.isin(label, info.source["label_values"][c]) for c in info.classes], axis=1)


def _with_volume(info, key, lv, axes=(0, 1, 2)):
    shape = lv.images.shape[1:]
    vol = VolumeInfo(
        shape=tuple(shape[a] for a in axes), spacing=tuple(lv.spacing[a] for a in axes), group=key, axes=axes
    )
    return info.with_volumes({key: vol})


def test_natural_order_spacing_and_16bit_tiff(tmp_path):
    labels = _dataset(tmp_path, {"kidney_2": 11, "kidney_10": 3}, config={"groups": {"kidney_10": "donor7"}})
    info, sources = SliceFolderReader().scan(str(tmp_path), "train", {})
    assert [s.key for s in sources] == ["kidney_2", "kidney_10"]
    assert [s.group for s in sources] == ["kidney_2", "donor7"]
    assert (info.format, info.classes, info.label_kind, info.intensity) == (
        "slices",
        ("c0", "c1"),
        "exclusive",
        "other",
    )
    assert info.source["label_values"] == {"c0": [1], "c1": [2]}
    names = info.source["slices"]["kidney_2"]
    assert names[:3] == ["slice_1.tif", "slice_2.tif", "slice_3.tif"] and names[-2:] == ["slice_10.tif", "slice_11.tif"]
    lv = SliceFolderReader().load(sources[0], info)
    assert lv.images.shape == (1, 11, H, W) and lv.images.dtype == np.uint16
    assert lv.images[0, :, 0, 0].tolist() == [1000 + z for z in range(11)]
    assert lv.spacing == (2.0, 0.5, 0.25) and lv.origin == (0.0, 0.0, 0.0) and lv.slice_axis == 0
    assert lv.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_array_equal(lv.label, labels["kidney_2"])
    assert [Path(p).name for p in lv.extra["slice_paths"]][9] == "slice_10.tif"
    assert sorted(["s_10", "s_9", "s_1"], key=natural_key) == ["s_1", "s_9", "s_10"]


def test_spacing_from_options_overrides_json_and_is_required(tmp_path):
    _dataset(tmp_path, {"v": 2}, ext=".png", config={"spacing": [1, 1, 1]})
    info, (src,) = SliceFolderReader().scan(str(tmp_path), "test", {"spacing": [0.05, 0.04, 0.03]})
    lv = SliceFolderReader().load(src, info)
    assert lv.spacing == (0.05, 0.04, 0.03) and lv.label is None
    assert lv.images.dtype == np.uint8 and lv.images[0, :, 0, 0].tolist() == [10, 11]
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["a"], "spacing": {"v": [3, 2, 1]}}))
    info, (src,) = SliceFolderReader().scan(str(tmp_path), "test", {})
    assert info.source["spacing"] == {"v": [3.0, 2.0, 1.0]}
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["a"]}))
    with pytest.raises(ValueError, match="no spacing") as e:
        SliceFolderReader().scan(str(tmp_path), "test", {})
    assert str(tmp_path / "dataset.json") in str(e.value) and "spacing option" in str(e.value)
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["a"], "spacings": [1, 1, 1]}))
    with pytest.raises(ValueError, match="unknown key 'spacings'.*did you mean 'spacing'"):
        SliceFolderReader().scan(str(tmp_path), "test", {})


@pytest.mark.parametrize(
    ("n", "kind", "ext"),
    [(1, "exclusive", ".png"), (3, "exclusive", ".tif"), (3, "overlapping", ".png"), (9, "overlapping", ".png")],
)
def test_labels_round_trip_to_equal_files(tmp_path, n, kind, ext):
    root = tmp_path / "data"
    labels = _dataset(root, {"vol": 4}, ext=ext, label_ext=".png", n_classes=n, kind=kind)
    info, (src,) = SliceFolderReader().scan(str(root), "train", {})
    lv = SliceFolderReader().load(src, info)
    masks = _engine_masks(lv.label, info)
    np.testing.assert_array_equal(masks, _masks(labels["vol"], n, kind))
    if n == 1:
        assert info.source["label_values"] == {"c0": [1, 255]} and set(np.unique(lv.label)) == {0, 255}
    info = _with_volume(info, "vol", lv)
    out = write_prediction(masks, info, "vol", tmp_path / "pred")
    assert out == tmp_path / "pred" / "vol"
    assert sorted(p.name for p in out.iterdir()) == [f"slice_{z}.png" for z in range(1, 5)]
    for z in range(4):
        written = cv2.imread(str(out / f"slice_{z + 1}.png"), cv2.IMREAD_UNCHANGED)
        assert written.dtype == (np.uint16 if n > 8 else np.uint8)
        np.testing.assert_array_equal(written, labels["vol"][z])
    np.testing.assert_array_equal(read_prediction(tmp_path / "pred", info, "vol"), masks)
    np.testing.assert_array_equal(read_prediction(root / "labels", info, "vol"), masks)


def test_write_with_another_slice_axis_and_probs(tmp_path):
    labels = _dataset(tmp_path / "data", {"vol": 3})
    info, (src,) = SliceFolderReader().scan(str(tmp_path / "data"), "train", {})
    lv = SliceFolderReader().load(src, info)
    axes = (1, 0, 2)  # 2.5D stacks along y: WORK = source.transpose(axes), (H, Z, W)
    info = _with_volume(info, "vol", lv, axes)
    work_masks = _masks(labels["vol"], 2, "exclusive").transpose(2, 1, 0, 3)  # (Z, C, H, W) -> (H, C, Z, W)
    assert info.volumes["vol"].shape == (H, 3, W) and info.volumes["vol"].spacing == (0.5, 2.0, 0.25)
    probs = work_masks.astype(np.float32) / 2
    write_prediction(work_masks, info, "vol", tmp_path / "pred", probs=probs)
    for z in range(3):
        written = cv2.imread(str(tmp_path / "pred" / "vol" / f"slice_{z + 1}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(written, labels["vol"][z])
    np.testing.assert_array_equal(read_prediction(tmp_path / "pred" / "vol", info, "vol"), work_masks)
    saved = np.load(tmp_path / "pred" / "vol_probs.npz")["probabilities"]  # (C, Z, Y, X), source axes
    np.testing.assert_array_equal(saved, np.moveaxis(_masks(labels["vol"], 2, "exclusive"), 1, 0) / 2)
    with pytest.raises(ValueError, match=r"predictions must be \(D, C, H, W\) = \(12, 2, 3, 10\)"):
        write_prediction(work_masks[:, :1], info, "vol", tmp_path / "pred")


def test_bad_folders_named(tmp_path):
    _dataset(tmp_path, {"a": 3, "b": 2})
    _write(tmp_path / "images" / "a" / "slice_9.tif", np.zeros((H + 1, W), np.uint16))
    _write(tmp_path / "labels" / "a" / "slice_9.png", np.zeros((H + 1, W), np.uint8))
    info, sources = SliceFolderReader().scan(str(tmp_path), "train", {})
    with pytest.raises(ValueError, match=r"slice_9.tif: 13x10 \(HxW\), but the folder's first slice is 12x10"):
        SliceFolderReader().load(sources[0], info)
    (tmp_path / "images" / "a" / "slice_9.tif").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="slice_9.tif: cannot be read as an image"):
        SliceFolderReader().load(sources[0], info)

    (tmp_path / "labels" / "a" / "slice_2.png").rename(tmp_path / "labels" / "a" / "slice_02.png")
    with pytest.raises(ValueError, match=r"label names differ.*no label for the slices \['slice_2.tif'\].*\['slice_02"):
        SliceFolderReader().scan(str(tmp_path), "train", {})
    (tmp_path / "labels" / "a" / "slice_02.png").rename(tmp_path / "labels" / "a" / "slice_2.png")

    _write(tmp_path / "labels" / "b" / "slice_1.png", np.full((H, W), 7, np.uint8))
    info, sources = SliceFolderReader().scan(str(tmp_path), "train", {})
    with pytest.raises(ValueError, match=r"slice_1.png: label values \[7\] belong to no class"):
        SliceFolderReader().load(sources[1], info)

    for p in (tmp_path / "labels" / "b").iterdir():
        p.unlink()
    (tmp_path / "labels" / "b").rmdir()
    with pytest.raises(FileNotFoundError, match=r"no label folder for the volumes \['b'\]"):
        SliceFolderReader().scan(str(tmp_path), "train", {})
    assert [s.key for s in SliceFolderReader().scan(str(tmp_path), "test", {})[1]] == ["a", "b"]
    shutil.rmtree(tmp_path / "labels")
    with pytest.raises(FileNotFoundError, match=f"label folder {tmp_path / 'labels'} not found"):
        SliceFolderReader().scan(str(tmp_path), "train", {})


@pytest.mark.parametrize("kind", ["exclusive", "overlapping"])
def test_prepare_volumes_end_to_end(tmp_path, kind):
    from data_prep.prepare_volumes import prepare_volumes
    from data_prep.work import load_mask, load_volume, read_dataset, read_manifest

    labels = _dataset(tmp_path / "data", {"kidney_2": 5, "kidney_10": 3}, n_classes=2, kind=kind)
    prepare_volumes("slices", tmp_path / "data", tmp_path / "work", options={"spacing": [4, 0.5, 0.5]}, n_folds=2)
    info = read_dataset(tmp_path / "work")
    assert (info.format, info.classes, info.label_kind) == ("slices", ("c0", "c1"), kind)
    assert info.volumes["kidney_2"].shape == (5, H, W) and info.volumes["kidney_2"].spacing == (4.0, 0.5, 0.5)
    assert load_volume(tmp_path / "work", "kidney_10")[:, 0, 0].tolist() == [2000, 2001, 2002]
    # the WORK mask is the label itself: value c + 1 (exclusive) or bit c (overlapping) for class c
    np.testing.assert_array_equal(load_mask(tmp_path / "work", "kidney_2"), labels["kidney_2"])
    m = read_manifest(tmp_path / "work")
    row = m[m["id"] == "kidney_2_slice_0003"].iloc[0]
    assert Path(row["path"]).name == "slice_4.tif" and (row["px_h"], row["px_w"], row["depth"]) == (0.5, 0.5, 5)
    assert row["area_c1"] == int(_masks(labels["kidney_2"], 2, kind)[3, 1].sum())
    masks = info.unpack(np.asarray(load_mask(tmp_path / "work", "kidney_10"))).astype(bool)
    out = write_prediction(masks, info, "kidney_10", tmp_path / "pred")
    for z in range(3):
        np.testing.assert_array_equal(
            cv2.imread(str(out / f"slice_{z + 1}.png"), cv2.IMREAD_UNCHANGED), labels["kidney_10"][z]
        )
    np.testing.assert_array_equal(read_prediction(tmp_path / "pred", info, "kidney_10"), masks)
