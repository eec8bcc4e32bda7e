"""Training hook of the 3D segmenters: the patch-size stages (1st place: 160 x 160 x 80 patches for 10k iterations,
then 224 x 224 x 80).

Registered as ``PatchStageHook`` in mmengine's root ``HOOKS`` registry. It needs the training dataloader of the 3D
configs: a :class:`segmenters.monai.data.CaseDayPatchDataset` drawn by a
:class:`segmenters.monai.data.CaseDayPatchSampler`, without persistent workers.

How a switch works: dataloader workers hold their own copy of the dataset and prefetch batches ahead, so setting
the patch size in the main process is not enough. At iteration ``begin`` of a stage the hook sets the dataset's
patch size, positions the sampler's stream at the first draw of that iteration, and starts a new dataloader
iterator (new workers, copies of the updated dataset); the batches prefetched by the old workers are dropped.

``--resume``: mmengine's ``IterBasedTrainLoop`` then advances its dataloader by ``iter`` batches before training,
which would build (and throw away) ``iter`` batches of 3D patches. Before that, the hook sets the patch size of the
stage of iteration ``iter``, positions the sampler at the draws of that iteration and gives the loop an iterator
whose first ``iter`` batches are skipped without being built. The patches of iteration ``k`` are therefore the
same as in an uninterrupted run (they depend only on ``(seed, rank, k)``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from segmenters.monai.data import CaseDayPatchDataset, CaseDayPatchSampler
from segmenters.monai.volumes import check_roi


class _SkipFirst:
    """The train loop's batch iterator: the first ``skip`` ``next()`` calls (mmengine's resume advance) return
    None without building a batch; then the batches of ``iterator``."""

    def __init__(self, iterator: Iterator[Any], skip: int) -> None:
        self._iterator = iterator
        self.skip = int(skip)

    def __iter__(self) -> _SkipFirst:
        return self

    def __next__(self) -> Any:
        if self.skip > 0:
            self.skip -= 1
            return None
        return next(self._iterator)


def parse_stages(stages: Sequence[Mapping[str, Any]]) -> list[tuple[int, tuple[int, int, int]]]:
    """``[dict(roi_size=(H, W, D), begin=iteration), ...]`` as ``[(begin, roi), ...]`` sorted by ``begin``.

    >>> parse_stages([dict(roi_size=(160, 160, 80), begin=0), dict(roi_size=(224, 224, 80), begin=10000)])
    [(0, (160, 160, 80)), (10000, (224, 224, 80))]

    Raises:
        ValueError: no stage, a stage without ``roi_size`` / ``begin``, a ``roi_size`` that is not 3 positive ints, no
            stage at 0, two stages at one iteration.
    """
    if not stages:
        raise ValueError("PatchStageHook.stages must list at least dict(roi_size=(H, W, D), begin=0)")
    out = []
    for i, s in enumerate(stages):
        if not isinstance(s, Mapping) or "roi_size" not in s or "begin" not in s:
            raise ValueError(f"PatchStageHook.stages[{i}] must be dict(roi_size=(H, W, D), begin=N), got {s!r}")
        out.append((int(s["begin"]), check_roi(s["roi_size"], {}, f"PatchStageHook.stages[{i}].roi_size")))
    out.sort()
    begins = [b for b, _ in out]
    if begins[0] != 0:
        raise ValueError(f"PatchStageHook.stages: the first stage must begin at iteration 0, got begins {begins}")
    if len(set(begins)) != len(begins):
        raise ValueError(f"PatchStageHook.stages: two stages begin at the same iteration: {begins}")
    return out


@HOOKS.register_module()
class PatchStageHook(Hook):
    """Train on patches of ``stages[i].roi_size`` from iteration ``stages[i].begin`` on (see the module docstring).

    Args:
        stages: ``[dict(roi_size=(H, W, D), begin=0), dict(roi_size=(H, W, D), begin=N), ...]``; stages that begin
            at or after ``train_cfg.max_iters`` are never reached.
    """

    priority = "NORMAL"

    def __init__(self, stages: Sequence[Mapping[str, Any]]) -> None:
        self.stages = parse_stages(stages)

    def roi_at(self, iteration: int) -> tuple[int, int, int]:
        """Patch size of iteration ``iteration`` (0-based)."""
        return [roi for begin, roi in self.stages if begin <= iteration][-1]

    @staticmethod
    def _parts(runner: Any) -> tuple[Any, Any, CaseDayPatchDataset, CaseDayPatchSampler]:
        loop = runner.train_loop
        loader = loop.dataloader
        dataset, sampler = loader.dataset, loader.sampler
        if not isinstance(dataset, CaseDayPatchDataset) or not isinstance(sampler, CaseDayPatchSampler):
            raise ValueError(
                "PatchStageHook needs train_dataloader.dataset.type='CaseDayPatchDataset' and "
                f"train_dataloader.sampler.type='CaseDayPatchSampler', got {type(dataset).__name__} and "
                f"{type(sampler).__name__}"
            )
        if loader.num_workers > 0 and loader.persistent_workers:
            raise ValueError(
                "PatchStageHook restarts the dataloader workers at each stage (they keep their own copy of the "
                "dataset): set train_dataloader.persistent_workers=False"
            )
        return loop, loader, dataset, sampler

    def _switch(self, runner: Any, iteration: int, skip: int) -> None:
        """Patches of ``roi_at(iteration)`` from draw ``iteration * batch_size`` on, in a new dataloader iterator
        whose first ``skip`` batches are skipped."""
        loop, loader, dataset, sampler = self._parts(runner)
        dataset.set_roi_size(self.roi_at(iteration))
        sampler.restart(iteration * int(loader.batch_size))
        loop.dataloader_iterator = _SkipFirst(iter(loader), skip)

    def before_train(self, runner: Any) -> None:
        _, _, dataset, _ = self._parts(runner)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        net_cfg = getattr(model, "net_cfg", None) or {}
        for i, (_, roi) in enumerate(self.stages):
            check_roi(roi, net_cfg, f"PatchStageHook.stages[{i}].roi_size")
        it = int(runner.iter)
        if it == 0 and dataset.roi_size == self.roi_at(0):  # the loop's iterator already draws stage 0 from draw 0
            runner.logger.info(f"PatchStageHook: patches {dataset.roi_size} from iteration 0")
            return
        self._switch(runner, it, skip=it)
        runner.logger.info(
            f"PatchStageHook: patches {dataset.roi_size} from iteration {it}"
            + (f" ({it} batches of the resume advance skipped without loading them)" if it else "")
        )

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Mapping[str, Any] | None = None
    ) -> None:
        nxt = int(batch_idx) + 1
        if nxt >= runner.max_iters or not any(begin == nxt for begin, _ in self.stages):
            return
        _, _, dataset, _ = self._parts(runner)
        if dataset.roi_size == self.roi_at(nxt):
            return
        self._switch(runner, nxt, skip=0)
        runner.logger.info(f"PatchStageHook: patches {dataset.roi_size} from iteration {nxt}")
