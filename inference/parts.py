"""Resumable inference in parts: a folder of per-case-day results, the split of the case-days across processes,
and the distributed set-up of ``torchrun``.

A run writes each case-day's result, as soon as it is predicted, atomically into a parts folder
(``{OUT}.parts/`` beside the output by default)::

    {parts}/meta.json             {"version": 1, "digest": ..., what the run is: spec content, classes, sample, ...}
    {parts}/{case_day}.csv        "# {digest}" then the case-day's rows (a submission: id,class,predicted)
    {parts}/{table}/{case_day}.csv  other per-case-day tables (``keep``: the gate decisions of --save-probs)

A rerun skips the case-days whose parts exist and carry the run's digest (like nnU-Net's
``--continue_prediction``); the final output is assembled from the parts in the usual order, so it is
byte-identical to an uninterrupted run's. ``--num-parts N --part-id K`` predicts ``sorted(keys)[K::N]`` (as
nnU-Net's ``-num_parts/-part_id`` do); whichever process finds every part present writes the final output, or
``--merge`` does. Under ``torchrun`` the part count and id are the world size and the rank (:func:`env_part`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common.io import atomic_write_text

PARTS_META = "meta.json"
PARTS_VERSION = 1
#: The table whose part marks a case-day as predicted (``{parts}/{key}.csv``).
ROWS = "rows"
#: The table of the gate decisions (``keep.csv`` of ``--save-probs``), one part per case-day.
KEEP = "keep"


def split_parts(keys: Sequence[str], num_parts: int, part_id: int) -> list[str]:
    """The share of part ``part_id`` of ``num_parts``: ``sorted(keys)[part_id::num_parts]`` (nnU-Net's split).

    >>> split_parts(["c", "a", "d", "b", "e"], 2, 0), split_parts(["c", "a", "d", "b", "e"], 2, 1)
    (['a', 'c', 'e'], ['b', 'd'])

    Raises:
        ValueError: ``num_parts < 1`` or ``part_id`` outside ``[0, num_parts)``.
    """
    if int(num_parts) < 1:
        raise ValueError(f"--num-parts must be at least 1, got {num_parts}")
    if not 0 <= int(part_id) < int(num_parts):
        raise ValueError(f"--part-id must be in [0, {num_parts}) for --num-parts {num_parts}, got {part_id}")
    return sorted(keys)[int(part_id) :: int(num_parts)]


@dataclass(frozen=True)
class PartPlan:
    """How one process takes part in a run (the CLI's ``--parts-dir``, ``--num-parts``, ``--part-id``, ``--merge``).

    Attributes:
        num_parts: processes sharing the case-days (1: this one predicts them all).
        part_id: this process's share (:func:`split_parts`).
        parts_dir: the parts folder (default ``{OUT}.parts`` beside the output).
        merge: load no model, predict nothing: write the final output from the parts (an error names the missing
            case-days).
        finish: write the final output when this process finds every part present at its end (False under
            ``torchrun``: rank 0 merges after a barrier).
    """

    num_parts: int = 1
    part_id: int = 0
    parts_dir: str | os.PathLike | None = None
    merge: bool = False
    finish: bool = True

    def __post_init__(self) -> None:
        split_parts([], self.num_parts, self.part_id)  # checks the numbers

    def folder(self, out: str | os.PathLike) -> Path:
        """The parts folder of output ``out``."""
        out = Path(out)
        return Path(self.parts_dir) if self.parts_dir else out.with_name(out.name + ".parts")

    def mine(self, keys: Sequence[str]) -> list[str]:
        """This process's case-days, in the order of ``keys``."""
        share = set(split_parts(keys, self.num_parts, self.part_id))
        return [k for k in keys if k in share]


def file_digest(path: str | os.PathLike | None) -> str | None:
    """sha256 of a file's bytes (None for no file)."""
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def spec_digest(spec: Any) -> str:
    """sha256 of the validated spec's content (:meth:`ensembles.spec.Spec.to_dict`, its classes included): the
    same YAML gives the same digest wherever it lies; any edit of a model, weight, threshold or rule changes it."""
    data = {"spec": spec.to_dict(), "classes": list(getattr(spec, "classes", ()))}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class PartStore:
    """A parts folder (see the module docstring): one small CSV per case-day and table, written atomically.

    Args:
        folder: the parts folder (created).
        meta: what the run is (JSON data: spec digest, classes, sample digest, ...); parts written under other
            ``meta`` are refused, or ignored with ``overwrite``.
        tables: the tables every case-day must have to count as done (:data:`ROWS` and e.g. ``"keep"``).
        overwrite: start over: the parts of ``clear_keys`` (every part when None) are removed and ``meta.json``
            rewritten; parts of other case-days written under other ``meta`` no longer count.
        clear_keys: the case-days ``overwrite`` removes (a process of ``--num-parts`` clears only its own).

    Raises:
        ValueError: ``meta.json`` says another run (another spec, classes or sample), and not ``overwrite``.
        FileExistsError: the folder holds files but no ``meta.json``, and not ``overwrite``.

    >>> import tempfile
    >>> store = PartStore(Path(tempfile.mkdtemp()) / "sub.csv.parts", {"spec": "abc"})
    >>> _ = store.write("case1_day2", [("case1_day2_slice_0001", "stomach", "")], ["id", "class", "predicted"])
    >>> store.done("case1_day2"), store.missing(["case1_day2", "case1_day3"])
    (True, ['case1_day3'])
    >>> store.read("case1_day2").values.tolist()
    [['case1_day2_slice_0001', 'stomach', '']]
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        meta: Mapping[str, Any],
        tables: Sequence[str] = (ROWS,),
        overwrite: bool = False,
        clear_keys: Sequence[str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.tables = tuple(tables)
        body = {k: v for k, v in dict(meta).items() if k not in ("version", "digest")}
        self.digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.meta = {"version": PARTS_VERSION, "digest": self.digest, **body}
        meta_path = self.folder / PARTS_META
        if meta_path.is_file():
            try:
                old = json.loads(meta_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{meta_path} is not valid JSON ({e}); remove it or pass --overwrite") from None
            if old.get("digest") != self.digest and not overwrite:
                differ = sorted(k for k in {*old, *self.meta} - {"digest"} if old.get(k) != self.meta.get(k))
                raise ValueError(
                    f"{self.folder} holds the parts of another run (differing: {', '.join(differ)}); pass --overwrite "
                    "to start over or give another --parts-dir"
                )
        elif self.folder.is_dir() and any(not p.name.startswith(".") for p in self.folder.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{self.folder} holds files but no {PARTS_META}: not a parts folder of tools/infer.py; pass "
                "--overwrite or give another --parts-dir"
            )
        if overwrite:
            self.clear(clear_keys)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not meta_path.is_file() or overwrite:
            atomic_write_text(meta_path, json.dumps(self.meta, indent=1) + "\n")

    def path(self, key: str, table: str = ROWS) -> Path:
        """The file of one case-day's part of ``table``."""
        return self.folder / f"{key}.csv" if table == ROWS else self.folder / table / f"{key}.csv"

    def _has(self, key: str, table: str) -> bool:
        p = self.path(key, table)
        if not p.is_file():
            return False
        with open(p, encoding="utf-8") as f:
            return f.readline().rstrip("\n") == f"# {self.digest}"

    def done(self, key: str) -> bool:
        """True when every table's part of ``key`` exists and was written by this run (its digest)."""
        return all(self._has(key, t) for t in self.tables)

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The case-days of ``keys`` that are not :meth:`done`, in the order given."""
        return [k for k in keys if not self.done(k)]

    def write(
        self, key: str, data: pd.DataFrame | Sequence[Sequence[Any]], columns: Sequence[str] | None = None, table=ROWS
    ) -> Path:
        """Write one case-day's part of ``table`` atomically: ``data`` a DataFrame, or rows with ``columns``."""
        df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data), columns=list(columns or []))
        text = f"# {self.digest}\n" + df.to_csv(index=False, lineterminator="\n")
        return atomic_write_text(self.path(key, table), text)

    def read(self, key: str, table: str = ROWS) -> pd.DataFrame:
        """One case-day's part of ``table``, every column as ``str`` (empty cells as ``""``).

        Raises:
            FileNotFoundError: no such part. ValueError: a part written by another run.
        """
        p = self.path(key, table)
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: case-day {key} has not been predicted")
        text = p.read_text(encoding="utf-8")
        head, _, body = text.partition("\n")
        if head != f"# {self.digest}":
            raise ValueError(f"{p} was written by another run ({head!r}, expected '# {self.digest}'); predict it again")
        return pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False)

    def assemble(self, keys: Sequence[str], table: str = ROWS) -> pd.DataFrame:
        """The parts of ``keys`` of ``table``, concatenated in the order given.

        Raises:
            ValueError: naming the case-days whose parts are missing.
        """
        absent = [k for k in keys if not self._has(k, table)]
        if absent:
            raise ValueError(missing_message(self.folder, absent, len(keys)))
        frames = [self.read(k, table) for k in keys]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def clear(self, keys: Sequence[str] | None = None) -> None:
        """Remove the parts of ``keys`` (every part and ``meta.json`` when None); only part files are removed."""
        if not self.folder.is_dir():
            return
        tables = dict.fromkeys((ROWS, KEEP, *self.tables))
        for t in tables:
            where = self.path("x", t).parent
            files = [self.path(k, t) for k in keys] if keys is not None else list(where.glob("*.csv"))
            for f in files:
                f.unlink(missing_ok=True)
            if t != ROWS and where.is_dir() and not any(where.iterdir()):
                where.rmdir()
        if keys is None:
            (self.folder / PARTS_META).unlink(missing_ok=True)


def missing_message(folder: Path, absent: Sequence[str], total: int) -> str:
    """The error of a merge with ``absent`` case-days (named, the first 10)."""
    more = f" and {len(absent) - 10} more" if len(absent) > 10 else ""
    return (
        f"{folder}: {len(absent)} of {total} case-day(s) not predicted yet: {', '.join(absent[:10])}{more}; run the "
        "missing --part-id(s) (or the run without --num-parts) to predict them, then --merge"
    )


# --------------------------------------------------------------------------------------------------------------
# torchrun


def env_part(num_parts: int | None = None, part_id: int | None = None) -> tuple[int, int, int | None]:
    """``(num_parts, part_id, local_rank)``: from ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` under ``torchrun``
    (``local_rank`` None otherwise), else from the arguments (default one part).

    Raises:
        ValueError: arguments that disagree with the environment, or a part id without a count.
    """
    world, rank = os.environ.get("WORLD_SIZE"), os.environ.get("RANK")
    if world is not None and rank is not None and int(world) > 1:
        w, r = int(world), int(rank)
        if (num_parts is not None and num_parts != w) or (part_id is not None and part_id != r):
            raise ValueError(
                f"--num-parts {num_parts} --part-id {part_id} disagree with torchrun's WORLD_SIZE={w} RANK={r}; "
                "give neither under torchrun"
            )
        return w, r, int(os.environ.get("LOCAL_RANK", r))
    if part_id is not None and num_parts is None:
        raise ValueError(f"--part-id {part_id} needs --num-parts")
    n, k = int(num_parts or 1), int(part_id or 0)
    split_parts([], n, k)
    return n, k, None


def start_dist(device: str, local_rank: int) -> str:
    """Join the ``torchrun`` process group (:func:`common.engine.setup_distributed`, with a timeout of two days:
    one rank may finish its share long before another) and return this process's device: ``cuda:{local_rank}``
    for ``cuda``, else ``device`` unchanged."""
    import datetime

    from common.engine import setup_distributed

    setup_distributed("pytorch", timeout=datetime.timedelta(days=2))
    return f"cuda:{local_rank}" if device == "cuda" else device


def dist_barrier() -> None:
    """Wait for every process of the group (nothing without one)."""
    from mmengine.dist import barrier

    barrier()


def pending(columns: Sequence[str], missing: Sequence[str], predicted: Sequence[str], folder: Path) -> pd.DataFrame:
    """What a process of ``--num-parts`` returns while other parts are missing: no rows, and ``attrs``
    ``missing`` / ``predicted`` (case-days) and ``parts`` (the folder)."""
    df = pd.DataFrame(columns=list(columns))
    df.attrs.update(missing=list(missing), predicted=list(predicted), parts=str(folder))
    return df
