"""Dataset, transforms and data preprocessor for 2.5D multi-label training on data_prep's WORK folder.

Any dataset: the classes, their label kind and the image channels come from the WORK's description
(``WORK/dataset.json``, :func:`data_prep.work.read_dataset`; the Kaggle layout without one). ``C`` below is its
number of classes, ``K`` its number of image channels.

Registered in mmseg's registries (``default_scope='mmseg'``):

- ``GITractDataset``: one sample per slice of a fold's train or val side (``splits.json``), optionally with
  crop boxes from a CSV (``id, x0, y0, x1, y1``); its ``metainfo`` names the dataset's classes (the val metric
  reads them);
- ``LoadGIStack``: the 2.5D stack ``[z - s*k .. z + s*k]`` of every image channel from the memory-mapped volumes,
  each normalised per stack, modality-major (``stack x K`` planes), and the ``C``-channel binary mask
  (``DatasetInfo.unpack``: bit fields and label maps alike); ``GICropBox``; ``GIResize``;
- ``AlbuSeg``: one albumentations pipeline (from the config) applied to image and ``C``-channel mask together;
- ``PackGIInputs``: ``(stack x K, H, W)`` float tensor + ``SegDataSample`` whose ``gt_sem_seg`` is ``(C, H, W)``
  uint8.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network at run time (albumentations' version check)

import albumentations as A  # noqa: E402
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmengine.structures import PixelData
from mmseg.registry import DATASETS, TRANSFORMS
from mmseg.structures import SegDataSample

from data_prep.constants import SPLIT_VARIANTS
from data_prep.dataset import KAGGLE, DatasetInfo
from data_prep.plan import norm_mode
from data_prep.work import (
    SPLITS,
    check_variant,
    check_work,
    load_mask,
    load_volume,
    read_dataset,
    read_manifest,
    select_ids,
)
from gating.crop import crop, read_boxes
from segmenters.mm.stacks import Norm, check_norm, read_stack, resize_image

logger = logging.getLogger(__name__)


@DATASETS.register_module()
class GITractDataset(BaseDataset):
    """Slices of a WORK folder for one fold and side, one sample per slice (2.5D stacks built at load time).

    Args:
        work: data_prep's WORK folder (``manifest.csv``, ``volumes/``, ``masks/``, ``splits/splits.json``).
        fold: fold ``0..4`` (or None with ``split='all'``).
        split: ``train`` (fold's training side, filtered by ``variant``), ``val`` (never filtered) or ``all``.
        variant: ``all``, ``notail`` or ``noanno`` (training side only).
        boxes: optional crop-box CSV (``id, x0, y0, x1, y1``); slices without a row use the whole image.
        with_mask: read masks (training and validation); False for unlabeled test trees.
        case_days: optional subset of case-days (e.g. for a quick check).
        **kwargs: ``pipeline``, ``test_mode``, ``serialize_data``, ``lazy_init``, ... of mmengine's BaseDataset
            (``metainfo`` defaults to the WORK's ``classes``, ``label_kind`` and ``channels``).
    """

    METAINFO = dict(classes=KAGGLE.classes)  # a WORK without dataset.json

    def __init__(
        self,
        work: str,
        fold: int | None = None,
        split: str = "train",
        variant: str = "all",
        boxes: str | None = None,
        with_mask: bool = True,
        case_days: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if variant not in SPLIT_VARIANTS:
            check_variant(variant)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.work = str(work)
        self.fold = fold
        self.split = split
        self.variant = variant
        self.boxes = boxes
        self.with_mask = with_mask
        self.case_days = list(case_days) if case_days else None
        info = read_dataset(self.work)
        kwargs.setdefault("data_root", self.work)
        kwargs.setdefault("metainfo", dict(classes=info.classes, label_kind=info.label_kind, channels=info.channels))
        super().__init__(**kwargs)

    def load_data_list(self) -> list[dict]:
        """One dict per slice: ``id, case_day, z, depth, height, width, work, box``."""
        work = check_work(self.work, need_masks=self.with_mask, need_splits=self.split != "all")
        manifest = read_manifest(work)
        ids = select_ids(work, self.fold, self.split, self.variant)
        if ids is not None:
            keep = set(ids)
            manifest = manifest[manifest["id"].isin(keep)]
        if self.case_days is not None:
            manifest = manifest[manifest["case_day"].isin(self.case_days)]
        boxes = read_boxes(self.boxes) if self.boxes else {}
        data_list = [
            dict(
                id=r.id,
                case_day=r.case_day,
                z=int(r.z),
                depth=int(r.depth),
                height=int(r.height),
                width=int(r.width),
                work=str(work),
                box=boxes.get(r.id),
            )
            for r in manifest.itertuples(index=False)
        ]
        if not data_list:
            raise ValueError(
                f"no slices selected in {work} (fold={self.fold}, split={self.split}, variant={self.variant})"
            )
        logger.info(
            "GITractDataset %s fold=%s %s/%s: %d slices", work, self.fold, self.split, self.variant, len(data_list)
        )
        return data_list


@TRANSFORMS.register_module()
class LoadGIStack(BaseTransform):
    """Read the 2.5D stacks and (optionally) the ``C``-channel mask of one slice from the memory-mapped WORK arrays.

    Adds ``img`` float32 ``(H, W, channels x K)`` (``K`` image channels of the WORK's ``dataset.json``, each stack
    normalised on its own, channel 0's stack first), ``gt_masks`` uint8 ``(H, W, C)`` (0/1, the dataset's class
    order), ``ori_shape`` and ``img_shape``.

    Args:
        stride: step between stacked slices (1st place: 2).
        channels: stacked slices per image channel, odd (3 or 5).
        norm: normalisation: a mode of ``segmenters.mm.stacks.NORM_MODES`` (default ``max``: divide by the stack's
            max) or a dict such as the planner's CT scheme ``dict(mode="ct", clip=(lo, hi), mean=m, std=s)``
            (:func:`segmenters.mm.stacks.normalise_stack`).
        with_mask: also load the mask.
    """

    def __init__(self, stride: int = 2, channels: int = 3, norm: Norm = "max", with_mask: bool = True) -> None:
        norm = check_norm(norm, where="LoadGIStack norm")
        self.stride, self.channels, self.norm, self.with_mask = int(stride), int(channels), norm, with_mask
        self._vmax: dict[tuple[str, str, int], float] = {}
        self._info: dict[str, DatasetInfo] = {}

    def _dataset(self, work: str) -> DatasetInfo:
        if work not in self._info:
            self._info[work] = read_dataset(work)
        return self._info[work]

    def transform(self, results: dict) -> dict:
        work, cd, z = results["work"], results["case_day"], int(results["z"])
        info = self._dataset(work)
        stacks = []
        for k in range(info.num_channels):
            vol = load_volume(work, cd, channel=k)
            vmax = None
            if norm_mode(self.norm) == "volume_max":
                key = (work, cd, k)
                if key not in self._vmax:
                    self._vmax[key] = float(vol.max())
                vmax = self._vmax[key]
            stacks.append(read_stack(vol, z, self.stride, self.channels, self.norm, vmax, channel=k))
        img = stacks[0] if len(stacks) == 1 else np.concatenate(stacks, axis=2)
        results["img"] = img
        if self.with_mask:
            results["gt_masks"] = np.ascontiguousarray(
                info.unpack(np.asarray(load_mask(work, cd)[z])).transpose(1, 2, 0)
            )
        results["ori_shape"] = img.shape[:2]
        results["img_shape"] = img.shape[:2]
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stride={self.stride}, channels={self.channels}, norm={self.norm!r})"


@TRANSFORMS.register_module()
class GICropBox(BaseTransform):
    """Crop ``img`` and ``gt_masks`` to ``results['box']`` (``x0, y0, x1, y1``, x1/y1 exclusive, inside the
    image; ``gating.crop.crop``); no box = whole image."""

    def transform(self, results: dict) -> dict:
        box = results.get("box")
        if box is None:
            return results
        # gating.crop works on (..., H, W): crop channels-first views of the channels-last arrays
        results["img"] = crop(results["img"].transpose(2, 0, 1), box).transpose(1, 2, 0)
        if "gt_masks" in results:
            results["gt_masks"] = crop(results["gt_masks"].transpose(2, 0, 1), box).transpose(1, 2, 0)
        results["img_shape"] = results["img"].shape[:2]
        return results


@TRANSFORMS.register_module()
class GIResize(BaseTransform):
    """Resize ``img`` (bilinear) and ``gt_masks`` (nearest) to ``size`` = ``(H, W)``."""

    def __init__(self, size: Sequence[int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def transform(self, results: dict) -> dict:
        results["img"] = resize_image(results["img"], self.size)
        if "gt_masks" in results:
            results["gt_masks"] = resize_image(results["gt_masks"], self.size, nearest=True)
        results["img_shape"] = self.size
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def build_albu(cfg: dict | A.BasicTransform) -> A.BasicTransform:
    """Build an albumentations transform from ``dict(type='Name', **kwargs)``; nested ``transforms`` lists
    (``OneOf``, ``Compose``, ...) are built recursively."""
    if not isinstance(cfg, dict):
        return cfg
    args = dict(cfg)
    name = args.pop("type")
    cls = getattr(A, name, None)
    if cls is None:
        import difflib

        close = difflib.get_close_matches(name, [n for n in dir(A) if n[:1].isupper()], n=3)
        raise ValueError(f"unknown albumentations transform {name!r}; close names: {close}")
    if "transforms" in args:
        args["transforms"] = [build_albu(t) for t in args["transforms"]]
    return cls(**args)


@TRANSFORMS.register_module()
class AlbuSeg(BaseTransform):
    """Apply one albumentations pipeline to ``img`` and the ``C``-channel ``gt_masks`` together.

    albumentations draws from a generator of its own, seeded from the operating system unless told otherwise: in each
    process (the main one, each dataloader worker) it is seeded once from numpy's global generator, which mmengine
    seeds (``randomness.seed``, one seed per worker), so a run's augmentations are the same every time it runs.

    Args:
        transforms: list of ``dict(type='HorizontalFlip', p=0.5)``-style configs (nested ``transforms`` for
            ``OneOf``); geometric transforms move image and mask with the same parameters.
        p: probability of applying the whole pipeline.
    """

    def __init__(self, transforms: Sequence[dict], p: float = 1.0) -> None:
        self.transforms_cfg = list(transforms)
        self.aug = A.Compose([build_albu(t) for t in transforms], p=p)
        self._seeded_in: int | None = None  # the process whose global generator seeded ``aug``

    def transform(self, results: dict) -> dict:
        if self._seeded_in != os.getpid():
            self.aug.set_random_seed(int(np.random.randint(0, 2**31 - 1)))
            self._seeded_in = os.getpid()
        kwargs = dict(image=results["img"])
        if "gt_masks" in results:
            kwargs["mask"] = results["gt_masks"]
        out = self.aug(**kwargs)
        results["img"] = np.ascontiguousarray(out["image"], dtype=np.float32)
        if "gt_masks" in results:
            results["gt_masks"] = np.ascontiguousarray(out["mask"], dtype=np.uint8)
        results["img_shape"] = results["img"].shape[:2]
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms_cfg})"


@TRANSFORMS.register_module()
class PackGIInputs(BaseTransform):
    """Pack ``img`` as a float32 ``(planes, H, W)`` tensor and ``gt_masks`` as ``gt_sem_seg`` ``(C, H, W)`` uint8."""

    META_KEYS = ("id", "case_day", "z", "depth", "ori_shape", "img_shape", "box", "height", "width")

    def transform(self, results: dict) -> dict:
        img = torch.from_numpy(np.ascontiguousarray(results["img"].transpose(2, 0, 1), dtype=np.float32))
        sample = SegDataSample()
        if "gt_masks" in results:
            gt = torch.from_numpy(np.ascontiguousarray(results["gt_masks"].transpose(2, 0, 1)))
            sample.gt_sem_seg = PixelData(data=gt)
        meta = {k: results[k] for k in self.META_KEYS if k in results}
        meta["img_shape"] = tuple(img.shape[1:])
        meta["ori_shape"] = tuple(img.shape[1:])  # metrics compare at the network size
        sample.set_metainfo(meta)
        return dict(inputs=img, data_samples=sample)
