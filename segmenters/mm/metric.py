"""Validation metric for multi-label 2.5D segmentation: per-class Dice, the competition's Dice and score.

Registered as ``GIMultiLabelMetric`` in mmseg's METRICS registry; keys are prefixed ``gi/``:

- ``gi/dice_{class}``: Dice per class over the slices where prediction or truth is non-empty (the classes of the
  dataset: the ``classes`` argument, which the ``num_classes`` shortcut of :mod:`training.config` fills, else the val
  dataset's ``metainfo``, else the Kaggle layout's);
- ``gi/dice``: the competition's Dice: per slice and class, both empty = 1, then the mean;
- ``gi/score``: ``0.4 * Dice + 0.6 * (1 - Hausdorff)`` (``evaluation.metric.score_volumes``) on the val
  case-days; it selects the best checkpoint. For speed during training the 3D masks are subsampled in-plane to at
  most ``score_max_side`` pixels (the Hausdorff of a noisy early model on full-size masks takes minutes);
  ``tools/test.py`` scores at full size;
- ``gi/hausdorff``: ``1 - normalised Hausdorff``; ``gi/dice_3d``: the Dice part of ``gi/score``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from mmengine.evaluator import BaseMetric
from mmseg.registry import METRICS

from evaluation.metric import channel_classes, score_volumes, slice_dice_table

logger = logging.getLogger(__name__)


@METRICS.register_module()
class GIMultiLabelMetric(BaseMetric):
    """Per-class Dice, the competition's Dice and the competition score of the val case-days.

    Args:
        threshold: applied to ``seg_logits`` probabilities when present (else ``pred_sem_seg`` is used as is).
        compute_score: also compute the 3D competition score per case-day (needs full case-days in val).
        empty: convention for empty cases passed to ``score_volumes`` (``skip`` or ``one``).
        hausdorff: ``per_class`` or ``union``, passed to ``score_volumes``.
        score_max_side: in-plane size cap of the masks scored in 3D (every ``ceil(max(H, W) / cap)``-th pixel);
            None or 0 = full size. Dice keys are always computed at full size.
        prefix: metric key prefix (default ``gi``).
        classes: the class names of the ``C`` channels (None: the val dataset's ``metainfo['classes']``, else the
            Kaggle layout's).
    """

    default_prefix = "gi"

    def __init__(
        self,
        threshold: float | None = None,
        compute_score: bool = True,
        empty: str = "one",
        hausdorff: str = "per_class",
        score_max_side: int | None = 128,
        collect_device: str = "cpu",
        prefix: str | None = None,
        classes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, **kwargs)
        self._classes = tuple(classes) if classes else None
        self.threshold = threshold
        self.compute_score = compute_score
        self.empty = empty
        self.hausdorff = hausdorff
        self.score_max_side = score_max_side

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names of the channels: the ``classes`` argument, else the dataset's, else the Kaggle ones."""
        return channel_classes(self._classes, self.dataset_meta)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            if self.threshold is not None and "seg_logits" in s:
                pred = (s["seg_logits"]["data"] > self.threshold).cpu().numpy()
            else:
                pred = s["pred_sem_seg"]["data"].cpu().numpy().astype(bool)
            gt = s["gt_sem_seg"]["data"].cpu().numpy().astype(bool)
            if pred.shape != gt.shape:
                raise ValueError(f"prediction {pred.shape} and truth {gt.shape} differ for slice {s.get('id')}")
            rec = dict(
                id=s.get("id"),
                case_day=s.get("case_day"),
                z=int(s.get("z", -1)),
                inter=(pred & gt).sum((1, 2)),
                psum=pred.sum((1, 2)),
                gsum=gt.sum((1, 2)),
            )
            if self.compute_score:
                step = 1
                if self.score_max_side:
                    step = max(1, -(-max(pred.shape[1:]) // int(self.score_max_side)))
                p_s, g_s = pred[:, ::step, ::step], gt[:, ::step, ::step]
                rec["shape"] = p_s.shape
                rec["pred_bits"] = np.packbits(p_s)
                rec["gt_bits"] = np.packbits(g_s)
            self.results.append(rec)

    def compute_metrics(self, results: list[dict]) -> dict[str, float]:
        inter = np.stack([r["inter"] for r in results])
        psum = np.stack([r["psum"] for r in results])
        gsum = np.stack([r["gsum"] for r in results])
        classes = self.classes
        if inter.shape[1] != len(classes):
            raise ValueError(
                f"GIMultiLabelMetric: the predictions have {inter.shape[1]} class channels, the dataset's classes are "
                f"{list(classes)}: the model's num_classes must match the WORK's dataset.json"
            )
        metrics = slice_dice_table(inter, psum, gsum, classes)
        metrics["score"] = metrics["dice"]  # without the 3D part (compute_score=False) the score is the Dice
        if not self.compute_score:
            return metrics
        by_cd: dict[str, list[dict]] = defaultdict(list)
        for r in results:
            by_cd[r["case_day"]].append(r)
        pred_vols, true_vols = {}, {}
        for cd, recs in by_cd.items():
            recs = sorted(recs, key=lambda r: r["z"])
            shape = recs[0]["shape"]
            n = int(np.prod(shape))
            pred_vols[cd] = np.stack([np.unpackbits(r["pred_bits"])[:n].reshape(shape) for r in recs]).astype(bool)
            true_vols[cd] = np.stack([np.unpackbits(r["gt_bits"])[:n].reshape(shape) for r in recs]).astype(bool)
        res = score_volumes(pred_vols, true_vols, empty=self.empty, hausdorff=self.hausdorff, classes=classes)
        metrics["score"] = float(res.score)
        metrics["hausdorff"] = float(res.hausdorff)
        metrics["dice_3d"] = float(res.dice)
        return metrics
