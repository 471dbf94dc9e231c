"""Speech for the synthetic subject, and the mouth opening it drives.

Sources (``audio_source``):

* ``espeak``: ``espeak-ng`` (or ``espeak``) speaking seeded random sentences from a small word list;
* ``festival``: festival's ``text2wave`` with the same kind of sentences;
* ``procedural``: a voice-like signal made here: a jittered glottal pulse train (F0 100-180 Hz)
  through three formant resonators that change per syllable, syllables at ~4-5 Hz in phrases
  separated by pauses, with some fricative noise. No binaries needed;
* ``auto``: espeak, else festival, else procedural.

Every source is resampled to 16 kHz mono float32 and trimmed/padded to the clip's duration.
The mouth opening per video frame comes from the audio itself (smoothed RMS envelope, robustly
normalised, with a small lead), so the lips follow the speech whatever produced it.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import wave as _wave
from dataclasses import dataclass
from math import gcd
from typing import List, Optional, Tuple

import numpy as np

from gstalker_ns.errors import GstalkerUserError

SAMPLE_RATE = 16000
AUDIO_SOURCES = ("auto", "espeak", "festival", "procedural")
MOUTH_LEAD_S = 0.02  # the mouth moves slightly ahead of the sound
ENVELOPE_WINDOW_S = 0.04

_WORDS = (
    "the a one two three four five six seven ten time day night year way world life hand part "
    "child eye woman man place work week case point home water room mother area money story fact "
    "month lot right study book word business issue side kind head house service friend father "
    "power hour game line end member law car city name team minute idea kid body back parent face "
    "level office door health person art war history party result change morning reason research "
    "girl guy moment air teacher force education good new first last long great little own other "
    "old big high different small large next early young important few public bad same able say "
    "make go know take see come think look want give use find tell ask seem feel try leave call "
    "keep let begin show hear play run move live believe hold bring happen write provide sit stand "
    "lose pay meet include continue set learn lead understand watch follow stop create speak read "
    "spend grow open walk win offer remember love consider appear buy wait serve send expect build "
    "stay fall reach remain suggest raise pass sell decide return explain hope develop carry break "
    "today always never often really very quite almost again still already soon together maybe"
).split()


class SpeechError(GstalkerUserError, RuntimeError):
    """A requested speech source cannot be used (one-line message)."""


@dataclass
class Speech:
    wave: np.ndarray  # float32 [n] at `sample_rate`, in [-1, 1]
    sample_rate: int
    source: str  # "espeak", "festival" or "procedural"
    text: Optional[str] = None
    voice: Optional[str] = None


# ---- text ---------------------------------------------------------------------------------------


def random_text(seed: int, num_words: int) -> str:
    """Seeded sentences of 4-11 words from a small built-in word list."""
    rng = np.random.default_rng([int(seed), 31])
    sentences: List[str] = []
    total = 0
    while total < num_words:
        k = int(rng.integers(4, 12))
        words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), size=k)]
        sentences.append(" ".join(words).capitalize() + ("?" if rng.uniform() < 0.15 else "."))
        total += k
    return " ".join(sentences)


# ---- helpers ------------------------------------------------------------------------------------


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy); linear interpolation if scipy is missing."""
    x = np.asarray(x, dtype=np.float64)
    if sr_in == sr_out or x.size == 0:
        return x.astype(np.float32)
    try:
        from scipy.signal import resample_poly

        g = gcd(int(sr_in), int(sr_out))
        return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)
    except ImportError:  # pragma: no cover - scipy is part of the stack
        n_out = int(round(x.size * sr_out / sr_in))
        t = np.arange(n_out) * (sr_in / sr_out)
        return np.interp(t, np.arange(x.size), x).astype(np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad to exactly n samples."""
    x = np.asarray(x, dtype=np.float32)
    if x.size >= n:
        return x[:n].copy()
    return np.concatenate([x, np.zeros(n - x.size, dtype=np.float32)])


def _read_wav(path: str) -> Tuple[np.ndarray, int]:
    with _wave.open(path, "rb") as w:
        sr = w.getframerate()
        ch = w.getnchannels()
        width = w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise SpeechError(f"{path}: unsupported WAV sample width {width}")
    if ch > 1:
        x = x.reshape(-1, ch).mean(1)
    return x, sr


def _normalise(x: np.ndarray, peak: float = 0.8) -> np.ndarray:
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return (x * (peak / m)).astype(np.float32) if m > 1e-9 else x.astype(np.float32)


def espeak_binary() -> Optional[str]:
    return shutil.which("espeak-ng") or shutil.which("espeak")


def festival_binary() -> Optional[str]:
    return shutil.which("text2wave")


def available_sources() -> List[str]:
    out = []
    if espeak_binary():
        out.append("espeak")
    if festival_binary():
        out.append("festival")
    out.append("procedural")
    return out


# ---- espeak / festival --------------------------------------------------------------------------


def _tts_until_long_enough(synth, seed: int, duration: float) -> Tuple[np.ndarray, int, str]:
    """Call synth(text) -> (wave, sr) with more text until it covers the duration (3 tries)."""
    words = int(duration * 3.0) + 8
    x, sr, text = np.zeros(0, np.float32), SAMPLE_RATE, ""
    for _ in range(3):
        text = random_text(seed, words)
        x, sr = synth(text)
        if x.size >= duration * sr:
            break
        words *= 2
    return x, sr, text


def espeak_speech(duration: float, seed: int, sample_rate: int = SAMPLE_RATE) -> Speech:
    exe = espeak_binary()
    if exe is None:
        raise SpeechError(
            "espeak-ng not found; install it (apt-get install espeak-ng) or use --audio-source procedural"
        )
    rng = np.random.default_rng([int(seed), 32])
    pitch = int(rng.integers(30, 71))
    speed = int(rng.integers(140, 171))
    variant = ["", "+m3", "+f3", "+m5", "+f2"][int(rng.integers(5))]
    state = {"voice": "en-us" + variant}

    def synth(text: str) -> Tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory(prefix="gstalker-espeak-") as tmp:
            out = os.path.join(tmp, "speech.wav")
            for voice in (state["voice"], "en-us", "en"):
                cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", out, text]
                proc = subprocess.run(cmd, capture_output=True, timeout=600)
                if proc.returncode == 0 and os.path.exists(out) and os.path.getsize(out) > 44:
                    state["voice"] = voice
                    return _read_wav(out)
            msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise SpeechError(f"{exe} failed: {msg[-1] if msg else 'no output'}; use --audio-source procedural")

    x, sr, text = _tts_until_long_enough(synth, seed, duration)
    x = resample(x, sr, sample_rate)
    n = int(round(duration * sample_rate))
    return Speech(_normalise(fit_length(x, n)), sample_rate, "espeak", text, f"{os.path.basename(exe)}:{state['voice']} -p {pitch} -s {speed}")


def festival_speech(duration: float, seed: int, sample_rate: int = SAMPLE_RATE) -> Speech:
    exe = festival_binary()
    if exe is None:
        raise SpeechError(
            "festival's text2wave not found; install festival (apt-get install festival) or use --audio-source procedural"
        )

    def synth(text: str) -> Tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory(prefix="gstalker-festival-") as tmp:
            txt = os.path.join(tmp, "speech.txt")
            out = os.path.join(tmp, "speech.wav")
            with open(txt, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
            proc = subprocess.run([exe, "-o", out, txt], capture_output=True, timeout=600)
            if proc.returncode != 0 or not os.path.exists(out):
                msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                raise SpeechError(f"{exe} failed: {msg[-1] if msg else 'no output'}; use --audio-source procedural")
            return _read_wav(out)

    x, sr, text = _tts_until_long_enough(synth, seed, duration)
    x = resample(x, sr, sample_rate)
    n = int(round(duration * sample_rate))
    return Speech(_normalise(fit_length(x, n)), sample_rate, "festival", text, "text2wave")


# ---- procedural voice ---------------------------------------------------------------------------

# (F1, F2, F3) in Hz of a few vowels (adult average)
_VOWELS = np.array(
    [
        (730, 1090, 2440),  # a
        (530, 1840, 2480),  # e
        (270, 2290, 3010),  # i
        (570, 840, 2410),  # o
        (300, 870, 2240),  # u
        (660, 1720, 2410),  # ae
        (520, 1190, 2390),  # schwa
    ],
    dtype=np.float64,
)
_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


def _glottal_source(f0: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Differentiated Rosenberg-like glottal flow for a per-sample F0 track (with jitter)."""
    n = f0.size
    # per-period jitter: perturb the instantaneous frequency by a slowly varying random factor
    jitter = 1.0 + 0.012 * np.repeat(rng.standard_normal(n // 80 + 2), 80)[:n]
    phase = np.cumsum(f0 * jitter / sr)
    ph = phase - np.floor(phase)
    open_q, close_q = 0.42, 0.2
    flow = np.where(
        ph < open_q,
        0.5 * (1.0 - np.cos(np.pi * ph / open_q)),
        np.where(ph < open_q + close_q, np.cos(0.5 * np.pi * (ph - open_q) / close_q), 0.0),
    )
    shimmer = 1.0 + 0.06 * np.repeat(rng.standard_normal(n // 80 + 2), 80)[:n]
    return np.diff(flow, prepend=0.0) * shimmer


def procedural_speech(duration: float, seed: int, sample_rate: int = SAMPLE_RATE) -> Speech:
    """A voice-like signal: glottal pulses, per-syllable formants, syllables ~4-5 Hz, pauses."""
    from scipy.signal import lfilter

    sr = int(sample_rate)
    n = int(round(duration * sr))
    rng = np.random.default_rng([int(seed), 3])
    base_f0 = float(rng.uniform(100.0, 180.0))
    amp = np.zeros(n)
    f0 = np.full(n, base_f0)
    formants = np.tile(_VOWELS[6], (n, 1))
    noise_amp = np.zeros(n)

    t = int(rng.uniform(0.15, 0.5) * sr)  # initial silence
    while t < n:
        phrase_len = int(rng.uniform(1.2, 3.5) * sr)
        end = min(n, t + phrase_len)
        p0 = t
        prev_vowel = _VOWELS[int(rng.integers(len(_VOWELS)))]
        while t < end:
            syl = int(rng.uniform(0.15, 0.3) * sr)
            s1 = min(end, t + syl)
            L = s1 - t
            if L <= 0:
                break
            tau = np.arange(L) / max(L, 1)
            vowel = _VOWELS[int(rng.integers(len(_VOWELS)))] * rng.uniform(0.93, 1.07)
            # formants glide from the previous vowel over the first 30% of the syllable
            w = np.clip(tau / 0.3, 0.0, 1.0)[:, None]
            formants[t:s1] = prev_vowel[None, :] * (1 - w) + vowel[None, :] * w
            prev_vowel = vowel
            onset = rng.uniform()
            env = np.sin(np.pi * np.clip(tau, 0, 1)) ** 0.7 * rng.uniform(0.55, 1.0)
            if onset < 0.35:  # fricative onset: noise, then the vowel
                k = int(0.3 * L)
                noise_amp[t : t + k] = np.sin(np.pi * np.arange(k) / max(k, 1)) * rng.uniform(0.15, 0.35)
                env[:k] *= np.linspace(0.0, 1.0, k) ** 2
            elif onset < 0.6:  # plosive: short closure then a burst
                k = int(0.12 * L)
                env[:k] = 0.0
                b = min(L - k, int(0.015 * sr))
                noise_amp[t + k : t + k + b] = rng.uniform(0.3, 0.5)
            amp[t:s1] = env
            # intonation: declination over the phrase, accents per syllable
            decl = 1.0 - 0.15 * (np.arange(t, s1) - p0) / max(phrase_len, 1)
            f0[t:s1] = base_f0 * decl * (1.0 + rng.uniform(-0.04, 0.12) * np.sin(np.pi * tau))
            t = s1
        t = end + int(rng.uniform(0.25, 0.7) * sr)  # pause

    # smooth the control tracks a little (5 ms) to avoid clicks
    k = max(1, int(0.005 * sr))
    ker = np.ones(k) / k
    amp = np.convolve(amp, ker, mode="same")
    f0 = np.convolve(f0, ker, mode="same")
    f0[f0 < 50.0] = base_f0
    src = _glottal_source(f0, sr, rng) * amp
    src = lfilter([1.0], [1.0, -0.9], src)  # spectral tilt of a real glottal source
    src = src + 0.003 * np.max(np.abs(src)) * rng.standard_normal(n) * amp  # aspiration
    # time-varying formant cascade, block-wise with carried filter state
    block = max(1, int(0.01 * sr))
    y = src.copy()
    for fi in range(3):
        out = np.zeros(n)
        zi = np.zeros(2)
        bw = _BANDWIDTHS[fi]
        r = math.exp(-math.pi * bw / sr)
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            F = float(formants[b0:b1, fi].mean())
            th = 2.0 * math.pi * F / sr
            a = [1.0, -2.0 * r * math.cos(th), r * r]
            g = (1.0 - r) * math.sqrt(1.0 - 2.0 * r * math.cos(2 * th) + r * r)
            out[b0:b1], zi = lfilter([g], a, y[b0:b1], zi=zi)
        y = out
    y = _normalise(y, 1.0) + 0.02 * _normalise(src, 1.0)  # a little direct source for brightness
    # fricative / burst noise: high-passed white noise
    nz = rng.standard_normal(n)
    nz = np.diff(nz, prepend=0.0)
    nz = lfilter([1.0], [1.0, -0.3], nz)
    y = _normalise(y, 0.7) + 0.06 * nz * noise_amp
    y = y + 2e-4 * rng.standard_normal(n)  # room noise floor
    return Speech(_normalise(y.astype(np.float32), 0.8), sr, "procedural", None, f"procedural f0={base_f0:.0f}Hz")


# ---- dispatch -----------------------------------------------------------------------------------


def synthesize_speech(duration: float, seed: int, source: str = "auto", sample_rate: int = SAMPLE_RATE) -> Speech:
    """Speech of exactly round(duration * sample_rate) samples from the requested source."""
    if source not in AUDIO_SOURCES:
        raise SpeechError(f"unknown audio source '{source}'; choose one of {', '.join(AUDIO_SOURCES)}")
    if source == "auto":
        if espeak_binary():
            source = "espeak"
        elif festival_binary():
            source = "festival"
        else:
            source = "procedural"
    if source == "espeak":
        return espeak_speech(duration, seed, sample_rate)
    if source == "festival":
        return festival_speech(duration, seed, sample_rate)
    return procedural_speech(duration, seed, sample_rate)


# ---- mouth opening ------------------------------------------------------------------------------


def rms_envelope(wave: np.ndarray, sample_rate: int, times: np.ndarray, window_s: float = ENVELOPE_WINDOW_S) -> np.ndarray:
    """RMS of the signal in a centred Hann-weighted window at each time (s)."""
    x = np.asarray(wave, dtype=np.float64)
    half = max(1, int(round(window_s * sample_rate / 2)))
    win = np.hanning(2 * half + 1)
    win /= win.sum()
    centers = np.round(np.asarray(times) * sample_rate).astype(np.int64)
    padded = np.pad(x * x, (half, half))
    out = np.empty(centers.size)
    for k, c in enumerate(centers):
        if c < -half or c > x.size + half:
            out[k] = 0.0
            continue
        c = int(np.clip(c, 0, x.size))
        seg = padded[c : c + 2 * half + 1]
        out[k] = float(np.sqrt(np.dot(seg, win[: seg.size])))
    return out


def mouth_opening_from_audio(
    wave: np.ndarray,
    sample_rate: int,
    num_frames: int,
    fps: float,
    lead_s: float = MOUTH_LEAD_S,
) -> np.ndarray:
    """Mouth opening in [0, 1] for each video frame (frame i at time i / fps).

    The RMS envelope (40 ms window) is read ``lead_s`` after the frame time, normalised robustly
    against the loud part of the whole clip (97th percentile of a 5 ms-hop envelope; anything below
    12% of it is closed), compressed (power 0.75) and lightly smoothed over neighbouring frames.
    """
    x = np.asarray(wave, dtype=np.float64)
    if num_frames <= 0:
        return np.zeros(0, np.float32)
    hop_times = np.arange(0.0, x.size / sample_rate, 0.005)
    ref = rms_envelope(x, sample_rate, hop_times) if hop_times.size else np.zeros(1)
    hi = float(np.percentile(ref, 97)) if ref.size else 0.0
    if hi <= 1e-6:
        return np.zeros(num_frames, np.float32)
    lo = 0.12 * hi
    times = np.arange(num_frames) / float(fps) + lead_s
    e = rms_envelope(x, sample_rate, times)
    o = np.clip((e - lo) / (hi - lo), 0.0, 1.0) ** 0.75
    if num_frames >= 3:  # light temporal smoothing (the jaw has inertia)
        o = np.convolve(np.pad(o, 1, mode="edge"), [0.2, 0.6, 0.2], mode="valid")
    return np.clip(o, 0.0, 1.0).astype(np.float32)
