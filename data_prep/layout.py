"""Read a Kaggle-style UW-Madison GI Tract tree into a manifest, and its labels and scans.

The layout (see ``docs/contracts.md``)::

    DATA_ROOT/train.csv                                   id,class,segmentation (three rows per slice)
    DATA_ROOT/{train,test}/case{N}/case{N}_day{D}/scans/slice_{SSSS}_{W}_{H}_{PW}_{PH}.png   uint16

``read_layout`` walks the tree once, takes id, case, day, slice, size and pixel spacing from the file
names, checks each PNG's header (IHDR, 26 bytes: size, bit depth, colour type) against its name, and
joins the labels when given. ``read_scan`` reads one image as uint16 ``(H, W)``.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from data_prep.constants import CASE_DAY_DIR_RE, CASE_DIR_RE, CLASSES, SCAN_NAME_RE, SLICE_ID_RE, case_day_of
from data_prep.rle import RLEError, decode_case_day, rle_runs

logger = logging.getLogger(__name__)

#: Columns of the manifest, in order (the class RLE columns follow when labels are given).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "case",
    "day",
    "slice",
    "case_day",
    "path",
    "width",
    "height",
    "px_w",
    "px_h",
)
LABEL_COLUMNS: tuple[str, ...] = ("id", "class", "segmentation")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_LISTED = 5


class LayoutWarning(UserWarning):
    """A recoverable problem in a data tree (missing label rows, 8-bit scans, slice gaps)."""


def _first(items: list[str], n: int = _MAX_LISTED) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, LayoutWarning, stacklevel=3)


def png_header(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """Read a PNG's IHDR chunk without decoding the image.

    Args:
        path: a PNG file.

    Returns:
        ``(width, height, bit_depth, color_type)``; colour type 0 is grayscale.

    Raises:
        ValueError: the file is not a PNG or its header is truncated.
    """
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file (bad or truncated header); re-export or remove this scan")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", head[16:26])
    return int(width), int(height), int(bit_depth), int(color_type)


def read_rle_table(path: str | os.PathLike | pd.DataFrame, column: str | None = None) -> pd.DataFrame:
    """Read a label or submission table into one row per slice id with one RLE column per class.

    Args:
        path: ``train.csv`` (``id,class,segmentation``), a submission (``id,class,predicted``), ``.csv.gz`` too,
            or a DataFrame with those columns.
        column: the RLE column; None picks ``segmentation`` or ``predicted``, whichever exists.

    Returns:
        DataFrame with columns ``id`` and one RLE column per class of ``CLASSES`` (``""`` for an empty mask or a
        class row that is absent), one row per id, in the order the ids first appear; ``attrs["source"]`` names
        the file (for error messages).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong columns, unknown class names, malformed ids or duplicated ``(id, class)`` rows.
    """
    if isinstance(path, pd.DataFrame):
        df, where = path.copy(), "labels DataFrame"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"labels file {p} not found; expected a CSV with columns id,class,segmentation (labels) or "
                "id,class,predicted (a submission)"
            )
        where = str(p)
        try:
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise ValueError(f"{where}: cannot be read as CSV ({e}); expected columns id,class,segmentation") from None
    if column is None:
        column = next((c for c in ("segmentation", "predicted") if c in df.columns), "segmentation")
    need = ["id", "class", column]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {missing}; expected columns {','.join(need)}, got {list(df.columns)}"
        )
    df = df[need].astype(object).where(df[need].notna(), "").astype(str)
    unknown = sorted(set(df["class"]) - set(CLASSES))
    if unknown:
        raise ValueError(f"{where}: unknown class name(s) {unknown}; expected only {list(CLASSES)}")
    bad_ids = df.loc[~df["id"].str.match(SLICE_ID_RE.pattern), "id"].unique().tolist()
    if bad_ids:
        raise ValueError(
            f"{where}: {len(bad_ids)} id(s) not of the form case{{N}}_day{{D}}_slice_{{SSSS}}: {_first(bad_ids)}"
        )
    dup = df.duplicated(["id", "class"], keep=False)
    if dup.any():
        rows = (df.loc[dup, "id"] + "/" + df.loc[dup, "class"]).unique().tolist()
        raise ValueError(f"{where}: {len(rows)} (id, class) pair(s) appear more than once: {_first(rows)}")
    ids = pd.unique(df["id"])
    wide = df.pivot(index="id", columns="class", values=column)
    wide = wide.reindex(index=ids, columns=list(CLASSES)).fillna("")
    wide = wide.reset_index()
    wide.columns.name = None
    wide.attrs["source"] = where
    return wide


def read_labels(path: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """Read ``train.csv`` (``id,class,segmentation``) into one row per slice: :func:`read_rle_table` of the
    ``segmentation`` column."""
    return read_rle_table(path, column="segmentation")


def shapes_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """Reduce a manifest (:func:`read_layout`, WORK's ``manifest.csv`` or ``scan_manifest.csv``) to ``id, case_day,
    height, width``, sorted in z order (case, day, slice)."""
    need = {"id", "height", "width"}
    if not need <= set(manifest.columns):
        raise ValueError(f"manifest needs columns {sorted(need)}, got {list(manifest.columns)}")
    m = manifest[["id", "height", "width"]].copy()
    parts = m["id"].str.extract(SLICE_ID_RE.pattern).astype(int)
    m["case_day"] = m["id"].map(case_day_of)
    m = m.assign(_c=parts["case"], _d=parts["day"], _s=parts["slice"]).sort_values(["_c", "_d", "_s"], kind="stable")
    return m.drop(columns=["_c", "_d", "_s"]).reset_index(drop=True)


class RLEVolumes(Mapping):
    """A lazy ``{case_day: bool (D, C, H, W)}`` mapping over an RLE table, decoded one case-day at a time.

    Args:
        table: output of :func:`read_rle_table`.
        manifest: :func:`shapes_manifest` output (sizes and z order); slices of a case-day absent from ``table``
            are empty.
        case_days: keys to expose (default: the case-days of ``table``).
    """

    def __init__(self, table: pd.DataFrame, manifest: pd.DataFrame, case_days: Sequence[str] | None = None):
        self.source = table.attrs.get("source", "table")
        self._rle = table.set_index("id")[list(CLASSES)]
        self._groups = {k: g for k, g in manifest.groupby("case_day", sort=False)}
        keys = sorted(set(table["id"].map(case_day_of))) if case_days is None else list(case_days)
        missing = [k for k in keys if k not in self._groups]
        if missing:
            raise ValueError(f"{self.source}: case-day(s) {_first(missing)} are not in the scan tree/manifest")
        self._keys = sorted(keys)

    def rles(self, case_day: str) -> tuple[list[str], int, int, list[list[str]]]:
        """``(ids, H, W, rows of C strings)`` of one case-day, z order."""
        g = self._groups[case_day]
        ids = g["id"].tolist()
        rows = self._rle.reindex(ids).fillna("").to_numpy().tolist()
        return ids, int(g["height"].iloc[0]), int(g["width"].iloc[0]), rows

    def __getitem__(self, case_day: str) -> np.ndarray:
        ids, h, w, rows = self.rles(case_day)
        return decode_case_day(rows, h, w, ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _scan_tree(tree: Path) -> tuple[list[tuple], list[str], list[str]]:
    """Walk ``tree`` (``case*/case*_day*/scans/*.png``); return parsed rows, offending paths and the ``scans/``
    folders that hold no scan."""
    rows: list[tuple] = []
    bad: list[str] = []
    empty: list[str] = []
    for case_entry in sorted(os.scandir(tree), key=lambda e: e.name):
        if case_entry.name.startswith("."):
            continue
        m_case = CASE_DIR_RE.match(case_entry.name)
        if not case_entry.is_dir() or not m_case:
            bad.append(case_entry.path)
            continue
        for day_entry in sorted(os.scandir(case_entry.path), key=lambda e: e.name):
            if day_entry.name.startswith("."):
                continue
            m_day = CASE_DAY_DIR_RE.match(day_entry.name)
            if not day_entry.is_dir() or not m_day or m_day["case"] != m_case["case"]:
                bad.append(day_entry.path)
                continue
            scans = Path(day_entry.path) / "scans"
            if not scans.is_dir():
                bad.append(str(scans) + " (missing scans/ folder)")
                continue
            case, day = int(m_day["case"]), int(m_day["day"])
            n_rows = len(rows)
            for f in os.scandir(scans):
                if f.name.startswith("."):
                    continue
                m = SCAN_NAME_RE.match(f.name)
                if not m or not f.is_file():
                    bad.append(f.path)
                    continue
                rows.append(
                    (
                        case,
                        day,
                        int(m["slice"]),
                        os.path.abspath(f.path),
                        int(m["width"]),
                        int(m["height"]),
                        float(m["px_w"]),
                        float(m["px_h"]),
                    )
                )
            if len(rows) == n_rows:
                empty.append(str(scans))
    return rows, bad, sorted(empty)


def _check_images(df: pd.DataFrame) -> None:
    """Compare each PNG's header with the size in its file name; warn on 8-bit scans."""
    wrong: list[str] = []
    not_gray: list[str] = []
    eight_bit: list[str] = []
    for path, w, h in zip(df["path"].tolist(), df["width"].tolist(), df["height"].tolist(), strict=True):
        pw, ph, depth, color = png_header(path)
        if (pw, ph) != (w, h):
            wrong.append(f"{path} (name says {w}x{h}, image is {pw}x{ph})")
        if color != 0:
            not_gray.append(f"{path} (PNG colour type {color})")
        elif depth == 8:
            eight_bit.append(path)
        elif depth != 16:
            not_gray.append(f"{path} ({depth}-bit)")
    if wrong:
        raise ValueError(
            f"{len(wrong)} scan(s) whose image size differs from the W_H in their file name: {_first(wrong, 3)}; "
            "rename them slice_{SSSS}_{W}_{H}_{PW}_{PH}.png with the true width and height"
        )
    if not_gray:
        raise ValueError(
            f"{len(not_gray)} scan(s) are not 8- or 16-bit single-channel grayscale PNGs: {_first(not_gray, 3)}"
        )
    if eight_bit:
        _warn(
            f"{len(eight_bit)} of {len(df)} scans are 8-bit (expected 16-bit); they are read as uint16 with "
            f"their values unchanged: {_first(eight_bit, 3)}"
        )


def _check_gaps(df: pd.DataFrame, strict: bool) -> None:
    """Warn (or raise when strict) about case-days whose slice numbers have holes."""
    g = df.groupby("case_day", sort=False)["slice"]
    span = g.max() - g.min() + 1
    count = g.size()
    gappy = span[span != count].index.tolist()
    if not gappy:
        return
    details = []
    for cd in gappy[:_MAX_LISTED]:
        have = set(df.loc[df["case_day"] == cd, "slice"].tolist())
        lo, hi = min(have), max(have)
        missing = [s for s in range(lo, hi + 1) if s not in have]
        details.append(f"{cd} lacks slice(s) {_first([str(s) for s in missing], 4)}")
    msg = f"{len(gappy)} case-day(s) have missing slices in the middle: " + "; ".join(details)
    if len(gappy) > _MAX_LISTED:
        msg += f"; ... ({len(gappy) - _MAX_LISTED} more)"
    if strict:
        raise ValueError(msg + " (strict mode; restore the slices or drop the case-day)")
    _warn(msg + "; 2.5D neighbours will skip over the gap")


def validate_rles(df: pd.DataFrame, source: str) -> None:
    """Validate every non-empty RLE against its slice's H*W; errors name the row id and file."""
    sizes = (df["width"] * df["height"]).to_numpy()
    ids = df["id"].to_numpy()
    for cls in CLASSES:
        col = df[cls].to_numpy()
        for i in np.flatnonzero(col != ""):
            try:
                rle_runs(col[i], int(sizes[i]), row_id=f"{ids[i]}/{cls}")
            except RLEError as e:
                raise RLEError(f"{source}: {e}") from None


def read_layout(
    data_root: str | os.PathLike,
    split: str = "train",
    labels: str | os.PathLike | pd.DataFrame | None = None,
    strict: bool = False,
    check_images: bool = True,
) -> pd.DataFrame:
    """Read the ``{split}/`` tree of a Kaggle-style data root into a manifest.

    Args:
        data_root: folder holding ``train/`` (and ``test/``, ``train.csv``).
        split: the sub-folder to read, ``"train"`` or ``"test"``.
        labels: ``None``; a path to ``train.csv``; or a DataFrame with columns ``id,class,segmentation``.
        strict: turn the recoverable problems (label ids with no scan, scans with no label rows, slice gaps)
            into errors instead of warnings.
        check_images: read each PNG's header to check its size against its name and detect 8-bit scans
            (26 bytes per file; about 1 s for the 38,496 scans of the real set).

    Returns:
        DataFrame, one row per slice sorted by case, day, slice, with columns ``id, case, day, slice,
        case_day, path`` (absolute str), ``width, height`` (int pixels), ``px_w, px_h`` (float mm), and when
        labels are given one RLE column per class of ``CLASSES`` (``""`` when empty, also for scans with no
        label rows when not strict). ``attrs["empty_scan_dirs"]`` lists the case-day ``scans/`` folders that
        hold no scan (skipped with a ``LayoutWarning`` when not strict).

    Raises:
        FileNotFoundError: ``data_root/split`` or the labels file does not exist.
        ValueError: file names off the pattern, PNG size differs from the name, duplicated slices, no scans,
            malformed labels (``RLEError``, a ``ValueError``, names the row id and the file); in strict mode
            also label/scan mismatches, slice gaps and case-day folders with no scan.
    """
    root = Path(data_root)
    tree = root / split
    if not tree.is_dir():
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} does not exist; pass the folder that holds {split}/")
        present = sorted(p.name for p in root.iterdir())
        raise FileNotFoundError(
            f"{tree} not found; expected {root}/{split}/case{{N}}/case{{N}}_day{{D}}/scans/*.png "
            f"(found in {root}: {_first(present) or 'nothing'})"
        )
    rows, bad, empty = _scan_tree(tree)
    if bad:
        raise ValueError(
            f"{len(bad)} path(s) in {tree} do not match the Kaggle layout "
            "case{N}/case{N}_day{D}/scans/slice_{SSSS}_{W}_{H}_{PW}_{PH}.png: " + _first(sorted(bad))
        )
    if not rows:
        raise ValueError(f"{tree} holds no scans; expected case{{N}}/case{{N}}_day{{D}}/scans/slice_*.png")
    if empty:
        msg = f"{len(empty)} case-day folder(s) hold no scans: {_first(empty)}"
        if strict:
            raise ValueError(msg + " (strict mode; restore their scans or remove the folders)")
        _warn(msg + "; they are skipped")
    df = pd.DataFrame(rows, columns=["case", "day", "slice", "path", "width", "height", "px_w", "px_h"])
    df = df.sort_values(["case", "day", "slice"], kind="stable").reset_index(drop=True)
    df["case_day"] = "case" + df["case"].astype(str) + "_day" + df["day"].astype(str)
    df["id"] = df["case_day"] + "_slice_" + df["slice"].map("{:04d}".format)
    dup = df["id"].duplicated(keep=False)
    if dup.any():
        raise ValueError(
            f"{int(dup.sum())} scans share a slice number with another scan of their case-day (different size or "
            f"spacing in the name): {_first(df.loc[dup, 'path'].tolist(), 4)}; keep one file per slice"
        )
    df = df[list(MANIFEST_COLUMNS)]
    if check_images:
        _check_images(df)
    _check_gaps(df, strict)
    if labels is not None:
        lab = read_labels(labels)
        source = lab.attrs.get("source", "labels")
        scan_ids = set(df["id"])
        orphan = lab.loc[~lab["id"].isin(scan_ids), "id"].tolist()
        unlabeled = df.loc[~df["id"].isin(set(lab["id"])), "id"].tolist()
        problems = []
        if orphan:
            problems.append(f"{len(orphan)} id(s) of {source} have no scan in {tree}: {_first(orphan)}")
        if unlabeled:
            problems.append(f"{len(unlabeled)} scan(s) in {tree} have no rows in {source}: {_first(unlabeled)}")
        if problems:
            if strict:
                raise ValueError("; ".join(problems) + " (strict mode)")
            _warn("; ".join(problems) + "; ids with no scan are ignored and scans with no rows get empty masks")
        df = df.merge(lab, on="id", how="left", validate="one_to_one")
        df[list(CLASSES)] = df[list(CLASSES)].fillna("")
        validate_rles(df, source)
    logger.info("read %d slices, %d case-days from %s", len(df), df["case_day"].nunique(), tree)
    df.attrs["empty_scan_dirs"] = empty
    return df


_warned_8bit = False


def read_scan(path: str | os.PathLike, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read one scan as it is stored (``cv2.IMREAD_UNCHANGED``).

    Args:
        path: a PNG file.
        expected_hw: ``(H, W)`` the image must have (e.g. from the manifest), or None.

    Returns:
        uint16 array ``(H, W)``. An 8-bit scan is converted with its values unchanged (a warning once
        per process).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable or truncated, not single-channel, or not of ``expected_hw``.
    """
    global _warned_8bit
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"scan {p} not found")
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"scan {p} cannot be decoded (truncated or not an image); re-export or remove it")
    if img.ndim != 2:
        raise ValueError(f"scan {p} has shape {img.shape}; expected a single-channel grayscale image (H, W)")
    if expected_hw is not None and tuple(img.shape) != tuple(expected_hw):
        raise ValueError(
            f"scan {p} is {img.shape[0]}x{img.shape[1]} (HxW); expected {expected_hw[0]}x{expected_hw[1]} "
            "from its file name / manifest"
        )
    if img.dtype == np.uint8:
        if not _warned_8bit:
            _warned_8bit = True
            _warn(f"scan {p} is 8-bit (expected 16-bit); 8-bit scans are read as uint16 with values unchanged")
        img = img.astype(np.uint16)
    elif img.dtype != np.uint16:
        raise ValueError(f"scan {p} has dtype {img.dtype}; expected uint16 (or uint8)")
    return img
