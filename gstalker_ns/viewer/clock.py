"""The playback clock of the viewer's audio panel: the one time every browser tab follows.

The server owns the clock (the avatar is rendered there); each tab's sound is steered towards
it, never the other way round, so several tabs and a slow renderer cannot pull the time apart.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional


def frame_at(t: float, fps: float, num_frames: int) -> int:
    """The frame shown at media time t: frame k is centred on k/fps (its audio window is too),
    so the nearest centre wins; clamped to the clip."""
    if num_frames <= 0:
        return 0
    return min(max(int(round(t * fps)), 0), num_frames - 1)


def frame_time(frame: int, fps: float) -> float:
    return frame / fps


class PlaybackClock:
    """Media time that advances with the wall clock while playing and stops at the end.

    Thread-safe: GUI callbacks (seek, play, pause) and the playback thread share it.
    """

    def __init__(self, duration_s: float, now: Callable[[], float] = time.monotonic):
        self._now = now
        self._lock = threading.Lock()
        self._duration = max(0.0, float(duration_s))
        self._anchor_t = 0.0
        self._anchor_wall: Optional[float] = None  # None while paused

    @property
    def duration(self) -> float:
        return self._duration

    @property
    def playing(self) -> bool:
        with self._lock:
            self._stop_at_end()
            return self._anchor_wall is not None

    def _stop_at_end(self) -> float:
        """Current time; pauses at the end (lock held)."""
        if self._anchor_wall is None:
            return self._anchor_t
        t = self._anchor_t + (self._now() - self._anchor_wall)
        if t >= self._duration:
            self._anchor_t, self._anchor_wall = self._duration, None
            return self._duration
        return t

    def time(self) -> float:
        with self._lock:
            return self._stop_at_end()

    def play(self) -> None:
        """Start (from the beginning when at the end); no-op when already playing."""
        with self._lock:
            self._stop_at_end()
            if self._anchor_wall is not None:
                return
            if self._anchor_t >= self._duration:
                self._anchor_t = 0.0
            self._anchor_wall = self._now()

    def pause(self) -> None:
        with self._lock:
            self._anchor_t = self._stop_at_end()
            self._anchor_wall = None

    def seek(self, t: float) -> None:
        """Jump to t (clamped to the clip), keeping the play state."""
        with self._lock:
            self._anchor_t = min(max(float(t), 0.0), self._duration)
            if self._anchor_wall is not None:
                self._anchor_wall = self._now()

    def snapshot(self) -> "tuple[float, bool]":
        """(time, playing) read together, for messages that must not mix two instants."""
        with self._lock:
            t = self._stop_at_end()
            return t, self._anchor_wall is not None
