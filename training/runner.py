"""The one training engine: mmengine's ``Runner`` with atomic checkpoints and safe, config-checked loading.

Every model kind of the project (2.5D segmenters, the slice classifier, the 3D segmenters) trains on it; the
configs name it with ``runner_type = "GIRunner"`` (``mmcfg/_base_/default_runtime.py``).

- ``GIRunner``: every checkpoint records what the model predicts, ``meta["dataset"]`` = the config's
  ``dataset_info`` (classes, label kind, image channels: :func:`training.config.dataset_summary`), so that inference
  builds the right head without a WORK (``--resume`` refuses a checkpoint of other classes); checkpoints are written
  atomically (``common.engine.atomic_torch_save``: a kill mid-write never leaves a truncated file for ``--resume``
  to pick up) and in plain types, so that every load (``load_from``, inference, even ``--resume``) works with
  ``weights_only=True``; ``load_from`` refuses a checkpoint of another config; ``--resume`` falls back to the newest
  readable checkpoint of the work dir (and unpickles fully only stock mmengine checkpoints of your own run); the
  best checkpoint gets the stable name ``best.pth``.
- ``GIDistributedDataParallel``: DDP that also runs on CPU over gloo (``device_ids=None`` without CUDA).
- ``GIDataPreProcessor``: stacks a batch of same-size 2D inputs on the model's device (the 2.5D segmenters and the
  slice classifier; inputs are already scaled, so no mean / std).

Registered in mmengine's root registries, so they resolve from any default scope (``mmseg`` or ``mmengine``).
"""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path
from typing import Any
from unittest import mock

import mmengine.runner.runner as mm_runner_module
import numpy as np
import torch
from mmengine.config import Config
from mmengine.model import BaseDataPreprocessor, MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS, MODELS, RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model
from mmengine.runner.checkpoint import save_checkpoint as _mm_save_checkpoint
from torch import nn

from common.engine import atomic_torch_save, is_main_process, load_trusted, load_weights
from training.checks import check_dataset_matches, check_state_dict_matches
from training.config import DATASET_META_KEY

logger = logging.getLogger(__name__)

_ITER_RE = re.compile(r"iter_(\d+)\.pth$")


_HB_KEY = "__history_buffer__"


def to_plain(obj: Any) -> Any:
    """Make a checkpoint loadable with ``torch.load(weights_only=True)``.

    mmengine stores ``HistoryBuffer`` objects and numpy values in ``message_hub``; they become plain dicts,
    lists and Python numbers (:func:`from_plain` restores the buffers on resume). Tensors are kept.
    """
    from mmengine.logging import HistoryBuffer

    if isinstance(obj, HistoryBuffer):
        logs, counts = obj.data
        return {
            _HB_KEY: True,
            "log_history": np.asarray(logs).tolist(),
            "count_history": np.asarray(counts).tolist(),
            "max_length": int(obj.max_length),
        }
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain` for the message hub: plain buffer dicts become ``HistoryBuffer`` again."""
    from mmengine.logging import HistoryBuffer

    if isinstance(obj, dict):
        if obj.get(_HB_KEY):
            return HistoryBuffer(obj["log_history"], obj["count_history"], obj["max_length"])
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    return obj


def atomic_save_checkpoint(checkpoint: dict, filename: str, file_client_args: Any = None, backend_args: Any = None):
    """Drop-in for ``mmengine.runner.checkpoint.save_checkpoint``: local files are written atomically, in a form
    that ``torch.load(weights_only=True)`` reads (see :func:`to_plain`)."""
    checkpoint = to_plain(checkpoint)
    if "://" in str(filename):
        return _mm_save_checkpoint(checkpoint, filename, file_client_args=file_client_args, backend_args=backend_args)
    atomic_torch_save(checkpoint, filename)


def load_full_checkpoint(filename: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """A full checkpoint (optimizer, schedulers, message hub) for resuming: ``weights_only=True`` for the files
    this project writes, full unpickling (trusted: your own run) only for stock mmengine checkpoints."""
    try:
        checkpoint = torch.load(filename, map_location=map_location, weights_only=True)
    except Exception:  # noqa: BLE001 - an older / stock mmengine file: your own run, so trusted
        checkpoint = load_trusted(filename, map_location=map_location)
    if "message_hub" in checkpoint:
        checkpoint["message_hub"] = from_plain(checkpoint["message_hub"])
    return checkpoint


def resume_candidates(work_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints of a work dir to resume from, newest first: ``last_checkpoint``'s target, then ``iter_*.pth``."""
    work_dir = Path(work_dir)
    out: list[Path] = []
    last = work_dir / "last_checkpoint"
    if last.is_file():
        target = Path(last.read_text().strip())
        if target.is_file():
            out.append(target)
    iters = sorted(work_dir.glob("iter_*.pth"), key=lambda p: int(_ITER_RE.search(p.name).group(1)), reverse=True)
    out += [p for p in iters if p not in out]
    return out


def link_best(checkpoint: Path) -> Path:
    """Point ``best.pth`` beside ``checkpoint`` (mmengine's ``best_{metric}_iter_{n}.pth``) at it, atomically.

    A stable name for specs and scripts (``work_dirs/{config}/fold_{k}/best.pth``); a relative symlink, so the
    work dir can be moved.
    """
    link = checkpoint.with_name("best.pth")
    tmp = checkpoint.with_name(f".best.pth.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(checkpoint.name, tmp)
    os.replace(tmp, link)
    return link


class CachedTextConfig(Config):
    """mmengine's ``Config`` whose ``pretty_text`` (formatted with yapf: about a second for the project's configs) is
    computed once per content. mmengine asks for it at every checkpoint (``meta["cfg"]``), when logging and when
    dumping the config: most of the set-up time of a short run."""

    @classmethod
    def of(cls, cfg: Config) -> CachedTextConfig:
        """A shallow copy of ``cfg`` as a :class:`CachedTextConfig`."""
        other = copy.copy(cfg)
        object.__setattr__(other, "__class__", cls)  # Config.__setattr__ writes config keys
        return other

    @property
    def pretty_text(self) -> str:
        key = repr(self._cfg_dict)
        cached = self.__dict__.get("_pretty_text_cache")
        if cached is None or cached[0] != key:
            cached = (key, super().pretty_text)
            object.__setattr__(self, "_pretty_text_cache", cached)  # Config.__setattr__ writes config keys
        return cached[1]


@RUNNERS.register_module()
class GIRunner(Runner):
    """mmengine ``Runner`` with atomic checkpoint writes and safe, config-checked loading (see module doc)."""

    _trusted_load = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cfg = kwargs.get("cfg")
        if isinstance(cfg, Config) and not isinstance(cfg, CachedTextConfig):
            kwargs["cfg"] = CachedTextConfig.of(cfg)
        super().__init__(*args, **kwargs)

    def iterations_done(self) -> int:
        """Training iterations run (or resumed) so far; 0 before the training loop is built."""
        loop = self._train_loop
        return 0 if loop is None or isinstance(loop, dict) else int(loop.iter)

    def save_checkpoint(
        self,
        out_dir: str,
        filename: str,
        file_client_args: dict | None = None,
        save_optimizer: bool = True,
        save_param_scheduler: bool = True,
        meta: dict | None = None,
        by_epoch: bool = True,
        backend_args: dict | None = None,
    ) -> None:
        meta = dict(meta or {})
        summary = self.cfg.get("dataset_info")
        if summary is not None:
            meta.setdefault(DATASET_META_KEY, to_plain(summary.to_dict() if hasattr(summary, "to_dict") else summary))
        with mock.patch.object(mm_runner_module, "save_checkpoint", atomic_save_checkpoint):
            super().save_checkpoint(
                out_dir, filename, file_client_args, save_optimizer, save_param_scheduler, meta, by_epoch, backend_args
            )
        if filename.startswith("best_") and is_main_process():
            link_best(Path(out_dir) / filename)

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return None
        if self._resume and self._load_from is None:
            for cand in resume_candidates(self.work_dir):
                try:
                    load_full_checkpoint(cand, map_location="cpu")  # readable? (a truncated file fails here)
                except Exception as e:  # noqa: BLE001 - try the next one
                    self.logger.warning(f"cannot resume from {cand} ({type(e).__name__}: {e}); trying an older one")
                    continue
                self._load_from = str(cand)
                break
            if self._load_from is None:
                self.logger.info(f"--resume: no checkpoint in {self.work_dir}; training from the start")
                self._resume = False
        return super().load_or_resume()

    def resume(self, filename: str, *args: Any, **kwargs: Any) -> None:
        self._trusted_load = True  # resuming your own run: optimizer state and history need full unpickling
        try:
            super().resume(filename, *args, **kwargs)
        finally:
            self._trusted_load = False
        self.logger.info(f"resumed from {filename} at iteration {self.iter}")

    def load_checkpoint(
        self,
        filename: str,
        map_location: Any = "cpu",
        strict: bool = False,
        revise_keys: list | None = None,
    ) -> dict:
        revise_keys = revise_keys if revise_keys is not None else [(r"^module.", "")]
        if self._trusted_load:
            checkpoint = load_full_checkpoint(filename, map_location=map_location)
            state = checkpoint.get("state_dict", checkpoint)
        else:
            state = load_weights(filename, map_location=map_location)
            checkpoint = {"state_dict": state, "meta": {}}
        model = self.model.module if is_model_wrapper(self.model) else self.model
        check_state_dict_matches(model.state_dict(), state, filename, str(self.cfg.filename or "the current config"))
        stored = (checkpoint.get("meta") or {}).get(DATASET_META_KEY)
        summary = self.cfg.get("dataset_info")
        if self._trusted_load and stored is not None and summary is not None:  # --resume: the same classes
            check_dataset_matches(stored, summary["classes"], len(summary["channels"]), filename, "this run's WORK")
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return checkpoint


@MODEL_WRAPPERS.register_module()
class GIDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also runs on CPU (gloo): ``device_ids=None`` when CUDA is absent."""

    def __init__(self, module: nn.Module, device_ids: list[int] | None = None, **kwargs: Any) -> None:
        if not torch.cuda.is_available():
            device_ids = None
        kwargs.setdefault("broadcast_buffers", False)
        super().__init__(module=module, device_ids=device_ids, **kwargs)


@MODELS.register_module()
class GIDataPreProcessor(BaseDataPreprocessor):
    """Stack a batch of float ``(C, H, W)`` inputs to float32 ``(N, C, H, W)`` on the model's device; data samples
    that take metainfo get ``batch_input_shape = (H, W)`` (mmseg's heads read it).

    Args:
        channels_last: return inputs in ``torch.channels_last`` memory format (faster convs with AMP on GPU).
        non_blocking: asynchronous host-to-device copies.
    """

    def __init__(self, channels_last: bool = False, non_blocking: bool = True) -> None:
        super().__init__(non_blocking=non_blocking)
        self.channels_last = channels_last

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data["inputs"]
        if isinstance(inputs, (list, tuple)):
            shapes = {tuple(t.shape) for t in inputs}
            if len(shapes) != 1:
                raise ValueError(
                    f"all inputs of a batch must have one shape (resize them: GIResize, the dataset's img_size), got "
                    f"{sorted(shapes)}"
                )
            inputs = torch.stack(list(inputs))
        inputs = inputs.float()
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        samples = data.get("data_samples")
        for s in samples or ():
            if hasattr(s, "set_metainfo"):
                s.set_metainfo(dict(batch_input_shape=tuple(inputs.shape[2:])))
        return dict(inputs=inputs, data_samples=samples)
