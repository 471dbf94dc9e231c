"""The per-frame drive of `gstalker-render` without a checkpoint: audio windows, blinks, poses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gstalker_ns.audio.features import AudioFeatureSpec
from gstalker_ns.audio.io import AudioError, write_wav
from gstalker_ns.drive.audio import drive_from_file, drive_from_wave, frame_count, spec_from_extractor
from gstalker_ns.drive.blink import BLINKS_PER_MINUTE, blink_track, natural_blinks
from gstalker_ns.drive.timeline import looped_positions, ping_pong_positions
from gstalker_ns.errors import GstalkerUserError
from gstalker_ns.render.frames import audio_for_frames, side_by_side


def click_track(seconds: float, rate: int, click_at: float, channels: int = 1) -> np.ndarray:
    """Quiet noise with one loud 10 ms burst at `click_at` seconds."""
    rng = np.random.default_rng(0)
    wave = 1e-3 * rng.standard_normal(int(round(seconds * rate)))
    start = int(round(click_at * rate))
    wave[start : start + rate // 100] += 0.8 * np.sin(np.arange(rate // 100) * 2 * np.pi * 1000 / rate)
    wave = wave.astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def loudest_frame(features: np.ndarray, spec: AudioFeatureSpec) -> int:
    """The frame whose window slot at its own time (k/fps) is loudest."""
    slot = spec.window // 2 - spec.lookahead
    return int(np.argmax(features[:, slot, :].mean(axis=1)))


@pytest.mark.parametrize("rate,channels,fps", [(16000, 1, 25.0), (44100, 2, 25.0), (44100, 1, 30.0), (22050, 2, 30.0)])
def test_frame_k_is_driven_by_the_window_centred_at_k_over_fps(tmp_path, rate, channels, fps):
    seconds, target = 3.0, round(1.7 * fps)
    click = target / fps  # the burst is centred on frame `target`'s time
    path = tmp_path / "speech.wav"
    import soundfile

    soundfile.write(str(path), click_track(seconds, rate, click - 0.005, channels), rate)
    spec = AudioFeatureSpec()
    drive = drive_from_file(path, spec, fps=fps)
    assert drive.num_frames == round(seconds * fps)
    assert drive.sample_rate == 16000 and abs(drive.duration_s - seconds) < 1e-3
    assert drive.features.shape == (drive.num_frames, spec.window, spec.dim)
    assert loudest_frame(drive.features, spec) == target


def test_frame_count_rounds_duration_times_fps():
    assert frame_count(16000 * 3 + 319, 16000, 25) == 75  # 75.498 frames
    assert frame_count(16000 * 3 + 321, 16000, 25) == 76  # 75.502 frames
    assert frame_count(44100 * 2, 44100, 30) == 60


def test_drive_rejects_too_short_audio_and_foreign_extractors():
    spec = AudioFeatureSpec()
    with pytest.raises(AudioError, match="at least"):
        drive_from_wave(np.zeros(800, np.float32), 16000, spec)
    with pytest.raises(GstalkerUserError, match="no audio extractor"):
        spec_from_extractor({})
    with pytest.raises(GstalkerUserError, match="ER-NeRF"):
        spec_from_extractor({"source": "ernerf", "file": "aud_ds.npy"})
    assert spec_from_extractor(spec.to_json()) == spec


def test_ping_pong_has_no_jump_and_keeps_real_speed():
    positions = ping_pong_positions(np.arange(20, dtype=float), 5)
    assert positions.tolist()[:10] == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1]
    assert np.all(np.abs(np.diff(positions)) <= 1)
    # 30 fps output over a 25 fps track: 5/6 of a track frame per output frame
    assert np.allclose(looped_positions(4, 30.0, 25.0, 100), [0, 5 / 6, 10 / 6, 2.5])


def test_blink_tracks():
    fps = 25.0
    track = natural_blinks(int(60 * fps), fps, seed=3)
    starts = np.flatnonzero((track[1:] > 0.5) & (track[:-1] <= 0.5))
    assert 0.5 * BLINKS_PER_MINUTE <= len(starts) <= 1.6 * BLINKS_PER_MINUTE
    assert track[0] == 0 and track.max() == pytest.approx(1.0)
    assert np.all(np.diff(starts) >= fps)  # at least a second apart
    assert not np.array_equal(track, natural_blinks(int(60 * fps), fps, seed=4))
    assert np.array_equal(blink_track("off", 50, fps), np.zeros(50))
    dataset = np.array([0, 0.2, 1.0, 0.1], np.float32)
    assert blink_track("dataset", 8, fps, dataset).tolist() == pytest.approx([0, 0.2, 1.0, 0.1, 1.0, 0.2, 0, 0.2])
    # natural blinks peak where the clip's own closed eyes sit
    dimmer = blink_track("natural", 1500, fps, np.r_[np.zeros(970), np.full(30, 0.6)].astype(np.float32))
    assert dimmer.max() == pytest.approx(0.6)
    with pytest.raises(ValueError):
        blink_track("sometimes", 5, fps)


def test_audio_for_frames_covers_exactly_the_frames():
    wave = np.arange(16000, dtype=np.float32)
    piece = audio_for_frames(wave, 16000, first_frame=5, num_frames=10, fps=25)
    assert piece.size == 6400 and piece[0] == 3200 and piece[-1] == 9599
    tail = audio_for_frames(wave, 16000, first_frame=20, num_frames=10, fps=25)
    assert tail.size == 6400 and tail[3199] == 15999 and np.all(tail[3200:] == 0)


def test_side_by_side_pads_and_concatenates():
    a = np.zeros((4, 3, 3), np.uint8)
    b = np.full((2, 5, 3), 9, np.uint8)
    out = side_by_side([a, b], gap=1)
    assert out.shape == (4, 9, 3) and out[0, 3, 0] == 255 and out[1, 4, 0] == 9 and out[3, 4, 0] == 0


# ---------------------------------------------------------------- poses (need nerfstudio Cameras)


def _cameras(yaws_deg, frames=None):
    from nerfstudio.cameras.cameras import Cameras

    from tests.fixtures import look_at_camera

    c2w = torch.tensor(np.stack([look_at_camera(4.0, y)[:3] for y in yaws_deg]), dtype=torch.float32)
    n = len(yaws_deg)
    frames = list(range(n)) if frames is None else frames
    return Cameras(
        camera_to_worlds=c2w, fx=100.0, fy=100.0, cx=32.0, cy=32.0, width=64, height=64,
        metadata={"frame_idx": torch.tensor(frames).reshape(-1, 1)},
    )


def _yaw_of(c2w: torch.Tensor) -> float:
    centre = c2w[:3, 3].numpy()
    return float(np.rad2deg(np.arctan2(centre[0], centre[2])))


def test_sequence_poses_loop_in_clip_order_and_interpolate_in_time():
    from gstalker_ns.drive.poses import pose_track

    cams = _cameras([20.0, 0.0, 10.0], frames=[7, 5, 6])  # stored out of order
    track = pose_track("train", 9, fps=50.0, clip_fps=25.0, train_cameras=cams)
    yaws = [_yaw_of(track.camera_to_worlds[k]) for k in range(9)]
    # frame order 5, 6, 7 = yaw 0, 10, 20, at half a clip frame per output frame, then back
    assert yaws == pytest.approx([0, 5, 10, 15, 20, 15, 10, 5, 0], abs=1e-3)
    rotation = track.camera_to_worlds[1, :3, :3]
    assert torch.allclose(rotation @ rotation.T, torch.eye(3), atol=1e-5)
    camera = track.camera(3, frame_idx=42, scale=0.5)
    assert int(camera.width) == 32 and float(camera.fx) == 50.0
    assert int(camera.metadata["frame_idx"]) == 42


def test_fixed_pose_and_its_errors():
    from gstalker_ns.drive.poses import PoseSourceError, pose_track

    train, held_out = _cameras([0.0, 10.0], [0, 1]), _cameras([30.0], [2])
    track = pose_track("fixed", 4, 25.0, 25.0, train, held_out, frame=2)
    assert len(track) == 4 and all(abs(_yaw_of(track.camera_to_worlds[k]) - 30) < 1e-3 for k in range(4))
    with pytest.raises(PoseSourceError, match="frame 9 is not a frame of this dataset"):
        pose_track("fixed", 4, 25.0, 25.0, train, held_out, frame=9)
    with pytest.raises(PoseSourceError, match="--frame"):
        pose_track("fixed", 4, 25.0, 25.0, train, held_out)


def write_camera_path(path: Path, yaws_deg, height: int = 48, width: int = 64) -> Path:
    """A camera path in the format of the viewer's Render panel export."""
    from tests.fixtures import look_at_camera

    path.write_text(
        json.dumps(
            {
                "camera_type": "perspective",
                "render_height": height,
                "render_width": width,
                "fps": 24,
                "seconds": 2,
                "camera_path": [
                    {"camera_to_world": look_at_camera(4.0, y).flatten().tolist(), "fov": 40.0, "aspect": width / height}
                    for y in yaws_deg
                ],
            }
        )
    )
    return path


def test_camera_path_is_stretched_over_the_audio(tmp_path):
    from gstalker_ns.drive.poses import pose_track

    path = write_camera_path(tmp_path / "orbit.json", [-30.0, 0.0, 30.0])
    track = pose_track("camera-path", 5, 25.0, 25.0, _cameras([0.0]), camera_path=path)
    assert [round(_yaw_of(track.camera_to_worlds[k]), 3) for k in range(5)] == [-30, -15, 0, 15, 30]
    assert (track.height, track.width) == (48, 64)
    assert float(track.fy[0]) == pytest.approx(24 / np.tan(np.deg2rad(20)), rel=1e-4)


@pytest.mark.parametrize(
    "text,match",
    [
        ("{not json", "not valid JSON"),
        ('{"render_height": 4}', "no 'camera_path' list"),
        ('{"camera_path": [{"fov": 40}], "render_height": 4, "render_width": 4}', "does not parse"),
        ('{"camera_path": [{"camera_to_world": [1, 2], "fov": 40}], "render_height": 4, "render_width": 4}', "does not parse"),
    ],
)
def test_camera_path_errors_are_one_line(tmp_path, text, match):
    from gstalker_ns.drive.poses import PoseSourceError, read_camera_path

    path = tmp_path / "path.json"
    path.write_text(text)
    with pytest.raises(PoseSourceError, match=match) as info:
        read_camera_path(path)
    assert "\n" not in str(info.value)
    with pytest.raises(PoseSourceError, match="not found"):
        read_camera_path(tmp_path / "missing.json")


def test_write_wav_input_is_not_modified_by_drive(tmp_path):
    path = tmp_path / "in.wav"
    write_wav(path, click_track(1.0, 16000, 0.5), 16000)
    before = path.read_bytes()
    drive_from_file(path, AudioFeatureSpec(), fps=25)
    assert path.read_bytes() == before
