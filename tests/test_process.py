"""`gstalker-process` end to end on our synthetic subject's talk.mp4 (mediapipe detects its face)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gstalker_ns.data.dataparser import TalkingPortraitDataParserConfig

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    from gstalker_ns.preprocess.pipeline import process_video
    from gstalker_ns.synth.subject import generate_subject

    root = tmp_path_factory.mktemp("process")
    subject = generate_subject(root / "subject", duration=3.0, size=256, seed=3, progress=False)
    video = subject / "talk.mp4"
    before = video.read_bytes()
    summary = process_video(video, root / "person", size=256, progress=False)
    assert video.read_bytes() == before  # the input is never modified
    return subject, root / "person", summary


def test_process_writes_a_training_folder_the_dataparser_loads(processed):
    subject, person, summary = processed
    assert summary.num_frames == 75 and summary.kept_frames >= 72
    outputs = TalkingPortraitDataParserConfig(data=person, num_seed_points=500).setup().get_dataparser_outputs("train")
    assert len(outputs.image_filenames) >= 65
    assert tuple(outputs.metadata["audio_features"].shape) == (75, 5, 464)  # whisper layer 3 + log-mel
    assert tuple(outputs.metadata["expression_points"].shape) == (75, 61, 3)  # lips + jaw in the head frame
    labels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(person / "masks" / "000010.png"))
    assert {0, 1, 2, 3}.issubset(set(np.unique(labels).tolist()))


def test_process_expression_track_follows_the_true_mouth(processed):
    """The tracked inner-lip gap, lifted into the head frame, follows the synthetic subject's
    exact mouth opening, and the A/V offset estimate is recorded (the subject is in sync)."""
    from gstalker_ns.expression import ExpressionTrack

    subject, person, _ = processed
    truth = np.array([f["mouth_opening"] for f in json.loads((subject / "ground_truth.json").read_text())["frames"]])
    track = ExpressionTrack.load(person / "face_landmarks.npz")
    gap = track.lip_gap()
    valid = np.isfinite(gap)
    assert valid.sum() >= 72 and np.corrcoef(gap[valid], truth[valid])[0, 1] > 0.8
    boxes = track.eye_boxes[valid]
    assert (boxes[:, :, 2] > boxes[:, :, 0]).all() and (boxes[:, 0, 0] < boxes[:, 1, 0]).all()  # image-left eye first
    offset = json.loads((person / "transforms.json").read_text())["audio_offset"]
    assert offset["source"].startswith("auto") and abs(offset["applied_ms"]) < 40.0, offset


def test_process_poses_follow_the_true_head_motion(processed):
    subject, person, _ = processed
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "process_vs_ground_truth.py"), str(subject), str(person)],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(completed.stdout)
    assert report["rotation_error_deg"]["median"] < 3.0, report
    assert report["rotation_error_deg"]["median"] < 0.5 * report["head_rotation_range_deg"], report


def test_process_cli_refuses_a_folder_with_foreign_files(processed, tmp_path):
    subject, _, _ = processed
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    completed = subprocess.run([str(BIN / "gstalker-process"), str(subject / "talk.mp4"), str(out), "--quiet"], capture_output=True, text=True)
    assert completed.returncode == 2
    assert "use an empty or new output folder" in completed.stderr and "Traceback" not in completed.stderr
    assert (out / "notes.txt").read_text() == "mine"


def test_process_cli_one_line_error_for_a_video_without_audio(tmp_path):
    from gstalker_ns.media.video import write_mp4

    video = tmp_path / "silent_film.mp4"
    write_mp4(video, (np.full((64, 64, 3), i, np.uint8) for i in range(50)), fps=25.0)
    completed = subprocess.run([str(BIN / "gstalker-process"), str(video), str(tmp_path / "out"), "--quiet"], capture_output=True, text=True)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.startswith("gstalker-process: error:")]
    assert len(lines) == 1 and "no audio track" in lines[0]


def test_shift_audio_realigns_and_keeps_length():
    from gstalker_ns.preprocess.pipeline import shift_audio

    wave = np.zeros(16000, np.float32)
    wave[8000] = 1.0  # a click at 0.5 s
    late = shift_audio(wave, 16000, 100.0)  # sound lags the lips by 100 ms: move it earlier
    early = shift_audio(wave, 16000, -100.0)
    assert len(late) == len(early) == len(wave)
    assert int(np.argmax(late)) == 8000 - 1600 and int(np.argmax(early)) == 8000 + 1600
    assert shift_audio(wave, 16000, 0.0) is wave


def test_data_can_name_a_video_or_a_folder_holding_only_a_video(processed, tmp_path):
    """`ns-train gstalker --data talk.mp4`: the dataparser processes the video first, next to it, once."""
    import shutil

    from gstalker_ns.data.dataparser import resolve_training_folder

    subject, _, _ = processed
    folder = tmp_path / "clip"
    folder.mkdir()
    video = folder / "talk.mp4"
    shutil.copy2(subject / "talk.mp4", video)
    outputs = TalkingPortraitDataParserConfig(data=folder, num_seed_points=300).setup().get_dataparser_outputs("train")
    assert (folder / "talk.gstalker" / "transforms.json").exists()
    assert len(outputs.image_filenames) > 60
    stamp = (folder / "talk.gstalker" / "transforms.json").stat().st_mtime_ns
    assert resolve_training_folder(video) == folder / "talk.gstalker"  # reused, not processed again
    assert (folder / "talk.gstalker" / "transforms.json").stat().st_mtime_ns == stamp
    assert resolve_training_folder(subject) == subject  # a training folder stays as it is
