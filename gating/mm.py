"""mmengine modules of the slice classifier, registered in mmengine's root registries (no default scope).

The configs under ``mmcfg/gating/`` name this module in ``custom_imports`` and train on the project's one
training engine (``training.runner.GIRunner``, ``tools/train.py``):

Any dataset: the classes (``C``) and image channels (``K``) come from the WORK's description (``WORK/dataset.json``,
:func:`data_prep.work.read_dataset`; the Kaggle layout without one).

- ``SliceStackDataset`` (DATASETS): one sample per slice of a fold's side (``train``: variant ``all`` of
  ``splits.json`` by default, the fault list applies; ``val``: the fold's val slices, never filtered; ``all``:
  every slice of the classifier table). Input: the 2.5D stacks of every image channel
  (:func:`gating.classifier.stack_image`), float32 ``(channels x K, h, w)`` in ``[0, 1]``; training side: light
  augmentations (:func:`augment`). Targets: the 0/1 presence columns of ``exports/classifier.csv``
  (``data_prep.exports.read_classifier_table``), one per class of the dataset.
- ``SliceClassifierModel`` (MODELS): a timm model (:func:`gating.classifier.build_classifier`) with
  ``num_classes`` presence logits; ``forward(inputs, data_samples, mode)``: ``"tensor"`` -> logits float
  ``(N, C)``, ``"loss"`` -> ``{"loss"}`` (BCE with logits on the presence targets), ``"predict"`` -> the data
  samples with ``pred_score`` float32 ``(C,)`` sigmoid probabilities (and the slice's ``id, case_day, z``).
- ``SliceClsMetric`` (METRICS, prefix ``cls``): ``cls/score`` = the gate score of
  :func:`evaluation.classification.gate_score` (the competition score of a perfect segmenter behind the gate) at
  ``threshold`` on the val case-days (it reads their masks with ``data_prep.work.load_mask``), ``cls/dice`` and
  ``cls/hausdorff`` (its two parts), ``cls/mean_auc``, ``cls/mean_f1``, ``cls/auc_{class}``, ``cls/f1_{class}``.
  ``cls/score`` selects the best checkpoint.
- ``ClsInputMetaHook`` (HOOKS): the model and input definition in every checkpoint as plain data
  (``meta["slice_classifier"]``), so that ``SliceClassifier.load(checkpoint)`` needs no config and runs no code.
- ``ClsOOFHook`` (HOOKS): after training (rank 0), the out-of-fold probabilities of the val slices by the best
  checkpoint (``best.pth``) -> ``{work_dir}/oof/cls_probs.csv`` (docs/contracts.md, "Classifier probabilities"),
  by the inference code (``SliceClassifier.load`` + ``predict_work``).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from mmengine.dataset import BaseDataset
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS
from mmengine.structures import BaseDataElement
from torch import nn

from common.engine import is_main_process
from data_prep.dataset import KAGGLE
from data_prep.exports import read_classifier_table
from data_prep.work import (
    SPLITS,
    check_variant,
    check_work,
    fold_case_days,
    fold_ids,
    has_mask,
    load_mask,
    load_volume,
    read_dataset,
    read_splits,
    select_ids,
)
from evaluation.classification import aggregate, classification_metrics, gate_score
from evaluation.metric import DEFAULT_EMPTY, DEFAULT_HAUSDORFF
from gating.classifier import (
    META_KEY,
    SliceClassifier,
    build_classifier,
    check_cls_norm,
    check_ids,
    predict_work,
    run_meta,
    stack_image,
)
from training.runner import GIDataPreProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "AUG_KEYS",
    "ClsInputMetaHook",
    "ClsOOFHook",
    "SliceClassifierModel",
    "SliceClsMetric",
    "SliceStackDataset",
    "augment",
]

#: Augmentation settings of the training side and their meaning when absent (no augmentation).
AUG_KEYS: dict[str, Any] = {
    "hflip": 0.0,  # probability of a left-right flip
    "affine": 0.0,  # probability of a random scale / rotation / shift
    "scale": (1.0, 1.0),  # scale range of the affine
    "rotate": 0.0,  # maximum rotation (degrees) of the affine
    "shift": 0.0,  # maximum shift of the affine, as a fraction of the image size
    "brightness": 0.0,  # brightness factor range 1 +- b (and an offset +- b / 10), applied with probability 0.5
}


# ----------------------------------------------------------------------------------------------------- data


def augment(x: np.ndarray, rng: np.random.Generator, aug: dict[str, Any]) -> np.ndarray:
    """Light augmentation of one input: left-right flip, affine (scale, rotation, shift), brightness.

    Args:
        x: float32 ``(C, h, w)`` stack in ``[0, 1]``.
        rng: the random generator of this draw.
        aug: settings, every key of :data:`AUG_KEYS` (:class:`SliceStackDataset` fills the missing ones).

    Returns:
        float32 ``(C, h, w)``, contiguous.
    """
    c, h, w = x.shape
    if rng.random() < aug["hflip"]:
        x = x[:, :, ::-1]
    if rng.random() < aug["affine"]:
        lo, hi = aug["scale"]
        scale = rng.uniform(lo, hi)
        angle = rng.uniform(-aug["rotate"], aug["rotate"])
        shift = aug["shift"]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        m[:, 2] += rng.uniform(-shift, shift, size=2) * (w, h)
        x = cv2.warpAffine(
            np.ascontiguousarray(x.transpose(1, 2, 0)), m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0
        ).reshape(h, w, c)
        x = x.transpose(2, 0, 1)
    b = aug["brightness"]
    if b > 0 and rng.random() < 0.5:
        x = x * rng.uniform(1 - b, 1 + b) + rng.uniform(-b, b) * 0.1
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_aug(aug: dict[str, Any] | None) -> dict[str, Any] | None:
    """The settings with the defaults of :data:`AUG_KEYS` filled in; None when no augmentation is set.

    Raises:
        ValueError: an unknown key (a close known key is suggested).
    """
    if not aug:
        return None
    for key in aug:
        if key not in AUG_KEYS:
            close = difflib.get_close_matches(str(key), list(AUG_KEYS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(AUG_KEYS)}"
            raise ValueError(f"unknown augmentation key train_dataloader.dataset.aug.{key}: {hint}")
    return {**AUG_KEYS, **aug}


@DATASETS.register_module()
class SliceStackDataset(BaseDataset):
    """Slices of data_prep's WORK folder as classifier samples.

    A sample is ``dict(inputs=float32 tensor (channels x K, h, w), data_samples=BaseDataElement)``; the element's
    metainfo holds ``id, case_day, z`` and its ``gt_label`` is float32 ``(C,)`` (0/1 presence in the class order of
    the WORK's ``dataset.json``, from ``exports/classifier.csv``).

    Args:
        work: WORK folder (``manifest.csv``, ``volumes/``, ``splits/splits.json``, ``exports/classifier.csv``).
        fold: the fold (``splits.json``); ignored with ``split="all"``.
        split: one of ``data_prep.work.SPLITS`` (``data_prep.work.select_ids``): ``train`` (the fold's training
            side, filtered by ``variant``; the fault list applies), ``val`` (the fold's val slices, never filtered)
            or ``all`` (every slice of the classifier table).
        variant: training side filter (``all``, ``notail``, ``noanno``); the classifier trains on ``all``.
        channels, stride: the 2.5D stack of each image channel (``data_prep.volumes.stack_indices``).
        img_size: ``(h, w)`` of the network input (bilinear resize).
        norm: ``"max"`` (each stack by its own max) or the planner's CT scheme ``dict(mode="ct", clip=(lo, hi),
            mean=m, std=s)`` (:func:`gating.classifier.check_cls_norm`; the ``stack`` shortcut copies ``stack.norm``).
        aug: augmentation settings (keys of :data:`AUG_KEYS`), applied unless ``test_mode``; None = none. Each
            draw takes a generator seeded from numpy's global RNG, which mmengine seeds per process and worker
            (``randomness.seed``).
        **kwargs: mmengine ``BaseDataset`` arguments (``test_mode``, ``serialize_data``, ``lazy_init``, ...).

    Raises:
        ValueError: unknown split, variant or augmentation key; ids or class columns missing from the classifier
            table.
    """

    METAINFO = dict(classes=KAGGLE.classes)  # a WORK without dataset.json

    def __init__(
        self,
        work: str | os.PathLike,
        fold: int | None = 0,
        split: str = "train",
        variant: str = "all",
        channels: int = 3,
        stride: int = 2,
        img_size: Sequence[int] = (256, 256),
        norm: Any = "max",
        aug: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if work is None:
            raise ValueError("SliceStackDataset needs a WORK folder: set the config's `work` (or pass --work)")
        check_variant(variant)
        if split != "all" and fold is None:
            raise ValueError(f"split={split!r} needs a fold (the config's `fold`, or --fold)")
        if int(channels) < 1 or int(channels) % 2 == 0:
            raise ValueError(f"channels must be odd (the slice and k neighbours on each side), got {channels}")
        if len(img_size) != 2:
            raise ValueError(f"img_size must be (h, w), got {img_size!r}")
        self.work = str(work)
        self.fold = fold
        self.split = split
        self.variant = variant
        self.channels, self.stride = int(channels), int(stride)
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.norm = check_cls_norm(norm, "SliceStackDataset norm")
        self.aug = _check_aug(aug)
        self.dataset = read_dataset(self.work)
        self._volumes: dict[str, list[np.ndarray]] = {}
        kwargs.setdefault(
            "metainfo",
            dict(classes=self.dataset.classes, label_kind=self.dataset.label_kind, channels=self.dataset.channels),
        )
        super().__init__(**kwargs)

    def load_data_list(self) -> list[dict]:
        """One dict per slice: ``id, case_day, z`` and ``gt_label`` float32 ``(C,)``."""
        work = check_work(self.work, need_masks=False, need_splits=self.split != "all")
        table = read_classifier_table(work).set_index("id")
        ids = select_ids(work, self.fold, self.split, self.variant)
        if ids is None:
            ids = table.index.tolist()
        missing = [i for i in ids if i not in table.index]
        if missing:
            raise ValueError(
                f"{len(missing)} slices of fold {self.fold} ({self.split}) are not in the classifier table of "
                f"{work}, e.g. {missing[:5]}: make the export again with "
                f"`python -m data_prep export classifier --work {work} --overwrite`"
            )
        classes = list(self.dataset.classes)
        absent = [c for c in classes if c not in table.columns]
        if absent:
            raise ValueError(
                f"the classifier table of {work} has no column for the classes {absent} of its dataset.json "
                f"({classes}): make the export again with `python -m data_prep export classifier --work {work} "
                "--overwrite`"
            )
        rows = table.loc[ids]
        labels = rows[classes].to_numpy(np.float32)
        out = [
            dict(id=str(sid), case_day=str(r.case_day), z=int(r.z), gt_label=labels[i])
            for i, (sid, r) in enumerate(zip(rows.index, rows.itertuples(index=False)))
        ]
        if not out:
            raise ValueError(f"no slices selected in {work} (fold={self.fold}, split={self.split}, {self.variant})")
        logger.info("%s fold=%s %s/%s: %d slices", work, self.fold, self.split, self.variant, len(out))
        return out

    def _volume(self, case_day: str) -> list[np.ndarray]:
        """The ``K`` image channels of a case-day (memory-mapped, kept open)."""
        if case_day not in self._volumes:
            k = self.dataset.num_channels
            self._volumes[case_day] = [load_volume(self.work, case_day, channel=c) for c in range(k)]
        return self._volumes[case_day]

    def prepare_data(self, idx: int) -> dict[str, Any]:
        """The sample of slice ``idx``: ``dict(inputs, data_samples)`` (see the class docstring)."""
        info = self.get_data_info(idx)
        x = stack_image(self._volume(info["case_day"]), info["z"], self.channels, self.stride, self.img_size, self.norm)
        if self.aug and not self.test_mode:
            x = augment(x, np.random.default_rng(np.random.randint(0, 2**31 - 1)), self.aug)
        sample = BaseDataElement(metainfo=dict(id=info["id"], case_day=info["case_day"], z=info["z"]))
        sample.gt_label = torch.as_tensor(np.asarray(info["gt_label"], np.float32))
        return dict(inputs=torch.from_numpy(x), data_samples=sample)


# ----------------------------------------------------------------------------------------------------- model


_UNEXPECTED_RE = re.compile(r"unexpected keyword argument '([^']+)'")


@MODELS.register_module()
class SliceClassifierModel(BaseModel):
    """A timm model with ``num_classes`` presence logits on 2.5D stacks, as an mmengine model.

    Args:
        model_name: any timm model name (checked with close names on error).
        in_channels: input channels (the stack's ``channels``; the ``stack`` shortcut fills it).
        num_classes: presence logits, one per class of the dataset (the ``num_classes`` shortcut of
            :mod:`training.config` fills it from ``WORK/dataset.json``; default: the Kaggle layout's 3).
        pretrained: None, or a local timm checkpoint of the same architecture (never downloaded; its first conv
            is adapted to ``in_channels`` and a head of another size is dropped).
        data_preprocessor: default ``GIDataPreProcessor`` (``training.runner``: stacks the batch on the device).
        init_cfg: mmengine init config (default None: timm's own initialisation).
        **timm_kwargs: passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...).

    Raises:
        ValueError: unknown timm name, or a keyword timm's model does not take (named, with its config key).
        FileNotFoundError: ``pretrained`` does not exist.
    """

    def __init__(
        self,
        model_name: str,
        in_channels: int = 3,
        num_classes: int | None = KAGGLE.num_classes,
        pretrained: str | os.PathLike | None = None,
        data_preprocessor: dict | nn.Module | None = None,
        init_cfg: dict | None = None,
        **timm_kwargs: Any,
    ) -> None:
        if num_classes is None:
            raise ValueError(
                "model.num_classes is None: load the config with training.config.load_config (it takes the class "
                "count from WORK/dataset.json, or from the checkpoint at inference)"
            )
        preprocessor = data_preprocessor or GIDataPreProcessor()
        super().__init__(data_preprocessor=preprocessor, init_cfg=init_cfg)
        try:
            self.timm_model = build_classifier(
                model_name, int(in_channels), int(num_classes), pretrained=pretrained, **timm_kwargs
            )
        except TypeError as e:
            m = _UNEXPECTED_RE.search(str(e))
            if m is None or m.group(1) not in timm_kwargs:
                raise
            raise ValueError(
                f"model.{m.group(1)}: the timm model {model_name!r} takes no argument {m.group(1)!r} ({e}). "
                f"Remove it from the config's model dict or fix its spelling (model keys: type, model_name, "
                "in_channels, num_classes, pretrained, data_preprocessor, and timm.create_model's keywords)."
            ) from e
        self.model_name = model_name
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.loss_fn = nn.BCEWithLogitsLoss()

    def init_weights(self) -> None:
        """Nothing to do: timm initialises the network (and loads ``pretrained``) in its constructor. mmengine's
        default would call the timm model's own ``init_weights`` again and wipe the pretrained weights."""
        self._is_init = True

    def forward(
        self, inputs: torch.Tensor, data_samples: list[BaseDataElement] | None = None, mode: str = "tensor"
    ) -> torch.Tensor | dict[str, torch.Tensor] | list[BaseDataElement]:
        """One forward pass.

        Args:
            inputs: float32 ``(N, C, h, w)``.
            data_samples: per sample, ``gt_label`` float ``(num_classes,)`` (``loss``) and ``id, case_day, z``.
            mode: ``"tensor"`` -> logits float ``(N, num_classes)``; ``"loss"`` -> ``{"loss": BCE with logits}``;
                ``"predict"`` -> the data samples with ``pred_score`` float32 ``(num_classes,)`` (sigmoid).

        Raises:
            ValueError: unknown mode, or ``loss`` without targets.
        """
        logits = self.timm_model(inputs)
        if mode == "tensor":
            return logits
        if mode == "loss":
            if not data_samples or any("gt_label" not in s for s in data_samples):
                raise ValueError("mode='loss' needs data samples with gt_label (a dataset with labels)")
            targets = torch.stack([s.gt_label for s in data_samples]).to(logits.device, torch.float32)
            return dict(loss=self.loss_fn(logits.float(), targets))
        if mode == "predict":
            probs = torch.sigmoid(logits.float())
            if data_samples is None:
                data_samples = [BaseDataElement() for _ in range(len(probs))]
            for s, p in zip(data_samples, probs):
                s.pred_score = p
            return list(data_samples)
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")


# ----------------------------------------------------------------------------------------------------- metric


def _to_numpy(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


@METRICS.register_module()
class SliceClsMetric(BaseMetric):
    """Gate score, presence AUC and F1 of the val slices (keys prefixed ``cls/``, see the module docstring).

    ``cls/score`` = ``evaluation.metric.aggregate`` over the val case-days of
    ``evaluation.classification.gate_score(probs >= threshold, true masks)``: the competition score of a perfect
    segmenter behind the gate (1.0 for a perfect gate). Truth (for the score and for AUC / F1) comes from the masks
    of the case-days (``data_prep.work.load_mask``), read one case-day at a time in ``compute_metrics``; the
    slices of a case-day are taken in ``z`` order (the val side holds whole case-days).

    Args:
        work: data_prep's WORK folder (the ``work`` shortcut fills it); its ``dataset.json`` says how to read the
            masks.
        threshold: presence threshold of the gate (and of F1).
        empty, hausdorff: conventions of ``evaluation.metric`` (defaults: the project's).
        collect_device, prefix: of mmengine's ``BaseMetric``.
        classes: the class names of the ``C`` outputs (None: the WORK's; the shortcut fills it).

    Raises:
        ValueError: no WORK, or a val case-day without a mask.
    """

    default_prefix = "cls"

    def __init__(
        self,
        work: str | os.PathLike | None = None,
        threshold: float = 0.5,
        empty: str = DEFAULT_EMPTY,
        hausdorff: str = DEFAULT_HAUSDORFF,
        collect_device: str = "cpu",
        prefix: str | None = None,
        classes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, **kwargs)
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"val_evaluator.threshold must be in [0, 1], got {threshold}")
        self.work = None if work is None else str(work)
        self._classes = tuple(classes) if classes else None
        self.threshold = float(threshold)
        self.empty = empty
        self.hausdorff = hausdorff

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Keep ``id, case_day, z`` and the probabilities float32 ``(C,)`` of each predicted slice."""
        for s in data_samples:
            self.results.append(
                dict(
                    id=str(s["id"]),
                    case_day=str(s["case_day"]),
                    z=int(s["z"]),
                    probs=_to_numpy(s["pred_score"]).astype(np.float32).reshape(-1),
                )
            )

    def compute_metrics(self, results: list[dict]) -> dict[str, float]:
        """The metrics of the collected slices (duplicates of a distributed sampler's padding dropped)."""
        if self.work is None:
            raise ValueError("SliceClsMetric needs the WORK folder (val_evaluator.work; the `work` shortcut fills it)")
        info = read_dataset(self.work)
        classes = self._classes or info.classes
        if tuple(classes) != tuple(info.classes):
            raise ValueError(
                f"SliceClsMetric: classes {list(classes)} differ from the classes {list(info.classes)} of "
                f"{self.work}/dataset.json"
            )
        seen: dict[str, dict] = {}
        for r in results:
            seen.setdefault(r["id"], r)
        by_cd: dict[str, list[dict]] = {}
        for r in seen.values():
            by_cd.setdefault(r["case_day"], []).append(r)
        probs, truth, records = [], [], []
        for cd in sorted(by_cd):
            if not has_mask(self.work, cd):
                raise ValueError(
                    f"no mask of {cd} in {self.work}: cls/score needs the masks of the val case-days (prepare the "
                    "WORK folder from a data root with labels)"
                )
            recs = sorted(by_cd[cd], key=lambda r: r["z"])
            zs = np.array([r["z"] for r in recs])
            masks = info.unpack(np.asarray(load_mask(self.work, cd)[zs])).astype(bool)  # (n, C, H, W)
            p = np.stack([r["probs"] for r in recs])
            present = masks.reshape(masks.shape[0], masks.shape[1], -1).any(axis=2)
            records.append(gate_score(p >= self.threshold, masks, cd, self.empty, self.hausdorff))
            probs.append(p)
            truth.append(present)
        out = classification_metrics(np.concatenate(probs), np.concatenate(truth), self.threshold, classes)
        res = aggregate(records, self.empty, self.hausdorff, classes)
        out.update(score=float(res.score), dice=float(res.dice), hausdorff=float(res.hausdorff))
        return out


# ----------------------------------------------------------------------------------------------------- hook


@HOOKS.register_module()
class ClsInputMetaHook(Hook):
    """Writes the classifier's model and input definition into every checkpoint as plain data
    (``checkpoint["meta"]["slice_classifier"]``, :func:`gating.classifier.run_meta`), so that
    ``SliceClassifier.load(checkpoint)`` rebuilds the model without its config and without running code."""

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        checkpoint.setdefault("meta", {})[META_KEY] = run_meta(runner.cfg)


@HOOKS.register_module()
class ClsOOFHook(Hook):
    """After training (rank 0): the val slices' probabilities by the best checkpoint -> ``cls_probs.csv``.

    The path of test-time inference: ``SliceClassifier.load(checkpoint, device, config=the run's config)`` and
    :func:`gating.classifier.predict_work` on the fold's val case-days (``data_prep.work.fold_case_days``) of the
    val dataset's WORK folder, so out-of-fold and test probabilities come from the same code. The file holds
    exactly the fold's val slices (checked).

    Args:
        filename: output path inside the work dir (docs/contracts.md: ``oof/cls_probs.csv``).
        checkpoint: checkpoint name inside the work dir (``best.pth``: the best ``cls/score``).
        batch_size: slices per forward pass (default: the val dataloader's).
    """

    priority = "LOWEST"

    def __init__(
        self, filename: str = "oof/cls_probs.csv", checkpoint: str = "best.pth", batch_size: int | None = None
    ) -> None:
        self.filename = filename
        self.checkpoint = checkpoint
        self.batch_size = batch_size

    def after_train(self, runner: Any) -> None:
        if not is_main_process():
            return
        work_dir = Path(runner.work_dir)
        best = work_dir / self.checkpoint
        if not best.is_file():
            runner.logger.warning(f"no {best}: out-of-fold probabilities not written (no validation ran)")
            return
        val_loop = runner.val_loop
        if val_loop is None:
            runner.logger.warning("no val_dataloader: out-of-fold probabilities not written")
            return
        loader = val_loop.dataloader
        work, fold = loader.dataset.work, loader.dataset.fold
        splits = read_splits(work)
        net = runner.model.module if is_model_wrapper(runner.model) else runner.model
        device = next(net.parameters()).device
        clf = SliceClassifier.load(best, device, config=runner.cfg, work=work)
        batch_size = int(self.batch_size or loader.batch_size or 1)
        out = predict_work(clf, work, work_dir / self.filename, batch_size, case_days=fold_case_days(splits, fold)[1])
        check_ids(out["id"], fold_ids(splits, fold, "val"), what=f"out-of-fold probabilities of fold {fold}")
        del clf
        runner.logger.info(
            f"wrote {len(out)} out-of-fold probabilities of {best.resolve().name} to {work_dir / self.filename}"
        )
