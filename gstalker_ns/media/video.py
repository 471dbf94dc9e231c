"""A small mp4 writer: H.264 (yuv420p) video with an optional AAC mono audio track.

PyAV (libx264 + aac) when installed; otherwise imageio-ffmpeg's bundled ffmpeg binary; otherwise
a :class:`VideoWriterError` that says what to install. The file appears atomically: it is written
under a temporary name in the same folder and renamed when complete.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import wave as _wave
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple, Union

import numpy as np

from gstalker_ns.atomic import atomic_output
from gstalker_ns.errors import GstalkerUserError

PathLike = Union[str, "os.PathLike[str]"]


class VideoWriterError(GstalkerUserError, RuntimeError):
    """The mp4 cannot be written (no backend, bad frames); the message is one line."""


def _have_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _ffmpeg_exe() -> Optional[str]:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (RuntimeError, OSError):
        return None


def video_backend() -> Optional[str]:
    """'pyav', 'imageio-ffmpeg' or None: what :func:`write_mp4` would use here."""
    if _have_pyav():
        return "pyav"
    if _ffmpeg_exe() is not None:
        return "imageio-ffmpeg"
    return None


_NO_BACKEND = (
    "cannot write mp4: neither PyAV (pip install av) nor imageio-ffmpeg (pip install imageio-ffmpeg) is installed"
)


def _fps_fraction(fps: float) -> Fraction:
    if not fps > 0:
        raise VideoWriterError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def _check_frame(frame: np.ndarray, size: Optional[Tuple[int, int]]) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise VideoWriterError(f"frames must be HxWx3 uint8 arrays, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise VideoWriterError(f"frames must be uint8, got {frame.dtype}")
    if size is not None and frame.shape[:2] != size:
        raise VideoWriterError(f"all frames must have the same size: {size} then {frame.shape[:2]}")
    return frame


def _even(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column when a size is odd."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return np.ascontiguousarray(frame)


def _mono_float(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 2:
        a = a.mean(axis=1) if a.shape[1] <= 8 else a.mean(axis=0)
    return np.clip(np.nan_to_num(a.reshape(-1)), -1.0, 1.0)


def write_mp4(
    path: PathLike,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: Optional[np.ndarray] = None,
    sample_rate: int = 16000,
    crf: int = 18,
) -> Path:
    """Write frames (HxWx3 uint8, RGB) as H.264/yuv420p mp4 at ``fps``, with ``audio`` as AAC.

    ``frames`` may be any iterable (a generator is consumed once, frame by frame, so long clips
    need no memory). ``audio`` is mono float in [-1, 1] at ``sample_rate``. Returns the path.
    """
    path = Path(path)
    rate = _fps_fraction(fps)
    if not 0 <= int(crf) <= 51:
        raise VideoWriterError(f"crf must be in 0..51, got {crf}")
    audio_arr = None if audio is None else _mono_float(audio)
    backend = video_backend()
    if backend is None:
        raise VideoWriterError(_NO_BACKEND)
    with atomic_output(path, suffix=".tmp.mp4") as tmp:
        if backend == "pyav":
            _write_pyav(tmp, frames, rate, audio_arr, int(sample_rate), int(crf))
        else:
            _write_ffmpeg(tmp, frames, rate, audio_arr, int(sample_rate), int(crf))
    return path


def _write_pyav(tmp: str, frames: Iterable[np.ndarray], rate: Fraction, audio, sr: int, crf: int) -> None:
    import av

    it: Iterator[np.ndarray] = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise VideoWriterError("no frames to write") from None
    first = _check_frame(first, None)
    size = first.shape[:2]
    h, w = _even(first).shape[:2]
    with av.open(tmp, mode="w", format="mp4") as container:
        vs = container.add_stream("libx264", rate=rate)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": str(crf), "preset": "medium"}
        vs.time_base = Fraction(1, 1) / rate
        a_stream = None
        if audio is not None:
            a_stream = container.add_stream("aac", rate=sr, layout="mono")
            a_stream.time_base = Fraction(1, sr)
        a_pos = 0
        samples_per_frame = sr / float(rate)

        def push_audio(until: int) -> None:
            nonlocal a_pos
            until = min(until, audio.size)
            while a_pos < until:
                n = min(until - a_pos, 4096)
                af = av.AudioFrame.from_ndarray(audio[None, a_pos : a_pos + n].astype(np.float32), format="fltp", layout="mono")
                af.sample_rate = sr
                af.pts = a_pos
                af.time_base = Fraction(1, sr)
                for packet in a_stream.encode(af):
                    container.mux(packet)
                a_pos += n

        index = 0
        frame = first
        while frame is not None:
            frame = _check_frame(frame, size)
            vf = av.VideoFrame.from_ndarray(_even(frame), format="rgb24")
            vf.pts = index
            for packet in vs.encode(vf):
                container.mux(packet)
            index += 1
            if a_stream is not None:
                push_audio(int(round(index * samples_per_frame)))
            frame = next(it, None)
        for packet in vs.encode():
            container.mux(packet)
        if a_stream is not None:
            push_audio(audio.size)
            for packet in a_stream.encode():
                container.mux(packet)


def _write_wav_pcm16(path: str, audio: np.ndarray, sr: int) -> None:
    pcm = np.clip(np.round(audio.astype(np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with _wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def _write_ffmpeg(tmp: str, frames: Iterable[np.ndarray], rate: Fraction, audio, sr: int, crf: int) -> None:
    exe = _ffmpeg_exe()
    if exe is None:
        raise VideoWriterError(_NO_BACKEND)
    it = iter(frames)
    try:
        first = _check_frame(next(it), None)
    except StopIteration:
        raise VideoWriterError("no frames to write") from None
    size = first.shape[:2]
    h, w = _even(first).shape[:2]
    with tempfile.TemporaryDirectory(prefix="gstalker-mp4-", dir=os.path.dirname(tmp) or ".") as tdir:
        cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-vcodec", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", str(rate), "-i", "-"]
        if audio is not None:
            wav = os.path.join(tdir, "audio.wav")
            _write_wav_pcm16(wav, audio, sr)
            cmd += ["-i", wav, "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
        cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf), "-preset", "medium",
                "-f", "mp4", tmp]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            frame = first
            while frame is not None:
                frame = _check_frame(frame, size)
                proc.stdin.write(_even(frame).tobytes())
                frame = next(it, None)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        err = proc.stderr.read().decode("utf-8", "replace").strip()
        if proc.wait() != 0:
            last = err.splitlines()[-1] if err else f"exit code {proc.returncode}"
            raise VideoWriterError(f"ffmpeg failed writing {tmp}: {last}")


def probe_mp4(path: PathLike) -> dict:
    """What a player sees in a media file, by demuxing every packet (an ffprobe stand-in that
    needs no ffprobe binary): per stream its codec, packet count and end time in seconds.

    Returns {"video": {...} | None, "audio": {...} | None}; each has codec, packets, start, end
    (seconds, from packet timestamps, priming samples excluded) and rate (fps or sample rate).
    """
    import av

    info: dict = {"video": None, "audio": None}
    with av.open(str(path)) as container:
        streams = {s.index: s for s in container.streams if s.type in ("video", "audio")}
        ends: dict = {i: None for i in streams}
        starts: dict = {i: None for i in streams}
        counts: dict = {i: 0 for i in streams}
        for packet in container.demux(*streams.values()):
            if packet.pts is None or packet.size == 0:
                continue
            i = packet.stream.index
            tb = packet.time_base
            start = float(packet.pts * tb)
            end = float((packet.pts + (packet.duration or 0)) * tb)
            counts[i] += 1
            starts[i] = start if starts[i] is None else min(starts[i], start)
            ends[i] = end if ends[i] is None else max(ends[i], end)
        for i, stream in streams.items():
            kind = stream.type
            if info[kind] is not None:
                continue
            rate = float(stream.average_rate) if kind == "video" and stream.average_rate else stream.rate
            info[kind] = {
                "codec": stream.codec_context.name,
                "packets": counts[i],
                "start": max(0.0, starts[i] or 0.0),
                "end": ends[i] or 0.0,
                "rate": float(rate) if rate else None,
            }
    return info
