"""The viewer's files: NIfTI with the source's geometry, class meshes where the class is, MZ3 that round-trips."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.work import load_volume, read_dataset
from viewer.meshes import bounding_box, box_mesh, mz3_bytes, read_mz3, surface_mesh
from viewer.nifti import nifti_bytes, work_affine
from viewer.study import case_bundle, open_study


def _nifti(data: bytes, tmp_path, name="x.nii.gz"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_work_affine_maps_voxels_where_simpleitk_puts_them() -> None:
    """A WORK voxel (d, h, w) of a transposed source lands on the source voxel's physical point (LPS -> RAS)."""
    spacing_src = (2.0, 0.9, 0.7)  # (sz, sy, sx) of the source array (z, y, x)
    img = sitk.Image(7, 6, 5, sitk.sitkUInt8)  # x = 7, y = 6, z = 5
    img.SetSpacing(tuple(reversed(spacing_src)))
    img.SetOrigin((-12.5, 30.0, 7.25))
    c, s = np.cos(0.4), np.sin(0.4)
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    axes = (1, 0, 2)  # WORK = source.transpose(1, 0, 2): WORK axis 0 is the source's y
    spacing_work = tuple(spacing_src[a] for a in axes)
    affine = work_affine(spacing_work, img.GetOrigin(), img.GetDirection(), axes)
    rng = np.random.default_rng(0)
    for _ in range(20):
        src = [int(rng.integers(n)) for n in (5, 6, 7)]  # numpy (z, y, x)
        work = [src[a] for a in axes]  # (d, h, w)
        lps = np.array(img.TransformIndexToPhysicalPoint((src[2], src[1], src[0])))
        ras = affine @ np.array([work[2], work[1], work[0], 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)


def test_nifti_bytes_is_read_back_by_nibabel_and_simpleitk(tmp_path) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4000, (5, 6, 7)).astype(np.uint16)  # (D, H, W)
    affine = work_affine((3.0, 1.5, 1.25), (10.0, -4.0, 2.5), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path = _nifti(nifti_bytes(a, affine, scale=0.5, offset=-1024.0), tmp_path)
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)  # the quaternion says the same
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(img.dataobj.get_unscaled()), a.transpose(2, 1, 0))
    np.testing.assert_allclose(img.get_fdata(), a.transpose(2, 1, 0) * 0.5 - 1024.0)
    s = sitk.ReadImage(str(path))
    assert s.GetSize() == (7, 6, 5)
    np.testing.assert_allclose(s.GetSpacing(), (1.25, 1.5, 3.0), atol=1e-6)
    np.testing.assert_allclose(s.GetOrigin(), (10.0, -4.0, 2.5), atol=1e-5)
    raw = nifti_bytes(a, affine, compress=False)
    assert raw[344:348] == b"n+1\0" and len(raw) == 352 + a.nbytes
    assert gzip.decompress(nifti_bytes(a, affine)) == raw
    with pytest.raises(ValueError, match="dtype"):
        nifti_bytes(a.astype(np.float64), affine)


@pytest.mark.parametrize(
    "direction",
    [
        (1, 0, 0, 0, 1, 0, 0, 0, 1),  # identity (LPS): RAS flips x and y, a rotation by 180 degrees about z
        (-1, 0, 0, 0, -1, 0, 0, 0, 1),  # already RAS: no rotation
        (1, 0, 0, 0, -1, 0, 0, 0, -1),  # 180 degrees about x (in RAS: about y)
        (0, 1, 0, 1, 0, 0, 0, 0, -1),  # 180 degrees about the x = y diagonal
        (1, 0, 0, 0, 1, 0, 0, 0, -1),  # a reflection (z flipped): qfac -1
        (0.36, 0.48, -0.8, -0.8, 0.6, 0.0, 0.48, 0.64, 0.6),  # oblique
    ],
)
def test_qform_says_what_the_sform_says(direction, tmp_path) -> None:
    """The quaternion of the qform (every branch of its decomposition, reflections in qfac) gives the affine back."""
    affine = work_affine((2.5, 0.8, 0.7), (1.0, 2.0, 3.0), direction)
    img = nib.load(_nifti(nifti_bytes(np.zeros((2, 3, 4), np.uint8), affine), tmp_path))
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)
    np.testing.assert_allclose(img.get_sform(), affine, atol=1e-5)


def test_image_of_a_case_has_the_source_files_geometry_and_voxels(nnunet_study, tmp_path) -> None:
    """What the page shows of an nnU-Net case is its image file: same size, spacing, origin, direction, values."""
    study = open_study(nnunet_study["work"], nnunet_study["pred"])
    key = study.keys[1]
    bundle = case_bundle(study, key)
    ours = sitk.ReadImage(str(_nifti(bundle.files["image.nii.gz"], tmp_path)))
    source = sitk.ReadImage(str(nnunet_study["root"] / "imagesTr" / f"{key}_0000.nii.gz"))
    assert ours.GetSize() == source.GetSize()
    np.testing.assert_allclose(ours.GetSpacing(), source.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(ours.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.GetDirection(), source.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(source), atol=1e-3)
    # the class overlays lie on the same grid and hold the masks
    info = read_dataset(nnunet_study["work"])
    assert info.volumes[key].axes == (0, 1, 2)
    for c in range(3):
        over = nib.load(_nifti(bundle.files[f"truth_{c}.nii.gz"], tmp_path, f"t{c}.nii.gz"))
        np.testing.assert_array_equal(np.asarray(over.dataobj).transpose(2, 1, 0), nnunet_study["truth"][key][:, c])
        np.testing.assert_allclose(over.affine, study.affine(key), atol=1e-5)
    assert np.asarray(load_volume(nnunet_study["work"], key)).shape == tuple(bundle.meta["shape"])


def test_kaggle_case_is_drawn_like_its_pngs(kaggle_study, tmp_path) -> None:
    """No source geometry: rows go posterior, columns to the patient's left (a radiological view shows the PNG as
    it is), slices up; the spacing is the pixel spacing and 3 mm."""
    study = open_study(kaggle_study["work"])
    key = study.keys[0]
    d, h, w = study.shape(key)
    sz, sy, sx = study.spacing(key)
    assert sz == 3.0
    img = nib.load(_nifti(case_bundle(study, key).files["image.nii.gz"], tmp_path))
    assert img.shape == (w, h, d)
    np.testing.assert_allclose(np.diag(img.affine)[:3], [-sx, -sy, 3.0], atol=1e-6)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    a, b, c = v[f[:, 0]].astype(np.float64), v[f[:, 1]].astype(np.float64), v[f[:, 2]].astype(np.float64)
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


@pytest.mark.parametrize("direction", [None, (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)])
def test_surface_mesh_encloses_the_mask_volume_with_outward_normals(direction) -> None:
    spacing = (2.0, 1.0, 0.5)
    zz, yy, xx = np.mgrid[:20, :40, :80]
    r = 12.0  # mm
    ball = ((zz - 10) * 2.0) ** 2 + ((yy - 20) * 1.0) ** 2 + ((xx - 40) * 0.5) ** 2 <= r**2
    affine = work_affine(spacing, (5.0, -3.0, 1.0), direction)
    v, f = surface_mesh(ball, affine, smooth=0.0)
    vol = _signed_volume(v, f)
    assert vol == pytest.approx(ball.sum() * np.prod(spacing), rel=0.03)  # positive: normals point out
    centre = affine @ np.array([40, 20, 10, 1.0])
    dist = np.linalg.norm(v - centre[:3], axis=1)
    assert dist.min() > r - 2.5 and dist.max() < r + 2.5  # on the sphere, within a voxel's diagonal
    assert surface_mesh(np.zeros((3, 4, 5), bool), affine)[0].shape == (0, 3)


def test_box_mesh_surrounds_the_voxels_and_mz3_round_trips() -> None:
    m = np.zeros((6, 8, 10), bool)
    m[1:4, 2:7, 3:5] = True
    box = bounding_box(m)
    assert box == ((1, 2, 3), (4, 7, 5))
    affine = work_affine((2.0, 1.0, 1.0))
    v, f = box_mesh(box, affine, width=0.2)
    assert v.shape == (12 * 8, 3) and f.shape == (12 * 12, 3)
    corners = np.array([affine @ [w, h, d, 1.0] for d in (0.5, 3.5) for h in (1.5, 6.5) for w in (2.5, 4.5)])[:, :3]
    np.testing.assert_allclose(v.min(0), corners.min(0) - 0.1, atol=1e-5)
    np.testing.assert_allclose(v.max(0), corners.max(0) + 0.1, atol=1e-5)
    v2, f2 = read_mz3(mz3_bytes(v, f))
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(f2, f)
    assert box_mesh(None, affine)[1].shape == (0, 3)
    assert read_mz3(mz3_bytes(*box_mesh(None, affine), compress=False))[0].shape == (0, 3)
