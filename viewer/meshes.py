"""Class surfaces and bounding boxes as triangle meshes in RAS millimetres (MZ3, the mesh format NiiVue reads).

``surface_mesh`` runs marching cubes (scikit-image) on one class mask of a WORK volume, lightly smoothed so that the
organ does not look like stacked bricks, and maps the vertices through the volume's affine
(:func:`viewer.nifti.work_affine`), so that the mesh lies where the class lies in the NIfTI the planes show.
``box_mesh`` makes the twelve edges of the class's bounding box as thin square tubes. ``mz3_bytes`` writes either.
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
from scipy import ndimage

#: MZ3 magic ("MZ") and the attribute bits of faces and vertices.
_MZ3_MAGIC, _MZ3_FACES, _MZ3_VERTS = 23117, 1, 2


def empty_mesh() -> tuple[np.ndarray, np.ndarray]:
    """``(vertices float32 (0, 3), faces uint32 (0, 3))``."""
    return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32)


def _to_world(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(N, 3)`` WORK voxel coordinates ``(d, h, w)`` -> RAS mm through a NIfTI affine of the ``(W, H, D)`` array."""
    xyz = ijk[:, ::-1].astype(np.float64)
    return (xyz @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)


def surface_mesh(
    mask: np.ndarray, affine: np.ndarray, smooth: float = 0.6, max_voxels: int = 4_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """The surface of a binary WORK mask as a triangle mesh in RAS mm.

    Args:
        mask: bool ``(D, H, W)``.
        affine: :func:`viewer.nifti.work_affine` of the volume.
        smooth: Gaussian sigma (voxels) applied to the mask before the 0.5 level set (0: none).
        max_voxels: above this many voxels in the mask's bounding box, marching cubes steps over 2 voxels (a
            coarser mesh of a large organ; the shape is the same).

    Returns:
        ``(vertices float32 (N, 3), faces uint32 (M, 3))``; empty arrays for an empty mask. Faces wind so that
        their normals point out of the class.
    """
    from skimage.measure import marching_cubes  # noqa: PLC0415 (only the viewer needs scikit-image)

    m = np.asarray(mask, bool)
    box = bounding_box(m)
    if box is None:
        return empty_mesh()
    lo, hi = np.maximum(np.array(box[0]) - 2, 0), np.minimum(np.array(box[1]) + 2, m.shape)
    crop = m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
    crop = np.pad(crop, 1)  # closed surfaces where the class touches the volume's edge
    if smooth > 0:
        crop = ndimage.gaussian_filter(crop, smooth)
    step = 2 if crop.size > max_voxels else 1
    level = min(0.5, float(crop.max()) * 0.5)
    verts, faces, _, _ = marching_cubes(crop, level=level, step_size=step, allow_degenerate=False)
    verts = verts - 1 + lo  # undo the pad and the crop
    # scikit-image's faces wind inward in (d, h, w); (d, h, w) -> (x, y, z) is a reflection, then the affine: the
    # normals point out of the class in RAS unless the affine reflects once more
    faces = faces[:, ::-1] if np.linalg.det(affine[:3, :3]) < 0 else faces
    return _to_world(verts, affine), np.ascontiguousarray(faces, np.uint32)


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """``((d0, h0, w0), (d1, h1, w1))`` of a bool ``(D, H, W)`` mask, ends exclusive; None when empty."""
    m = np.asarray(mask, bool)
    if not m.any():
        return None
    idx = [np.flatnonzero(m.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    return (int(idx[0][0]), int(idx[1][0]), int(idx[2][0])), (
        int(idx[0][-1] + 1),
        int(idx[1][-1] + 1),
        int(idx[2][-1] + 1),
    )


def box_mesh(
    box: tuple[tuple[int, int, int], tuple[int, int, int]] | None, affine: np.ndarray, width: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The 12 edges of a voxel box (:func:`bounding_box`) as square tubes in RAS mm.

    The box encloses the voxels (their outer faces: index - 0.5 to index + 0.5). ``width``: the tubes' side in mm
    (default 0.6 % of the box's diagonal, at least 0.5 mm). An empty box gives empty arrays.
    """
    if box is None:
        return empty_mesh()
    (d0, h0, w0), (d1, h1, w1) = box
    corners_vox = np.array(
        [[d, h, w] for d in (d0 - 0.5, d1 - 0.5) for h in (h0 - 0.5, h1 - 0.5) for w in (w0 - 0.5, w1 - 0.5)]
    )
    corners = _to_world(corners_vox, affine).astype(np.float64)
    if width is None:
        width = max(0.5, 0.006 * float(np.linalg.norm(corners[7] - corners[0])))
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
    verts, faces = [], []
    for a, b in edges:
        p, q = corners[a], corners[b]
        axis = (q - p) / max(np.linalg.norm(q - p), 1e-9)
        u = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
        u /= np.linalg.norm(u)
        v = np.cross(axis, u)
        ring = [(s * u + t * v) * width / 2 for s, t in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        base = len(verts)
        verts += [p - axis * width / 2 + r for r in ring] + [q + axis * width / 2 + r for r in ring]
        for k in range(4):  # four sides, two triangles each, then the two caps
            k2 = (k + 1) % 4
            faces += [(base + k, base + k2, base + 4 + k2), (base + k, base + 4 + k2, base + 4 + k)]
        faces += [(base, base + 2, base + 1), (base, base + 3, base + 2)]
        faces += [(base + 4, base + 5, base + 6), (base + 4, base + 6, base + 7)]
    return np.asarray(verts, np.float32), np.asarray(faces, np.uint32)


def mz3_bytes(vertices: np.ndarray, faces: np.ndarray, compress: bool = True) -> bytes:
    """An MZ3 mesh (NiiVue's format: ``uint16`` magic 23117, ``uint16`` attributes, ``uint32`` faces, vertices,
    bytes to skip; then ``uint32 (M, 3)`` faces and ``float32 (N, 3)`` vertices, little-endian), gzipped when
    ``compress``. An empty mesh gives a header with no faces and no vertices."""
    v = np.ascontiguousarray(vertices, "<f4").reshape(-1, 3)
    f = np.ascontiguousarray(faces, "<u4").reshape(-1, 3)
    attr = (_MZ3_FACES if len(f) else 0) | (_MZ3_VERTS if len(v) else 0)
    data = struct.pack("<HHIII", _MZ3_MAGIC, attr, len(f), len(v), 0) + f.tobytes() + v.tobytes()
    return gzip.compress(data, compresslevel=1, mtime=0) if compress else data


def read_mz3(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices, faces)`` of :func:`mz3_bytes` output (for tests and the report)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    magic, attr, nf, nv, skip = struct.unpack_from("<HHIII", data, 0)
    if magic != _MZ3_MAGIC:
        raise ValueError("not an MZ3 mesh")
    pos = 16 + skip
    f = np.frombuffer(data, "<u4", nf * 3, pos).reshape(nf, 3) if attr & _MZ3_FACES else np.zeros((0, 3), np.uint32)
    pos += f.nbytes
    v = np.frombuffer(data, "<f4", nv * 3, pos).reshape(nv, 3) if attr & _MZ3_VERTS else np.zeros((0, 3), np.float32)
    return v, f
