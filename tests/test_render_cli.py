"""`gstalker-render` and nerfstudio's `ns-render` on a tiny trained checkpoint (CPU).

Stream layout and durations are checked by demuxing the written mp4 (`probe_mp4`, PyAV), the
same facts ffprobe reports.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from gstalker_ns.media.video import probe_mp4
from gstalker_ns.render.cli import main as render_main
from tests.conftest import run_checked
from tests.test_render_drive import write_camera_path

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def run(tiny_run):
    root, config, subject = tiny_run
    return config, subject


@pytest.fixture(scope="module")
def pipeline(run):
    from gstalker_ns.checkpoint import load_trained_pipeline

    config, _ = run
    loaded, _, _, _ = load_trained_pipeline(config)
    return loaded


def decode_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def speech(subject: Path, seconds: float) -> tuple:
    """The subject's own speech, first `seconds`, as (mono float32, 16 kHz)."""
    wave, rate = soundfile.read(str(subject / "audio.wav"), dtype="float32")
    return wave[: int(seconds * rate)], rate


def assert_synced(info: dict, frames: int, fps: float, seconds: float) -> None:
    video, audio = info["video"], info["audio"]
    assert video["codec"] == "h264" and audio["codec"] == "aac"
    assert video["packets"] == frames == round(seconds * fps)
    assert video["rate"] == pytest.approx(fps)
    assert abs(video["end"] - frames / fps) < 1e-6
    assert abs(audio["end"] - video["end"]) <= 1.0 / fps, info


def test_any_rate_stereo_audio_at_30_fps_gives_synced_mp4(run, tmp_path, capsys):
    config, subject = run
    wave, rate = speech(subject, 1.7)
    import librosa

    wave44 = librosa.resample(wave, orig_sr=rate, target_sr=44100)
    clip = tmp_path / "speech 44k.wav"
    soundfile.write(str(clip), np.stack([wave44, 0.5 * wave44], axis=1), 44100)  # stereo
    before = clip.read_bytes()
    out = tmp_path / "out.mp4"
    code = render_main(["--load-config", str(config), "--audio", str(clip), "--fps", "30", "-o", str(out), "--quiet",
                        "--report", str(tmp_path / "report.json")])
    assert code == 0, capsys.readouterr().err
    assert clip.read_bytes() == before  # the input is never touched
    seconds = wave44.size / 44100
    assert_synced(probe_mp4(out), round(seconds * 30), 30.0, seconds)
    frames = decode_frames(out)
    assert frames.shape[1:] == (64, 64, 3) and frames.std() > 5  # a picture, not a blank
    report = __import__("json").loads((tmp_path / "report.json").read_text())
    assert report["num_frames"] == round(seconds * 30) and report["frames_per_second"] > 0
    assert "wrote" in capsys.readouterr().out


def test_video_frame_k_is_render_k_with_audio_row_k(run, pipeline, tmp_path):
    """The written video is the rendered sequence, in order, none dropped or repeated; and each
    frame was driven by its own audio row (the features of the training clip's own audio are
    exactly the training table, so rendering it reproduces the training drive)."""
    from gstalker_ns.audio.features import AudioFeatureSpec
    from gstalker_ns.drive.audio import drive_from_wave, spec_from_extractor
    from gstalker_ns.drive.poses import pose_track
    from gstalker_ns.render.video import driven, render_frames, write_video

    _, subject = run
    model = pipeline.model
    spec = spec_from_extractor(model.audio_extractor)
    assert spec == AudioFeatureSpec.from_json(model.audio_extractor)
    wave, rate = speech(subject, 60.0)
    drive = drive_from_wave(wave, rate, spec, fps=25.0)
    table = np.load(subject / "audio_features.npy")
    assert drive.features.shape == table.shape
    # equal up to the wav file's 16-bit rounding; a one-frame shift would differ by ~0.26 on average
    assert np.abs(drive.features - table).mean() < 2e-3 and np.abs(drive.features - table).max() < 0.1

    path = write_camera_path(tmp_path / "orbit.json", [-25.0, 25.0], height=64, width=64)
    poses = pose_track("camera-path", drive.num_frames, 25.0, 25.0, pipeline.datamanager.train_dataset.cameras,
                       camera_path=path)
    seen = []
    original = model._render_view

    def spy(camera_to_world, K, W, H, frame_idx):  # every render of a frame passes here
        seen.append((int(frame_idx), model.audio_table.data_ptr()))
        return original(camera_to_world, K, W, H, frame_idx)

    model._render_view = spy
    try:
        with driven(model, drive.features, np.zeros(drive.num_frames, np.float32)):
            driven_table = model.audio_table.data_ptr()
            direct = list(render_frames(model, poses, range(drive.num_frames)))
            out = tmp_path / "seq.mp4"
            write_video(out, render_frames(model, poses, range(drive.num_frames)), drive.num_frames, 25.0,
                        drive.wave, drive.sample_rate, crf=10, show_progress=False)
    finally:
        del model._render_view
    assert [row for row, _ in seen] == list(range(drive.num_frames)) * 2
    assert all(ptr == driven_table for _, ptr in seen)
    assert model.audio_table.shape[0] == table.shape[0]  # the training drive is restored afterwards
    decoded = decode_frames(out).astype(np.float32)
    direct_f = np.stack(direct).astype(np.float32)
    assert decoded.shape == direct_f.shape
    distance = ((decoded[:, None] - direct_f[None]) ** 2).mean(axis=(2, 3, 4))
    assert np.array_equal(distance.argmin(axis=1), np.arange(len(direct)))


def test_batched_render_loop_gives_the_same_frames(pipeline):
    """render_frames in batches (what gstalker-render does on a GPU) yields the frames of the
    one-at-a-time loop, in order, the last batch short."""
    from gstalker_ns.drive.poses import pose_track
    from gstalker_ns.render.video import render_frames

    model = pipeline.model
    poses = pose_track("train", 7, 25.0, 25.0, pipeline.datamanager.train_dataset.cameras)
    rows = [3, 0, 5, 1, 4, 2, 6]
    one = np.stack(list(render_frames(model, poses, rows, batch=1)))
    batched = np.stack(list(render_frames(model, poses, rows, batch=3)))
    assert batched.shape == one.shape == (7, *one.shape[1:])
    assert np.abs(batched.astype(int) - one).max() <= 1  # rounding to uint8 only


def test_a_failing_batched_rasterizer_falls_back_to_single_frames(pipeline, monkeypatch):
    """Another gsplat version may break the batched path: the loop warns once and renders the
    same frames one at a time."""
    from gstalker_ns.drive.poses import pose_track
    from gstalker_ns.render import video

    model = pipeline.model
    poses = pose_track("train", 5, 25.0, 25.0, pipeline.datamanager.train_dataset.cameras)
    rows = [0, 1, 2, 3, 4]
    expected = np.stack(list(video.render_frames(model, poses, rows, batch=1)))
    calls = []

    def broken(cameras):
        calls.append(cameras.shape[0])
        raise TypeError("isect_tiles() got an unexpected keyword argument")

    monkeypatch.setattr(model, "render_batch", broken)
    monkeypatch.setattr(model, "_batched_render_failed", False, raising=False)  # restored afterwards
    with pytest.warns(UserWarning, match="one frame at a time"):
        frames = np.stack(list(video.render_frames(model, poses, rows, batch=2)))
    assert np.array_equal(frames, expected) and calls == [2]  # tried once, then never again


def test_pose_sources_and_blink_options_render(run, tmp_path, capsys):
    config, subject = run
    wave, rate = speech(subject, 0.6)
    clip = tmp_path / "speech.flac"
    soundfile.write(str(clip), wave, rate)
    cases = {
        "fixed": ["--pose", "fixed", "--frame", "3", "--blink", "off"],
        "val": ["--pose", "val", "--blink", "dataset"],
        "path": ["--pose", "camera-path", "--camera-path", str(write_camera_path(tmp_path / "p.json", [-20, 20], 40, 56))],
    }
    for name, extra in cases.items():
        out = tmp_path / f"{name}.mp4"
        code = render_main(["--load-config", str(config), "--audio", str(clip), "-o", str(out), "--quiet", *extra])
        assert code == 0, (name, capsys.readouterr().err)
        assert_synced(probe_mp4(out), 15, 25.0, 0.6)
        frames = decode_frames(out)
        if name == "fixed":
            assert np.abs(frames[0].astype(int) - frames[-1]).mean() < 8  # same pose throughout
        if name == "path":
            assert frames.shape[1:3] == (40, 56)
            assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 1  # the camera moved


def test_side_by_side_is_ground_truth_next_to_render(run, pipeline, tmp_path, capsys):
    from gstalker_ns.render.frames import read_rgb

    config, _ = run
    out = tmp_path / "sbs.mp4"
    assert render_main(["--load-config", str(config), "--side-by-side", "-o", str(out), "--quiet", "--crf", "12"]) == 0
    dataset = pipeline.datamanager.eval_dataset
    n = len(dataset)
    assert_synced(probe_mp4(out), n, 25.0, n / 25.0)
    frames = decode_frames(out)
    assert frames.shape[1:] == (64, 128, 3)
    order = torch.argsort(dataset.cameras.metadata["frame_idx"].reshape(-1)).tolist()
    truth = read_rgb(dataset.image_filenames[order[0]])
    assert np.abs(frames[0, :, :64].astype(int) - truth).mean() < 6


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    return err[-1]


def test_user_errors_are_one_line(run, tmp_path, capsys):
    config, subject = run
    garbage = tmp_path / "noise.wav"
    garbage.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    bad_path = tmp_path / "bad.json"
    bad_path.write_text("{")
    good = tmp_path / "ok.wav"
    soundfile.write(str(good), speech(subject, 0.5)[0], 16000)
    no_ckpt = tmp_path / "run_without_checkpoints"
    no_ckpt.mkdir()
    shutil.copy(config, no_ckpt / "config.yml")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yml").write_text(config.read_text().replace("method_name: gstalker", "method_name: splatfacto"))
    cases = [
        (["--audio", str(garbage)], "not a readable audio file"),
        (["--audio", str(empty)], "file is empty"),
        (["--audio", str(tmp_path / "missing.wav")], "not found"),
        (["--audio", str(good), "--pose", "camera-path", "--camera-path", str(bad_path)], "not valid JSON"),
        (["--audio", str(good), "--pose", "fixed", "--frame", "999"], "frame 999 is not a frame"),
        (["--audio", str(good), "-o", str(tmp_path / "x.avi")], "must end in .mp4"),
        (["--side-by-side", "--audio", str(good)], "drop --audio"),
        (["--audio", str(good), "-o", str(good / "x.mp4")], "cannot write into"),
    ]
    for extra, message in cases:
        args = ["--load-config", str(config), "--quiet", "-o", str(tmp_path / "o.mp4"), *extra]
        assert render_main(args) == 1, extra
        line = _error_line(capsys)
        assert line.startswith("error: ") and message in line, (extra, line)
    for bad_config, message in [
        (tmp_path / "nowhere" / "config.yml", "not found"),
        (no_ckpt / "config.yml", "holds no step-*.ckpt"),
        (foreign / "config.yml", "is a 'splatfacto' run"),
    ]:
        assert render_main(["--load-config", str(bad_config), "--audio", str(good), "--quiet"]) == 1
        line = _error_line(capsys)
        assert message in line, line
    assert not (tmp_path / "o.mp4").exists()


def test_console_script_error_has_no_traceback(run, tmp_path):
    config, _ = run
    bad = tmp_path / "song.ogg"
    bad.write_bytes(b"OggS" + b"\0" * 100)
    done = subprocess.run([str(BIN / "gstalker-render"), "--load-config", str(config), "--audio", str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: not a readable audio file")
    assert "--camera-path" in run_checked([str(BIN / "gstalker-render"), "--help"]).stdout


def test_ns_render_dataset_drives_each_camera_with_its_frame(run, pipeline, tmp_path, monkeypatch):
    """nerfstudio's own renderer passes each val camera's frame index to our model."""
    from nerfstudio.scripts.render import DatasetRender

    from gstalker_ns.model import GSTalkerModel

    config, _ = run
    seen = []
    original = GSTalkerModel._frame_index

    def spy(self, camera):
        index = original(self, camera)
        seen.append(index)
        return index

    monkeypatch.setattr(GSTalkerModel, "_frame_index", spy)
    DatasetRender(load_config=config, output_path=tmp_path / "dataset", split="test").main()
    expected = sorted(pipeline.datamanager.eval_dataset.cameras.metadata["frame_idx"].reshape(-1).tolist())
    assert sorted(seen) == expected and len(set(seen)) == len(expected) > 1
    assert len(list((tmp_path / "dataset" / "test" / "rgb").glob("*.jpg"))) == len(expected)


@pytest.mark.parametrize("command", ["camera-path", "interpolate"])
def test_ns_render_trajectories_write_videos_with_the_training_sound(run, tmp_path, command):
    """Paths without a recorded clip talk with the training track (tests/test_ns_render_audio.py)."""
    config, _ = run
    out = tmp_path / f"{command}.mp4"
    args = [str(BIN / "ns-render"), command, f"--load-config={config}", f"--output-path={out}"]
    if command == "camera-path":
        path = write_camera_path(tmp_path / "orbit.json", [-30.0, -10.0, 10.0, 30.0], 48, 64)
        args.append(f"--camera-path-filename={path}")
    else:
        args += ["--interpolation-steps=2", "--frame-rate=10"]
    run_checked(args, timeout=300, cwd=tmp_path)
    info = probe_mp4(out)
    assert info["video"]["packets"] >= 4 and info["audio"] is not None
    assert abs(info["audio"]["end"] - info["video"]["end"]) <= 1.0 / info["video"]["rate"]
