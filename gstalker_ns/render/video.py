"""The render loop: a trained model + per-frame drive (audio rows, blinks, poses) -> an mp4 with sound.

Frames are rendered on the model's device in a background thread while the main thread encodes,
so the GPU and the encoder work at the same time; the queue between them is short, so memory
stays flat for any audio length.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch

from gstalker_ns.drive.poses import PoseTrack
from gstalker_ns.media.video import write_mp4
from gstalker_ns.progress import progress_bar
from gstalker_ns.render.frames import colour_only, side_by_side, to_uint8


@dataclass
class RenderReport:
    """What was written and how fast (render + encode, wall clock)."""

    output: Path
    num_frames: int
    fps: float
    audio_seconds: float
    wall_seconds: float

    @property
    def frames_per_second(self) -> float:
        """End-to-end throughput: frames written per wall-clock second, encoding included."""
        return self.num_frames / max(self.wall_seconds, 1e-9)

    def as_dict(self) -> dict:
        return {
            "output": str(self.output),
            "num_frames": self.num_frames,
            "fps": self.fps,
            "audio_seconds": self.audio_seconds,
            "wall_seconds": self.wall_seconds,
            "frames_per_second": self.frames_per_second,
        }


@contextmanager
def driven(model, features: Optional[np.ndarray], blink: Optional[np.ndarray]):
    """Temporarily drive `model` with another feature table and blink track; restored afterwards."""
    saved = (model.audio_table, model.blink_table)
    try:
        if features is not None:
            model.set_drive(torch.from_numpy(np.asarray(features)), None if blink is None else torch.from_numpy(blink))
        yield model
    finally:
        model.audio_table, model.blink_table = saved


def render_batch_size(model) -> int:
    """Frames per rasterization for file renders: several on a GPU (one tile pass for all of them,
    `model.render_batch`), one on the CPU (the pure-PyTorch rasterizer renders frames one by one
    anyway, and a batch only holds more memory)."""
    if not hasattr(model, "render_batch"):
        return 1
    return RENDER_BATCH if torch.device(model.device).type == "cuda" else 1


RENDER_BATCH = 16


@torch.no_grad()
def render_frames(
    model, poses: PoseTrack, rows: Sequence[int], scale: float = 1.0, batch: Optional[int] = None
) -> Iterator[np.ndarray]:
    """Render output frame k at pose k driven by feature row rows[k]; yields uint8 RGB frames.
    `batch` frames go through one rasterization (default: `render_batch_size`)."""
    batch = render_batch_size(model) if batch is None else max(1, int(batch))
    with colour_only(model):
        for start in range(0, len(poses), batch):
            stop = min(start + batch, len(poses))
            yield from render_group(model, poses.cameras(start, stop, [int(r) for r in rows[start:stop]], scale))


def render_group(model, cameras) -> List[np.ndarray]:
    """uint8 RGB frames of a `Cameras` batch (each with its `frame_idx`): one rasterization for
    several cameras (`model.render_batch`, one copy to the host), one frame at a time for a single
    camera or once the batched path has failed on this model. The batched path calls gsplat's
    lower-level functions, whose signatures another gsplat version may change; it then warns once
    and the one-frame path, correct but slower, takes over."""
    count = cameras.shape[0]
    if count > 1 and not getattr(model, "_batched_render_failed", False):
        try:
            return list(to_uint8(model.render_batch(cameras)))
        except (RuntimeError, TypeError, ValueError, AttributeError, ImportError) as exc:
            import warnings

            model._batched_render_failed = True
            warnings.warn(f"batched rendering failed ({type(exc).__name__}: {str(exc)[:200]}); rendering one frame at a time")
    if count == 1:
        return [to_uint8(model.get_outputs_for_camera(cameras)["rgb"])]
    return [to_uint8(model.get_outputs_for_camera(cameras[j : j + 1])["rgb"]) for j in range(count)]


def in_background(frames: Iterable[np.ndarray], depth: int = 8) -> Iterator[np.ndarray]:
    """Run a frame generator in a thread, `depth` frames ahead of the consumer (errors re-raised here)."""
    buffer: "queue.Queue" = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in frames:
                while not stop.is_set():
                    try:
                        buffer.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(done)
        except BaseException as exc:  # handed to the consumer
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="gstalker-render", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _counted(frames: Iterable[np.ndarray], total: int, desc: str, show: bool) -> Iterator[np.ndarray]:
    with progress_bar(total, desc, enabled=show) as bar:
        for frame in frames:
            bar.update(1)
            yield frame


def write_video(
    output: Path,
    frames: Iterable[np.ndarray],
    num_frames: int,
    fps: float,
    audio: np.ndarray,
    sample_rate: int,
    crf: int = 18,
    show_progress: bool = True,
    desc: str = "render",
) -> RenderReport:
    """Encode frames (rendered in a background thread) with the audio muxed in; time the whole run."""
    start = time.perf_counter()
    stream = _counted(in_background(frames), num_frames, desc, show_progress)
    write_mp4(output, stream, fps=fps, audio=audio, sample_rate=sample_rate, crf=crf)
    wall = time.perf_counter() - start
    return RenderReport(
        output=Path(output),
        num_frames=num_frames,
        fps=fps,
        audio_seconds=float(np.asarray(audio).size) / sample_rate,
        wall_seconds=wall,
    )


def with_ground_truth(frames: Iterable[np.ndarray], ground_truth: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """ground truth | render, frame by frame."""
    for render, truth in zip(frames, ground_truth):
        yield side_by_side([truth, render])
