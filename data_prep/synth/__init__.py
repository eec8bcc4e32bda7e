"""Synthetic data in the exact Kaggle layout, for tests, demos and benchmarks.

Two modes:

- ``synthesize``: a shape model draws the anatomy. Per case 1-3 days, 144 or 80 slices per case-day,
  the real sizes (W x H 266x266, 360x310, 276x276, 234x234). Each case-day is a 16-bit volume: a body
  ellipse with a subcutaneous fat ring, "arms" beside it (what a crop detector must cut away), liver,
  kidneys and spine as distractors, and the three labelled organs as smooth 3D shapes: the stomach a
  blob (sum of Gaussians), the large bowel a tube framing the abdomen (ascending, transverse, descending,
  sigmoid), the small bowel a tangle of thinner tubes. The organs start and end on different slices, so
  about half of all slices are empty and many hold two or three classes, sometimes overlapping. Each
  tissue has its own intensity and texture (learnable), then an in-plane blur, a smooth bias field, a
  per-case gain and Rician noise.
- ``render_from_labels``: the masks come from a ``train.csv`` (e.g. the real labels) and a scan
  manifest (size, spacing, path of each slice); the same renderer paints images around them: a dataset
  with real anatomy at real scale.

Outputs (``docs/contracts.md``): ``OUT/train/case{N}/case{N}_day{D}/scans/slice_{SSSS}_{W}_{H}_{PW}_{PH}.png``
and ``OUT/train.csv``; with test cases also ``OUT/test/...``, a header-only ``OUT/sample_submission.csv``
and ``OUT/test_truth.csv`` (the test labels, kept apart for scoring). Every file is written atomically;
an existing dataset is only replaced with ``overwrite=True``. Each case-day draws its randomness from
``(seed, case, day)``, so the files are byte-identical for a seed whatever the number of workers.

>>> from data_prep.synth import synthesize  # doctest: +SKIP
>>> synthesize("demo_data", cases=4, seed=0, test_cases=1, slices=24, sizes=[(128, 112)])  # doctest: +SKIP
"""

from data_prep.synth.cli import main, register
from data_prep.synth.geometry import SLICE_MM_144
from data_prep.synth.labels import render_from_labels
from data_prep.synth.output import DATASET_ENTRIES, scan_name
from data_prep.synth.shapes import DAYS_PER_CASE, DEPTH_WEIGHTS, SIZE_WEIGHTS, SPACING_BY_SIZE, synthesize
from data_prep.synth.workers import CaseDayTask

__all__ = [
    "DATASET_ENTRIES",
    "DAYS_PER_CASE",
    "DEPTH_WEIGHTS",
    "SIZE_WEIGHTS",
    "SLICE_MM_144",
    "SPACING_BY_SIZE",
    "CaseDayTask",
    "main",
    "register",
    "render_from_labels",
    "scan_name",
    "synthesize",
]
