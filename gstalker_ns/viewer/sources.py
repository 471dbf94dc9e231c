"""Audio sources of the viewer panel: the training track and uploaded clips, as drive tables,
blink tracks and the sound a browser plays.

Uploads go through `gstalker_ns.drive.audio` (the checkpoint's own extractor, frame k at k/fps)
exactly as `gstalker-render` does; the training track reuses the model's own feature table.
"""

from __future__ import annotations

import io
import itertools
import wave as _wave
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from gstalker_ns.drive.audio import AudioDrive
from gstalker_ns.drive.blink import blink_track

TRAINING_LABEL = "training track"
BLINK_MODES = ("auto", "open", "closed")
WAV_SECONDS_LIMIT = 120.0
"""Sound longer than this is sent to browsers as Ogg Vorbis (about 9x smaller than 16-bit PCM);
shorter sound stays WAV, which every browser seeks sample-exactly."""

_keys = itertools.count(1)


def closed_eye_level(dataset_blink: Optional[np.ndarray]) -> float:
    """How far 'closed' goes: where the training clip's closed eyes sit (as the natural blink
    schedule of `drive.blink` does), 1.0 when the clip has no usable blink track."""
    track = None if dataset_blink is None else np.asarray(dataset_blink, dtype=np.float32).reshape(-1)
    if track is None or track.size == 0 or float(track.max()) <= 0.2:
        return 1.0
    return float(np.clip(np.quantile(track, 0.995), 0.5, 1.0))


@dataclass
class DriveSource:
    """One entry of the panel's audio dropdown."""

    label: str
    fps: float
    num_frames: int
    table: Optional[torch.Tensor]
    """[F, W, D] features, or None for the model's own (training) table."""
    auto_blink: Optional[np.ndarray]
    """[F] blink track used in 'auto' mode, or None for the model's own (training) track."""
    wave: Optional[np.ndarray] = None
    """Mono float32 for the browser's sound; None when there is no sound to play."""
    sample_rate: int = 16000
    note: str = ""
    """Shown under the dropdown (e.g. why there is no sound, or that a clip was cut)."""
    key: str = field(default_factory=lambda: f"s{next(_keys)}")
    """Identifies this source's sound element in the browser."""
    _payload: Optional[Tuple[str, bytes]] = field(default=None, repr=False)

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    @property
    def last_frame_time(self) -> float:
        return max(self.num_frames - 1, 0) / self.fps

    def blink(self, mode: str, dataset_blink: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """The blink track for a mode; None means 'the model's own' (no swap needed)."""
        if mode not in BLINK_MODES:
            raise ValueError(f"blink mode {mode!r} is unknown; use one of {', '.join(BLINK_MODES)}")
        if mode == "auto":
            return self.auto_blink
        level = 0.0 if mode == "open" else closed_eye_level(dataset_blink)
        return np.full(self.num_frames, level, dtype=np.float32)

    def sound(self) -> Optional[Tuple[str, bytes]]:
        """(mime type, bytes) of the sound for browsers, encoded once."""
        if self.wave is None:
            return None
        if self._payload is None:
            self._payload = encode_sound(self.wave, self.sample_rate)
        return self._payload


def training_source(
    num_frames: int, fps: float, wave: Optional[np.ndarray], sample_rate: int, note: str = ""
) -> DriveSource:
    return DriveSource(
        label=TRAINING_LABEL, fps=fps, num_frames=num_frames, table=None, auto_blink=None,
        wave=wave, sample_rate=sample_rate, note=note,
    )  # fmt: skip


def upload_source(
    drive: AudioDrive, label: str, dataset_blink: Optional[np.ndarray], device: torch.device, note: str = ""
) -> DriveSource:
    """An uploaded clip: its features, natural blinks (as gstalker-render's default) and sound."""
    blink = blink_track("natural", drive.num_frames, drive.fps, dataset_blink)
    return DriveSource(
        label=label,
        fps=drive.fps,
        num_frames=drive.num_frames,
        table=torch.from_numpy(np.ascontiguousarray(drive.features, dtype=np.float32)).to(device),
        auto_blink=blink,
        wave=drive.wave,
        sample_rate=drive.sample_rate,
        note=note,
    )


def unique_label(name: str, taken: Sequence[str]) -> str:
    """`name`, or `name (2)`, `name (3)`... so every dropdown entry stays distinct."""
    if name not in taken:
        return name
    for n in itertools.count(2):
        candidate = f"{name} ({n})"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable")


def wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    pcm = (np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    buffer = io.BytesIO()
    with _wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def encode_sound(wave: np.ndarray, sample_rate: int) -> Tuple[str, bytes]:
    """WAV for short clips, Ogg Vorbis for long ones when soundfile can write it (falls back to WAV)."""
    if wave.size / float(sample_rate) > WAV_SECONDS_LIMIT:
        try:
            import soundfile as sf

            data = np.asarray(wave, dtype=np.float32)
            buffer = io.BytesIO()
            # In blocks: libsndfile 1.2's Vorbis encoder crashes the process (SIGSEGV) when handed a
            # few minutes of audio in one write; 2 s blocks are safe (600 s encoded in ~2 s).
            block = 2 * int(sample_rate)
            with sf.SoundFile(buffer, "w", samplerate=int(sample_rate), channels=1, format="OGG", subtype="VORBIS") as out:
                for start in range(0, data.size, block):
                    out.write(data[start : start + block])
            return "audio/ogg", buffer.getvalue()
        except Exception:  # no soundfile, or a libsndfile without Vorbis: WAV is always playable
            pass
    return "audio/wav", wav_bytes(wave, sample_rate)


def frame_lookup(frame_indices: Dict[str, Sequence[int]]) -> Dict[int, Tuple[str, int]]:
    """frame_idx -> (split, dataset index) over the splits given (the first split wins a tie)."""
    lookup: Dict[int, Tuple[str, int]] = {}
    for split, indices in frame_indices.items():
        for i, frame in enumerate(indices):
            lookup.setdefault(int(frame), (split, i))
    return lookup
