"""The nnU-Net v2 raw reader and writer: dataset.json rules, round trips voxel for voxel with the image's exact
geometry (NIfTI, NRRD, MetaImage; exclusive and region labels; non-consecutive values; a non-axial slice axis),
the overlap rules of the writer, and every bad input named."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nnunet_fixtures import DIRECTION, ORIGIN, make_nnunet_dataset, write_dataset_json, write_volume

from data_prep.dataset import DatasetInfo, VolumeInfo
from data_prep.layout import LayoutWarning
from data_prep.prepare_volumes import prepare_volumes
from data_prep.readers import prediction_io
from data_prep.readers.nnunet import (
    NnUNetReader,
    dataset_info,
    intensity_kind,
    labels_from_masks,
    read_prediction,
    write_prediction,
)
from data_prep.work import load_mask, load_volume, read_dataset


def geometry(path) -> tuple:
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def assert_same_geometry(a, b) -> None:
    ga, gb = geometry(a), geometry(b)
    assert ga[0] == gb[0]
    for x, y in zip(ga[1:], gb[1:]):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def round_trip(data, work, out):
    """Prepare, write every case's WORK masks as predictions, return ``{case: written path}``."""
    info = read_dataset(work)
    paths = {}
    for case in data.labels:
        masks = info.unpack(load_mask(work, case)).astype(bool)
        paths[case] = write_prediction(masks, info, case, out)
    return info, paths


def test_description_of_exclusive_labels(tmp_path):
    d = make_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=(3, 4, 5), channels=2, values=(2, 7))
    info, sources = NnUNetReader().scan(str(d.root), "train", {})
    assert (info.classes, info.label_kind, info.channels, info.intensity) == (
        ("liver", "spleen"), "exclusive", ("CT", "T2"), "CT",
    )  # fmt: skip
    assert info.source["label_values"] == {"liver": [2], "spleen": [7]} and info.source["regions_class_order"] is None
    assert (info.source["file_ending"], info.name, info.format) == (".nii.gz", "blobs", "nnunet")
    assert [(s.key, s.group) for s in sources] == [("case_000", "case_000"), ("case_001", "case_001")]
    assert sources[1].images == (
        str(d.root / "imagesTr/case_001_0000.nii.gz"),
        str(d.root / "imagesTr/case_001_0001.nii.gz"),
    )
    assert sources[1].label == str(d.root / "labelsTr/case_001.nii.gz")
    assert [intensity_kind(n) for n in ("CT", "MRI", "t1ce", "Flair", "ADC", "noNorm", "rescale_to_0_1")] == [
        "CT", "MR", "MR", "MR", "MR", "other", "other",
    ]  # fmt: skip


def test_description_of_regions_and_odd_names():
    meta = {
        "channel_names": {"0": "FLAIR", "1": "T1"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "core": [2, 3], "enh": 3, "ignore": 4},
        "regions_class_order": [1, 2, 3],
        "numTraining": 1,
        "file_ending": ".nrrd",
    }
    info = dataset_info(meta)
    assert (info.classes, info.label_kind, info.intensity) == (("whole_tumor", "core", "enh"), "overlapping", "MR")
    assert info.source["label_values"] == {"whole_tumor": [1, 2, 3], "core": [2, 3], "enh": [3]}
    assert info.source["ignore_values"] == [4] and info.source["regions_class_order"] == [1, 2, 3]


def test_round_trip_exclusive_non_consecutive_values(tmp_path):
    d = make_nnunet_dataset(tmp_path / "ds", n_cases=3, shape=(5, 9, 8), values=(3, 200, 17), classes=("a", "b", "c"))
    work = tmp_path / "w"
    prepare_volumes("nnunet", d.root, work, n_folds=2)
    info, paths = round_trip(d, work, tmp_path / "pred")
    for case, path in paths.items():
        assert path.name == f"{case}.nii.gz"
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert written.dtype == np.uint8
        np.testing.assert_array_equal(written, d.labels[case])
        image = d.root / "imagesTr" / f"{case}_0000.nii.gz"
        assert_same_geometry(path, image)
        np.testing.assert_allclose(nib.load(path).affine, nib.load(image).affine, atol=1e-5)
        np.testing.assert_array_equal(read_prediction(path, info, case), info.unpack(load_mask(work, case)))
    assert info.volumes["case_000"].direction == pytest.approx(DIRECTION, abs=1e-6)
    assert info.volumes["case_000"].origin == pytest.approx(ORIGIN, abs=1e-5)


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_round_trip_regions_on_a_non_axial_slice_axis(tmp_path, ending):
    # x has the largest spacing: the slice axis is array axis 2, WORK = (x, z, y)
    d = make_nnunet_dataset(
        tmp_path / "ds", n_cases=2, shape=(7, 8, 6), classes=("whole", "core", "enh"), regions=True,
        values=(2, 5, 9), spacing=(0.8, 0.9, 2.5), ending=ending, channel_names=("T2",),
    )  # fmt: skip
    work = tmp_path / "w"
    prepare_volumes("nnunet", d.root, work, n_folds=2)
    info = read_dataset(work)
    v = info.volumes["case_001"]
    assert (info.label_kind, v.axes, v.shape, v.offset) == ("overlapping", (2, 0, 1), (6, 7, 8), -1024.0)
    assert v.spacing == pytest.approx((2.5, 0.8, 0.9))
    np.testing.assert_array_equal(
        load_volume(work, "case_001").astype(np.int64) - 1024, d.images["case_001"][0].transpose(2, 0, 1)
    )
    np.testing.assert_array_equal(info.unpack(load_mask(work, "case_001")), d.masks("case_001").transpose(3, 0, 1, 2))
    _, paths = round_trip(d, work, tmp_path / "pred")
    for case, path in paths.items():
        assert path.name == f"{case}{ending}"
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), d.labels[case])
        assert_same_geometry(path, d.root / "imagesTr" / f"{case}_0000{ending}")


def overlap_info(kind: str) -> DatasetInfo:
    vol = VolumeInfo(
        shape=(1, 1, 4), spacing=(1.0, 1.0, 1.0), group="p", origin=(0.0,) * 3, direction=tuple(np.eye(3).ravel())
    )
    if kind == "exclusive":
        source = {"label_values": {"a": [4], "b": [2], "c": [9]}, "file_ending": ".nii.gz"}
        return DatasetInfo(
            classes=("a", "b", "c"), label_kind="exclusive", format="nnunet", source=source, volumes={"v": vol}
        )
    # frontal [1, 3], premotor [2, 3], thalamus 4 (the mricron regions) and nested whole/core/enh in one
    source = {
        "label_values": {"f": [1, 3], "p": [2, 3], "t": [4]},
        "regions_class_order": [1, 2, 4],
        "file_ending": ".nii.gz",
    }
    return DatasetInfo(classes=("f", "p", "t"), format="nnunet", source=source, volumes={"v": vol})


def test_writer_overlap_rules_by_hand():
    info = overlap_info("exclusive")
    m = np.zeros((1, 3, 1, 4), bool)  # voxels: a only, a+b, a+b+c, none
    m[0, 0, 0, :3] = True
    m[0, 1, 0, 1:3] = True
    m[0, 2, 0, 2] = True
    assert labels_from_masks(m, info).tolist() == [[[4, 2, 9, 0]]]  # without probs: the last class
    p = np.zeros((1, 3, 1, 4), np.float32)
    p[0, :, 0, 1] = (0.9, 0.6, 0.0)
    p[0, :, 0, 2] = (0.7, 0.5, 0.8)
    p[0, 1, 0, 3] = 0.99  # high but its mask is off: ignored
    assert labels_from_masks(m, info, probs=p).tolist() == [[[4, 4, 9, 0]]]

    info = overlap_info("regions")
    m = np.zeros((1, 3, 1, 4), bool)  # voxels: f, f+p, f+p+t (no single value), p+t (no single value)
    m[0, 0, 0, :3] = True
    m[0, 1, 0, 1:] = True
    m[0, 2, 0, 2:] = True
    # f+p is exactly value 3 (nnU-Net's order rule alone would paint 2); the others fall back to that rule: 4
    assert labels_from_masks(m, info).tolist() == [[[1, 3, 4, 4]]]


def test_read_prediction_checks_the_grid(tmp_path):
    info = overlap_info("exclusive")
    path = write_prediction(np.ones((1, 3, 1, 4), bool), info, "v", tmp_path)
    assert read_prediction(path, info, "v")[0, :, 0].tolist() == [[False] * 4, [False] * 4, [True] * 4]
    write_volume(
        tmp_path / "shifted.nii.gz",
        np.zeros((1, 1, 4), np.uint8),
        (1, 1, 1),
        origin=(0, 0, 5),
        direction=np.eye(3).ravel(),
    )
    with pytest.raises(
        ValueError, match=r"shifted\.nii\.gz: its grid differs from volume 'v'.*origin \(0\.0, 0\.0, 5\.0\)"
    ):
        read_prediction(tmp_path / "shifted.nii.gz", info, "v")
    with pytest.raises(ValueError, match=r"masks must be \(D, C, H, W\) = \(1, 3, 1, 4\)"):
        write_prediction(np.ones((1, 2, 1, 4), bool), info, "v", tmp_path)
    write_fn, read_fn = prediction_io("nnunet")
    assert (write_fn, read_fn) == (write_prediction, read_prediction)


def small(tmp_path, **kw):
    return make_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=(3, 4, 5), **kw)


def test_bad_dataset_json(tmp_path):
    d = small(tmp_path)
    reader = NnUNetReader()
    meta = dict(d.meta)
    del meta["file_ending"], meta["numTraining"]
    write_dataset_json(d.root, meta)
    with pytest.raises(ValueError, match=r"dataset\.json: missing key\(s\) \['numTraining', 'file_ending'\]"):
        reader.scan(str(d.root), "train", {})
    for labels, message in [
        ({"liver": 1}, "must have 'background': 0"),
        ({"background": 0, "liver": 1, "spleen": 1}, "'liver' and 'spleen' share the value 1"),
        ({"background": 0, "liver": 1.5}, "must be a non-negative integer, got 1.5"),
        ({"background": 0, "whole": [1, 2, 7], "core": 2}, r"region 'whole' names label value\(s\) \[7\] that nothing"),
        ({"background": 0, "whole": [1, 2]}, "need regions_class_order with one value per region"),
    ]:
        write_dataset_json(
            d.root, {**d.meta, "labels": labels, "regions_class_order": [1, 2] if "core" in labels else None}
        )
        with pytest.raises(ValueError, match=message):
            reader.scan(str(d.root), "train", {})
    write_dataset_json(d.root, {**d.meta, "file_ending": ".png"})
    with pytest.raises(ValueError, match="file_ending '.png' is not a volume format"):
        reader.scan(str(d.root), "train", {})


def test_missing_files_and_count_warning(tmp_path):
    d = small(tmp_path, channels=2)
    reader = NnUNetReader()
    (d.root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"imagesTr/case_001_0001\.nii\.gz not found: case 'case_001' misses channel 1"
    ):
        reader.scan(str(d.root), "train", {})
    (d.root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    (d.root / "labelsTr" / "case_000.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"labelsTr/case_000\.nii\.gz not found"):
        reader.scan(str(d.root), "train", {})
    d = small(tmp_path / "b")
    (d.root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    (d.root / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.warns(LayoutWarning, match="numTraining is 2 but .* holds 1 case"):
        _, sources = reader.scan(str(d.root), "train", {})
    assert [s.key for s in sources] == ["case_000"]
    with pytest.raises(FileNotFoundError, match=r"imagesTs not found"):
        reader.scan(str(d.root), "test", {})


def test_label_on_another_grid_and_undeclared_values(tmp_path):
    d = small(tmp_path)
    label = d.root / "labelsTr" / "case_001.nii.gz"
    write_volume(label, d.labels["case_001"], (2.5, 0.8, 0.75))  # x spacing differs
    work = tmp_path / "w"
    with pytest.raises(
        ValueError, match=r"case_001\.nii\.gz: the label's grid differs from its image .*spacing \(2\.5, 0\.8, 0\.75\)"
    ):
        prepare_volumes("nnunet", d.root, work, n_folds=2)
    write_volume(label, d.labels["case_001"] * 3, (2.5, 0.8, 0.7))  # values 3 and 6
    with pytest.raises(ValueError, match=r"case_001\.nii\.gz: label values \[3, 6\] are not declared"):
        prepare_volumes("nnunet", d.root, work, n_folds=2)
    assert sorted(p.name for p in work.rglob("*.npy")) == ["case_000.npy", "case_000.npy"]
    assert json.loads((work / "prepare.json").read_text())["status"] == "running"
    write_volume(label, d.labels["case_001"], (2.5, 0.8, 0.7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_volumes("nnunet", d.root, work, n_folds=2)  # resumes
    np.testing.assert_array_equal(load_mask(work, "case_001"), d.labels["case_001"])
