"""Keep mediapipe's native start-up chatter off the user's terminal.

mediapipe's C++ side writes straight to file descriptor 2 when a graph starts ("INFO: Created
TensorFlow Lite XNNPACK delegate", absl "W0000 ... Feedback manager ..." notes), which Python's
logging and warnings filters cannot reach. `quiet_start` runs a graph's start (construction and
one warm-up call) with fd 2 captured, then passes on every line that is not such a known note,
so real errors still show.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Tuple, TypeVar

T = TypeVar("T")

KNOWN_NOTES = re.compile(
    r"^(INFO: Created TensorFlow Lite .*delegate.*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+\s+\d+ \S+\.cc:\d+\] .*)$"
)


@contextmanager
def captured_fd2() -> Iterator[list]:
    """Capture what anything in the process writes to fd 2; the lines are in the yielded list
    once the block ends (known mediapipe notes removed, everything else re-written to stderr)."""
    lines: list = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): do nothing
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not KNOWN_NOTES.match(line.strip()):
                    lines.append(line)
                    print(line, file=sys.stderr)


def quiet_start(start: Callable[[], T]) -> T:
    """Run a mediapipe graph's start (`start()` builds it and makes its first call) quietly."""
    with captured_fd2():
        return start()


def start_graph_quietly(build: Callable[[], T], first_image: Any) -> Tuple[T, Any]:
    """Build a mediapipe solution and process its first image with fd 2 captured throughout.

    Its graph threads write their start-up notes asynchronously, after the constructor has
    returned; capturing the construction and the first call separately lets them slip through."""

    def start() -> Tuple[T, Any]:
        graph = build()
        return graph, graph.process(first_image)  # type: ignore[attr-defined]

    return quiet_start(start)
