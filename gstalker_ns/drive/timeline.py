"""Mapping output frames onto a recorded track (poses, blinks) played at its real speed."""

from __future__ import annotations

import numpy as np


def ping_pong_positions(positions: np.ndarray, count: int) -> np.ndarray:
    """Fold continuous positions onto [0, count-1], going back and forth (a triangle wave), so a
    looped track has no jump at the seam."""
    positions = np.asarray(positions, dtype=np.float64)
    if count <= 1:
        return np.zeros_like(positions)
    period = 2.0 * (count - 1)
    p = np.mod(positions, period)
    return np.where(p <= count - 1, p, period - p)


def looped_positions(num_frames: int, fps: float, track_fps: float, count: int) -> np.ndarray:
    """Fractional track index for output frames 0..num_frames-1 at `fps`, for a track of `count`
    entries recorded at `track_fps`, looped back and forth."""
    return ping_pong_positions(np.arange(num_frames, dtype=np.float64) * (track_fps / fps), count)
