"""The DICOM-series reader and writer on the real files that ship inside pydicom, and series built from them.

Real series (pydicom's ``dicomdirtests``): ``98892001/CT5N`` is a regular CT stack (5 slices 2.5 mm apart, 16x16);
``77654033/CT2`` has a 202.5 mm gap (slices 18, 180, 181, 182 of a scan); ``98892003/MR700`` is a radial MR series
(every slice has its own orientation); ``98892001/CT2N`` holds two localizers of different orientation; ``98892003/MR1``
holds three one-slice series in one folder. Only CT5N is one voxel grid: the others must be refused by name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from data_prep.dataset import VolumeInfo
from data_prep.readers.dicom import DicomReader, read_classes, read_prediction, write_prediction

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
DIRTESTS = CT_SMALL.parent / "dicomdirtests"
CT5N = DIRTESTS / "98892001" / "CT5N"
TOL = 1e-4


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    return dst


def _sitk_series(folder: Path) -> sitk.Image:
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return r.Execute()


def _make_series(
    folder: Path,
    n: int,
    step: float = 2.0,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    seed: int = 0,
    skip: int | None = None,
    patient: str | None = None,
) -> list[str]:
    """Copies of CT_small.dcm as a series along the normal of ``orientation``; pixel (0, 0) of slice k = 1000 + k.

    File names and InstanceNumbers are shuffled; returns the file names in position order.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    origin = np.array([-158.135803, -179.035797, -75.699997])
    uid = generate_uid()
    names = [f"IM{v:03d}" for v in rng.permutation(n)]
    instances = rng.permutation(n) + 1
    for k in range(n):
        if k == skip:
            continue
        ds = pydicom.dcmread(CT_SMALL)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = int(instances[k])
        if patient is not None:
            ds.PatientID = patient
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * step * normal]
        arr = ds.pixel_array.copy()
        arr[0, 0] = 1000 + k
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / names[k])
    return [names[k] for k in range(n) if k != skip]


def _classes(root: Path, labels: dict, **extra) -> None:
    (root / "classes.json").write_text(json.dumps({"labels": labels, **extra}))


def _volume_info(lv, key: str, axes=(0, 1, 2)) -> VolumeInfo:
    shape = lv.images.shape[1:]
    return VolumeInfo(
        shape=tuple(shape[a] for a in axes),
        spacing=tuple(lv.spacing[a] for a in axes),
        group="g",
        origin=lv.origin,
        direction=lv.direction,
        axes=axes,
    )


# ------------------------------------------------------------------------------------------------- real series


def test_real_ct_series_order_geometry_and_hu(tmp_path):
    root = tmp_path / "data"
    _copy(CT5N, root / "98892001" / "CT5N")
    info, sources = DicomReader().scan(str(root), "test", {"classes": ["organ"]})
    assert [s.key for s in sources] == ["98892001_CT5N"]
    assert sources[0].group == "98890234"  # PatientID
    assert (info.format, info.intensity, info.channels, info.classes) == ("dicom", "CT", ("CT",), ("organ",))
    lv = DicomReader().load(sources[0], info)
    # ImagePositionPatient z of files 2062, 2392, 2693, 3023, 3353: 8.7625, 6.2625, 3.7625, 1.2625, -1.2375
    # (InstanceNumber 6..10); the normal is +z, so position order is the reverse of the instance numbers.
    assert [Path(p).name for p in lv.extra["slice_paths"]] == ["3353", "3023", "2693", "2392", "2062"]
    assert lv.images.shape == (1, 5, 16, 16) and lv.images.dtype == np.int32
    np.testing.assert_allclose(lv.spacing, (2.5, 0.488281, 0.488281), atol=1e-6)
    np.testing.assert_allclose(lv.origin, (-72.199997, -143.0, -1.2375), atol=1e-6)
    assert lv.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    ref = _sitk_series(CT5N)
    np.testing.assert_allclose(ref.GetOrigin(), lv.origin, atol=TOL)
    np.testing.assert_allclose(ref.GetSpacing()[::-1], lv.spacing, atol=TOL)
    np.testing.assert_allclose(ref.GetDirection(), lv.direction, atol=TOL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), lv.images[0])
    # HU: stored value * RescaleSlope (1) + RescaleIntercept (-1024), voxel by voxel for the first slice
    ds = pydicom.dcmread(CT5N / "3353")
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    for y, x in [(0, 0), (5, 7), (15, 15)]:
        assert lv.images[0, 0, y, x] == int(ds.pixel_array[y, x]) - 1024
    assert lv.images[0, 0, 0, 0] == -33  # stored 991


def test_ct_small_hu(tmp_path):
    shutil.copy(CT_SMALL, tmp_path / "CT_small.dcm")
    info, (src,) = DicomReader().scan(str(tmp_path), "test", {"classes": ["a"]})
    lv = DicomReader().load(src, info)
    px = pydicom.dcmread(CT_SMALL).pixel_array
    assert lv.images.shape == (1, 1, 128, 128)
    for y, x in [(0, 0), (64, 64), (100, 20)]:
        assert lv.images[0, 0, y, x] == int(px[y, x]) * 1 - 1024
    assert lv.images[0, 0, 0, 0] == -849 and lv.images[0, 0, 64, 64] == 904  # stored 175 and 1928, minus 1024
    assert lv.spacing == (5.0, 0.661468, 0.661468)  # one slice: SpacingBetweenSlices
    assert src.group == "1CT1"


@pytest.mark.parametrize(
    ("series", "words"),
    [
        ("77654033/CT2", ["CT2", "uneven slice spacing", "17106 -> 17136", "202.5 mm", "median step is 1.25"]),
        ("98892003/MR700", ["MR700", "4528 has ImageOrientationPatient", "4467 has", "parallel"]),
        ("98892001/CT2N", ["CT2N", "6924 has ImageOrientationPatient (1, 0, 0, 0, 0, -1)", "6293 has (0, -1, 0"]),
    ],
)
def test_real_irregular_series_refused(tmp_path, series, words):
    root = tmp_path / "data"
    _copy(DIRTESTS / series, root / series)
    with pytest.raises(ValueError) as e:
        DicomReader().scan(str(root), "test", {"classes": ["a"]})
    for w in words:
        assert w in str(e.value)


def test_real_series_sharing_a_folder_keyed_by_uid(tmp_path):
    root = tmp_path / "data"
    _copy(DIRTESTS / "98892003" / "MR1", root / "MR1")
    info, sources = DicomReader().scan(str(root), "test", {"classes": ["a"]})
    uids = {str(pydicom.dcmread(f).SeriesInstanceUID): f.name for f in (root / "MR1").iterdir()}
    assert sorted(s.key for s in sources) == sorted(uids)
    assert info.intensity == "MR" and info.source["series"] == {k: k for k in uids}
    key = next(k for k, name in uids.items() if name == "4919")
    lv = DicomReader().load(next(s for s in sources if s.key == key), info)
    assert [Path(p).name for p in lv.extra["slice_paths"]] == ["4919"]
    assert lv.images.shape == (1, 1, 16, 16) and lv.spacing == (10.0, 1.367188, 1.367188)
    # orientation (0, 1, 0, 0, 0, -1): row +y, column -z, normal row x col = (-1, 0, 0)
    assert lv.direction == (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    assert lv.images.dtype == np.int32  # no rescale: the stored values
    np.testing.assert_array_equal(lv.images[0, 0], pydicom.dcmread(root / "MR1" / "4919").pixel_array)


# -------------------------------------------------------------------------------------------- synthetic series

OBLIQUE = (0.866025, 0.5, 0.0, 0.0, 0.0, -1.0)  # row 30 degrees from +x in the axial plane, column -z


def test_order_by_position_and_oblique_geometry_match_simpleitk(tmp_path):
    order = _make_series(tmp_path / "d" / "pat" / "obl", 6, step=1.5, orientation=OBLIQUE, seed=3)
    info, (src,) = DicomReader().scan(str(tmp_path / "d"), "test", {"classes": ["a"]})
    assert src.key == "pat_obl"
    lv = DicomReader().load(src, info)
    assert [Path(p).name for p in lv.extra["slice_paths"]] == order
    assert lv.images[0, :, 0, 0].tolist() == [1000 + k - 1024 for k in range(6)]
    # normal = row x col = (0.5 * -1 - 0, 0 - 0.866025 * -1, 0) = (-0.5, 0.866025, 0)
    np.testing.assert_allclose(lv.direction, (0.866025, 0, -0.5, 0.5, 0, 0.866025, 0, -1, 0), atol=1e-6)
    np.testing.assert_allclose(lv.spacing, (1.5, 0.661468, 0.661468), rtol=1e-5)
    ref = _sitk_series(tmp_path / "d" / "pat" / "obl")
    np.testing.assert_allclose(ref.GetOrigin(), lv.origin, atol=TOL)
    np.testing.assert_allclose(ref.GetSpacing()[::-1], lv.spacing, atol=TOL)
    np.testing.assert_allclose(ref.GetDirection(), lv.direction, atol=TOL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), lv.images[0])


def test_gap_duplicate_orientation_size_and_missing_tags_refused(tmp_path):
    names = _make_series(tmp_path / "gap" / "s", 5, skip=2)  # positions 0, 2, 6, 8 mm: a missing slice
    with pytest.raises(ValueError, match=rf"uneven slice spacing: {names[1]} -> {names[2]} steps 4 mm"):
        DicomReader().scan(str(tmp_path / "gap"), "test", {"classes": ["a"]})

    names = _make_series(tmp_path / "dup" / "s", 3)
    ds = pydicom.dcmread(tmp_path / "dup" / "s" / names[0])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "dup" / "s" / "copy.dcm")
    with pytest.raises(ValueError, match="share the position"):
        DicomReader().scan(str(tmp_path / "dup"), "test", {"classes": ["a"]})

    for what, change, message in [
        ("orient", lambda d: setattr(d, "ImageOrientationPatient", [1, 0, 0, 0, 0.9998, 0.02]), "has ImageOrientation"),
        ("rows", lambda d: setattr(d, "Rows", 64), r"is 64x128 \(rows x columns\)"),
        ("nopos", lambda d: delattr(d, "ImagePositionPatient"), "has no ImagePositionPatient"),
    ]:
        folder = tmp_path / what / "s"
        names = _make_series(folder, 4)
        ds = pydicom.dcmread(folder / names[3])
        change(ds)
        ds.save_as(folder / names[3])
        with pytest.raises(ValueError, match=message) as e:
            DicomReader().scan(str(tmp_path / what), "test", {"classes": ["a"]})
        assert str(folder) in str(e.value) and names[3] in str(e.value)


def test_mixed_single_and_multi_frame_refused(tmp_path):
    names = _make_series(tmp_path / "d" / "s", 3)
    ds = pydicom.dcmread(tmp_path / "d" / "s" / names[0])
    ds.NumberOfFrames = 2
    ds.save_as(tmp_path / "d" / "s" / names[0])
    with pytest.raises(ValueError, match="mixes single-frame files"):
        DicomReader().scan(str(tmp_path / "d"), "test", {"classes": ["a"]})


# --------------------------------------------------------------------------------------------- labels, writers


def _labelled(tmp_path: Path, labels: dict, values: np.ndarray | None = None, **extra) -> tuple:
    """An oblique 4-slice series with a label written by SimpleITK on the ImageSeriesReader's grid."""
    root = tmp_path / "data"
    _make_series(root / "p1" / "obl", 4, step=2.0, orientation=OBLIQUE, seed=1)
    ref = _sitk_series(root / "p1" / "obl")
    if values is None:
        values = np.zeros((4, 128, 128), np.uint8)
        values[1, 10:40, 20:60] = 1
        values[2, 30:90, 50:70] = 2
        values[3, :5, :5] = 2
    lab = sitk.GetImageFromArray(values)
    lab.CopyInformation(ref)
    (root / "labels").mkdir()
    sitk.WriteImage(lab, str(root / "labels" / "p1_obl.nii.gz"))
    _classes(root, labels, **extra)
    return root, values


@pytest.mark.parametrize("axes", [(0, 1, 2), (1, 0, 2)])
def test_label_loads_and_round_trips_exclusive(tmp_path, axes):
    root, values = _labelled(tmp_path, {"background": 0, "liver": 1, "tumour": 2})
    info, (src,) = DicomReader().scan(str(root), "train", {})
    assert (info.classes, info.label_kind) == (("liver", "tumour"), "exclusive")
    assert info.source["label_values"] == {"liver": [1], "tumour": [2]}
    assert src.label == str(root / "labels" / "p1_obl.nii.gz")
    lv = DicomReader().load(src, info)
    np.testing.assert_array_equal(lv.label, values)
    info = info.with_volumes({src.key: _volume_info(lv, src.key, axes)})
    masks = np.moveaxis(np.stack([values == 1, values == 2], axis=-1).transpose(*axes, 3), -1, 1)  # WORK axes
    out = write_prediction(masks, info, src.key, tmp_path / "pred")
    assert out == tmp_path / "pred" / "p1_obl.nii.gz"
    written = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(root / "labels" / "p1_obl.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), values)
    np.testing.assert_allclose(written.GetOrigin(), ref.GetOrigin(), atol=TOL)
    np.testing.assert_allclose(written.GetSpacing(), ref.GetSpacing(), atol=TOL)
    np.testing.assert_allclose(written.GetDirection(), ref.GetDirection(), atol=TOL)
    np.testing.assert_array_equal(read_prediction(out, info, src.key), masks)
    np.testing.assert_array_equal(read_prediction(tmp_path / "pred", info, src.key), masks)
    np.testing.assert_array_equal(read_prediction(root / "labels", info, src.key), masks)  # the truth reads too


def test_overlapping_regions_one_file_per_class(tmp_path):
    root, values = _labelled(tmp_path, {"background": 0, "kidney": [1, 2], "tumour": 2})
    info, (src,) = DicomReader().scan(str(root), "train", {})
    assert (info.classes, info.label_kind) == (("kidney", "tumour"), "overlapping")
    lv = DicomReader().load(src, info)
    info = info.with_volumes({src.key: _volume_info(lv, src.key)})
    masks = np.stack([values > 0, values == 2], axis=1)
    probs = masks.astype(np.float32) * 0.75
    assert write_prediction(masks, info, src.key, tmp_path / "pred", probs=probs) == tmp_path / "pred"
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "p1_obl_kidney.nii.gz",
        "p1_obl_probs.npz",
        "p1_obl_tumour.nii.gz",
    ]
    kidney = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / "p1_obl_kidney.nii.gz")))
    np.testing.assert_array_equal(kidney, (values > 0).astype(np.uint8))
    np.testing.assert_array_equal(read_prediction(tmp_path / "pred", info, src.key), masks)
    np.testing.assert_array_equal(read_prediction(root / "labels", info, src.key), masks)
    saved = np.load(tmp_path / "pred" / "p1_obl_probs.npz")["probabilities"]
    assert saved.shape == (2, 4, 128, 128) and saved.dtype == np.float16 and saved.max() == 0.75


def test_label_errors(tmp_path):
    root, _ = _labelled(tmp_path, {"background": 0, "liver": 1})
    info, (src,) = DicomReader().scan(str(root), "train", {})
    with pytest.raises(ValueError, match=r"label values \[2\] belong to no class"):
        DicomReader().load(src, info)

    shifted = sitk.ReadImage(str(root / "labels" / "p1_obl.nii.gz"))
    shifted.SetOrigin(tuple(v + 1.0 for v in shifted.GetOrigin()))
    sitk.WriteImage(shifted, str(root / "labels" / "p1_obl.nii.gz"))
    _classes(root, {"background": 0, "liver": 1, "tumour": 2})
    info, (src,) = DicomReader().scan(str(root), "train", {})
    with pytest.raises(ValueError, match="the label is not on the grid of its series") as e:
        DicomReader().load(src, info)
    assert "label shape (4, 128, 128)" in str(e.value) and "; series shape (4, 128, 128)" in str(e.value)

    (root / "labels" / "p1-obl.nii.gz").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"label files \['p1-obl.nii.gz'\] match no series key \(did you mean 'p1_obl'"
    ):
        DicomReader().scan(str(root), "train", {})


def test_classes_sources_and_splits(tmp_path):
    _make_series(tmp_path / "a", 2)
    with pytest.raises(ValueError, match="no classes for the DICOM series"):
        DicomReader().scan(str(tmp_path), "test", {})
    with pytest.raises(ValueError, match="split 'train' needs labels"):
        DicomReader().scan(str(tmp_path), "train", {"classes": ["x"]})
    _classes(tmp_path, {"background": 0, "a": 1, "b": 1}, label_kind="exclusive")
    with pytest.raises(ValueError, match="exclusive classes 'a' and 'b' share the label value 1"):
        read_classes(tmp_path, {})
    assert read_classes(tmp_path, {"classes": ["x", "y"], "label_kind": "overlapping"}) == (
        ("x", "y"),
        "overlapping",
        {"x": [1], "y": [2]},
        [],
    )
    (tmp_path / "classes.json").write_text(json.dumps({"regions": {"whole": [1, 2, 3], "core": [2, 3]}}))
    assert read_classes(tmp_path, {}) == (("whole", "core"), "overlapping", {"whole": [1, 2, 3], "core": [2, 3]}, [])
    _classes(tmp_path, {"background": 0, "liver": 1, "ignore": 9})
    assert read_classes(tmp_path, {}) == (("liver",), "exclusive", {"liver": [1]}, [9])
    _classes(tmp_path, {"background": 0, "left kidney": 1})
    with pytest.raises(ValueError, match="class name 'left kidney' must be letters"):
        read_classes(tmp_path, {})


def test_prepare_volumes_end_to_end(tmp_path):
    from data_prep.prepare_volumes import prepare_volumes
    from data_prep.work import load_mask, load_volume, read_dataset, read_manifest

    root, values = _labelled(tmp_path, {"background": 0, "liver": 1, "tumour": 2})
    _make_series(root / "p2" / "ax", 3, patient="P2")  # a second patient, so that two folds can be made
    ref = _sitk_series(root / "p2" / "ax")
    empty = sitk.Image(ref.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ref)
    sitk.WriteImage(empty, str(root / "labels" / "p2_ax.nii.gz"))
    prepare_volumes("dicom", root, tmp_path / "work", slice_axis=1, n_folds=2)
    info = read_dataset(tmp_path / "work")
    vol = info.volumes["p1_obl"]
    assert (info.format, info.intensity, vol.axes, vol.shape, vol.group) == (
        "dicom",
        "CT",
        (1, 0, 2),
        (128, 4, 128),
        "1CT1",
    )
    np.testing.assert_allclose(vol.spacing, (0.661468, 2.0, 0.661468), rtol=1e-5)
    # HU stored as HU + 1024 (offset -1024): pixel (0, 0) of slice k held 1000 + k before the rescale
    assert load_volume(tmp_path / "work", "p1_obl")[0, :, 0].tolist() == [1000, 1001, 1002, 1003]
    assert vol.offset == -1024.0 and vol.scale == 1.0
    np.testing.assert_array_equal(load_mask(tmp_path / "work", "p1_obl"), values.transpose(1, 0, 2))
    m = read_manifest(tmp_path / "work")
    m = m[m["case_day"] == "p1_obl"]
    assert len(m) == 128 and m["case"].iloc[0] == "1CT1" and m["has_tumour"].sum() == 60 + 5
    masks = info.unpack(np.asarray(load_mask(tmp_path / "work", "p1_obl"))).astype(bool)
    out = write_prediction(masks, info, "p1_obl", tmp_path / "pred")
    written, truth = sitk.ReadImage(str(out)), sitk.ReadImage(str(root / "labels" / "p1_obl.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), values)
    np.testing.assert_allclose(written.GetOrigin(), truth.GetOrigin(), atol=TOL)
    np.testing.assert_allclose(written.GetDirection(), truth.GetDirection(), atol=TOL)
    np.testing.assert_allclose(written.GetSpacing(), truth.GetSpacing(), atol=TOL)
    np.testing.assert_array_equal(read_prediction(root / "labels", info, "p1_obl"), masks)
