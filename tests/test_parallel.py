"""The preprocessing stages' threading helpers: order kept, errors delivered, no hang on early exit."""

import threading
import time

import pytest

from gstalker_ns.preprocess.parallel import ordered_map, prefetch, run_threads


def test_prefetch_keeps_order_and_reads_on_another_thread():
    seen = []

    def produce():
        for i in range(50):
            seen.append(threading.current_thread().name)
            yield i

    assert list(prefetch(produce(), depth=4)) == list(range(50))
    assert set(seen) == {"gstalker-prefetch"}


def test_prefetch_hands_the_producers_error_to_the_consumer():
    def produce():
        yield 1
        raise ValueError("frame 2 is damaged")

    out = []
    with pytest.raises(ValueError, match="frame 2 is damaged"):
        for item in prefetch(produce()):
            out.append(item)
    assert out == [1]


def test_prefetch_consumer_stopping_early_does_not_hang():
    produced = []

    def produce():
        for i in range(1000):
            produced.append(i)
            yield i

    items = prefetch(produce(), depth=2)
    for item in items:
        if item == 3:
            break
    items.close()  # what the loop's end does in CPython; joins the producer
    assert len(produced) < 10  # the producer stopped instead of running on


def test_ordered_map_yields_in_input_order_whatever_finishes_first():
    def slow_for_even(i):
        time.sleep(0.01 if i % 2 == 0 else 0.0)
        return i * i

    assert list(ordered_map(slow_for_even, range(20), workers=3)) == [i * i for i in range(20)]


def test_ordered_map_and_run_threads_raise_the_first_error():
    def fail_at_5(i):
        if i == 5:
            raise RuntimeError("PNG encoding failed for frame 5")
        return i

    with pytest.raises(RuntimeError, match="frame 5"):
        list(ordered_map(fail_at_5, range(10), workers=2))
    with pytest.raises(RuntimeError, match="frame 5"):
        run_threads(fail_at_5, range(10), workers=2)
