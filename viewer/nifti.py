"""WORK arrays as NIfTI-1 bytes with their real geometry, for the viewer (NiiVue reads them in the browser).

A WORK volume is ``(D, H, W)`` with axis 0 the slice axis (``data_prep.work``); its geometry is in the dataset
description (:class:`data_prep.dataset.VolumeInfo`: spacing along the WORK axes and, for volumes read from medical
files, the source's origin, direction cosines and axis order). The NIfTI written here stores the array as
``(i, j, k) = (W, H, D)`` with an sform that maps a voxel to RAS millimetres:

- with ``origin`` and ``direction`` (nnU-Net, DICOM, NIfTI inputs): the source image's own physical frame (SimpleITK's
  LPS frame, x and y negated), so the planes are the scanner's axial, coronal and sagittal planes, as in 3D Slicer;
- without (the Kaggle layout, slice folders): an identity direction in LPS (column -> patient left, row ->
  posterior, slice -> superior) from the origin, so that NiiVue's radiological axial view shows each slice as the
  PNG shows it (row 0 at the top, column 0 on the left).

The spacing is the WORK's in both cases, so millimetres and aspect are right. Pure numpy + gzip: no file is
written here.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence

import numpy as np

#: NIfTI-1 datatype codes and bits per voxel of the dtypes written here.
_DATATYPES: dict[np.dtype, tuple[int, int]] = {
    np.dtype(np.uint8): (2, 8),
    np.dtype(np.int16): (4, 16),
    np.dtype(np.int32): (8, 32),
    np.dtype(np.float32): (16, 32),
    np.dtype(np.uint16): (512, 16),
}
#: LPS (SimpleITK, DICOM) -> RAS (NIfTI): x and y change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def work_affine(
    spacing: Sequence[float],
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    axes: Sequence[int] = (0, 1, 2),
) -> np.ndarray:
    """The 4x4 voxel -> RAS mm matrix of a WORK volume stored as ``(i, j, k) = (W, H, D)``.

    Args:
        spacing: ``(sz, sy, sx)`` mm along the WORK axes ``(D, H, W)``.
        origin: the source's origin ``(x, y, z)`` mm, LPS (SimpleITK); None: ``(0, 0, 0)``.
        direction: the source's 9 direction cosines, row-major (SimpleITK); None: the identity.
        axes: WORK axis ``a`` is axis ``axes[a]`` of the source array in numpy order ``(z, y, x)``
            (:attr:`data_prep.dataset.VolumeInfo.axes`).

    >>> work_affine((3.0, 1.5, 1.5))[:3].tolist()
    [[-1.5, 0.0, 0.0, -0.0], [0.0, -1.5, 0.0, -0.0], [0.0, 0.0, 3.0, 0.0]]
    """
    d = np.eye(3) if direction is None else np.asarray(direction, np.float64).reshape(3, 3)
    o = np.zeros(3) if origin is None else np.asarray(origin, np.float64)
    lps = np.zeros((3, 3))
    for a in range(3):  # WORK axis a moves along source numpy axis axes[a] = SimpleITK index 2 - axes[a]
        lps[:, a] = d[:, 2 - int(axes[a])] * float(spacing[a])
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ lps[:, ::-1]  # columns in the NIfTI order (W, H, D)
    affine[:3, 3] = LPS_TO_RAS @ o
    return affine


def nifti_bytes(
    array: np.ndarray,
    affine: np.ndarray,
    scale: float = 1.0,
    offset: float = 0.0,
    compress: bool = True,
    description: str = "",
) -> bytes:
    """A NIfTI-1 single file (``.nii``, or ``.nii.gz`` when ``compress``) of a WORK-axes array.

    Args:
        array: ``(D, H, W)`` uint8, uint16, int16, int32 or float32 (WORK axes); written as ``(W, H, D)`` (the
            same bytes: NIfTI's first index varies fastest).
        affine: :func:`work_affine`; written as the sform (code 1, scanner) and, as far as it is a rotation times
            the spacing, the qform (code 1).
        scale, offset: the intensity of a stored value (``scl_slope``, ``scl_inter``): NiiVue shows source units.
        compress: gzip (level 1: fast; masks shrink a hundredfold).
        description: ``descrip`` (80 bytes at most).

    Raises:
        ValueError: an array that is not 3D or of a dtype not listed.
    """
    a = np.asarray(array)
    if a.ndim != 3:
        raise ValueError(f"expected a (D, H, W) array, got shape {a.shape}")
    if a.dtype not in _DATATYPES:
        raise ValueError(f"dtype {a.dtype} cannot be written (one of {[str(t) for t in _DATATYPES]})")
    code, bits = _DATATYPES[a.dtype]
    d, h, w = a.shape
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, w, h, d, 1, 1, 1, 1)
    struct.pack_into("<hhhh", header, 70, code, bits, 0, 0)
    qfac, quat = _quaternion(affine[:3, :3] / zooms)
    struct.pack_into("<8f", header, 76, qfac, *zooms, 0.0, 0.0, 0.0, 0.0)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    struct.pack_into("<ff", header, 112, float(scale), float(offset))
    struct.pack_into("<B", header, 123, 10)  # xyzt_units: mm, s
    header[148 : 148 + 80] = description.encode("ascii", "replace")[:80].ljust(80, b"\0")
    struct.pack_into("<hh", header, 252, 1, 1)  # qform_code, sform_code: scanner
    struct.pack_into("<6f", header, 256, *quat[1:], *affine[:3, 3])
    struct.pack_into("<12f", header, 280, *affine[0], *affine[1], *affine[2])
    header[344:348] = b"n+1\0"
    # NIfTI's first index varies fastest: a C-order (D, H, W) array is already (W, H, D) in NIfTI's order
    data = bytes(header) + b"\0\0\0\0" + np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
    return gzip.compress(data, compresslevel=1, mtime=0) if compress else data


def _quaternion(r: np.ndarray) -> tuple[float, np.ndarray]:
    """``(qfac, (a, b, c, d))`` of a 3x3 orthonormal matrix (NIfTI's qform: a proper rotation, the last column's
    sign in ``qfac``)."""
    r = np.array(r, np.float64)
    qfac = 1.0
    if np.linalg.det(r) < 0:
        r[:, 2] = -r[:, 2]
        qfac = -1.0
    a = 0.5 * np.sqrt(max(0.0, 1.0 + np.trace(r)))
    if a > 0.5e-3:
        b, c, d = (r[2, 1] - r[1, 2]) / (4 * a), (r[0, 2] - r[2, 0]) / (4 * a), (r[1, 0] - r[0, 1]) / (4 * a)
    else:  # a rotation by about 180 degrees: from the largest diagonal term
        i = int(np.argmax(np.diag(r)))
        if i == 0:
            b = 0.5 * np.sqrt(max(0.0, 1.0 + r[0, 0] - r[1, 1] - r[2, 2]))
            c, d, a = (r[0, 1] + r[1, 0]) / (4 * b), (r[0, 2] + r[2, 0]) / (4 * b), (r[2, 1] - r[1, 2]) / (4 * b)
        elif i == 1:
            c = 0.5 * np.sqrt(max(0.0, 1.0 - r[0, 0] + r[1, 1] - r[2, 2]))
            b, d, a = (r[0, 1] + r[1, 0]) / (4 * c), (r[1, 2] + r[2, 1]) / (4 * c), (r[0, 2] - r[2, 0]) / (4 * c)
        else:
            d = 0.5 * np.sqrt(max(0.0, 1.0 - r[0, 0] - r[1, 1] + r[2, 2]))
            b, c, a = (r[0, 2] + r[2, 0]) / (4 * d), (r[1, 2] + r[2, 1]) / (4 * d), (r[1, 0] - r[0, 1]) / (4 * d)
        if a < 0:
            a, b, c, d = -a, -b, -c, -d
    return qfac, np.array([a, b, c, d])
