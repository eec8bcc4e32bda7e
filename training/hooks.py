"""Hooks of the training engine, shared by every model kind.

- ``TrainingCurveHook``: ``training_curve.png`` (training loss, validation metrics) in the work dir.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import Runner

from common.engine import is_main_process
from common.viz import save_training_curves


@HOOKS.register_module()
class TrainingCurveHook(Hook):
    """Write ``{work_dir}/training_curve.png`` after each validation and at the end of training (rank 0).

    The loss history comes from the message hub (restored on ``--resume``); validation points are kept in
    the message hub's runtime info, so the curve continues across resumed runs.

    Args:
        keys: validation metric keys to plot (without the ``val/`` prefix).
        filename: PNG name inside the work dir.
    """

    priority = "LOW"

    def __init__(self, keys: tuple[str, ...] = ("gi/score", "gi/dice"), filename: str = "training_curve.png") -> None:
        self.keys = tuple(keys)
        self.filename = filename

    def after_val_epoch(self, runner: Runner, metrics: dict | None = None) -> None:
        if metrics:
            hist = dict(runner.message_hub.get_info("gi_val_history", None) or {"iter": []})
            hist = {k: list(v) for k, v in hist.items()}
            hist["iter"].append(int(runner.iter))
            for k in self.keys:
                if k in metrics:
                    hist.setdefault(k, []).append(float(metrics[k]))
            runner.message_hub.update_info("gi_val_history", hist, resumed=True)
        self._write(runner)

    def after_train(self, runner: Runner) -> None:
        self._write(runner)

    def _write(self, runner: Runner) -> None:
        if not is_main_process():
            return
        try:
            buf = runner.message_hub.get_scalar("train/loss")
            values = np.asarray(buf.data[0], dtype=float)
        except KeyError:
            values = np.zeros(0)
        steps = np.arange(int(runner.iter) - len(values) + 1, int(runner.iter) + 1)
        val = runner.message_hub.get_info("gi_val_history", None) or {"iter": []}
        val = {k: v for k, v in val.items() if k == "iter" or len(v) == len(val["iter"])}
        try:
            save_training_curves(Path(runner.work_dir) / self.filename, (steps, values), val)
        except Exception as e:  # noqa: BLE001 - a plot must never stop training
            runner.logger.warning(f"could not write the training curve: {e}")
