"""Held-out PSNR of every checkpoint of one training run, against the training wall time.

    python benchmarks/heldout_psnr_curve.py --load-config RUN/config.yml --started-at EPOCH --out curve.json

The run must keep all its checkpoints (`ns-train ... --save-only-latest-checkpoint=False`);
`benchmarks/gpu_jobs.py`'s `curve` task trains that way and calls `psnr_curve` on the run. A
checkpoint's time is its file time minus the moment the training command started (start-up
included, so the curve is slightly pessimistic). The pipeline is built once and each checkpoint
loaded into it; frames are rendered as gstalker-eval renders them (`render_group`) and scored with
its PSNR. Answers issue 13's "held-out PSNR within 0.2 dB of its final value after <= 5 min".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def psnr_curve(config: Path, started_at: float, max_frames: int = 0) -> Dict:
    import torch

    from gstalker_ns.checkpoint import load_trained_pipeline
    from gstalker_ns.evaluation.metrics import psnr
    from gstalker_ns.evaluation.render_pass import split_frames
    from gstalker_ns.render.frames import colour_only
    from gstalker_ns.render.video import render_batch_size, render_group

    pipeline, cfg, _, _ = load_trained_pipeline(config)
    model = pipeline.model
    refs = split_frames(pipeline, "test", max_frames or None)
    truth = [np.asarray(r.dataset.get_numpy_image(r.index))[..., :3] for r in refs]
    model_dir = Path(config).parent / cfg.relative_model_dir
    points: List[Dict] = []
    size = render_batch_size(model)
    for ckpt in sorted(model_dir.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1])):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        pipeline.load_pipeline(state["pipeline"], state["step"])
        pipeline.eval()
        scores = []
        with torch.no_grad(), colour_only(model):
            for start in range(0, len(refs), size):
                group = refs[start : start + size]
                index = torch.tensor([r.index for r in group])
                images = render_group(model, group[0].dataset.cameras[index])
                scores += [psnr(image, truth[start + k]) for k, image in enumerate(images)]
        points.append({
            "step": int(state["step"]),
            "seconds": round(ckpt.stat().st_mtime - started_at, 1),
            "psnr": round(float(np.mean(scores)), 3),
            "gaussians": int(model.num_points),
        })  # fmt: skip
        print(f"[curve] {points[-1]}", flush=True)
    final = points[-1]["psnr"] if points else None
    within = [p for p in points if final is not None and p["psnr"] >= final - 0.2]
    return {
        "frames": len(refs),
        "points": points,
        "final_psnr": final,
        "first_within_0_2_db": within[0] if within else None,
        "how": "mean per-frame PSNR of the held-out frames (gstalker-eval's), checkpoint file time minus training start",
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load-config", type=Path, required=True)
    p.add_argument("--started-at", type=float, required=True, help="epoch seconds when the training command started")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-frames", type=int, default=0, help="score only the first N held-out frames (0: all)")
    args = p.parse_args(argv)
    result = psnr_curve(args.load_config, args.started_at, args.max_frames)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
