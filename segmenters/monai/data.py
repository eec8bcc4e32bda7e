"""Datasets and the patch sampler of the 3D segmenters, on data_prep's WORK folder and its 3D export.

Any dataset: the classes, their label kind, the image channels (``K``) and each volume's spacing come from the
WORK's description (``WORK/dataset.json``, :func:`data_prep.work.read_dataset`; the Kaggle layout without one).

Registered in mmengine's root registries (the 3D configs set no default scope):

- ``CaseDayPatchDataset`` (``DATASETS``): the case-days of a fold's training side (``splits.json``, ``variant``),
  preprocessed once (normalised, resampled: :func:`segmenters.monai.volumes.resample_plan`) and cached in memory
  (MONAI ``CacheDataset``); each sample is ``num_samples`` random patches of the current ``roi_size`` around labels
  (``RandCropByPosNegLabeld`` after padding to the patch), flipped and intensity-jittered. ``roi_size`` changes
  during training (:class:`segmenters.monai.hooks.PatchStageHook`).
- ``CaseDayVolumeDataset`` (``DATASETS``): whole case-days of a fold's val side (or every case-day of the export),
  one per sample, with the original-size mask for scoring.
- ``CaseDayPatchSampler`` (``DATA_SAMPLERS``): an infinite shuffled stream of case-day indices in which every draw
  carries its own random seed, so that the patches of iteration ``k`` depend only on ``(seed, rank, k)``: the same
  with or without dataloader workers, prefetching, stage switches and ``--resume``.

Under torch distributed each rank of ``CaseDayPatchDataset`` keeps only its share of the case-days (every
``world``-th, padded to equal length), so the cache of a node does not grow with its GPUs; the sampler then
shuffles that share locally.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS, DATASETS
from mmengine.structures import BaseDataElement
from monai import transforms as T
from monai.data import CacheDataset
from torch.utils.data import Dataset, Sampler

from data_prep.dataset import DatasetInfo
from data_prep.exports import read_datalist
from data_prep.work import SPLITS, check_variant, check_work, fold_case_days, read_dataset, read_splits
from segmenters.monai.volumes import check_roi, load_case_day, preprocess_image, preprocess_label, to_dict


def fold_entries(work: str | os.PathLike, fold: int, split: str, variant: str = "all") -> list[dict[str, Any]]:
    """Datalist entries (:func:`data_prep.exports.read_datalist`) of a fold's ``train`` side (of ``variant``), its
    ``val`` side, or ``all`` case-days of the export, sorted by case-day.

    Raises:
        FileNotFoundError: WORK not prepared, no splits, or no 3D export of the fold (the messages name the commands).
        ValueError: unknown split / variant / fold (before the export is read), corrupt splits (a case-day on both
            sides of the fold); case-days of the fold missing from the export.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_variant(variant)
    work = check_work(work, need_masks=True, need_splits=True)
    train, val = fold_case_days(read_splits(work), int(fold), variant)  # an unknown fold raises here
    entries = read_datalist(work, int(fold))
    if split == "all":
        return [entries[cd] for cd in sorted(entries)]
    wanted = train if split == "train" else val
    missing = [cd for cd in wanted if cd not in entries]
    if missing:
        raise ValueError(
            f"{len(missing)} case-days of fold {fold} ({split}) are not in the 3D export of {work} (e.g. "
            f"{missing[:3]}); re-run `python -m data_prep export 3d --work {work} --fold {fold} --overwrite`"
        )
    return [entries[cd] for cd in wanted]


class LoadCaseDayd(T.Transform):
    """Deterministic dict transform (cached by MONAI's ``CacheDataset``): a datalist entry
    ``{"case_day", "image", "label", "spacing"}`` -> ``{"image": float32 (K, h, w, d), "label": uint8 (C, h, w, d),
    "case_day"}``, normalised and resampled (the label stays uint8 in the cache). A MONAI ``Transform`` that is not
    ``Randomizable``, so ``CacheDataset`` caches its output.

    Args:
        work: the WORK folder (volumes and masks are read through :mod:`data_prep.work`).
        norm, resample: see :func:`segmenters.monai.volumes.preprocess_image` (None: its defaults).
        dataset: the WORK's description (None: ``read_dataset(work)``).
    """

    def __init__(
        self,
        work: str | os.PathLike,
        norm: Mapping[str, Any] | None,
        resample: Mapping[str, Any] | None,
        dataset: DatasetInfo | None = None,
    ) -> None:
        self.work = str(work)
        self.norm, self.resample = to_dict(norm), to_dict(resample)
        self.dataset = read_dataset(self.work) if dataset is None else dataset

    def __call__(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        cd = str(entry["case_day"])
        channels, mask, spacing = load_case_day(self.work, cd, entry, self.dataset)
        if mask is None:
            raise FileNotFoundError(f"no mask for {cd} in {self.work}: training needs labels")
        image = preprocess_image(channels, self.norm, self.resample, spacing)
        label = preprocess_label(np.asarray(mask), image.shape[1:], self.dataset).to(torch.uint8)
        return {"image": image, "label": label, "case_day": cd}


@DATASETS.register_module()
class CaseDayPatchDataset(Dataset):
    """Random patches of the cached, preprocessed case-days of a fold's training side.

    A sample is ``{"inputs": float32 (S, K, h, w, d), "data_samples": {"labels": uint8 (S, C, h, w, d)}}`` with
    ``S = num_samples`` patches of ``roi_size = (h, w, d)`` (``default_collate`` makes fixed-size batches of them).
    Keys are case-day indices, or ``(index, seed)`` pairs from :class:`CaseDayPatchSampler` (the random
    transforms are then seeded with ``seed``: the patches depend on the draw only).

    Args:
        work: data_prep's WORK folder with ``splits/splits.json`` and the 3D export of ``fold``.
        fold: fold index in ``splits.json``.
        variant: training side of the fold (``all``, ``notail``, ``noanno``; the 3D models train on ``all``).
        roi_size: patch ``(H, W, D)`` (:class:`segmenters.monai.hooks.PatchStageHook` changes it per stage).
        norm, resample: preprocessing (:func:`segmenters.monai.volumes.preprocess_image`; None: its defaults).
        cache_rate: fraction of the case-days kept preprocessed in memory (about 66 MB per case-day at
            256 x 256 x 144); the others are preprocessed at each draw.
        pos, neg: ratio of patch centres on / off labels (``RandCropByPosNegLabeld``).
        num_samples: patches per case-day draw.
        flip_axes: spatial axes flipped at random (``0`` = H, ``1`` = W, ``2`` = D), each with ``flip_prob``.
        intensity_prob: probability of each intensity jitter (scale by ``1 +- scale_intensity``, shift by
            ``+- shift_intensity``); 0 turns them off.
        shard_by_rank: under torch distributed, keep only this rank's share of the case-days.
        case_days: optional subset of the fold's training case-days.

    Attributes:
        metainfo: ``classes``, ``label_kind`` and ``channels`` of the WORK's ``dataset.json``.
    """

    def __init__(
        self,
        work: str,
        fold: int = 0,
        variant: str = "all",
        roi_size: Sequence[int] = (160, 160, 80),
        norm: Mapping[str, Any] | None = None,
        resample: Mapping[str, Any] | None = None,
        cache_rate: float = 1.0,
        pos: float = 1.0,
        neg: float = 1.0,
        num_samples: int = 1,
        flip_axes: Sequence[int] = (1, 2),
        flip_prob: float = 0.5,
        intensity_prob: float = 0.5,
        scale_intensity: float = 0.1,
        shift_intensity: float = 0.1,
        shard_by_rank: bool = True,
        case_days: Sequence[str] | None = None,
    ) -> None:
        if not 0.0 <= float(cache_rate) <= 1.0:
            raise ValueError(f"train_dataloader.dataset.cache_rate must be in [0, 1], got {cache_rate}")
        if int(num_samples) < 1:
            raise ValueError(f"train_dataloader.dataset.num_samples must be >= 1, got {num_samples}")
        bad_axes = [a for a in flip_axes if int(a) not in (0, 1, 2)]
        if bad_axes:
            raise ValueError(f"train_dataloader.dataset.flip_axes must be among 0 (H), 1 (W), 2 (D), got {bad_axes}")
        self.work, self.fold, self.variant = str(work), int(fold), variant
        self.augment = dict(
            pos=float(pos),
            neg=float(neg),
            num_samples=int(num_samples),
            flip_axes=tuple(int(a) for a in flip_axes),
            flip_prob=float(flip_prob),
            intensity_prob=float(intensity_prob),
            scale_intensity=float(scale_intensity),
            shift_intensity=float(shift_intensity),
        )
        entries = fold_entries(self.work, self.fold, "train", variant)
        if case_days is not None:
            keep = set(case_days)
            entries = [e for e in entries if e["case_day"] in keep]
        if not entries:
            raise ValueError(f"no training case-days in fold {fold} of {work} (variant {variant!r})")
        rank, world = get_dist_info()
        self.sharded = bool(shard_by_rank) and world > 1
        if self.sharded:  # every rank caches only its share, padded so that all ranks hold as many
            n = -(-len(entries) // world) * world
            entries = [entries[i % len(entries)] for i in range(n)][rank::world]
        self.case_days = [str(e["case_day"]) for e in entries]
        info = read_dataset(self.work)
        self.metainfo = {"classes": info.classes, "label_kind": info.label_kind, "channels": info.channels}
        load = LoadCaseDayd(self.work, norm, resample, info)
        # copy_cache=False: the random transforms below never write into their input
        self._cache = CacheDataset(
            entries, load, cache_rate=float(cache_rate), num_workers=None, progress=False, copy_cache=False
        )
        self.roi_size = check_roi(roi_size, {}, "train_dataloader.dataset.roi_size")
        self._augment = self._build_augment(self.roi_size)
        shard = f" (rank {rank} of {world})" if self.sharded else ""
        print_log(
            f"CaseDayPatchDataset fold {self.fold} ({variant}): {len(entries)} case-days{shard}, "
            f"{self._cache.cache_num} cached, patches {self.roi_size}",
            logger="current",
        )

    def _build_augment(self, roi: tuple[int, int, int]) -> T.Compose:
        a = self.augment
        keys = ("image", "label")
        ts: list[Any] = [
            T.SpatialPadd(keys, spatial_size=roi, mode="constant"),
            T.RandCropByPosNegLabeld(
                keys, label_key="label", spatial_size=roi, pos=a["pos"], neg=a["neg"], num_samples=a["num_samples"]
            ),
        ]
        for axis in a["flip_axes"]:
            ts.append(T.RandFlipd(keys, prob=a["flip_prob"], spatial_axis=axis))
        if a["intensity_prob"] > 0:
            ts.append(T.RandScaleIntensityd("image", factors=a["scale_intensity"], prob=a["intensity_prob"]))
            ts.append(T.RandShiftIntensityd("image", offsets=a["shift_intensity"], prob=a["intensity_prob"]))
        ts.append(T.ToTensord(keys, track_meta=False))
        return T.Compose(ts)

    def set_roi_size(self, roi_size: Sequence[int]) -> None:
        """Patch size ``(H, W, D)`` of the samples drawn from now on (in this process: dataloader workers keep
        the copy they started with, see :class:`segmenters.monai.hooks.PatchStageHook`)."""
        roi = check_roi(roi_size, {}, "roi_size")
        if roi != self.roi_size:
            self.roi_size = roi
            self._augment = self._build_augment(roi)

    def __len__(self) -> int:
        return len(self.case_days)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, seed = int(key[0]), int(key[1])
            self._augment.set_random_state(seed=seed)
        else:
            index = int(key)
        patches = self._augment(self._cache[index])
        if isinstance(patches, Mapping):
            patches = [patches]
        image = torch.stack([torch.as_tensor(p["image"]) for p in patches]).float()
        label = torch.stack([torch.as_tensor(p["label"]) for p in patches]).to(torch.uint8)
        return {"inputs": image, "data_samples": {"labels": label}}


@DATASETS.register_module()
class CaseDayVolumeDataset(Dataset):
    """Whole case-days for validation and tests, one per sample.

    A sample is ``{"inputs": float32 (K, h, w, d) preprocessed volume, "data_samples": BaseDataElement}`` whose
    metainfo holds ``case_day``, ``ori_shape = (D, H, W)``, ``spacing`` (``(z, y, x)`` mm) and the dataset's
    ``label_kind`` and ``num_classes``, and whose ``gt_mask`` field is the original-size WORK mask ``(D, H, W)`` (bit
    field or label map, numpy; absent without labels).

    Args:
        work: data_prep's WORK folder with ``splits/splits.json`` and the 3D export of ``fold``.
        fold: fold index in ``splits.json``.
        split: ``val`` (the fold's val side), ``train`` or ``all`` (every case-day of the export).
        norm, resample: preprocessing, as in training (None: the defaults of ``preprocess_image``).
        case_days: optional subset.

    Attributes:
        metainfo: ``classes``, ``label_kind`` and ``channels`` of the WORK's ``dataset.json`` (the val metric reads
            the class names).
    """

    def __init__(
        self,
        work: str,
        fold: int = 0,
        split: str = "val",
        norm: Mapping[str, Any] | None = None,
        resample: Mapping[str, Any] | None = None,
        case_days: Sequence[str] | None = None,
        variant: str = "all",
    ) -> None:
        self.work, self.fold, self.split = str(work), int(fold), split
        self.norm, self.resample = to_dict(norm), to_dict(resample)
        entries = fold_entries(self.work, self.fold, split, variant)
        if case_days is not None:
            keep = set(case_days)
            entries = [e for e in entries if e["case_day"] in keep]
        self.entries = entries
        self.dataset = read_dataset(self.work)
        info = self.dataset
        self.metainfo = {"classes": info.classes, "label_kind": info.label_kind, "channels": info.channels}
        print_log(f"CaseDayVolumeDataset fold {self.fold} ({split}): {len(entries)} case-days", logger="current")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[int(index)]
        cd = str(entry["case_day"])
        channels, mask, spacing = load_case_day(self.work, cd, entry, self.dataset)
        image = preprocess_image(channels, self.norm, self.resample, spacing)
        meta = dict(
            case_day=cd,
            ori_shape=tuple(int(s) for s in channels[0].shape),
            spacing=spacing,
            label_kind=self.dataset.label_kind,
            num_classes=self.dataset.num_classes,
        )
        sample = BaseDataElement(metainfo=meta)
        if mask is not None:
            sample.gt_mask = np.asarray(mask)
        return {"inputs": image, "data_samples": sample}


def draw_seed(seed: int, rank: int, draw: int) -> int:
    """The random seed of the ``draw``-th sample of ``rank`` (a uint32 from ``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank), int(draw)]).generate_state(1)[0])


@DATA_SAMPLERS.register_module()
class CaseDayPatchSampler(Sampler):
    """Infinite sampler of ``(index, seed)`` keys for :class:`CaseDayPatchDataset`.

    Indices come from consecutive shuffled permutations of the dataset (one stream per run: ``seed``), split
    between ranks as mmengine's ``InfiniteSampler`` does (or, on a dataset sharded by rank, each rank's own
    permutations); the ``n``-th draw of a rank carries ``draw_seed(seed, rank, n)``. Iterating again continues the
    stream; :meth:`restart` positions it at any draw (what :class:`segmenters.monai.hooks.PatchStageHook` does on
    ``--resume`` and at stage switches, in the main process, without loading a single patch).

    Args:
        dataset: the dataset (its length; ``sharded`` when it holds only this rank's case-days).
        shuffle: shuffle each pass over the dataset.
        seed: the stream's seed (mmengine passes ``randomness.seed``; None: a random seed shared by the ranks).
    """

    def __init__(self, dataset: Any, shuffle: bool = True, seed: int | None = None) -> None:
        self.rank, self.world_size = get_dist_info()
        self.size = len(dataset)
        if self.size < 1:
            raise ValueError("CaseDayPatchSampler: the dataset is empty")
        self.shuffle = bool(shuffle)
        self.seed = int(sync_random_seed() if seed is None else seed)
        self.local = bool(getattr(dataset, "sharded", False)) or self.world_size == 1
        self._stream = self._draws(0)

    def _indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + (self.rank if self.local and self.world_size > 1 else 0))
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=g).tolist()
            else:
                yield from range(self.size)

    def _draws(self, start: int) -> Iterator[tuple[int, int]]:
        step = 1 if self.local else self.world_size
        first = start * step + (0 if self.local else self.rank)
        for n, index in enumerate(itertools.islice(self._indices(), first, None, step), start):
            yield index, draw_seed(self.seed, self.rank, n)

    def restart(self, draw: int) -> None:
        """Continue the stream at draw number ``draw`` of this rank (iteration ``k`` starts at ``k * batch_size``)."""
        if draw < 0:
            raise ValueError(f"draw must be >= 0, got {draw}")
        self._stream = self._draws(int(draw))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return self._stream

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: one stream for the whole run (mmengine's hooks call it)."""
