"""Medical image files (NIfTI ``.nii``/``.nii.gz``, NRRD ``.nrrd``/``.nhdr``, MetaImage ``.mha``/``.mhd``) through
SimpleITK.

One library reads and writes every volume format the readers meet, with one geometry convention: SimpleITK (the
ITK image model: origin, spacing and direction cosines in LPS physical space; a NIfTI's qform/sform is converted on
read and rebuilt on write). It also reads DICOM, and nnU-Net's own default reader uses it, so files written here
read back with the geometry nnU-Net expects. nibabel would do for NIfTI alone, not for NRRD and MetaImage.

Arrays are in SimpleITK's numpy order ``(z, y, x)``; spacing is returned in the same order ``(sz, sy, sx)``,
origin and direction as SimpleITK gives them (``(x, y, z)``, 9 values row-major).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from common.io import atomic_path

#: File endings read and written here (lower case).
ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Geometry tolerance (relative for spacing, absolute mm for origin, absolute for direction cosines).
GRID_TOL: float = 1e-4


def ending_of(path: str | os.PathLike) -> str:
    """The file ending among :data:`ENDINGS` (``.nii.gz`` counts as one), or ``""``.

    >>> ending_of("a/case_0000.nii.gz"), ending_of("b.NRRD"), ending_of("c.png")
    ('.nii.gz', '.nrrd', '')
    """
    name = Path(path).name.lower()
    return next((e for e in ENDINGS if name.endswith(e)), "")


@dataclass
class MedicalImage:
    """A volume and its geometry.

    Attributes:
        array: ``(Z, Y, X)`` (or ``(Z, Y, X, K)`` for a vector image), the file's dtype.
        spacing: ``(sz, sy, sx)`` mm.
        origin: ``(x, y, z)`` mm.
        direction: 9 direction cosines, row-major.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def same_grid(self, other: MedicalImage, tol: float = GRID_TOL) -> bool:
        """True when both lie on the same voxel grid (shape, spacing, origin, direction within ``tol``)."""
        return (
            self.array.shape[:3] == other.array.shape[:3]
            and np.allclose(self.spacing, other.spacing, rtol=tol, atol=0)
            and np.allclose(self.origin, other.origin, rtol=0, atol=max(tol, tol * max(self.spacing)))
            and np.allclose(self.direction, other.direction, rtol=0, atol=tol)
        )

    def describe(self) -> str:
        """Shape, spacing, origin and direction, for error messages."""
        return (
            f"shape {tuple(self.array.shape)} (z, y, x), spacing {tuple(round(s, 6) for s in self.spacing)}, "
            f"origin {tuple(round(o, 4) for o in self.origin)}, direction {tuple(round(d, 4) for d in self.direction)}"
        )


def read_image(path: str | os.PathLike) -> MedicalImage:
    """Read a NIfTI / NRRD / MetaImage file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable 3D image (the message names the file and SimpleITK's reason).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
        raise ValueError(f"{path}: not a readable image ({reason})") from None
    if img.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D volume, got a {img.GetDimension()}D image of size {img.GetSize()}")
    sx, sy, sz = img.GetSpacing()
    return MedicalImage(
        array=sitk.GetArrayFromImage(img),
        spacing=(float(sz), float(sy), float(sx)),
        origin=tuple(float(v) for v in img.GetOrigin()),
        direction=tuple(float(v) for v in img.GetDirection()),
    )


def to_sitk(array: np.ndarray, spacing: tuple[float, ...], origin: tuple[float, ...], direction: tuple[float, ...]):
    """A SimpleITK image of ``array`` ``(z, y, x)`` with this geometry (spacing ``(sz, sy, sx)``)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    sz, sy, sx = spacing
    img.SetSpacing((float(sx), float(sy), float(sz)))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetDirection(tuple(float(v) for v in direction))
    return img


def write_image(
    path: str | os.PathLike,
    array: np.ndarray,
    spacing: tuple[float, ...],
    origin: tuple[float, ...],
    direction: tuple[float, ...],
    compress: bool = True,
) -> Path:
    """Write ``array`` ``(z, y, x)`` with this geometry, atomically (a temporary file, then a rename).

    Raises:
        ValueError: an ending SimpleITK does not write here (see :data:`ENDINGS`).
    """
    path = Path(path)
    ending = ending_of(path)
    if not ending:
        raise ValueError(f"{path}: unknown image file ending; use one of {list(ENDINGS)}")
    img = to_sitk(array, spacing, origin, direction)
    with atomic_path(path, suffix=ending) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=compress)
    return path
