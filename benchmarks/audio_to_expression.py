"""How well does the audio predict the mouth, without rendering? (CPU, a few minutes)

For each real clip in ../shared/data/real (processed with gstalker-process into --work, once) and
each audio feature variant, the audio -> expression read-out (gstalker_ns.expression) is fitted
exactly as the model fits it, and scored on mouth opening (the inner-lip gap along its mean
direction, from the tracked head-frame landmarks):

- validation: mean correlation over contiguous slices INSIDE the training frames (what the model
  chooses its settings on);
- held-out: fitted on all training frames, scored on the last 1/11 of the clip (the frames
  gstalker-eval scores; reported, never used to choose anything);
- cross-driven: the clip's read-out driven by another speaker (whisper_jfk.flac and the other
  clip): the opening's p90-p10 spread over the clip's own tracked spread (amplitude ratio), and
  its correlation with the driving audio's log RMS envelope at lags -5..+5 frames.

    python benchmarks/audio_to_expression.py [--work /tmp/gstalker-bench] [--out benchmarks/results/audio_to_expression.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from results_io import write_result  # noqa: E402
REAL = REPO.parent / "shared" / "data" / "real"
CLIPS = {"dfrf_french": "dfrf_french.mp4", "german_20s": "mimictalk_German_20s.mp4"}
DRIVER = "whisper_jfk.flac"
FPS = 25.0
LAGS = range(-5, 6)


def variants():
    from gstalker_ns.audio.features import AudioFeatureSpec, default_feature_spec

    whisper = default_feature_spec()
    return {
        "logmel (window 16, before)": AudioFeatureSpec(),
        "whisper final layer": AudioFeatureSpec(kind="whisper", window=5, lookahead=2, layer=None, append_logmel=False),
        "whisper layer 3": AudioFeatureSpec(kind="whisper", window=5, lookahead=2, layer=3, append_logmel=False),
        "whisper layer 3 + logmel (default)": whisper,
    }


def processed(name: str, video: Path, work: Path) -> Path:
    from gstalker_ns.preprocess.pipeline import process_video

    out = work / name
    if not (out / "transforms.json").exists():
        print(f"[bench] gstalker-process {video.name} -> {out}", flush=True)
        process_video(video, out, progress=False)
    return out


def envelope_correlation(opening: np.ndarray, wave: np.ndarray) -> Dict[str, float]:
    """Corr of the opening with the log RMS envelope (40 ms) at lags -5..+5 frames; positive lag:
    the mouth moves after the sound."""
    from gstalker_ns.synth.speech import rms_envelope

    n = len(opening)
    envelope = np.log(rms_envelope(wave, 16000, np.arange(n) / FPS, 0.04) + 1e-4)
    corr = {}
    for lag in LAGS:
        a = opening[max(0, lag) : n + min(0, lag)]
        b = envelope[max(0, -lag) : n - max(0, lag)]
        corr[lag] = float(np.corrcoef(a, b)[0, 1])
    best = max(corr, key=corr.get)
    return {"envelope_corr": corr[best], "best_lag_frames": best, "envelope_corr_lag0": corr[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gstalker-bench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "audio_to_expression.json")
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"[bench] skipped: {REAL} is absent (the real clips are not part of the repository)")
        return 0
    torch.manual_seed(0)
    torch.set_num_threads(2)
    from gstalker_ns import _compat

    _compat.apply_all()
    from gstalker_ns.audio.features import extract_features
    from gstalker_ns.audio.io import load_audio
    from gstalker_ns.data.dataparser import split_indices
    from gstalker_ns.expression import ExpressionBasis, ExpressionTrack, fit_audio_to_expression

    started = time.perf_counter()
    folders = {name: processed(name, REAL / video, args.work) for name, video in CLIPS.items()}
    waves = {name: load_audio(folder / "audio.wav") for name, folder in folders.items()}
    drivers = {DRIVER: load_audio(REAL / DRIVER), **waves}
    results: Dict[str, Dict] = {}
    for variant, spec in variants().items():
        print(f"[bench] {variant}", flush=True)
        results[variant] = {}
        for name, folder in folders.items():
            track = ExpressionTrack.load(folder / "face_landmarks.npz")
            n = track.num_frames
            rows = split_indices(n, 1.0 / 11.0, "train")
            held = split_indices(n, 1.0 / 11.0, "val")
            basis = ExpressionBasis.fit(track.head_points, rows, min_share=1e-4)
            codes = torch.from_numpy(basis.encode(track.head_points))
            opening = torch.from_numpy(basis.opening_vector(tuple(track.inner_lips))).float()
            table = torch.from_numpy(extract_features(waves[name], spec, n))
            model, report = fit_audio_to_expression(table, codes, rows, opening)
            predicted = (model(table) @ opening).numpy()
            tracked = (codes @ opening).numpy()
            spread = np.percentile(tracked[rows], 90) - np.percentile(tracked[rows], 10)
            entry = {
                "validation_opening_corr": report.opening_corr,
                "heldout_opening_corr": float(np.corrcoef(predicted[held], tracked[held])[0, 1]),
                "heldout_amplitude_ratio": float(
                    (np.percentile(predicted[held], 90) - np.percentile(predicted[held], 10))
                    / (np.percentile(tracked[held], 90) - np.percentile(tracked[held], 10))
                ),
                "fit": report.to_json(),
                "cross_driven": {},
            }
            del entry["fit"]["grid"]
            for driver, wave in drivers.items():
                if driver == name:
                    continue
                frames = int(round(len(wave) / 16000 * FPS))
                o = (model(torch.from_numpy(extract_features(wave, spec, frames))) @ opening).numpy()
                amplitude = (np.percentile(o, 90) - np.percentile(o, 10)) / spread
                entry["cross_driven"][driver] = {"amplitude_ratio": float(amplitude), **envelope_correlation(o, wave)}
            entry["tracked_vs_own_audio"] = envelope_correlation(tracked, waves[name])
            results[variant][name] = entry
            cd = "; ".join(
                f"{d}: amp {v['amplitude_ratio']:.2f} env {v['envelope_corr']:.2f}@{v['best_lag_frames']:+d}"
                for d, v in entry["cross_driven"].items()
            )
            print(
                f"  {name}: validation {entry['validation_opening_corr']:.3f}, held-out {entry['heldout_opening_corr']:.3f} | {cd}",
                flush=True,
            )
    payload = {
        "benchmark": "audio_to_expression",
        "command": "python benchmarks/audio_to_expression.py",
        "seconds": round(time.perf_counter() - started, 1),
        "clips": {name: str(CLIPS[name]) for name in CLIPS},
        "results": results,
    }
    write_result(args.out, payload, "bench")
    return 0


if __name__ == "__main__":
    sys.exit(main())
