"""gstalker-eval's metric definitions (gstalker_ns.evaluation.metrics) against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gstalker_ns.data.layout import LABEL_HEAD, LABEL_LIPS, LABEL_TORSO
from gstalker_ns.evaluation import metrics as M
from gstalker_ns.evaluation.report import format_table, worst_and_best

FPS = 25.0
SR = 16000


def test_psnr_and_ssim_known_values():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 250, size=(32, 32, 3), dtype=np.uint8)
    assert M.psnr(image, image) == pytest.approx(120.0)  # MSE floored at 1e-12
    assert M.psnr(image + 1, image) == pytest.approx(20 * math.log10(255.0), abs=1e-9)  # one level everywhere
    assert M.psnr(image.astype(np.float32) / 255, image) == pytest.approx(120.0)
    assert M.ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    assert M.ssim(image, 255 - image) < 0.2
    assert math.isnan(M.ssim(image[:8, :8], image[:8, :8]))  # below the 11-pixel window
    with pytest.raises(ValueError, match="differ"):
        M.psnr(image, image[:16])


def test_lpips_is_unavailable_without_local_weights(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    lpips = M.Lpips()
    assert not lpips.available and "never downloaded" in lpips.reason
    assert math.isnan(lpips(np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 3), np.uint8)))


def test_lip_landmarks_are_mediapipes_lip_set():
    pytest.importorskip("mediapipe")
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_LIPS

    assert set(M.LIP_LANDMARKS) == {i for edge in FACEMESH_LIPS for i in edge}
    assert len(M.LIP_LANDMARKS) == 40


def _face_points(n: int, rng) -> np.ndarray:
    return (rng.normal(size=(n, 478, 2)) * 20 + 100).astype(np.float32)


def test_lmd_zero_for_identical_and_translated_landmarks():
    rng = np.random.default_rng(1)
    gt = _face_points(4, rng)
    assert np.allclose(M.mouth_landmark_distance(gt, gt, 512), 0.0)
    moved = gt + np.array([7.0, -3.0], np.float32)  # a head translation does not count
    assert np.allclose(M.mouth_landmark_distance(gt, moved, 512), 0.0, atol=1e-4)


def test_lmd_equals_a_planted_shift_in_pixels_at_512():
    rng = np.random.default_rng(2)
    gt = _face_points(3, rng)
    render = gt.copy()
    lower = list(M.LIP_LANDMARKS[:10])  # 10 of the 40 lip points move down by d pixels
    d = 4.0
    render[:, lower, 1] += d
    # after mean-centring, the 10 moved points are off by d(1 - 10/40), the 30 others by d * 10/40
    expected = (10 * d * 0.75 + 30 * d * 0.25) / 40
    assert np.allclose(M.mouth_landmark_distance(gt, render, 512), expected, atol=1e-4)
    # the same landmarks in a 256-pixel frame are twice as far at 512
    assert np.allclose(M.mouth_landmark_distance(gt, render, 256), 2 * expected, atol=1e-4)
    # points outside the lip set do not count
    other = gt.copy()
    other[:, 1, :] += 50.0  # nose tip
    assert np.allclose(M.mouth_landmark_distance(gt, other, 512), 0.0)
    missing = gt.copy()
    missing[1] = np.nan
    assert np.isnan(M.mouth_landmark_distance(gt, missing, 512)[1])


def test_face_crop_from_landmarks_is_one_side_centred_per_frame_and_inside():
    points = np.full((3, 478, 2), np.nan, np.float32)
    # frame 0: face box x 40..80, y 30..90 (extent 60); frame 2: the same box 10 px to the right
    for k, dx in ((0, 0.0), (2, 10.0)):
        points[k, :468, 0] = np.linspace(40, 80, 468) + dx
        points[k, :468, 1] = np.linspace(30, 90, 468)
        points[k, 468:, :] = 500.0  # iris points are not part of the box
    crop = M.face_crop_from_landmarks(points, width=128, height=128)
    assert crop.source == "landmarks" and crop.margin == 1.2
    assert crop.side == 72  # 1.2 x 60
    assert crop.box(0) == (24, 24, 96, 96)  # centred on (60, 60)
    assert crop.box(2) == (34, 24, 106, 96)
    assert crop.box(1) == crop.box(0)  # no face: the nearest frame's place (ties: the earlier)
    assert crop.own_box == [True, False, True]
    image = np.zeros((128, 128, 3), np.uint8)
    assert crop.crop(image, 2).shape == (72, 72, 3)
    # near the border the box moves inside instead of shrinking
    edge = points.copy()
    edge[:, :, 0] -= 35.0
    crop = M.face_crop_from_landmarks(edge, width=128, height=128)
    assert crop.box(0) == (0, 24, 72, 96)
    assert M.face_crop_from_landmarks(np.full((2, 478, 2), np.nan), 64, 64) is None


def test_face_crop_from_labels():
    labels = np.zeros((64, 64), np.uint8)
    labels[50:, :] = LABEL_TORSO
    labels[10:40, 20:44] = LABEL_HEAD  # 24 wide, 30 high
    labels[30:33, 28:36] = LABEL_LIPS
    crop = M.face_crop_from_labels([labels, None], 64, 64)
    assert crop.source == "labels" and crop.side == 30
    assert crop.box(0) == (17, 10, 47, 40)
    assert crop.box(1) == crop.box(0) and crop.own_box == [True, False]
    assert M.face_crop_from_labels([None, np.zeros((64, 64), np.uint8)], 64, 64) is None
    assert crop.as_dict()["boxes_xyxy"][0] == [17, 10, 47, 40]


def _speech_like(seconds: float, seed: int):
    """Noise under a slowly varying syllable envelope, and that envelope as a function of time."""
    rng = np.random.default_rng(seed)
    knots_t = np.arange(0, seconds + 0.2, 0.12)
    knots = np.clip(rng.normal(0.5, 0.45, size=knots_t.size), 0.0, None)
    t = np.arange(int(seconds * SR)) / SR
    envelope = lambda x: np.interp(x, knots_t, knots)  # noqa: E731
    wave = (rng.normal(size=t.size) * envelope(t) * 0.2).astype(np.float32)
    return wave, envelope


@pytest.mark.parametrize("lag_ms", [0.0, 120.0, -80.0, 57.0])
def test_av_offset_recovers_a_planted_lag(lag_ms):
    wave, envelope = _speech_like(10.0, seed=3)
    frames = np.arange(int(1.0 * FPS), int(9.0 * FPS))
    times = frames / FPS
    # the mouth opens with the sound lag_ms later (video lagging audio: positive)
    mouth = envelope(times - lag_ms / 1000.0 + 0.5 / FPS)
    result = M.av_offset(mouth, times, wave, SR, FPS)
    assert result is not None and result.frames == frames.size
    assert result.offset_ms == pytest.approx(lag_ms, abs=6.0)  # finer than a frame (40 ms)
    assert result.correlation > 0.9


def test_av_offset_uses_the_wave_start_and_needs_enough_frames():
    wave, envelope = _speech_like(6.0, seed=4)
    times = np.arange(50, 125) / FPS
    mouth = envelope(times - 0.1 + 0.5 / FPS)
    cut = int(1.5 * SR)  # the stored audio starts 1.5 s into the clip
    shifted = M.av_offset(mouth, times, wave[cut:], SR, FPS, wave_start_s=cut / SR)
    assert shifted.offset_ms == pytest.approx(100.0, abs=6.0)
    assert M.av_offset(mouth[: M.MIN_AV_FRAMES - 1], times[: M.MIN_AV_FRAMES - 1], wave, SR, FPS) is None
    assert M.av_offset(np.ones_like(mouth), times, wave, SR, FPS) is None  # a still mouth
    gappy = mouth.copy()
    gappy[::3] = np.nan  # frames without a face are left out, not zero
    assert M.av_offset(gappy, times, wave, SR, FPS).offset_ms == pytest.approx(100.0, abs=6.0)


def test_audio_energy_is_the_rms_of_the_frame_window():
    wave = np.zeros(SR, np.float32)
    wave[int(0.4 * SR) : int(0.44 * SR)] = 0.5  # loud during frame 10 only
    energy = M.audio_energy(wave, SR, np.arange(25) / FPS, FPS)
    assert energy[10] == pytest.approx(0.5) and np.count_nonzero(energy) == 1
    later = M.audio_energy(wave, SR, np.arange(25) / FPS, FPS, lag_s=-0.08)  # look 2 frames ahead
    assert later[8] == pytest.approx(0.5)


def test_pearson_and_grid_picks():
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))
    worst, best = worst_and_best([30.0, 20.0, float("nan"), 40.0, 25.0], count=2)
    assert worst == [1, 4] and best == [3, 0]
    assert worst_and_best([1.0, 2.0], count=3) == ([0, 1], [])


def test_table_shows_unavailable_as_na():
    payload = {
        "methods": {
            "gstalker": {"summary": {"psnr": 31.234, "lpips": None, "av_offset_ms": 40.0}},
            "splatfacto": {"summary": {"psnr": 25.0, "lpips": None, "av_offset_ms": None}},
        },
        "ground_truth": {"summary": {"av_offset_ms": 0.0}},
    }
    table = format_table(payload)
    assert "31.23" in table and "25.00" in table
    line = next(row for row in table.splitlines() if row.startswith("LPIPS full"))
    assert line.split()[-2:] == ["n/a", "n/a"]
    av = next(row for row in table.splitlines() if row.startswith("AV offset"))
    assert av.split()[-3:] == ["40", "n/a", "0"]
