"""The planner (``python -m data_prep plan``): configs derived from the data, as nnU-Net configures itself.

:func:`run_plan` fingerprints a prepared WORK (:mod:`data_prep.fingerprint`), decides with :func:`make_plan` and
writes:

- ``WORK/plan/fingerprint.json`` + ``fingerprint.md``, ``WORK/plan/plan.json`` + ``plan.md`` (every decision with
  its value and a ``why`` naming the fingerprint figures that made it);
- under ``--out`` (default ``mmcfg/generated/{dataset}``): one config per planned model that inherits its shipped
  base by relative path (``_base_ = ["../../unet/unet_effb4_2xb16-20k_gitract-384x384.py"]``) and overrides only
  what the data decides (``work``, ``img_size``, ``stack``, ``norm``, ``resample``, patch sizes, batch sizes,
  ``split_variant``, ``boxes``), an ensemble spec (``ensemble.yaml``, the ``ensembles/configs/`` format) and a
  ``README.md`` with the commands in order. Anything can still be overridden with ``--cfg-options``.

The decisions (constants below; docs/plan.md explains them):

- **normalisation**: CT -> clip to the foreground 0.5 / 99.5 percentiles, then z-score with the foreground mean and
  std (nnU-Net's CT scheme, in the stored units the models read): ``dict(mode="ct", clip=(lo, hi), mean=m,
  std=s)`` for the 2.5D stacks, the slice classifier and the 3D volumes; MR and other -> each 2.5D stack divided by
  its own max (the 1st place's) and each 3D volume scaled to its own 0 - 99.5 percentiles;
- **2.5D stack**: neighbours span +-:data:`STACK_SPAN_MM` around the slice: one each side (3 channels) for thick
  slices (anisotropy >= :data:`THICK_SLICE_ANISOTROPY`), two (5 channels) otherwise, the stride rounded from the
  slice spacing (3 mm slices: ``[i-2, i, i+2]``);
- **crop** (the YOLO body detector) when the foreground box covers less than :data:`CROP_MAX_FOREGROUND_BOX` of the
  image and the body box less than :data:`CROP_MAX_BODY_BOX`; **gate** (the slice classifier) when at least
  :data:`GATE_MIN_EMPTY` of the (slice, class) pairs are empty;
- **2.5D input size**: the crop (the median body box, else the median image) scaled so that the smallest class
  spans :data:`MIN_CLASS_PX` pixels (at most x :data:`MAX_UPSCALE`, never below x1), rounded up to a multiple of 32;
- **3D**: nnU-Net's target spacing (the median; the 10th percentile on an axis more than 3x coarser than the others
  when the volumes are also 3x shorter along it) and patch (nnU-Net's isotropic start, at most the median shape at
  the target spacing, multiples of 16, shrunk along the longest physical axis until the base's patches per
  iteration fit the GPU);
- **batch sizes** from :data:`MEMORY_TABLE` (measured training memory per sample under AMP, scaled by pixels or
  voxels) within :data:`MEMORY_SAFETY` of ``--gpu-memory``, a power of two up to the base config's;
- **folds**: the WORK's splits (5 by default), at most one per group; **split variants**: ``notail`` only with tail
  slices, ``noanno`` only with empty slices (else a base that trains on them trains on ``all``).

This module is also where the CT scheme's arithmetic lives (:func:`ct_params`, :func:`ct_normalise`), so that the
models (``segmenters``, ``gating``) normalise exactly as planned.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.io import atomic_write_text, markdown_table
from data_prep.constants import DEFAULT_FOLDS, REPO_ROOT
from data_prep.fingerprint import fingerprint, write_fingerprint
from data_prep.work import PLAN_DIR, plan_dir, read_dataset

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
#: The normalisation mode of the CT scheme (``dict(mode="ct", clip=(lo, hi), mean=m, std=s)``).
CT_MODE = "ct"
#: The normalisation modes of a 2.5D stack (``stack.norm``: ``segmenters.mm.stacks.normalise_stack`` on the host,
#: ``inference.device_ops.normalise_stacks`` on the device; ``ct`` only as a dict with its parameters).
STACK_NORM_MODES: tuple[str, ...] = ("max", "minmax", "percentile", "volume_max", "none", CT_MODE)


def norm_mode(norm: str | Mapping[str, Any]) -> str:
    """The mode of a normalisation: the name itself, or the dict's ``mode``.

    >>> norm_mode("max"), norm_mode({"mode": "ct", "clip": (0, 1), "mean": 0.5, "std": 0.2})
    ('max', 'ct')
    """
    return str(norm.get("mode", "")) if isinstance(norm, Mapping) else str(norm)


DEFAULT_GPU_MEMORY_GB = 24.0
#: Fraction of ``--gpu-memory`` a plan fills (the rest: CUDA context, cuDNN workspaces, the allocator's cache).
MEMORY_SAFETY = 0.85
#: 2.5D neighbours reach this far (mm) on each side of the slice: the 1st place's [i-2, i, i+2] at 3 mm slices.
STACK_SPAN_MM = 6.0
#: Anisotropy (max / min spacing) from which slices are thick: one neighbour each side, else two.
THICK_SLICE_ANISOTROPY = 2.0
#: The smallest class (geometric mean of its median in-plane extent) should span this many input pixels: 4 cells of
#: the stride-32 encoders' deepest feature map.
MIN_CLASS_PX = 128
MAX_UPSCALE = 2.0
IMG_MULTIPLE = 32
IMG_RANGE = (64, 512)
CROP_MAX_FOREGROUND_BOX = 0.5
CROP_MAX_BODY_BOX = 0.85
GATE_MIN_EMPTY = 0.5
#: nnU-Net's anisotropy threshold for the target spacing of the coarse axis.
ANISOTROPY_3D = 3.0
PATCH_MULTIPLE = 16
#: nnU-Net's starting patch: isotropic in mm, this many voxels.
PATCH_START_VOXELS = 256**3
#: Folds at most (the WORK's splits decide; one group per fold at least).
MAX_FOLDS = DEFAULT_FOLDS

#: The 1st place's set (the default ``--models``): 4 U-Nets, 2 UPerNets, the 3D SegResNet, the slice classifier.
FIRST_PLACE_MODELS: tuple[str, ...] = (
    "mmcfg/unet/unet_effb4_2xb16-20k_gitract-384x384.py",
    "mmcfg/unet/unet_effb5_2xb16-20k_gitract-384x384.py",
    "mmcfg/unet/unet_effb6_2xb16-20k_gitract-384x384.py",
    "mmcfg/unet/unet_effb7_2xb16-20k_gitract-384x384.py",
    "mmcfg/upernet/upernet_convnext-s_2xb16-20k_gitract-384x384.py",
    "mmcfg/upernet/upernet_convnext-b_2xb16-20k_gitract-384x384.py",
    "mmcfg/monai3d/segresnet_1xb2-20k_uwmgi-224x224x80.py",
    "mmcfg/gating/cls_efficientnet-b0_1xb32-8k_uwmgi-256x256.py",
)
#: The 1st place's 2.5D weights by backbone (ensembles/configs/first_place.yaml); other models weigh 1.
FIRST_PLACE_WEIGHTS: dict[str, float] = {
    "unet/efficientnet_b4": 0.2,
    "unet/efficientnet_b5": 0.2,
    "unet/efficientnet_b6": 0.3,
    "unet/efficientnet_b7": 0.2,
    "upernet/convnext_small": 0.1,
    "upernet/convnext_base": 0.1,
}

#: Training memory under AMP (float16 autocast, AdamW), per architecture: ``(reference pixels or voxels, MB per
#: sample at the reference, fixed MB, source)``; a run needs ``fixed + batch x per_sample x pixels / reference``.
#: Fixed = 16 bytes per parameter (float32 weights, gradients, two AdamW moments). Sources:
#: benchmarks/results/segmenters_cuda.json (``train_peak_mb`` of a training step at batch 16, AMP, H100:
#: per sample = (peak - fixed) / 16), benchmarks/results/bench_3d_cuda_dynunet.json (``max_mem_gib`` 19.6 at 4
#: patches of 224x224x80), and, where no GPU measurement exists, a measured one scaled by the ratio of CPU float32
#: peaks (forward + backward, same input) between the two architectures ("CPU ratio"), or interpolated.
MEMORY_TABLE: dict[str, dict[str, tuple[float, float, float, str]]] = {
    "2.5d": {
        "unet/efficientnet_b0": (128 * 128, 25.1, 61, "measured: 462 MB at b16 128x128"),
        "unet/efficientnet_b4": (384 * 384, 396.0, 296, "measured: 6632 MB at b16 384x384"),
        "unet/efficientnet_b5": (384 * 384, 532.0, 443, "interpolated between b4 and b7 (width x depth)"),
        "unet/efficientnet_b6": (384 * 384, 674.0, 641, "interpolated between b4 and b7 (width x depth)"),
        "unet/efficientnet_b7": (384 * 384, 837.0, 998, "measured: 14396 MB at b16 384x384"),
        "upernet/convnext_atto": (128 * 128, 12.1, 63, "measured: 257 MB at b16 128x128"),
        "upernet/convnext_small": (384 * 384, 468.5, 1248, "measured: 8744 MB at b16 384x384"),
        "upernet/convnext_base": (384 * 384, 543.0, 1862, "measured: 10557 MB at b16 384x384"),
        "upernet/swin-96-24": (384 * 384, 589.0, 1238, "measured (Swin-S): 10659 MB at b16 384x384"),
        "upernet/swin-32-4": (128 * 128, 11.5, 29, "measured (Swin mini): 213 MB at b16 128x128"),
    },
    "classifier": {
        "efficientnet_b0": (256 * 256, 64.0, 61, "U-Net effb0 measured x CPU ratio 0.64"),
        "resnet10t": (256 * 256, 22.0, 80, "U-Net effb0 measured x CPU ratio 0.22"),
        "convnext_tiny": (256 * 256, 56.0, 430, "U-Net effb0 measured x CPU ratio 0.56"),
    },
    "3d": {
        "DynUNet/32": (1e6, 1250.0, 250, "measured: 19.6 GiB at 4 x 224x224x80"),
        "SegResNet/32": (1e6, 1216.0, 290, "DynUNet measured x CPU ratio 0.97"),
        "SegResNet/4": (1e6, 55.0, 1, "DynUNet measured x CPU ratio 0.044"),
    },
}

KINDS = {"MultiLabelEncoderDecoder": "2.5d", "Monai3DSegmenter": "3d", "SliceClassifierModel": "classifier"}


# --------------------------------------------------------------------------------------------------- the CT scheme


def ct_params(norm: Mapping[str, Any], channel: int = 0, where: str = "norm") -> tuple[float, float, float, float]:
    """``(lo, hi, mean, std)`` of image channel ``channel`` from a CT normalisation dict.

    ``dict(mode="ct", clip=(lo, hi), mean=m, std=s)`` holds one set for every channel; per-channel values are lists:
    ``clip=[(lo0, hi0), (lo1, hi1)], mean=[m0, m1], std=[s0, s1]``.

    Raises:
        ValueError: a missing key, ``lo >= hi``, ``std <= 0``, or no value for ``channel`` (``where`` names the
            setting).

    >>> ct_params({"mode": "ct", "clip": (-100, 300), "mean": 60, "std": 40})
    (-100.0, 300.0, 60.0, 40.0)
    >>> ct_params({"mode": "ct", "clip": [(0, 10), (5, 9)], "mean": [4, 7], "std": [2, 1]}, channel=1)
    (5.0, 9.0, 7.0, 1.0)
    """
    missing = [k for k in ("clip", "mean", "std") if norm.get(k) is None]
    if missing:
        raise ValueError(f"{where}: the CT scheme needs clip=(lo, hi), mean and std; missing {missing} in {dict(norm)}")

    def pick(name: str, per_channel: bool) -> Any:
        v = norm[name]
        if not per_channel:
            return v
        if channel >= len(v):
            raise ValueError(f"{where}: {name} has {len(v)} per-channel values, image channel {channel} has none")
        return v[channel]

    seq = (list, tuple)
    try:
        clip = norm["clip"]
        lo, hi = (float(x) for x in pick("clip", isinstance(clip, seq) and len(clip) > 0 and isinstance(clip[0], seq)))
        m = float(pick("mean", isinstance(norm["mean"], seq)))
        s = float(pick("std", isinstance(norm["std"], seq)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid CT parameters {dict(norm)} ({e})") from None
    if not lo < hi or not s > 0 or not all(math.isfinite(v) for v in (lo, hi, m, s)):
        raise ValueError(f"{where}: the CT scheme needs lo < hi and std > 0, got clip=({lo}, {hi}), std={s}")
    return lo, hi, m, s


def ct_normalise(x: np.ndarray, lo: float, hi: float, mean: float, std: float) -> np.ndarray:
    """nnU-Net's CT scheme: ``(clip(x, lo, hi) - mean) / std`` as float32 (any shape).

    >>> ct_normalise(np.array([0, 100, 500], np.uint16), 50.0, 300.0, 100.0, 50.0).tolist()
    [-1.0, 0.0, 4.0]
    """
    v = np.clip(np.asarray(x, dtype=np.float32), np.float32(lo), np.float32(hi))
    return (v - np.float32(mean)) / np.float32(std)


# ------------------------------------------------------------------------------------------------------ base configs


def _arch(model: Mapping[str, Any], kind: str) -> str:
    if kind == "2.5d":
        head = (model.get("decode_head") or {}).get("type", "")
        head = "unet" if "UNet" in head else "upernet" if "UPer" in head else head
        bb = model.get("backbone") or {}
        if bb.get("type") == "SwinTransformer":
            return f"{head}/swin-{int(bb.get('embed_dims', 96))}-{sum(int(d) for d in bb.get('depths', (2, 2, 18, 2)))}"
        return f"{head}/{bb.get('model_name')}"
    if kind == "classifier":
        return str(model.get("model_name"))
    net = model.get("net") or {}
    width = net.get("init_filters") or (net.get("filters") or [32])[0]
    return f"{net.get('type')}/{int(width)}"


def read_base(path: str | os.PathLike) -> dict[str, Any]:
    """What the planner needs of a shipped config (read without importing its modules): ``{"path", "stem", "kind"
    (2.5d | 3d | classifier), "arch" (a :data:`MEMORY_TABLE` key), "batch_size", "num_samples", "img_size", "stack",
    "split_variant", "stages" (3D: PatchStageHook stages), "custom_hooks", "roi_size"}``.

    Raises:
        FileNotFoundError: no such config. ValueError: a model type the planner does not know.
    """
    from mmengine.config import Config  # noqa: PLC0415 - only the planner needs it

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"base config not found: {path} (configs live in mmcfg/, e.g. mmcfg/unet/...)")
    cfg = Config.fromfile(str(path), import_custom_modules=False)
    mtype = (cfg.get("model") or {}).get("type")
    if mtype not in KINDS:
        raise ValueError(f"{path}: model type {mtype!r} is not one the planner knows ({sorted(KINDS)})")
    kind = KINDS[mtype]
    ds = cfg.train_dataloader.dataset
    hooks = [h.to_dict() if hasattr(h, "to_dict") else dict(h) for h in cfg.get("custom_hooks") or []]
    stages = next((h["stages"] for h in hooks if h.get("type") == "PatchStageHook"), None)
    return {
        "path": path,
        "stem": path.stem,
        "kind": kind,
        "arch": _arch(cfg.model, kind),
        "batch_size": int(cfg.train_dataloader.batch_size),
        "num_samples": int(ds.get("num_samples", 1)) if kind == "3d" else 1,
        "img_size": tuple(cfg.get("img_size") or ds.get("img_size") or ()) or None,
        "stack": dict(cfg.get("stack") or {}),
        "split_variant": cfg.get("split_variant") or "all",
        "stages": [dict(s) for s in stages] if stages else None,
        "custom_hooks": hooks,
        "roi_size": tuple((cfg.model.get("test_cfg") or {}).get("roi_size") or ()) or None,
    }


def memory_mb(kind: str, arch: str, batch: int, size: float) -> tuple[float, str]:
    """Training memory (MB) of ``batch`` samples of ``size`` pixels (2.5D, classifier) or voxels (3D) under AMP,
    from :data:`MEMORY_TABLE`, and where the figure comes from. An architecture not in the table takes the largest
    per-pixel figure of its kind (said in the source).

    >>> round(memory_mb("2.5d", "unet/efficientnet_b4", 16, 384 * 384)[0])
    6632
    """
    table = MEMORY_TABLE[kind]
    if arch in table:
        ref, per, fixed, source = table[arch]
    else:
        key = max(table, key=lambda k: table[k][1] / table[k][0])
        ref, per, fixed, _ = table[key]
        source = f"{arch} not in the table: the largest figure of a {kind} model ({key})"
    return fixed + batch * per * size / ref, source


def fit_batch(kind: str, arch: str, size: float, budget_mb: float, cap: int) -> tuple[int, float, str]:
    """The largest power of two ``<= cap`` whose training memory fits ``budget_mb`` (at least 1), its memory (MB)
    and the table's source.

    >>> fit_batch("2.5d", "unet/efficientnet_b7", 384 * 384, 0.85 * 24 * 1024, 16)[0]
    16
    >>> fit_batch("2.5d", "unet/efficientnet_b7", 384 * 384, 0.85 * 12 * 1024, 16)[0]
    8
    """
    b = 1
    while b * 2 <= cap and memory_mb(kind, arch, b * 2, size)[0] <= budget_mb:
        b *= 2
    mem, source = memory_mb(kind, arch, b, size)
    return b, mem, source


# ------------------------------------------------------------------------------------------------------- decisions


def _r(v: float, nd: int = 2) -> float:
    return float(round(float(v), nd))


def _ceil_to(v: float, m: int) -> int:
    return int(math.ceil(v / m - 1e-9) * m)


def _norms(fp: Mapping[str, Any]) -> dict[str, Any]:
    """The 2.5D and 3D normalisations with their why."""
    it = fp["intensity"]
    if fp["dataset"]["intensity"] == "CT" and all(ch["stored"] for ch in it["channels"]):
        chans = [ch["stored"] for ch in it["channels"]]
        if len(chans) == 1:
            c = chans[0]
            norm = {"mode": CT_MODE, "clip": [_r(c["p0.5"]), _r(c["p99.5"])], "mean": _r(c["mean"], 3),
                    "std": _r(c["std"], 3)}  # fmt: skip
        else:
            norm = {
                "mode": CT_MODE,
                "clip": [[_r(c["p0.5"]), _r(c["p99.5"])] for c in chans],
                "mean": [_r(c["mean"], 3) for c in chans],
                "std": [_r(c["std"], 3) for c in chans],
            }
        src = it["channels"][0]["source"]
        figures = "; ".join(
            f"{ch['name']} on {it['on']} voxels: p0.5 {ch['stored']['p0.5']:.0f}, p99.5 {ch['stored']['p99.5']:.0f}, "
            f"mean {ch['stored']['mean']:.1f}, std {ch['stored']['std']:.1f} (stored units)"
            for ch in it["channels"]
        )
        on = "foreground" if it["on"] == "foreground" else "whole-volume (no labels)"
        why = (
            f"CT (dataset.json): nnU-Net's CT scheme, clip to the {on} 0.5/99.5 percentiles, then z-score with "
            f"the {on} mean/std; {figures}; source units p0.5 {src['p0.5']:.0f}, p99.5 {src['p99.5']:.0f}"
        )
        if not it.get("uniform_mapping", True):
            why += (
                "; WARNING: the volumes map their intensities with different offsets/scales "
                f"({len(it['mappings'])}), so stored units differ between volumes"
            )
        return {"2.5d": norm, "3d": dict(norm), "why_2d": why, "why_3d": why}
    kind = fp["dataset"]["intensity"]
    return {
        "2.5d": "max",
        "3d": {"mode": "percentile", "percentiles": [0.0, 99.5]},
        "why_2d": f"{kind} (dataset.json): intensities have no absolute meaning; each 2.5D stack divided by its own "
        "max (the 1st place's)",
        "why_3d": f"{kind} (dataset.json): each volume scaled to its own 0-99.5 percentiles (per volume)",
    }


def _stack(fp: Mapping[str, Any]) -> tuple[dict[str, int], str]:
    sz = float(fp["spacing"]["median"][0])
    aniso = float(fp["anisotropy"]["median"])
    k = 1 if aniso >= THICK_SLICE_ANISOTROPY else 2
    stride = max(1, int(round(STACK_SPAN_MM / (k * sz))))
    idx = ", ".join(("i" if j == 0 else f"i{j * stride:+d}") for j in range(-k, k + 1))
    why = (
        f"slice spacing {sz:g} mm, anisotropy {aniso:.2f} "
        f"({'>=' if k == 1 else '<'} {THICK_SLICE_ANISOTROPY:g}: {'thick' if k == 1 else 'thin'} slices, {k} "
        f"neighbour{'s' if k > 1 else ''} each side); stride round({STACK_SPAN_MM:g} mm / ({k} x {sz:g} mm)) = {stride}"
        f" -> [{idx}] spans +-{k * stride * sz:g} mm"
    )
    return {"stride": stride, "channels": 2 * k + 1}, why


def _crop(fp: Mapping[str, Any]) -> tuple[bool, str]:
    fg = float(fp["foreground_box"]["area_fraction"]["median"])
    body = float(fp["body_box"]["area_fraction"]["median"])
    if fp["labelled_volumes"] == 0:
        return False, "no labels: the foreground box is unknown"
    on = fg < CROP_MAX_FOREGROUND_BOX and body < CROP_MAX_BODY_BOX
    why = (
        f"foreground box {fg:.0%} of the image (median; crop when < {CROP_MAX_FOREGROUND_BOX:.0%}), body box "
        f"{body:.0%} (the detector's crop; < {CROP_MAX_BODY_BOX:.0%}): "
        + (f"the crop saves {1 - body:.0%} of the pixels -> crop on" if on else "little to save -> crop off")
    )
    return on, why


def _gate(fp: Mapping[str, Any]) -> tuple[bool, str]:
    if fp["labelled_volumes"] == 0:
        return False, "no labels: the empty slices are unknown"
    e = float(fp["empty"]["slice_class_fraction"])
    on = e >= GATE_MIN_EMPTY
    return on, (
        f"{e:.0%} of the (slice, class) pairs are empty ({fp['empty']['slice_fraction']:.0%} of the slices hold no "
        f"class; gate when >= {GATE_MIN_EMPTY:.0%}) -> gate {'on' if on else 'off'}"
    )


def _img_size(fp: Mapping[str, Any], crop: bool) -> tuple[list[int], float, str]:
    """The 2.5D input size, the crop size it is scaled from (px), and why."""
    med_h, med_w = (float(v) for v in fp["in_plane"]["median_px"])
    sy = float(fp["spacing"]["median"][1])
    if crop:
        ch, cw = float(fp["body_box"]["height_px"]["median"]), float(fp["body_box"]["width_px"]["median"])
        base = f"median in-plane {med_h:.0f}x{med_w:.0f} px at {sy:g} mm; body box {ch:.0f}x{cw:.0f} px"
    else:
        ch, cw = med_h, med_w
        base = f"median in-plane {med_h:.0f}x{med_w:.0f} px at {sy:g} mm (no crop)"
    crop_px = max(ch, cw)
    sizes = [(k["name"], math.sqrt(max(k["extent_px"][0], 1.0) * max(k["extent_px"][1], 1.0)))
             for k in fp["classes"] if k["volumes"] > 0]  # fmt: skip
    if sizes:
        name, smallest = min(sizes, key=lambda t: t[1])
        scale = min(MAX_UPSCALE, max(1.0, MIN_CLASS_PX / smallest))
        why_scale = (
            f"smallest class {name} {smallest:.0f} px (geometric mean of its median extent) -> x{scale:.2f} to reach "
            f"{MIN_CLASS_PX} px "
            f"(within x1..x{MAX_UPSCALE:g})"
        )
    else:
        scale, why_scale = 1.0, "no labelled class: native resolution"
    size = int(min(IMG_RANGE[1], max(IMG_RANGE[0], _ceil_to(crop_px * scale, IMG_MULTIPLE))))
    return (
        [size, size],
        crop_px,
        (
            f"{base}; {why_scale}: {crop_px:.0f} x {scale:.2f} = {crop_px * scale:.0f} -> {size} (multiple of "
            f"{IMG_MULTIPLE}, within {IMG_RANGE[0]}-{IMG_RANGE[1]})"
        ),
    )


def _cls_size(fp: Mapping[str, Any], seg_size: int) -> tuple[list[int], str]:
    med = max(float(v) for v in fp["in_plane"]["median_px"])
    size = int(max(IMG_RANGE[0], min(seg_size, IMG_MULTIPLE * max(1, round(med / IMG_MULTIPLE)))))
    return [size, size], (
        f"the whole slice ({med:.0f} px median) at its native resolution, nearest multiple of {IMG_MULTIPLE} "
        f"(presence needs no upsampling; at most the 2.5D size {seg_size}) -> {size}"
    )


def target_spacing(fp: Mapping[str, Any]) -> tuple[list[float], str]:
    """nnU-Net's full-resolution target spacing ``(sz, sy, sx)``: the median spacing; on an axis whose spacing is
    more than :data:`ANISOTROPY_3D` x the finest and along which the median volume is more than 3x shorter, the
    10th percentile of the spacings along it (but not below the other axes' spacing)."""
    med = [float(v) for v in fp["spacing"]["median"]]
    p10 = [float(v) for v in fp["spacing"]["p10"]]
    size = [float(v) for v in fp["size_mm"]["median"]]
    shape = [s / t for s, t in zip(size, med)]
    worst = int(np.argmax(med))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = med[worst] > ANISOTROPY_3D * min(med[i] for i in others)
    aniso_voxels = shape[worst] * ANISOTROPY_3D < min(shape[i] for i in others)
    target = list(med)
    why = f"median spacing {_fmtv(med)} mm (anisotropy {max(med) / min(med):.2f}"
    if aniso_spacing and aniso_voxels:
        target[worst] = max(p10[worst], max(med[i] for i in others) + 1e-5)
        why += f" > {ANISOTROPY_3D:g} and {shape[worst]:.0f} voxels along it: the 10th percentile {p10[worst]:g} mm)"
    else:
        why += f" <= {ANISOTROPY_3D:g}: the median)" if not aniso_spacing else ", but enough slices: the median)"
    return [_r(v, 4) for v in target], why


def _fmtv(v: Sequence[float]) -> str:
    return "x".join(f"{x:g}" for x in v)


def plan_patch(
    fp: Mapping[str, Any], target: Sequence[float], arch: str, patches: int, budget_mb: float
) -> tuple[list[int], int, float, str]:
    """The 3D patch ``(h, w, d)`` (nnU-Net's rule, see the module docstring) for ``patches`` patches per iteration
    of ``arch``; returns ``(patch, patches that fit, MB, why)``."""
    size = [float(v) for v in fp["size_mm"]["median"]]  # (D, H, W) mm
    median = [s / t for s, t in zip(size, target)]  # (D, H, W) voxels at the target spacing
    inv = [1.0 / t for t in target]
    f = (PATCH_START_VOXELS / float(np.prod(inv))) ** (1 / 3)
    start = [min(m, i * f) for m, i in zip(median, inv)]
    p = [max(PATCH_MULTIPLE, int(v // PATCH_MULTIPLE) * PATCH_MULTIPLE) for v in start]  # (D, H, W)

    def mem(n: int) -> float:
        return memory_mb("3d", arch, n, float(np.prod(p)))[0]

    while mem(patches) > budget_mb and any(v > PATCH_MULTIPLE for v in p):
        mm = [v * t if v > PATCH_MULTIPLE else -1.0 for v, t in zip(p, target)]
        axis = max(range(3), key=lambda i: (round(mm[i], 6), i == 0))  # the longest in mm; ties: the slice axis
        p[axis] -= PATCH_MULTIPLE
    n = patches
    while n > 1 and mem(n) > budget_mb:
        n -= 1
    d, h, w = p
    why = (
        f"median shape at the target spacing {median[1]:.0f}x{median[2]:.0f}x{median[0]:.0f} (HxWxD); start: a box "
        f"of {PATCH_START_VOXELS:.3g} voxels, isotropic in mm, cut to the median -> "
        f"{int(start[1])}x{int(start[2])}x{int(start[0])}; multiples of {PATCH_MULTIPLE}, "
        f"shrunk along the longest axis in mm until {n} patch"
        f"{'es' if n > 1 else ''} of {arch} fit: {h}x{w}x{d} = {h * w * d / 1e6:.2f} Mvoxels, "
        f"{mem(n) / 1024:.1f} of {budget_mb / 1024:.1f} GB"
    )
    return [h, w, d], n, mem(n), why


def _folds(fp: Mapping[str, Any]) -> tuple[int, str]:
    groups = int(fp["groups"])
    have = (fp.get("splits") or {}).get("n_folds")
    n = min(MAX_FOLDS, groups) if have is None else min(int(have), groups)
    why = f"{groups} groups (patients)"
    why += f"; WORK's splits.json has {have} folds" if have is not None else "; no splits.json yet"
    why += f" -> {n} folds" + (f" (at most {MAX_FOLDS})" if have is None else "")
    return max(1, n), why


def _variants(fp: Mapping[str, Any]) -> tuple[list[str], str]:
    out = ["all"]
    tail, empty = float(fp["tail"]["fraction"]), float(fp["empty"]["slice_fraction"])
    if tail > 0:
        out.append("notail")
    if empty > 0:
        out.append("noanno")
    why = (
        f"tail slices {tail:.1%} ({'notail differs from all' if tail > 0 else 'notail = all'}), empty slices "
        f"{empty:.1%} ({'noanno differs from all' if empty > 0 else 'noanno = all'})"
    )
    return out, why


def slug(name: str) -> str:
    """A file-name form of a dataset name.

    >>> slug("Dataset501_SynthCT")
    'dataset501-synthct'
    """
    s = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return s or "dataset"


_NAME_RE = re.compile(
    r"^(?P<model>.+?)_(?P<gpus>\d+)xb(?P<batch>\d+)-(?P<sched>[^_]+)_(?P<data>.+)-(?P<size>\d+x\d+(?:x\d+)?)$"
)


def generated_name(stem: str, batch: int, size: Sequence[int], dataset: str) -> str:
    """mmseg-style name of a generated config: the base's model and schedule, 1 GPU x the planned batch, the
    dataset, the planned size.

    >>> generated_name("unet_effb4_2xb16-20k_gitract-384x384", 12, (352, 352), "uwmgi")
    'unet_effb4_1xb12-20k_uwmgi-352x352'
    """
    m = _NAME_RE.match(stem)
    size_s = "x".join(str(int(v)) for v in size)
    if m is None:
        return f"{stem}_{dataset}-{size_s}"
    return f"{m['model']}_1xb{int(batch)}-{m['sched']}_{dataset}-{size_s}"


def make_plan(
    fp: Mapping[str, Any],
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
    models: Sequence[str | os.PathLike] | None = None,
    out: str | os.PathLike | None = None,
    root: str | os.PathLike = REPO_ROOT,
) -> dict[str, Any]:
    """Decide every setting from a fingerprint (:func:`data_prep.fingerprint.fingerprint`); writes nothing.

    Args:
        fp: the fingerprint.
        gpu_memory_gb: memory of one training GPU (GB); batch sizes and 3D patches fit
            :data:`MEMORY_SAFETY` of it.
        models: the base configs to plan for (paths; relative ones from ``root``); default
            :data:`FIRST_PLACE_MODELS`. A classifier is planned only when the gate is on.
        out: the folder the configs will be written to (default ``mmcfg/generated/{dataset}`` under ``root``).
        root: the repository (relative paths of the spec and commands start there).

    Returns:
        ``{"version", "dataset", "work", "gpu_memory_gb", "budget_mb", "out", "decisions": {name: {"value",
        "why"}}, "models": [{"name", "base", "kind", "arch", "config", "batch_size", ..., "why": {...}}],
        "skipped": [{"base", "why"}]}``.

    Raises:
        ValueError: ``gpu_memory_gb <= 0``, or a base config of a kind the planner does not know.
    """
    if not gpu_memory_gb > 0:
        raise ValueError(f"gpu_memory_gb must be > 0, got {gpu_memory_gb}")
    root = Path(root)
    bases = [read_base(p if Path(p).is_absolute() else root / p) for p in (models or FIRST_PLACE_MODELS)]
    name = slug(fp["dataset"]["name"])
    out = Path(out) if out is not None else root / "mmcfg" / "generated" / name
    budget = MEMORY_SAFETY * gpu_memory_gb * 1024.0
    norms = _norms(fp)
    stack, why_stack = _stack(fp)
    crop, why_crop = _crop(fp)
    gate, why_gate = _gate(fp)
    img_size, crop_px, why_img = _img_size(fp, crop)
    cls_size, why_cls = _cls_size(fp, img_size[0])
    target, why_target = target_spacing(fp)
    n_folds, why_folds = _folds(fp)
    variants, why_variants = _variants(fp)
    decisions: dict[str, dict[str, Any]] = {
        "norm_2d": {"value": norms["2.5d"], "why": norms["why_2d"]},
        "norm_3d": {"value": norms["3d"], "why": norms["why_3d"]},
        "stack": {"value": stack, "why": why_stack},
        "crop": {"value": crop, "why": why_crop},
        "gate": {"value": gate, "why": why_gate},
        "img_size": {"value": img_size, "why": why_img},
        "classifier_img_size": {"value": cls_size, "why": why_cls},
        "spacing_3d": {"value": target, "why": why_target},
        "folds": {"value": n_folds, "why": why_folds},
        "split_variants": {"value": variants, "why": why_variants},
    }
    work = str(fp["work"])
    planned, skipped = [], []
    for b in bases:
        entry: dict[str, Any] = {"base": str(b["path"]), "kind": b["kind"], "arch": b["arch"], "why": {}}
        if b["kind"] == "classifier" and not gate:
            skipped.append({"base": str(b["path"]), "why": f"gate off: {why_gate}"})
            continue
        if b["kind"] in ("2.5d", "classifier"):
            size = img_size if b["kind"] == "2.5d" else cls_size
            batch, mem, source = fit_batch(b["kind"], b["arch"], size[0] * size[1], budget, b["batch_size"])
            entry.update(img_size=size, batch_size=batch)
            entry["why"]["batch_size"] = (
                f"{b['arch']} at {size[0]}x{size[1]}: {mem / 1024:.1f} GB at batch {batch} of {budget / 1024:.1f} GB "
                f"({MEMORY_SAFETY:.0%} of {gpu_memory_gb:g} GB); the largest power of two up to the base's "
                f"{b['batch_size']} ({source})"
            )
            if b["kind"] == "2.5d":
                variant = b["split_variant"]
                if variant not in variants:
                    entry["split_variant"] = "all"
                    entry["why"]["split_variant"] = (
                        f"the base trains on {variant}, which equals all here: {why_variants}"
                    )
            gen_size = size
        else:
            patches = b["batch_size"] * b["num_samples"]
            patch, n, mem, why_patch = plan_patch(fp, target, b["arch"], patches, budget)
            batch = max(1, n // b["num_samples"])
            entry.update(patch=patch, batch_size=batch, num_samples=b["num_samples"])
            entry["why"]["patch"] = why_patch
            entry["why"]["batch_size"] = (
                f"{batch} case-day(s) x {b['num_samples']} patches = {batch * b['num_samples']} patches per iteration"
                f" (the base's {patches}; {memory_mb('3d', b['arch'], 1, 1e6)[1]})"
            )
            gen_size = patch
        entry["name"] = generated_name(b["stem"], entry["batch_size"], gen_size, name)
        entry["config"] = str(out / f"{entry['name']}.py")
        planned.append(entry)
    names = [m["name"] for m in planned]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two base configs plan to the same generated name(s) {dup}: pass each base once")
    return {
        "version": PLAN_VERSION,
        "dataset": fp["dataset"]["name"],
        "slug": name,
        "work": work,
        "classes": list(fp["dataset"]["classes"]),
        "gpu_memory_gb": float(gpu_memory_gb),
        "budget_mb": _r(budget, 1),
        "out": str(out),
        "root": str(root),
        "crop_px": _r(crop_px, 1),
        "decisions": decisions,
        "models": planned,
        "skipped": skipped,
    }


def rebatch(plan: Mapping[str, Any], index: int, batch: int, why: str) -> dict[str, Any]:
    """A copy of ``plan`` whose model ``index`` trains at ``batch`` (``tools/plan.py --measure``): its name, config
    path and the why of its batch size follow; the other decisions stay.

    Raises:
        ValueError: ``batch < 1``.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    new = json.loads(json.dumps(plan, default=str))
    m = new["models"][index]
    size = m.get("img_size") or m.get("patch")
    m["batch_size"] = int(batch)
    m["why"]["batch_size"] = why
    m["name"] = generated_name(Path(m["base"]).stem, batch, size, new["slug"])
    m["config"] = str(Path(new["out"]) / f"{m['name']}.py")
    return new


# --------------------------------------------------------------------------------------------------------- writers


def _py(v: Any) -> str:
    """A Python literal for a config file (dicts as ``dict(...)``, tuples for sequences of numbers)."""
    if isinstance(v, Mapping):
        return "dict(" + ", ".join(f"{k}={_py(x)}" for k, x in v.items()) + ")"
    if isinstance(v, list):
        return "[" + ", ".join(_py(x) for x in v) + "]"
    if isinstance(v, tuple):
        inner = ", ".join(_py(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, float):
        return repr(round(v, 6))
    return repr(v)


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, 116, initial_indent="# ", subsequent_indent="#   ", break_on_hyphens=False)


def _rel(path: str | os.PathLike, start: str | os.PathLike) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def _scale_stage(stage: Sequence[int], last: Sequence[int], patch: Sequence[int]) -> list[int]:
    return [max(PATCH_MULTIPLE, min(p, int(round(s / top * p / PATCH_MULTIPLE)) * PATCH_MULTIPLE))
            for s, top, p in zip(stage, last, patch)]  # fmt: skip


def config_text(plan: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    """The generated config of one planned model (see the module docstring)."""
    d = plan["decisions"]
    out = Path(plan["out"])
    base = read_base(model["base"])
    lines = [
        f"# Generated by `python -m data_prep plan --work {plan['work']}` for {plan['dataset']} (plan:",
        f"# {Path(plan['work']) / PLAN_DIR / 'plan.json'}); plan again to change it, or override any key with",
        "# --cfg-options. Each value says why (the figures are the WORK's fingerprint).",
        f"_base_ = [{_rel(model['base'], out)!r}]",
        f"work = {plan['work']!r}",
    ]

    def add(key: str, value: Any, why: str) -> None:
        lines.extend(["", *_comment(why), f"{key} = {value}"])

    if model["kind"] in ("2.5d", "classifier"):
        size = tuple(model["img_size"])
        why_size = d["img_size"]["why"] if model["kind"] == "2.5d" else d["classifier_img_size"]["why"]
        add("img_size", _py(size), why_size)
        norm = d["norm_2d"]["value"]
        if isinstance(norm, Mapping) and "norm" in base["stack"]:  # a dict replaces the base's value, not merged
            norm = {"_delete_": True, **norm}
        stack = {**d["stack"]["value"], "norm": norm}
        add("stack", _py(stack), f"{d['stack']['why']}; norm: {d['norm_2d']['why']}")
        if model["kind"] == "2.5d" and d["crop"]["value"]:
            boxes = str(Path(plan["work"]) / "exports" / "boxes.csv")
            add("boxes", repr(boxes), f"{d['crop']['why']}; training on the ground-truth boxes (export boxes)")
        if "split_variant" in model:
            add("split_variant", repr(model["split_variant"]), model["why"]["split_variant"])
        add("train_dataloader", _py({"batch_size": model["batch_size"]}), model["why"]["batch_size"])
    else:
        h, w, dd = model["patch"]
        norm = {"_delete_": True, **d["norm_3d"]["value"]}
        add("norm", _py(norm), d["norm_3d"]["why"])
        resample = {"_delete_": True, "mode": "spacing", "spacing": tuple(d["spacing_3d"]["value"])}  # (sz, sy, sx)
        add("resample", _py(resample), d["spacing_3d"]["why"])
        stages = base["stages"] or [{"roi_size": (h, w, dd), "begin": 0}]
        last = tuple(stages[-1]["roi_size"])
        new_stages = [{**s, "roi_size": tuple(_scale_stage(s["roi_size"], last, (h, w, dd)))} for s in stages]
        hooks = [
            ({**hk, "stages": new_stages} if hk.get("type") == "PatchStageHook" else hk) for hk in base["custom_hooks"]
        ]
        first = tuple(new_stages[0]["roi_size"])
        loader = {"batch_size": model["batch_size"], "dataset": {"roi_size": first}}
        add("train_dataloader", _py(loader), f"{model['why']['batch_size']}; first patch stage {first}")
        add("model", _py({"test_cfg": {"roi_size": (h, w, dd)}}), model["why"]["patch"])
        add("custom_hooks", _py(hooks), "the base's patch stages scaled to the planned patch")
    return "\n".join(lines) + "\n"


def ensemble_spec(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The ensemble spec of the planned models (``ensembles/configs/`` format, as data): the detector when the crop
    is on, the classifier gate when the gate is on, every 2.5D model (the 1st place's weights where the backbone is
    one of its, else 1) and 3D model, fusion 0.6 / 0.4 when both groups exist, threshold 0.4 (the 1st place's;
    ``python -m ensembles search`` tunes them)."""
    d = plan["decisions"]
    root = Path(plan["root"])

    def rel(p: str) -> str:
        pp = Path(p).resolve()
        return str(pp.relative_to(root.resolve())) if pp.is_relative_to(root.resolve()) else str(pp)

    models: list[dict[str, Any]] = []
    if d["crop"]["value"]:
        models.append(
            {"name": "detector", "kind": "detector", "checkpoints": "work_dirs/yolo/fold_{fold}/weights/best.pt"}
        )
    kinds = {m["kind"] for m in plan["models"]}
    for m in plan["models"]:
        entry: dict[str, Any] = {
            "name": re.sub(r"[^A-Za-z0-9_]+", "_", m["name"].split("_1xb")[0]),
            "kind": m["kind"],
            "config": rel(m["config"]),
            "checkpoints": f"work_dirs/{m['name']}/fold_{{fold}}/best.pth",
        }
        if m["kind"] == "2.5d":
            entry.update(tta=["hflip"], weight=FIRST_PLACE_WEIGHTS.get(m["arch"], 1.0))
        elif m["kind"] == "3d":
            entry.update(tta=["flip"], weight=1.0)
        models.append(entry)
    gate = (
        {"method": "classifier", "thresholds": 0.5, "smooth": 1}
        if d["gate"]["value"] and "classifier" in kinds
        else {"method": "none"}
    )
    has2, has3 = "2.5d" in kinds, "3d" in kinds
    fusion = (
        {"weight_2d": 0.6, "weight_3d": 0.4} if has2 and has3 else {"weight_2d": float(has2), "weight_3d": float(has3)}
    )
    return {
        "name": plan["slug"],
        "folds": list(range(int(d["folds"]["value"]))),
        "classes": list(plan["classes"]),
        "models": models,
        "gate": gate,
        "fusion": fusion,
        "thresholds": 0.4,
        "post": {"max_prob_floor": 0.5, "min_component": 0},
    }


def commands(plan: Mapping[str, Any]) -> list[str]:
    """The shell commands that train and run the planned models, in order (from the repository root)."""
    d = plan["decisions"]
    root = Path(plan["root"]).resolve()

    def rel(p: str) -> str:
        pp = Path(p).resolve()
        return str(pp.relative_to(root)) if pp.is_relative_to(root) else str(pp)

    kinds = {m["kind"] for m in plan["models"]}
    out = [f"WORK={plan['work']}"]
    n = int(d["folds"]["value"])
    if n >= 2:
        out.append(f"python -m data_prep splits --work $WORK --folds {n}   # a no-op when splits.json has {n} folds")
    if d["crop"]["value"]:
        out.append("python -m data_prep export boxes --work $WORK --workers 4   # ground-truth crop boxes")
    if "classifier" in kinds:
        out.append("python -m data_prep export classifier --work $WORK")
    if "3d" in kinds:
        out.append("python -m data_prep export 3d --work $WORK")
    if d["crop"]["value"]:
        imgsz = _ceil_to(max(d["img_size"]["value"]), IMG_MULTIPLE)
        out.append(f"python tools/train_yolo.py --work $WORK --fold all --work-dir work_dirs/yolo --imgsz {imgsz}")
    for m in plan["models"]:
        out.append(f"python tools/train.py {rel(m['config'])} --work $WORK --fold all --amp")
    spec = rel(str(Path(plan["out"]) / "ensemble.yaml"))
    out.append(
        f"python tools/infer.py --work $WORK-test --spec {spec} --out work_dirs/{plan['slug']}_predictions "
        "# after `prepare --split test` into $WORK-test; tune first with `python -m ensembles search`"
    )
    return out


def plan_markdown(plan: Mapping[str, Any]) -> str:
    """``plan.md``: the decisions (value, why), the models (batch, size, why) and the commands."""

    def val(v: Any) -> str:
        if isinstance(v, Mapping):
            return ", ".join(f"{k}={val(x)}" for k, x in v.items())
        if isinstance(v, (list, tuple)):
            if v and all(isinstance(x, int) for x in v):  # a size
                return "x".join(str(x) for x in v)
            return "[" + ", ".join(val(x) for x in v) + "]"
        return str(v)

    dec = pd.DataFrame(
        [{"decision": k, "value": val(x["value"]), "why": x["why"]} for k, x in plan["decisions"].items()]
    )
    rows = []
    for m in plan["models"]:
        size = m.get("img_size") or m.get("patch")
        rows.append(
            {
                "config": m["name"],
                "base": Path(m["base"]).name,
                "size": val(size),
                "batch": m["batch_size"],
                "why": "; ".join(f"{k}: {v}" for k, v in m["why"].items()),
            }
        )
    mods = pd.DataFrame(rows, columns=["config", "base", "size", "batch", "why"])
    text = [
        f"# Plan for {plan['dataset']}",
        "",
        f"WORK `{plan['work']}`, one GPU of {plan['gpu_memory_gb']:g} GB; configs in `{plan['out']}`.",
        "",
        "## Decisions",
        "",
        markdown_table(dec).rstrip("\n"),
        "",
        "## Models",
        "",
        markdown_table(mods).rstrip("\n"),
        "",
    ]
    if plan["skipped"]:
        text += ["Not planned: " + "; ".join(f"{Path(s['base']).name} ({s['why']})" for s in plan["skipped"]), ""]
    text += ["## Commands", "", "```bash", *commands(plan), "```", ""]
    return "\n".join(text)


def write_plan(plan: Mapping[str, Any], overwrite: bool = False) -> list[Path]:
    """Write ``WORK/plan/plan.json`` + ``plan.md`` and, under ``plan["out"]``, the configs, ``ensemble.yaml`` and
    ``README.md`` (atomically); returns the paths.

    Raises:
        FileExistsError: one of them exists and not ``overwrite`` (all are named; nothing is written).
    """
    import yaml  # noqa: PLC0415

    out = Path(plan["out"])
    wdir = plan_dir(plan["work"])
    texts: dict[Path, str] = {m_path: config_text(plan, m) for m in plan["models"] for m_path in [Path(m["config"])]}
    spec = ensemble_spec(plan)
    header = f"# The ensemble of the models planned for {plan['dataset']} (python -m data_prep plan); tune it with\n"
    header += "# `python -m ensembles search` on the out-of-fold predictions before predicting.\n"
    texts[out / "ensemble.yaml"] = header + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=118)
    md = plan_markdown(plan)
    texts[out / "README.md"] = md
    texts[wdir / "plan.md"] = md
    texts[wdir / "plan.json"] = json.dumps(plan, indent=1, default=str) + "\n"
    exist = [str(p) for p in texts if p.exists()]
    if exist and not overwrite:
        raise FileExistsError(f"the plan would replace {', '.join(exist)}; pass --overwrite to plan again")
    for p, t in texts.items():
        atomic_write_text(p, t)
    return list(texts)


def run_plan(
    work: str | os.PathLike,
    out: str | os.PathLike | None = None,
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
    models: Sequence[str | os.PathLike] | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    root: str | os.PathLike = REPO_ROOT,
) -> dict[str, Any]:
    """Fingerprint ``work``, plan, and write everything (what ``python -m data_prep plan`` runs).

    Returns:
        The plan (:func:`make_plan`), with ``"files"``: the paths written.

    Raises:
        FileNotFoundError: ``work`` is not prepared, or a base config is missing.
        FileExistsError: the plan's files exist and not ``overwrite`` (checked before the fingerprint is made).
    """

    if out is None:
        out = Path(root) / "mmcfg" / "generated" / slug(read_dataset(work).name)
    if not overwrite:
        clash = [
            p for p in (plan_dir(work) / "plan.json", Path(out)) if p.exists() and (p.is_file() or any(p.iterdir()))
        ]
        if clash:
            raise FileExistsError(
                f"{', '.join(map(str, clash))} exist(s): pass --overwrite to plan again (or another --out)"
            )
    fp = fingerprint(work, workers=workers, progress=progress)
    written = list(write_fingerprint(work, fp))
    plan = make_plan(fp, gpu_memory_gb, models, out, root)
    written += write_plan(plan, overwrite=True)
    return {**plan, "files": [str(p) for p in written]}
