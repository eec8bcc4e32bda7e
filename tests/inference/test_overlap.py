"""inference.overlap: order, bounded look-ahead, errors raised where they belong."""

from __future__ import annotations

import threading
import time

import pytest

from inference.overlap import Background, prefetch


def test_prefetch_keeps_order_and_loads_at_most_depth_ahead():
    loaded: list[int] = []
    seen: list[tuple[int, int]] = []
    for item, value in prefetch(range(6), lambda i: loaded.append(i) or i * i, depth=2):
        time.sleep(0.01)  # the loader runs ahead while the caller works
        assert len(loaded) <= item + 3  # the current item and at most 2 ahead
        seen.append((item, value))
    assert seen == [(i, i * i) for i in range(6)] and loaded == list(range(6))
    with pytest.raises(ValueError, match="depth"):
        next(prefetch([1, 2], lambda i: -i, depth=0))


def test_prefetch_raises_the_error_at_its_item():
    def load(i: int) -> int:
        if i == 2:
            raise ValueError("bad item 2")
        return i

    got = []
    with pytest.raises(ValueError, match="bad item 2"):
        for item, _ in prefetch(range(5), load):
            got.append(item)
    assert got == [0, 1]


def test_prefetch_loads_in_another_thread():
    names = set()
    for _ in prefetch(range(3), lambda i: names.add(threading.current_thread().name)):
        pass
    assert names and threading.current_thread().name not in names


def test_background_runs_in_order_and_raises_at_close():
    done: list[int] = []
    bg = Background(depth=2)
    for i in range(5):
        bg.submit(lambda i=i: (time.sleep(0.005), done.append(i)))
    bg.close()
    assert done == list(range(5))

    def boom() -> None:
        raise OSError("disk full")

    bg = Background()
    bg.submit(boom)
    with pytest.raises(OSError, match="disk full"):
        bg.close()


def test_background_finishes_submitted_work_when_the_caller_fails():
    done: list[int] = []
    with pytest.raises(RuntimeError, match="model failed"):
        with Background(depth=3) as bg:
            for i in range(3):
                bg.submit(lambda i=i: (time.sleep(0.01), done.append(i)))
            raise RuntimeError("model failed")
    assert done == [0, 1, 2]  # the results already made are written (a resumed run keeps them)
