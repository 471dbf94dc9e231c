"""Blink tracks for new audio: the training clip's own, a natural synthetic schedule, or none.

Blink values follow the dataset convention: 0 eyes open, 1 closed (per-clip normalised).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from gstalker_ns.drive.timeline import looped_positions

BLINK_MODES = ("dataset", "natural", "off")

BLINKS_PER_MINUTE = 17.0
"""Typical spontaneous blink rate of a speaking adult (about 15-20 per minute)."""
BLINK_SECONDS = 0.25
"""Closing plus opening; eyes close fast and open more slowly."""
MIN_GAP_SECONDS = 1.0


def blink_shape(num_samples: int) -> np.ndarray:
    """One blink over `num_samples` frames, 0 -> 1 -> 0: closing over the first third, reopening
    over the rest, with a frame exactly at full closure."""
    peak = max(1, int(round((num_samples - 1) / 3)))
    i = np.arange(num_samples, dtype=np.float64)
    closing = i / peak
    reopening = (num_samples - 1 - i) / max(1, num_samples - 1 - peak)
    return np.sin(0.5 * np.pi * np.clip(np.minimum(closing, reopening), 0, 1)) ** 2


def natural_blinks(num_frames: int, fps: float, seed: int = 0, amplitude: float = 1.0) -> np.ndarray:
    """[num_frames] float32: blinks at random intervals (gamma-distributed, mean 60/BLINKS_PER_MINUTE s,
    at least MIN_GAP_SECONDS apart), each BLINK_SECONDS long, peaking at `amplitude`."""
    rng = np.random.default_rng(seed)
    track = np.zeros(num_frames, dtype=np.float32)
    mean_gap = 60.0 / BLINKS_PER_MINUTE
    length = max(3, int(round(BLINK_SECONDS * fps)))
    shape = blink_shape(length) * amplitude
    t = rng.uniform(0.3, mean_gap)  # first blink soon, but not at frame 0
    while True:
        start = int(round(t * fps))
        if start + length > num_frames:
            break
        track[start : start + length] = np.maximum(track[start : start + length], shape)
        t += MIN_GAP_SECONDS + rng.gamma(2.0, (mean_gap - MIN_GAP_SECONDS) / 2.0)
    return track


def blink_track(
    mode: str,
    num_frames: int,
    fps: float,
    dataset_blink: Optional[np.ndarray] = None,
    seed: int = 0,
    clip_fps: Optional[float] = None,
) -> np.ndarray:
    """The blink track for `num_frames` output frames.

    dataset: the training clip's own track (recorded at `clip_fps`, default `fps`) at its real
    speed, looped back and forth when the audio is longer;
    natural: `natural_blinks`, peaking where the training clip's closed eyes sit;
    off: eyes open throughout.
    """
    if mode not in BLINK_MODES:
        raise ValueError(f"blink mode {mode!r} is unknown; use one of {', '.join(BLINK_MODES)}")
    if mode == "off":
        return np.zeros(num_frames, dtype=np.float32)
    track = None if dataset_blink is None else np.asarray(dataset_blink, dtype=np.float32).reshape(-1)
    if mode == "dataset":
        if track is None or track.size == 0:
            return np.zeros(num_frames, dtype=np.float32)
        positions = looped_positions(num_frames, fps, clip_fps or fps, track.size)
        return track[np.round(positions).astype(np.int64)].astype(np.float32)
    amplitude = 1.0
    if track is not None and track.size and float(track.max()) > 0.2:
        amplitude = float(np.clip(np.quantile(track, 0.99), 0.5, 1.0))
    return natural_blinks(num_frames, fps, seed=seed, amplitude=amplitude)
