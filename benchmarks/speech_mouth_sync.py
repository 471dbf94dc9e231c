"""Does the avatar's mouth follow new speech, in sync? Measured on a gstalker-render mp4 itself.

    python benchmarks/speech_mouth_sync.py speech.mp4 --box 250,292,222,302

Rendered with `--pose fixed`, the mouth stays inside one pixel box (rows y0..y1, columns x0..x1;
pick it on the first frame). Per frame, the mouth-opening proxy is the fraction of box pixels
that are much darker (the mouth cavity) or much brighter (teeth) than lips and skin. The audio
energy is the RMS of the mp4's own sound track over each frame's interval, so the file's A/V
alignment is what is measured. Prints the Pearson correlation at lags of -5..+5 frames (positive:
the mouth moves after the sound) and writes them as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def decode(path: Path):
    """(frames [N, H, W, 3] uint8, fps, mono audio float32, sample rate) of an mp4, via PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        chunks, rate = [], container.streams.audio[0].rate
        for frame in container.decode(audio=0):
            chunks.append(frame.to_ndarray().astype(np.float32).mean(axis=0))
    return frames, fps, np.concatenate(chunks), rate


def lagged_correlations(a: np.ndarray, b: np.ndarray, max_lag: int) -> dict:
    """Pearson correlation of a[t + lag] with b[t] for lag in -max_lag..max_lag."""
    out = {}
    n = len(a)
    for lag in range(-max_lag, max_lag + 1):
        x = a[max(0, lag) : n + min(0, lag)]
        y = b[max(0, -lag) : n - max(0, lag)]
        out[lag] = float(np.corrcoef(x, y)[0, 1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path)
    parser.add_argument("--box", required=True, help="y0,y1,x0,x1 of the mouth in the (fixed-pose) frames")
    parser.add_argument("--max-lag", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    y0, y1, x0, x1 = (int(v) for v in args.box.split(","))
    frames, fps, audio, rate = decode(args.video)
    luminance = frames[:, y0:y1, x0:x1].astype(np.float32).mean(axis=-1)
    opening = ((luminance < 90) | (luminance > 215)).mean(axis=(1, 2))
    per_frame = rate / fps
    energy = np.array(
        [np.sqrt(np.mean(audio[int(k * per_frame) : int((k + 1) * per_frame)] ** 2) + 1e-12) for k in range(len(frames))]
    )
    correlations = lagged_correlations(opening, energy, args.max_lag)
    best = max(correlations, key=correlations.get)
    quiet = energy < np.quantile(energy, 0.2)
    loud = energy > np.quantile(energy, 0.7)
    result = {
        "video": str(args.video),
        "frames": len(frames),
        "fps": fps,
        "correlation_by_lag_frames": correlations,
        "best_lag_frames": best,
        "best_lag_ms": 1000.0 * best / fps,
        "opening_quiet_frames": float(opening[quiet].mean()),
        "opening_loud_frames": float(opening[loud].mean()),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
