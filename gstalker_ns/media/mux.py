"""Add a sound track to an mp4 that another program wrote, without re-encoding its picture.

nerfstudio's `ns-render` writes silent videos (through mediapy and the `ffmpeg` binary, which it
insists on); we add the avatar's sound afterwards with that same binary: the video stream is
copied, the sound encoded as AAC, and the result replaces the file atomically.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from gstalker_ns.atomic import atomic_output
from gstalker_ns.audio.io import write_wav
from gstalker_ns.media.video import VideoWriterError


def ffmpeg_binary() -> Optional[str]:
    """The `ffmpeg` on PATH (the plugin links imageio-ffmpeg's there when the system has none)."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        return None


def add_sound(video: Path, sound: np.ndarray, sample_rate: int) -> Path:
    """Give `video` (an mp4 with one video stream) `sound` (mono float) as its AAC audio track."""
    video = Path(video)
    exe = ffmpeg_binary()
    if exe is None:
        raise VideoWriterError(f"cannot add sound to {video}: no ffmpeg binary; install ffmpeg or imageio-ffmpeg")
    fd, wav = tempfile.mkstemp(prefix=f".{video.stem}.", suffix=".wav", dir=str(video.parent))
    os.close(fd)
    try:
        write_wav(wav, sound, sample_rate)
        with atomic_output(video, suffix=".tmp.mp4") as tmp:
            done = subprocess.run(
                [exe, "-nostdin", "-v", "error", "-y", "-i", str(video), "-i", wav, "-map", "0:v:0", "-map", "1:a:0",
                 "-c:v", "copy", "-c:a", "aac", "-b:a", "128k", "-f", "mp4", tmp],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                reason = " ".join(done.stderr.split())[-300:] or f"exit status {done.returncode}"
                raise VideoWriterError(f"cannot add sound to {video}: ffmpeg failed ({reason})")
    finally:
        Path(wav).unlink(missing_ok=True)
    return video
