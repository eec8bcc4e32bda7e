"""Reading, computing and writing side by side: the next case-day is read while the current one computes, and its
results are encoded and written while the next one computes.

Both helpers use one background thread each (reading and writing release the GIL for their file and numpy work;
the device computes while the host waits), keep their order, hold a bounded number of items (memory does not grow
with the test set) and re-raise a background error in the caller:

>>> list(prefetch([1, 2, 3], lambda x: x * 10))
[(1, 10), (2, 20), (3, 30)]
>>> done = []
>>> with Background() as bg:
...     for i in range(3):
...         bg.submit(done.append, i)
>>> done
[0, 1, 2]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def in_memory(array: Any) -> np.ndarray:
    """``array`` as an in-memory array: a memmap is read now (in a loader, off the compute path), anything else
    is taken as it is."""
    return np.array(array) if isinstance(array, np.memmap) else np.asarray(array)


def prefetch(items: Iterable[T], load: Callable[[T], R], depth: int = 1) -> Iterator[tuple[T, R]]:
    """``(item, load(item))`` for each item, in order, with the next ``depth`` items loading in a background
    thread while the caller works on the current one (at most ``depth + 1`` loaded items alive).

    Args:
        items: anything iterable (taken one at a time, in the caller's thread).
        load: runs in the background thread; its exception is raised when its item is reached.
        depth: items loaded ahead (at least 1).
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    it = iter(items)
    queue: deque[tuple[T, Future]] = deque()
    pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch")

    def ahead() -> None:
        for item in it:
            queue.append((item, pool.submit(load, item)))
            return

    try:
        for _ in range(depth):  # then each step starts one more: ``depth`` items ahead of the caller's
            ahead()
        while queue:
            item, fut = queue.popleft()
            value = fut.result()
            ahead()
            yield item, value
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Background:
    """Runs calls in submission order in one background thread, at most ``depth`` waiting (a submit blocks until
    one has finished). An error of a call is raised at the next :meth:`submit` or at :meth:`close`; leaving the
    ``with`` block on an error of the caller still finishes the calls already submitted (their results are whole
    results: a resumed run keeps them)."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = max(1, int(depth))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="writer")
        self._pending: deque[Future] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)``."""
        while self._pending and (self._pending[0].done() or len(self._pending) >= self.depth):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for every call; raises the first error."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001  (the caller's error is the one to see)
            pass
