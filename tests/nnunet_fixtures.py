"""nnU-Net v2 raw datasets for tests: generated blobs (:func:`make_nnunet_dataset`) and a real MRI with hand-drawn
atlases (:func:`mricron_nnunet`, from the Debian package mricron-data).

Files are written with SimpleITK directly (not through the project's writers), so the tests check the readers
against an independent writer. Shared by the data_prep, inference and evaluation tests.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

#: Where mricron-data puts its templates.
MRICRON_DIR = Path("/usr/share/mricron/templates")
MRICRON_FILES = ("ch2.nii.gz", "aal.nii.gz", "brodmann.nii.gz", "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz")
requires_mricron = pytest.mark.skipif(
    not all((MRICRON_DIR / f).is_file() for f in MRICRON_FILES),
    reason=f"real MRI templates not found in {MRICRON_DIR}: install the Debian package mricron-data "
    "(apt-get install mricron-data)",
)

#: Origin (x, y, z mm) and direction (a rotation about a tilted axis: an oblique acquisition) of generated cases.
ORIGIN = (-41.5, 17.25, 103.0)


def rotation(axis: tuple[float, float, float] = (1.0, 2.0, 3.0), angle: float = 0.35) -> tuple[float, ...]:
    """A proper rotation matrix, 9 values row-major (Rodrigues' formula)."""
    u = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    r = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    return tuple(float(v) for v in r.ravel())


DIRECTION = rotation()


def write_volume(path: Path, array: np.ndarray, spacing, origin=ORIGIN, direction=DIRECTION) -> None:
    """Write ``array`` ``(z, y, x)`` with this geometry (spacing ``(sz, sy, sx)``) with SimpleITK."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetDirection(tuple(float(v) for v in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=str(path).endswith(".gz"))


def write_dataset_json(root: Path, meta: dict) -> Path:
    path = root / "dataset.json"
    path.write_text(json.dumps(meta, indent=1) + "\n")
    return path


@dataclass
class NnUNetData:
    """What a generated dataset holds.

    Attributes:
        root: the dataset folder.
        meta: its dataset.json.
        images: ``{case: (K, Z, Y, X) arrays as written}`` (train and test cases).
        labels: ``{case: (Z, Y, X) label values}`` (train cases).
        classes: class names in order; values: ``{class: [label values]}``.
    """

    root: Path
    meta: dict
    images: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    values: dict[str, list[int]] = field(default_factory=dict)

    def masks(self, case: str) -> np.ndarray:
        """uint8 ``(C, Z, Y, X)``: class ``c`` = the voxels whose value is one of its values."""
        lab = self.labels[case]
        return np.stack([np.isin(lab, self.values[c]) for c in self.classes]).astype(np.uint8)


def _ellipsoid(shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + (
        (xx - centre[2]) / radii[2]
    ) ** 2 <= 1


def make_nnunet_dataset(
    root: str | Path,
    n_cases: int = 4,
    shape: tuple[int, int, int] = (10, 20, 24),
    classes: tuple[str, ...] = ("liver", "spleen"),
    regions: bool = False,
    channels: int = 1,
    ending: str = ".nii.gz",
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.7),
    seed: int = 0,
    test_cases: int = 0,
    values: tuple[int, ...] | None = None,
    channel_names: tuple[str, ...] | None = None,
) -> NnUNetData:
    """Write an nnU-Net v2 raw dataset of small blob "organs" on an oblique grid (:data:`ORIGIN`, :data:`DIRECTION`).

    Channel 0 is CT-like (int16 Hounsfield units, air -1024), other channels MR-like (uint16). Exclusive classes:
    one ellipsoid per class (later classes over earlier ones), label value ``values[c]``. Regions
    (``regions=True``): nested ellipsoids, value ``values[k]`` inside the ``k``-th; region ``c`` =
    ``values[c:]`` (``regions_class_order`` = ``values``), so every value has its own class membership.

    Args:
        root: the dataset folder (created).
        n_cases, test_cases: cases in imagesTr/labelsTr and in imagesTs, named ``case_{i:03d}``.
        shape: ``(Z, Y, X)`` array shape; spacing ``(sz, sy, sx)`` mm.
        classes: class (label) names.
        regions: region-based labels (overlapping classes).
        channels: image files per case.
        ending: the file ending (``.nii.gz``, ``.nrrd``, ``.mha``).
        seed: the blobs' positions and the noise.
        values: label values per class (default 1, 2, ...; may be non-consecutive).
        channel_names: names in dataset.json (default CT, then T2, FLAIR, ...).

    Returns:
        The arrays as written (:class:`NnUNetData`).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    values = tuple(values or range(1, len(classes) + 1))
    names = tuple(channel_names or ("CT", "T2", "FLAIR", "ADC", "T1")[:channels])
    if regions:
        labels = {"background": 0, **{c: list(values[i:]) for i, c in enumerate(classes)}}
        labels[classes[-1]] = values[-1]  # the innermost region as a plain value, as nnU-Net's example has it
        class_values = {c: sorted(values[i:]) for i, c in enumerate(classes)}
    else:
        labels = {"background": 0, **dict(zip(classes, values))}
        class_values = {c: [v] for c, v in zip(classes, values)}
    meta = {
        "channel_names": {str(k): n for k, n in enumerate(names)},
        "labels": labels,
        "numTraining": n_cases,
        "file_ending": ending,
        "name": "blobs",
    }
    if regions:
        meta["regions_class_order"] = list(values)
    root.mkdir(parents=True, exist_ok=True)
    write_dataset_json(root, meta)
    data = NnUNetData(root=root, meta=meta, classes=tuple(classes), values=class_values)
    size = np.array(shape, np.float64)
    for i in range(n_cases + test_cases):
        case = f"case_{i:03d}"
        train = i < n_cases
        lab = np.zeros(shape, np.uint8 if max(values) < 256 else np.uint16)
        if regions:
            centre = size / 2 + rng.uniform(-0.1, 0.1, 3) * size
            radii = size * rng.uniform(0.3, 0.4, 3)
            for k, v in enumerate(values):
                lab[_ellipsoid(shape, centre, radii * (1 - k / (len(values) + 0.5)))] = v
        else:
            for v in values:
                centre = rng.uniform(0.25, 0.75, 3) * size
                lab[_ellipsoid(shape, centre, size * rng.uniform(0.15, 0.25, 3))] = v
        ct = np.full(shape, -1024, np.int16)
        body = _ellipsoid(shape, size / 2, size * np.array([0.8, 0.45, 0.45]))
        ct[body] = rng.integers(-100, 100, int(body.sum()))
        ct[lab > 0] = 40 + 10 * lab[lab > 0].astype(np.int16) + rng.integers(-5, 5, int((lab > 0).sum()))
        imgs = [ct] + [(rng.integers(0, 300, shape) + 200 * lab).astype(np.uint16) for _ in range(channels - 1)]
        folder = root / ("imagesTr" if train else "imagesTs")
        for k, im in enumerate(imgs):
            write_volume(folder / f"{case}_{k:04d}{ending}", im, spacing)
        data.images[case] = np.stack([im.astype(np.int32) for im in imgs])
        if train:
            write_volume(root / "labelsTr" / f"{case}{ending}", lab, spacing)
            data.labels[case] = lab
    return data


# ------------------------------------------------------------------------------------------------------ mricron


@dataclass
class MricronData:
    """The nnU-Net dataset made from ch2 (:func:`mricron_nnunet`).

    Attributes:
        root: the dataset folder; meta: its dataset.json.
        slabs: ``{case: (z0, z1)}`` index ranges of ch2's array (``(z, y, x)`` order) per case.
        crop: ``(y0, y1, x0, x1)`` in-plane crop of every slab.
        image: ch2's array, label: the label values written per case (``{case: (Z, Y, X)}``).
        classes, values: as :class:`NnUNetData`.
    """

    root: Path
    meta: dict
    slabs: dict[str, tuple[int, int]]
    crop: tuple[int, int, int, int]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    values: dict[str, list[int]] = field(default_factory=dict)

    def masks(self, case: str) -> np.ndarray:
        lab = self.labels[case]
        return np.stack([np.isin(lab, self.values[c]) for c in self.classes]).astype(np.uint8)


#: AAL regions merged into classes (AAL values, see aal.nii.txt): cingulum (anterior, middle, posterior, L and R),
#: thalamus (L, R), striatum (caudate and putamen, L and R).
AAL_CLASSES: dict[str, tuple[int, ...]] = {
    "cingulum": (31, 32, 33, 34, 35, 36),
    "thalamus": (77, 78),
    "striatum": (71, 72, 73, 74),
}
#: The frontal lobe of AAL (values 1..28: precentral to rectus) and Brodmann area 6: an overlapping pair.
AAL_FRONTAL: tuple[int, ...] = tuple(range(1, 29))
BRODMANN_PREMOTOR: tuple[int, ...] = (6,)


def read_template(name: str) -> sitk.Image:
    return sitk.ReadImage(str(MRICRON_DIR / name))


def mricron_nnunet(
    root: str | Path,
    regions: bool = False,
    n_slabs: int = 4,
    slab: int = 36,
    z0: int = 36,
    crop: tuple[int, int, int, int] = (88, 152, 58, 122),
    ending: str = ".nii.gz",
) -> MricronData:
    """An nnU-Net dataset from the ch2 T1 MRI (181 x 217 x 181, 1 mm) and its atlases on the same grid.

    Cases ``slab_{i}`` are axial slabs ``[z0 + i * slab, z0 + (i + 1) * slab)`` of ch2 cropped in-plane to
    ``crop`` = ``(y0, y1, x0, x1)`` (array indices), each written with its own origin so that it lies where it lay
    in ch2 (SimpleITK's slicing keeps the physical position). Labels:

    - ``regions=False``: exclusive classes :data:`AAL_CLASSES` (values 1, 2, 3);
    - ``regions=True``: ``frontal`` (AAL frontal lobe) and ``premotor`` (Brodmann area 6) overlap, plus
      ``thalamus``: values 1 = frontal only, 2 = premotor only, 3 = both, 4 = thalamus; labels ``frontal: [1, 3]``,
      ``premotor: [2, 3]``, ``thalamus: 4``, ``regions_class_order`` ``[1, 2, 4]``.

    Returns:
        :class:`MricronData`.
    """
    root = Path(root)
    ch2, aal, ba = read_template("ch2.nii.gz"), read_template("aal.nii.gz"), read_template("brodmann.nii.gz")
    a = sitk.GetArrayFromImage(aal)
    b = sitk.GetArrayFromImage(ba)
    if regions:
        frontal, premotor = np.isin(a, AAL_FRONTAL), np.isin(b, BRODMANN_PREMOTOR)
        lab = np.zeros(a.shape, np.uint8)
        lab[frontal & ~premotor] = 1
        lab[premotor & ~frontal] = 2
        lab[frontal & premotor] = 3
        lab[np.isin(a, (77, 78))] = 4
        labels = {"background": 0, "frontal": [1, 3], "premotor": [2, 3], "thalamus": 4}
        values = {"frontal": [1, 3], "premotor": [2, 3], "thalamus": [4]}
        extra = {"regions_class_order": [1, 2, 4]}
    else:
        lab = np.zeros(a.shape, np.uint8)
        for v, regs in enumerate(AAL_CLASSES.values(), start=1):
            lab[np.isin(a, regs)] = v
        labels = {"background": 0, **{c: v for v, c in enumerate(AAL_CLASSES, start=1)}}
        values = {c: [v] for v, c in enumerate(AAL_CLASSES, start=1)}
        extra = {}
    lab_img = sitk.GetImageFromArray(lab)
    lab_img.CopyInformation(ch2)
    meta = {
        "channel_names": {"0": "T1"},
        "labels": labels,
        "numTraining": n_slabs,
        "file_ending": ending,
        "name": "mricron_ch2",
        **extra,
    }
    root.mkdir(parents=True, exist_ok=True)
    write_dataset_json(root, meta)
    y0, y1, x0, x1 = crop
    data = MricronData(root=root, meta=meta, slabs={}, crop=crop, classes=tuple(values), values=values)
    (root / "imagesTr").mkdir(exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for i in range(n_slabs):
        case = f"slab_{i}"
        s0, s1 = z0 + i * slab, z0 + (i + 1) * slab
        sitk.WriteImage(ch2[x0:x1, y0:y1, s0:s1], str(root / "imagesTr" / f"{case}_0000{ending}"), True)
        sitk.WriteImage(lab_img[x0:x1, y0:y1, s0:s1], str(root / "labelsTr" / f"{case}{ending}"), True)
        data.slabs[case] = (s0, s1)
        data.labels[case] = lab[s0:s1, y0:y1, x0:x1]
    return data
