"""Audio input/output and per-frame audio features."""

from __future__ import annotations

import fractions
import json
import subprocess
import sys
import wave as stdlib_wave
from pathlib import Path

import numpy as np
import pytest

from gstalker_ns.audio.features import (
    AudioFeatureSpec,
    encoder_hidden_states,
    extract_features,
    load_feature_spec_from_json,
    mel_filterbank,
    mel_power,
    window_features,
)
from gstalker_ns.audio.io import AudioError, load_audio, read_wav, write_wav

SR = 16000


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1.0 / rate)[np.argmax(spectrum)])


def encode_with_pyav(path: Path, codec: str, mono: np.ndarray, rate: int) -> None:
    """Write a mono signal with PyAV (mp3/m4a), the way a user's file would be made."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        step = 1152
        for i in range(0, mono.size, step):
            frame = av.AudioFrame.from_ndarray(mono[None, i : i + step].copy(), format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = i
            frame.time_base = fractions.Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def assert_audio_error(path: Path, match: str) -> str:
    with pytest.raises(AudioError) as info:
        load_audio(path)
    msg = str(info.value)
    assert path.name in msg and "\n" not in msg and match in msg, msg
    return msg


# ------------------------------------------------------------------------------------- io


def test_load_wav_44k_stereo_to_16k_mono(tmp_path):
    import soundfile as sf

    rate, seconds = 44100, 1.5
    left, right = sine(440, seconds, rate, 0.5), sine(440, seconds, rate, 0.3)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], 1), rate, subtype="PCM_16")

    y = load_audio(tmp_path / "stereo.wav", sample_rate=SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size - seconds * SR) <= 1
    assert abs(peak_hz(y, SR) - 440) < 2
    mid = y[2000:-2000]
    assert np.max(np.abs(mid)) == pytest.approx(0.4, abs=0.01)  # channel mean, not sum or left
    assert np.allclose(mid, sine(440, seconds, SR, 0.4)[2000:-2000], atol=2e-3)


@pytest.mark.parametrize("suffix,codec", [("mp3", "libmp3lame"), ("m4a", "aac")])
def test_load_compressed_audio_via_pyav(tmp_path, suffix, codec):
    rate, seconds = 44100, 1.5
    path = tmp_path / f"speech.{suffix}"
    encode_with_pyav(path, codec, sine(440, seconds, rate, 0.5), rate)

    y = load_audio(path, sample_rate=SR)
    assert y.dtype == np.float32 and np.all(np.abs(y) <= 1)
    assert abs(y.size - seconds * SR) < 0.02 * SR  # codec padding/priming is at most a few ms
    assert abs(peak_hz(y, SR) - 440) < 2
    ref = sine(440, seconds, SR, 0.5)
    n = min(ref.size, y.size) - 2000
    assert np.max(np.abs(y[2000:n] - ref[2000:n])) < 0.05  # decoded in place, no offset


def test_missing_file_error(tmp_path):
    assert_audio_error(tmp_path / "nothere.wav", "not found")


def test_corrupt_files_error(tmp_path):
    (tmp_path / "speech.xyz").write_text("definitely not audio")
    assert_audio_error(tmp_path / "speech.xyz", "not a readable audio file")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
    assert_audio_error(tmp_path / "broken.wav", "not a readable audio file")
    (tmp_path / "broken.mp3").write_bytes(bytes(range(256)) * 8)
    assert_audio_error(tmp_path / "broken.mp3", "convert it to wav")


def test_video_without_audio_stream_error(tmp_path):
    import av

    path = tmp_path / "silent_video.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    assert_audio_error(path, "no audio stream")


def test_empty_files_error(tmp_path):
    import soundfile as sf

    (tmp_path / "zero_bytes.wav").write_bytes(b"")
    assert_audio_error(tmp_path / "zero_bytes.wav", "empty")
    sf.write(tmp_path / "no_samples.wav", np.zeros((0, 1), np.float32), SR)
    assert_audio_error(tmp_path / "no_samples.wav", "no samples")


def test_write_read_wav_round_trip(tmp_path):
    x = sine(300, 0.5, SR, 0.8)
    x[:10] = [2.0, -3.0, 1.0, -1.0, 0.0, 0.5, -0.5, 1e-5, 0.999, -0.999]
    path = tmp_path / "sub" / "out.wav"
    write_wav(path, x, SR)
    assert [p.name for p in path.parent.iterdir()] == ["out.wav"]  # temp file replaced, none left
    with stdlib_wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, SR, x.size)

    y, rate = read_wav(path)
    assert rate == SR and y.dtype == np.float32 and y.size == x.size
    assert y[0] == pytest.approx(1.0, abs=1e-4) and y[1] == pytest.approx(-1.0, abs=1e-4)  # clipped
    assert np.max(np.abs(y[2:] - x[2:])) <= 1.0 / 32768 + 1e-7  # +1.0 saturates at 32767/32768
    assert np.max(np.abs(y[4:] - x[4:])) <= 0.5 / 32768 + 1e-7  # rounding only
    assert np.allclose(load_audio(path, SR), y, atol=1e-6)  # same file through soundfile

    write_wav(path, np.zeros(5, np.float32), 8000)  # overwrite in place
    assert read_wav(path)[1] == 8000


# ------------------------------------------------------------------------------- log-mel


def test_logmel_matches_librosa():
    import librosa

    rng = np.random.default_rng(0)
    y = sine(440, 1.37, SR, 0.3) + sine(2500, 1.37, SR, 0.1) + 0.02 * rng.standard_normal(int(1.37 * SR))
    y = y.astype(np.float32)
    ours = mel_power(y, AudioFeatureSpec())
    ref = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=512, win_length=400, hop_length=160, n_mels=80, fmin=55, fmax=7600, power=2.0
    )
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-7 * ref.max())
    fb = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=55, fmax=7600, htk=False, norm="slaney")
    np.testing.assert_allclose(mel_filterbank(16000, 512, 80, 55.0, 7600.0), fb, rtol=1e-5, atol=1e-9)


def test_runs_without_librosa_soundfile_soxr(tmp_path):
    """The GPU machine has none of these: wav input and log-mel must still work there."""
    import soundfile as sf

    sf.write(tmp_path / "in.wav", np.stack([sine(440, 1.0, 44100)] * 2, 1), 44100, subtype="PCM_16")
    code = (
        "import sys, numpy as np\n"
        "sys.modules.update(librosa=None, soundfile=None, soxr=None)  # make their import fail\n"
        "from gstalker_ns.audio.io import load_audio\n"
        "from gstalker_ns.audio.features import AudioFeatureSpec, extract_features\n"
        f"y = load_audio({str(tmp_path / 'in.wav')!r}, 16000)\n"
        "assert abs(y.size - 16000) <= 1, y.size\n"
        "t = extract_features(y, AudioFeatureSpec())\n"
        "assert t.shape == (25, 16, 80), t.shape\n"
        "assert t.max() > 0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("seconds", [0.05, 1.0, 2.37, 3.02])
def test_table_shape(seconds):
    spec = AudioFeatureSpec()
    table = extract_features(sine(200, seconds, SR), spec)
    assert table.dtype == np.float32
    assert table.shape == (int(round(seconds * spec.fps)), spec.window, spec.dim)
    assert extract_features(sine(200, seconds, SR), spec, num_frames=7).shape == (7, 16, 80)


def test_window_of_frame_k_is_centred_at_k_over_fps():
    spec = AudioFeatureSpec(lookahead=2)
    y = np.zeros(2 * SR, np.float32)
    y[SR] = 0.9  # click at t = 1.0 s
    table = extract_features(y, spec)
    energy = table.mean(axis=2)  # [frames, window]
    frame = int(round(1.0 * spec.fps))  # 25
    # Centre feature of frame k is round(k/fps*rate) + lookahead, stored at index window//2;
    # the click is `lookahead` features before the centre.
    assert int(np.argmax(energy[frame])) == spec.window // 2 - spec.lookahead
    step = int(spec.feature_rate / spec.fps)  # 4 features per video frame
    assert int(np.argmax(energy[frame - 1])) == spec.window // 2 - spec.lookahead + step
    assert int(np.argmax(energy[frame + 1])) == spec.window // 2 - spec.lookahead - step
    # A frame whose window does not reach the click sees silence only.
    assert energy[frame - 5].max() < energy[frame].max() - 0.5


def test_window_edges_are_replicated():
    feats = np.arange(10, dtype=np.float32)[:, None]
    table = window_features(feats, num_frames=3, fps=1.0, feature_rate=4.0, window=4, lookahead=1)
    assert table[:, :, 0].tolist() == [[0, 0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 9]]


def test_features_depend_on_audio_and_are_deterministic():
    spec = AudioFeatureSpec()
    a, b = sine(220, 1.0, SR), sine(1800, 1.0, SR)
    ta, tb = extract_features(a, spec), extract_features(b, spec)
    assert np.array_equal(ta, extract_features(a, spec))
    assert np.abs(ta - tb).mean() > 0.1


def test_logmel_normalisation_is_fixed_and_bounded():
    spec = AudioFeatureSpec()
    quiet = sine(300, 1.0, SR, 0.05)
    table = extract_features(quiet, spec)
    # Appending loud audio must not change the earlier frames (no per-clip normalisation).
    longer = extract_features(np.concatenate([quiet, sine(300, 1.0, SR, 1.0)]), spec)
    np.testing.assert_array_equal(longer[:20], table[:20])
    silence = extract_features(np.zeros(SR, np.float32), spec)
    assert np.all(silence == -1.0)
    loud = extract_features(sine(300, 1.0, SR, 1.0), spec)
    assert 0.8 < loud.max() < 1.2 and loud.min() >= -1.0


def test_wave_sample_rate_resamples():
    spec = AudioFeatureSpec()
    at16 = extract_features(sine(440, 1.0, SR), spec)
    at44 = extract_features(sine(440, 1.0, 44100), spec, wave_sample_rate=44100)
    assert at44.shape == at16.shape
    assert np.abs(at44[2:-2] - at16[2:-2]).max() < 0.05


def test_bad_wave_errors():
    spec = AudioFeatureSpec()
    with pytest.raises(AudioError, match="empty"):
        extract_features(np.zeros(0, np.float32), spec)
    with pytest.raises(AudioError, match="mono"):
        extract_features(np.zeros((100, 2), np.float32), spec)
    with pytest.raises(AudioError, match="NaN"):
        extract_features(np.full(100, np.nan, np.float32), spec)


# ----------------------------------------------------------------------------------- spec


def test_spec_json_round_trip():
    spec = AudioFeatureSpec(fps=30.0, window=8, lookahead=1, n_mels=64, fmax=8000.0)
    data = json.loads(json.dumps(spec.to_json()))
    assert data["version"] == 1 and data["dim"] == 64 and data["feature_rate"] == 100.0
    assert AudioFeatureSpec.from_json(data) == spec
    assert load_feature_spec_from_json(data) == spec
    assert AudioFeatureSpec.from_json({}) == AudioFeatureSpec()


def test_spec_json_errors():
    with pytest.raises(AudioError, match="unknown key.*'n_mel'"):
        AudioFeatureSpec.from_json({"n_mel": 80})
    with pytest.raises(AudioError, match="version"):
        AudioFeatureSpec.from_json({"version": 2})
    with pytest.raises(AudioError, match="kind"):
        AudioFeatureSpec.from_json({"kind": "deepspeech"})
    with pytest.raises(AudioError, match="dim"):
        AudioFeatureSpec.from_json({**AudioFeatureSpec().to_json(), "dim": 81})


# ------------------------------------------------------------------------------- encoders


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory) -> Path:
    """A random 2-layer HuBERT with HuBERT's 320-sample stride (50 Hz), saved like a real one."""
    import torch

    from gstalker_ns._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 3, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    path = tmp_path_factory.mktemp("tiny_hubert")
    HubertModel(cfg).save_pretrained(path)
    return path


def _normalised(wave: np.ndarray) -> np.ndarray:
    x = wave.astype(np.float64)
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)


def test_tiny_hubert_from_local_dir(tiny_hubert):
    import torch
    from transformers import HubertModel

    spec = AudioFeatureSpec(kind="hubert", model_path=str(tiny_hubert), window=8, lookahead=1)
    assert spec.dim == 32 and spec.feature_rate == 50.0
    rng = np.random.default_rng(1)
    wave = (0.3 * rng.standard_normal(int(1.3 * SR))).astype(np.float32)
    table = extract_features(wave, spec)
    assert table.shape == (int(round(1.3 * 25)), 8, 32) and table.dtype == np.float32

    # Same numbers as running the model directly and windowing its 50 Hz hidden states.
    model = HubertModel.from_pretrained(tiny_hubert, local_files_only=True).eval()
    with torch.no_grad():
        hidden = model(torch.from_numpy(_normalised(wave))[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(table, window_features(hidden, table.shape[0], 25.0, 50.0, 8, 1), atol=1e-4)
    assert not np.allclose(table, extract_features(wave[::-1].copy(), spec))  # depends on the audio

    layer0 = extract_features(wave, AudioFeatureSpec(kind="hubert", model_path=str(tiny_hubert), layer=0))
    assert layer0.shape == (table.shape[0], 16, 32) and not np.allclose(layer0[:, :8], table)

    data = json.loads(json.dumps(spec.to_json()))
    assert data["dim"] == 32 and data["feature_rate"] == 50.0
    assert AudioFeatureSpec.from_json(data) == spec


def test_encoder_chunks_keep_frame_alignment(tiny_hubert):
    spec = AudioFeatureSpec(kind="hubert", model_path=str(tiny_hubert))
    wave = (0.3 * np.random.default_rng(2).standard_normal(int(2.5 * SR))).astype(np.float32)
    whole, rate = encoder_hidden_states(wave, spec)
    chunked, rate2 = encoder_hidden_states(wave, spec, chunk_seconds=0.5, context_seconds=0.2)
    assert rate == rate2 == 50.0
    assert whole.shape == chunked.shape == (125, 32)  # (40000 - 100) // 320 + 1: receptive field 100
    # Chunk borders only perturb the attention context, not which frame is which.
    corr = np.corrcoef(whole.ravel(), chunked.ravel())[0, 1]
    assert corr > 0.9


def test_encoder_rate_comes_from_conv_strides(tmp_path):
    import torch

    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(cfg).save_pretrained(tmp_path)
    spec = AudioFeatureSpec(kind="wav2vec2", model_path=str(tmp_path), window=4, lookahead=0)
    assert spec.feature_rate == 800.0 and spec.dim == 16  # 16000 / (5*4), not an assumed 50 Hz
    table = extract_features(sine(300, 0.2, SR), spec)
    assert table.shape == (5, 4, 16)
    with pytest.raises(AudioError, match="not hubert"):
        extract_features(sine(300, 0.2, SR), AudioFeatureSpec(kind="hubert", model_path=str(tmp_path)))


def test_missing_encoder_errors(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(AudioError) as info:
        extract_features(sine(300, 0.5, SR), AudioFeatureSpec(kind="hubert", model_path=str(missing)))
    msg = str(info.value)
    assert "HuBERT encoder not found locally" in msg and str(missing) in msg and "logmel" in msg
    with pytest.raises(AudioError, match="no model_path"):
        AudioFeatureSpec(kind="wav2vec2").dim
    with pytest.raises(AudioError, match="not in the Hugging Face cache"):
        AudioFeatureSpec(kind="hubert", model_path="nobody/not-a-real-model-xyz").dim


def test_recorded_encoder_spec_usable_without_the_encoder(tmp_path):
    data = {
        "version": 1,
        "kind": "hubert",
        "model_path": str(tmp_path / "gone"),
        "dim": 1024,
        "feature_rate": 50.0,
    }
    spec = AudioFeatureSpec.from_json(data)
    assert spec.dim == 1024 and spec.feature_rate == 50.0  # model can be rebuilt from a checkpoint
    assert spec.to_json()["dim"] == 1024
    with pytest.raises(AudioError, match="not found locally"):
        extract_features(sine(300, 0.5, SR), spec)
