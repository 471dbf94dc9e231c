"""Stage 1 of preprocessing: decode a talking-portrait video into 25 fps frames and 16 kHz audio.

    info = probe_video("talk.mp4")                  # VideoInfo; VideoInputError for unusable files
    result = decode_video("talk.mp4", Path("out"))  # out/frames/000000.jpg ..., out/audio.wav, out/decode.json

**Timeline.** The video stream defines time: t = 0 is the first video frame. Output frame k is
at t = k / target_fps; there are ``round(duration * target_fps)`` of them (halves round up),
where ``duration`` runs from the first frame to the end of the last one. Audio sample j of ``audio.wav`` is at
t = j / 16000: audio recorded before the first video frame is dropped, and the track is
trimmed or padded with silence to exactly ``num_frames / target_fps`` seconds. This keeps the
lips in sync the way a player shows the file (players honour the same timestamps).

**Which source frame an output frame shows** (:func:`resample_times`): the latest source frame
whose timestamp is <= t plus half of the interval that precedes that frame. For a constant
frame rate this is simply the source frame nearest in time (30 fps -> 25 fps drops one frame in
six, 24 fps -> 25 fps repeats one frame a second, 25 fps passes through 1:1); for a variable
frame rate (phones) it is the nearest frame as well, so the displayed content is never more than
half a source interval away from its true time. Exact ties go to the later frame.

**Orientation.** Phones store portrait video as landscape pixels plus a display matrix (the
``rotate`` tag of older ffmpeg). Frames are written the way players show them: the rotation
(and mirroring, if any) is applied, and ``VideoInfo.width/height`` are the displayed size.

**Caching.** ``decode.json`` is written last; a later call with the same input (size, mtime,
hash of the first MiB) and options returns the cached result without decoding. Files written
by an interrupted run (frames but no manifest) are overwritten; files the stage does not own
are never touched, and the input video is only ever opened for reading.

Decoding streams frame by frame (memory does not depend on the clip length) with PyAV's
threaded decoder; JPEGs are encoded with OpenCV (about 1.5x faster than PIL here) in a
worker thread that overlaps with decoding.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import re
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from gstalker_ns.audio.io import AudioError, _resample, write_wav
from gstalker_ns.data.layout import AUDIO_SAMPLE_RATE, DEFAULT_FPS, atomic_write_bytes, atomic_write_json
from gstalker_ns.errors import GstalkerUserError
from gstalker_ns.preprocess.stage_files import remove_stale_files
from gstalker_ns.progress import progress_bar

PathLike = Union[str, "os.PathLike[str]"]

DECODE_VERSION = 1  # bump when the stage's output for the same input and options changes
MANIFEST_FILE = "decode.json"
FRAMES_DIR = "frames"
AUDIO_FILE = "audio.wav"
FRAME_NAME = "{:06d}.jpg"

MIN_DURATION_S = 1.0  # shorter clips are refused
RECOMMENDED_DURATION_S = 5.0  # shorter clips get a ShortClipWarning
SILENCE_PEAK = 1e-4  # audio whose peak stays below this (-80 dBFS) is "silent"
AUDIO_GAP_WARN_S = 0.5  # warn when the audio track misses more than this much of the video
HASH_BYTES = 1 << 20  # the input fingerprint hashes this much of the file's head

_TIE_EPS = 1e-6  # in output frames: boundaries this close to an output time count as reached
_FRAME_FILE_RE = re.compile(r"^\d{6}\.jpg$")
_TEMP_FILE_RE = re.compile(r"^\.(\d{6}\.jpg|audio\.wav|decode\.json)\..*\.tmp$")
_RETRY_HINT = "re-export or re-download the video (mp4/mov/mkv with H.264 or HEVC)"

# Display matrix [a b; c d] signs -> (mirror first, then np.rot90 k): measured against ffmpeg's
# autorotate for all eight orientations.
_ORIENTATIONS: Dict[Tuple[int, int, int, int], Tuple[bool, int]] = {
    (1, 0, 0, 1): (False, 0),
    (0, -1, 1, 0): (False, 1),
    (-1, 0, 0, -1): (False, 2),
    (0, 1, -1, 0): (False, 3),
    (-1, 0, 0, 1): (True, 0),
    (0, 1, 1, 0): (True, 1),
    (1, 0, 0, -1): (True, 2),
    (0, -1, -1, 0): (True, 3),
}


class VideoInputError(GstalkerUserError, ValueError):
    """The input video cannot be used; the one-line message names the file, says what is wrong
    and what to do."""


class DecodeWarning(UserWarning):
    """A problem with the input that decoding works around (the result may be worse)."""


class ShortClipWarning(DecodeWarning):
    """The clip is long enough to process but short for training a good avatar."""


@dataclass
class VideoInfo:
    """What :func:`probe_video` learns about a file without decoding it all.

    ``width``/``height`` are the displayed size (after ``rotation``); ``fps`` is the average
    rate (frames / duration); ``num_frames`` counts the source frames from the packet index (an
    estimate: the decoder may drop damaged ones); ``start_s`` is the first video timestamp,
    which is t = 0 of the outputs. ``rotation`` is the counter-clockwise turn in degrees
    (0/90/180/270) applied to show the frames upright, after mirroring if ``mirrored``.
    """

    path: Path
    width: int
    height: int
    fps: float
    duration_s: float
    num_frames: int
    variable_frame_rate: bool
    has_audio: bool
    audio_sample_rate: Optional[int]
    audio_channels: int
    codec: str
    rotation: int = 0
    mirrored: bool = False
    start_s: float = 0.0
    pixel_format: str = ""
    audio_codec: Optional[str] = None
    declared_duration_s: Optional[float] = None  # what the header claims; more than duration_s: truncated

    def num_output_frames(self, target_fps: float = DEFAULT_FPS) -> int:
        """How many frames decoding at ``target_fps`` yields: round(duration * target_fps)."""
        return _num_outputs(self.duration_s, target_fps)

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


@dataclass
class DecodeResult:
    """What :func:`decode_video` wrote. ``cached`` is True when an earlier run's output was reused.

    ``source_frame_indices[k]`` is the decoded source frame (counted in presentation order from 0)
    that output frame k shows; None for a cached result, since it is only known while decoding.
    """

    out_dir: Path
    num_frames: int
    fps: float
    width: int
    height: int
    duration_s: float
    audio_sample_rate: int
    audio_num_samples: int
    info: VideoInfo
    cached: bool
    manifest: Dict[str, Any] = field(repr=False, default_factory=dict)
    source_frame_indices: Optional[np.ndarray] = field(repr=False, default=None)

    @property
    def frames_dir(self) -> Path:
        return self.out_dir / FRAMES_DIR

    @property
    def audio_path(self) -> Path:
        return self.out_dir / AUDIO_FILE

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST_FILE

    def frame_path(self, index: int) -> Path:
        return self.frames_dir / FRAME_NAME.format(index)

    @property
    def frame_paths(self) -> List[Path]:
        return [self.frame_path(k) for k in range(self.num_frames)]


# --------------------------------------------------------------------------------------------
# small helpers


def _short(exc: BaseException, limit: int = 120) -> str:
    """One-line, bounded description of a library exception for embedding in a message (for
    ffmpeg errors just the reason: their str() repeats the errno and the path)."""
    reason = getattr(exc, "strerror", None)
    text = " ".join(str(reason or exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _seconds(value: float) -> str:
    """Seconds for a message, truncated (not rounded) so 0.96 s never reads as '1 s'."""
    return f"{math.floor(value * 100 + 1e-6) / 100:g}"


def _num_outputs(duration_s: float, target_fps: float) -> int:
    """round(duration * fps) with halves rounded up (Python's round() would go to even)."""
    return max(0, int(math.floor(duration_s * target_fps + 0.5)))


def _check_target_fps(target_fps: float) -> float:
    fps = float(target_fps)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"target_fps must be a positive number, got {target_fps!r}")
    return fps


def _check_path(path: Path) -> None:
    """Refuse the cases ffmpeg reports badly (missing, folder, empty) with a clear message."""
    if not path.exists():
        raise VideoInputError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise VideoInputError(f"{path}: is a folder, not a video; pass the video file itself")
    if path.stat().st_size == 0:
        raise VideoInputError(f"{path}: file is empty (0 bytes); {_RETRY_HINT}")


def _open(path: Path):
    """av.open for reading, with unreadable files turned into a VideoInputError."""
    try:
        import av
    except ImportError:
        raise VideoInputError(f"{path}: cannot decode video because PyAV is not installed; `pip install av`") from None
    try:
        return av.open(str(path), mode="r", metadata_errors="replace")
    except Exception as exc:  # InvalidDataError, PermissionError, ... : all mean "cannot read it"
        if isinstance(exc, PermissionError):
            raise VideoInputError(f"{path}: permission denied; make the file readable") from None
        raise VideoInputError(
            f"{path}: not a readable video ({_short(exc)}); the file is damaged, truncated or not a video: "
            f"{_RETRY_HINT}"
        ) from None


def _is_still_image_format(container) -> bool:
    """ffmpeg opens a jpg/png as a one-frame 'video' through its image demuxers."""
    names = set((container.format.name or "").split(","))
    return bool(names & {"image2", "image2pipe"}) or any(n.endswith("_pipe") for n in names)


def _video_stream(container, path: Path):
    """The first real video stream; cover art of audio files (attached pictures) does not count."""
    import av

    attached = av.stream.Disposition.attached_pic
    for stream in container.streams.video:
        if not (stream.disposition & attached):
            return stream
    if container.streams.audio:
        raise VideoInputError(
            f"{path}: has no video stream (it is an audio-only file); pass the talking-portrait video (mp4/mov/mkv)"
        )
    raise VideoInputError(f"{path}: has no video stream; pass the talking-portrait video (mp4/mov/mkv)")


def _orientation(frame, stream) -> Tuple[bool, int]:
    """(mirror, quarter turns counter-clockwise) that show ``frame`` upright.

    Reads the frame's display matrix (PyAV 18 attaches the stream's to every frame); falls back
    to the legacy ``rotate`` tag (degrees clockwise). Non-right angles are ignored, as ffmpeg does.
    """
    for side in getattr(frame, "side_data", None) or ():
        if getattr(getattr(side, "type", None), "name", "") != "DISPLAYMATRIX":
            continue
        raw = bytes(side)
        if len(raw) < 36:
            break
        m = np.frombuffer(raw[:36], dtype=np.int32)
        key = tuple(int(np.sign(round(v / 65536.0))) for v in (m[0], m[1], m[3], m[4]))
        return _ORIENTATIONS.get(key, (False, 0))  # type: ignore[arg-type]
    tag = (stream.metadata or {}).get("rotate")
    if tag:
        try:
            degrees = int(round(float(tag)))
        except ValueError:
            return False, 0
        if degrees % 90 == 0:
            return False, (-degrees // 90) % 4
    return False, 0


def _orient(image: np.ndarray, mirror: bool, quarter_turns: int) -> np.ndarray:
    """Apply the display orientation to an HxWxC array (no copy when there is nothing to do)."""
    if mirror:
        image = image[:, ::-1]
    if quarter_turns:
        image = np.rot90(image, quarter_turns)
    return np.ascontiguousarray(image) if (mirror or quarter_turns) else image


def _is_variable(times_s: np.ndarray, tick_s: float) -> bool:
    """True when the frame intervals are irregular: some interval differs from the median by more
    than 10% (plus one timestamp tick, so rounding of 29.97 fps to a 1/1000 time base is not VFR)."""
    if times_s.size < 3:
        return False
    intervals = np.diff(np.sort(times_s))
    median = float(np.median(intervals))
    if median <= 0:
        return True
    return bool(np.any(np.abs(intervals - median) > 0.1 * median + 1.5 * tick_s))


def _time_base_s(stream) -> float:
    return float(stream.time_base) if stream.time_base else 0.0


# --------------------------------------------------------------------------------------------
# probing


def probe_video(path: PathLike) -> VideoInfo:
    """Describe a video from its packet index plus its first decoded frame.

    Reading the packet timestamps (no decoding) gives the exact frame count, duration and
    whether the frame rate varies; decoding one frame proves the stream is decodable and gives
    the display orientation. Raises VideoInputError for a missing, damaged or audio-only file.
    """
    path = Path(path)
    _check_path(path)
    with _open(path) as container:
        if _is_still_image_format(container):
            raise VideoInputError(f"{path}: is a still image, not a video; pass the talking-portrait video")
        stream = _video_stream(container, path)
        tick = _time_base_s(stream)
        times: List[float] = []
        last_t, last_dur = -math.inf, 0.0  # the presentation-last packet and its duration
        first_frame = None
        decode_error: Optional[BaseException] = None
        try:
            for packet in container.demux(stream):
                if first_frame is None:
                    try:
                        frames = stream.decode(packet)
                        if frames:
                            first_frame = frames[0]
                    except Exception as exc:  # a damaged packet: keep looking for a decodable one
                        decode_error = exc
                if packet.size == 0 or packet.is_discard:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    continue
                t = float(ts * packet.time_base)
                times.append(t)
                if t >= last_t:
                    last_t, last_dur = t, float(packet.duration * packet.time_base) if packet.duration else 0.0
        except Exception as exc:  # the container itself breaks off (truncated index/data)
            if not times:
                raise VideoInputError(
                    f"{path}: not a readable video ({_short(exc)}); the file is damaged or truncated: {_RETRY_HINT}"
                ) from None
        if first_frame is None:
            reason = f" ({_short(decode_error)})" if decode_error else ""
            raise VideoInputError(
                f"{path}: no decodable video frame{reason}; the file is damaged or truncated: {_RETRY_HINT}"
            )
        mirror, turns = _orientation(first_frame, stream)
        ctx = stream.codec_context
        width, height = int(first_frame.width), int(first_frame.height)
        if turns % 2:
            width, height = height, width

        pts = np.asarray(sorted(times), dtype=np.float64)
        if pts.size:
            if last_dur <= 0:  # same fallback as the decoder: the interval before the last frame
                nominal = 1.0 / float(stream.average_rate) if stream.average_rate else 0.0
                last_dur = float(pts[-1] - pts[-2]) if pts.size > 1 else nominal
            start = float(pts[0])
            duration = float(pts[-1] - pts[0]) + last_dur
            count = int(pts.size)
        else:  # no timestamps at all (raw elementary streams): trust the header
            start = float(first_frame.time or 0.0)
            duration = _header_duration(container, stream)
            rate = float(stream.average_rate or stream.guessed_rate or 0.0)
            count = int(stream.frames or round(duration * rate))
        fps = count / duration if duration > 0 else 0.0
        declared = _header_duration(container, stream) or None

        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            fps=fps,
            duration_s=duration,
            num_frames=count,
            variable_frame_rate=_is_variable(pts, tick),
            has_audio=audio is not None,
            audio_sample_rate=(int(audio.rate or audio.codec_context.sample_rate or 0) or None) if audio else None,
            audio_channels=int(audio.channels or 0) if audio else 0,
            codec=str(ctx.name or ""),
            rotation=turns * 90,
            mirrored=mirror,
            start_s=start,
            pixel_format=str(ctx.pix_fmt or ""),
            audio_codec=str(audio.codec_context.name) if audio else None,
            declared_duration_s=declared,
        )


def _header_duration(container, stream) -> float:
    """Duration the header declares (stream first, container second), 0.0 when unknown."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000.0
    return 0.0


def check_video(info: VideoInfo) -> None:
    """Refuse videos gstalker cannot train on, warn about weak ones (before any work is done)."""
    path = info.path
    if info.duration_s < MIN_DURATION_S:
        raise VideoInputError(
            f"{path}: is {_seconds(info.duration_s)} s long; gstalker needs at least "
            f"{MIN_DURATION_S:g} s ({RECOMMENDED_DURATION_S:g} s or more recommended)"
        )
    if not info.has_audio:
        raise VideoInputError(f"{path}: has no audio track; gstalker needs the speech: re-export with audio")
    declared = info.declared_duration_s
    if declared and declared - info.duration_s > max(0.5, 0.05 * declared):
        warnings.warn(
            DecodeWarning(
                f"{path}: holds only {_seconds(info.duration_s)} s of the {_seconds(declared)} s its header declares "
                "(truncated copy?); using what is there, re-copy the file to get all of it"
            ),
            stacklevel=3,
        )
    if info.duration_s < RECOMMENDED_DURATION_S:
        warnings.warn(
            ShortClipWarning(
                f"{path}: is only {_seconds(info.duration_s)} s long; the avatar will be poor, "
                f"use {RECOMMENDED_DURATION_S:g} s or more of the person talking (minutes are best)"
            ),
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# frame timing


def resample_times(source_pts_s: np.ndarray, target_fps: float, duration_s: float) -> np.ndarray:
    """For each output frame k (t = k / target_fps, k < round(duration_s * target_fps), halves
    rounded up) the index of the source frame to show.

    ``source_pts_s`` are the source frames' presentation times in seconds, non-decreasing, with
    the first frame at (or before) 0. The rule: frame i is shown from the midpoint between frame
    i-1 and frame i on, i.e. the latest frame whose timestamp is <= t + half of the interval
    before it. That is the frame nearest in time, for constant and variable frame rates alike;
    an exact tie goes to the later frame. Frame 0 covers everything before the first midpoint.
    The streaming decoder applies the same rule (:class:`_Scheduler`).
    """
    pts = np.asarray(source_pts_s, dtype=np.float64).reshape(-1)
    fps = _check_target_fps(target_fps)
    if pts.size == 0:
        raise ValueError("source_pts_s is empty: there is no source frame to show")
    if not np.all(np.isfinite(pts)):
        raise ValueError("source_pts_s holds NaN or infinite timestamps")
    if np.any(np.diff(pts) < 0):
        raise ValueError("source_pts_s must be non-decreasing (presentation order)")
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s must be a non-negative number, got {duration_s!r}")
    count = _num_outputs(float(duration_s), fps)
    # Boundary of frame i in output-frame units; the same arithmetic as _Scheduler.push.
    boundaries = 0.5 * (pts[:-1] + pts[1:]) * fps
    k = np.arange(count, dtype=np.float64)
    return np.searchsorted(boundaries, k + _TIE_EPS, side="right").astype(np.int64)


class _Scheduler:
    """Streaming form of :func:`resample_times`: source frames go in one at a time (presentation
    order), ``(output index, item)`` pairs come out in order, each as soon as it is certain.

    An output's frame is known once the next source frame arrives; whether the output exists at
    all (k < round(duration * fps)) is known for k < round(t * fps) once a frame at t arrived
    (the clip lasts past t); the rare rest waits in ``_pending`` until :meth:`finish`.
    """

    def __init__(self, target_fps: float):
        self.fps = target_fps
        self._assigned = 0  # outputs with a known source frame: 0 .. _assigned-1
        self._prev_t: Optional[float] = None
        self._prev: Any = None
        self._pending: Deque[Tuple[int, Any]] = collections.deque()

    def push(self, t: float, item: Any) -> List[Tuple[int, Any]]:
        if self._prev_t is not None:
            boundary = 0.5 * (self._prev_t + t) * self.fps
            stop = math.ceil(boundary - _TIE_EPS)
            while self._assigned < stop:
                self._pending.append((self._assigned, self._prev))
                self._assigned += 1
        self._prev_t, self._prev = t, item
        return self._release(_num_outputs(t, self.fps))

    def finish(self, num_outputs: int) -> List[Tuple[int, Any]]:
        while self._assigned < num_outputs and self._prev_t is not None:
            self._pending.append((self._assigned, self._prev))
            self._assigned += 1
        out = self._release(num_outputs)
        self._pending.clear()
        self._prev = None
        return out

    def _release(self, limit: int) -> List[Tuple[int, Any]]:
        out = []
        while self._pending and self._pending[0][0] < limit:
            out.append(self._pending.popleft())
        return out


@dataclass
class _DecodeStats:
    """Filled while frames stream out; final once the iterator is exhausted."""

    start_s: float = 0.0
    duration_s: float = 0.0
    num_outputs: int = 0
    source_times: List[float] = field(default_factory=list)
    source_indices: List[int] = field(default_factory=list)
    skipped_packets: int = 0
    width: int = 0
    height: int = 0
    rotation: int = 0
    mirrored: bool = False
    tick_s: float = 0.0

    @property
    def variable_frame_rate(self) -> bool:
        return _is_variable(np.asarray(self.source_times), self.tick_s)


def _decoded_frames(container, stream, stats: _DecodeStats, path: Path) -> Iterator[Any]:
    """Every decodable frame in presentation order; damaged packets are skipped and counted."""
    try:
        for packet in container.demux(stream):
            try:
                frames = stream.decode(packet)
            except Exception:  # concealment failed for this packet: drop it, keep going
                stats.skipped_packets += 1
                continue
            yield from frames
    except VideoInputError:
        raise
    except Exception as exc:  # the container breaks off mid-file
        if not stats.source_times:
            raise VideoInputError(
                f"{path}: not a readable video ({_short(exc)}); the file is damaged or truncated: {_RETRY_HINT}"
            ) from None
        stats.skipped_packets += 1


def _iter_output_frames(
    path: Path,
    target_fps: float,
    pixel_format: str,
    progress: bool,
    stats: _DecodeStats,
    expected: Optional[int] = None,
) -> Iterator[Tuple[int, np.ndarray]]:
    """The decode loop shared by :func:`iter_frames_25fps` and :func:`decode_video`."""
    fps = _check_target_fps(target_fps)
    _check_path(path)
    scheduler = _Scheduler(fps)
    bar = progress_bar(expected, f"decode {path.name}", progress)
    last_item: List[Any] = [None, None]  # [source frame, its converted array]: repeats convert once

    def convert(frame) -> np.ndarray:
        if last_item[0] is not frame:
            # Pass the range on: HEVC phone clips tag full range on plain yuv420p frames.
            image = frame.to_ndarray(format=pixel_format, src_color_range=frame.color_range)
            image = _orient(image, stats.mirrored, stats.rotation // 90)
            image.flags.writeable = False  # repeated output frames share this array
            last_item[0], last_item[1] = frame, image
        return last_item[1]

    def emit(pairs: List[Tuple[int, Tuple[int, Any]]]) -> Iterator[Tuple[int, np.ndarray]]:
        for k, (index, frame) in pairs:
            stats.source_indices.append(index)
            bar.update(1)
            yield k, convert(frame)

    try:
        with _open(path) as container:
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"
            stats.tick_s = _time_base_s(stream)
            nominal = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / fps
            t0: Optional[float] = None
            prev_t = prev_dur = 0.0
            for index, frame in enumerate(_decoded_frames(container, stream, stats, path)):
                ft = frame.time
                if t0 is None:
                    t0 = float(ft) if ft is not None else 0.0
                    stats.start_s = t0
                    stats.mirrored, turns = _orientation(frame, stream)
                    stats.rotation = turns * 90
                    stats.width, stats.height = frame.width, frame.height
                    if turns % 2:
                        stats.width, stats.height = stats.height, stats.width
                # Missing or backwards timestamps (broken muxers): continue at the nominal rate.
                t = (float(ft) - t0) if ft is not None else prev_t + nominal
                if index and t < prev_t:
                    t = prev_t
                prev_dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
                if index and prev_dur <= 0:
                    prev_dur = t - prev_t
                stats.source_times.append(t)
                prev_t = t
                yield from emit(scheduler.push(t, (index, frame)))
            if t0 is None:
                raise VideoInputError(
                    f"{path}: no decodable video frame; the file is damaged or truncated: {_RETRY_HINT}"
                )
            stats.duration_s = prev_t + (prev_dur if prev_dur > 0 else nominal)
            stats.num_outputs = _num_outputs(stats.duration_s, fps)
            yield from emit(scheduler.finish(stats.num_outputs))
    finally:
        bar.close()
    if stats.skipped_packets:
        warnings.warn(
            DecodeWarning(
                f"{path}: skipped {stats.skipped_packets} damaged video packet(s); check the file plays cleanly"
            ),
            stacklevel=3,
        )


def iter_frames_25fps(
    path: PathLike, target_fps: float = DEFAULT_FPS, progress: bool = False
) -> Iterator[Tuple[int, np.ndarray]]:
    """Decode once, streaming: yield ``(output_index, HxWx3 uint8 RGB)`` at a regular ``target_fps``.

    Output indices are 0, 1, 2, ... without gaps; the frames follow :func:`resample_times` and the
    display orientation. A source frame shown twice is yielded as the same read-only array; copy
    it before modifying. Only a couple of frames are held in memory at any time.
    """
    path = Path(path)
    yield from _iter_output_frames(path, target_fps, "rgb24", progress, _DecodeStats())


# --------------------------------------------------------------------------------------------
# audio


class _MonoResampler:
    """Native-rate mono chunks in; exactly ``length`` samples at ``rate_out`` out (silence where
    the input ends early). Streams through soxr (the quality load_audio uses) into one
    preallocated buffer, so memory holds the result only; without soxr it collects the track and
    resamples at the end with load_audio's scipy fallback."""

    def __init__(self, rate_in: int, rate_out: int, length: int):
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self.produced = 0  # output samples so far (input-based estimate without soxr)
        self._out = np.zeros(int(length), dtype=np.float32)
        self._native: List[np.ndarray] = []
        self._stream = None
        if self.rate_in != self.rate_out:
            try:
                import soxr

                self._stream = soxr.ResampleStream(self.rate_in, self.rate_out, 1, dtype="float32", quality="HQ")
            except ImportError:  # machines without soxr
                pass
        self._collect_native = self.rate_in != self.rate_out and self._stream is None

    @property
    def full(self) -> bool:
        return self.produced >= self._out.size

    def _store(self, out: np.ndarray) -> None:
        room = self._out.size - self.produced
        if room > 0:
            take = min(room, out.size)
            self._out[self.produced : self.produced + take] = out[:take]
        self.produced += int(out.size)

    def feed(self, mono: np.ndarray) -> None:
        if mono.size == 0:
            return
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if self._stream is not None:
            self._store(np.asarray(self._stream.resample_chunk(mono)))
        elif self._collect_native:
            self._native.append(mono.copy())
            self.produced += int(mono.size) * self.rate_out // self.rate_in
        else:
            self._store(mono)

    def finish(self) -> np.ndarray:
        if self._stream is not None and not self.full:
            self._store(np.asarray(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)))
        if self._collect_native:
            native = np.concatenate(self._native) if self._native else np.zeros(0, dtype=np.float32)
            self._native = []
            resampled = _resample(native, self.rate_in, self.rate_out)
            self.produced = 0
            self._store(resampled)
        out = self._out
        np.nan_to_num(out, copy=False)
        return np.clip(out, -1.0, 1.0, out=out)


def _aligned_audio(path: Path, start_s: float, duration_s: float, sample_rate: int) -> Tuple[np.ndarray, float]:
    """The first audio track as float32 mono at ``sample_rate``, sample 0 at video time
    ``start_s`` and exactly round(duration_s * sample_rate) samples long.

    Returns (wave, seconds of it that the track covers; the rest is padded silence). Channels are
    averaged, like :func:`gstalker_ns.audio.io.load_audio`. Decoding stops once the track has
    passed the end of the video.
    """
    import av

    wanted = int(round(duration_s * sample_rate))
    resampler: Optional[_MonoResampler] = None
    skip = 0  # native samples still to drop (audio recorded before the first video frame)
    lead = fed = 0  # native samples of leading silence / of the track itself
    with _open(path) as container:
        if not container.streams.audio:
            raise VideoInputError(f"{path}: has no audio track; gstalker needs the speech: re-export with audio")
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")  # planar float, native rate and channels
        try:
            for packet in container.demux(stream):
                try:
                    decoded = stream.decode(packet)
                except Exception:
                    continue  # a damaged audio packet: its samples are lost
                for frame in decoded:
                    if resampler is None:
                        rate = int(frame.sample_rate)
                        resampler = _MonoResampler(rate, sample_rate, wanted)
                        first = float(frame.time) if frame.time is not None else start_s
                        offset = int(round((first - start_s) * rate))
                        lead, skip = max(0, offset), max(0, -offset)
                        if lead:  # the track starts after the first video frame: lead with silence
                            resampler.feed(np.zeros(lead, dtype=np.float32))
                    for flt in to_float.resample(frame):
                        planes = flt.to_ndarray()
                        mono = planes.reshape(planes.shape[0], -1).mean(axis=0, dtype=np.float32)
                        if skip:
                            dropped = min(skip, mono.size)
                            mono, skip = mono[dropped:], skip - dropped
                        fed += mono.size
                        resampler.feed(mono)
                if resampler is not None and resampler.full:
                    break  # the track has passed the last video frame
        except Exception as exc:  # the container breaks off: keep what was decoded
            if resampler is None:
                raise VideoInputError(f"{path}: audio track cannot be decoded ({_short(exc)}); {_RETRY_HINT}") from None
    if resampler is None:
        raise VideoInputError(f"{path}: audio track holds no samples; gstalker needs the speech: re-export with audio")
    try:
        wave = resampler.finish()
    except AudioError as exc:
        raise VideoInputError(f"{path}: {exc}") from None
    rate_in = float(resampler.rate_in)
    covered = max(0.0, min((lead + fed) / rate_in, wanted / float(sample_rate)) - lead / rate_in)
    return wave, covered


def _checked_audio(path: Path, wave: np.ndarray, covered_s: float, duration_s: float) -> None:
    """Refuse silent audio; warn when the track misses part of the video."""
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak < SILENCE_PEAK:
        raise VideoInputError(
            f"{path}: the audio track is silent (peak {peak:.1e}); gstalker needs the speech: "
            "re-export with the microphone audio"
        )
    if duration_s - covered_s > AUDIO_GAP_WARN_S:
        warnings.warn(
            DecodeWarning(
                f"{path}: the audio track covers only {_seconds(covered_s)} s of the {_seconds(duration_s)} s video; "
                "the rest is padded with silence (lips will not move there)"
            ),
            stacklevel=3,
        )


def extract_audio(
    path: PathLike,
    out_wav: Path,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    *,
    target_fps: float = DEFAULT_FPS,
    start_s: Optional[float] = None,
    duration_s: Optional[float] = None,
) -> np.ndarray:
    """Write the video's speech as mono ``sample_rate`` wav (atomically) and return it.

    The track is aligned to the video timeline (see the module docstring): it starts at the first
    video frame (``start_s``, default from :func:`probe_video`) and lasts exactly
    ``round(duration * target_fps) / target_fps`` seconds (``duration_s`` overrides that), trimmed
    or padded with silence. Raises VideoInputError when there is no audio track or it is silent.
    """
    path = Path(path)
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
    fps = _check_target_fps(target_fps)
    if start_s is None or duration_s is None:
        info = probe_video(path)
        if not info.has_audio:
            raise VideoInputError(f"{path}: has no audio track; gstalker needs the speech: re-export with audio")
        start_s = info.start_s if start_s is None else start_s
        duration_s = info.num_output_frames(fps) / fps if duration_s is None else duration_s
    wave, covered = _aligned_audio(path, float(start_s), float(duration_s), int(sample_rate))
    _checked_audio(path, wave, covered, float(duration_s))
    write_wav(out_wav, wave, int(sample_rate))
    return wave


# --------------------------------------------------------------------------------------------
# JPEG output


def _jpeg_encoder(quality: int) -> Tuple[str, Callable[[np.ndarray], bytes]]:
    """(pixel format to decode to, encoder): OpenCV from BGR when available (faster), else PIL."""
    try:
        import cv2

        params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]

        def encode_cv2(bgr: np.ndarray) -> bytes:
            ok, buf = cv2.imencode(".jpg", bgr, params)
            if not ok:
                raise RuntimeError("OpenCV failed to encode a JPEG")
            return buf.tobytes()

        return "bgr24", encode_cv2
    except ImportError:
        import io

        from PIL import Image

        def encode_pil(rgb: np.ndarray) -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(rgb).save(buffer, format="JPEG", quality=int(quality))
            return buffer.getvalue()

        return "rgb24", encode_pil


class _FrameWriter:
    """Encodes and writes frames in one worker thread (OpenCV and file I/O release the GIL, so
    this overlaps with decoding); at most ``max_pending`` frames wait, so memory stays flat."""

    def __init__(self, encode: Callable[[np.ndarray], bytes], max_pending: int = 8):
        self._encode = encode
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gstalker-jpeg")
        self._pending: Deque[Future] = collections.deque()
        self._max_pending = max_pending
        self._last: Tuple[Any, bytes] = (None, b"")

    def _job(self, path: Path, image: np.ndarray) -> None:
        if self._last[0] is not image:  # a repeated source frame: reuse its bytes
            self._last = (image, self._encode(image))
        atomic_write_bytes(path, self._last[1])

    def submit(self, path: Path, image: np.ndarray) -> None:
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._job, path, image))

    def close(self, wait: bool = True) -> None:
        try:
            while wait and self._pending:
                self._pending.popleft().result()
        finally:
            for job in self._pending:
                job.cancel()
            self._pool.shutdown(wait=True)


# --------------------------------------------------------------------------------------------
# the stage


def _fingerprint(path: Path) -> Dict[str, Any]:
    """Identifies the input cheaply: size, mtime and a hash of the first MiB."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(HASH_BYTES))
    return {
        "path": str(path.resolve()),
        "size": int(stat.st_size),
        "mtime_ns": int(stat.st_mtime_ns),
        "sha256_first_mib": digest.hexdigest(),
    }


def _options(target_fps: float, jpeg_quality: int) -> Dict[str, Any]:
    return {"target_fps": float(target_fps), "jpeg_quality": int(jpeg_quality), "audio_sample_rate": AUDIO_SAMPLE_RATE}


def _read_manifest(out_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads((out_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cached_result(out_dir: Path, fingerprint: Dict[str, Any], options: Dict[str, Any]) -> Optional[DecodeResult]:
    """The earlier run's result when its manifest matches this input and options and its files are
    all there; None means "run the stage"."""
    manifest = _read_manifest(out_dir)
    if not manifest or manifest.get("stage") != "decode" or manifest.get("version") != DECODE_VERSION:
        return None
    old_input = manifest.get("input") or {}
    if any(old_input.get(key) != fingerprint[key] for key in ("size", "mtime_ns", "sha256_first_mib")):
        return None
    if manifest.get("options") != options:
        return None
    try:
        output = manifest["output"]
        info_json = dict(manifest["source"]["info"])
        info_json["path"] = Path(info_json["path"])
        info = VideoInfo(**info_json)
        num_frames = int(output["num_frames"])
    except (KeyError, TypeError, ValueError):
        return None
    frames_dir = out_dir / FRAMES_DIR
    try:
        present = {entry.name for entry in os.scandir(frames_dir)}
    except OSError:
        return None
    if any(FRAME_NAME.format(k) not in present for k in range(num_frames)):
        return None
    if not (out_dir / AUDIO_FILE).is_file():
        return None
    return DecodeResult(
        out_dir=out_dir,
        num_frames=num_frames,
        fps=float(output["fps"]),
        width=int(output["width"]),
        height=int(output["height"]),
        duration_s=float(output["duration_s"]),
        audio_sample_rate=int(output["audio_sample_rate"]),
        audio_num_samples=int(output["audio_num_samples"]),
        info=info,
        cached=True,
        manifest=manifest,
    )


def _refuse_output_overlap(path: Path, out_dir: Path) -> None:
    """Never let the stage overwrite its own input (e.g. VIDEO given as OUT/audio.wav)."""
    video = path.resolve()
    out = out_dir.resolve()
    if video in (out / AUDIO_FILE, out / MANIFEST_FILE) or video.parent == out / FRAMES_DIR:
        raise VideoInputError(
            f"{path}: lies among the files the decode stage writes in {out_dir}; "
            "move the video or pick another output folder"
        )


def decode_video(
    path: PathLike,
    out_dir: Path,
    target_fps: float = DEFAULT_FPS,
    jpeg_quality: int = 95,
    progress: bool = True,
) -> DecodeResult:
    """Run the decode stage: ``out_dir/frames/NNNNNN.jpg`` at ``target_fps``, ``out_dir/audio.wav``
    (16 kHz mono, exactly num_frames / target_fps s) and, last, ``out_dir/decode.json``.

    Returns the cached result when ``decode.json`` matches the input and options. Raises
    VideoInputError (one line) for unusable input before writing anything; warns
    (ShortClipWarning) for clips under 5 s.
    """
    path = Path(path)
    out_dir = Path(out_dir)
    fps = _check_target_fps(target_fps)
    if not (isinstance(jpeg_quality, (int, np.integer)) and 1 <= int(jpeg_quality) <= 100):
        raise ValueError(f"jpeg_quality must be an integer in 1..100, got {jpeg_quality!r}")
    _check_path(path)
    fingerprint = _fingerprint(path)
    options = _options(fps, int(jpeg_quality))
    cached = _cached_result(out_dir, fingerprint, options)
    if cached is not None:
        return cached

    info = probe_video(path)
    check_video(info)
    _refuse_output_overlap(path, out_dir)
    # Fail fast on silent audio: decode the track with the probed timing before the frames.
    expected = info.num_output_frames(fps)
    wave, covered = _aligned_audio(path, info.start_s, expected / fps, AUDIO_SAMPLE_RATE)
    _checked_audio(path, wave, covered, expected / fps)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # from here on the folder is "not done"
    frames_dir = out_dir / FRAMES_DIR
    frames_dir.mkdir(exist_ok=True)
    remove_stale_files(frames_dir, out_dir, _TEMP_FILE_RE, _FRAME_FILE_RE, keep_below=None)

    pixel_format, encode = _jpeg_encoder(int(jpeg_quality))
    stats = _DecodeStats()
    writer = _FrameWriter(encode)
    ok = False
    try:
        for k, image in _iter_output_frames(path, fps, pixel_format, progress, stats, expected=expected):
            writer.submit(frames_dir / FRAME_NAME.format(k), image)
        ok = True
    finally:
        writer.close(wait=ok)
    num_frames = stats.num_outputs
    remove_stale_files(frames_dir, out_dir, _TEMP_FILE_RE, _FRAME_FILE_RE, keep_below=num_frames)

    duration = num_frames / fps
    if abs(stats.start_s - info.start_s) * AUDIO_SAMPLE_RATE >= 0.5 or num_frames != expected:
        # The decoder disagreed with the packet index (damaged file): realign the audio to it.
        wave, covered = _aligned_audio(path, stats.start_s, duration, AUDIO_SAMPLE_RATE)
        _checked_audio(path, wave, covered, duration)
    write_wav(out_dir / AUDIO_FILE, wave, AUDIO_SAMPLE_RATE)

    manifest = {
        "stage": "decode",
        "version": DECODE_VERSION,
        "input": fingerprint,
        "options": options,
        "output": {
            "frames": f"{FRAMES_DIR}/{{:06d}}.jpg",
            "num_frames": num_frames,
            "fps": fps,
            "width": stats.width,
            "height": stats.height,
            "duration_s": duration,
            "audio": AUDIO_FILE,
            "audio_sample_rate": AUDIO_SAMPLE_RATE,
            "audio_num_samples": int(wave.size),
            "jpeg_encoder": "opencv" if pixel_format == "bgr24" else "pil",
        },
        "source": {
            "info": info.to_json(),
            "decoded_frames": len(stats.source_times),
            "start_s": stats.start_s,
            "duration_s": stats.duration_s,
            "variable_frame_rate": stats.variable_frame_rate,
            "skipped_packets": stats.skipped_packets,
            "frame_rule": "nearest source frame (resample_times)",
        },
    }
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)
    return DecodeResult(
        out_dir=out_dir,
        num_frames=num_frames,
        fps=fps,
        width=stats.width,
        height=stats.height,
        duration_s=duration,
        audio_sample_rate=AUDIO_SAMPLE_RATE,
        audio_num_samples=int(wave.size),
        info=info,
        cached=False,
        manifest=manifest,
        source_frame_indices=np.asarray(stats.source_indices, dtype=np.int64),
    )
