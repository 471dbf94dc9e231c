"""What `gstalker-eval` shows besides metrics.json: a plot, a frame grid, a video and a table.

- ``mouth_opening.png``: mouth opening over time, ground truth and each method (matplotlib);
- ``best_worst_frames.png``: the frames where the first method's PSNR is lowest and highest, each
  row ground truth | method renders, labelled with the frame index and PSNR;
- ``side_by_side.mp4`` (written by analysis with gstalker_ns.media.video.write_mp4): ground truth |
  method renders for every frame, with the clip's sound;
- the printed table: methods side by side, the ground truth's own lip-sync numbers alongside.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from gstalker_ns.data.layout import atomic_write_bytes

GRID_ROWS = 3  # worst and best each
GRID_PANEL_HEIGHT = 256


def plot_mouth_opening(path: Path, times: Sequence[float], series: Dict[str, Sequence[float]], ylabel: str, title: str) -> None:
    """Line plot of each series over time (seconds); NaN gaps stay gaps. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=100)
    try:
        for i, (label, values) in enumerate(series.items()):
            style = {"color": "black", "linewidth": 2.0} if i == 0 else {"linewidth": 1.4}
            ax.plot(np.asarray(times, dtype=float), np.asarray(values, dtype=float), label=label, **style)
        ax.set_xlabel("time in the clip (s)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _label(image: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    box = draw.textbbox((3, 2), text)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255))
    return np.asarray(im)


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    if image.shape[0] == height:
        return image
    width = max(1, int(round(image.shape[1] * height / image.shape[0])))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def frame_grid(path: Path, rows: List[List[np.ndarray]], captions: List[List[str]]) -> None:
    """PNG of rows of panels (each row: ground truth | renders), every panel captioned."""
    from gstalker_ns.evaluation.store import png_bytes
    from gstalker_ns.render.frames import side_by_side

    height = min(GRID_PANEL_HEIGHT, max(p.shape[0] for row in rows for p in row))
    height = max(height, 96)  # tiny frames are enlarged so the captions stay readable
    lines = []
    for row, caps in zip(rows, captions):
        panels = [_label(_fit_height(p, height), c) for p, c in zip(row, caps)]
        lines.append(side_by_side(panels, gap=2))
        lines.append(np.full((2, lines[-1].shape[1], 3), 255, dtype=np.uint8))
    atomic_write_bytes(Path(path), png_bytes(np.concatenate(lines[:-1], axis=0)))


def worst_and_best(values: Sequence[float], count: int = GRID_ROWS) -> Tuple[List[int], List[int]]:
    """Positions of the ``count`` lowest and of the ``count`` highest finite values (highest first;
    a position is never in both)."""
    arr = np.asarray(values, dtype=float)
    order = [int(i) for i in np.argsort(np.where(np.isfinite(arr), arr, np.inf), kind="stable") if np.isfinite(arr[i])]
    worst = order[:count]
    best = [i for i in reversed(order) if i not in worst][:count]
    return worst, best


def _cell(value, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


TABLE_ROWS = (
    ("PSNR full frame (dB)", "psnr", 2),
    ("SSIM full frame", "ssim", 4),
    ("LPIPS full frame", "lpips", 4),
    ("PSNR face crop (dB)", "face_psnr", 2),
    ("SSIM face crop", "face_ssim", 4),
    ("LPIPS face crop", "face_lpips", 4),
    ("LMD mouth (px at 512)", "lmd", 2),
    ("mouth opening corr. vs GT", "mouth_opening_correlation", 3),
    ("mouth darkness corr. vs GT", "mouth_darkness_correlation", 3),
    ("AV offset (ms, + = video late)", "av_offset_ms", 0),
    ("AV corr. at that offset", "av_offset_correlation", 3),
    ("render ms/frame (median)", "render_ms_median", 2),
)


def format_table(payload: Dict) -> str:
    """The summary as a plain-text table: one column per method, then the ground truth."""
    methods: List[str] = list(payload["methods"])
    columns = methods + ["ground truth"]
    gt = payload.get("ground_truth", {}).get("summary", {})
    body = []
    for title, key, digits in TABLE_ROWS:
        cells = [_cell(payload["methods"][m]["summary"].get(key), digits) for m in methods]
        cells.append(_cell(gt.get(key), digits) if key in gt else "")
        body.append([title] + cells)
    header = ["metric"] + columns
    widths = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
