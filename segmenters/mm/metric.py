"""Validation metric for multi-label 2.5D segmentation: per-class Dice, the competition's Dice and score.

Registered as ``GIMultiLabelMetric`` in mmseg's METRICS registry; keys are prefixed ``gi/``:

- ``gi/dice_{class}``: Dice per class over the slices where prediction or truth is non-empty;
- ``gi/dice``: the competition's Dice: per slice and class, both empty = 1, then the mean;
- ``gi/score``: ``0.4 * Dice + 0.6 * (1 - Hausdorff)`` from ``ensembles.metric.score_volumes`` on the val
  case-days (imported lazily); while that module is missing, ``gi/score`` equals ``gi/dice`` (logged once).
  For speed during training the 3D masks are subsampled in-plane to at most ``score_max_side`` pixels (the
  Hausdorff of a noisy early model on full-size masks takes minutes); ``tools/test.py`` scores at full size;
- ``gi/hausdorff``: ``1 - normalised Hausdorff`` when the competition metric is available.
"""

from __future__ import annotations

import importlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS

from data_prep.constants import CLASSES

logger = logging.getLogger(__name__)


def slice_dice_table(inter: np.ndarray, psum: np.ndarray, gsum: np.ndarray) -> dict[str, float]:
    """Dice summaries from per-slice, per-class counts.

    Args:
        inter, psum, gsum: ``(S, 3)`` intersections, predicted and true pixel counts.

    Returns:
        ``dice`` (both empty = 1, the competition's convention), ``dice_skip`` (both-empty pairs skipped) and
        ``dice_{class}`` (per class, both-empty slices skipped; nan when a class never appears).

    >>> t = slice_dice_table(np.array([[1, 0, 0]]), np.array([[2, 0, 1]]), np.array([[2, 0, 0]]))
    >>> round(t["dice"], 4), round(t["dice_skip"], 4), t["dice_small_bowel"]
    (0.5, 0.25, nan)
    """
    inter, psum, gsum = (np.asarray(a, dtype=np.float64).reshape(-1, len(CLASSES)) for a in (inter, psum, gsum))
    denom = psum + gsum
    empty = denom == 0
    d = np.where(empty, 1.0, 2 * inter / np.where(empty, 1, denom))
    out = {"dice": float(d.mean()) if d.size else float("nan")}
    out["dice_skip"] = float(d[~empty].mean()) if (~empty).any() else float("nan")
    for c, name in enumerate(CLASSES):
        sel = ~empty[:, c]
        out[f"dice_{name}"] = float(d[sel, c].mean()) if sel.any() else float("nan")
    return out


def competition_metric() -> Any | None:
    """``ensembles.metric.score_volumes`` when that module exists, else None."""
    try:
        module = importlib.import_module("ensembles.metric")
    except ImportError:
        return None
    return getattr(module, "score_volumes", None)


@METRICS.register_module()
class GIMultiLabelMetric(BaseMetric):
    """Per-class Dice, the competition's Dice and (with ``ensembles.metric``) the competition score.

    Args:
        threshold: applied to ``seg_logits`` probabilities when present (else ``pred_sem_seg`` is used as is).
        compute_score: also compute the 3D competition score per case-day (needs full case-days in val).
        empty: convention for empty cases passed to ``score_volumes`` (``skip`` or ``one``).
        hausdorff: ``per_class`` or ``union``, passed to ``score_volumes``.
        score_max_side: in-plane size cap of the masks scored in 3D (every ``ceil(max(H, W) / cap)``-th pixel);
            None or 0 = full size. Dice keys are always computed at full size.
        prefix: metric key prefix (default ``gi``).
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
        **kwargs: Any,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, **kwargs)
        self.threshold = threshold
        self.compute_score = compute_score
        self.empty = empty
        self.hausdorff = hausdorff
        self.score_max_side = score_max_side
        self._warned = False

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
        metrics = slice_dice_table(inter, psum, gsum)
        metrics["score"] = metrics["dice"]
        score_volumes = competition_metric() if self.compute_score else None
        if score_volumes is None:
            if self.compute_score and not self._warned:
                print_log("ensembles.metric not found: gi/score = gi/dice until it exists", logger="current")
                self._warned = True
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
        res = score_volumes(pred_vols, true_vols, empty=self.empty, hausdorff=self.hausdorff)
        metrics["score"] = float(res.score)
        metrics["hausdorff"] = float(res.hausdorff)
        metrics["dice_3d"] = float(res.dice)
        return metrics
