"""Held-out PSNR against training wall time, training to completion across several commands (GPU machine).

The device runs one command for at most 10 minutes, so a full training run (30k steps) is done in
segments: each call trains for at most `--segment-seconds`, then stops; the next call resumes from
the latest checkpoint (`ns-train --load-dir`). Every checkpoint (saved every `--save-every` steps,
all kept) is stamped with the training wall time reached so far: the sum over segments of
(checkpoint file time - segment start). Segment restarts (about 20-30 s of start-up each) are
counted as training time, so the curve is slightly pessimistic.

    python benchmarks/gpu_time_curve.py train --method gstalker --subject DIR --segment-seconds 540
    python benchmarks/gpu_time_curve.py train ...          # again, until it prints "finished"
    python benchmarks/gpu_time_curve.py evaluate --method gstalker --subject DIR --marks 5,10,20,40 --out $OUT

`evaluate` scores, for each mark (minutes), the last checkpoint saved by then (the final one when
training finished earlier): held-out PSNR/SSIM and the mouth-opening correlation; then for the
final checkpoint the batch-1 render latency (CUDA-synchronised, median/p99) and peak GPU memory
in rendering. Peak GPU memory in training is recorded by the training process itself.
Results: OUT/METHOD_time_curve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_train_eval import render_latency, run_with_budget  # noqa: E402

# Run inside ns-train's process: record its peak CUDA memory when it exits (normally or on SIGINT).
LAUNCHER = """
import atexit, json, os, sys, torch
import gstalker_ns._compat as c
c.apply_all()
def _peak():
    if torch.cuda.is_available():
        with open(os.environ["GSTALKER_PEAK_FILE"], "w") as f:
            json.dump({"peak_gpu_memory_train_gb": torch.cuda.max_memory_allocated() / 2**30}, f)
atexit.register(_peak)
from nerfstudio.scripts.train import entrypoint
entrypoint()
"""


def run_dir(workdir: Path, method: str) -> Path:
    return workdir / "bench" / method / "run"


def checkpoints(model_dir: Path) -> Dict[int, Path]:
    out = {}
    for p in model_dir.glob("step-*.ckpt"):
        out[int(p.stem.split("-")[1])] = p
    return out


def load_timeline(workdir: Path, method: str) -> dict:
    path = workdir / f"{method}_timeline.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"segments": [], "checkpoint_seconds": {}, "finished": False, "peak_gpu_memory_train_gb": 0.0}


def save_timeline(workdir: Path, method: str, timeline: dict) -> None:
    path = workdir / f"{method}_timeline.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(timeline, indent=1))
    tmp.replace(path)


def train_segment(args: argparse.Namespace, extra: List[str]) -> dict:
    """Train (or resume) for up to --segment-seconds; stamp new checkpoints with wall time."""
    workdir = args.workdir
    timeline = load_timeline(workdir, args.method)
    if timeline["finished"]:
        return timeline
    rd = run_dir(workdir, args.method)
    model_dir = rd / "nerfstudio_models"
    before = checkpoints(model_dir)
    elapsed_before = sum(s["seconds"] for s in timeline["segments"])
    common = [
        f"--output-dir={workdir}",
        "--experiment-name=bench",
        "--timestamp=run",
        "--vis=tensorboard",
        "--viewer.quit-on-train-completion=True",
        # nerfstudio counts --max-num-iterations from the resumed step: ask only for what is left
        f"--max-num-iterations={args.iterations - (max(before) + 1 if before else 0)}",
        f"--steps-per-save={args.save_every}",
        "--save-only-latest-checkpoint=False",
        "--steps-per-eval-image=1000000",
        "--steps-per-eval-batch=1000000",
        "--steps-per-eval-all-images=1000000",
        "--logging.steps-per-log=100",
    ]
    if before:
        common.append(f"--load-dir={model_dir}")
    if args.method == "gstalker":
        command = ["gstalker", f"--data={args.subject.resolve()}", *common, *extra]
    else:  # plain splatfacto on the same folder, through our dataparser
        command = [args.method, *common, *extra, "talking-portrait", f"--data={args.subject.resolve()}"]
    workdir.mkdir(parents=True, exist_ok=True)
    peak_file = workdir / f"{args.method}_peak_{len(timeline['segments'])}.json"
    env = {**os.environ, "GSTALKER_PEAK_FILE": str(peak_file)}
    log_path = workdir / f"{args.method}_train_{len(timeline['segments'])}.log"
    start_wall = time.time()
    returncode, timed_out = run_with_budget([sys.executable, "-c", LAUNCHER, *command], log_path, args.segment_seconds, env)
    finished = returncode == 0 and not timed_out
    seconds = time.time() - start_wall
    after = checkpoints(model_dir)
    if not after:
        raise SystemExit(f"no checkpoint written; log tail:\n{log_path.read_text()[-3000:]}")
    for step, path in sorted(after.items()):
        if step not in before:
            timeline["checkpoint_seconds"][str(step)] = round(elapsed_before + path.stat().st_mtime - start_wall, 2)
    if peak_file.exists():
        peak = json.loads(peak_file.read_text())["peak_gpu_memory_train_gb"]
        timeline["peak_gpu_memory_train_gb"] = max(timeline["peak_gpu_memory_train_gb"], round(peak, 2))
    last_stamp = max(float(v) for v in timeline["checkpoint_seconds"].values())
    timeline["segments"].append(
        {"seconds": round(min(seconds, last_stamp - elapsed_before) if not finished else seconds, 2),
         "steps": [min(after), max(after)], "exit": returncode, "log": str(log_path)}
    )
    timeline["finished"] = bool(finished) or max(after) >= args.iterations - 1
    timeline["config"] = str(rd / "config.yml")
    save_timeline(workdir, args.method, timeline)
    return timeline


def checkpoint_at(timeline: dict, minutes: float) -> Optional[int]:
    """The last checkpoint stamped at or before `minutes` of training."""
    stamped = [(float(s), int(k)) for k, s in timeline["checkpoint_seconds"].items()]
    eligible = [k for s, k in stamped if s <= minutes * 60.0 + 1e-6]
    return max(eligible) if eligible else None


def evaluate(args: argparse.Namespace) -> dict:
    import torch

    from gstalker_ns.checkpoint import load_trained_pipeline
    from gstalker_ns.evaluation import evaluate_held_out

    timeline = load_timeline(args.workdir, args.method)
    config = Path(timeline["config"])
    final_step = max(int(k) for k in timeline["checkpoint_seconds"])
    report: dict = {
        "method": args.method,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "finished": timeline["finished"],
        "final_step": final_step,
        "wall_seconds_to_final": timeline["checkpoint_seconds"][str(final_step)],
        "segments": timeline["segments"],
        "peak_gpu_memory_train_gb": timeline["peak_gpu_memory_train_gb"],
        "marks": {},
    }
    scored: Dict[int, dict] = {}
    marks = [float(m) for m in args.marks.split(",")]
    for step in sorted({s for s in (checkpoint_at(timeline, m) for m in marks) if s is not None} | {final_step}):
        pipeline, _, _, _ = load_trained_pipeline(config, require_method=None, step=step)
        summary = evaluate_held_out(pipeline).summary()
        scored[step] = {"step": step, "wall_seconds": timeline["checkpoint_seconds"][str(step)], **summary}
        if step == final_step:
            torch.cuda.reset_peak_memory_stats()
            report["render_latency"] = render_latency(pipeline, args.speed_frames)
            report["peak_gpu_memory_render_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            report["gaussians"] = int(pipeline.model.num_points)
        del pipeline
        torch.cuda.empty_cache()
    for m in marks:
        step = checkpoint_at(timeline, m)
        report["marks"][f"{m:g}min"] = None if step is None else {**scored[step], "final_checkpoint": step == final_step}
    report["final"] = scored[final_step]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.method}_time_curve.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "evaluate"])
    parser.add_argument("--method", default="gstalker", choices=["gstalker", "splatfacto"])
    parser.add_argument("--subject", type=Path, required=True, help="training folder (generated if --synth-duration)")
    parser.add_argument("--synth-duration", type=float, help="make a synthetic subject of this length first if missing")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=30000)
    parser.add_argument("--segment-seconds", type=float, default=540.0)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--marks", default="5,10,20,40")
    parser.add_argument("--speed-frames", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_out")))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gstalker_curve"))
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    extra = argv[split + 1 :]  # extra ns-train arguments after --
    from gstalker_ns import _compat

    _compat.apply_all()
    if args.synth_duration and not (args.subject / "transforms.json").exists():
        from gstalker_ns.synth.subject import generate_subject

        generate_subject(args.subject, duration=args.synth_duration, size=args.size, seed=0, progress=False)
    if args.action == "train":
        timeline = train_segment(args, extra)
        last = max(int(k) for k in timeline["checkpoint_seconds"])
        state = "finished" if timeline["finished"] else "unfinished: run train again"
        print(f"{args.method}: step {last} after {timeline['checkpoint_seconds'][str(last)]:.0f} s of training; {state}")
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
