"""Preview images of a `gstalker-process` run: check what was tracked before spending GPU time.

    paths = write_previews(out_dir, frames_dir, masks_dir, points, poses, blink, lip_distance,
                           plate, never_seen, valid, fps)      # -> OUT/previews/*.png

Three PNGs in ``OUT/previews`` (written atomically):

* ``overlays.png``: ``num_samples`` frames spread evenly over the clip in a grid (up to 3 per
  row, each panel :data:`PANEL_SIZE` px wide). Each frame has its label map blended in colour
  (legend in the top strip), all 478 landmarks as small dots with the face oval, lips and eyes
  emphasised, and the frame index and time in the top-left corner. Frames without a face
  (``valid`` False) get a red border and "NO FACE"; no landmarks are drawn on them.
* ``background.png``: the background plate, and next to it the plate with the never-seen
  (inpainted, guessed) pixels tinted magenta; the percentage is in the title strip.
* ``tracks.png`` (matplotlib, Agg): against time in seconds, head yaw/pitch/roll (degrees),
  head translation x/y/z, the blink signal, the inner-lip distance and the per-frame
  reprojection error; frames without a face are shaded grey.

**Euler angles.** ``head_rotation`` R maps head coordinates to the OpenCV camera
(``x_cv = R p + t``; camera x right, y down, z into the scene; head frame x towards the
subject's left, y up, z out of the face, see :mod:`gstalker_ns.preprocess.pose`). With
F = diag(1, -1, -1) (camera axes x right, y up, z towards the viewer), M = F R is the identity
for a face looking straight into the camera, and is decomposed as
``M = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` (intrinsic y-x'-z'', i.e. yaw about the vertical first):
yaw > 0: the nose turns towards image right (the subject's left); pitch > 0: the nose points
down; roll > 0: the head tilts so that its top leans towards image left. Translation is ``t``
in OpenCV camera axes (x right, y down, z depth), in head-frame units, plotted around each
component's clip median (given in the legend). The head frame's "up" is approximate, so a
constant pitch offset (about -20 degrees on the synthetic subject) is expected; look at changes.

Only the sampled frames and masks are read, so this takes about a second for any clip length.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from gstalker_ns.data.layout import (
    LABEL_HEAD,
    LABEL_LIPS,
    LABEL_MOUTH_INTERIOR,
    LABEL_TORSO,
    atomic_write_bytes,
)

PREVIEWS_DIR = "previews"
OVERLAYS_FILE = "overlays.png"
BACKGROUND_FILE = "background.png"
TRACKS_FILE = "tracks.png"
PANEL_SIZE = 320  # width of one overlay panel in px (frames are resized to it)
GRID_COLUMNS = 3
HEADER_HEIGHT = 36  # legend / title strip in px
MASK_ALPHA = 0.45

# label -> (name, RGB colour)
LABEL_COLOURS: Dict[int, Tuple[str, Tuple[int, int, int]]] = {
    LABEL_HEAD: ("head", (60, 140, 255)),
    LABEL_TORSO: ("torso", (60, 200, 90)),
    LABEL_LIPS: ("lips", (255, 50, 50)),
    LABEL_MOUTH_INTERIOR: ("mouth interior", (255, 220, 0)),
}
_NEVER_SEEN_TINT = (255, 0, 255)
_NO_FACE_COLOUR = (230, 30, 30)
_FRAME_FILE_RE = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def _feature_indices() -> Dict[str, Tuple[Sequence[int], Tuple[int, int, int]]]:
    from gstalker_ns.preprocess.landmarks import LEFT_EYE, RIGHT_EYE
    from gstalker_ns.preprocess.masks import FACE_OVAL, LIPS_INNER, LIPS_OUTER

    return {
        "face_oval": (FACE_OVAL, (0, 255, 255)),
        "lips_outer": (LIPS_OUTER, (255, 120, 200)),
        "lips_inner": (LIPS_INNER, (255, 120, 200)),
        "right_eye": (RIGHT_EYE, (255, 150, 0)),
        "left_eye": (LEFT_EYE, (255, 150, 0)),
    }


def sample_indices(num_frames: int, num_samples: int) -> List[int]:
    """``num_samples`` frame indices spread evenly over the clip, first and last included."""
    if num_frames <= 0 or num_samples <= 0:
        return []
    n = min(num_samples, num_frames)
    return np.linspace(0, num_frames - 1, n).round().astype(int).tolist()


def grid_shape(num_panels: int, columns: int = GRID_COLUMNS) -> Tuple[int, int]:
    """(rows, cols) of the overlay grid."""
    cols = max(1, min(columns, num_panels))
    return int(np.ceil(num_panels / cols)), cols


def head_euler_degrees(head_rotation: np.ndarray) -> np.ndarray:
    """[N, 3, 3] head -> OpenCV camera rotations -> [N, 3] (yaw, pitch, roll) in degrees (module doc)."""
    R = np.asarray(head_rotation, dtype=np.float64)
    M = np.diag([1.0, -1.0, -1.0]) @ R
    yaw = np.arctan2(M[..., 0, 2], M[..., 2, 2])
    pitch = np.arcsin(np.clip(-M[..., 1, 2], -1.0, 1.0))
    roll = np.arctan2(M[..., 1, 0], M[..., 1, 1])
    return np.degrees(np.stack([yaw, pitch, roll], axis=-1))


def _png_bytes_rgb(image: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError("could not encode PNG")
    return encoded.tobytes()


def _text(img: np.ndarray, text: str, org: Tuple[int, int], scale: float = 0.5, colour=(255, 255, 255)) -> None:
    """Text with a dark outline, readable on any background (img is RGB, drawn in place)."""
    import cv2

    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _frame_files(frames_dir: Path) -> Dict[int, Path]:
    files: Dict[int, Path] = {}
    for p in Path(frames_dir).iterdir():
        m = _FRAME_FILE_RE.match(p.name)
        if m:
            files.setdefault(int(m.group(1)), p)
    return files


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"could not read {path}")
    return image[..., ::-1]


def _panel(
    frame: np.ndarray, labels, pts, has_face: bool, index: int, fps: float, features
) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    scale = PANEL_SIZE / float(w)
    out_h = max(1, int(round(h * scale)))
    img = frame.astype(np.float32)
    if labels is not None and labels.shape == (h, w):
        colour = np.zeros_like(img)
        alpha = np.zeros((h, w, 1), np.float32)
        for label, (_, rgb) in LABEL_COLOURS.items():
            sel = labels == label
            colour[sel] = rgb
            alpha[sel] = MASK_ALPHA
        img = img * (1 - alpha) + colour * alpha
    img = cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (PANEL_SIZE, out_h), interpolation=cv2.INTER_AREA)
    img = np.ascontiguousarray(img)
    if has_face and pts is not None and np.isfinite(pts).all():
        # continuous pixel coordinates -> resized panel pixels (centre of pixel u at u + 0.5)
        p = pts.astype(np.float64) * scale
        for x, y in p:
            cv2.circle(img, (int(x), int(y)), 1, (200, 200, 200), -1, cv2.LINE_AA)
        for name, (idx, rgb) in features.items():
            poly = np.round(p[list(idx)]).astype(np.int32)
            cv2.polylines(img, [poly.reshape(-1, 1, 2)], True, rgb, 1, cv2.LINE_AA)
            for x, y in poly:
                cv2.circle(img, (int(x), int(y)), 2, rgb, -1, cv2.LINE_AA)
    if not has_face:
        cv2.rectangle(img, (0, 0), (PANEL_SIZE - 1, out_h - 1), _NO_FACE_COLOUR, 4)
        _text(img, "NO FACE", (8, out_h - 12), 0.7, _NO_FACE_COLOUR)
    _text(img, f"#{index}  {index / fps:.2f} s", (6, 18), 0.5)
    return img


def write_overlays(
    path: Path, frames_dir: Path, masks_dir: Path, points: np.ndarray, valid: np.ndarray, fps: float, num_samples: int
) -> Path:
    import cv2

    num_frames = len(valid)
    indices = sample_indices(num_frames, num_samples)
    files = _frame_files(frames_dir)
    features = _feature_indices()
    panels = []
    for k in indices:
        if k not in files:
            raise ValueError(f"{frames_dir}: no image for frame {k}")
        frame = _read_rgb(files[k])
        mask_path = Path(masks_dir) / f"{k:06d}.png"
        labels = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED) if mask_path.is_file() else None
        if labels is not None and labels.ndim == 3:
            labels = labels[..., 0]
        panels.append(_panel(frame, labels, points[k] if k < len(points) else None, bool(valid[k]), k, fps, features))
    rows, cols = grid_shape(len(panels))
    ph = max(p.shape[0] for p in panels) if panels else PANEL_SIZE
    grid = np.full((HEADER_HEIGHT + rows * ph, cols * PANEL_SIZE, 3), 32, np.uint8)
    for i, p in enumerate(panels):
        r, c = divmod(i, cols)
        grid[HEADER_HEIGHT + r * ph : HEADER_HEIGHT + r * ph + p.shape[0], c * PANEL_SIZE : (c + 1) * PANEL_SIZE] = p
    x = 8
    for _, (name, rgb) in LABEL_COLOURS.items():
        cv2.rectangle(grid, (x, 10), (x + 16, 26), rgb, -1)
        _text(grid, name, (x + 22, 24), 0.5)
        x += 30 + 9 * len(name)
    if x < grid.shape[1] - 150:
        _text(grid, f"{int(np.sum(~np.asarray(valid, bool)))}/{num_frames} frames no face", (x + 10, 24), 0.5)
    atomic_write_bytes(path, _png_bytes_rgb(grid))
    return path


def write_background_preview(path: Path, plate: np.ndarray, never_seen: np.ndarray) -> Path:
    import cv2

    plate = np.asarray(plate, dtype=np.uint8)
    never = np.asarray(never_seen, dtype=bool)
    h, w = plate.shape[:2]
    tinted = plate.astype(np.float32)
    tinted[never] = 0.4 * tinted[never] + 0.6 * np.array(_NEVER_SEEN_TINT, np.float32)
    pair = np.concatenate([plate, np.clip(tinted, 0, 255).astype(np.uint8)], axis=1)
    scale = max(1.0, 2 * PANEL_SIZE / float(pair.shape[1]))  # small plates are enlarged to stay readable
    if scale > 1.0:
        pair = cv2.resize(pair, (int(round(pair.shape[1] * scale)), int(round(h * scale))), interpolation=cv2.INTER_NEAREST)
    out = np.full((pair.shape[0] + HEADER_HEIGHT, pair.shape[1], 3), 32, np.uint8)
    out[HEADER_HEIGHT:] = pair
    pct = 100.0 * float(never.mean()) if never.size else 0.0
    _text(out, f"background plate  |  never seen (inpainted, magenta): {pct:.1f}%", (8, 24), 0.5)
    atomic_write_bytes(path, _png_bytes_rgb(out))
    return path


def _runs(mask: np.ndarray) -> List[Tuple[int, int]]:
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(d[::2].tolist(), d[1::2].tolist()))


def write_tracks(
    path: Path, poses, blink: np.ndarray, lip_distance: np.ndarray, valid: np.ndarray, fps: float
) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg canvas; the global backend is left alone
    from matplotlib.figure import Figure

    valid = np.asarray(valid, bool)
    n = len(valid)
    t = np.arange(n) / fps
    euler = head_euler_degrees(poses.head_rotation)
    trans = np.asarray(poses.head_translation, dtype=np.float64)
    fig = Figure(figsize=(11, 10), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(5, 1, sharex=True)
    axes[0].set_title(f"{n} frames, {n / fps:.1f} s; grey = no face; Euler: M = Ry(yaw) Rx(pitch) Rz(roll)", fontsize=10)
    for name, col in zip(("yaw", "pitch", "roll"), euler.T):
        axes[0].plot(t, col, lw=1, label=name)
    axes[0].set_ylabel("rotation (deg)")
    for name, col in zip(("x", "y", "z"), trans.T):  # z (depth) is far larger: plot each around its median
        med = float(np.nanmedian(col)) if np.isfinite(col).any() else 0.0
        axes[1].plot(t, col - med, lw=1, label=f"{name} (median {med:.2f})")
    axes[1].set_ylabel("translation - median\n(head units)")
    axes[2].plot(t, np.asarray(blink, np.float64), lw=1, color="tab:purple", label="blink (0 open, 1 closed)")
    axes[2].set_ylabel("blink")
    axes[2].set_ylim(-0.05, 1.05)
    axes[3].plot(t, np.asarray(lip_distance, np.float64), lw=1, color="tab:red", label="inner-lip distance / eye width")
    axes[3].set_ylabel("mouth opening")
    err = np.asarray(poses.reprojection_error, np.float64)
    axes[4].plot(t, err, lw=1, color="tab:brown", label="reprojection error")
    if np.isfinite(err).any():
        axes[4].set_title(f"median {np.nanmedian(err):.2f} px, max {np.nanmax(err):.2f} px", fontsize=9, loc="right")
    axes[4].set_ylabel("reproj. error (px)")
    axes[4].set_xlabel("time (s)")
    for ax in axes:
        for a, b in _runs(~valid):
            ax.axvspan((a - 0.5) / fps, (b - 0.5) / fps, color="0.6", alpha=0.4, lw=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8, ncol=3, framealpha=0.7)
        ax.set_xlim(0, max(t[-1], 1.0 / fps) if n else 1.0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_previews(
    out_dir: Path,
    frames_dir: Path,
    masks_dir: Path,
    points: np.ndarray,
    poses,
    blink: np.ndarray,
    lip_distance: np.ndarray,
    plate: Optional[np.ndarray],
    never_seen: Optional[np.ndarray],
    valid: np.ndarray,
    fps: float,
    num_samples: int = 6,
) -> List[Path]:
    """Write ``out_dir/previews/{overlays,background,tracks}.png`` (see the module doc); returns the paths.

    ``points``: [N, 478, 2] pixel coordinates of the frames in ``frames_dir``; ``poses``: a
    :class:`~gstalker_ns.preprocess.pose.PoseTrack` (or anything with ``head_rotation`` [N, 3, 3],
    ``head_translation`` [N, 3], ``reprojection_error`` [N]); ``blink``, ``lip_distance``,
    ``valid``: [N]. Inputs are only read. ``plate`` None: only the two previews that need no
    background plate, [overlays, tracks] (gstalker-process draws them while the plate is computed,
    then calls `write_background_preview`).
    """
    out = Path(out_dir) / PREVIEWS_DIR
    out.mkdir(parents=True, exist_ok=True)
    valid = np.asarray(valid, dtype=bool)
    overlays = write_overlays(out / OVERLAYS_FILE, Path(frames_dir), Path(masks_dir), np.asarray(points), valid, fps, num_samples)
    tracks = write_tracks(out / TRACKS_FILE, poses, blink, lip_distance, valid, fps)
    if plate is None:
        return [overlays, tracks]
    return [overlays, write_background_preview(out / BACKGROUND_FILE, plate, never_seen), tracks]
