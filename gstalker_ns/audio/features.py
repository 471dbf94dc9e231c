"""Per-video-frame audio feature windows: the model's driving signal.

    spec = AudioFeatureSpec()                          # default: offline 16 kHz log-mel
    table = extract_features(wave, spec, num_frames)   # float32 [num_frames, spec.window, spec.dim]
    spec.to_json() -> dict ; AudioFeatureSpec.from_json(d) -> spec

The spec is recorded in the dataset (transforms.json key `audio_extractor`) and in checkpoints,
so that new audio is rendered with exactly the extractor the model was trained on.

Alignment: video frame k is at time k/fps. Its window is centred on feature index
`c = round(k / fps * feature_rate) + lookahead` and covers indices
`c - window//2 ... c - window//2 + window - 1`, clamped to the available features (the edge
feature is repeated). Feature index j is at time j / feature_rate: log-mel frames are STFT
frames centred on sample j*hop_length; encoder frames start at sample j*stride.

Log-mel ("logmel") is plain numpy (no librosa at run time, the GPU machine lacks it) and matches
`librosa.feature.melspectrogram(center=True, pad_mode="constant", power=2, htk=False,
norm="slaney")` before the log. The log compression is FIXED, independent of the clip, so the
same sound always maps to the same numbers:

    logmel = (log10(max(mel_power, 1e-8)) + 3) / 5

1e-8 is about the noise floor of 16-bit audio (-80 dB), which maps to -1; a full-scale sine peaks
near +1.08, loud speech sits around 0..+1. Changing this formula requires bumping
`SPEC_VERSION`, since stored tables and checkpoints depend on it.

HuBERT / wav2vec2 ("hubert", "wav2vec2") are loaded with transformers from a local folder or
the Hugging Face cache only, never downloaded here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from gstalker_ns.audio.io import AudioError, _resample

SPEC_VERSION = 1
KINDS = ("logmel", "whisper", "hubert", "wav2vec2")
ENCODER_KINDS = ("hubert", "wav2vec2")  # transformers models from a local folder
KINDS_16K = ("whisper",) + ENCODER_KINDS

# Fixed log compression of the mel power (see module docstring).
LOG_FLOOR = 1e-8
LOG_OFFSET = 3.0
LOG_SCALE = 5.0

# Encoders run on chunks this long, each with this much extra context either side, so long
# recordings fit in memory; the context hides most of the chunk borders from the attention.
ENCODER_CHUNK_SECONDS = 20.0
ENCODER_CONTEXT_SECONDS = 1.0

_DEFAULT_MODELS = {"hubert": "facebook/hubert-large-ls960-ft", "wav2vec2": "facebook/wav2vec2-base-960h"}


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------


@dataclass
class AudioFeatureSpec:
    """Which audio features drive the model and how they are windowed per video frame."""

    kind: str = "logmel"
    sample_rate: int = 16000
    fps: float = 25.0
    window: int = 16
    lookahead: int = 2
    # log-mel settings
    n_mels: int = 80
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    fmin: float = 55.0
    fmax: float = 7600.0
    # encoder settings
    model_path: Optional[str] = None
    layer: Optional[int] = None
    append_logmel: bool = True
    """whisper only: append the log-mel bands (pooled to the encoder's 50 Hz) to the encoder states.
    They carry loudness, which the encoder normalises away; with them the mouth follows the
    energy of other speakers' speech better (benchmarks/RESULTS.md)."""
    # Encoder facts recorded in JSON (dim, feature_rate), so a checkpoint can be rebuilt on a
    # machine that lacks the encoder; not part of the constructor.
    _recorded: Dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Reject settings that could only fail later, with a message saying what to change."""
        if self.kind not in KINDS:
            raise AudioError(f"audio feature kind {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        for name in ("sample_rate", "window", "n_mels", "n_fft", "win_length", "hop_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise AudioError(f"audio feature spec: {name} must be a positive integer, got {value!r}")
        if isinstance(self.lookahead, bool) or not isinstance(self.lookahead, (int, np.integer)):
            raise AudioError(f"audio feature spec: lookahead must be an integer, got {self.lookahead!r}")
        if not isinstance(self.fps, (int, float)) or not self.fps > 0:
            raise AudioError(f"audio feature spec: fps must be positive, got {self.fps!r}")
        if self.kind == "logmel":
            if self.win_length > self.n_fft:
                raise AudioError(
                    f"audio feature spec: win_length {self.win_length} exceeds n_fft {self.n_fft}; lower win_length"
                )
            if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
                raise AudioError(
                    f"audio feature spec: need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, "
                    f"fmax={self.fmax}, sample_rate={self.sample_rate}"
                )
        if self.kind in KINDS_16K and self.sample_rate != 16000:
            raise AudioError(
                f"audio feature spec: {self.kind} encoders take 16 kHz audio, got sample_rate={self.sample_rate}; "
                "set sample_rate=16000"
            )
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, (int, np.integer))):
            raise AudioError(f"audio feature spec: layer must be an integer or None, got {self.layer!r}")

    # -- derived facts -------------------------------------------------------------------
    @property
    def feature_rate(self) -> float:
        """Feature frames per second: sample_rate/hop_length, or the encoder's real output rate."""
        if self.kind == "logmel":
            return self.sample_rate / self.hop_length
        if self.kind == "whisper":
            from gstalker_ns.audio.whisper import FEATURE_RATE

            return FEATURE_RATE
        if "feature_rate" in self._recorded and not _encoder_available(self):
            return float(self._recorded["feature_rate"])
        return self.sample_rate / _encoder_info(self).stride

    @property
    def dim(self) -> int:
        """Feature channels: n_mels, or the encoder's hidden_size."""
        if self.kind == "logmel":
            return int(self.n_mels)
        if self.kind == "whisper":
            if "dim" in self._recorded and not _encoder_available(self):
                return int(self._recorded["dim"])
            from gstalker_ns.audio.whisper import encoder_info

            return encoder_info(self.model_path)[0] + (int(self.n_mels) if self.append_logmel else 0)
        if "dim" in self._recorded and not _encoder_available(self):
            return int(self._recorded["dim"])
        return int(_encoder_info(self).hidden_size)

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        """Plain-JSON description (with `version` and `dim`) to store in datasets and checkpoints."""
        out: Dict[str, Any] = {"version": SPEC_VERSION}
        for f in dataclasses.fields(self):
            if f.init:
                value = getattr(self, f.name)
                out[f.name] = value.item() if isinstance(value, np.generic) else value
        out["dim"] = self.dim
        out["feature_rate"] = self.feature_rate
        json.dumps(out)  # fail here, not when the caller writes the file
        return out

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "AudioFeatureSpec":
        """Inverse of `to_json`; unknown keys or a newer version are refused with a clear error."""
        if not isinstance(d, dict):
            raise AudioError(f"audio extractor spec must be a JSON object, got {type(d).__name__}")
        data = dict(d)
        version = data.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise AudioError(
                f"audio extractor spec version {version!r} is not supported (this gstalker-ns reads "
                f"version {SPEC_VERSION}); re-extract the audio features with this version"
            )
        recorded = {k: data.pop(k) for k in ("dim", "feature_rate") if k in data}
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AudioError(
                f"audio extractor spec has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(sorted(known | {'version', 'dim', 'feature_rate'}))}"
            )
        spec = cls(**data)
        if spec.kind == "logmel":
            if "dim" in recorded and int(recorded["dim"]) != spec.dim:
                raise AudioError(
                    f"audio extractor spec: recorded dim {recorded['dim']} contradicts n_mels {spec.n_mels}; "
                    "the spec was edited by hand: restore it or re-extract the features"
                )
        else:
            spec._recorded = {k: float(v) for k, v in recorded.items()}
        return spec


def load_feature_spec_from_json(d: Dict[str, Any]) -> AudioFeatureSpec:
    """Alias of `AudioFeatureSpec.from_json` for callers that read transforms.json/checkpoints."""
    return AudioFeatureSpec.from_json(d)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def extract_features(
    wave: np.ndarray,
    spec: AudioFeatureSpec,
    num_frames: Optional[int] = None,
    progress: bool = False,
    *,
    wave_sample_rate: Optional[int] = None,
) -> np.ndarray:
    """One window of audio features per video frame -> float32 [num_frames, window, dim].

    `wave` is mono float audio at `wave_sample_rate` (default: `spec.sample_rate`); it is
    resampled when the rates differ. `num_frames` defaults to round(duration * fps); frames
    past the end of the audio see the last feature repeated.
    """
    wave = _check_wave(wave)
    if wave_sample_rate is not None and int(wave_sample_rate) != spec.sample_rate:
        if wave_sample_rate <= 0:
            raise AudioError(f"wave_sample_rate must be positive, got {wave_sample_rate}")
        wave = _resample(wave, int(wave_sample_rate), spec.sample_rate)
    if num_frames is None:
        num_frames = int(round(wave.size / spec.sample_rate * spec.fps))
    if num_frames < 0:
        raise AudioError(f"num_frames must be >= 0, got {num_frames}")

    if spec.kind == "logmel":
        feats = logmel(wave, spec)
        rate = spec.feature_rate
    elif spec.kind == "whisper":
        feats, rate = whisper_sequence(wave, spec)
    else:
        feats, rate = encoder_hidden_states(wave, spec, progress=progress)
    return window_features(feats, num_frames, spec.fps, rate, spec.window, spec.lookahead)


def default_feature_spec() -> AudioFeatureSpec:
    """What gstalker-process and gstalker-synth extract: Whisper tiny.en layer 3 + log-mel,
    100 ms windows centred 40 ms after the frame (chosen on validation slices of real clips)."""
    return AudioFeatureSpec(kind="whisper", window=5, lookahead=2, layer=3, hop_length=160, win_length=400)


def whisper_sequence(wave: np.ndarray, spec: AudioFeatureSpec) -> Tuple[np.ndarray, float]:
    """[frames, dim] at 50 per second: encoder states, then (append_logmel) the log-mel bands
    averaged over the two 10 ms frames that each 20 ms encoder frame covers."""
    from gstalker_ns.audio.whisper import FEATURE_RATE, HOP, whisper_features

    states = whisper_features(wave, spec.layer, spec.model_path)
    if not spec.append_logmel:
        return states, FEATURE_RATE
    if spec.hop_length != HOP:
        raise AudioError(f"audio feature spec: whisper with append_logmel needs hop_length={HOP}, got {spec.hop_length}")
    bands = logmel(wave, spec)
    total = states.shape[0]
    bands = bands[: 2 * total]
    if bands.shape[0] < 2 * total:
        bands = np.pad(bands, ((0, 2 * total - bands.shape[0]), (0, 0)), mode="edge")
    pooled = bands.reshape(total, 2, -1).mean(axis=1)
    return np.concatenate([states, pooled], axis=1).astype(np.float32), FEATURE_RATE


def _check_wave(wave: np.ndarray) -> np.ndarray:
    """Mono, finite, non-empty float32 audio or a clear error."""
    wave = np.asarray(wave)
    if wave.ndim == 2 and 1 in wave.shape:
        wave = wave.reshape(-1)
    if wave.ndim != 1:
        raise AudioError(
            f"audio must be mono [samples], got shape {tuple(wave.shape)}; load it with load_audio (which downmixes)"
        )
    if wave.size == 0:
        raise AudioError("audio is empty (0 samples); use a recording with sound")
    if not np.issubdtype(wave.dtype, np.floating):
        raise AudioError(f"audio must be float in [-1, 1], got dtype {wave.dtype}; load it with load_audio")
    wave = wave.astype(np.float32, copy=False)
    if not np.all(np.isfinite(wave)):
        raise AudioError("audio contains NaN or infinite samples; reload the file with load_audio")
    return wave


def window_features(
    feats: np.ndarray, num_frames: int, fps: float, feature_rate: float, window: int, lookahead: int
) -> np.ndarray:
    """Gather [num_frames, window, dim] windows; frame k is centred at k/fps (+ lookahead features)."""
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise AudioError(f"internal: expected [time, dim] features, got shape {tuple(feats.shape)}")
    k = np.arange(num_frames, dtype=np.float64)
    # Round half up (not numpy's half-to-even) so the mapping is monotone and predictable.
    centre = np.floor(k / fps * feature_rate + 0.5 + 1e-9).astype(np.int64) + int(lookahead)
    idx = centre[:, None] - window // 2 + np.arange(window, dtype=np.int64)[None, :]
    idx = np.clip(idx, 0, feats.shape[0] - 1)
    return np.ascontiguousarray(feats[idx], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Log-mel (numpy only)
# --------------------------------------------------------------------------------------------


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa htk=False): linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    mels = freq / f_sp
    log_part = min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, log_part, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Inverse of `_hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    freqs = f_sp * mels
    log_part = min_log_hz * np.exp(logstep * (mels - min_log_mel))
    return np.where(mels >= min_log_mel, log_part, freqs)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """[n_mels, n_fft//2+1] triangular filters, Slaney-normalised, as librosa.filters.mel builds them."""
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]  # equal area per filter
    weights.setflags(write=False)
    return weights


def _stft_window(n_fft: int, win_length: int) -> np.ndarray:
    """Periodic Hann of win_length, zero-padded to n_fft in the centre (librosa's pad_center)."""
    n = np.arange(win_length, dtype=np.float64)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    out = np.zeros(n_fft, dtype=np.float64)
    left = (n_fft - win_length) // 2
    out[left : left + win_length] = hann
    return out


def mel_power(wave: np.ndarray, spec: AudioFeatureSpec) -> np.ndarray:
    """Mel power spectrogram [n_mels, frames], equal to librosa's melspectrogram (power=2).

    STFT frames are centred on samples j*hop_length (zero padding of n_fft//2 at both ends,
    librosa 0.11's `pad_mode="constant"` default), so frame j is at time j*hop/sample_rate.
    """
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    n_fft, hop = spec.n_fft, spec.hop_length
    padded = np.pad(wave, (n_fft // 2, n_fft // 2), mode="constant")
    if padded.size < n_fft:
        padded = np.pad(padded, (0, n_fft - padded.size))
    n_frames = 1 + (padded.size - n_fft) // hop
    window = _stft_window(n_fft, spec.win_length)
    basis = mel_filterbank(spec.sample_rate, n_fft, spec.n_mels, float(spec.fmin), float(spec.fmax))
    frames_view = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    out = np.empty((spec.n_mels, n_frames), dtype=np.float64)
    block = 2048  # frames per block keeps memory flat for long recordings
    for start in range(0, n_frames, block):
        spectrum = np.fft.rfft(frames_view[start : start + block] * window, axis=1)
        power = spectrum.real**2 + spectrum.imag**2
        out[:, start : start + block] = basis @ power.T
    return out


def compress_mel(mel: np.ndarray) -> np.ndarray:
    """Fixed, clip-independent log compression to roughly [-1, 1] (see module docstring)."""
    return ((np.log10(np.maximum(mel, LOG_FLOOR)) + LOG_OFFSET) / LOG_SCALE).astype(np.float32)


def logmel(wave: np.ndarray, spec: AudioFeatureSpec) -> np.ndarray:
    """Normalised log-mel features [frames, n_mels] at spec.feature_rate frames per second."""
    return np.ascontiguousarray(compress_mel(mel_power(wave, spec)).T)


# --------------------------------------------------------------------------------------------
# HuBERT / wav2vec2 encoders (local weights only)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EncoderInfo:
    """Encoder facts read from its config: what windowing and the table shape need."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    stride: int  # input samples per output frame (product of conv strides)
    receptive_field: int  # input samples one output frame sees through the conv stack


def _not_found(spec: AudioFeatureSpec, detail: str = "") -> AudioError:
    """The one message for a missing encoder: where we looked and how to get it once."""
    name = "HuBERT" if spec.kind == "hubert" else "wav2vec2"
    repo = _DEFAULT_MODELS[spec.kind]
    where = "no model_path was given" if spec.model_path is None else f"not found locally at {spec.model_path!r}"
    extra = f" ({detail})" if detail else ""
    return AudioError(
        f"{name} encoder {where}{extra}; download it once with "
        f"`hf download {repo} --local-dir models/{repo.split('/')[-1]}` and set model_path to that folder, "
        f"or use the default logmel extractor (kind='logmel')"
    )


def _looks_like_path(text: str) -> bool:
    """A filesystem path rather than a Hugging Face repo id ('owner/name')."""
    return text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1 or Path(text).exists()


def _encoder_available(spec: AudioFeatureSpec) -> bool:
    """Whether the encoder's config can be read locally (without raising)."""
    if spec.kind == "whisper":
        from gstalker_ns.audio.whisper import default_model_dir

        return default_model_dir() is not None if spec.model_path is None else (Path(spec.model_path).expanduser() / "model.bin").is_file()
    try:
        _encoder_info(spec)
        return True
    except AudioError:
        return False


def _read_local_config(spec: AudioFeatureSpec) -> Dict[str, Any]:
    """config.json of the encoder from a local folder or the HF cache; never downloads."""
    if spec.model_path is None:
        raise _not_found(spec)
    path = Path(spec.model_path).expanduser()
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise _not_found(spec, "folder has no config.json")
        try:
            return json.loads(cfg_file.read_text())
        except (OSError, ValueError) as exc:
            raise AudioError(f"{cfg_file}: unreadable encoder config ({exc}); download the model again") from None
    if _looks_like_path(spec.model_path):
        raise _not_found(spec)
    try:  # a repo id: look in the user's Hugging Face cache only
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.model_path, "config.json")
    except Exception:
        cached = None
    if not isinstance(cached, str):
        raise _not_found(spec, "not in the Hugging Face cache either")
    return json.loads(Path(cached).read_text())


@functools.lru_cache(maxsize=16)
def _encoder_info_cached(kind: str, model_path: Optional[str]) -> _EncoderInfo:
    spec = AudioFeatureSpec(kind=kind, model_path=model_path)
    cfg = _read_local_config(spec)
    model_type = str(cfg.get("model_type", ""))
    if model_type != kind:
        raise AudioError(
            f"{model_path}: holds a {model_type or 'unknown'!s} model, not {kind}; "
            f"set kind={model_type!r} or point model_path at a {kind} model"
        )
    try:
        strides = [int(s) for s in cfg["conv_stride"]]
        kernels = [int(k) for k in cfg["conv_kernel"]]
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AudioError(f"{model_path}: encoder config lacks {exc}; download the model again") from None
    receptive, jump = 1, 1
    for k, s in zip(kernels, strides):
        receptive += (k - 1) * jump
        jump *= s
    return _EncoderInfo(model_type, hidden, layers, jump, receptive)


def _encoder_info(spec: AudioFeatureSpec) -> _EncoderInfo:
    """Cached config facts for the spec's encoder (raises the not-found error if absent)."""
    return _encoder_info_cached(spec.kind, spec.model_path)


@functools.lru_cache(maxsize=1)
def _load_encoder(kind: str, model_path: str, device: str) -> Any:
    """HubertModel/Wav2Vec2Model from local files only, in eval mode on `device`."""
    from gstalker_ns._compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # transformers imports torchvision when it is installed
    try:
        from transformers import HubertModel, Wav2Vec2Model
    except Exception as exc:
        raise AudioError(
            f"the {kind} extractor needs the transformers package ({exc}); install it or use kind='logmel'"
        ) from None
    cls = HubertModel if kind == "hubert" else Wav2Vec2Model
    source = str(Path(model_path).expanduser()) if Path(model_path).expanduser().is_dir() else model_path
    try:
        model, info = cls.from_pretrained(source, local_files_only=True, output_loading_info=True)
    except OSError as exc:
        raise _not_found(AudioFeatureSpec(kind=kind, model_path=model_path), _short_exc(exc)) from None
    # masked_spec_embed is only used for training-time masking; anything else missing means
    # random weights would silently drive the model.
    missing = [k for k in info.get("missing_keys", []) if "masked_spec_embed" not in k]
    if missing:
        raise AudioError(
            f"{model_path}: checkpoint lacks {len(missing)} {kind} weight(s) (e.g. {sorted(missing)[0]}); "
            "download the complete model again"
        )
    return model.eval().to(device)


def release_encoder() -> None:
    """Free the cached HuBERT/wav2vec2 model (kept between calls so rendering new audio is quick)."""
    _load_encoder.cache_clear()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _short_exc(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:157] + "..." if len(text) > 160 else text


def _conv_frames(num_samples: int, info: _EncoderInfo) -> int:
    """Output frames of the conv feature encoder for num_samples input samples."""
    if num_samples < info.receptive_field:
        return 0
    return (num_samples - info.receptive_field) // info.stride + 1


def encoder_hidden_states(
    wave: np.ndarray,
    spec: AudioFeatureSpec,
    progress: bool = False,
    chunk_seconds: float = ENCODER_CHUNK_SECONDS,
    context_seconds: float = ENCODER_CONTEXT_SECONDS,
) -> Tuple[np.ndarray, float]:
    """Encoder hidden states [frames, hidden] and their real rate (sample_rate / conv stride).

    The wave is normalised to zero mean, unit variance as a whole, then encoded in chunks whose
    starts are multiples of the conv stride; each chunk carries `context_seconds` of neighbouring
    audio that is discarded afterwards, so output frame j always covers samples from j*stride.
    """
    import torch

    info = _encoder_info(spec)
    if spec.layer is not None and not -(info.num_hidden_layers + 1) <= spec.layer <= info.num_hidden_layers:
        raise AudioError(
            f"audio feature spec: layer {spec.layer} out of range for a {info.num_hidden_layers}-layer "
            f"{spec.kind} encoder; use 0..{info.num_hidden_layers} or None for the last hidden state"
        )
    if "dim" in spec._recorded and int(spec._recorded["dim"]) != info.hidden_size:
        raise AudioError(
            f"{spec.model_path}: encoder has hidden size {info.hidden_size} but the model was trained with "
            f"{int(spec._recorded['dim'])}; point model_path at the encoder used for training"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _load_encoder(spec.kind, str(spec.model_path), device)

    x = wave.astype(np.float64)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    if x.size < info.receptive_field:  # too short for even one frame: pad with silence
        x = np.pad(x, (0, info.receptive_field - x.size))
    x = x.astype(np.float32)
    total = _conv_frames(x.size, info)
    rate = spec.sample_rate / info.stride
    chunk = max(1, int(round(chunk_seconds * rate)))
    context = max(0, int(round(context_seconds * rate)))
    starts = list(range(0, total, chunk))
    pieces = []
    with torch.no_grad():
        for i, f0 in enumerate(starts):
            f1 = min(total, f0 + chunk)
            g0, g1 = max(0, f0 - context), min(total, f1 + context)
            a, b = g0 * info.stride, (g1 - 1) * info.stride + info.receptive_field
            if g1 == total:  # the last chunk takes the tail too (group norm sees the whole input)
                b = x.size
            inp = torch.from_numpy(x[a:b]).to(device)[None]
            out = model(inp, output_hidden_states=spec.layer is not None)
            hidden = out.last_hidden_state if spec.layer is None else out.hidden_states[spec.layer]
            hidden = hidden[0].float().cpu().numpy()
            if hidden.shape[0] != g1 - g0:
                raise AudioError(
                    f"internal: {spec.kind} encoder returned {hidden.shape[0]} frames for {b - a} samples, "
                    f"expected {g1 - g0}; its conv layout is not supported"
                )
            pieces.append(hidden[f0 - g0 : f1 - g0])
            if progress:
                print(f"\raudio features: {spec.kind} chunk {i + 1}/{len(starts)}", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return np.concatenate(pieces, axis=0).astype(np.float32), rate
