"""Audio file input/output.

`load_audio` accepts whatever a user is likely to hand us (wav, flac, ogg, mp3, m4a, the
audio stream of a video) and returns float32 mono at the rate the feature extractor wants.
`write_wav` / `read_wav` use only the standard library so they also work on machines
without soundfile/librosa (the GPU machine).

Every problem with an input file is reported as an `AudioError` whose one-line message names
the file, says what is wrong and what to do; library tracebacks never escape for bad input.
"""

from __future__ import annotations

import os
import wave as _wave
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from gstalker_ns.atomic import atomic_output
from gstalker_ns.errors import GstalkerUserError

PathLike = Union[str, "os.PathLike[str]"]

# Suffixes libsndfile reads natively; everything else goes straight to PyAV (ffmpeg).
_SOUNDFILE_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".w64", ".caf"}
_CONVERT_HINT = "convert it to wav/mp3/flac/ogg/m4a"


class AudioError(GstalkerUserError, ValueError):
    """A user-facing problem with an audio file (missing, unreadable, no audio, empty)."""


def _short(exc: BaseException, limit: int = 160) -> str:
    """One-line, bounded description of a library exception for embedding in a message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_mono_float(data: np.ndarray) -> np.ndarray:
    """[samples] or [samples, channels] -> float32 mono (channel mean), finite values only."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    return np.nan_to_num(data.reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0).astype(np.float32, copy=False)


def _read_soundfile(path: Path) -> Tuple[np.ndarray, int]:
    """Decode with libsndfile (exact, fast) -> (mono float32, rate); stdlib wave if it is absent."""
    try:
        import soundfile as sf
    except ImportError:  # the GPU machine has no soundfile: PCM wav still works through the stdlib
        if path.suffix.lower() in (".wav", ".wave"):
            return read_wav(path)
        raise

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return _to_mono_float(data), int(rate)


class _NoAudioStream(Exception):
    """The container opened fine but holds no audio stream."""


def _read_pyav(path: Path) -> Tuple[np.ndarray, int]:
    """Decode the first audio stream of any container ffmpeg knows -> (mono float32, rate)."""
    import av

    with av.open(str(path), mode="r") as container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise _NoAudioStream()
        stream = streams[0]
        rate = int(stream.rate or stream.codec_context.sample_rate or 0)
        # Planar float keeps every channel separate, so we can average them ourselves
        # (ffmpeg's own downmix weights channels by -3 dB instead of taking the mean).
        resampler = av.AudioResampler(format="fltp")
        chunks = []

        def _collect(frames) -> None:
            for out in frames:
                arr = out.to_ndarray()  # [channels, samples]
                chunks.append(arr.reshape(arr.shape[0], -1).mean(axis=0))

        for frame in container.decode(stream):
            if not rate:
                rate = int(frame.sample_rate)
            _collect(resampler.resample(frame))
        _collect(resampler.resample(None))
        expected = _declared_samples(stream, rate)
    data = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    # Encoders such as AAC pad the last packet; drop samples past the declared duration.
    if expected is not None and 0 < expected < data.size:
        data = data[:expected]
    return _to_mono_float(data), rate


def _declared_samples(stream, rate: int) -> "int | None":
    """Sample count the container declares for `stream`, or None when it does not say."""
    try:
        if stream.duration is None or stream.time_base is None or not rate:
            return None
        return int(round(float(stream.duration * stream.time_base) * rate))
    except Exception:
        return None


def _resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """High-quality resampling; soxr if present, librosa otherwise."""
    if rate_in == rate_out:
        return wave
    try:
        import soxr

        out = soxr.resample(wave, rate_in, rate_out, quality="HQ")
    except ImportError:  # machines without soxr (the GPU machine): polyphase filter from scipy
        from math import gcd

        try:
            from scipy.signal import resample_poly
        except ImportError:
            raise AudioError(
                f"cannot resample audio from {rate_in} Hz to {rate_out} Hz: neither soxr nor scipy is "
                "installed; `pip install soxr` or supply audio at the target rate"
            ) from None
        g = gcd(int(rate_in), int(rate_out))
        out = resample_poly(wave.astype(np.float64), int(rate_out) // g, int(rate_in) // g)
    return np.asarray(out, dtype=np.float32)


def load_audio(path: PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Load any audio (or video's audio) file as float32 mono in [-1, 1] at `sample_rate`.

    wav/flac/ogg go through soundfile; other formats, or files soundfile refuses, through PyAV.
    Raises AudioError for a missing, unreadable, audio-less or empty file.
    """
    path = Path(path)
    name = str(path)
    if sample_rate <= 0:
        raise AudioError(f"{name}: invalid target sample rate {sample_rate}; pass a positive rate such as 16000")
    if not path.exists():
        raise AudioError(f"{name}: file not found; check the path")
    if path.is_dir():
        raise AudioError(f"{name}: is a folder, not an audio file; pass the audio file itself")
    if path.stat().st_size == 0:
        raise AudioError(f"{name}: file is empty (0 bytes); {_CONVERT_HINT} again or pick another file")

    first_error: BaseException | None = None
    wave = rate = None
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            wave, rate = _read_soundfile(path)
        except Exception as exc:  # corrupt header, unsupported sub-format: try ffmpeg next
            first_error = exc
    if wave is None:
        try:
            wave, rate = _read_pyav(path)
        except _NoAudioStream:
            raise AudioError(
                f"{name}: contains no audio stream; use a file with sound (or extract the audio track first)"
            ) from None
        except ImportError:
            raise AudioError(
                f"{name}: cannot decode this format because PyAV is not installed; "
                "`pip install av` or convert the file to a 16-bit PCM wav"
            ) from None
        except Exception as exc:
            reason = _short(first_error or exc)
            raise AudioError(f"{name}: not a readable audio file ({reason}); {_CONVERT_HINT}") from None

    if wave.size == 0:
        raise AudioError(f"{name}: audio stream has no samples (empty recording); use a file with sound")
    if not rate or rate <= 0:
        raise AudioError(f"{name}: unknown sample rate; {_CONVERT_HINT}")
    wave = _resample(wave, int(rate), int(sample_rate))
    return np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False)


def write_wav(path: PathLike, wave: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM mono wav atomically (temp file + os.replace), stdlib only.

    Values are clipped to [-1, 1]; multi-channel input [samples, channels] is averaged.
    """
    path = Path(path)
    data = _to_mono_float(np.asarray(wave))
    # Same convention as soundfile/libsndfile: full scale is 32768, +1.0 saturates at 32767.
    pcm = np.clip(np.round(data.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
    with atomic_output(path) as tmp:
        with _wave.open(tmp, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm.tobytes())


def read_wav(path: PathLike) -> Tuple[np.ndarray, int]:
    """Read an integer-PCM wav with the stdlib only -> (float32 mono in [-1, 1], sample_rate)."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise AudioError(f"{name}: file not found; check the path")
    try:
        with _wave.open(str(path), "rb") as w:
            channels, width, rate, count = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(count)
    except (_wave.Error, EOFError, OSError) as exc:
        raise AudioError(
            f"{name}: not a PCM wav file the standard library can read ({_short(exc)}); "
            "write it with write_wav or use load_audio"
        ) from None
    if width == 1:  # 8-bit wav is unsigned
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        data = ints.astype(np.float32) / float(1 << 23)
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise AudioError(f"{name}: unsupported wav sample width {width} bytes; use load_audio")
    usable = (data.size // max(channels, 1)) * max(channels, 1)
    data = data[:usable].reshape(-1, max(channels, 1))
    return np.clip(_to_mono_float(data), -1.0, 1.0), int(rate)
