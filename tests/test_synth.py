"""gstalker-synth: the procedural talking subject (small sizes and short clips, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gstalker_ns.data.layout import (
    LABEL_BACKGROUND,
    LABEL_HEAD,
    LABEL_LIPS,
    LABEL_MOUTH_INTERIOR,
    LABEL_TORSO,
    check_files,
    load_audio_features,
    read_transforms,
)
from gstalker_ns.synth import head as H
from gstalker_ns.synth.mouth_measure import mouth_opening_measure, mouth_region
from gstalker_ns.synth.speech import mouth_opening_from_audio, synthesize_speech
from gstalker_ns.synth.subject import SynthError, generate
from tests.fixtures import needs_espeak

cv2 = pytest.importorskip("cv2")

SIZE = 128
DURATION = 2.0


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def _read_mask(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "person"
    summary = generate(out, duration=DURATION, size=SIZE, seed=3, audio_source="procedural", device="cpu", progress=False)
    gt = json.loads((out / "ground_truth.json").read_text())
    return out, summary, gt


def _project(c2w: np.ndarray, layout, p: np.ndarray):
    """World (head-frame) point -> pixel (u, v) through an OpenGL camera-to-world matrix."""
    R, t = c2w[:3, :3], c2w[:3, 3]
    x, y, z = R.T @ (p - t)
    assert z < 0, "point must be in front of the camera (OpenGL looks down -z)"
    u = layout.fl_x * x / (-z) + layout.cx
    v = -layout.fl_y * y / (-z) + layout.cy
    return u, v


# ---- folder layout --------------------------------------------------------------------------------


def test_layout_files_and_counts(subject):
    out, summary, gt = subject
    n = int(round(DURATION * 25))
    layout = read_transforms(out)
    check_files(layout)
    assert layout.num_frames == n == summary.num_frames == len(gt["frames"])
    assert (layout.width, layout.height) == (SIZE, SIZE)
    assert layout.cx == SIZE / 2 and layout.cy == SIZE / 2
    assert layout.head_radius == pytest.approx(1.0)
    for name in ("talk.mp4", "background.png", "audio.wav", "audio_features.npy", "ground_truth.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "frames").glob("*.jpg"))) == n
    assert len(list((out / "masks").glob("*.png"))) == n
    table = load_audio_features(layout)
    assert table.shape[0] == n and table.ndim == 3
    assert layout.audio_extractor.get("kind")
    mask = _read_mask(out / layout.frames[0].mask_path)
    assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {LABEL_BACKGROUND, LABEL_TORSO, LABEL_HEAD, LABEL_LIPS, LABEL_MOUTH_INTERIOR}
    assert {LABEL_BACKGROUND, LABEL_TORSO, LABEL_HEAD, LABEL_LIPS} <= set(np.unique(mask))
    # the background plate is exactly what the frames show where the subject is not (up to JPEG)
    bg = _read_rgb(out / "background.png").astype(int)
    img = _read_rgb(out / layout.frames[0].file_path).astype(int)
    far = mask == LABEL_BACKGROUND
    assert np.abs(img[far] - bg[far]).mean() < 3.0
    # the subject occupies a plausible part of the frame: head ~40-45% of the height
    rows = np.nonzero((mask >= LABEL_HEAD).any(axis=1))[0]
    assert 0.33 * SIZE < rows.max() - rows.min() < 0.5 * SIZE
    assert (mask[-1] == LABEL_TORSO).mean() > 0.5  # shoulders at the bottom
    assert gt["audio"]["source"] == "procedural" and gt["seed"] == 3


def test_ground_truth_poses_match_transforms(subject):
    out, _, gt = subject
    layout = read_transforms(out)
    yaws = [f["head"]["euler_deg"]["yaw"] for f in gt["frames"]]
    assert max(abs(y) for y in yaws) <= 12.0 + 1e-6
    for entry, f in zip(layout.frames, gt["frames"]):
        R = np.array(f["head"]["rotation"])
        t = np.array(f["head"]["translation"])
        assert np.allclose(entry.camera_to_world[:3, :3], R.T, atol=1e-6)
        assert np.allclose(entry.camera_to_world[:3, 3], -R.T @ t, atol=1e-6)
        assert entry.blink == pytest.approx(f["blink"], abs=1e-4)


# ---- the camera convention ---------------------------------------------------------------------------


def test_camera_convention_projects_landmarks_onto_their_labels(subject):
    out, _, gt = subject
    layout = read_transforms(out)
    yaws = np.array([f["head"]["euler_deg"]["yaw"] for f in gt["frames"]])
    picks = sorted({int(np.argmin(yaws)), int(np.argmax(yaws)), 0, len(yaws) // 2, len(yaws) - 1})
    poses = {tuple(np.round(layout.frames[i].camera_to_world[:3, 3], 3)) for i in picks}
    assert len(poses) >= 3, "the chosen frames must have different camera poses"
    for i in picks:
        entry = layout.frames[i]
        mask = _read_mask(out / entry.mask_path)
        opening = gt["frames"][i]["mouth_opening"]
        lm = H.head_landmarks(opening)
        u, v = _project(entry.camera_to_world, layout, lm["mouth_center"])
        assert mask[int(v), int(u)] in (LABEL_LIPS, LABEL_MOUTH_INTERIOR), (i, u, v)
        # image orientation: the subject's left eye (+x) is on the image right, eyes above the mouth
        ul, vl = _project(entry.camera_to_world, layout, lm["left_eye"])
        ur, vr = _project(entry.camera_to_world, layout, lm["right_eye"])
        assert ul - ur > 0.5 * layout.fl_x * 0.6 / 6.5 and vl < v - 3 and vr < v - 3
        for uu, vv in ((ul, vl), (ur, vr)):
            assert mask[int(vv), int(uu)] == LABEL_HEAD
        # the hit is local: a few pixels above the mouth centre is face, not mouth
        assert mask[int(v) - 6, int(u)] == LABEL_HEAD


def test_renderer_hits_the_projected_eye_and_nose():
    """Rendered primitive ids at projected landmarks, for several head poses (renderer level)."""
    from gstalker_ns.synth.motion import build_motion, camera_to_world

    K = H.Intrinsics.for_size(160)
    r = H.HeadRenderer(H.Appearance.from_seed(0), K, 1, "cpu")
    m = build_motion(11, 200, 25.0)
    for i in (0, 40, 90, 150, 199):
        st = H.FrameState(m.head_R[i], m.head_t[i], m.neck_R[i], m.neck_t[i], m.torso_R[i], m.torso_t[i], 0.0, 0.0)
        res = r.render(st, return_ids=True)
        c2w = camera_to_world(m.head_R[i], m.head_t[i])
        lay = type("L", (), {"fl_x": K.fx, "fl_y": K.fy, "cx": K.cx, "cy": K.cy})
        lm = H.head_landmarks(0.0)
        for name, prim in (("left_eye", "eye_l"), ("right_eye", "eye_r"), ("nose_tip", "nose_tip")):
            u, v = _project(c2w, lay, lm[name])
            assert res.ids[int(v), int(u)] == H.primitive_id(prim), (i, name)


# ---- mouth and blink ------------------------------------------------------------------------------------


def test_mouth_interior_area_and_measure_follow_the_opening(subject):
    out, _, gt = subject
    layout = read_transforms(out)
    opening = np.array([f["mouth_opening"] for f in gt["frames"]])
    assert opening.max() > 0.6 and opening.min() < 0.05, "a 2 s clip should both close and open the mouth"
    areas, measures = [], []
    for entry in layout.frames:
        mask = _read_mask(out / entry.mask_path)
        img = _read_rgb(out / entry.file_path)
        areas.append(int((mask == LABEL_MOUTH_INTERIOR).sum()))
        measures.append(mouth_opening_measure(img, mouth_region(mask, 2)))
    areas = np.array(areas)
    measures = np.array(measures)
    assert areas[opening > 0.6].min() > areas[opening < 0.05].max()
    assert np.corrcoef(opening, areas)[0, 1] > 0.9
    assert np.corrcoef(opening, measures)[0, 1] > 0.9
    assert measures[opening > 0.6].min() > measures[opening < 0.05].max()


def test_mouth_measure_basics():
    labels = np.zeros((20, 20), np.uint8)
    labels[8:12, 5:15] = LABEL_LIPS
    region = mouth_region(labels, 1)
    assert region.sum() > (labels == LABEL_LIPS).sum()
    img = np.full((20, 20, 3), 200, np.uint8)
    assert mouth_opening_measure(img, region) == 0.0
    img[9:11, 6:14] = 10
    assert mouth_opening_measure(img, region) > 0.1
    assert mouth_opening_measure(img.astype(np.float32) / 255.0, region) == pytest.approx(mouth_opening_measure(img, region))
    assert mouth_opening_measure(img, np.zeros((20, 20), bool)) == 0.0


def test_blink_hides_the_eye_whites():
    K = H.Intrinsics.for_size(128)
    r = H.HeadRenderer(H.Appearance.from_seed(1), K, 2, "cpu")
    eyes = (H.primitive_id("eye_l"), H.primitive_id("eye_r"))
    counts = {}
    for blink in (0.0, 0.3, 1.0):
        res = r.render(H.rest_state(0.0, blink), return_ids=True)
        counts[blink] = int(np.isin(res.ids, eyes).sum())
    assert counts[0.0] > 10
    assert 0 < counts[0.3] < counts[0.0]
    assert counts[1.0] == 0
    # and in the image: bright, unsaturated (white) pixels around the eyes disappear
    def whites(img):
        f = img.astype(float)
        return int(((f.min(-1) > 150) & (f.max(-1) - f.min(-1) < 40))[35:65, 40:90].sum())

    assert whites(r.render(H.rest_state(0.0, 0.0)).image) > 4
    assert whites(r.render(H.rest_state(0.0, 1.0)).image) == 0


# ---- determinism -----------------------------------------------------------------------------------------


def _quick(out: Path, seed: int):
    generate(out, duration=1.0, size=64, seed=seed, audio_source="procedural", device="cpu", video=False, progress=False)
    frames = [p.read_bytes() for p in sorted((out / "frames").glob("*.jpg"))]
    masks = [p.read_bytes() for p in sorted((out / "masks").glob("*.png"))]
    return frames, masks, (out / "audio.wav").read_bytes()


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = _quick(tmp_path / "a", 5)
    b = _quick(tmp_path / "b", 5)
    c = _quick(tmp_path / "c", 6)
    assert len(a[0]) == 25
    assert a == b
    assert a[0] != c[0] and a[2] != c[2]
    assert not (tmp_path / "a" / "talk.mp4").exists()


# ---- talk.mp4 ---------------------------------------------------------------------------------------------


def test_talk_mp4_has_video_and_audio(subject):
    av = pytest.importorskip("av")
    out, summary, _ = subject
    with av.open(str(out / "talk.mp4")) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        vs, aus = container.streams.video[0], container.streams.audio[0]
        assert vs.codec_context.name == "h264" and aus.codec_context.name == "aac"
        assert vs.codec_context.pix_fmt == "yuv420p"
        assert aus.rate == 16000
        v_dur = float(vs.duration * vs.time_base)
        a_dur = float(aus.duration * aus.time_base)
        n = sum(1 for _ in container.decode(video=0))
    assert n == summary.num_frames
    assert abs(v_dur - a_dur) <= 1.0 / 25.0 + 1e-6
    assert abs(v_dur - DURATION) <= 1.0 / 25.0 + 1e-6


def test_write_mp4_fallback_to_imageio_ffmpeg(tmp_path, monkeypatch):
    av = pytest.importorskip("av")
    pytest.importorskip("imageio_ffmpeg")
    from gstalker_ns.media import video

    monkeypatch.setattr(video, "_have_pyav", lambda: False)
    assert video.video_backend() == "imageio-ffmpeg"
    frames = (np.full((33, 47, 3), 10 * i, np.uint8) for i in range(10))  # odd sizes get padded
    audio = 0.2 * np.sin(np.arange(6400) * 0.05)
    path = video.write_mp4(tmp_path / "x.mp4", frames, 25.0, audio=audio, sample_rate=16000)
    assert path.is_file() and not list(tmp_path.glob(".*tmp*"))
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        assert sum(1 for _ in container.decode(video=0)) == 10
    info = video.probe_mp4(path)  # the GPU machine's writer: streams end together as with PyAV
    assert info["video"]["packets"] == 10 and info["audio"]["codec"] == "aac"
    assert abs(info["audio"]["end"] - info["video"]["end"]) <= 1 / 25.0 and abs(info["video"]["end"] - 0.4) < 1e-6
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file, not mkstemp's private mode


# ---- speech ---------------------------------------------------------------------------------------------


def test_procedural_speech_and_mouth_track():
    a = synthesize_speech(1.5, 2, "procedural")
    b = synthesize_speech(1.5, 2, "procedural")
    assert a.wave.shape == (24000,) and a.wave.dtype == np.float32
    assert np.array_equal(a.wave, b.wave)
    assert 0.5 < np.abs(a.wave).max() <= 1.0
    o = mouth_opening_from_audio(a.wave, 16000, 38, 25.0)
    assert o.shape == (38,) and o.min() >= 0 and o.max() <= 1 and o.max() > 0.5
    assert np.all(mouth_opening_from_audio(np.zeros(16000, np.float32), 16000, 25, 25.0) == 0)


@needs_espeak("it synthesises speech with espeak-ng")
def test_espeak_speech():
    s = synthesize_speech(2.0, 1, "espeak")
    assert s.source == "espeak" and s.text and s.wave.shape == (32000,)
    assert np.sqrt(np.mean(s.wave**2)) > 0.02


# ---- CLI ------------------------------------------------------------------------------------------------------


def test_cli_refuses_non_empty_out_and_bad_options(tmp_path, capsys):
    from gstalker_ns.synth.cli import main

    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main([str(out), "--duration", "1", "--size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--force" in err
    assert (out / "notes.txt").read_text() == "keep me"
    for bad in (["--size", "abc"], ["--duration", "-1"], ["--audio-source", "nope"], ["--supersample", "0"]):
        with pytest.raises(SystemExit) as exc:
            main([str(tmp_path / "new")] + bad)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--audio-source" in capsys.readouterr().out
    with pytest.raises(SynthError):
        generate(tmp_path / "x", duration=0.001, size=32)


def test_cli_force_writes_and_keeps_unrelated_files(tmp_path, capsys):
    from gstalker_ns.synth.cli import main

    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc = main([str(out), "--duration", "0.4", "--size", "32", "--force", "--no-video", "--quiet", "--audio-source", "procedural"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "10 frames" in text and "procedural" in text
    assert (out / "notes.txt").read_text() == "keep me"
    check_files(read_transforms(out))
