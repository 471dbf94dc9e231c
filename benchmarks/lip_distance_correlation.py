"""Lip-sync numbers of a "ground truth | render" video (e.g. `gpu_train_eval.py --save-renders`).

    python benchmarks/lip_distance_correlation.py gstalker_heldout.mp4

A thin wrapper over gstalker_ns.evaluation.lipsync (what `gstalker-eval` uses): face mesh runs
here (the GPU machine has no mediapipe) over each half's sequence in tracking mode, then the
mouth-opening correlation (inner-lip gap / eye-corner distance) and the LMD (mean-centred lip
landmarks, pixels at 512) of the render against the ground truth. `gstalker-eval` itself reports
these, with the audio-visual offset, from its saved frames (`gstalker-eval --lipsync-from OUT`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    import av

    from gstalker_ns.evaluation.lipsync import compare_mouths, track_mouth

    path = Path(sys.argv[1])
    with av.open(str(path)) as container:
        pairs = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    half = pairs[0].shape[1] // 2
    gt = track_mouth([p[:, :half] for p in pairs])
    render = track_mouth([p[:, half:] for p in pairs])
    result = compare_mouths(gt, render)
    report = {
        "frames": len(pairs),
        "faces_found": {"ground_truth": int(gt.detected.sum()), "render": int(render.detected.sum())},
        "inner_lip_distance_correlation": result["mouth_opening_correlation"],
        "lmd_px_at_512": result["lmd"],
        "mean_inner_lip_distance": {
            "ground_truth": round(float(np.nanmean(gt.opening)), 4),
            "render": round(float(np.nanmean(render.opening)), 4),
        },
        "mean_abs_difference": round(float(np.nanmean(np.abs(gt.opening - render.opening))), 4),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
