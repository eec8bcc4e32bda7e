"""Constants shared by every stage: class names and order, file patterns, defaults.

This is a leaf module: it imports nothing from the project, so every stage may import it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Class names, in the order of mask channels and probability channels everywhere.
CLASSES: tuple[str, ...] = ("large_bowel", "small_bowel", "stomach")
NUM_CLASSES: int = len(CLASSES)

#: Scan file name inside ``{split}/case{N}/case{N}_day{D}/scans/``.
SCAN_NAME_RE = re.compile(
    r"^slice_(?P<slice>\d{4})_(?P<width>\d+)_(?P<height>\d+)_(?P<px_w>\d+(?:\.\d+)?)_(?P<px_h>\d+(?:\.\d+)?)\.png$"
)
CASE_DIR_RE = re.compile(r"^case(?P<case>\d+)$")
CASE_DAY_DIR_RE = re.compile(r"^case(?P<case>\d+)_day(?P<day>\d+)$")
SLICE_ID_RE = re.compile(r"^case(?P<case>\d+)_day(?P<day>\d+)_slice_(?P<slice>\d{4})$")

#: Real image sizes of the competition, as (width, height).
REAL_SIZES: tuple[tuple[int, int], ...] = ((266, 266), (360, 310), (276, 276), (234, 234))
#: Real slice counts per case-day.
REAL_DEPTHS: tuple[int, ...] = (144, 80)

#: 2.5D defaults: channels are slices ``[i - s*k, ..., i, ..., i + s*k]``.
DEFAULT_STRIDE: int = 2
DEFAULT_CHANNELS: int = 3

#: Cross-validation defaults.
DEFAULT_FOLDS: int = 5
DEFAULT_SEED: int = 42
#: Slices dropped after the last annotated slice of a case-day by the ``notail`` variant.
DEFAULT_TAIL: int = 5
#: Known faulty case-days (wrong or partial annotations), dropped from every training variant.
DEFAULT_FAULTY_CASE_DAYS: tuple[str, ...] = ("case7_day0", "case81_day30")
#: Split variants; each filters the training side only.
SPLIT_VARIANTS: tuple[str, ...] = ("all", "notail", "noanno")

#: Environment variable that names the work folder when ``--work`` is not given.
WORK_ENV: str = "GITRACT_WORK"
REPO_ROOT: Path = Path(__file__).resolve().parent.parent


def slice_id(case: int, day: int, slc: int) -> str:
    """The Kaggle id of a slice.

    >>> slice_id(123, 20, 65)
    'case123_day20_slice_0065'
    """
    return f"case{case}_day{day}_slice_{slc:04d}"


def case_day_of(sid: str) -> str:
    """The case-day part of a slice id.

    >>> case_day_of("case123_day20_slice_0065")
    'case123_day20'
    """
    return sid.rsplit("_slice_", 1)[0]


def default_work_dir() -> Path:
    """Work folder: ``$GITRACT_WORK`` if set, else ``work/`` under the repository."""
    env = os.environ.get(WORK_ENV)
    return Path(env) if env else REPO_ROOT / "work"
