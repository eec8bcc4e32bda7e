"""The inference engine: one case-day at a time, its volume on the device once, each distinct 2.5D input made once.

A case-day's volume crosses to the device once (uint16 there, float32 on arrival: :func:`volume_to_device`). The
2.5D predictors of an ensemble (every model and fold, segmenters and gate U-Nets) are grouped by their input
*recipe* (:class:`Recipe`: stack stride and size, normalisation, network input size, plane); for each recipe the
stacks of a batch of slices are gathered, normalised, cropped and resized on the device in batched torch ops
(:mod:`inference.device_ops`) once, and every predictor of the recipe runs on them. Flip and rot90 TTA are tensor
ops on that batch (on CUDA the variants of one shape run as one forward pass); inputs are channels_last. The
probabilities are pasted back into the full frame on the device and added, with the predictor's share of the
ensemble, into one accumulator per case-day (:func:`ensembles.core.model_shares`: the same weights as
:func:`ensembles.core.fuse_models`); the 3D predictors' maps are added there too. Only the fused map leaves the
device; the rule after the fusion (gate, thresholds, post-processing) is
:func:`ensembles.core.gate_and_post`, the function the search scores with.

A 2.5D model may also run along the coronal and sagittal axes (``planes`` in the spec): the volume is re-sliced
and resampled to square-ish pixels (:func:`inference.device_ops.to_plane`), predicted with the stack stride that
spans the same millimetres, and the probabilities go back to the axial grid, averaged over the planes.

:func:`run_25d` is the pure core (tensors in, accumulators filled); :class:`Engine` runs a loaded ensemble on a
case-day. ``Engine.stats`` counts what was done (``prepared``: batches of stacks made, per recipe; ``forward``:
forward passes), which the tests read.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ensembles import core
from ensembles.spec import PLANES, check_planes, check_tta_25d
from inference.device_ops import (
    crop_resize_batch,
    from_plane,
    gather_stacks,
    normalise_stacks,
    paste_back,
    plane_stride,
    to_plane,
    tta_inputs,
    tta_merge,
    volume_to_device,
)


@dataclass(frozen=True)
class Recipe:
    """What makes a 2.5D input: predictors with equal recipes share their inputs.

    Attributes:
        stride, channels: the stack (``channels`` slices, ``stride`` apart, in the plane's slice axis).
        norm: the normalisation as canonical JSON (hashable).
        img_size: ``(h, w)`` of the network input.
        plane: ``axial``, ``coronal`` or ``sagittal``.
    """

    stride: int
    channels: int
    norm: str
    img_size: tuple[int, int]
    plane: str = "axial"

    @classmethod
    def of(cls, seg: Any, plane: str = "axial", spacing: Sequence[float] | None = None) -> Recipe:
        """The recipe of a :class:`segmenters.mm.inference.Segmenter` (or any object with ``stride, channels,
        norm, img_size``) in ``plane`` (its stride scaled to the plane by :func:`plane_stride`)."""
        stride = int(seg.stride) if plane == "axial" else plane_stride(int(seg.stride), plane, _zyx(spacing))
        norm = json.dumps(seg.norm, sort_keys=True)
        return cls(stride, int(seg.channels), norm, (int(seg.img_size[0]), int(seg.img_size[1])), plane)

    @property
    def norm_value(self) -> Any:
        """The normalisation as :func:`inference.device_ops.normalise_stacks` takes it."""
        return json.loads(self.norm)


def _zyx(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    """``(sz, sy, sx)`` mm from a spacing ``(sz, sy, sx)`` or ``(sy, sx)`` (the Kaggle layout's 3 mm slices)."""
    if spacing is None:
        raise ValueError("coronal and sagittal planes need the volume's spacing (sz, sy, sx) mm")
    sp = tuple(float(v) for v in spacing)
    if len(sp) == 2:
        from data_prep.dataset import KAGGLE_Z_SPACING_MM

        sp = (float(KAGGLE_Z_SPACING_MM), *sp)
    if len(sp) != 3 or min(sp) <= 0:
        raise ValueError(f"spacing must be (sz, sy, sx) or (sy, sx) positive mm, got {spacing}")
    return sp  # type: ignore[return-value]


@dataclass
class Job:
    """One 2.5D predictor's part in a case-day.

    Attributes:
        seg: a :class:`segmenters.mm.inference.Segmenter` (``predict_batch``, ``stride``, ``channels``, ``norm``,
            ``img_size``, ``classes``).
        acc: float32 ``(D, C, H, W)`` accumulator on the device that receives ``weight *`` its probabilities.
        weight: its share in ``acc`` (e.g. share of the ensemble / folds); split evenly over ``planes``.
        tta: TTA names of :data:`ensembles.spec.TTA_25D`.
        planes: planes of :data:`ensembles.spec.PLANES`.
        name: named in errors.
    """

    seg: Any
    acc: torch.Tensor
    weight: float = 1.0
    tta: tuple[str, ...] = ()
    planes: tuple[str, ...] = ("axial",)
    name: str = "model"


def is_device_predictor(seg: Any) -> bool:
    """Whether ``seg`` runs on the device path: a 2.5D segmenter with ``predict_batch`` and its input recipe
    (``stride``, ``channels``, ``norm``, ``img_size``)."""
    return all(hasattr(seg, a) for a in ("predict_batch", "stride", "channels", "norm", "img_size"))


def forward_tta(seg: Any, x: torch.Tensor, tta: Sequence[str]) -> torch.Tensor:
    """Probabilities float32 ``(N, C, h, w)`` of network inputs ``x`` ``(N, planes, h, w)``, averaged over the TTA
    variants (:func:`inference.device_ops.tta_inputs` / ``tta_merge``); on CUDA the variants of one shape go
    through the model as one batch."""
    variants = tta_inputs(x, tuple(tta))
    outputs: list[torch.Tensor | None] = [None] * len(variants)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, v in enumerate(variants):
        # one batch per shape on CUDA (fuller kernels); on the CPU a batch twice as large runs ~6 % slower per
        # slice than two passes (measured with the tiny U-Net), so each variant goes alone there
        key = tuple(v.shape) if v.device.type == "cuda" else (i,)
        by_shape.setdefault(key, []).append(i)
    for idx in by_shape.values():
        batch = torch.cat([variants[i] for i in idx]) if len(idx) > 1 else variants[idx[0]]
        probs = seg.predict_batch(batch, tta=())
        for j, i in enumerate(idx):
            outputs[i] = probs[j * len(x) : (j + 1) * len(x)]
    return tta_merge(outputs, tuple(tta))  # type: ignore[arg-type]


def run_25d(
    volume: torch.Tensor,
    jobs: Sequence[Job],
    keep: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    batch_size: int = 16,
    stats: Counter | None = None,
    where: str = "",
) -> None:
    """Run every 2.5D job on one case-day, each distinct input made once; fills the jobs' accumulators.

    Args:
        volume: float32 ``(K, D, H, W)`` on the device (:func:`volume_to_device`).
        jobs: the predictors (:class:`Job`); their ``acc`` are ``(D, C, H, W)`` on ``volume``'s device.
        keep: optional bool ``(D,)``: axial slices to predict (the others add nothing); other planes predict
            every slice (their result is gated later).
        boxes: optional int ``(D, 4)`` crop boxes ``x0, y0, x1, y1`` of the axial slices (other planes: the whole
            re-sliced frame).
        spacing: ``(sz, sy, sx)`` or ``(sy, sx)`` mm; needed for coronal and sagittal planes.
        batch_size: slices per batch of stacks (each predictor's forward pass holds ``batch_size x`` its TTA
            variants).
        stats: counts ``prepared`` (batches of stacks made), ``prepared:{recipe}`` and ``forward`` (passes).
        where: the case-day, named in errors.

    Raises:
        ValueError: a predictor's output holds NaN or inf (named), bad TTA or plane names.
    """
    stats = Counter() if stats is None else stats
    finite: dict[int, list[torch.Tensor]] = {}
    k, d, h, w = volume.shape
    vmax = volume.reshape(k, -1).amax(dim=1)
    for plane in PLANES:
        members = [j for j in jobs if plane in j.planes]
        if not members:
            continue
        if plane == "axial":
            pv, info = volume, None
            zs = np.arange(d) if keep is None else np.flatnonzero(np.asarray(keep, dtype=bool))
            pboxes = None if boxes is None else np.asarray(boxes, dtype=np.int64)
        else:
            pv, info = to_plane(volume, plane, _zyx(spacing))
            zs, pboxes = np.arange(pv.shape[1]), None
        if len(zs) == 0:
            continue
        frame = (int(pv.shape[2]), int(pv.shape[3]))
        groups: dict[Recipe, list[Job]] = {}
        for j in members:
            groups.setdefault(Recipe.of(j.seg, plane, spacing), []).append(j)
        # where each job's probabilities go: its accumulator (axial), or its sum on the plane's grid (mapped back)
        targets = {
            id(j): j.acc if info is None else j.acc.new_zeros((pv.shape[1], j.acc.shape[1], *frame)) for j in members
        }
        for recipe, group in groups.items():
            for i in range(0, len(zs), batch_size):
                chunk = zs[i : i + batch_size]
                x = gather_stacks(pv, chunk, recipe.stride, recipe.channels)
                x = normalise_stacks(x, recipe.norm_value, vmax)
                bx = None if pboxes is None else pboxes[chunk]
                # channels_last: the layout the convolutions run fastest on (CPU too: ~25 % faster than NCHW with the
                # tiny U-Net, and the layout the host path's OpenCV images have)
                x = crop_resize_batch(x, bx, recipe.img_size).contiguous(memory_format=torch.channels_last)
                stats["prepared"] += 1
                stats[f"prepared:{recipe}"] += 1
                at = torch.as_tensor(chunk, device=volume.device)
                for j in group:
                    probs = forward_tta(j.seg, x, j.tta)
                    stats["forward"] += 1
                    full = paste_back(probs, bx, frame).clamp_(0, 1)
                    finite.setdefault(id(j), []).append(torch.isfinite(full).all())  # checked once, at the end
                    acc = targets[id(j)]
                    acc.index_add_(0, at, full.to(acc.dtype), alpha=j.weight / len(j.planes))
        if info is not None:
            for j in members:
                j.acc += from_plane(targets.pop(id(j)), info)
    for j in jobs:
        if id(j) in finite and not bool(torch.stack(finite[id(j)]).all()):
            raise ValueError(f"{j.name}{' on ' + where if where else ''}: the probabilities hold NaN or inf")


def _predict_3d(
    p: Any, volume: np.ndarray, spacing: Sequence[float] | None, tta: tuple[str, ...], device: torch.device
) -> torch.Tensor:
    """A 3D predictor's float32 ``(D, C, H, W)`` on ``device``: kept there when its ``predict_volume`` can return a
    tensor (``as_tensor``: :class:`segmenters.monai.inference.Segmenter3D`), else copied from the host array."""
    if "as_tensor" in inspect.signature(p.predict_volume).parameters:
        return p.predict_volume(volume, spacing, tta=tta, as_tensor=True).to(device, torch.float32)
    return torch.from_numpy(np.asarray(p.predict_volume(volume, spacing, tta=tta), dtype=np.float32)).to(device)


@dataclass
class EngineModel:
    """A loaded spec model as the engine uses it: name, kind, role, weight, TTA, planes, and one predictor per
    fold (``inference.pipeline.LoadedModel`` gives them) with where it came from (``sources``: its checkpoint,
    named in errors; default ``fold predictor i``)."""

    name: str
    kind: str
    role: str
    weight: float
    tta: tuple[str, ...]
    planes: tuple[str, ...]
    predictors: list[Any]
    sources: list[str] = field(default_factory=list)

    def label(self, i: int) -> str:
        """``model 'NAME' (SOURCE)`` of predictor ``i``, as errors name it."""
        src = self.sources[i] if i < len(self.sources) else f"fold predictor {i}"
        return f"model {self.name!r} ({src})"


class Engine:
    """Runs a loaded ensemble on case-days (see the module docstring).

    Args:
        models: the spec's models with their predictors (:class:`EngineModel`).
        gate, fusion, thresholds, post: the spec's sections.
        device: where the 2.5D models run and the maps are fused.
        batch_size: slices per batch of stacks.
        exclusive_classes: one class per pixel.
    """

    def __init__(
        self,
        models: Sequence[EngineModel],
        gate: Mapping,
        fusion: Mapping,
        thresholds: Any,
        post: Mapping,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        exclusive_classes: bool = False,
    ) -> None:
        self.models = list(models)
        self.gate, self.fusion, self.thresholds, self.post = gate, fusion, thresholds, post
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.exclusive_classes = bool(exclusive_classes)
        self.stats: Counter = Counter()
        for m in self.models:
            if m.kind == "2.5d":
                check_tta_25d(m.tta, f"model {m.name!r}")
                check_planes(m.planes, f"model {m.name!r}")

    def _jobs(self, models: Sequence[EngineModel], shares: Mapping[str, float], acc: torch.Tensor) -> list[Job]:
        jobs = []
        for m in models:
            if shares.get(m.name, 0.0) <= 0:
                continue
            for i, p in enumerate(m.predictors):
                w = shares[m.name] / len(m.predictors)
                jobs.append(Job(p, acc, w, m.tta, m.planes, m.label(i)))
        return jobs

    def _run_jobs(
        self,
        jobs: Sequence[Job],
        vol: torch.Tensor,
        volume: np.ndarray,
        keep: np.ndarray | None,
        boxes: np.ndarray | None,
        spacing: Sequence[float] | None,
        case_day: str,
    ) -> None:
        """The jobs on the device path (:func:`run_25d`); a predictor without it (any object with the contract's
        ``predict_volume``, e.g. a stand-in) predicts the whole volume on its own, added the same way."""
        device_jobs = [j for j in jobs if is_device_predictor(j.seg)]
        run_25d(vol, device_jobs, keep, boxes, spacing, self.batch_size, self.stats, case_day)
        for j in jobs:
            if is_device_predictor(j.seg):
                continue
            if j.planes != ("axial",):
                raise ValueError(f"{j.name}: planes {list(j.planes)} need a 2.5D Segmenter (predict_batch)")
            kw = dict(keep=keep, boxes=boxes, tta=j.tta, batch_size=self.batch_size)
            probs = np.asarray(j.seg.predict_volume(volume, **kw), dtype=np.float32)
            want = tuple(j.acc.shape)
            if probs.shape != want:
                raise ValueError(f"{j.name} on {case_day}: returned shape {probs.shape}, expected {want}")
            if not np.isfinite(probs).all():
                raise ValueError(f"{j.name} on {case_day}: the probabilities hold NaN or inf")
            j.acc.add_(torch.from_numpy(probs).to(j.acc.device), alpha=j.weight)
            self.stats["forward_host"] += 1

    @torch.inference_mode()
    def predict(
        self,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        n_classes: int,
        case_day: str = "",
        boxes: np.ndarray | None = None,
        cls_probs: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One case-day: ``(probs float32 (D, C, H, W) fused and gated, keep bool (D, C), masks bool (D, C, H, W))``.

        Args:
            volume: uint16 ``(D, H, W)`` or ``(K, D, H, W)``.
            spacing: ``(sy, sx)`` (Kaggle) or ``(sz, sy, sx)`` mm.
            n_classes: ``C``.
            case_day: named in errors.
            boxes: the detector's int ``(D, 4)`` crop boxes, or None.
            cls_probs: the classifiers' mean presence probabilities float ``(D, C)`` (gate ``classifier``).
        """
        d, h, w = volume.shape[-3:]
        shape = (d, n_classes, h, w)
        vol = volume_to_device(volume, self.device)
        self.stats["volumes"] += 1

        def gate_probs() -> np.ndarray:
            gates = [m for m in self.models if m.kind == "2.5d" and m.role == "gate"]
            weights = core.normalise_weights([m.weight for m in gates], len(gates), "weights of the gate U-Nets")
            acc = torch.zeros(shape, dtype=torch.float32, device=self.device)
            jobs = self._jobs(gates, {m.name: float(wt) for m, wt in zip(gates, weights)}, acc)
            self._run_jobs(jobs, vol, volume, None, boxes, spacing, case_day)
            return acc.cpu().numpy()

        keep = core.gate_keep(self.gate, (d, n_classes), cls_probs=cls_probs, gate_probs=gate_probs)
        slice_keep = keep.any(axis=1)
        segs = [m for m in self.models if m.role == "segment" and m.kind in core.GROUPS]
        shares = core.model_shares(
            [(m.name, m.kind, m.weight) for m in segs], self.fusion["weight_2d"], self.fusion["weight_3d"]
        )
        fused = None
        if shares:
            acc = torch.zeros(shape, dtype=torch.float32, device=self.device)
            jobs = self._jobs([m for m in segs if m.kind == "2.5d"], shares, acc)
            if jobs and slice_keep.any():
                self._run_jobs(jobs, vol, volume, slice_keep, boxes, spacing, case_day)
            for m in segs:
                if m.kind != "3d" or shares.get(m.name, 0.0) <= 0:
                    continue
                for i, p in enumerate(m.predictors):
                    probs = _predict_3d(p, volume, spacing, tuple(m.tta), self.device)
                    if tuple(probs.shape) != shape:
                        got = tuple(probs.shape)
                        raise ValueError(f"{m.label(i)} on {case_day}: returned shape {got}, expected {shape}")
                    if not bool(torch.isfinite(probs).all()):
                        raise ValueError(f"{m.label(i)} on {case_day}: the probabilities hold NaN or inf")
                    acc.add_(probs, alpha=shares[m.name] / len(m.predictors))
            fused = acc.cpu().numpy()
        probs, masks = core.gate_and_post(fused, shape, keep, self.thresholds, self.post, self.exclusive_classes)
        return probs, keep, masks
