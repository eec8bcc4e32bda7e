"""Exports of a prepared WORK folder for the other stages: classifier table, crop boxes, YOLO dataset, 3D lists.

Every export is derived from ``WORK/manifest.csv``, the volumes and masks, and ``WORK/splits/splits.json``; it
is written atomically under ``WORK/exports/``. Running an export again with the same inputs changes nothing;
an existing export that would change is kept unless ``overwrite=True``.

Ground-truth crop boxes (:func:`body_box`) come from the image alone, never from the labels: the body without
the arms. Per slice:

1. scale the slice to 8 bits by its own maximum (:func:`data_prep.volumes.to_uint8`);
2. foreground = pixels above ``min(Otsu's threshold, 20% of the 99th percentile)`` of that 8-bit slice (Otsu
   separates a dark background from the body; the cap keeps the whole body when it fills the frame and Otsu
   would instead split the body from its brightest organs);
3. a morphological opening with an elliptical kernel of diameter ``max(3, 4% of min(H, W))`` (odd) cuts the
   thin bridges that join the arms to the body;
4. the largest 8-connected component of what remains is the body; its bounding box is the crop box;
5. fallback to the whole image when the slice is empty or the component covers less than 1% of it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from common.io import atomic_write_text
from data_prep.volumes import to_uint8
from data_prep.work import (
    class_names,
    exports_dir,
    fold_entry,
    fold_of,
    load_volume,
    mask_path,
    read_dataset,
    read_manifest,
    read_splits,
    volume_path,
)

logger = logging.getLogger(__name__)

#: Slice thickness (mm) of the competition's scans; the file names give only the in-plane spacing.
DEFAULT_Z_SPACING_MM = 3.0
BOX_KERNEL_FRACTION = 0.04
BOX_MIN_AREA_FRACTION = 0.01
BOX_PERCENTILE_FRACTION = 0.2


def _write_once(path: Path, text: str, overwrite: bool) -> Path:
    """Write ``text`` atomically unless ``path`` already holds it; a different file needs ``overwrite``."""
    if path.is_file():
        if path.read_text(encoding="utf-8") == text:
            logger.info("%s is up to date", path)
            return path
        if not overwrite:
            raise FileExistsError(f"{path} exists with other content; pass --overwrite (overwrite=True) to replace it")
    atomic_write_text(path, text)
    logger.info("wrote %s", path)
    return path


def _labelled_manifest(work: Path) -> pd.DataFrame:
    manifest = read_manifest(work)
    if "has_" + read_dataset(work).classes[0] not in manifest.columns:
        raise ValueError(
            f"{work / 'manifest.csv'} has no labels (prepared without train.csv or label volumes); exports need labels"
        )
    return manifest


# ----------------------------------------------------------------------------------------------------- classifier


def classifier_table(
    manifest: pd.DataFrame, splits: dict[str, Any], classes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per-slice presence of each class with the slice's validation fold.

    Args:
        manifest: WORK manifest (``id, case_day, z, has_{class}``).
        splits: the splits dict (``splits.json``).
        classes: the class order (``read_dataset(work).classes``); default the manifest's ``has_`` columns.

    Returns:
        DataFrame ``id, case_day, z, fold`` and one presence column (0/1) per class, named as the class (Kaggle:
        ``large_bowel, small_bowel, stomach``), manifest order.
    """
    if classes is None:
        classes = class_names(manifest)
    folds = fold_of(splits)
    missing = [i for i in manifest["id"] if i not in folds]
    if missing:
        raise ValueError(f"{len(missing)} slice(s) of the manifest are in no fold of splits.json, e.g. {missing[:3]}")
    out = manifest[["id", "case_day", "z"]].copy()
    out["fold"] = manifest["id"].map(folds).astype(np.int64)
    for c in classes:
        out[c] = manifest[f"has_{c}"].astype(np.int64)
    return out.reset_index(drop=True)


def export_classifier(work: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``WORK/exports/classifier.csv`` (see :func:`classifier_table`); returns its path."""
    work = Path(work)
    table = classifier_table(_labelled_manifest(work), read_splits(work), read_dataset(work).classes)
    return _write_once(exports_dir(work) / "classifier.csv", table.to_csv(index=False, lineterminator="\n"), overwrite)


# ---------------------------------------------------------------------------------------------------------- boxes


def body_box(image: np.ndarray) -> tuple[int, int, int, int, bool]:
    """Ground-truth crop box of one slice: the body without the arms (rule in the module docstring).

    Args:
        image: ``(H, W)`` scan (uint16 or any real dtype).

    Returns:
        ``(x0, y0, x1, y1, fallback)``: pixels, x1/y1 exclusive; ``fallback`` True when the whole image is used.

    >>> img = np.zeros((64, 64), np.uint16); img[10:50, 20:40] = 1000
    >>> body_box(img)
    (20, 10, 40, 50, False)
    """
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {image.shape}")
    h, w = image.shape
    whole = (0, 0, int(w), int(h), True)
    img8 = to_uint8(image)
    if not img8.any():
        return whole
    otsu, _ = cv2.threshold(img8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    t = min(float(otsu), BOX_PERCENTILE_FRACTION * float(np.percentile(img8, 99)))
    fg = (img8 > t).astype(np.uint8)
    k = max(3, int(round(BOX_KERNEL_FRACTION * min(h, w))))
    k += 1 - k % 2
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return whole
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh, area = (int(v) for v in stats[best])
    if area < BOX_MIN_AREA_FRACTION * h * w:
        return whole
    return x, y, x + bw, y + bh, False


def _case_day_boxes(args: tuple[str, str, list[int]]) -> np.ndarray:
    """int64 ``(n, 5)`` boxes of slices ``zs`` of one case-day (runs in a worker process)."""
    work, cd, zs = args
    vol = load_volume(work, cd)
    return np.array([body_box(np.asarray(vol[z])) for z in zs], dtype=np.int64).reshape(-1, 5)


def boxes_table(
    work: str | os.PathLike, manifest: pd.DataFrame | None = None, progress: bool = False, workers: int = 1
) -> pd.DataFrame:
    """Crop boxes of every slice of a WORK folder.

    Args:
        work: the WORK folder.
        manifest: its manifest (default: read ``WORK/manifest.csv``).
        progress: tqdm bar over case-days.
        workers: processes (one case-day at a time each).

    Returns:
        DataFrame ``id, case_day, x0, y0, x1, y1, fallback`` (pixels, x1/y1 exclusive; fallback 0/1), manifest
        order.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    work = Path(work)
    manifest = read_manifest(work) if manifest is None else manifest
    groups = manifest.groupby("case_day", sort=False).indices
    z_all = manifest["z"].to_numpy()
    jobs = [(str(work), cd, z_all[rows].tolist()) for cd, rows in groups.items()]
    boxes = np.zeros((len(manifest), 5), dtype=np.int64)
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(jobs), desc="boxes", unit="case-day")
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        results = pool.map(_case_day_boxes, jobs) if pool is not None else map(_case_day_boxes, jobs)
        for rows, b in zip(groups.values(), results):
            boxes[rows] = b
            if bar is not None:
                bar.update()
    finally:
        if pool is not None:
            pool.shutdown()
        if bar is not None:
            bar.close()
    out = manifest[["id", "case_day"]].copy()
    for j, name in enumerate(("x0", "y0", "x1", "y1", "fallback")):
        out[name] = boxes[:, j]
    return out.reset_index(drop=True)


def export_boxes(work: str | os.PathLike, overwrite: bool = False, progress: bool = False, workers: int = 1) -> Path:
    """Write ``WORK/exports/boxes.csv`` (see :func:`boxes_table`); returns its path."""
    work = Path(work)
    table = boxes_table(work, progress=progress, workers=workers)
    return _write_once(exports_dir(work) / "boxes.csv", table.to_csv(index=False, lineterminator="\n"), overwrite)


def _read_boxes(work: Path, progress: bool) -> pd.DataFrame:
    path = exports_dir(work) / "boxes.csv"
    if not path.is_file():
        export_boxes(work, progress=progress)
    return pd.read_csv(path)


# ----------------------------------------------------------------------------------------------------------- yolo


def yolo_label(box: Iterable[int], width: int, height: int) -> str:
    """One YOLO label line ``0 xc yc w h`` (normalised to [0, 1]) for a box ``(x0, y0, x1, y1)`` in pixels.

    >>> yolo_label((20, 10, 40, 50), 64, 64)
    '0 0.468750 0.468750 0.312500 0.625000'
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    xc, yc = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
    return f"0 {xc:.6f} {yc:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"


def export_yolo(
    work: str | os.PathLike, fold: int = 0, overwrite: bool = False, step: int = 1, progress: bool = False
) -> Path:
    """Write an ultralytics detection dataset for one fold under ``WORK/exports/yolo/``.

    ``images/{train,val}/{id}.png`` are 8-bit grayscale slices (:func:`data_prep.volumes.to_uint8`),
    ``labels/{train,val}/{id}.txt`` hold one line ``0 xc yc w h`` (the :func:`body_box` of the slice, normalised),
    ``data.yaml`` has an absolute ``path:`` and ``names: {0: body}``. Train = the fold's ``all`` training ids
    (fault list dropped), val = the fold's validation ids. ``export.json`` records the fold and step; the folder
    is rebuilt (in a temporary folder, then renamed) only when those change and ``overwrite`` is given.

    Args:
        work: the WORK folder.
        fold: the validation fold.
        overwrite: replace an export made for another fold or step.
        step: keep every ``step``-th slice of each case-day (neighbouring slices are near duplicates).
        progress: tqdm bar over slices.

    Returns:
        Path of ``data.yaml``.
    """
    work = Path(work)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    manifest = _labelled_manifest(work)
    f = fold_entry(read_splits(work), fold)
    root = exports_dir(work) / "yolo"
    meta = {"fold": int(fold), "step": int(step), "n_slices": len(manifest)}
    marker = root / "export.json"
    if marker.is_file():
        if json.loads(marker.read_text(encoding="utf-8")) == meta:
            logger.info("%s is up to date (fold %d)", root, fold)
            return root / "data.yaml"
        if not overwrite:
            raise FileExistsError(
                f"{root} holds an export for {marker.read_text(encoding='utf-8').strip()}; "
                f"pass --overwrite (overwrite=True) to replace it with fold {fold}, step {step}"
            )
    elif root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists but was not made by this export; pass --overwrite to replace it")

    boxes = _read_boxes(work, progress).set_index("id")
    keep = manifest["z"].to_numpy() % step == 0
    sel = manifest[keep]
    split_of = {i: "val" for i in f["val"]}
    split_of.update({i: "train" for i in f["train"]["all"]})
    sel = sel[sel["id"].isin(split_of)]

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".yolo."))
    try:
        for part in ("train", "val"):
            (tmp / "images" / part).mkdir(parents=True)
            (tmp / "labels" / part).mkdir(parents=True)
        rows = sel.groupby("case_day", sort=False)
        bar = None
        if progress:
            from tqdm import tqdm  # noqa: PLC0415

            bar = tqdm(total=len(sel), desc=f"yolo fold {fold}", unit="slice")
        for cd, g in rows:
            vol = load_volume(work, cd)
            for sid, z, w, h in zip(g["id"], g["z"], g["width"], g["height"]):
                part = split_of[sid]
                if not cv2.imwrite(str(tmp / "images" / part / f"{sid}.png"), to_uint8(np.asarray(vol[z]))):
                    raise OSError(f"cannot write {tmp / 'images' / part / f'{sid}.png'}")
                b = boxes.loc[sid, ["x0", "y0", "x1", "y1"]].to_numpy()
                (tmp / "labels" / part / f"{sid}.txt").write_text(yolo_label(b, int(w), int(h)) + "\n")
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()
        yaml_text = (
            f"# UW-Madison GI Tract body crop, fold {fold} (data_prep export)\n"
            f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: body\n"
        )
        (tmp / "data.yaml").write_text(yaml_text)
        (tmp / "export.json").write_text(json.dumps(meta) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s (%d images)", root, len(sel))
    return root / "data.yaml"


# ------------------------------------------------------------------------------------------------------------- 3d


def datalist(
    work: str | os.PathLike,
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    fold: int,
    z_spacing: float = DEFAULT_Z_SPACING_MM,
) -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist of one fold: volumes, masks and spacing.

    Training = volumes of the fold's training side minus the fault list; validation = the fold's validation
    volumes (unfiltered).

    Args:
        work: the WORK folder (its ``dataset.json`` gives the spacing and the channels).
        manifest: its manifest.
        splits: its splits dict.
        fold: the validation fold.
        z_spacing: slice thickness (mm) of the Kaggle layout, whose files do not give it; other formats take
            every spacing from ``dataset.json``.

    Returns:
        ``{"training": [...], "validation": [...]}``, entries ``{"case_day", "image", "channels", "label",
        "spacing", "shape"}``: absolute ``.npy`` paths (image = channel 0, uint16 ``(D, H, W)``; channels = one
        path per image channel; label = the WORK mask ``(D, H, W)``, ``read_dataset(work).unpack`` gives binary
        channels), spacing ``[z, y, x]`` mm, shape ``[D, H, W]``.
    """
    work = Path(work).resolve()
    dataset = read_dataset(work)
    f = fold_entry(splits, fold)
    info = manifest.groupby("case_day", sort=False).agg(
        depth=("id", "size"), height=("height", "first"), width=("width", "first"), px_h=("px_h", "first"),
        px_w=("px_w", "first"), case=("case", "first"),
    )  # fmt: skip
    val_cases = set(f["val_cases"])
    faulty = set(splits["faulty_case_days"])

    def spacing(cd: str, r: Any) -> list[float]:
        if dataset.format == "kaggle":
            return [float(z_spacing), float(r.px_h), float(r.px_w)]
        return [float(v) for v in dataset.spacing(cd, (float(r.px_h), float(r.px_w)))]

    def entry(cd: str, r: Any) -> dict[str, Any]:
        return {
            "case_day": cd,
            "image": str(volume_path(work, cd)),
            "channels": [str(volume_path(work, cd, k)) for k in range(dataset.num_channels)],
            "label": str(mask_path(work, cd)),
            "spacing": spacing(cd, r),
            "shape": [int(r.depth), int(r.height), int(r.width)],
        }

    training = [entry(cd, r) for cd, r in info.iterrows() if r.case not in val_cases and cd not in faulty]
    validation = [entry(cd, r) for cd, r in info.iterrows() if r.case in val_cases]
    return {"training": training, "validation": validation}


def export_3d(
    work: str | os.PathLike,
    fold: int | None = None,
    overwrite: bool = False,
    z_spacing: float = DEFAULT_Z_SPACING_MM,
) -> list[Path]:
    """Write ``WORK/exports/3d/fold_{k}/datalist.json`` for one fold (or every fold when ``fold`` is None).

    Returns:
        The written (or up-to-date) paths.
    """
    work = Path(work)
    manifest = _labelled_manifest(work)
    splits = read_splits(work)
    folds = range(splits["n_folds"]) if fold is None else [fold]
    out = []
    for k in folds:
        text = json.dumps(datalist(work, manifest, splits, k, z_spacing), indent=1) + "\n"
        out.append(_write_once(exports_dir(work) / "3d" / f"fold_{k}" / "datalist.json", text, overwrite))
    return out


def read_datalist(work: str | os.PathLike, fold: int) -> dict[str, dict[str, Any]]:
    """The 3D export of one fold, every entry keyed by case-day (training and validation together).

    Entries are as :func:`datalist` writes them: ``{"case_day", "image", "channels", "label", "spacing": [z, y, x],
    "shape"}`` (``channels`` is absent from exports made before it existed).

    Raises:
        FileNotFoundError: no export for this fold (the message names the command that makes it).
        ValueError: a malformed file.
    """
    path = exports_dir(work) / "3d" / f"fold_{int(fold)}" / "datalist.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"3D export {path} not found: make it with `python -m data_prep export 3d --work {work} --fold {fold}`"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    entries = [e for part in ("training", "validation") for e in raw.get(part, [])]
    if not entries or not all(isinstance(e, dict) and {"case_day", "image"} <= set(e) for e in entries):
        raise ValueError(f"{path}: expected {{'training': [...], 'validation': [...]}} of case-day entries")
    return {str(e["case_day"]): e for e in entries}


YOLO_EXPORT_HINT = "python -m data_prep export yolo --work {work} --fold {fold}"


def read_classifier_table(work: str | os.PathLike) -> pd.DataFrame:
    """``WORK/exports/classifier.csv`` (``id, case_day, z, fold`` and one 0/1 presence column per class).

    Raises:
        FileNotFoundError: no export (the message names the command that makes it).
    """
    path = exports_dir(work) / "classifier.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: make it with `python -m data_prep export classifier --work {work}`")
    return pd.read_csv(path, dtype={"id": str, "case_day": str}, keep_default_na=False)
