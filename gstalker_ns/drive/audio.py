"""Any audio file -> one feature window per output video frame, with the checkpoint's extractor.

Output frame k shows time k/fps and is driven by the feature window centred at k/fps (plus the
extractor's fixed look-ahead), exactly as training frames were: `window_features` does the
mapping, here with the requested fps instead of the training clip's. The frame count is
round(duration * fps), so the video and the sound end together (within one frame).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from gstalker_ns.audio.features import AudioFeatureSpec, extract_features
from gstalker_ns.audio.io import AudioError, load_audio
from gstalker_ns.errors import GstalkerUserError

DEFAULT_FPS = 25.0
MIN_SECONDS = 0.1
"""Shorter clips give no full frame at 25 fps; they are refused with a message."""


@dataclass
class AudioDrive:
    """A clip turned into per-frame model input. `wave` is kept to be muxed into the video."""

    features: np.ndarray
    """[num_frames, window, dim] float32, row k drives output frame k."""
    wave: np.ndarray
    """Mono float32 in [-1, 1] at `sample_rate` (the extractor's rate)."""
    sample_rate: int
    fps: float
    source: str
    """Where the audio came from (a path or a description), for messages and metadata."""

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])

    @property
    def duration_s(self) -> float:
        return self.wave.size / float(self.sample_rate)


def spec_from_extractor(extractor: Dict, origin: str = "the checkpoint") -> AudioFeatureSpec:
    """The feature spec a model was trained with, or a one-line error when it has none."""
    if not extractor:
        raise GstalkerUserError(
            f"{origin} records no audio extractor, so new audio cannot be featurised the way it was "
            "trained; retrain with this version of gstalker-ns"
        )
    if extractor.get("source") == "ernerf":
        raise GstalkerUserError(
            f"{origin} was trained on precomputed ER-NeRF features ({extractor.get('file', 'aud*.npy')}), "
            "which gstalker-ns cannot compute for new audio; retrain on a folder made by gstalker-process "
            "(or drive it with features made by the same ER-NeRF extractor)"
        )
    return AudioFeatureSpec.from_json(extractor)


def frame_count(num_samples: int, sample_rate: int, fps: float) -> int:
    """round(duration * fps): the number of output frames for a clip."""
    return int(round(num_samples / float(sample_rate) * fps))


def drive_from_wave(
    wave: np.ndarray, sample_rate: int, spec: AudioFeatureSpec, fps: float = DEFAULT_FPS, source: str = "audio"
) -> AudioDrive:
    """Featurise mono float audio at `sample_rate` (resampled to the extractor's rate first)."""
    if not fps > 0:
        raise GstalkerUserError(f"fps must be positive, got {fps}")
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if sample_rate != spec.sample_rate:
        from gstalker_ns.audio.io import _resample

        wave = _resample(wave, int(sample_rate), spec.sample_rate)
    if wave.size < MIN_SECONDS * spec.sample_rate:
        raise AudioError(
            f"{source}: only {wave.size / spec.sample_rate:.3f} s of audio; use a clip of at least {MIN_SECONDS} s"
        )
    num_frames = frame_count(wave.size, spec.sample_rate, fps)
    frame_spec = dataclasses.replace(spec, fps=float(fps))
    frame_spec._recorded = dict(spec._recorded)
    features = extract_features(wave, frame_spec, num_frames)
    return AudioDrive(features=features, wave=wave, sample_rate=spec.sample_rate, fps=float(fps), source=source)


def drive_from_file(
    path: Union[str, Path], spec: AudioFeatureSpec, fps: float = DEFAULT_FPS, max_seconds: Optional[float] = None
) -> AudioDrive:
    """Load any audio file (wav/mp3/flac/m4a/ogg, any rate, mono or stereo, or a video's sound)."""
    wave = load_audio(path, sample_rate=spec.sample_rate)
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * spec.sample_rate))]
    return drive_from_wave(wave, spec.sample_rate, spec, fps=fps, source=str(path))
