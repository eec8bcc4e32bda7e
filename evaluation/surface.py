"""Surface metrics in mm: surface Dice at a tolerance (NSD), robust Hausdorff (HD95), average surface distance.

The definitions are those of DeepMind's surface-distance algorithm (the field's reference: PyPI
``surface-distance``, which MONAI's ``compute_surface_dice(use_subvoxels=True)`` follows), computed here without
its dense distance maps:

- **Surfels.** A mask's surface lives on the grid of voxel *corners* (the voxel grid shifted by half a voxel):
  corner ``g = (gz, gy, gx)`` is the centre of the 2x2x2 cube of voxels ``g - 1 .. g`` on each axis, at
  ``(g - 0.5) * spacing`` mm from the centre of voxel ``(0, 0, 0)``. The 8 voxels of the cube give an 8-bit
  neighbour code (voxel ``g - 1 + (a, b, c)`` is bit ``7 - (4a + 2b + c)``); a corner whose code is neither 0 nor
  255 (a cube that is neither all outside nor all inside) is a surface element, a *surfel*. Its area in mm² is a
  function of the code and the spacing: the summed lengths of the marching-cubes triangle normals of that cube
  (the 256-entry normals table of the reference, :data:`_NORMALS`, scaled per axis by the spacing).
- **Distances.** From every surfel of one surface to the nearest surfel of the other, Euclidean in mm
  (``sqrt((dz sz)² + (dy sy)² + (dx sx)²)`` on corner offsets, exactly the reference's arithmetic).
- **NSD at tolerance τ** (surface Dice): ``(area of truth surfels within τ of the prediction + area of predicted
  surfels within τ of the truth) / (area of both surfaces)``; "within" is ``<= τ``, so τ = 0 counts only surfels
  that coincide (the SenNet competition's surface Dice).
- **Robust Hausdorff at percentile p** (HD95: p = 95): per direction, the surfels sorted by (distance, area), the
  first distance whose cumulative area fraction reaches ``p / 100``; the larger of the two directions. p = 100 is
  the plain Hausdorff distance between the two surfaces.
- **Average surface distance**: per direction, the area-weighted mean distance; **ASSD** here is the mean of the
  two directions. MONAI's ``compute_average_surface_distance(symmetric=True)`` is a different number: it pools
  the distances of both directions unweighted, over edge voxels rather than surfels.
- **DSC**: ``2 |P ∩ T| / (|P| + |T|)`` over the voxels of the volume.

Empty masks (``empty=``, the conventions of :mod:`evaluation.metric`): both empty gives ``dsc 1, nsd 1, hd95 0,
assd 0`` (``"one"``, the default) or NaN for all four (``"skip"``). One empty and the other not gives ``dsc 0,
nsd 0`` and ``hd95 = assd =`` the volume's diagonal in mm (:func:`volume_diagonal`): the largest distance two
surfels of that volume can have, so the worst possible value, and finite, so means over cases stay defined (the
reference returns ``inf``).

Speed (the reference correlates and distance-transforms the whole bounding box twice and sorts every surfel in
Python; this module is exact to it and about 20 times faster on real label shapes, ``benchmarks/bench_surface.py``):

- a surface depends on one mask only, so it is made alone and can be kept (:func:`mask_surface`, the truth's
  across the candidates of a search): the mask's bounding-box rows packed 64 voxels to a word, a corner is a
  surfel when the OR of its cube differs from the AND (shifted words, no float correlation), and only the
  surfels' codes are read;
- each surfel's nearest surfel of the other surface is looked for on the other's surfel bits at the corner offsets
  within a few voxels, nearest offset first, a block of offsets at a time for every surfel still unresolved (most
  surfels of two similar masks coincide or sit one voxel apart); the few left over get theirs from a KD-tree
  (``scipy.spatial.cKDTree``) on the part of the other surface that can hold it. Never all voxels, never all pairs;
- the distances are sorted by counting (the grid offsets have few distinct lengths, the codes few areas), and
  identical masks short-cut to zero distances.

>>> t = np.zeros((3, 3, 5), bool); t[1, 1, 1] = True  # one voxel: a surfel at each of its 8 corners
>>> p = np.roll(t, 2, axis=2)  # two voxels (2 mm) along x: 4 surfels of each 1 mm away, 4 at 2 mm
>>> surface_scores(p, t, (1.0, 1.0, 1.0), tolerance=1.0).round(6).tolist()  # dsc, nsd, hd95, assd
[0.0, 0.5, 2.0, 1.5]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.spatial import cKDTree

#: The four numbers :func:`surface_scores` returns, in order.
SURFACE_METRICS: tuple[str, ...] = ("dsc", "nsd", "hd95", "assd")
#: The Hausdorff percentile of the score tables.
DEFAULT_PERCENTILE: float = 95.0
_EMPTY = ("one", "skip")

# The marching-cubes surfel normals of each 2x2x2 neighbour code (the reference's table, as numbers): entry
# ``code`` lists the code's triangle normals, each as three digits |nz| |ny| |nx| in eighths (the area depends
# only on the absolute components). The order of the normals is the reference's, so that the summed areas are
# the same floating-point numbers.
_NORMALS: tuple[tuple[tuple[float, float, float], ...], ...] = tuple(
    tuple(tuple(int(d) / 8.0 for d in normal) for normal in entry.split())
    for entry in (
        "000,111,111,220 220,111,202 202,111 111,400 222 111,"
        "111,111 111,202 202,400 222 111,220 220,400 222 111,400 222 111,400 400,"
        "111,022 022,111 111,040 222 111,111 111,004 222 111,111 111 111,111 222 222 111,"
        "111 111,022 022 111,202 202 111,111 333 022 202,111 220 220,333 022 111 220,400 111 222 111,400 111 222,"
        "111,111 111,022 022,040 111 222,111 111,111 202 202,022 022 111,333 022 111 202,"
        "111 111,111 111 111,004 222 111,222 222 111 111,111 220 220,400 222 111 111,022 333 111 220,400 222 111,"
        "220 220,040 222 111,040 111 222,040 040,220 220 111,333 202 111 220,111 040 222 111,040 222 111,"
        "111 220 220,040 222 111 111,333 220 111 202,040 222 111,220 220 220 220,220 220 111,111 220 220,220 220,"
        "111,111 111,111 111,111 220 220,022 022,004 222 111,022 022 111,333 022 111 220,"
        "111 111,111 111 111,111 202 202,400 222 111 111,040 222 111,222 222 111 111,202 333 022 111,400 222 111,"
        "202 202,004 222 111,111 202 202,202 333 220 111,004 222 111,004 004,111 111 222 004,111 222 004,"
        "202 202 111,004 222 111 111,202 202 202 202,111 202 202,202 333 220 111,004 222 111,111 202 202,202 202,"
        "111 111,111 111 111,111 022 022,040 111 222 111,022 022 111,004 222 111 111,022 022 022 022,022 022 111,"
        "111 111 111,111 111 111 111,004 222 111 111,111 111 111,040 222 111 111,111 111 111,022 022 111,111 111,"
        "400 222 111,222 111 222 111,333 022 111 202,040 222 111,333 220 022 111,111 222 004,111 022 022,022 022,"
        "400 222 111 111,111 111 111,202 202 111,111 111,220 220 111,111 111,111 111,111,"
        "111,111 111,111 111,220 220 111,111 111,202 202 111,111 111 111,400 222 111 111,"
        "022 022,111 022 022,111 222 004,333 220 022 111,040 222 111,333 022 111 202,222 111 222 111,400 222 111,"
        "111 111,022 022 111,111 111 111,040 222 111 111,111 111 111,004 222 111 111,111 111 111 111,111 111 111,"
        "022 022 111,022 022 022 022,004 222 111 111,022 022 111,040 111 222 111,111 022 022,111 111 111,111 111,"
        "202 202,111 202 202,004 222 111,202 333 220 111,111 202 202,202 202 202 202,004 222 111 111,202 202 111,"
        "111 222 004,111 111 222 004,004 004,004 222 111,202 333 220 111,111 202 202,004 222 111,202 202,"
        "400 222 111,202 333 022 111,222 222 111 111,040 222 111,400 222 111 111,111 202 202,111 111 111,111 111,"
        "333 022 111 220,022 022 111,004 222 111,022 022,111 220 220,111 111,111 111,111,"
        "220 220,111 220 220,220 220 111,220 220 220 220,040 222 111,333 220 111 202,040 222 111 111,111 220 220,"
        "040 222 111,111 040 222 111,333 202 111 220,220 220 111,040 040,040 111 222,040 222 111,220 220,"
        "400 222 111,022 333 111 220,400 222 111 111,111 220 220,222 222 111 111,004 222 111,111 111 111,111 111,"
        "333 022 111 202,022 022 111,111 202 202,111 111,040 111 222,022 022,111 111,111,"
        "400 111 222,400 111 222 111,333 022 111 220,111 220 220,111 333 022 202,202 202 111,022 022 111,111 111,"
        "111 222 222 111,111 111 111,004 222 111,111 111,040 222 111,111 111,022 022,111,"
        "400 400,400 222 111,400 222 111,220 220,400 222 111,202 202,111 111,111,"
        "400 222 111,111 111,202 202,111,220 220,111,111,000"
    ).split(",")
)


def _spacing(spacing: Sequence[float], where: str = "spacing") -> tuple[float, float, float]:
    sp = tuple(float(v) for v in np.asarray(spacing, dtype=np.float64).ravel())
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"{where}: expected three positive voxel sides (sz, sy, sx) in mm, got {spacing!r}")
    return sp  # type: ignore[return-value]


def _volume(mask: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"{name}: expected a 3D mask (D, H, W) (one slice as (1, H, W)), got shape {m.shape}")
    return m if m.dtype == bool else m.astype(bool)


@functools.lru_cache(maxsize=64)
def surfel_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area in mm² of the surfel of each neighbour code for voxels of ``spacing`` ``(sz, sy, sx)`` mm.

    Each triangle normal ``n`` of the code is scaled to ``(nz sy sx, ny sz sx, nx sz sy)``; its length is the
    triangle's area; a code's area is the sum over its triangles.

    Returns:
        float64 ``(256,)``, read-only; codes 0 and 255 (no surface) have area 0.

    >>> a = surfel_areas((1.0, 1.0, 1.0)); float(a[0b00001111]), float(a[0b00000001])
    (1.0, 0.21650635094610965)
    """
    sz, sy, sx = _spacing(spacing)
    out = np.zeros(256)
    for code, normals in enumerate(_NORMALS):
        total = 0.0
        for nz, ny, nx in normals:
            total += float(np.linalg.norm(np.array([nz * sy * sx, ny * sz * sx, nx * sz * sy])))
        out[code] = total
    out[0] = out[255] = 0.0
    out.flags.writeable = False
    return out


def _bbox(mask: np.ndarray, z_range: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive-exclusive bounding box ``(lo, hi)`` (int64 ``(3,)`` each) of a 3D mask, None when it is empty;
    ``z_range``: ``(z0, z1)``, slices known to hold every voxel (only they are read)."""
    z0, z1 = (0, mask.shape[0]) if z_range is None else (max(int(z_range[0]), 0), min(int(z_range[1]), mask.shape[0]))
    zs = z0 + np.flatnonzero(mask[z0:z1].reshape(max(z1 - z0, 0), -1).any(axis=1))
    if not len(zs):
        return None
    plane = mask[zs[0] : zs[-1] + 1].any(axis=0)
    ys = np.flatnonzero(plane.any(axis=1))
    xs = np.flatnonzero(plane.any(axis=0))
    return np.array([zs[0], ys[0], xs[0]]), np.array([zs[-1] + 1, ys[-1] + 1, xs[-1] + 1])


def _crop(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]


@dataclass(frozen=True)
class _Search:
    """The grid offsets a nearest surfel is looked for at, nearest first (per spacing, see :func:`_search`)."""

    offsets: np.ndarray  # int64 (K, 3), sorted by distance
    rank: np.ndarray  # int64 (K,): index of the offset's distance in ``values``
    values: np.ndarray  # float64 (V,): the distinct offset distances, ascending (values[0] = 0)
    margin: np.ndarray  # int64 (3,): the largest |offset| along each axis
    area_values: np.ndarray  # float64 (A,): the distinct surfel areas, ascending
    area_rank: np.ndarray  # int64 (256,): index of each code's area in ``area_values``


#: Roughly how many grid offsets are tried before the KD-tree takes over (the ball of radius R holds about this many).
_SEARCH_OFFSETS = 2048


@functools.lru_cache(maxsize=64)
def _search(spacing: tuple[float, float, float]) -> _Search:
    """Every corner offset within R mm, sorted by its distance; R holds about :data:`_SEARCH_OFFSETS` offsets, and
    at least one voxel along every axis when that does not take more than 4 times as many (very anisotropic voxels:
    the rest goes to the KD-tree). Distances are computed as the reference computes them."""
    sp = np.asarray(spacing)
    radius = (_SEARCH_OFFSETS * 3.0 / (4.0 * math.pi) * float(np.prod(sp))) ** (1.0 / 3.0)
    if 4.0 / 3.0 * math.pi * float(sp.max()) ** 3 / float(np.prod(sp)) <= 4 * _SEARCH_OFFSETS:
        radius = max(radius, float(sp.max()))  # one voxel along every axis, unless that takes far more offsets
    margin = np.floor(radius / sp).astype(np.int64)
    axes = [np.arange(-m, m + 1) for m in margin]
    offs = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    dist = _norm(offs, sp)
    keep = np.flatnonzero(dist <= radius)
    order = keep[np.argsort(dist[keep], kind="stable")]
    values, rank = np.unique(dist[order], return_inverse=True)
    areas = surfel_areas(spacing)
    area_values, area_rank = np.unique(areas, return_inverse=True)
    return _Search(offs[order], rank.astype(np.int64), values, margin, area_values, area_rank.astype(np.int64))


def _norm(offsets: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """float64 ``(N,)`` length in mm of int corner offsets ``(N, 3)``: ``sqrt((dz sz)² + (dy sy)² + (dx sx)²)``,
    the reference's arithmetic (integer offsets to float, times the spacing, squares summed z, y, x)."""
    dz, dy, dx = (offsets.astype(np.float64) * sp).T
    return np.sqrt(dz * dz + dy * dy + dx * dx)


@dataclass(frozen=True, eq=False)
class Surface:
    """The surface of one mask: where its surfels are and how large (see the module docstring).

    Attributes:
        zyx: int64 ``(3, N)`` corner indices ``g`` of the surfels, one row per axis ``(z, y, x)``, in ``(z, y, x)``
            order.
        codes: uint8 ``(N,)`` their neighbour codes.
        spacing: ``(sz, sy, sx)`` mm.
        shape: ``(D, H, W)`` of the mask.
        count: voxels in the mask.
        bbox: the mask's bounding box ``(lo, hi)`` (voxel indices, ``hi`` exclusive), None when empty.
        grid: uint64 ``(Gz, Gy, Gw)``, one bit per corner of the bounding box (corners ``lo .. hi``, x from a
            multiple of 64): set where the corner is a surfel; bit ``x`` of row ``(z, y)`` is corner
            ``grid_origin + (z, y, x)``.
        grid_origin: int64 ``(3,)``.

    ``points`` (float64 ``(N, 3)`` mm), ``areas`` (float64 ``(N,)`` mm²) and ``corners`` (int64 ``(N, 3)``) are
    derived on first use.
    """

    zyx: np.ndarray = field(repr=False)
    codes: np.ndarray = field(repr=False)
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    count: int = 0
    bbox: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    grid: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint64), repr=False)
    grid_origin: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64), repr=False)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def corners(self) -> np.ndarray:
        """int64 ``(N, 3)`` corner indices ``g`` of the surfels."""
        return self.zyx.T

    @cached_property
    def points(self) -> np.ndarray:
        """float64 ``(N, 3)`` surfel positions in mm, axis order ``(z, y, x)``: corner ``g`` at
        ``(g - 0.5) * spacing`` (the centre of voxel ``(0, 0, 0)`` is the origin)."""
        return (self.zyx.T - 0.5) * np.asarray(self.spacing)

    @cached_property
    def areas(self) -> np.ndarray:
        """float64 ``(N,)`` surfel areas in mm²."""
        return surfel_areas(self.spacing)[self.codes]

    @property
    def area(self) -> float:
        """Total surface area in mm²."""
        return float(self.areas.sum())

    @cached_property
    def tree(self) -> cKDTree:
        """A KD-tree on :attr:`points` (built on first use, then kept)."""
        return cKDTree(self.points, leafsize=32, balanced_tree=False, compact_nodes=False)


def _empty_surface(sp: tuple[float, float, float], shape: tuple[int, ...]) -> Surface:
    return Surface(np.zeros((3, 0), np.int64), np.zeros(0, np.uint8), sp, shape)  # type: ignore[arg-type]


def _transpose8(x: np.ndarray) -> np.ndarray:
    """uint64: each word an 8x8 bit matrix (bit ``8i + j``: row ``i``, column ``j``) transposed (three swaps of
    off-diagonal blocks)."""
    for shift, mask in ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0)):
        s, m = np.uint64(shift), np.uint64(mask)
        t = (x ^ (x >> s)) & m
        x = x ^ t ^ (t << s)
    return x


def _codes_at(rows: np.ndarray, prev: np.ndarray, byte: np.ndarray, which: np.ndarray) -> np.ndarray:
    """uint8 neighbour codes of the surfels of the corner-row bytes ``byte`` (flat byte indices, laid out as
    ``rows``); surfel ``i`` is bit ``which[i] & 7`` of byte ``byte[which[i] >> 3]``. ``rows`` (bit ``x`` = voxel
    ``x``) and ``prev`` (bit ``x`` = voxel ``x - 1``) are uint64 ``(Z, Y, words)``; the cube of corner row
    ``(z, y)`` holds voxel rows ``(z + a, y + b)``, ``a, b`` in 0, 1.

    The 8 voxel bytes behind each corner byte (one per code bit) make an 8x8 bit matrix; transposed, byte ``j``
    of it is the code of the corner at bit ``j``."""
    row_bytes = rows.shape[1] * rows.shape[2] * 8
    flat_rows, flat_prev = rows.view(np.uint8).reshape(-1), prev.view(np.uint8).reshape(-1)
    planes = np.empty((len(byte), 8), dtype=np.uint8)  # column s: the voxel byte of code bit s
    for a in (0, 1):
        for b in (0, 1):
            at = a * row_bytes + b * rows.shape[2] * 8  # the row (z + a, y + b): views that start there
            shift = 7 - (4 * a + 2 * b)  # bit of voxel x - 1 (c = 0); voxel x is the next lower bit
            planes[:, shift] = flat_prev[at:][byte]
            planes[:, shift - 1] = flat_rows[at:][byte]
    codes = _transpose8(planes.view(np.uint64).reshape(-1))
    return ((codes[which >> 3] >> ((which & 7) * 8).astype(np.uint64)) & np.uint64(0xFF)).astype(np.uint8)


def mask_surface(mask: np.ndarray, spacing: Sequence[float], z_range: tuple[int, int] | None = None) -> Surface:
    """The surfels of a mask (see the module docstring).

    Works on the rows of the mask's bounding box packed 64 voxels to a word: a corner is a surfel when the OR of
    its cube's 8 voxels differs from their AND, shifted rows combined bitwise; the codes are read only at the
    surfels.

    Args:
        mask: bool ``(D, H, W)`` (one slice: ``(1, H, W)``, a slab one voxel thick).
        spacing: ``(sz, sy, sx)`` voxel sides in mm.
        z_range: ``(z0, z1)``, slices known to hold every voxel of the mask (e.g. from per-slice counts): only they
            are read. None: all.

    Returns:
        A :class:`Surface` (no surfels when the mask is empty).

    >>> s = mask_surface(np.ones((1, 1, 1), bool), (2.0, 1.0, 1.0))  # one voxel: a surfel at each corner
    >>> len(s), s.points.min(axis=0).tolist(), s.points.max(axis=0).tolist()
    (8, [-1.0, -0.5, -0.5], [1.0, 0.5, 0.5])
    """
    sp = _spacing(spacing)
    m = _volume(mask, "mask")
    box = _bbox(m, z_range)
    if box is None:
        return _empty_surface(sp, m.shape)
    lo, hi = box
    n_z, n_y = int(hi[0] - lo[0]), int(hi[1] - lo[1])
    # x: voxel x is bit x - x_org of a row, x_org the multiple of 64 at or left of the bounding box (a spare bit
    # after the last voxel: the corner after it)
    x_org = (int(lo[2]) // 64) * 64
    words = (int(hi[2]) - x_org) // 64 + 1
    packed = np.zeros((n_z + 2, n_y + 2, words * 8), dtype=np.uint8)  # a row of zeros around in z and y
    cols = np.packbits(m[lo[0] : hi[0], lo[1] : hi[1], x_org : hi[2]], axis=2, bitorder="little")
    packed[1:-1, 1:-1, : cols.shape[2]] = cols  # from x_org on (the columns before lo are empty)
    rows = packed.view("<u8")  # bit b of a row = voxel x_org + b
    prev = rows << np.uint64(1)  # bit b = voxel x_org + b - 1
    prev[..., 1:] |= rows[..., :-1] >> np.uint64(63)
    any_x, all_x = rows | prev, rows & prev
    any_y, all_y = any_x[:, 1:] | any_x[:, :-1], all_x[:, 1:] & all_x[:, :-1]
    border = (any_y[1:] | any_y[:-1]) & ~(all_y[1:] & all_y[:-1])  # (n_z + 1, n_y + 1, words): corner rows lo..hi
    # set bits, byte by byte (little-endian words: byte j holds bits 8j .. 8j + 7), laid out as ``rows`` (the
    # corner row (z, y) at the index of the voxel row (z, y): the codes read rows (z + a, y + b) from there)
    laid = np.zeros_like(rows)
    laid[:-1, :-1] = border
    by = laid.view(np.uint8).reshape(-1)
    nz = np.flatnonzero(by)
    bits = np.flatnonzero(np.unpackbits(by[nz], bitorder="little"))
    codes = _codes_at(rows, prev, nz, bits)
    byte = nz[bits >> 3]
    bit = bits & 7
    row, x_byte = np.divmod(byte, words * 8)
    cz, cy = np.divmod(row, n_y + 2)
    zyx = np.empty((3, len(byte)), dtype=np.int64)
    np.add(cz, lo[0], out=zyx[0])
    np.add(cy, lo[1], out=zyx[1])
    np.add(x_byte * 8 + bit, x_org, out=zyx[2])
    grid = np.ascontiguousarray(border)
    origin = np.array([lo[0], lo[1], x_org], dtype=np.int64)
    count = int(np.bitwise_count(rows).sum())
    return Surface(zyx, codes, sp, m.shape, count, (lo, hi), grid, origin)


#: The KD-tree fallback: every how many surfels one goes into the tree that bounds the distances, and a surface
#: smaller than this many surfels goes into the tree whole.
_SUBSAMPLE, _SMALL = 16, 4096


def _nearest(corners: np.ndarray, b: Surface) -> np.ndarray:
    """Index into ``b`` of the nearest surfel to each of int ``(3, M)`` corners (exact, Euclidean in mm).

    A KD-tree on every 16th surfel of ``b`` bounds each distance by ``u``; the nearest surfel then lies in the box
    of half-side ``u`` around its query point, so a KD-tree on the surfels of ``b`` inside the union of those boxes
    (marked on a coarse grid of cells with a difference array) answers exactly. The union is usually a small part
    of ``b``; ``b``'s own tree is used when it is already built or ``b`` is small."""
    sp = np.asarray(b.spacing)
    pts = (corners.T - 0.5) * sp
    if "tree" in b.__dict__ or len(b) <= _SMALL:
        return b.tree.query(pts, k=1)[1]
    bound = cKDTree((b.zyx[:, ::_SUBSAMPLE].T - 0.5) * sp).query(pts, k=1)[0]
    lo_b, hi_b = b.zyx.min(axis=1), b.zyx.max(axis=1)
    cell = np.maximum(1, (8.0 * sp.min() / sp).astype(np.int64))
    reach = bound[None, :] / sp[:, None]  # (3, M) corners
    lo = (np.clip(np.floor(corners - reach).astype(np.int64), lo_b[:, None], hi_b[:, None]) - lo_b[:, None]) // cell[
        :, None
    ]
    hi = (np.clip(np.ceil(corners + reach).astype(np.int64), lo_b[:, None], hi_b[:, None]) - lo_b[:, None]) // cell[
        :, None
    ]
    shape = tuple((hi_b - lo_b) // cell + 2)
    diff = np.zeros(shape, dtype=np.int64)
    for cz in (0, 1):
        for cy in (0, 1):
            for cx in (0, 1):
                at = (np.where(cz, hi[0] + 1, lo[0]), np.where(cy, hi[1] + 1, lo[1]), np.where(cx, hi[2] + 1, lo[2]))
                np.add.at(diff, at, (-1) ** (cz + cy + cx))
    covered = diff.cumsum(axis=0).cumsum(axis=1).cumsum(axis=2) > 0
    cells = (b.zyx - lo_b[:, None]) // cell[:, None]
    keep = np.flatnonzero(covered[cells[0], cells[1], cells[2]])
    tree = cKDTree((b.zyx[:, keep].T - 0.5) * sp, leafsize=32, balanced_tree=False, compact_nodes=False)
    return keep[tree.query(pts, k=1)[1]]


#: The lowest set bit of each byte (8: none).
_LOWEST_BIT = np.array([8] + [(v & -v).bit_length() - 1 for v in range(1, 256)], dtype=np.int64)

#: Above this many (surfel, offset) pairs the grid search goes one offset at a time (dropping the surfels found).
_BLOCK = 1 << 14


def _directed(a: Surface, b: Surface) -> _Directed:
    """From each surfel of ``a`` to the nearest surfel of ``b`` (both non-empty): the distances with ``a``'s areas,
    sorted by (distance, area).

    Corner offsets within the search radius are tried nearest first on ``b``'s surfel bits (one byte per corner),
    offset 0 first, then blocks of 4 and 8 offsets (their hits packed into a byte per surfel, the lowest bit is the
    nearest) for the surfels not found yet, wider blocks once few are left; the first hit is the nearest surfel.
    The surfels left over get theirs from a KD-tree (:func:`_nearest`). Either way the distance is the reference's
    arithmetic on the integer corner offset. Grid hits are counted per (distance, area) pair, the rest sorted."""
    srch = _search(a.spacing)
    # b's surfel bits over the box of a's corners grown by the search reach, zeros where b has none: every offset
    # from every surfel of a stays on it (words align: grid origins in x are multiples of 64)
    q_lo, q_hi = a.bbox[0] - srch.margin, a.bbox[1] + srch.margin  # a's corners lie in [bbox lo, bbox hi]
    w_lo, w_hi = int(q_lo[2]) // 64, int(q_hi[2]) // 64
    gy, gw = int(q_hi[1] - q_lo[1]) + 1, w_hi - w_lo + 1
    box = np.zeros((int(q_hi[0] - q_lo[0]) + 1, gy, gw), dtype=np.uint64)
    src = b.grid_origin // np.array([1, 1, 64])
    lo = np.maximum([q_lo[0], q_lo[1], w_lo], src)
    hi = np.minimum([q_hi[0] + 1, q_hi[1] + 1, w_hi + 1], src + b.grid.shape)
    if np.all(hi > lo):
        to, fr = lo - [q_lo[0], q_lo[1], w_lo], lo - src
        n = hi - lo
        box[to[0] : to[0] + n[0], to[1] : to[1] + n[1], to[2] : to[2] + n[2]] = b.grid[
            fr[0] : fr[0] + n[0], fr[1] : fr[1] + n[1], fr[2] : fr[2] + n[2]
        ]
    n_x = gw * 64
    loc = (a.zyx[0] - q_lo[0]) * (gy * n_x)
    loc += (a.zyx[1] - q_lo[1]) * n_x
    loc += a.zyx[2] - 64 * w_lo  # bit index in the box
    idx = np.arange(len(a))
    lookup_u8 = np.unpackbits(box.view(np.uint8), bitorder="little")  # b's surfel bits, one a byte
    lookup = lookup_u8.view(bool)
    off = srch.offsets
    deltas = (off[:, 0] * gy + off[:, 1]) * n_x + off[:, 2]
    dmin = int(deltas.min())
    rank = np.full(len(a), -1, dtype=np.int64)
    k, size = 0, 1
    while len(idx) and k < len(deltas):
        if len(idx) * (len(deltas) - k) <= _BLOCK:  # the rest in one go
            size = len(deltas) - k
        block = deltas[k : k + size]
        if len(block) == 1:  # offset 0 alone: most surfels of similar masks coincide
            hit, first = lookup[loc + block[0]], 0
        elif len(block) <= 8:  # a block's hits packed into a byte per surfel (bit q: offset k + q)
            base = loc + dmin  # offset q read from the view of lookup that starts dmin before its delta
            pattern = lookup_u8[block[0] - dmin :][base]
            for q in range(1, len(block)):
                pattern |= lookup_u8[block[q] - dmin :][base] << np.uint8(q)
            first = _LOWEST_BIT[pattern]
            hit = first < 8
            first = np.compress(hit, first)
        else:
            found = lookup[loc[:, None] + block[None, :]]
            first = found.argmax(axis=1)
            hit = found[np.arange(len(idx)), first]
            first = np.compress(hit, first)
        rank[np.compress(hit, idx)] = srch.rank[k + first]
        miss = ~hit
        idx, loc = np.compress(miss, idx), np.compress(miss, loc)
        k = k + len(block)
        size = 4 if size == 1 else 8 if len(idx) * 16 > len(a) else 2 * size  # 4, 8s while many are left, doubling
    on_grid = rank >= 0
    n_a = len(srch.area_values)
    key = np.compress(on_grid, rank) * n_a + srch.area_rank[np.compress(on_grid, a.codes)]
    counts = np.bincount(key, minlength=len(srch.values) * n_a)
    bins = np.flatnonzero(counts)  # (distance rank, area rank) pairs in (distance, area) order
    out = _Directed(srch.values[bins // n_a], srch.area_values[bins % n_a], counts[bins], np.zeros(0), np.zeros(0))
    far = np.flatnonzero(~on_grid)
    if len(far):
        sp = np.asarray(a.spacing)
        j = _nearest(a.zyx[:, far], b)
        d_far = _norm(a.zyx[:, far].T - b.zyx[:, j].T, sp)
        a_far = surfel_areas(a.spacing)[a.codes[far]]
        order = np.lexsort((a_far, d_far))
        out = _Directed(out.dist, out.area, out.count, d_far[order], a_far[order])
    return out


@dataclass(frozen=True)
class _Directed:
    """One direction's distances, sorted by (distance, area): ``count`` surfels of each (``dist``, ``area``) pair
    found on the grid (all nearer than the rest), then the surfels from the KD-tree one by one (``far_*``)."""

    dist: np.ndarray  # float64 (B,) mm
    area: np.ndarray  # float64 (B,) mm²
    count: np.ndarray  # int64 (B,)
    far_dist: np.ndarray  # float64 (F,) mm, sorted
    far_area: np.ndarray  # float64 (F,) mm²

    def expand(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 ``(N,)`` each: every surfel's distance and area, in order (the reference's sorted arrays)."""
        return (
            np.concatenate([np.repeat(self.dist, self.count), self.far_dist]),
            np.concatenate([np.repeat(self.area, self.count), self.far_area]),
        )

    def sums(self, tolerance: float) -> tuple[float, float, float]:
        """``(area, area within tolerance, sum of distance * area)`` over the surfels."""
        mass = self.count * self.area
        return (
            float(mass.sum() + self.far_area.sum()),
            float(mass[self.dist <= tolerance].sum() + self.far_area[self.far_dist <= tolerance].sum()),
            float((mass * self.dist).sum() + (self.far_area * self.far_dist).sum()),
        )

    def percentile(self, percentile: float) -> float:
        """The first distance whose cumulative area fraction reaches ``percentile / 100`` (the reference's rule),
        from the (distance, area) groups; a fraction within 1e-12 of the threshold (where summing in another order
        could decide otherwise) is settled on the expanded arrays, in the reference's order."""
        cum = np.cumsum(np.concatenate([self.count * self.area, self.far_area]))
        frac = cum / cum[-1]
        q = percentile / 100.0
        i = min(int(np.searchsorted(frac, q)), len(frac) - 1)
        if np.any(np.abs(frac[max(i - 1, 0) : i + 1] - q) <= 1e-12):
            dist, area = self.expand()
            cum = np.cumsum(area) / np.sum(area)
            return float(dist[min(int(np.searchsorted(cum, q)), len(dist) - 1)])
        return float(self.dist[i] if i < len(self.dist) else self.far_dist[i - len(self.dist)])


@dataclass(frozen=True)
class SurfaceDistances:
    """The distances between two non-empty surfaces, in the reference's form: per direction the surfel distances
    (mm) sorted ascending, with their areas (mm²) in the same order (ties by area).

    Attributes:
        truth_to_pred, truth_areas: float64 ``(Nt,)`` from each truth surfel to the predicted surface.
        pred_to_truth, pred_areas: float64 ``(Np,)`` from each predicted surfel to the true surface.
    """

    truth_to_pred: np.ndarray
    truth_areas: np.ndarray
    pred_to_truth: np.ndarray
    pred_areas: np.ndarray

    def surface_dice(self, tolerance: float) -> float:
        """NSD: the area of the surfels within ``tolerance`` mm (``<=``) of the other surface over the area of
        both."""
        near_t = np.sum(self.truth_areas[self.truth_to_pred <= tolerance])
        near_p = np.sum(self.pred_areas[self.pred_to_truth <= tolerance])
        return float((near_t + near_p) / (np.sum(self.truth_areas) + np.sum(self.pred_areas)))

    def robust_hausdorff(self, percentile: float = DEFAULT_PERCENTILE) -> float:
        """The larger of the two directions' area-weighted ``percentile`` distances (mm): per direction the first
        sorted distance whose cumulative area fraction reaches ``percentile / 100``; 100 gives the Hausdorff
        distance."""

        def one(dist: np.ndarray, areas: np.ndarray) -> float:
            cum = np.cumsum(areas) / np.sum(areas)
            return float(dist[min(int(np.searchsorted(cum, percentile / 100.0)), len(dist) - 1)])

        return max(one(self.truth_to_pred, self.truth_areas), one(self.pred_to_truth, self.pred_areas))

    def average_distances(self) -> tuple[float, float]:
        """Area-weighted mean distance (mm) truth -> prediction and prediction -> truth."""
        return (
            float(np.sum(self.truth_to_pred * self.truth_areas) / np.sum(self.truth_areas)),
            float(np.sum(self.pred_to_truth * self.pred_areas) / np.sum(self.pred_areas)),
        )

    def assd(self) -> float:
        """Average symmetric surface distance: the mean of the two :meth:`average_distances` (mm)."""
        t2p, p2t = self.average_distances()
        return 0.5 * (t2p + p2t)


def _check_surface(s: Surface, shape: tuple[int, ...], sp: tuple[float, float, float], name: str) -> None:
    if s.spacing != sp or tuple(s.shape) != tuple(shape):
        raise ValueError(
            f"{name}_surface was made for shape {s.shape} and spacing {s.spacing}, but the {name} mask has shape "
            f"{shape} and the spacing is {sp}; make it with mask_surface({name}, spacing)"
        )


def _pair(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    truth_surface: Surface | None,
    pred_surface: Surface | None,
    z_range: tuple[int, int] | None = None,
) -> tuple[Surface, Surface, int]:
    """Checked inputs: the two surfaces (made unless given) and ``|P ∩ T|``."""
    sp = _spacing(spacing)
    p, t = _volume(pred, "pred"), _volume(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    ts = truth_surface if truth_surface is not None else mask_surface(t, sp, z_range)
    _check_surface(ts, t.shape, sp, "truth")
    ps = pred_surface if pred_surface is not None else mask_surface(p, sp, z_range)
    _check_surface(ps, p.shape, sp, "pred")
    inter = 0
    if ps.bbox is not None and ts.bbox is not None:
        lo, hi = np.maximum(ps.bbox[0], ts.bbox[0]), np.minimum(ps.bbox[1], ts.bbox[1])
        if np.all(hi > lo):
            inter = int(np.count_nonzero(_crop(p, lo, hi) & _crop(t, lo, hi)))
    return ts, ps, inter


def _distances(ts: Surface, ps: Surface, inter: int) -> tuple[_Directed, _Directed]:
    """Both directions (truth -> prediction, prediction -> truth); identical masks (``|P| = |T| = |P ∩ T|``) need
    no search."""
    if ps.count == ts.count == inter:
        areas, counts = np.unique(ts.areas, return_counts=True)
        same = _Directed(np.zeros(len(areas)), areas, counts, np.zeros(0), np.zeros(0))
        return same, same
    return _directed(ts, ps), _directed(ps, ts)


def surface_distances(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    truth_surface: Surface | None = None,
    pred_surface: Surface | None = None,
) -> SurfaceDistances:
    """Distances between the surfaces of two non-empty masks, both directions (the reference's
    ``compute_surface_distances``, same values, same order).

    Args:
        pred, truth: bool ``(D, H, W)`` of one shape, neither empty.
        spacing: ``(sz, sy, sx)`` mm.
        truth_surface, pred_surface: their :func:`mask_surface` when already known (a search keeps the truth's).

    Returns:
        A :class:`SurfaceDistances`.

    Raises:
        ValueError: shapes differ, a mask is empty, a surface of another shape or spacing.
    """
    ts, ps, inter = _pair(pred, truth, spacing, truth_surface, pred_surface)
    if ps.count == 0 or ts.count == 0:
        raise ValueError("a mask is empty: no surface distances (surface_scores applies the empty conventions)")
    t2p, p2t = _distances(ts, ps, inter)
    return SurfaceDistances(*t2p.expand(), *p2t.expand())


def default_tolerance(spacing: Sequence[float]) -> float:
    """The default NSD tolerance: one voxel, taken as the largest voxel side in mm (a surface one voxel off
    along any axis still counts as touching; on anisotropic data such as 3 mm slices of 1.5 mm pixels that is
    one slice, two pixels).

    >>> default_tolerance((3.0, 1.5, 1.5))
    3.0
    """
    return max(_spacing(spacing))


def volume_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The diagonal of a volume ``shape`` ``(D, H, W)`` of voxels ``spacing`` mm: ``sqrt(sum((n_i s_i)²))``, the
    largest distance two surfels of that volume can have (they lie on voxel corners, from ``-0.5`` to
    ``n_i - 0.5`` voxels along each axis).

    >>> volume_diagonal((1, 3, 4), (1.0, 1.0, 1.0))
    5.0990195135927845
    """
    sp = _spacing(spacing)
    return float(math.sqrt(sum((float(n) * s) ** 2 for n, s in zip(shape, sp))))


def surface_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    tolerance: float,
    percentile: float = DEFAULT_PERCENTILE,
    truth_surface: Surface | None = None,
    empty: str = "one",
    z_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """DSC, NSD at ``tolerance``, robust Hausdorff at ``percentile`` and ASSD of one class volume.

    Args:
        pred: bool ``(D, H, W)`` predicted mask (one slice: ``(1, H, W)``).
        truth: bool ``(D, H, W)`` true mask.
        spacing: ``(sz, sy, sx)`` voxel sides in mm.
        tolerance: NSD tolerance τ in mm (``>= 0``; :func:`default_tolerance` gives one voxel).
        percentile: the Hausdorff percentile in ``[0, 100]`` (95: HD95; 100: the Hausdorff distance).
        truth_surface: ``mask_surface(truth, spacing)`` when already known (reused across predictions).
        empty: both masks empty -> ``[1, 1, 0, 0]`` (``"one"``) or NaN (``"skip"``); one empty -> ``[0, 0, diag,
            diag]`` with ``diag`` = :func:`volume_diagonal` in either convention.
        z_range: ``(z0, z1)``, slices known to hold every voxel of both masks (a speed hint: only they are read).

    Returns:
        float64 ``(4,)``: ``[dsc, nsd, hd95, assd]`` (:data:`SURFACE_METRICS`), distances in mm.

    Raises:
        ValueError: shapes differ or are not 3D, a bad spacing, tolerance, percentile or ``empty``.
    """
    if empty not in _EMPTY:
        raise ValueError(f"empty must be one of {_EMPTY}, got {empty!r}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a distance >= 0 in mm, got {tolerance!r}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    ts, ps, inter = _pair(pred, truth, spacing, truth_surface, None, z_range)
    n_p, n_t = ps.count, ts.count
    if n_p == 0 and n_t == 0:
        return np.array([1.0, 1.0, 0.0, 0.0]) if empty == "one" else np.full(4, np.nan)
    if n_p == 0 or n_t == 0:
        diag = volume_diagonal(ts.shape, ts.spacing)
        return np.array([0.0, 0.0, diag, diag])
    t2p, p2t = _distances(ts, ps, inter)
    (area_t, near_t, sum_t), (area_p, near_p, sum_p) = t2p.sums(tolerance), p2t.sums(tolerance)
    nsd = (near_t + near_p) / (area_t + area_p)
    hd = max(t2p.percentile(percentile), p2t.percentile(percentile))
    return np.array([2.0 * inter / (n_p + n_t), nsd, hd, 0.5 * (sum_t / area_t + sum_p / area_p)])
