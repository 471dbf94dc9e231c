"""Preprocessing stage 2: face mesh landmarks, checked against the synthetic subject's ground truth.

The subject (seed 0, 2 s, 256 px) blinks once (frames 18..22, blink > 0.5 on 19..21) and talks,
so the mouth opening varies. Ground-truth points come from ``head_landmarks()`` projected with
the frame's head pose (p_camera = R p + t) and the OpenGL pinhole of ``ground_truth.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("mediapipe")

from gstalker_ns.errors import GstalkerUserError  # noqa: E402
from gstalker_ns.preprocess import landmarks as lm  # noqa: E402
from gstalker_ns.preprocess.landmarks import (  # noqa: E402
    LandmarkTrack,
    NoFaceError,
    blink_from_ear,
    eye_aspect_ratio,
    fill_missing,
    inner_lip_distance,
    landmarks_stage,
    track_landmarks,
)
from gstalker_ns.synth.head import head_landmarks  # noqa: E402
from gstalker_ns.synth.subject import generate_subject  # noqa: E402


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("subject") / "s0"
    generate_subject(root, duration=2.0, size=256, seed=0, progress=False, video=False)
    truth = json.loads((root / "ground_truth.json").read_text())
    files = sorted((root / "frames").glob("*.jpg"))
    track = track_landmarks((_read_rgb(f) for f in files), num_frames=len(files))
    return root, truth, files, track


def _project(truth, name: str, k: int) -> np.ndarray:
    frame = truth["frames"][k]
    K = truth["intrinsics"]
    mouth = float(frame["mouth_opening"])
    p = head_landmarks(mouth)[name]
    x = np.asarray(frame["head"]["rotation"]) @ p + np.asarray(frame["head"]["translation"])
    return np.array([K["fl_x"] * x[0] / -x[2] + K["cx"], -K["fl_y"] * x[1] / -x[2] + K["cy"]])


def test_detects_and_matches_ground_truth(subject):
    root, truth, files, track = subject
    n = len(files)
    assert track.num_frames == n == truth["num_frames"]
    assert (track.width, track.height) == (256, 256)
    assert track.detected.mean() >= 0.95
    assert np.all(track.faces_seen[track.detected] == 1)
    errors = {"nose": [], "right_eye": [], "left_eye": []}
    for k in np.flatnonzero(track.detected):
        p = track.points[k].astype(np.float64)
        errors["nose"].append(p[lm.NOSE_TIP] - _project(truth, "nose_tip", k))
        # eye centre = midpoint of the eye corners (the iris moves with the synthetic eyelids)
        errors["right_eye"].append((p[33] + p[133]) / 2 - _project(truth, "right_eye", k))
        errors["left_eye"].append((p[362] + p[263]) / 2 - _project(truth, "left_eye", k))
    for name, errs in errors.items():
        dist = np.linalg.norm(np.asarray(errs), axis=1)
        rms = float(np.sqrt(np.mean(dist**2)))
        # measured at 256 px: nose rms 1.6 max 2.4, right eye rms 1.9 max 3.3, left eye rms 1.5 max 3.3
        assert rms < 3.0, (name, rms)
        assert dist.max() < 5.0, (name, dist.max())
    # z: nearer = smaller; the nose tip is in front of the eye corners
    assert np.nanmean(track.z[:, lm.NOSE_TIP]) < np.nanmean(track.z[:, [33, 263]])


def test_mouth_and_blink_follow_ground_truth(subject):
    root, truth, files, track = subject
    filled, report = fill_missing(track)
    mouth = np.array([f["mouth_opening"] for f in truth["frames"]])
    blink_gt = np.array([f["blink"] for f in truth["frames"]])
    lips = inner_lip_distance(filled.points)
    r = float(np.corrcoef(lips, mouth)[0, 1])
    assert r > 0.9, r  # measured 0.99
    assert (blink_gt > 0.5).sum() >= 2  # the seed is chosen so that the clip has a blink
    ear = eye_aspect_ratio(filled.points)
    assert np.all((ear > 0.1) & (ear < 0.6))
    blink = blink_from_ear(ear)
    assert blink.shape == (len(files),) and np.all((blink >= 0) & (blink <= 1))
    closed = blink_gt > 0.5
    far_from_blink = np.convolve(blink_gt > 0.05, np.ones(5), mode="same") == 0
    assert blink[closed].min() > 0.6, blink[closed]  # measured 0.88..1.0
    assert blink[far_from_blink].max() < 0.4, blink[far_from_blink].max()  # measured ~0.2
    assert np.median(blink[far_from_blink]) < 0.15


def test_measures_handle_nan():
    points = np.full((3, lm.NUM_LANDMARKS, 2), np.nan, np.float32)
    assert np.isnan(eye_aspect_ratio(points)).all()
    assert np.isnan(inner_lip_distance(points)).all()
    assert np.isnan(blink_from_ear(np.array([np.nan, np.nan]))).all()
    out = blink_from_ear(np.array([0.4, np.nan, 0.2, 0.4, 0.4]))
    assert np.isnan(out[1]) and out[2] == 1.0 and out[0] == 0.0


def test_no_face_raises_one_line(subject):
    root = subject[0]
    background = _read_rgb(root / "background.png")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=background.shape, dtype=np.uint8)
    track = track_landmarks([background] * 3 + [noise] * 3)
    assert not track.detected.any() and np.isnan(track.points).all()
    with pytest.raises(NoFaceError) as info:
        fill_missing(track, source="talk.mp4")
    message = str(info.value)
    assert isinstance(info.value, GstalkerUserError) and isinstance(info.value, ValueError)
    assert "\n" not in message
    assert message.startswith("talk.mp4: no face found in any of the 6 frames;"), message
    with pytest.raises(ValueError, match="share one size"):
        track_landmarks([background, noise[:128]])


def _fake_track(n: int, detected: np.ndarray, faces_seen=None) -> LandmarkTrack:
    base = np.random.default_rng(1).uniform(50, 200, size=(lm.NUM_LANDMARKS, 2)).astype(np.float32)
    t = np.arange(n, dtype=np.float32)
    points = base[None] + t[:, None, None]  # moves 1 px per frame: linear in time
    z = np.broadcast_to(t[:, None], (n, lm.NUM_LANDMARKS)).astype(np.float32).copy()
    points[~detected] = np.nan
    z[~detected] = np.nan
    return LandmarkTrack(
        points=points,
        z=z,
        detected=detected,
        faces_seen=detected.astype(int) if faces_seen is None else faces_seen,
        width=256,
        height=256,
    )


def test_fill_missing_interpolates_short_gaps_and_reports_long_ones():
    n = 100
    detected = np.ones(n, bool)
    detected[0:3] = False  # leading gap: nearest
    detected[10:15] = False  # interior short gap: linear
    detected[40:70] = False  # long gap (30 > 25): dropped
    detected[97:] = False  # trailing gap: nearest
    faces = detected.astype(int)
    faces[20:22] = 2
    track = _fake_track(n, detected, faces)
    full = _fake_track(n, np.ones(n, bool))
    out, report = fill_missing(track, max_gap_frames=25, source="talk.mp4")
    assert report.num_frames == n and report.missing_frames == 3 + 5 + 30 + 3
    assert report.interpolated_frames == 3 + 5 + 3 and report.dropped_frames == 30
    assert report.longest_gap == 30 and report.multiple_faces_frames == 2
    np.testing.assert_allclose(out.points[10:15], full.points[10:15], atol=1e-4)
    np.testing.assert_allclose(out.z[10:15], full.z[10:15], atol=1e-4)
    np.testing.assert_array_equal(out.points[0:3], np.broadcast_to(track.points[3], (3, lm.NUM_LANDMARKS, 2)))
    np.testing.assert_array_equal(out.points[97:], np.broadcast_to(track.points[96], (3, lm.NUM_LANDMARKS, 2)))
    assert np.isnan(out.points[40:70]).all()
    valid = out.valid
    assert valid.sum() == n - 30 and not valid[40:70].any()
    assert out.interpolated.sum() == 11 and not out.interpolated[40:70].any()
    np.testing.assert_array_equal(out.detected, detected)  # detected keeps mediapipe's verdict
    assert any("frames 40..69 (30 frames, 1.2 s)" in m for m in report.messages), report.messages
    assert any("more than one face" in m for m in report.messages)
    assert all("\n" not in m for m in report.messages)
    assert track.interpolated.sum() == 0 and np.isnan(track.points[10]).all()  # input untouched

    # more than half missing -> refused with one line
    detected = np.zeros(n, bool)
    detected[:45] = True
    with pytest.raises(NoFaceError, match=r"^talk\.mp4: a face was found in only 45 of the 100 frames \(45%\)"):
        fill_missing(_fake_track(n, detected), source="talk.mp4")
    detected[:50] = True  # exactly half is still accepted
    out, report = fill_missing(_fake_track(n, detected))
    assert report.dropped_frames == 50 and report.longest_gap == 50


def test_two_faces_take_the_largest(subject):
    root, truth, files, track = subject
    image = _read_rgb(files[5])
    # the small face must stay >= ~200 px of 480: face mesh's short-range detector misses a
    # 160 px face on a 448 px wide frame (measured)
    canvas = np.empty((256, 480, 3), np.uint8)
    canvas[:] = image[0, 0]
    canvas[24:232, 8:216] = cv2.resize(image, (208, 208), interpolation=cv2.INTER_AREA)  # small face, left
    canvas[:, 224:] = image  # the subject, right
    for mirrored in (False, True):
        frame = np.ascontiguousarray(canvas[:, ::-1]) if mirrored else canvas
        two = track_landmarks([frame] * 3)
        assert two.detected.all() and (two.width, two.height) == (480, 256)
        assert np.all(two.faces_seen == 2), two.faces_seen
        # the larger face is kept: its nose is where the subject's is (shifted / mirrored)
        x, y = track.points[5, lm.NOSE_TIP]
        expected = np.array([480 - (x + 224) if mirrored else x + 224, y])
        assert np.all(np.linalg.norm(two.points[:, lm.NOSE_TIP] - expected, axis=1) < 3.0), two.points[:, lm.NOSE_TIP]
        _, report = fill_missing(two)
        assert report.multiple_faces_frames == 3


def test_save_load_roundtrip(tmp_path, subject):
    track = subject[3]
    track.save(tmp_path / "t.npz")
    back = LandmarkTrack.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.points, track.points)
    np.testing.assert_array_equal(back.z, track.z)
    np.testing.assert_array_equal(back.detected, track.detected)
    np.testing.assert_array_equal(back.faces_seen, track.faces_seen)
    assert (back.width, back.height) == (track.width, track.height)
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]  # no temp files left


def test_stage_caches_and_recomputes(tmp_path, subject, monkeypatch):
    files = subject[2]
    frames_dir = tmp_path / "out" / "frames"
    frames_dir.mkdir(parents=True)
    for f in files[:8]:
        shutil.copy2(f, frames_dir / f.name)
    stage_dir = tmp_path / "out"
    first = landmarks_stage(frames_dir, stage_dir, progress=False)
    assert first.num_frames == 8 and first.detected.all()
    manifest = json.loads((stage_dir / "landmarks.json").read_text())
    assert manifest["stage"] == "landmarks" and manifest["input"]["num_frames"] == 8
    assert (stage_dir / "landmarks.npz").is_file()

    calls = []
    real = lm.track_landmarks

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("mediapipe should not run for a cached stage")

    monkeypatch.setattr(lm, "track_landmarks", refuse)
    cached = landmarks_stage(frames_dir, stage_dir, progress=False)
    np.testing.assert_array_equal(cached.points, first.points)

    # a changed frame (content and mtime) invalidates the cache
    monkeypatch.setattr(lm, "track_landmarks", counting)
    target = frames_dir / files[0].name
    shutil.copy(files[20], target)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = landmarks_stage(frames_dir, stage_dir, progress=False)
    assert calls == [1]
    assert np.linalg.norm(again.points[0, lm.NOSE_TIP] - subject[3].points[20, lm.NOSE_TIP]) < 3.0

    # a frame more, or a missing manifest: recomputed as well
    shutil.copy2(files[8], frames_dir / files[8].name)
    assert landmarks_stage(frames_dir, stage_dir, progress=False).num_frames == 9 and calls == [1, 1]
    (stage_dir / "landmarks.json").unlink()
    landmarks_stage(frames_dir, stage_dir, progress=False)
    assert calls == [1, 1, 1]
    monkeypatch.setattr(lm, "track_landmarks", refuse)
    landmarks_stage(frames_dir, stage_dir, progress=False)

    with pytest.raises(FileNotFoundError, match="no frames"):
        landmarks_stage(tmp_path / "empty", tmp_path / "x", progress=False)
