"""Expression landmarks: the mouth and jaw in the head frame, per video frame.

Why the head frame: the audio decides how the mouth moves relative to the skull, not where the
head is; lifting the tracked 2D points into the head frame (the world of transforms.json)
removes head pose from the expression, so the deformation field and the audio predictor see
only articulation.

Lifting (:func:`lift_to_head_frame`): a landmark at pixel (u, v) with face-mesh relative depth
z (pixels, ~0 at the face centre) lies on the camera ray through (u, v) at depth
``d = d0 (1 + z / f)``, d0 being the head origin's depth; it is then mapped back with the frame's
head pose. In-plane motion (the mouth opening and stretching) is recovered exactly; the depth
coordinate is only as good as face mesh's z, which matters little after PCA.

Point sets: face mesh (478 points: lips 40 + jaw/chin 21, :data:`FACE_MESH_MOUTH`), ER-NeRF's
68-point .lms (mouth 48-67 + jaw 4-12) and the synthetic subject's own named points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from gstalker_ns.errors import GstalkerUserError

EXPRESSION_FILE = "face_landmarks.npz"
FORMAT_VERSION = 1

# Face mesh: outer + inner lip contours (mediapipe FACEMESH_LIPS) and the jaw below the mouth.
FACE_MESH_LIPS = (
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191,
    267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415,
)  # fmt: skip
FACE_MESH_JAW = (18, 58, 132, 136, 148, 149, 150, 152, 172, 175, 176, 199, 200, 288, 361, 365, 377, 378, 379, 397, 400)
FACE_MESH_MOUTH = FACE_MESH_LIPS + FACE_MESH_JAW
FACE_MESH_INNER_LIPS = (13, 14)  # upper and lower inner-lip midpoints
FACE_MESH_EYES = ((33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7),
                  (362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382))  # fmt: skip

# ER-NeRF / AD-NeRF .lms files: the 68-point iBUG layout (jaw 0-16, mouth 48-67).
IBUG68_MOUTH = tuple(range(4, 13)) + tuple(range(48, 68))
IBUG68_INNER_LIPS = (62, 66)
IBUG68_EYES = (tuple(range(36, 42)), tuple(range(42, 48)))


class ExpressionError(GstalkerUserError, ValueError):
    """Expression landmarks are missing or unusable (one-line message)."""


@dataclass
class ExpressionTrack:
    """Per-frame mouth/jaw points in the head frame and per-frame eye boxes in pixels."""

    head_points: np.ndarray  # [F, P, 3] float32, head-frame (world) units
    eye_boxes: np.ndarray  # [F, 2, 4] float32 (x0, y0, x1, y1) pixels of the frame, NaN if unknown
    point_set: str  # "face_mesh", "ibug68" or "synthetic"
    inner_lips: Sequence[int]  # indices INTO head_points of the upper and lower inner-lip midpoints

    def __post_init__(self) -> None:
        self.head_points = np.asarray(self.head_points, dtype=np.float32)
        self.eye_boxes = np.asarray(self.eye_boxes, dtype=np.float32)
        f = self.head_points.shape[0]
        if self.head_points.ndim != 3 or self.head_points.shape[2] != 3:
            raise ExpressionError(f"expression points must be [frames, points, 3], got {self.head_points.shape}")
        if self.eye_boxes.shape != (f, 2, 4):
            raise ExpressionError(f"eye boxes must be [{f}, 2, 4], got {self.eye_boxes.shape}")
        self.inner_lips = tuple(int(i) for i in self.inner_lips)

    @property
    def num_frames(self) -> int:
        return int(self.head_points.shape[0])

    def lip_gap(self) -> np.ndarray:
        """[F] distance between the inner-lip midpoints, head-frame units (mouth opening)."""
        upper, lower = self.inner_lips
        return np.linalg.norm(self.head_points[:, upper] - self.head_points[:, lower], axis=-1)

    def save(self, path: Path) -> None:
        from gstalker_ns.data.layout import atomic_save_npz

        atomic_save_npz(
            Path(path),
            version=np.int32(FORMAT_VERSION),
            head_points=self.head_points,
            eye_boxes=self.eye_boxes,
            point_set=np.array(self.point_set),
            inner_lips=np.asarray(self.inner_lips, dtype=np.int32),
        )

    @classmethod
    def load(cls, path: Path) -> "ExpressionTrack":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data["version"])
                if version > FORMAT_VERSION:
                    raise ExpressionError(f"{path}: written by a newer gstalker-ns (format {version}); update gstalker-ns")
                return cls(data["head_points"], data["eye_boxes"], str(data["point_set"]), data["inner_lips"].tolist())
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, ExpressionError):
                raise
            raise ExpressionError(f"{path}: unreadable expression landmarks ({exc}); re-run gstalker-process") from None


def world_to_camera(camera_to_world: np.ndarray):
    """[F, 4, 4] OpenGL camera-to-world -> (R [F, 3, 3], t [F, 3]) mapping world to OpenCV camera."""
    c2w = np.asarray(camera_to_world, dtype=np.float64)
    rotation_cv = c2w[:, :3, :3] @ np.diag([1.0, -1.0, -1.0])  # OpenGL -> OpenCV camera axes
    R = np.transpose(rotation_cv, (0, 2, 1))
    t = -np.einsum("nij,nj->ni", R, c2w[:, :3, 3])
    return R, t


def lift_to_head_frame(
    points: np.ndarray,
    camera_to_world: np.ndarray,
    focal: float,
    cx: float,
    cy: float,
    z: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Pixels [F, P, 2] (+ relative depth z [F, P] in pixels) -> head-frame points [F, P, 3]."""
    points = np.asarray(points, dtype=np.float64)
    R, t = world_to_camera(camera_to_world)
    d0 = t[:, 2:3]  # depth of the head origin
    depth = d0 if z is None else d0 * (1.0 + np.asarray(z, dtype=np.float64) / float(focal))
    depth = np.broadcast_to(depth, points.shape[:2])
    camera = np.stack(
        [(points[..., 0] - cx) * depth / focal, (points[..., 1] - cy) * depth / focal, depth], axis=-1
    )
    return np.einsum("nji,npj->npi", R, camera - t[:, None, :]).astype(np.float32)


def eye_boxes_from_points(points: np.ndarray, eyes: Sequence[Sequence[int]], margin: float = 0.35) -> np.ndarray:
    """[F, 2, 4] boxes around each eye's contour, grown by `margin` x the eye's width (lids, lashes)."""
    import warnings

    points = np.asarray(points, dtype=np.float64)
    boxes = []
    for eye in eyes:
        p = points[:, list(eye)]
        with warnings.catch_warnings():  # frames without landmarks give NaN boxes, on purpose
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanmin(p, axis=1), np.nanmax(p, axis=1)
        pad = margin * (hi[:, :1] - lo[:, :1])
        boxes.append(np.concatenate([lo - pad, hi + pad], axis=-1))
    return np.stack(boxes, axis=1).astype(np.float32)


def face_mesh_track(
    points: np.ndarray, z: np.ndarray, camera_to_world: np.ndarray, focal: float, cx: float, cy: float
) -> ExpressionTrack:
    """From the 478-point face mesh track (crop pixels) and the frames' head poses."""
    mouth = list(FACE_MESH_MOUTH)
    head = lift_to_head_frame(points[:, mouth], camera_to_world, focal, cx, cy, z[:, mouth])
    inner = [mouth.index(i) for i in FACE_MESH_INNER_LIPS]
    return ExpressionTrack(head, eye_boxes_from_points(points, FACE_MESH_EYES), "face_mesh", inner)


def ibug68_track(points: np.ndarray, camera_to_world: np.ndarray, focal: float, cx: float, cy: float) -> ExpressionTrack:
    """From 68-point 2D landmarks (ER-NeRF's .lms files): lifted at the head origin's depth."""
    mouth = list(IBUG68_MOUTH)
    head = lift_to_head_frame(points[:, mouth], camera_to_world, focal, cx, cy)
    inner = [mouth.index(i) for i in IBUG68_INNER_LIPS]
    return ExpressionTrack(head, eye_boxes_from_points(points, IBUG68_EYES), "ibug68", inner)


def track_for_layout(layout, num_rows: int) -> ExpressionTrack:
    """The expression track of a training folder, one row per audio feature row (video frame).

    gstalker folders name their file in transforms.json (`expression`); ER-NeRF / AD-NeRF folders
    are lifted from their 68-point .lms files. Rows without landmarks are NaN.
    """
    if layout.source == "ernerf":
        from gstalker_ns.data.ernerf import read_landmarks

        points = np.full((num_rows, 68, 2), np.nan)
        poses = np.tile(np.eye(4), (num_rows, 1, 1))
        for frame in layout.frames:
            path = layout.root / (frame.landmarks_path or f"ori_imgs/{Path(frame.file_path).stem}.lms")
            if frame.frame_idx < num_rows and path.exists():
                points[frame.frame_idx] = read_landmarks(path)[:68, :2]
                poses[frame.frame_idx] = frame.camera_to_world
        if not np.isfinite(points).all(axis=(1, 2)).any():
            raise ExpressionError(
                f"{layout.root}: no ori_imgs/*.lms landmark files; gstalker needs ER-NeRF's landmarks (re-run its process.py)"
            )
        return ibug68_track(points, poses, layout.fl_x, layout.cx, layout.cy)
    name = layout.extra.get("expression")
    if not name:
        raise ExpressionError(
            f"{layout.frames_file_path}: names no expression landmarks (made before gstalker-ns 0.2); "
            "re-run gstalker-process (or gstalker-synth) on the video to add face_landmarks.npz"
        )
    track = ExpressionTrack.load(layout.path(name))
    if track.num_frames != num_rows:
        raise ExpressionError(
            f"{layout.path(name)}: has {track.num_frames} frames but the audio features have {num_rows}; re-run preprocessing"
        )
    return track
