"""Small pure helpers shared by `gstalker-render` and `gstalker-eval`: image conversion,
side-by-side composition, and cutting the sound that belongs to a run of video frames."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch


def colour_only(model):
    """`model.colour_only()` where the model has it (no depth channel for file renders), else nothing."""
    import contextlib

    method = getattr(model, "colour_only", None)
    return method() if callable(method) else contextlib.nullcontext()


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0, 1] (tensor or array) -> contiguous uint8 RGB. A tensor is converted
    on its own device, so only the small uint8 image crosses to the host."""
    if isinstance(image, torch.Tensor):
        return (image[..., :3].detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image[..., :3])
    return np.ascontiguousarray((np.clip(image[..., :3], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def side_by_side(panels: Sequence[np.ndarray], gap: int = 0) -> np.ndarray:
    """Concatenate uint8 [H, W, 3] images left to right; shorter ones are padded at the bottom."""
    height = max(p.shape[0] for p in panels)
    parts = []
    for i, p in enumerate(panels):
        if p.shape[0] < height:
            p = np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)))
        parts.append(p)
        if gap and i < len(panels) - 1:
            parts.append(np.full((height, gap, 3), 255, dtype=np.uint8))
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def audio_for_frames(wave: np.ndarray, sample_rate: int, first_frame: int, num_frames: int, fps: float) -> np.ndarray:
    """The samples shown with frames first_frame .. first_frame+num_frames-1 (frame k covers
    [k/fps, (k+1)/fps)); zero-padded when the recording ends early, so durations always agree."""
    start = int(round(first_frame / fps * sample_rate))
    stop = int(round((first_frame + num_frames) / fps * sample_rate))
    out = np.zeros(max(0, stop - start), dtype=np.float32)
    piece = np.asarray(wave, dtype=np.float32)[max(0, start) : max(0, stop)]
    out[: piece.size] = piece
    return out


def read_rgb(path: Path, size: Optional[tuple] = None) -> np.ndarray:
    """An image file as uint8 RGB, optionally resized to (height, width)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and (im.height, im.width) != tuple(size):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).copy()
