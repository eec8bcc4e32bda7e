"""The region-of-interest crop: a YOLO detector's boxes, smoothed along z, and exact crop / paste-back.

Boxes are ``x0, y0, x1, y1`` in full-frame pixels with ``x1``/``y1`` exclusive, so a box covers
``image[y0:y1, x0:x1]`` and ``(0, 0, W, H)`` is the whole image.

Pure functions (no model): :func:`crop`, :func:`paste`, :func:`crop_resize`, :func:`paste_resize`,
:func:`smooth_boxes`, :func:`expand_boxes`, :func:`clip_boxes`. A prediction made on ``crop(image, box)``
returns to the full frame with ``paste(pred, box, (H, W))``: the crop region holds the prediction exactly,
everything outside is zero. Models that run at a fixed input size use :func:`crop_resize` and
:func:`paste_resize` (bilinear both ways).

:class:`Detector` wraps an ultralytics YOLO model trained by ``tools/train_yolo.py``: one box per slice,
predicted in batches on 8-bit slices made like the export's PNGs (:func:`data_prep.volumes.to_uint8`),
smoothed across the neighbouring slices of the case-day (median over ``±k``), expanded by a margin, and
replaced by the whole image where nothing is found (counted, logged; a whole case-day without a box warns).

>>> img = np.arange(20).reshape(4, 5)
>>> box = (1, 1, 4, 3)
>>> crop(img, box).shape
(2, 3)
>>> back = paste(crop(img, box), box, (4, 5))
>>> bool((back[1:3, 1:4] == img[1:3, 1:4]).all()), int(back.sum() - img[1:3, 1:4].sum())
(True, 0)
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "Detector",
    "clip_boxes",
    "crop",
    "crop_resize",
    "expand_boxes",
    "full_box",
    "paste",
    "predict_boxes_work",
    "paste_resize",
    "read_boxes",
    "smooth_boxes",
    "write_boxes",
    "yolo_offline_env",
]

BoxLike = Sequence[int] | np.ndarray


def full_box(size: tuple[int, int]) -> np.ndarray:
    """The box of the whole image ``(H, W)``: ``int64 [0, 0, W, H]``."""
    h, w = size
    return np.array([0, 0, w, h], dtype=np.int64)


def _check_box(box: BoxLike, size: tuple[int, int]) -> tuple[int, int, int, int]:
    b = np.asarray(box).ravel()
    if b.shape != (4,):
        raise ValueError(f"a box is 4 numbers x0, y0, x1, y1, got {np.asarray(box).tolist()}")
    x0, y0, x1, y1 = (int(v) for v in b)
    h, w = size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(
            f"box {[x0, y0, x1, y1]} is not a non-empty box inside an image of H x W = {h} x {w} "
            "(need 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H; x1/y1 are exclusive)"
        )
    return x0, y0, x1, y1


def clip_boxes(boxes: np.ndarray, size: tuple[int, int], min_size: int = 1) -> np.ndarray:
    """Round boxes to integers and clip them into an image of ``size = (H, W)``, each at least ``min_size`` wide/high.

    Args:
        boxes: ``(N, 4)`` or ``(4,)`` float or int ``x0, y0, x1, y1``.
        size: ``(H, W)``.
        min_size: minimal width and height after clipping (capped by the image size).

    Returns:
        ``int64`` boxes of the same shape; always valid for :func:`crop`.
    """
    h, w = size
    b = np.asarray(boxes, dtype=np.float64)
    single = b.ndim == 1
    b = np.atleast_2d(b).copy()
    x0 = np.clip(np.floor(b[:, 0]), 0, w - 1)
    y0 = np.clip(np.floor(b[:, 1]), 0, h - 1)
    x1 = np.clip(np.ceil(b[:, 2]), 1, w)
    y1 = np.clip(np.ceil(b[:, 3]), 1, h)
    mw, mh = min(min_size, w), min(min_size, h)
    # Grow boxes thinner than the minimum around their centre, then shift them back inside.
    for lo, hi, m, lim in ((x0, x1, mw, w), (y0, y1, mh, h)):
        short = hi - lo < m
        if short.any():
            c = (lo[short] + hi[short]) / 2
            new_lo = np.clip(np.floor(c - m / 2), 0, lim - m)
            lo[short] = new_lo
            hi[short] = new_lo + m
    out = np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)
    return out[0] if single else out


def expand_boxes(
    boxes: np.ndarray, size: tuple[int, int], margin_frac: float = 0.1, margin_px: int = 0, min_size: int = 1
) -> np.ndarray:
    """Expand boxes by ``margin_frac`` of their width/height plus ``margin_px`` pixels on every side, then clip.

    Args:
        boxes: ``(N, 4)`` or ``(4,)`` ``x0, y0, x1, y1``.
        size: ``(H, W)`` of the image.
        margin_frac: fraction of the box width (height) added left and right (top and bottom), >= 0.
        margin_px: pixels added on every side, >= 0.
        min_size: see :func:`clip_boxes`.

    Returns:
        ``int64`` boxes inside the image.

    >>> expand_boxes(np.array([10, 10, 20, 30]), (40, 40), margin_frac=0.1, margin_px=2).tolist()
    [7, 6, 23, 34]
    """
    if margin_frac < 0 or margin_px < 0:
        raise ValueError(f"margins must be >= 0, got margin_frac={margin_frac}, margin_px={margin_px}")
    b = np.asarray(boxes, dtype=np.float64)
    single = b.ndim == 1
    b = np.atleast_2d(b).copy()
    dx = (b[:, 2] - b[:, 0]) * margin_frac + margin_px
    dy = (b[:, 3] - b[:, 1]) * margin_frac + margin_px
    b += np.stack([-dx, -dy, dx, dy], axis=1)
    out = clip_boxes(b, size, min_size)
    return out[0] if single else out


def smooth_boxes(boxes: np.ndarray, found: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of the found boxes over the ``±k`` neighbouring slices, coordinate by coordinate.

    A slice without a box takes the median of the found boxes in its window; a slice with no found box in its
    window stays not found (the caller falls back to the whole image).

    Args:
        boxes: ``float (D, 4)`` boxes of one case-day (values of not-found rows are ignored).
        found: ``bool (D,)``: a box was detected on that slice.
        k: half window (0: no smoothing, not-found slices stay not found).

    Returns:
        ``(float64 (D, 4), bool (D,))``: smoothed boxes and whether each slice has one.

    >>> b = np.array([[0, 0, 10, 10], [0, 0, 50, 50], [0, 0, 12, 12], [0, 0, 0, 0]], float)
    >>> s, ok = smooth_boxes(b, np.array([True, True, True, False]), 1)
    >>> s[:, 2].tolist(), ok.tolist()
    ([30.0, 12.0, 31.0, 12.0], [True, True, True, True])
    """
    if k < 0:
        raise ValueError(f"box smoothing half window must be >= 0, got {k}")
    b = np.asarray(boxes, dtype=np.float64)
    f = np.asarray(found, dtype=bool)
    d = b.shape[0]
    out = np.zeros_like(b)
    ok = np.zeros(d, dtype=bool)
    for i in range(d):
        lo, hi = max(0, i - k), min(d, i + k + 1)
        sel = f[lo:hi]
        if sel.any():
            out[i] = np.median(b[lo:hi][sel], axis=0)
            ok[i] = True
    return out, ok


def crop(image: np.ndarray, box: BoxLike) -> np.ndarray:
    """The box region of an image: ``image[..., y0:y1, x0:x1]`` (a view for numpy, works on torch tensors too).

    Args:
        image: ``(..., H, W)`` array.
        box: ``x0, y0, x1, y1`` inside the image (x1/y1 exclusive).

    Raises:
        ValueError: the box is empty or leaves the image.
    """
    x0, y0, x1, y1 = _check_box(box, tuple(image.shape[-2:]))
    return image[..., y0:y1, x0:x1]


def paste(probs: Any, box: BoxLike, size: tuple[int, int]) -> Any:
    """Put a crop-sized prediction back into the full frame; zero outside the box.

    Args:
        probs: ``(..., y1 - y0, x1 - x0)`` numpy array or torch tensor predicted on ``crop(image, box)``.
        box: the box used for the crop.
        size: full frame ``(H, W)``.

    Returns:
        ``(..., H, W)`` of the same type, dtype and device as ``probs``.

    Raises:
        ValueError: the prediction's size differs from the box's.
    """
    x0, y0, x1, y1 = _check_box(box, size)
    if tuple(probs.shape[-2:]) != (y1 - y0, x1 - x0):
        raise ValueError(
            f"prediction of size {tuple(probs.shape[-2:])} does not fit box {[x0, y0, x1, y1]} "
            f"of size {(y1 - y0, x1 - x0)} (H, W); resize it first or use paste_resize"
        )
    shape = tuple(probs.shape[:-2]) + tuple(size)
    if isinstance(probs, np.ndarray):
        out = np.zeros(shape, dtype=probs.dtype)
    else:  # torch.Tensor
        out = probs.new_zeros(shape)
    out[..., y0:y1, x0:x1] = probs
    return out


def _resize_chw(x: np.ndarray, out_hw: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize the last two axes of ``(..., H, W)`` with OpenCV."""
    lead = x.shape[:-2]
    h, w = x.shape[-2:]
    flat = x.reshape((-1, h, w))
    work_dtype = x.dtype
    if x.dtype == np.float16 or x.dtype == bool or x.dtype == np.float64:
        flat = flat.astype(np.float32)
        work_dtype = np.float32
    # cv2 resizes (h, w, c) with up to 512 channels at once.
    res = [
        cv2.resize(
            np.ascontiguousarray(flat[i : i + 512].transpose(1, 2, 0)), out_hw[::-1], interpolation=interpolation
        )
        for i in range(0, flat.shape[0], 512)
    ]
    res = [r[..., None] if r.ndim == 2 else r for r in res]
    out = np.concatenate(res, axis=2).transpose(2, 0, 1).astype(work_dtype, copy=False)
    return out.reshape(lead + tuple(out_hw))


def crop_resize(
    image: np.ndarray, box: BoxLike, out_size: tuple[int, int], interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """Crop ``image`` to ``box`` and resize the crop to ``out_size = (h, w)``.

    Args:
        image: ``(..., H, W)`` numpy array (uint8, uint16, float32 or bool; bool/float16/float64 come back float32).
        box: ``x0, y0, x1, y1`` inside the image.
        out_size: ``(h, w)`` of the model input.
        interpolation: OpenCV flag (``cv2.INTER_NEAREST`` for masks).

    Returns:
        ``(..., h, w)`` array.
    """
    return _resize_chw(np.asarray(crop(image, box)), tuple(out_size), interpolation)


def paste_resize(probs: Any, box: BoxLike, size: tuple[int, int]) -> Any:
    """Resize a fixed-size prediction made on ``crop_resize(image, box, ...)`` to the box and paste it back.

    Args:
        probs: ``(..., h, w)`` numpy array or torch tensor (bilinear resize; torch stays on its device).
        box: the box used for the crop.
        size: full frame ``(H, W)``.

    Returns:
        ``(..., H, W)`` of the same type as ``probs`` (numpy float16/float64 come back float32), zero outside the box.
    """
    x0, y0, x1, y1 = _check_box(box, size)
    target = (y1 - y0, x1 - x0)
    if isinstance(probs, np.ndarray):
        resized = probs if tuple(probs.shape[-2:]) == target else _resize_chw(probs, target, cv2.INTER_LINEAR)
    else:
        import torch.nn.functional as F

        lead = tuple(probs.shape[:-2])
        flat = probs.reshape((1, -1) + tuple(probs.shape[-2:]))
        resized = F.interpolate(flat.float(), size=target, mode="bilinear", align_corners=False)
        resized = resized.to(probs.dtype).reshape(lead + target)
    return paste(resized, box, size)


def yolo_offline_env(run_dir: str | os.PathLike | None = None) -> Path:
    """Keep ultralytics offline and its settings inside ``run_dir`` (set before ultralytics is imported).

    Sets ``YOLO_OFFLINE=1`` and, unless already set, ``YOLO_CONFIG_DIR`` and ``MPLCONFIGDIR`` to folders
    under ``run_dir`` (a folder under the system temporary directory when ``run_dir`` is None).

    Returns:
        the ultralytics config folder in use.
    """
    base = Path(run_dir) if run_dir is not None else Path(tempfile.gettempdir()) / "gitract_yolo"
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(base / "ultralytics_cfg"))
    os.environ.setdefault("MPLCONFIGDIR", str(base / "mplconfig"))
    for key in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    return Path(os.environ["YOLO_CONFIG_DIR"])


@dataclass
class Detector:
    """A trained YOLO crop detector: one box per slice, smoothed, expanded, with whole-image fallback.

    Build it with :meth:`Detector.load`. Attributes after :meth:`predict_boxes`: ``last_stats``
    (``{"slices", "detected", "fallback"}``) and ``last_fallback`` (``bool (D,)``) of the last volume.

    Attributes:
        model: the ultralytics ``YOLO`` model.
        device: torch device string (``"cpu"``, ``"cuda"``, ``"cuda:0"``, ...).
        imgsz: inference size (default: the size the model was trained at).
        conf: minimal box confidence.
        smooth_k: median over ``±smooth_k`` slices (0: none).
        margin_frac, margin_px: expansion after smoothing (see :func:`expand_boxes`).
        min_size: minimal box side in pixels after expansion.
    """

    model: Any
    device: str = "cpu"
    imgsz: int = 384
    conf: float = 0.25
    smooth_k: int = 2
    margin_frac: float = 0.1
    margin_px: int = 4
    min_size: int = 32
    last_stats: dict[str, int] = field(default_factory=dict)
    last_fallback: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @classmethod
    def load(cls, weights: str | os.PathLike, device: str = "cpu", **kwargs: Any) -> Detector:
        """Load ``best.pt``/``last.pt`` written by ``tools/train_yolo.py`` (a local file; nothing is downloaded).

        Args:
            weights: path of the ultralytics checkpoint.
            device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            **kwargs: any other dataclass field (``imgsz``, ``conf``, ``smooth_k``, ``margin_frac``, ...).

        Raises:
            FileNotFoundError: ``weights`` does not exist (a missing ``.pt`` would otherwise be downloaded).
        """
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"detector weights not found: {path}. Train one with `python tools/train_yolo.py --work WORK "
                "--fold K` (it writes {work_dir}/weights/best.pt); weights are never downloaded."
            )
        yolo_offline_env(None)
        from unittest import mock

        import ultralytics.nn.tasks as yolo_tasks
        from ultralytics import YOLO

        # weights_only loading (ultralytics' allow-list of its model classes): a .pt file runs no code when loaded
        with mock.patch.object(yolo_tasks, "SAFE_LOAD", True):
            model = YOLO(str(path), task="detect")
        if "imgsz" not in kwargs:
            train_args = getattr(model.model, "args", None) or {}
            imgsz = train_args.get("imgsz") if isinstance(train_args, dict) else getattr(train_args, "imgsz", None)
            if isinstance(imgsz, int):
                kwargs["imgsz"] = imgsz
        return cls(model=model, device=str(device), **kwargs)

    def _detect(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Best box per image: ``(float (N, 4), bool (N,))``."""
        import torch

        threads = torch.get_num_threads()
        try:
            results = self.model.predict(
                images, imgsz=self.imgsz, conf=self.conf, device=self.device, verbose=False, max_det=1, save=False
            )
        finally:
            torch.set_num_threads(threads)  # ultralytics resets the process-wide torch thread count on CPU
        boxes = np.zeros((len(images), 4), dtype=np.float64)
        found = np.zeros(len(images), dtype=bool)
        for i, r in enumerate(results):
            if r.boxes is not None and len(r.boxes):
                j = int(r.boxes.conf.argmax())
                boxes[i] = r.boxes.xyxy[j].detach().cpu().numpy()
                found[i] = True
        return boxes, found

    def predict_raw(self, volume: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Unsmoothed best box per slice: ``(float64 (D, 4), bool (D,))`` in full-frame pixels."""
        vol = np.asarray(volume)
        if vol.ndim != 3:
            raise ValueError(f"volume must be uint16 (D, H, W) of one case-day, got shape {vol.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from data_prep.volumes import to_uint8

        boxes, found = [], []
        for s in range(0, vol.shape[0], batch_size):
            imgs = [np.repeat(to_uint8(vol[z])[:, :, None], 3, axis=2) for z in range(s, min(s + batch_size, len(vol)))]
            b, f = self._detect(imgs)
            boxes.append(b)
            found.append(f)
        if not boxes:
            return np.zeros((0, 4)), np.zeros(0, dtype=bool)
        return np.concatenate(boxes), np.concatenate(found)

    def predict_boxes(self, volume: np.ndarray, batch_size: int = 32, case_day: str = "") -> np.ndarray:
        """One crop box per slice of a case-day volume.

        Args:
            volume: ``uint16 (D, H, W)``, z in manifest order.
            batch_size: slices per detector call.
            case_day: name used in log messages only.

        Returns:
            ``int64 (D, 4)`` ``x0, y0, x1, y1`` (smoothed over ``±smooth_k``, expanded, whole image where nothing
            was found). ``self.last_stats`` holds the counts.
        """
        d, h, w = np.asarray(volume).shape
        raw, found = self.predict_raw(volume, batch_size)
        return self.finalize(raw, found, (h, w), case_day=case_day)

    def finalize(self, raw: np.ndarray, found: np.ndarray, size: tuple[int, int], case_day: str = "") -> np.ndarray:
        """Smooth, expand and fall back (the post-processing of :meth:`predict_boxes`), updating ``last_stats``."""
        d = raw.shape[0]
        smoothed, ok = smooth_boxes(raw, found, self.smooth_k)
        boxes = np.tile(full_box(size), (d, 1))
        if ok.any():
            boxes[ok] = expand_boxes(smoothed[ok], size, self.margin_frac, self.margin_px, self.min_size)
        n_fb = int((~ok).sum())
        self.last_stats = {"slices": d, "detected": int(found.sum()), "fallback": n_fb}
        self.last_fallback = ~ok
        name = case_day or "volume"
        if d and not found.any():
            logger.warning("detector found no box on any of the %d slices of %s: using the whole image", d, name)
        elif n_fb:
            logger.info("detector: %d of %d slices of %s fall back to the whole image", n_fb, d, name)
        return boxes


def write_boxes(path: str | os.PathLike, ids: Sequence[str], boxes: np.ndarray, fallback: np.ndarray) -> Path:
    """Write ``boxes.csv`` (``id, x0, y0, x1, y1, fallback``, docs/contracts.md) atomically.

    Args:
        path: csv path.
        ids: slice ids, one per box.
        boxes: ``int (N, 4)`` full-frame boxes (x1/y1 exclusive).
        fallback: ``bool (N,)``: the whole image was used.
    """
    import io

    import pandas as pd

    from common.io import atomic_write_bytes

    boxes = np.asarray(boxes, dtype=np.int64)
    if boxes.shape != (len(ids), 4) or len(fallback) != len(ids):
        raise ValueError(f"need {len(ids)} boxes (N, 4) and fallback flags, got {boxes.shape} and {len(fallback)}")
    df = pd.DataFrame(boxes, columns=["x0", "y0", "x1", "y1"])
    df.insert(0, "id", list(ids))
    df["fallback"] = np.asarray(fallback, dtype=np.int64)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_bytes(path, buf.getvalue().encode())
    return Path(path)


def read_boxes(path: str | os.PathLike) -> dict[str, tuple[int, int, int, int]]:
    """Read a crop-box CSV (``id, x0, y0, x1, y1``, x1/y1 exclusive) into ``{slice id: box}``.

    Raises:
        FileNotFoundError / ValueError: missing file or columns.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"crop boxes not found: {path} (expected a CSV with columns id, x0, y0, x1, y1)")
    df = pd.read_csv(path)
    need = {"id", "x0", "y0", "x1", "y1"}
    if not need <= set(df.columns):
        raise ValueError(f"{path} must have columns {sorted(need)}, got {list(df.columns)}")
    return {r.id: (int(r.x0), int(r.y0), int(r.x1), int(r.y1)) for r in df.itertuples(index=False)}


def predict_boxes_work(
    detector: Detector,
    work: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 32,
    case_days: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Crop boxes for every slice of a WORK folder, written to ``out`` (``boxes.csv``).

    Returns:
        totals ``{"slices", "detected", "fallback", "case_days_without_box"}``.
    """
    from data_prep.work import load_volume, read_manifest

    work = Path(work)
    man = read_manifest(work)
    if case_days is not None:
        man = man[man["case_day"].isin(set(case_days))]
    groups = list(man.groupby("case_day", sort=False))
    if progress:
        from tqdm import tqdm

        groups = tqdm(groups, desc="detector", unit="case-day")
    ids: list[str] = []
    all_boxes, all_fb = [], []
    totals = {"slices": 0, "detected": 0, "fallback": 0, "case_days_without_box": 0}
    for cd, rows in groups:
        vol = load_volume(work, cd)
        boxes = detector.predict_boxes(vol, batch_size, case_day=str(cd))
        z = rows["z"].to_numpy(int)
        ids.extend(rows["id"].tolist())
        all_boxes.append(boxes[z])
        all_fb.append(detector.last_fallback[z])
        for k in ("slices", "detected", "fallback"):
            totals[k] += detector.last_stats[k]
        totals["case_days_without_box"] += int(detector.last_stats["detected"] == 0)
    write_boxes(out, ids, np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4)), np.concatenate(all_fb))
    logger.info("boxes for %d slices -> %s (%d fell back to the whole image)", len(ids), out, totals["fallback"])
    return totals
