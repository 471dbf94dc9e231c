"""Head poses for rendered frames: the training or held-out poses, one fixed frame, or a camera path.

Our world is the head frame, so a head pose is a camera pose (camera-to-world, OpenGL axes, in
the dataparser's scaled world). Every source becomes one camera per output frame:

- train / val: the split's poses in clip order, played at the clip's speed and looped back and
  forth (no jump at the seam) when the audio is longer; for another output fps the poses are
  interpolated in time, so motion keeps its real speed;
- fixed: the pose of one dataset frame, for every output frame;
- camera-path: a camera path exported from nerfstudio's viewer (its Render panel), resampled
  over the audio's length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from nerfstudio.cameras.cameras import Cameras, CameraType

from gstalker_ns.drive.timeline import looped_positions
from gstalker_ns.errors import GstalkerUserError

POSE_SOURCES = ("train", "val", "fixed", "camera-path")


class PoseSourceError(GstalkerUserError):
    """A pose source that cannot be used (unknown frame, unreadable camera path)."""


@dataclass
class PoseTrack:
    """Per output frame: camera-to-world [F, 3, 4] and pinhole intrinsics (shared size)."""

    camera_to_worlds: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: int
    height: int

    @classmethod
    def from_cameras(cls, cameras: Cameras) -> "PoseTrack":
        """One output frame per camera, exactly as given (same size for all)."""
        return cls(
            camera_to_worlds=cameras.camera_to_worlds,
            fx=cameras.fx,
            fy=cameras.fy,
            cx=cameras.cx,
            cy=cameras.cy,
            width=int(cameras.width.reshape(-1)[0]),
            height=int(cameras.height.reshape(-1)[0]),
        )

    def __len__(self) -> int:
        return int(self.camera_to_worlds.shape[0])

    def camera(self, k: int, frame_idx: int, scale: float = 1.0) -> Cameras:
        """Output frame k as a one-camera `Cameras` driven by audio row `frame_idx`."""
        return self.cameras(k, k + 1, [frame_idx], scale)

    def cameras(self, start: int, stop: int, frame_idx, scale: float = 1.0) -> Cameras:
        """Output frames start..stop-1 as one `Cameras` (for batched renders), frame k driven by
        audio row frame_idx[k - start]."""
        n = stop - start
        rows = torch.as_tensor(np.asarray(frame_idx, dtype=np.int64).reshape(n, 1))
        return Cameras(
            camera_to_worlds=self.camera_to_worlds[start:stop],
            fx=self.fx[start:stop].reshape(n, 1) * scale,
            fy=self.fy[start:stop].reshape(n, 1) * scale,
            cx=self.cx[start:stop].reshape(n, 1) * scale,
            cy=self.cy[start:stop].reshape(n, 1) * scale,
            width=int(round(self.width * scale)),
            height=int(round(self.height * scale)),
            camera_type=CameraType.PERSPECTIVE,
            metadata={"frame_idx": rows},
        )


def interpolate_poses(camera_to_worlds: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """Camera-to-world at fractional indices into a pose sequence: linear in position,
    spherical-linear in rotation between the two neighbouring poses."""
    c2w = camera_to_worlds.detach().cpu().double().numpy()
    count = c2w.shape[0]
    positions = np.clip(np.asarray(positions, dtype=np.float64), 0, count - 1)
    lo = np.floor(positions).astype(np.int64)
    hi = np.minimum(lo + 1, count - 1)
    w = positions - lo
    q = Rotation.from_matrix(c2w[:, :3, :3]).as_quat()
    q_lo, q_hi = q[lo], q[hi]
    q_hi = np.where((np.sum(q_lo * q_hi, axis=1) < 0)[:, None], -q_hi, q_hi)
    angle = np.arccos(np.clip(np.abs(np.sum(q_lo * q_hi, axis=1)), -1, 1))
    small = angle < 1e-6
    sin = np.where(small, 1.0, np.sin(angle))
    a = np.where(small, 1 - w, np.sin((1 - w) * angle) / sin)
    b = np.where(small, w, np.sin(w * angle) / sin)
    quat = a[:, None] * q_lo + b[:, None] * q_hi
    out = np.zeros((len(positions), 3, 4))
    out[:, :3, :3] = Rotation.from_quat(quat / np.linalg.norm(quat, axis=1, keepdims=True)).as_matrix()
    out[:, :3, 3] = (1 - w)[:, None] * c2w[lo, :3, 3] + w[:, None] * c2w[hi, :3, 3]
    return torch.from_numpy(out).float()


def _nearest(values: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    index = torch.from_numpy(np.clip(np.round(positions), 0, values.shape[0] - 1).astype(np.int64))
    return values.reshape(-1)[index]


def _track_from_cameras(cameras: Cameras, positions: np.ndarray) -> PoseTrack:
    return PoseTrack(
        camera_to_worlds=interpolate_poses(cameras.camera_to_worlds, positions),
        fx=_nearest(cameras.fx, positions),
        fy=_nearest(cameras.fy, positions),
        cx=_nearest(cameras.cx, positions),
        cy=_nearest(cameras.cy, positions),
        width=int(cameras.width.reshape(-1)[0]),
        height=int(cameras.height.reshape(-1)[0]),
    )


def sequence_poses(cameras: Cameras, num_frames: int, fps: float, clip_fps: float) -> PoseTrack:
    """A split's poses in clip order at real speed, looped back and forth to `num_frames`."""
    if cameras.shape[0] == 0:
        raise PoseSourceError("the split holds no cameras; pick another pose source")
    order = torch.argsort(frame_indices(cameras))
    ordered = cameras[order]
    return _track_from_cameras(ordered, looped_positions(num_frames, fps, clip_fps, ordered.shape[0]))


def frame_indices(cameras: Cameras) -> torch.Tensor:
    """Each camera's video frame index (0.. in order when the cameras carry none)."""
    if cameras.metadata and "frame_idx" in cameras.metadata:
        return torch.as_tensor(cameras.metadata["frame_idx"]).reshape(-1).cpu()
    return torch.arange(cameras.shape[0])


def fixed_pose(cameras: Cameras, frame: int, num_frames: int) -> PoseTrack:
    """The pose of dataset video frame `frame`, repeated."""
    indices = frame_indices(cameras)
    hits = torch.nonzero(indices == int(frame)).reshape(-1)
    if len(hits) == 0:
        raise PoseSourceError(
            f"frame {frame} is not a frame of this dataset (frames {int(indices.min())}..{int(indices.max())}); "
            "pick a frame in that range"
        )
    return _track_from_cameras(cameras[hits[:1]], np.zeros(num_frames))


def read_camera_path(path: Path) -> Cameras:
    """A nerfstudio camera path JSON (viewer Render panel > Export) as Cameras, or a one-line error."""
    from nerfstudio.cameras.camera_paths import get_path_from_json

    path = Path(path)
    if not path.is_file():
        raise PoseSourceError(f"{path}: camera path file not found; export one from the viewer's Render panel")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoseSourceError(f"{path}: not valid JSON ({exc}); export the camera path again from the viewer") from None
    keyframes = data.get("camera_path") if isinstance(data, dict) else None
    if not isinstance(keyframes, list) or not keyframes:
        raise PoseSourceError(f"{path}: has no 'camera_path' list of cameras; export the camera path from the viewer")
    try:
        cameras = get_path_from_json(data)
        _ = cameras.camera_to_worlds.reshape(-1, 3, 4)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise PoseSourceError(
            f"{path}: camera path does not parse ({type(exc).__name__}: {exc}); it needs render_height, "
            "render_width and per-camera camera_to_world (16 numbers) and fov"
        ) from None
    if cameras.camera_type.reshape(-1)[0].item() != CameraType.PERSPECTIVE.value:
        raise PoseSourceError(f"{path}: only perspective camera paths are supported; set the camera type to perspective")
    return cameras


def camera_path_poses(path: Path, num_frames: int) -> PoseTrack:
    """A viewer camera path stretched over the audio: output frame k sits at fraction k/(F-1) of the path."""
    cameras = read_camera_path(path)
    count = cameras.shape[0]
    positions = np.linspace(0.0, count - 1, num_frames) if num_frames > 1 else np.zeros(num_frames)
    return _track_from_cameras(cameras, positions)


def pose_track(
    source: str,
    num_frames: int,
    fps: float,
    clip_fps: float,
    train_cameras: Cameras,
    eval_cameras: Optional[Cameras] = None,
    frame: Optional[int] = None,
    camera_path: Optional[Path] = None,
) -> PoseTrack:
    """Dispatch on the pose source name (see the module docstring)."""
    if source == "train":
        return sequence_poses(train_cameras, num_frames, fps, clip_fps)
    if source == "val":
        if eval_cameras is None or eval_cameras.shape[0] == 0:
            raise PoseSourceError("this dataset has no held-out (val) frames; use --pose train")
        return sequence_poses(eval_cameras, num_frames, fps, clip_fps)
    if source == "fixed":
        if frame is None:
            raise PoseSourceError("--pose fixed needs --frame N (a video frame index of the dataset)")
        everything = train_cameras if eval_cameras is None else _concat(train_cameras, eval_cameras)
        return fixed_pose(everything, frame, num_frames)
    if source == "camera-path":
        if camera_path is None:
            raise PoseSourceError("--pose camera-path needs --camera-path FILE (exported from the viewer)")
        return camera_path_poses(camera_path, num_frames)
    raise PoseSourceError(f"pose source {source!r} is unknown; use one of {', '.join(POSE_SOURCES)}")


def _concat(a: Cameras, b: Cameras) -> Cameras:
    return Cameras(
        camera_to_worlds=torch.cat([a.camera_to_worlds, b.camera_to_worlds]),
        fx=torch.cat([a.fx, b.fx]),
        fy=torch.cat([a.fy, b.fy]),
        cx=torch.cat([a.cx, b.cx]),
        cy=torch.cat([a.cy, b.cy]),
        width=torch.cat([a.width, b.width]),
        height=torch.cat([a.height, b.height]),
        camera_type=CameraType.PERSPECTIVE,
        metadata={"frame_idx": torch.cat([frame_indices(a), frame_indices(b)]).reshape(-1, 1)},
    )
