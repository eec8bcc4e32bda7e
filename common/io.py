"""Atomic writes (a temporary file in the same folder, then a rename over the target) and Markdown tables.

A process killed mid-write leaves at most a hidden ``.{name}.*.tmp`` file behind, never a truncated target.
A leaf module (numpy and pandas only), so every stage may use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd


def _default_mode() -> int:
    """Permission bits a plain ``open(path, "w")`` would give (0o666 less the umask); mkstemp's are 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], fsync: bool = True) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it over ``path``.

    Args:
        path: the target; its folder is created if needed.
        write: writes the content to the open file object.
        fsync: flush the data to disk before the rename (durable across a power cut, slower).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that want a file name (SimpleITK, OpenCV); renamed over
    ``path`` when the block ends without an error, removed otherwise.

    Args:
        path: the target; its folder is created if needed.
        suffix: the temporary name's ending (writers that choose the format from it need the real one, e.g.
            ``.nii.gz``); the name is hidden: ``.{name}.XXXX{suffix}``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray, fsync: bool = False) -> Path:
    """``np.save`` (no pickles) atomically; C-contiguous so that it can be memory-mapped back."""
    return atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False), fsync=fsync)


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    """A DataFrame as a GitHub Markdown table, one line per row and a final newline (floats formatted with
    ``floatfmt``, NaN as ``-``).

    >>> print(markdown_table(pd.DataFrame({"a": [1], "b": [0.5]})), end="")
    | a | b |
    |---|---|
    | 1 | 0.5000 |
    """

    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "-" if np.isnan(v) else floatfmt.format(v)
        return str(v)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
