"""Preprocessing stage 1: probing, 25 fps resampling, audio extraction, the cached decode stage.

Test videos are generated here (tiny 64x64 H.264 clips) with frames whose grey levels encode
their source index, so the frame each output shows can be read back despite compression.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV is needed to decode videos")

from gstalker_ns.audio.io import read_wav, write_wav  # noqa: E402
from gstalker_ns.errors import GstalkerUserError  # noqa: E402
from gstalker_ns.media.video import write_mp4  # noqa: E402
from gstalker_ns.preprocess import decode as dec  # noqa: E402
from gstalker_ns.preprocess.decode import (  # noqa: E402
    DecodeWarning,
    ShortClipWarning,
    VideoInputError,
    _Scheduler,
    decode_video,
    extract_audio,
    iter_frames_25fps,
    probe_video,
    resample_times,
)

SR = 16000
SIZE = 64
REAL_DIR = Path("/work/shared/data/real")


# ----------------------------------------------------------------------------- helpers


def coded_frame(index: int, size: int = SIZE) -> np.ndarray:
    """Grey frame whose top half encodes index % 16 and bottom half index // 16 (levels 16 apart)."""
    img = np.empty((size, size, 3), np.uint8)
    img[: size // 2] = (index % 16) * 16 + 8
    img[size // 2 :] = (index // 16) * 16 + 8
    return img


def read_code(img: np.ndarray) -> int:
    """Inverse of coded_frame, robust to compression noise (uses the middle of each half)."""
    h = img.shape[0]
    lo = float(np.median(img[h // 8 : 3 * h // 8]))
    hi = float(np.median(img[5 * h // 8 : 7 * h // 8]))
    return int(round((hi - 8) / 16)) * 16 + int(round((lo - 8) / 16))


def speech_like(seconds: float, rate: int = SR, seed: int = 0) -> np.ndarray:
    """Non-silent test audio: a 440 Hz tone with a little noise."""
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.size)
    return (0.3 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)


def cfr_video(path: Path, num_frames: int, fps: float, audio: Optional[np.ndarray] = "auto", crf: int = 10) -> Path:
    """Constant-frame-rate mp4 of coded frames, with mono 16 kHz AAC audio as long as the video."""
    if isinstance(audio, str):
        audio = speech_like(num_frames / fps)
    return write_mp4(path, (coded_frame(i) for i in range(num_frames)), fps, audio=audio, sample_rate=SR, crf=crf)


def pyav_video(
    path: Path,
    pts: Sequence[int],
    time_base: Fraction,
    audio: Optional[np.ndarray] = None,
    audio_rate: int = SR,
    layout: str = "mono",
    rotation: Optional[int] = None,
    frames: Optional[List[np.ndarray]] = None,
) -> Path:
    """mp4 with explicit video timestamps (variable frame rate, late start), optional AAC audio
    ([samples] mono or [2, samples] stereo) and an optional display rotation."""
    with av.open(str(path), "w") as container:
        vs = container.add_stream("libx264", rate=25)
        h, w = (frames[0].shape[:2] if frames else (SIZE, SIZE))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.time_base = time_base
        vs.codec_context.time_base = time_base
        vs.options = {"crf": "10"}
        if rotation is not None:
            vs.set_display_rotation(rotation)
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=audio_rate, layout=layout)
            astream.time_base = Fraction(1, audio_rate)
        for i, t in enumerate(pts):
            image = frames[i] if frames else coded_frame(i)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = int(t), time_base
            for packet in vs.encode(frame):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        if astream is not None:
            planes = np.atleast_2d(audio).astype(np.float32)
            for pos in range(0, planes.shape[1], 1024):
                chunk = np.ascontiguousarray(planes[:, pos : pos + 1024])
                af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                af.sample_rate, af.pts, af.time_base = audio_rate, pos, Fraction(1, audio_rate)
                for packet in astream.encode(af):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path


def decoded_codes(path: Path, target_fps: float = 25.0) -> np.ndarray:
    out = []
    for k, img in iter_frames_25fps(path, target_fps):
        assert k == len(out)
        assert img.dtype == np.uint8 and img.shape == (SIZE, SIZE, 3)
        out.append(read_code(img))
    return np.asarray(out)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1.0 / rate)[np.argmax(spectrum)])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line(exc: BaseException, path: Path) -> None:
    text = str(exc)
    assert "\n" not in text and str(path) in text, text
    assert isinstance(exc, GstalkerUserError) and isinstance(exc, ValueError)


@pytest.fixture(scope="module")
def clip6(tmp_path_factory) -> Path:
    """A 6 s, 30 fps clip with audio: long enough to decode without warnings."""
    return cfr_video(tmp_path_factory.mktemp("clip") / "talk.mp4", 180, 30)


# ----------------------------------------------------------------------------- resample_times


def test_resample_times_constant_rates():
    # 25 fps passes through 1:1
    assert np.array_equal(resample_times(np.arange(50) / 25, 25, 2.0), np.arange(50))
    # 50 fps: every second frame
    assert np.array_equal(resample_times(np.arange(100) / 50, 25, 2.0), np.arange(0, 100, 2))
    # 30 fps: nearest frame, one in six dropped
    idx = resample_times(np.arange(60) / 30, 25, 2.0)
    assert idx.size == 50
    assert np.array_equal(idx, np.round(np.arange(50) / 25 * 30).astype(int))
    assert np.array_equal(idx[:6], [0, 1, 2, 4, 5, 6])
    # 24 fps: nearest frame, one repeated per second
    idx = resample_times(np.arange(48) / 24, 25, 2.0)
    assert idx.size == 50 and np.sum(np.diff(idx) == 0) == 2
    assert np.all(np.abs(np.arange(50) / 25 - idx / 24) <= 0.5 / 24 + 1e-9)


def test_resample_times_variable_rate_and_edges():
    pts = np.cumsum([0] + [0.05, 0.025] * 20)  # alternating 1/20 s and 1/40 s
    idx = resample_times(pts, 25, 1.5)
    t = np.arange(idx.size) / 25
    assert idx.size == round(1.5 * 25)
    # the chosen frame is the nearest one in time (t = 0.4 s is a tie: 0.375 / 0.425 -> the later)
    nearest = np.abs(t[:, None] - pts[None, :]).min(axis=1)
    assert np.allclose(np.abs(pts[idx] - t), nearest, atol=1e-9)
    assert idx[10] == 11
    # count is round(duration * fps), halves up; frame 0 covers times before the first midpoint
    assert resample_times([0.0], 25, 0.5).tolist() == [0] * 13
    assert resample_times([0.0, 1.0], 25, 2.0)[:13].tolist() == [0] * 13
    assert resample_times([0.0, 1.0], 25, 2.0)[13:].min() == 1
    for bad in ([], [0.0, np.nan], [0.0, 0.1, 0.05]):
        with pytest.raises(ValueError):
            resample_times(np.asarray(bad), 25, 1.0)
    with pytest.raises(ValueError):
        resample_times([0.0], 0, 1.0)


def test_streaming_scheduler_matches_resample_times():
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(1, 60))
        intervals = rng.choice([1 / 60, 1 / 30, 1 / 24, 0.05, 0.025, 0.2, 0.0], size=n - 1)
        pts = np.concatenate([[0.0], np.cumsum(intervals)])
        duration = pts[-1] + rng.choice([1 / 60, 1 / 30, 0.1])
        scheduler = _Scheduler(25.0)
        got = []
        for i, t in enumerate(pts):
            got += scheduler.push(float(t), i)
        got += scheduler.finish(dec._num_outputs(duration, 25.0))
        assert [k for k, _ in got] == list(range(len(got)))
        assert [i for _, i in got] == resample_times(pts, 25, duration).tolist(), trial


# ----------------------------------------------------------------------------- frames


@pytest.mark.parametrize("fps,num_frames", [(30, 75), (25, 50), (24, 48), (50, 100)])
def test_constant_frame_rates_resample_to_25(tmp_path, fps, num_frames):
    path = cfr_video(tmp_path / f"v{fps}.mp4", num_frames, fps, audio=None)
    info = probe_video(path)
    duration = num_frames / fps
    assert info.num_frames == num_frames and not info.variable_frame_rate
    assert info.fps == pytest.approx(fps) and info.duration_s == pytest.approx(duration)
    codes = decoded_codes(path)
    expected = resample_times(np.arange(num_frames) / fps, 25, duration)
    assert codes.size == int(np.floor(duration * 25 + 0.5)) == info.num_output_frames()  # halves round up
    assert np.array_equal(codes, expected)
    if fps == 25:
        assert np.array_equal(codes, np.arange(num_frames))


def test_variable_frame_rate(tmp_path):
    ticks = np.cumsum([0] + [2, 1] * 30)  # time base 1/40 s: alternating 1/20 s and 1/40 s
    path = pyav_video(tmp_path / "vfr.mp4", ticks.tolist(), Fraction(1, 40))
    info = probe_video(path)
    assert info.variable_frame_rate
    pts = ticks / 40.0
    assert pts[-1] + 0.02 < info.duration_s <= pts[-1] + 0.05 + 1e-9
    codes = decoded_codes(path)
    expected = resample_times(pts, 25, info.duration_s)
    assert codes.size == round(info.duration_s * 25)
    assert np.array_equal(codes, expected)
    t = np.arange(codes.size) / 25
    assert np.all(np.abs(pts[codes] - t) <= 0.025 / 2 + 0.05 / 2)


def test_late_video_start_defines_time_zero(tmp_path):
    """Frames at 0.4 s .. 2.4 s, audio from 0 s with a click at 1.0 s: the click lands at 0.6 s."""
    audio = np.zeros(3 * SR, np.float32)
    audio[SR : SR + 160] = 0.8
    path = pyav_video(tmp_path / "late.mp4", list(range(10, 60)), Fraction(1, 25), audio=audio)
    info = probe_video(path)
    assert info.start_s == pytest.approx(0.4) and info.duration_s == pytest.approx(2.0)
    assert np.array_equal(decoded_codes(path), np.arange(50))
    wave = extract_audio(path, tmp_path / "a.wav")
    assert wave.size == 2 * SR
    assert np.argmax(np.abs(wave) > 0.3) / SR == pytest.approx(0.6, abs=0.002)


def test_rotation_is_applied(tmp_path):
    yy, xx = np.mgrid[0:32, 0:64]
    image = np.stack([xx * 4, yy * 8, np.full_like(xx, 128)], -1).astype(np.uint8)  # 64 wide, 32 high
    path = pyav_video(tmp_path / "rot.mp4", list(range(5)), Fraction(1, 25), rotation=90, frames=[image] * 5)
    info = probe_video(path)
    assert (info.rotation, info.mirrored, info.width, info.height) == (90, False, 32, 64)
    frames = [img for _, img in iter_frames_25fps(path)]
    assert frames[0].shape == (64, 32, 3)
    # the same turn ffmpeg's autorotate applies (counter-clockwise 90: top-left goes bottom-left)
    assert np.abs(frames[0].astype(int) - np.rot90(image, 1)).mean() < 4


def test_repeated_frames_are_shared_read_only(tmp_path):
    path = cfr_video(tmp_path / "v12.mp4", 12, 12, audio=None)
    frames = list(iter_frames_25fps(path))
    assert len(frames) == 25
    assert frames[0][1] is frames[1][1]  # one source frame, decoded once
    with pytest.raises(ValueError):
        frames[0][1][0, 0, 0] = 1


# ----------------------------------------------------------------------------- audio


def test_stereo_44k_aac_becomes_16k_mono_of_video_length(tmp_path):
    rate = 44100
    t = np.arange(int(2.3 * rate)) / rate  # audio 0.3 s longer than the 2 s video
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
    path = pyav_video(tmp_path / "st.mp4", list(range(60)), Fraction(1, 30), audio=stereo, audio_rate=rate, layout="stereo")
    info = probe_video(path)
    assert (info.has_audio, info.audio_sample_rate, info.audio_channels) == (True, rate, 2)
    wave = extract_audio(path, tmp_path / "a.wav")
    assert wave.dtype == np.float32 and wave.size == 2 * SR  # trimmed to the video
    back, back_rate = read_wav(tmp_path / "a.wav")
    assert back_rate == SR and back.size == wave.size
    assert peak_hz(wave[SR // 4 : -SR // 4], SR) == pytest.approx(440, abs=2)
    assert np.abs(wave[SR // 4 : -SR // 4]).max() == pytest.approx(0.3, abs=0.02)  # channel mean


def test_audio_length_follows_the_frame_count(tmp_path):
    path = cfr_video(tmp_path / "v.mp4", 75, 30)  # 2.5 s -> 62.5 frames at 25 fps -> 63 (halves up)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wave = extract_audio(path, tmp_path / "a.wav")
    assert probe_video(path).num_output_frames() == 63
    assert wave.size == 63 * SR // 25  # 2.52 s: within one video frame of the 2.5 s video
    assert np.abs(wave[-SR // 100 :]).max() == 0.0  # the 20 ms past the track are silence


def test_short_audio_is_padded_with_a_warning(tmp_path):
    path = cfr_video(tmp_path / "pad.mp4", 75, 25, audio=speech_like(2.0))  # 3 s video, 2 s audio
    with pytest.warns(DecodeWarning, match="padded with silence"):
        wave = extract_audio(path, tmp_path / "a.wav")
    assert wave.size == 3 * SR
    assert np.abs(wave[int(2.2 * SR) :]).max() == 0.0
    assert np.abs(wave[: int(1.8 * SR)]).max() > 0.1


# ----------------------------------------------------------------------------- bad input


def test_unusable_files_give_one_line_errors(tmp_path, clip6):
    cases = {}
    cases["missing"] = tmp_path / "nope.mp4"
    cases["folder"] = tmp_path
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases["empty"] = empty
    random_bytes = tmp_path / "random.mp4"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(20000))
    cases["random"] = random_bytes
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip6.read_bytes()[:2048])
    cases["truncated"] = truncated
    wav = tmp_path / "speech.wav"
    write_wav(wav, speech_like(2.0), SR)
    cases["audio only"] = wav
    png = tmp_path / "still.png"
    from PIL import Image

    Image.fromarray(coded_frame(3)).save(png)
    cases["still image"] = png
    expected = {
        "missing": "not found",
        "folder": "is a folder",
        "empty": "empty",
        "random": "not a readable video",
        "truncated": "not a readable video",
        "audio only": "no video stream",
        "still image": "still image",
    }
    for name, path in cases.items():
        for call in (lambda p: probe_video(p), lambda p: decode_video(p, tmp_path / "out", progress=False)):
            with pytest.raises(VideoInputError) as info:
                call(path)
            assert_one_line(info.value, path)
            assert expected[name] in str(info.value), (name, str(info.value))
    assert not (tmp_path / "out" / "decode.json").exists()


def test_missing_and_silent_audio_are_refused(tmp_path):
    no_audio = cfr_video(tmp_path / "mute.mp4", 50, 25, audio=None)
    silent = cfr_video(tmp_path / "silent.mp4", 50, 25, audio=np.zeros(2 * SR, np.float32))
    for path, words in ((no_audio, "has no audio track; gstalker needs the speech: re-export with audio"), (silent, "silent")):
        for call in (
            lambda p: decode_video(p, tmp_path / "out", progress=False),
            lambda p: extract_audio(p, tmp_path / "a.wav"),
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ShortClipWarning)
                with pytest.raises(VideoInputError) as info:
                    call(path)
            assert_one_line(info.value, path)
            assert words in str(info.value)
    assert not (tmp_path / "a.wav").exists()
    assert not (tmp_path / "out" / "frames").exists()  # refused before any frame was written


def test_truncated_and_damaged_copies_warn(tmp_path, clip6):
    """Index at the front (faststart) but data cut in half, or garbled in the middle: decode what
    is readable, with the timing of the surviving frames, and say so."""
    faststart = tmp_path / "fs.mp4"
    with av.open(str(clip6)) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    data = faststart.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortClipWarning)
        with pytest.warns(DecodeWarning, match="header declares"):
            result = decode_video(half, tmp_path / "out_half", progress=False)
    assert 2.0 < result.duration_s < 5.0
    import cv2

    codes = [read_code(cv2.imread(str(p))) for p in result.frame_paths]
    ideal = resample_times(np.arange(180) / 30, 25, 6.0)
    n = result.num_frames
    assert np.array_equal(codes[:-5], ideal[: n - 5])  # frames after the cut's last keyframe may be lost
    assert np.all(np.abs(np.asarray(codes) / 30 - np.arange(n) / 25) <= 2 / 30)  # nearest surviving frame

    garbled = tmp_path / "garbled.mp4"
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 3000] = np.random.default_rng(0).bytes(3000)
    garbled.write_bytes(bytes(damaged))
    with pytest.warns(DecodeWarning, match="damaged video packet"):
        result = decode_video(garbled, tmp_path / "out_garbled", progress=False)
    assert result.num_frames == 150  # timing comes from the surviving frames' timestamps


def test_clip_length_limits(tmp_path):
    tiny = cfr_video(tmp_path / "tiny.mp4", 15, 25)  # 0.6 s
    with pytest.raises(VideoInputError) as info:
        decode_video(tiny, tmp_path / "out", progress=False)
    assert_one_line(info.value, tiny)
    assert "is 0.6 s long; gstalker needs at least 1 s (5 s or more recommended)" in str(info.value)

    short = cfr_video(tmp_path / "short.mp4", 50, 25)  # 2 s: allowed, with a warning
    with pytest.warns(ShortClipWarning, match="only 2 s long"):
        result = decode_video(short, tmp_path / "out", progress=False)
    assert result.num_frames == 50


# ----------------------------------------------------------------------------- the stage


def test_decode_video_writes_frames_audio_and_manifest(tmp_path, clip6):
    before = sha256(clip6)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 6 s clip decodes without any warning
        result = decode_video(clip6, out, progress=False)
    assert not result.cached
    assert result.num_frames == 150 and result.fps == 25.0 and result.duration_s == pytest.approx(6.0)
    assert (result.width, result.height) == (SIZE, SIZE)
    assert np.array_equal(result.source_frame_indices, resample_times(np.arange(180) / 30, 25, 6.0))
    names = sorted(os.listdir(out / "frames"))
    assert names == [f"{k:06d}.jpg" for k in range(150)]
    import cv2

    for k in (0, 1, 77, 149):
        img = cv2.imread(str(result.frame_path(k)))
        assert img.shape == (SIZE, SIZE, 3)
        assert read_code(img) == result.source_frame_indices[k]
    wave, rate = read_wav(out / "audio.wav")
    assert rate == SR and wave.size == 6 * SR == result.audio_num_samples
    manifest = json.loads((out / "decode.json").read_text())
    assert manifest["stage"] == "decode" and manifest["version"] == dec.DECODE_VERSION
    assert manifest["input"]["size"] == clip6.stat().st_size
    assert manifest["input"]["sha256_first_mib"] == hashlib.sha256(clip6.read_bytes()[: 1 << 20]).hexdigest()
    assert manifest["output"]["num_frames"] == 150 and manifest["source"]["variable_frame_rate"] is False
    assert manifest["options"] == {"target_fps": 25.0, "jpeg_quality": 95, "audio_sample_rate": SR}
    assert sha256(clip6) == before  # the input is never modified


def test_decode_video_resumes_and_redoes(tmp_path, clip6, monkeypatch):
    out = tmp_path / "out"
    first = decode_video(clip6, out, progress=False)
    frame0 = out / "frames" / "000000.jpg"
    stamp = frame0.stat().st_mtime_ns

    again = decode_video(clip6, out, progress=False)
    assert again.cached and again.num_frames == first.num_frames and again.info == first.info
    assert frame0.stat().st_mtime_ns == stamp  # nothing was rewritten

    # other options: redo
    redo = decode_video(clip6, out, jpeg_quality=80, progress=False)
    assert not redo.cached and redo.manifest["options"]["jpeg_quality"] == 80

    # interrupted run: frames but no manifest, stale frames and temp files of ours, files of others
    (out / "decode.json").unlink()
    (out / "frames" / "000999.jpg").write_bytes(b"stale")
    (out / "frames" / ".000003.jpg.abc123.tmp").write_bytes(b"partial")
    (out / "frames" / "notes.txt").write_text("keep me")
    (out / "transforms.json").write_text("{}")
    redone = decode_video(clip6, out, progress=False)
    assert not redone.cached and (out / "decode.json").exists()
    assert not (out / "frames" / "000999.jpg").exists()
    assert not (out / "frames" / ".000003.jpg.abc123.tmp").exists()
    assert (out / "frames" / "notes.txt").read_text() == "keep me"
    assert (out / "transforms.json").read_text() == "{}"

    # a missing frame or a touched input invalidates the cache
    (out / "frames" / "000010.jpg").unlink()
    assert not decode_video(clip6, out, progress=False).cached
    os.utime(clip6, ns=(clip6.stat().st_atime_ns, clip6.stat().st_mtime_ns + 10**9))
    assert not decode_video(clip6, out, progress=False).cached
    assert decode_video(clip6, out, progress=False).cached

    # a crash mid-way leaves no manifest, and the next run completes
    calls = {"n": 0}
    real_write = dec.atomic_write_bytes

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(dec, "atomic_write_bytes", flaky)
    with pytest.raises(OSError, match="disk full"):
        decode_video(clip6, out, jpeg_quality=90, progress=False)
    monkeypatch.setattr(dec, "atomic_write_bytes", real_write)
    assert not (out / "decode.json").exists()
    final = decode_video(clip6, out, jpeg_quality=90, progress=False)
    assert not final.cached and len(os.listdir(out / "frames")) == 150 + 1  # + notes.txt


def test_input_inside_the_stage_outputs_is_refused(tmp_path, clip6):
    out = tmp_path / "out"
    (out / "frames").mkdir(parents=True)
    inside = out / "frames" / "talk.mp4"
    inside.write_bytes(clip6.read_bytes())
    with pytest.raises(VideoInputError, match="lies among the files") as info:
        decode_video(inside, out, progress=False)
    assert_one_line(info.value, inside)
    assert inside.read_bytes() == clip6.read_bytes()


def test_fallbacks_without_opencv_and_soxr(tmp_path, monkeypatch):
    """The GPU machine may lack OpenCV or soxr: PIL writes the JPEGs, scipy resamples."""
    pytest.importorskip("scipy")
    rate = 44100
    stereo = np.stack([speech_like(6.0, rate), speech_like(6.0, rate, seed=1)])
    path = pyav_video(tmp_path / "v.mp4", list(range(150)), Fraction(1, 25), audio=stereo, audio_rate=rate, layout="stereo")
    with_soxr = extract_audio(path, tmp_path / "a.wav")
    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setitem(sys.modules, "soxr", None)
    assert dec._jpeg_encoder(95)[0] == "rgb24"
    result = decode_video(path, tmp_path / "out", progress=False)
    assert result.manifest["output"]["jpeg_encoder"] == "pil"
    from PIL import Image

    for k in (0, 149):
        assert read_code(np.asarray(Image.open(result.frame_path(k)))) == k
    without, _ = read_wav(tmp_path / "out" / "audio.wav")
    assert without.size == with_soxr.size == 6 * SR
    assert np.abs(without - with_soxr)[100:-100].max() < 5e-3


def test_progress_bar_runs(tmp_path, clip6, capsys):
    decode_video(clip6, tmp_path / "out", progress=True)
    assert "decode talk.mp4" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real videos


@pytest.mark.skipif(not (REAL_DIR / "dfrf_french.mp4").exists(), reason="real sample videos are not in /work/shared")
def test_probe_real_video():
    info = probe_video(REAL_DIR / "dfrf_french.mp4")
    assert (info.width, info.height, info.codec) == (512, 512, "h264")
    assert info.fps == pytest.approx(30.0) and info.num_frames == 1510 and not info.variable_frame_rate
    assert info.start_s == pytest.approx(0.08)  # first frame 80 ms after the audio: t = 0 is here
    assert (info.audio_sample_rate, info.audio_channels) == (48000, 2)
    assert info.num_output_frames() == 1258
