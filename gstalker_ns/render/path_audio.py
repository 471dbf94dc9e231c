"""The clip a camera path is rendered with: recorded in the path's JSON, turned into a drive.

The viewer's Render tab writes camera paths (`camera_paths/NAME.json`); when our Audio tab has a
clip selected, `gstalker_ns.viewer.path_export` adds a `"gstalker_audio"` entry (`record`) and,
for an uploaded clip, a copy of its sound beside the JSON (uploads live in a temporary folder
that goes when the viewer exits). `ns-render camera-path` then drives the avatar with it
(`gstalker_ns.render.ns_render_hook`):

    "gstalker_audio": {"source": "file", "file": "NAME.audio.wav", "label": "speech.mp3",
                       "start_s": 0.0, "av_offset_s": 0.0, "blink": "auto"}

- source "training": the run's own clip (its feature table and audio file); "file": any audio
  file, featurised with the checkpoint's extractor (a relative `file` is next to the JSON);
- output frame k is at time k/fps of the path and is driven by the clip at start_s + k/fps (the
  clip's audio window centred there, as in training); the sound is the clip from start_s, cut or
  padded with silence to the path's length and played av_offset_s later (the Audio tab's A/V
  offset);
- blink "auto": the training clip's own blinks for the training track, a natural schedule for
  other clips; "open" / "closed" as in the Audio tab.

A path without the entry (exported before, elsewhere, or written by hand) is rendered with the
training track from time 0, so the avatar talks and sounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from gstalker_ns.errors import GstalkerUserError

KEY = "gstalker_audio"
SOURCES = ("training", "file")
BLINKS = ("auto", "open", "closed")
CLIP_SUFFIX = ".audio.wav"
"""The copy of an uploaded clip is NAME.audio.wav beside NAME.json."""


class PathAudioError(GstalkerUserError):
    """A camera path's recorded clip cannot be used (missing file, bad entry); one line."""


@dataclass
class PathClip:
    """A camera path's `gstalker_audio` entry, read and checked."""

    source: str = "training"
    file: Optional[Path] = None
    """The audio file (absolute) for source "file"."""
    start_s: float = 0.0
    av_offset_s: float = 0.0
    blink: str = "auto"
    label: str = "training track"


def clip_path_for(json_path: Path) -> Path:
    """Where the copy of an uploaded clip goes for the camera path `json_path`."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + CLIP_SUFFIX)


def record(
    json_path: Path,
    source: str,
    label: str,
    wave: Optional[np.ndarray] = None,
    sample_rate: int = 16000,
    av_offset_s: float = 0.0,
    blink: str = "auto",
) -> Dict[str, Any]:
    """The `gstalker_audio` entry for a camera path about to be written at `json_path`.

    For source "file", `wave` (mono float) is written beside the JSON as NAME.audio.wav, whole or
    not at all (temp file + rename); the entry names it relative to the JSON so the two can be
    moved together. Nothing else is touched.
    """
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is unknown; use one of {', '.join(SOURCES)}")
    entry: Dict[str, Any] = {
        "source": source,
        "label": str(label),
        "start_s": 0.0,
        "av_offset_s": float(av_offset_s),
        "blink": blink if blink in BLINKS else "auto",
    }
    if source == "file":
        if wave is None or np.asarray(wave).size == 0:
            raise ValueError("a clip recorded as a file needs its sound")
        from gstalker_ns.audio.io import write_wav

        target = clip_path_for(json_path)
        write_wav(target, np.asarray(wave, dtype=np.float32), int(sample_rate))
        entry["file"] = target.name
    return entry


def read(camera_path: Dict[str, Any], json_path: Optional[Path]) -> Optional[PathClip]:
    """The checked entry of a loaded camera path JSON, or None when it has none."""
    entry = camera_path.get(KEY) if isinstance(camera_path, dict) else None
    if entry is None:
        return None
    where = f"{json_path}" if json_path is not None else "the camera path"
    fix = f"re-export the camera path from the viewer, or delete its {KEY!r} entry to use the training track"
    if not isinstance(entry, dict):
        raise PathAudioError(f"{where}: {KEY!r} must be an object; {fix}")
    source = entry.get("source", "file" if entry.get("file") else "training")
    if source not in SOURCES:
        raise PathAudioError(f"{where}: {KEY}.source {source!r} is not one of {', '.join(SOURCES)}; {fix}")
    numbers = {}
    for name in ("start_s", "av_offset_s"):
        value = entry.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PathAudioError(f"{where}: {KEY}.{name} must be a number of seconds, got {value!r}; {fix}")
        numbers[name] = float(value)
    if numbers["start_s"] < 0:
        raise PathAudioError(f"{where}: {KEY}.start_s must not be negative; {fix}")
    blink = entry.get("blink", "auto")
    if blink not in BLINKS:
        raise PathAudioError(f"{where}: {KEY}.blink {blink!r} is not one of {', '.join(BLINKS)}; {fix}")
    clip = PathClip(source=source, blink=blink, label=str(entry.get("label") or source), **numbers)
    if source == "file":
        name = entry.get("file")
        if not isinstance(name, str) or not name:
            raise PathAudioError(f"{where}: {KEY}.file must name an audio file; {fix}")
        file = Path(name).expanduser()
        if not file.is_absolute() and json_path is not None:
            file = Path(json_path).absolute().parent / file
        if not file.is_file():
            raise PathAudioError(
                f"{where}: its audio clip {file} no longer exists; put the clip back there, point "
                f"{KEY}.file at another audio file, or re-export the camera path with the clip selected in the Audio tab"
            )
        clip.file = file
        clip.label = str(entry.get("label") or file.name)
    return clip


@dataclass
class PathDrive:
    """Per output frame: feature rows and blinks for the model; the sound for the video."""

    features: np.ndarray
    """[N, W, D] float32: row k drives output frame k."""
    blink: np.ndarray
    """[N] float32."""
    sound: Optional[np.ndarray]
    """Mono float32, exactly N/fps seconds at `sample_rate`; None when there is no sound."""
    sample_rate: int
    note: str
    """What drives the avatar, for the console."""


def window(wave: np.ndarray, sample_rate: int, start_s: float, num_samples: int) -> np.ndarray:
    """`num_samples` samples of `wave` from time start_s (which may be negative), silence where
    the recording has none."""
    out = np.zeros(num_samples, dtype=np.float32)
    first = int(round(start_s * sample_rate))
    lo, hi = max(first, 0), min(first + num_samples, wave.size)
    if hi > lo:
        out[lo - first : hi - first] = wave[lo:hi]
    return out


def _fit_rows(array: np.ndarray, num_frames: int) -> np.ndarray:
    """Exactly num_frames rows (the last row repeated, or cut): frame counts can differ by one
    between round(duration * fps) and the path's own count."""
    if len(array) >= num_frames:
        return array[:num_frames]
    return np.concatenate([array, np.repeat(array[-1:], num_frames - len(array), axis=0)])


def _blinks(mode: str, auto: np.ndarray, dataset_blink: np.ndarray) -> np.ndarray:
    if mode == "auto":
        return auto.astype(np.float32)
    from gstalker_ns.viewer.sources import closed_eye_level

    level = 0.0 if mode == "open" else closed_eye_level(dataset_blink)
    return np.full(auto.shape, level, dtype=np.float32)


def drive_for_frames(
    model: Any, metadata: Dict[str, Any], clip: Optional[PathClip], num_frames: int, fps: float, origin: str = "the checkpoint"
) -> PathDrive:
    """The drive of `num_frames` output frames at `fps` (frame k at k/fps) from a path's clip
    (None: the training track from 0). See the module doc."""
    from gstalker_ns.audio.io import load_audio
    from gstalker_ns.drive.audio import drive_from_wave, spec_from_extractor

    clip = clip or PathClip()
    num_frames, fps = int(num_frames), float(fps)
    seconds = num_frames / fps
    dataset_blink = model.blink_table.detach().cpu().numpy().astype(np.float32)
    if clip.source == "training":
        clip_fps = float(metadata.get("fps") or 25.0)
        table = model.audio_table.detach().cpu().numpy().astype(np.float32)
        times = clip.start_s + np.arange(num_frames) / fps
        rows = np.clip(np.round(times * clip_fps).astype(np.int64), 0, len(table) - 1)
        features = table[rows]
        auto_blink = np.zeros(num_frames, np.float32)
        if len(dataset_blink):
            auto_blink = dataset_blink[np.minimum(rows, len(dataset_blink) - 1)]
        try:
            rate = spec_from_extractor(model.audio_extractor, origin=origin).sample_rate
        except GstalkerUserError:  # e.g. ER-NeRF features: the table drives, the sound is still the clip's
            rate = 16000
        audio_path = metadata.get("audio_path")
        sound, note = None, f"the training track from {clip.start_s:g} s"
        if clip.start_s + seconds > len(table) / clip_fps + 0.5 / fps:
            note += f" (it ends at {len(table) / clip_fps:.2f} s; after that the mouth holds its last frame, in silence)"
        try:
            if not audio_path:
                raise GstalkerUserError("the training folder has no audio file")
            wave = load_audio(audio_path, sample_rate=rate)
            sound = window(wave, rate, clip.start_s - clip.av_offset_s, int(round(seconds * rate)))
        except GstalkerUserError as exc:
            note += f", silent: {exc}"
        return PathDrive(features, _blinks(clip.blink, auto_blink, dataset_blink), sound, rate, note)

    from gstalker_ns.drive.blink import blink_track

    spec = spec_from_extractor(model.audio_extractor, origin=origin)
    wave = load_audio(clip.file, sample_rate=spec.sample_rate)
    samples = int(round(seconds * spec.sample_rate))
    drive = drive_from_wave(window(wave, spec.sample_rate, clip.start_s, samples), spec.sample_rate, spec, fps=fps,
                            source=str(clip.file))  # fmt: skip
    expected = tuple(model.audio_table.shape[1:])
    if tuple(drive.features.shape[1:]) != expected:
        raise PathAudioError(
            f"{clip.file}: features of shape {tuple(drive.features.shape[1:])} do not fit {origin}'s {expected}; "
            "the checkpoint's extractor record is inconsistent, retrain it"
        )
    features = _fit_rows(drive.features, num_frames)
    auto_blink = blink_track("natural", num_frames, fps, dataset_blink)
    sound = window(wave, spec.sample_rate, clip.start_s - clip.av_offset_s, samples)
    note = f"{clip.label} from {clip.start_s:g} s"
    if clip.start_s + seconds > wave.size / spec.sample_rate + 0.5 / fps:
        note += f" (the clip ends after {wave.size / spec.sample_rate - clip.start_s:.2f} s: silence after that)"
    return PathDrive(features, _blinks(clip.blink, auto_blink, dataset_blink), sound, spec.sample_rate, note)
