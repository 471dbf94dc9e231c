"""Use both cores of a small machine in the preprocessing stages.

OpenCV's image I/O and filters, numpy's sorts and mediapipe's graphs release the GIL, so plain
threads overlap them: `prefetch` reads ahead of a consumer, `ordered_map` runs per-item work
on a few threads and yields results in input order, `run_threads` runs independent jobs.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def default_workers() -> int:
    """One per core, at most 4 (the stages hold a few frames per worker in memory)."""
    return max(1, min(4, os.cpu_count() or 1))


def run_threads(fn: Callable[[T], None], items: Iterable[T], workers: int = 0) -> None:
    """fn(item) for every item on `workers` threads (0: one per core); the first error is raised."""
    workers = workers or default_workers()
    if workers <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, items):
            pass


def prefetch(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """The items of `items`, produced on a background thread up to `depth` ahead of the consumer
    (e.g. frames decoded while the previous one is segmented). Errors reach the consumer."""
    slots: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((item, None))
            slots.put((_DONE, None))
        except BaseException as exc:  # handed to the consumer
            slots.put((_DONE, exc))

    thread = threading.Thread(target=produce, name="gstalker-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(0.01)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 0, ahead: int = 0) -> Iterator[R]:
    """fn(item) for each item on `workers` threads, results yielded in input order, at most
    `ahead` (default 2 x workers) items in flight."""
    workers = workers or default_workers()
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    ahead = ahead or 2 * workers
    pending: "collections.deque" = collections.deque()
    with ThreadPoolExecutor(workers) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
