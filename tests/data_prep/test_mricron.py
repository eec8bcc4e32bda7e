"""A real MRI through the nnU-Net path: ch2 (the Colin27 T1 of mricron-data) cut into slabs, with the AAL and
Brodmann atlases drawn on it as labels. WORK must hold ch2's voxels and the atlas regions, dataset.json SimpleITK's
geometry, and predictions written back must equal the labels on ch2's exact grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nnunet_fixtures import (
    AAL_CLASSES,
    AAL_FRONTAL,
    BRODMANN_PREMOTOR,
    MRICRON_DIR,
    mricron_nnunet,
    read_template,
    requires_mricron,
)

from data_prep.prepare_volumes import prepare_volumes
from data_prep.readers.nnunet import write_prediction
from data_prep.work import load_mask, load_volume, read_dataset, read_manifest

pytestmark = requires_mricron


@pytest.fixture(scope="module")
def templates():
    return {n: sitk.GetArrayFromImage(read_template(f"{n}.nii.gz")) for n in ("ch2", "aal", "brodmann")}


@pytest.fixture(scope="module")
def exclusive(tmp_path_factory):
    root = tmp_path_factory.mktemp("mricron")
    data = mricron_nnunet(root / "Dataset901_Ch2")
    prepare_volumes("nnunet", data.root, root / "work", n_folds=2)
    return data, root / "work"


def expected_affine(data, case: str) -> np.ndarray:
    """ch2's affine moved to the slab's first voxel (nibabel's voxel order is x, y, z)."""
    y0, _, x0, _ = data.crop
    shift = np.eye(4)
    shift[:3, 3] = (x0, y0, data.slabs[case][0])
    return nib.load(MRICRON_DIR / "ch2.nii.gz").affine @ shift


def test_work_holds_ch2_and_the_atlas_regions(exclusive, templates):
    data, work = exclusive
    info = read_dataset(work)
    assert (info.classes, info.label_kind, info.intensity, info.channels) == (
        tuple(AAL_CLASSES), "exclusive", "MR", ("T1",),
    )  # fmt: skip
    y0, y1, x0, x1 = data.crop
    ch2 = read_template("ch2.nii.gz")
    for case, (s0, s1) in data.slabs.items():
        np.testing.assert_array_equal(load_volume(work, case), templates["ch2"][s0:s1, y0:y1, x0:x1])
        aal = templates["aal"][s0:s1, y0:y1, x0:x1]
        expected = np.zeros(aal.shape, np.uint8)
        for c, regions in enumerate(AAL_CLASSES.values()):
            expected[np.isin(aal, regions)] = c + 1
        np.testing.assert_array_equal(load_mask(work, case), expected)
        # the geometry SimpleITK gives the slab file, and the slab's place inside ch2
        slab = sitk.ReadImage(str(data.root / "imagesTr" / f"{case}_0000.nii.gz"))
        v = info.volumes[case]
        assert (v.shape, v.axes, v.offset, v.scale) == ((s1 - s0, y1 - y0, x1 - x0), (0, 1, 2), 0.0, 1.0)
        assert v.spacing == pytest.approx((1.0, 1.0, 1.0)) and v.direction == pytest.approx(slab.GetDirection())
        assert v.origin == pytest.approx(slab.GetOrigin())
        assert v.origin == pytest.approx(ch2.TransformIndexToPhysicalPoint((x0, y0, s0)))
    man = read_manifest(work)
    thalamus = man.groupby("case_day")["area_thalamus"].sum()
    assert thalamus.sum() == np.isin(templates["aal"], (77, 78))[:, y0:y1, x0:x1][36:180].sum() > 0


def test_predictions_written_back_equal_the_labels_on_ch2s_grid(exclusive, tmp_path):
    data, work = exclusive
    info = read_dataset(work)
    for case in data.slabs:
        masks = info.unpack(load_mask(work, case)).astype(bool)
        path = write_prediction(masks, info, case, tmp_path)
        img = nib.load(path)
        np.testing.assert_allclose(img.affine, expected_affine(data, case), atol=1e-4)
        np.testing.assert_allclose(img.affine, nib.load(data.root / "labelsTr" / f"{case}.nii.gz").affine, atol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), data.labels[case])


def test_overlapping_atlas_regions_on_a_sagittal_slice_axis(tmp_path, templates):
    data = mricron_nnunet(tmp_path / "ds", regions=True, n_slabs=2, slab=24, z0=100)
    work = tmp_path / "w"
    prepare_volumes("nnunet", data.root, work, n_folds=2, slice_axis=2)
    info = read_dataset(work)
    assert (info.classes, info.label_kind) == (("frontal", "premotor", "thalamus"), "overlapping")
    y0, y1, x0, x1 = data.crop
    for case, (s0, s1) in data.slabs.items():
        crop = (slice(s0, s1), slice(y0, y1), slice(x0, x1))
        np.testing.assert_array_equal(load_volume(work, case), templates["ch2"][crop].transpose(2, 0, 1))
        masks = info.unpack(load_mask(work, case))  # (x, C, z, y)
        frontal = np.isin(templates["aal"][crop], AAL_FRONTAL)
        premotor = np.isin(templates["brodmann"][crop], BRODMANN_PREMOTOR)
        np.testing.assert_array_equal(masks[:, 0], frontal.transpose(2, 0, 1))
        np.testing.assert_array_equal(masks[:, 1], premotor.transpose(2, 0, 1))
        assert (frontal & premotor).sum() > 100  # the pair really overlaps here
        path = write_prediction(masks.astype(bool), info, case, tmp_path / "pred")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), data.labels[case])
        np.testing.assert_allclose(nib.load(path).affine, expected_affine(data, case), atol=1e-4)


def test_an_atlas_on_another_grid_is_refused(tmp_path):
    data = mricron_nnunet(tmp_path / "ds", n_slabs=2, slab=8, z0=80)
    ho = read_template("HarvardOxford-cort-maxprob-thr0-1mm.nii.gz")
    y0, y1, x0, x1 = data.crop
    bad = data.root / "labelsTr" / "slab_1.nii.gz"
    sitk.WriteImage(ho[x0:x1, y0:y1, 88:96], str(bad), True)  # same array shape, HarvardOxford's grid
    with pytest.raises(ValueError, match=r"slab_1\.nii\.gz: the label's grid differs from its image .*origin"):
        prepare_volumes("nnunet", data.root, tmp_path / "w", n_folds=2)
