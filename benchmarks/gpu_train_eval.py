"""Train on a synthetic subject, score the held-out frames, and time batch-1 rendering (GPU machine).

    python benchmarks/gpu_train_eval.py --method gstalker --subject /tmp/subject --duration 60 \
        --size 512 --iterations 8000 --train-timeout 330 --out $OUT

Steps: (1) generate the synthetic subject unless it exists; (2) `ns-train METHOD` on it (plain
`splatfacto` reads the same folder through our `talking-portrait` dataparser), stopped at
`--iterations` or, failing that, at `--train-timeout` seconds (checkpoints every
`--save-every` steps, the last one is used); (3) held-out PSNR / SSIM and the correlation between
the image-based mouth-opening measure on rendered and ground-truth frames; (4) batch-1 render
latency at full resolution over `--speed-frames` frames, CUDA-synchronised per frame, including
audio encoding, deformation, rasterization and background compositing; peak GPU memory.
Results go to OUT/METHOD_results.json and OUT/METHOD_heldout.png.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def run_with_budget(command: list, log_path: Path, timeout: float, env: dict = None, grace: float = 90.0):
    """Run a training command with its output in log_path; after `timeout` seconds interrupt it
    (SIGINT, as Ctrl-C: nerfstudio stops cleanly) and kill it if it has not ended `grace` s later.
    Returns (exit code, whether the budget stopped it)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            process.wait(timeout=timeout)
            return process.returncode, False
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return process.returncode, True


def train(method: str, subject: Path, outputs: Path, iterations: int, timeout: float, save_every: int, extra: list) -> dict:
    """Run ns-train; return wall time, the steps reached and how it ended."""
    common = [
        f"--output-dir={outputs}",
        "--experiment-name=bench",
        "--timestamp=run",
        "--vis=tensorboard",
        "--viewer.quit-on-train-completion=True",
        f"--max-num-iterations={iterations}",
        f"--steps-per-save={save_every}",
        "--steps-per-eval-image=100000",
        "--steps-per-eval-all-images=1000000",
        "--logging.steps-per-log=100",
    ]
    if method == "gstalker":
        command = ["gstalker", f"--data={subject}", *common, *extra]
    else:  # plain splatfacto on the same folder, through our dataparser
        command = [method, *common, *extra, "talking-portrait", f"--data={subject}"]
    launcher = "import gstalker_ns._compat as c; c.apply_all(); from nerfstudio.scripts.train import entrypoint; entrypoint()"
    log_path = outputs / f"{method}_train.log"
    outputs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    returncode, timed_out = run_with_budget([sys.executable, "-c", launcher, *command], log_path, timeout)
    ended = "stopped at the time budget" if timed_out else ("finished" if returncode == 0 else f"exit code {returncode}")
    wall = time.perf_counter() - start
    run_dir = outputs / "bench" / method / "run"
    checkpoints = sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
    if not checkpoints:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"no checkpoint from {method}; log tail:\n{tail}")
    steps = int(checkpoints[-1].stem.split("-")[1])
    return {"wall_s": round(wall, 1), "checkpoint_step": steps, "ended": ended, "config": str(run_dir / "config.yml")}


def render_latency(pipeline, frames: int) -> dict:
    """Batch-1 latency of model.get_outputs on held-out cameras, frame index advancing per call."""
    import torch

    model = pipeline.model
    cameras = pipeline.datamanager.eval_dataset.cameras.to(model.device)
    num_audio = len(getattr(model, "audio_table", [0]))
    times = []
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    with torch.no_grad():
        for i in range(frames + 20):
            camera = cameras[i % len(cameras) : i % len(cameras) + 1]
            camera.metadata = {"frame_idx": torch.tensor([[i % max(1, num_audio)]], device=model.device)}
            sync()
            start = time.perf_counter()
            model.get_outputs(camera)
            sync()
            if i >= 20:  # warm-up excluded
                times.append(time.perf_counter() - start)
    t = np.asarray(times) * 1000
    return {
        "frames": len(t),
        "median_ms": round(float(np.median(t)), 3),
        "p99_ms": round(float(np.percentile(t, 99)), 3),
        "fps_at_median": round(1000 / float(np.median(t)), 1),
    }


def save_heldout_video(pipeline, path: Path) -> int:
    """Ground truth | render for every held-out frame, as an mp4 (cv2, which the GPU machine has)."""
    import cv2
    import torch

    writer = None
    count = 0
    with torch.no_grad():
        for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
            pred = pipeline.model.get_outputs_for_camera(camera)["rgb"].clamp(0, 1).cpu().numpy()
            gt = batch["image"][..., :3].cpu().numpy()
            gt = gt / 255.0 if gt.dtype == np.uint8 else gt
            pair = (np.concatenate([gt, pred], axis=1) * 255).round().astype(np.uint8)[..., ::-1]
            if writer is None:
                height, width = pair.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))
            writer.write(np.ascontiguousarray(pair))
            count += 1
    if writer is not None:
        writer.release()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="gstalker", choices=["gstalker", "splatfacto"])
    parser.add_argument("--subject", type=Path, required=True)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=8000)
    parser.add_argument("--train-timeout", type=float, default=330.0)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--speed-frames", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_out")))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gstalker_bench"))
    parser.add_argument("--save-renders", action="store_true", help="also write OUT/METHOD_heldout.mp4 (ground truth | render)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="extra ns-train arguments after --")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]

    import torch

    from gstalker_ns import _compat

    _compat.apply_all()
    report = {"method": args.method, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    if not (args.subject / "transforms.json").exists():
        from gstalker_ns.synth.subject import generate_subject

        start = time.perf_counter()
        generate_subject(args.subject, duration=args.duration, size=args.size, seed=args.seed, progress=False)
        report["synth_s"] = round(time.perf_counter() - start, 1)
    meta = json.loads((args.subject / "transforms.json").read_text())
    report["subject"] = {"frames": len(meta["frames"]), "size": f"{meta['width']}x{meta['height']}", "seed": args.seed}

    report["train"] = train(
        args.method, args.subject.resolve(), args.workdir, args.iterations, args.train_timeout, args.save_every, extra
    )
    print(json.dumps(report, indent=1), flush=True)

    from gstalker_ns.evaluation import evaluate_held_out, load_pipeline

    torch.cuda.reset_peak_memory_stats()
    pipeline, _, step = load_pipeline(Path(report["train"]["config"]))
    args.out.mkdir(parents=True, exist_ok=True)
    result = evaluate_held_out(pipeline, save_dir=args.workdir)
    heldout_png = args.workdir / "heldout_gt_vs_render.png"
    if heldout_png.exists():
        heldout_png.replace(args.out / f"{args.method}_heldout.png")
    report["heldout"] = result.summary()
    report["render_latency"] = render_latency(pipeline, args.speed_frames)
    report["gaussians"] = int(pipeline.model.num_points)
    report["peak_gpu_memory_render_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report["per_frame_mouth"] = {"render": result.mouth_render, "gt": result.mouth_gt}
    if args.save_renders:
        report["heldout_video_frames"] = save_heldout_video(pipeline, args.out / f"{args.method}_heldout.mp4")
    (args.out / f"{args.method}_results.json").write_text(json.dumps(report, indent=1) + "\n")
    summary = {k: v for k, v in report.items() if k != "per_frame_mouth"}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
