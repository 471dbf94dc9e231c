"""How fast a trained gstalker model renders: batch-1 latency, where the time goes, host syncs.

    python benchmarks/render_speed.py --load-config RUN/config.yml --out render_speed.json   # GPU machine

For the held-out cameras of the run, the audio frame advancing with each camera (as in
`gstalker-eval` and `gstalker-render`), it measures:
- batch1: `model.get_outputs_for_camera(camera)` inside `model.colour_only()` (the product path: audio row -> expression ->
  deformation -> raster -> composite over the background plate), CUDA synchronised before and
  after each frame; median, p99 and frames per second at the median, warm-up excluded;
- batch1_eager: the same with the model's CUDA graph of deformation + projection switched off
  (`inference_graph=False`), and graph_vs_eager: the largest pixel difference between the two
  paths on the same frames, and whether a graph was captured (or why it was refused);
- breakdown_ms: device time per frame under the model's profiler scopes (gstalker.project: the
  deformation and projection, replayed from the graph; gstalker.deform / gstalker.raster on the
  eager path; gstalker.composite), the whole frame's CPU time, and host synchronisations
  per frame (cudaStreamSynchronize / cudaDeviceSynchronize calls), from torch.profiler;
- render_loop / render_loop_batched: `gstalker_ns.render.video.render_frames` (frames rendered on
  the device and copied to the host as uint8) without encoding, one frame per call and at the
  product's batch size (`render_batch_size`); the GPU machine has no H.264 encoder;
- batched, batched_by_size: `model.render_batch` (B frames, each with its own deformed Gaussians,
  in one rasterization): frames per second, and its largest difference from single-frame renders.
A part that fails is recorded as {"error": ...} and the others still run.

It writes the JSON to --out; `--merge` adds the held-out quality numbers from a
`gstalker-eval` metrics.json analysed elsewhere (the GPU machine lacks mediapipe).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SCOPES = ("gstalker.deform", "gstalker.project", "gstalker.raster", "gstalker.composite")


def _held_out_cameras(pipeline):
    """The held-out frames' `Cameras` on the host (training frames if none)."""
    dataset = pipeline.datamanager.eval_dataset
    if dataset is None or len(dataset) == 0:
        dataset = pipeline.datamanager.train_dataset
    return dataset.cameras


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def batch1_latency(model, cameras: List, frames: int, warmup: int = 20) -> Dict:
    """Per-frame wall time of get_outputs_for_camera, synchronised on both sides."""
    import torch

    from gstalker_ns.render.frames import colour_only

    times = []
    with torch.no_grad(), colour_only(model):  # as gstalker-render and gstalker-eval render
        for i in range(frames + warmup):
            camera = cameras[i % len(cameras)]
            _sync()
            start = time.perf_counter()
            model.get_outputs_for_camera(camera)
            _sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    t = np.asarray(times) * 1000.0
    median = float(np.median(t))
    return {
        "frames": int(len(t)),
        "median_ms": round(median, 3),
        "p99_ms": round(float(np.percentile(t, 99)), 3),
        "fps": round(1000.0 / median, 1),
    }


@contextlib.contextmanager
def graph_setting(model, enabled: bool):
    """The model's `inference_graph` switch set for the block, restored after it."""
    saved = model.config.inference_graph
    model.config.inference_graph = enabled
    try:
        yield
    finally:
        model.config.inference_graph = saved


def graph_vs_eager(model, cameras: List, frames: int = 20) -> Dict:
    """Largest pixel difference between the graph-replayed and the eager renders of the same frames."""
    import torch

    from gstalker_ns.render.frames import colour_only

    with torch.no_grad(), colour_only(model):
        with graph_setting(model, False):
            eager = [model.get_outputs_for_camera(c)["rgb"].clone() for c in cameras[:frames]]
        with graph_setting(model, True):
            for _ in range(2):  # the first pass may capture; the second replays
                graphed = [model.get_outputs_for_camera(c)["rgb"].clone() for c in cameras[:frames]]
    worst = max(float((a - b).abs().max()) for a, b in zip(eager, graphed))
    programs = model.__dict__.get("_programs", {})
    captured = bool(programs.get(1)) and programs[1][1].captured
    return {"max_abs_diff": round(worst, 7), "captured": captured, "graph_failed": bool(getattr(model, "_graph_failed", False)),
            "graph_failure": getattr(model, "_graph_failure", None)}


def _eager_latency(model, cameras: List, frames: int) -> Dict:
    with graph_setting(model, False):
        return batch1_latency(model, cameras, frames)


def breakdown(model, cameras: List, frames: int = 50) -> Dict:
    """Device time per frame under each profiler scope, CPU time per frame, host syncs per frame."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from gstalker_ns.render.frames import colour_only

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.no_grad(), colour_only(model):
        for camera in cameras[:5]:  # warm
            model.get_outputs_for_camera(camera)
        _sync()
        with profile(activities=activities) as prof:
            for i in range(frames):
                model.get_outputs_for_camera(cameras[i % len(cameras)])
            _sync()
    events = prof.key_averages()
    out: Dict = {}
    syncs = 0
    kernel_us = 0.0
    for event in events:
        key = event.key
        device_us = float(getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0.0)) or 0.0)
        if key in SCOPES:
            out[key.split(".")[1] + "_ms"] = round(device_us / frames / 1000.0, 4)
            out[key.split(".")[1] + "_cpu_ms"] = round(event.cpu_time_total / frames / 1000.0, 4)
        if key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"):
            syncs += event.count
        if getattr(event, "device_type", None) is not None and str(event.device_type).endswith("CUDA"):
            kernel_us += float(getattr(event, "self_device_time_total", 0.0) or 0.0)
    out["host_syncs_per_frame"] = round(syncs / frames, 2)
    if kernel_us:
        out["device_total_ms"] = round(kernel_us / frames / 1000.0, 4)
    top = sorted(events, key=lambda e: -float(getattr(e, "self_device_time_total", 0.0) or 0.0))[:12]
    out["top_kernels_ms"] = {
        e.key[:80]: round(float(getattr(e, "self_device_time_total", 0.0) or 0.0) / frames / 1000.0, 4) for e in top
    }
    return out


def render_loop(model, pipeline, frames: int, batch: int = 1) -> Dict:
    """The product's render loop (render_frames, uint8 frames on the host), no encoding."""
    from gstalker_ns.drive.poses import pose_track
    from gstalker_ns.render.video import render_frames

    cameras = pipeline.datamanager.train_dataset.cameras
    rows = np.arange(frames) % len(model.audio_table)
    for _ in render_frames(model, pose_track("train", 2 * batch, 25.0, 25.0, cameras), rows[: 2 * batch], batch=batch):
        pass  # warm
    poses = pose_track("train", frames, 25.0, 25.0, cameras)
    _sync()
    start = time.perf_counter()
    count = sum(1 for _ in render_frames(model, poses, rows, batch=batch))
    wall = time.perf_counter() - start
    return {
        "frames": count,
        "batch": batch,
        "frames_per_s": round(count / wall, 1),
        "how": "render_frames, uint8 on the host, no encoder",
    }


def batched(model, cameras, batch: int, rounds: int = 10) -> Dict:
    """model.render_batch on `batch` held-out cameras: frames/s of the render alone (images stay on
    the device), and the largest difference from rendering the same frames one at a time."""
    if not hasattr(model, "render_batch"):
        return {"unavailable": "this version has no batched renderer"}
    import torch

    from gstalker_ns.render.frames import colour_only

    stacked = cameras[: min(batch, cameras.shape[0])]  # one Cameras of `batch` frames
    group = [stacked[i : i + 1] for i in range(stacked.shape[0])]
    with torch.no_grad(), colour_only(model):
        images = model.render_batch(stacked)
        singles = torch.stack([model.get_outputs_for_camera(c)["rgb"] for c in group])
        _sync()
        start = time.perf_counter()
        for _ in range(rounds):
            model.render_batch(stacked)
        _sync()
    wall = time.perf_counter() - start
    return {
        "batch": len(group),
        "frames_per_s": round(len(group) * rounds / wall, 1),
        "max_abs_diff_vs_single_frames": round(float((images - singles).abs().max()), 6),  # must be ~0
    }


def _guarded(result: Dict, key: str, fn, *args, **kwargs) -> None:
    """One measurement; a failure is recorded instead of losing the others (a GPU call is costly)."""
    try:
        result[key] = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        import traceback

        traceback.print_exc()
        result[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}


def measure(config: Path, frames: int, batch: int) -> Dict:
    import torch

    from gstalker_ns import _compat

    _compat.apply_all()
    from gstalker_ns.checkpoint import load_trained_pipeline

    pipeline, _, _, _ = load_trained_pipeline(config)
    model = pipeline.model
    model.eval()
    all_cameras = _held_out_cameras(pipeline)
    cameras = [all_cameras[i : i + 1] for i in range(all_cameras.shape[0])]  # one camera per frame
    result = {
        "config": str(config),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "gaussians": int(model.num_points),
        "image": [int(cameras[0].height.item()), int(cameras[0].width.item())],
    }
    from gstalker_ns.render.video import render_batch_size

    _guarded(result, "batch1", batch1_latency, model, cameras, frames)
    _guarded(result, "batch1_eager", _eager_latency, model, cameras, frames)
    _guarded(result, "graph_vs_eager", graph_vs_eager, model, cameras)
    _guarded(result, "breakdown_ms", breakdown, model, cameras, min(frames, 50))
    _guarded(result, "render_loop", render_loop, model, pipeline, frames, 1)
    _guarded(result, "render_loop_batched", render_loop, model, pipeline, frames, render_batch_size(model))
    _guarded(result, "batched", batched, model, all_cameras, batch)
    sizes = {}
    for size in (4, 8, 32, 64):
        _guarded(sizes, str(size), batched, model, all_cameras, size)
    result["batched_by_size"] = sizes
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load-config", type=Path, help="config.yml of a trained gstalker run")
    p.add_argument("--out", type=Path, required=True, help="JSON to write (or to update with --merge)")
    p.add_argument("--frames", type=int, default=300, help="timed frames (warm-up excluded)")
    p.add_argument("--batch", type=int, default=16, help="frames per batched render call")
    p.add_argument("--merge", type=Path, help="a gstalker-eval metrics.json to add as 'heldout'")
    p.add_argument("--merge-key", default="heldout", help="key for --merge (heldout or baseline_heldout)")
    args = p.parse_args(argv)
    if args.merge is not None:
        result = json.loads(args.out.read_text())
        metrics = json.loads(args.merge.read_text())
        source = metrics.get("metrics", metrics)
        result[args.merge_key] = {k: source.get(k) for k in ("psnr", "mouth_opening_correlation", "lmd", "blink_correlation")}
    else:
        if args.load_config is None:
            p.error("--load-config is needed to measure")
        result = measure(args.load_config, args.frames, args.batch)
    from results_io import write_result

    write_result(args.out, result, "render_speed")
    print(json.dumps({k: v for k, v in result.items() if k != "breakdown_ms"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
