"""Inference of the 3D segmenters: sliding window over a whole case-day, flip TTA, probabilities back at every
slice's original size, written per case-day in the probability-map layout of docs/contracts.md.

>>> # seg = Segmenter3D.load("mmcfg/monai3d/segresnet_1xb2-20k_uwmgi-224x224x80.py", "fold_0/best.pth", "cuda")
>>> # probs = seg.predict_volume(volume)          # float32 (D, 3, H, W) in [0, 1]
>>> # write_prob_maps(seg, "work", "oof/", case_days=val_case_days, fold=0)

TTA names: ``"flip"`` = identity + left-right flip + slice-order flip (the model is run 3 times; ``"hflip"``
(W), ``"vflip"`` (H) and ``"dflip"`` (D) may be listed one by one instead). ``()`` runs the model once.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.engine import load_weights
from common.io import atomic_write_bytes
from data_prep.constants import CLASSES, NUM_CLASSES
from segmenters.monai3d import (
    PREPARE_HINT,
    build_model,
    cfg_get,
    check_roi,
    load_case_day,
    preprocess_image,
    read_manifest,
    resize_hw,
    to_dict,
)

logger = logging.getLogger(__name__)

#: Flip TTA names -> spatial dims of a ``(B, C, H, W, D)`` tensor.
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (3,), "vflip": (2,), "dflip": (4,)}


def tta_variants(tta: Sequence[str] | None) -> list[tuple[int, ...]]:
    """The flips (tensor dims of ``(B, C, H, W, D)``) a TTA list runs, identity ``()`` first.

    >>> tta_variants(("flip",))
    [(), (3,), (4,)]
    >>> tta_variants(None)
    [()]
    """
    out: list[tuple[int, ...]] = [()]
    for name in tta or ():
        names = ("hflip", "dflip") if name == "flip" else (name,)
        for n in names:
            if n not in TTA_FLIPS:
                raise ValueError(f"unknown TTA {name!r}; expected 'flip' or any of {sorted(TTA_FLIPS)}")
            if TTA_FLIPS[n] not in out:
                out.append(TTA_FLIPS[n])
    return out


def _load_config(config: str | os.PathLike | Mapping[str, Any]) -> Any:
    if isinstance(config, Mapping):
        return config
    from mmengine import Config

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path} (3D configs live in mmcfg/monai3d/)")
    return Config.fromfile(str(path))


class Segmenter3D:
    """A trained 3D segmenter for whole case-day volumes.

    Args:
        model: the network (``(B, 1, h, w, d) -> (B, 3, h, w, d)`` logits).
        cfg: the loaded config (``data`` and ``infer`` sections are used).
        device: where the model runs.
        config_path, checkpoint: recorded in ``meta.json`` by :func:`write_prob_maps`.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Mapping[str, Any],
        device: str | torch.device = "cpu",
        config_path: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config_path, self.checkpoint = config_path, checkpoint
        infer = cfg_get(cfg, "infer", {})
        self.roi_size = check_roi(
            cfg_get(infer, "roi_size", (224, 224, 80)), to_dict(dict(cfg_get(cfg, "model"))), "infer.roi_size"
        )
        self.overlap = float(cfg_get(infer, "overlap", 0.7))
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"infer.overlap must be in [0, 1), got {self.overlap}")
        self.mode = str(cfg_get(infer, "mode", "gaussian"))
        self.sigma_scale = float(cfg_get(infer, "sigma_scale", 0.125))
        self.sw_batch_size = int(cfg_get(infer, "sw_batch_size", 2))
        self.amp = bool(cfg_get(infer, "amp", True)) and self.device.type == "cuda"
        self.default_tta = tuple(cfg_get(infer, "tta", ("flip",)) or ())

    @classmethod
    def load(
        cls, config: str | os.PathLike | Mapping[str, Any], checkpoint: str | os.PathLike, device: str = "cpu"
    ) -> Segmenter3D:
        """Build the config's model and load ``checkpoint`` (``best.pth`` / ``last.pth``; ``weights_only=True``).

        Raises:
            FileNotFoundError: config or checkpoint missing.
            ValueError: the weights do not fit the config's model.
        """
        cfg = _load_config(config)
        model = build_model(cfg_get(cfg, "model"))
        state = load_weights(checkpoint, map_location="cpu")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{checkpoint} does not fit the model of {config}: {str(e)[:500]}") from e
        return cls(model, cfg, device, str(config) if not isinstance(config, Mapping) else None, str(checkpoint))

    @torch.no_grad()
    def predict_resampled(self, x: torch.Tensor, tta: Sequence[str] | None = ("flip",)) -> torch.Tensor:
        """Mean sigmoid probabilities over the TTA variants at the model's resolution.

        Args:
            x: float32 ``(1, 1, h, w, D)`` preprocessed volume (any size: padded to the patch when smaller).
            tta: TTA names (see the module docstring).

        Returns:
            float32 ``(3, h, w, D)`` in ``[0, 1]`` on the model's device.
        """
        from monai.inferers import sliding_window_inference

        x = x.to(self.device)
        acc = torch.zeros((NUM_CLASSES, *x.shape[2:]), dtype=torch.float32, device=self.device)
        flips = tta_variants(tta)
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                logits = sliding_window_inference(
                    xi,
                    roi_size=self.roi_size,
                    sw_batch_size=self.sw_batch_size,
                    predictor=self.model,
                    overlap=self.overlap,
                    mode=self.mode,
                    sigma_scale=self.sigma_scale,
                    padding_mode="constant",
                    cval=0.0,
                )
            p = torch.sigmoid(logits.float())
            acc += (torch.flip(p, dims) if dims else p)[0]
        return (acc / len(flips)).clamp_(0.0, 1.0)

    @torch.no_grad()
    def predict_volume(
        self,
        volume: np.ndarray,
        spacing: Sequence[float] | None = None,
        tta: Sequence[str] | None = ("flip",),
    ) -> np.ndarray:
        """Class probabilities of one case-day.

        Args:
            volume: ``uint16 (D, H, W)`` scan, z in manifest order (any depth; any size, padded when smaller
                than the patch).
            spacing: ``(sz, sy, sx)`` or ``(sy, sx)`` mm; used only by configs that resample to a pixel
                spacing (``data.resample.mode == "spacing"``).
            tta: TTA names; ``None`` uses the config's ``infer.tta``.

        Returns:
            float32 ``(D, 3, H, W)`` probabilities in ``[0, 1]``, channels in ``CLASSES`` order, at the input's
            own ``H x W`` and depth.
        """
        volume = np.asarray(volume)
        if volume.ndim != 3 or min(volume.shape) < 1:
            raise ValueError(f"expected a non-empty volume (D, H, W), got shape {volume.shape}")
        if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
            raise ValueError(f"expected a uint16 (or real-valued) volume, got dtype {volume.dtype}")
        d, h, w = volume.shape
        x = preprocess_image(volume, self.cfg, spacing, self.device)[None]  # (1, 1, h', w', D)
        probs = self.predict_resampled(x, self.default_tta if tta is None else tta)
        probs = resize_hw(probs, (h, w)).clamp_(0.0, 1.0)  # (3, H, W, D), on the device
        out = probs.permute(3, 0, 1, 2).cpu().numpy().astype(np.float32, copy=False)
        if out.shape != (d, NUM_CLASSES, h, w):  # pragma: no cover - guarded by construction
            raise RuntimeError(f"internal error: output shape {out.shape} != {(d, NUM_CLASSES, h, w)}")
        return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_prob_maps(
    seg: Segmenter3D,
    work: str | os.PathLike,
    out_dir: str | os.PathLike,
    case_days: Sequence[str] | None = None,
    fold: int | None = None,
    tta: Sequence[str] | None = ("flip",),
    overwrite: bool = False,
    progress: bool = False,
    threshold: float = 0.5,
) -> Path:
    """Predict case-days of a WORK folder and write ``{out_dir}/{case_day}.npy`` (float16 ``(D, 3, H, W)``) and
    ``{out_dir}/meta.json`` (``kind="3d"``, config, checkpoint, fold, tta, classes, case_days -> slice ids in z
    order), as docs/contracts.md "Probability maps". ``meta.json`` is written last, every file atomically.
    Where the WORK folder has masks, ``{out_dir}/metrics.json`` holds the competition metric of the maps
    thresholded at ``threshold`` (``ensembles.metric``, its default conventions), as tools/test.py writes.

    Args:
        seg: a loaded :class:`Segmenter3D`.
        work: data_prep's WORK folder (``manifest.csv``, ``volumes/``).
        out_dir: output folder.
        case_days: which case-days (default: every case-day of the manifest).
        fold: recorded in meta.json (``None`` for test predictions).
        tta: TTA names.
        overwrite: replace existing maps / meta.json in ``out_dir``.
        progress: tqdm bar.
        threshold: pixel threshold for metrics.json.

    Raises:
        FileExistsError: ``out_dir`` already holds maps and ``overwrite`` is False.
        ValueError: unknown case-days, or a volume whose depth differs from the manifest's.
    """
    try:
        from ensembles.metric import aggregate, score_case_day
    except ImportError:  # the metric is optional here: maps are written without metrics.json
        aggregate = score_case_day = None  # type: ignore[assignment]
    from data_prep.volumes import unpack_mask

    work, out_dir = Path(work), Path(out_dir)
    manifest = read_manifest(work)
    ids_of = {cd: g["id"].tolist() for cd, g in manifest.groupby("case_day", sort=True)}
    todo = sorted(ids_of) if case_days is None else list(case_days)
    unknown = [cd for cd in todo if cd not in ids_of]
    if unknown:
        raise ValueError(f"case-days not in {work}/manifest.csv: {unknown[:5]}")
    existing = [p.name for p in [out_dir / "meta.json", *(out_dir / f"{cd}.npy" for cd in todo)] if p.exists()]
    if overwrite:
        (out_dir / "metrics.json").unlink(missing_ok=True)
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {existing[:3]}...; pass overwrite=True (--overwrite)")
    spacing_of: dict[str, tuple[float, float]] = {}
    if {"px_h", "px_w"} <= set(manifest.columns):
        first = manifest.groupby("case_day", sort=False)[["px_h", "px_w"]].first()
        spacing_of = {cd: (float(r.px_h), float(r.px_w)) for cd, r in first.iterrows()}
    it: Any = todo
    if progress:
        from tqdm import tqdm

        it = tqdm(todo, desc="3d", dynamic_ncols=True)
    records = []
    for cd in it:
        volume, mask, spacing = load_case_day(work, cd)
        if volume.shape[0] != len(ids_of[cd]):
            raise ValueError(
                f"{cd}: volume has {volume.shape[0]} slices, manifest lists {len(ids_of[cd])}; re-run `{PREPARE_HINT}`"
            )
        probs = seg.predict_volume(np.asarray(volume), spacing or spacing_of.get(cd), tta)
        atomic_write_bytes(out_dir / f"{cd}.npy", _npy_bytes(probs.astype(np.float16)))
        if mask is not None and score_case_day is not None:
            truth = unpack_mask(np.asarray(mask)).astype(bool)
            records.append(score_case_day(cd, probs > threshold, truth))
    if records:
        res = aggregate(records).to_dict()
        res["threshold"] = threshold
        atomic_write_bytes(out_dir / "metrics.json", (json.dumps(res, indent=1) + "\n").encode())
        logger.info(
            "%s: score %.4f (dice %.4f, hausdorff %.4f) at threshold %s",
            out_dir,
            res["score"] or 0,
            res["dice"] or 0,
            res["hausdorff"] or 0,
            threshold,
        )
    meta = {
        "kind": "3d",
        "config": seg.config_path,
        "checkpoint": seg.checkpoint,
        "fold": fold,
        "tta": list(tta if tta is not None else seg.default_tta),
        "classes": list(CLASSES),
        "case_days": {cd: ids_of[cd] for cd in todo},
    }
    atomic_write_bytes(out_dir / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
    logger.info("wrote %d probability maps to %s", len(todo), out_dir)
    return out_dir
