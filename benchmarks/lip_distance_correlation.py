"""Correlation of face-mesh inner-lip distance between rendered and real held-out frames.

    python benchmarks/lip_distance_correlation.py gstalker_heldout.mp4   # a ground truth | render video

The video is what `benchmarks/gpu_train_eval.py --save-renders` writes (each frame: ground truth
on the left half, render on the right). Face mesh runs here (the GPU machine has no mediapipe),
in tracking mode over each half's sequence; the measure is
`gstalker_ns.preprocess.landmarks.inner_lip_distance` (inner-lip gap / inter-ocular distance).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    import av

    from gstalker_ns.evaluation import pearson
    from gstalker_ns.preprocess.landmarks import inner_lip_distance, track_landmarks

    path = Path(sys.argv[1])
    with av.open(str(path)) as container:
        pairs = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    half = pairs[0].shape[1] // 2
    gt = track_landmarks([p[:, :half] for p in pairs])
    render = track_landmarks([p[:, half:] for p in pairs])
    d_gt, d_render = inner_lip_distance(gt.points), inner_lip_distance(render.points)
    ok = np.isfinite(d_gt) & np.isfinite(d_render)
    report = {
        "frames": len(pairs),
        "faces_found": {"ground_truth": int(gt.detected.sum()), "render": int(render.detected.sum())},
        "inner_lip_distance_correlation": round(pearson(list(d_render[ok]), list(d_gt[ok])), 3),
        "mean_inner_lip_distance": {"ground_truth": round(float(np.nanmean(d_gt)), 4), "render": round(float(np.nanmean(d_render)), 4)},
        "mean_abs_difference": round(float(np.nanmean(np.abs(d_gt - d_render))), 4),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
