"""A synthetic abdominal-CT dataset in the nnU-Net v2 raw format (``python -m data_prep synth-nnunet``).

The layout nnU-Net documents: ``dataset.json``, ``imagesTr/{case}_0000.nii.gz``, ``labelsTr/{case}.nii.gz``,
``imagesTs/{case}_0000.nii.gz``, plus ``labelsTs/{case}.nii.gz`` (the truth of the test cases, for scoring).
Volumes are int16 Hounsfield units: air -1000, a body ellipse of soft tissue with noise, and four organs as
smooth blobs with their own attenuation (liver, kidney, spleen, pancreas, the classes of the abdominal-organ
studies), at an anisotropic spacing (thick slices) with a non-zero origin.

Labels: an exclusive label map (0 background, 1 liver, 2 kidney, 3 spleen, 4 pancreas); with ``regions=True``
``dataset.json`` also declares the region ``organs`` = every organ, so that the classes overlap (nnU-Net's
region-based convention: ``labels`` lists regions as lists of values, ``regions_class_order`` says which value
each region is painted with).

>>> import tempfile
>>> root = synthesize_nnunet(tempfile.mkdtemp(), cases=2, shape=(8, 32, 32), seed=0)
>>> sorted(p.name for p in (root / "imagesTr").iterdir())
['synth_000_0000.nii.gz', 'synth_001_0000.nii.gz']
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write_text

#: Organs in label order (value = index + 1), with their mean attenuation (HU) and size (fraction of the body).
ORGANS: tuple[tuple[str, float, float], ...] = (
    ("liver", 60.0, 0.30),
    ("kidney", 150.0, 0.16),
    ("spleen", 45.0, 0.18),
    ("pancreas", 30.0, 0.13),
)
#: Where each organ sits in the body, as (y, x) offsets in units of the body's half-axes.
_PLACES: tuple[tuple[float, float], ...] = ((-0.1, -0.45), (0.35, 0.45), (-0.15, 0.5), (0.15, 0.0))


def _organs_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One case: int16 HU ``(D, H, W)`` and its uint8 label map."""
    d, h, w = shape
    zz, yy, xx = np.meshgrid(
        np.linspace(-1, 1, d, dtype=np.float32),
        np.linspace(-1, 1, h, dtype=np.float32),
        np.linspace(-1, 1, w, dtype=np.float32),
        indexing="ij",
    )
    by, bx = rng.uniform(0.7, 0.85), rng.uniform(0.8, 0.95)
    body = (yy / by) ** 2 + (xx / bx) ** 2 <= 1.0
    hu = np.where(body, 20.0, -1000.0).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for value, ((_, mean_hu, size), (py, px)) in enumerate(zip(ORGANS, _PLACES, strict=True), start=1):
        cy, cx = py * by + rng.normal(0, 0.04), px * bx + rng.normal(0, 0.04)
        cz = rng.uniform(-0.3, 0.3)
        ry, rx = size * by * rng.uniform(0.8, 1.2), size * bx * rng.uniform(0.8, 1.2)
        rz = rng.uniform(0.35, 0.6)
        wobble = 1.0 + 0.15 * np.sin(3.0 * zz + rng.uniform(0, 6.28)) * np.cos(2.0 * xx)
        organ = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= wobble
        organ &= body & (label == 0)
        label[organ] = value
        hu[organ] = mean_hu
    hu += rng.normal(0.0, 12.0, size=shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), label


def synthesize_nnunet(
    out: str | os.PathLike,
    cases: int,
    test_cases: int = 0,
    shape: tuple[int, int, int] = (48, 128, 128),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
    regions: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    name: str = "Dataset501_SynthCT",
) -> Path:
    """Write a synthetic CT dataset in the nnU-Net v2 raw format (see the module docstring).

    Args:
        out: the dataset folder (created; refused when it holds a dataset unless ``overwrite``).
        cases: training cases (``imagesTr`` / ``labelsTr``), named ``synth_{i:03d}``.
        test_cases: test cases (``imagesTs``, and their truth in ``labelsTs``).
        shape: ``(D, H, W)`` voxels per volume (numpy order; D along the thick-slice axis).
        spacing: ``(sz, sy, sx)`` mm.
        regions: declare the overlapping region ``organs`` (every organ) beside the four organs.
        seed: same seed, same files.
        overwrite: replace an existing dataset in ``out``.
        name: ``dataset.json``'s ``name``.

    Returns:
        ``Path(out)``.

    Raises:
        FileExistsError: ``out/dataset.json`` exists and not ``overwrite``.
    """
    from data_prep.readers.medical import write_image  # noqa: PLC0415 - SimpleITK only when used

    out = Path(out)
    if cases < 1 or test_cases < 0:
        raise ValueError(f"need cases >= 1 and test_cases >= 0, got {cases}, {test_cases}")
    if (out / "dataset.json").exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a dataset; pass --overwrite to replace it")
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            shutil.rmtree(out / sub, ignore_errors=True)
    origin = (-0.5 * shape[2] * spacing[2], -0.5 * shape[1] * spacing[1], -100.0)
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    for i in range(cases + test_cases):
        rng = np.random.default_rng([seed, i])
        image, label = _organs_volume(rng, shape)
        key = f"synth_{i:03d}"
        images, labels = ("imagesTr", "labelsTr") if i < cases else ("imagesTs", "labelsTs")
        write_image(out / images / f"{key}_0000.nii.gz", image, spacing, origin, direction)
        write_image(out / labels / f"{key}.nii.gz", label, spacing, origin, direction)
    labels_json: dict[str, Any] = {"background": 0}
    desc: dict[str, Any] = {"channel_names": {"0": "CT"}, "labels": labels_json}
    if regions:
        labels_json["organs"] = list(range(1, len(ORGANS) + 1))
    labels_json.update({organ: v for v, (organ, _, _) in enumerate(ORGANS, start=1)})
    if regions:
        desc["regions_class_order"] = [1] + list(range(1, len(ORGANS) + 1))
    desc.update({"numTraining": cases, "file_ending": ".nii.gz", "name": name})
    atomic_write_text(out / "dataset.json", json.dumps(desc, indent=2) + "\n")
    return out
