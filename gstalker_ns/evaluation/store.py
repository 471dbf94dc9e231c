"""The frames folder of an evaluation: everything the analysis needs, without the run or the dataset.

    OUT/frames/index.json            what is here (split, fps, size, frame indices, methods, audio)
    OUT/frames/gt/000045.png         ground-truth frames (lossless PNG, named by video frame index)
    OUT/frames/labels/000045.png     their label maps, where the dataset has them
    OUT/frames/<method>/000045.png   each method's renders (gstalker, splatfacto)
    OUT/frames/audio.wav             the clip's audio around the frames (16-bit PCM, 16 kHz)

`gstalker-eval` renders into it (on the GPU machine, say) and analyses it; `gstalker-eval
--lipsync-from OUT` analyses it again elsewhere (where face mesh, PyAV or ffmpeg are installed).
index.json is rewritten (atomically) after each finished part, so a method listed there has all
its frames. Only numpy, PIL and the standard library are used.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from gstalker_ns.data.layout import atomic_write_bytes, atomic_write_json
from gstalker_ns.errors import GstalkerUserError

FORMAT = "gstalker-eval-frames"
VERSION = 1
INDEX = "index.json"
GT = "gt"
LABELS = "labels"
AUDIO = "audio.wav"
AUDIO_MARGIN_S = 0.6  # audio kept before the first and after the last frame (the offset search needs 0.5 s)


class StoreError(GstalkerUserError):
    """A frames folder that cannot be read; one-line message."""


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 image (fast compression: these are working files)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _clear(root: Path) -> None:
    """Remove an earlier evaluation's frames from ``root`` (only what its index names)."""
    import shutil

    try:
        old = json.loads((root / INDEX).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        return
    (root / INDEX).unlink(missing_ok=True)
    for name in [GT, LABELS, *list(old.get("methods") or {})]:
        if name and "/" not in name and name not in (".", ".."):
            shutil.rmtree(root / name, ignore_errors=True)
    (root / AUDIO).unlink(missing_ok=True)


class FrameStore:
    """Reads and writes one frames folder (see the module docstring)."""

    def __init__(self, root: Path, index: Dict[str, Any]):
        self.root = Path(root)
        self.index = index

    # ---- creating

    @classmethod
    def create(cls, root: Path, split: str, fps: float, width: int, height: int, frame_idx: List[int]) -> "FrameStore":
        root = Path(root)
        _clear(root)
        root.mkdir(parents=True, exist_ok=True)
        index = {
            "format": FORMAT,
            "version": VERSION,
            "split": split,
            "fps": float(fps),
            "width": int(width),
            "height": int(height),
            "frame_idx": [int(i) for i in frame_idx],
            "ground_truth": False,
            "labels": False,
            "methods": {},
            "audio": None,
            "audio_unavailable": "not stored yet",
        }
        store = cls(root, index)
        store.save_index()
        return store

    def save_index(self) -> None:
        atomic_write_json(self.root / INDEX, self.index)

    def frame_path(self, source: str, frame: int) -> Path:
        return self.root / source / f"{int(frame):06d}.png"

    def write(self, source: str, frame: int, image: np.ndarray) -> None:
        path = self.frame_path(source, frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, png_bytes(image))

    def add_method(self, name: str, info: Dict[str, Any]) -> None:
        self.index["methods"][name] = info
        self.save_index()

    def store_audio(self, wave: np.ndarray, sample_rate: int) -> None:
        """Keep the clip's audio from AUDIO_MARGIN_S before the first frame to as long after the last,
        cut at frame boundaries (gstalker_ns.render.frames.audio_for_frames), silence past its end."""
        from gstalker_ns.audio.io import write_wav
        from gstalker_ns.render.frames import audio_for_frames

        fps = self.index["fps"]
        margin = int(math.ceil(AUDIO_MARGIN_S * fps))
        first = max(0, min(self.index["frame_idx"]) - margin)
        last = max(self.index["frame_idx"]) + margin
        segment = audio_for_frames(wave, sample_rate, first, last + 1 - first, fps)
        write_wav(self.root / AUDIO, segment, sample_rate)
        self.index["audio"] = {
            "file": AUDIO,
            "sample_rate": int(sample_rate),
            "first_frame": first,
            "start_s": int(round(first / fps * sample_rate)) / float(sample_rate),
        }
        self.index["audio_unavailable"] = None
        self.save_index()

    def no_audio(self, reason: str) -> None:
        self.index["audio"] = None
        self.index["audio_unavailable"] = reason
        self.save_index()

    # ---- reading

    @classmethod
    def open(cls, root: Path) -> "FrameStore":
        root = Path(root)
        if (root / "frames" / INDEX).exists() and not (root / INDEX).exists():
            root = root / "frames"  # the evaluation's output folder was given
        try:
            index = json.loads((root / INDEX).read_text())
        except FileNotFoundError:
            raise StoreError(
                f"{root}: no {INDEX}; pass the output folder of an earlier gstalker-eval run (it holds frames/{INDEX})"
            ) from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{root / INDEX}: unreadable ({' '.join(str(exc).split())[:120]}); run gstalker-eval again") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise StoreError(f"{root / INDEX}: not a gstalker-eval frames index; pass a gstalker-eval output folder")
        if index.get("version") != VERSION:
            raise StoreError(f"{root / INDEX}: frames format version {index.get('version')} is not {VERSION}; run gstalker-eval again")
        if not index.get("ground_truth") or not index.get("methods"):
            raise StoreError(f"{root}: the rendering that wrote these frames did not finish; run gstalker-eval again")
        return cls(root, index)

    @property
    def frame_idx(self) -> List[int]:
        return list(self.index["frame_idx"])

    @property
    def methods(self) -> List[str]:
        return list(self.index["methods"])

    def read(self, source: str, frame: int) -> np.ndarray:
        from gstalker_ns.render.frames import read_rgb

        path = self.frame_path(source, frame)
        try:
            return read_rgb(path)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: cannot read this frame ({' '.join(str(exc).split())[:120]}); run gstalker-eval again") from None

    def labels(self, frame: int) -> Optional[np.ndarray]:
        if not self.index.get("labels"):
            return None
        path = self.frame_path(LABELS, frame)
        if not path.exists():
            return None
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im, dtype=np.uint8).copy()

    def audio(self):
        """(wave, sample_rate, first_frame) or None: ``wave[0]`` is the first sample of video frame
        ``first_frame`` (at time first_frame / fps)."""
        info = self.index.get("audio")
        if not info:
            return None
        from gstalker_ns.audio.io import read_wav

        wave, rate = read_wav(self.root / info["file"])
        return wave, int(rate), int(info["first_frame"])
