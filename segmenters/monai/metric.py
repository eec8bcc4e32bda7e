"""Validation metric of the 3D segmenters: the competition score of the val case-days at their original size.

Registered as ``CaseDay3DMetric`` in mmengine's root ``METRICS`` registry; keys are prefixed ``seg3d/``:

- ``seg3d/score``: ``0.4 * Dice + 0.6 * (1 - Hausdorff)`` (:func:`evaluation.metric.score_case_day` per case-day,
  :func:`evaluation.metric.case_day_metrics` over them) of the probabilities thresholded at ``threshold``, at every
  case-day's original slice size; it selects the best checkpoint (``save_best="seg3d/score"``);
- ``seg3d/hausdorff`` (``1 -`` the normalised distance) and ``seg3d/dice_3d``: the two parts of the score;
- ``seg3d/dice``, ``seg3d/dice_skip``, ``seg3d/dice_{class}``: the per-slice Dice table
  (:func:`evaluation.metric.slice_dice_table`), ``{class}`` the dataset's class names (the ``classes`` argument,
  else the val dataset's ``metainfo``, else the Kaggle layout's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS

from data_prep.dataset import unpack_masks
from evaluation.metric import CaseDayScore, case_day_metrics, channel_classes, score_case_day


@METRICS.register_module()
class CaseDay3DMetric(BaseMetric):
    """Competition score and Dice of whole case-days (data samples of ``Monai3DSegmenter.predict``).

    Each data sample needs ``probs`` (float ``(D, C, H, W)``), ``gt_mask`` (the original-size WORK mask ``(D, H,
    W)`` of :class:`segmenters.monai.data.CaseDayVolumeDataset`: a bit field, or a label map when its metainfo says
    ``label_kind="exclusive"``) and ``case_day``. Case-days are scored as they come (only per-slice counts and
    per-case-day distances are kept).

    Args:
        threshold: probabilities above it are foreground.
        empty, hausdorff: conventions of :func:`evaluation.metric.score_case_day` (defaults: the project's).
        collect_device, prefix: of mmengine's ``BaseMetric`` (default prefix ``seg3d``).
        classes: the class names of the ``C`` channels (None: the val dataset's ``metainfo['classes']``, else the
            Kaggle layout's).
    """

    default_prefix = "seg3d"

    def __init__(
        self,
        threshold: float = 0.5,
        empty: str = "one",
        hausdorff: str = "per_class",
        collect_device: str = "cpu",
        prefix: str | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self._classes = tuple(classes) if classes else None
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"val_evaluator.threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.empty = empty
        self.hausdorff = hausdorff

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names of the channels: the ``classes`` argument, else the dataset's, else the Kaggle ones."""
        return channel_classes(self._classes, self.dataset_meta)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            cd = s.get("case_day")
            if "probs" not in s or "gt_mask" not in s:
                raise ValueError(f"case-day {cd}: CaseDay3DMetric needs 'probs' and 'gt_mask' in the data samples")
            probs = s["probs"]
            pred = (probs > self.threshold).cpu().numpy() if isinstance(probs, torch.Tensor) else probs > self.threshold
            kind = s.get("label_kind") or "overlapping"
            truth = unpack_masks(np.asarray(s["gt_mask"]), len(self.classes), kind).astype(bool)
            if pred.shape != truth.shape:
                raise ValueError(f"case-day {cd}: prediction {pred.shape} and truth {truth.shape} differ")
            self.results.append(score_case_day(str(cd), pred, truth, self.empty, self.hausdorff))

    def compute_metrics(self, results: list[CaseDayScore]) -> dict[str, float]:
        return case_day_metrics(results, self.empty, self.hausdorff, self.classes)[0]
