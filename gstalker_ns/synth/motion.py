"""Head, neck and torso trajectories and the blink schedule of the synthetic subject.

Everything is a pure function of the seed and time, so a clip's first seconds are the same
whatever its duration.

Conventions
-----------
* Camera frame: nerfstudio/OpenGL (x right, y up, the camera looks down -z); the camera sits at
  the origin and never moves.
* Head frame (= the world of the training folder): origin at the head centre, +y up, +z out of
  the face. A point p in the head frame is at ``R_head @ p + t_head`` in the camera frame.
* Euler angles (degrees): ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)``. Positive yaw turns the face
  towards the camera's +x (image right), positive pitch lifts the chin (face looks up, rotation
  about +x), positive roll tilts the head top towards the image left (rotation about +z).
* The head rotates about a pivot low in the head (the top of the neck), the neck follows 60% and
  the torso 30% of the head's rotation about the neck base; all three share the translation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

# Rest pose of the head centre in the camera frame (world units; head radius ~1).
HEAD_REST_CENTER = np.array([0.0, 0.42, -6.5])
# The head's rotation pivot and the neck base, in head coordinates at rest.
HEAD_PIVOT = np.array([0.0, -0.75, -0.15])
NECK_BASE = np.array([0.0, -1.38, -0.22])

# Amplitudes (degrees / world units): peak values of the sums of sinusoids.
YAW_DEG = 12.0
PITCH_DEG = 6.0
ROLL_DEG = 4.0
TRANSLATION_AMPLITUDE = np.array([0.12, 0.06, 0.18])
NECK_ROTATION_SHARE = 0.6
TORSO_ROTATION_SHARE = 0.3

BLINK_INTERVAL_S = (2.0, 6.0)
BLINK_DURATION_S = 0.2


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def euler_to_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """R = Ry(yaw) @ Rx(pitch) @ Rz(roll), angles in degrees."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    return _ry(y) @ _rx(p) @ _rz(r)


def matrix_to_euler(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_matrix` (valid for |pitch| < 90 degrees): (yaw, pitch, roll)."""
    R = np.asarray(R, dtype=float)
    pitch = np.arcsin(np.clip(-R[1, 2], -1.0, 1.0))
    yaw = np.arctan2(R[0, 2], R[2, 2])
    roll = np.arctan2(R[1, 0], R[1, 1])
    return np.degrees([yaw, pitch, roll])


def _smooth_signal(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth sum of three sinusoids whose peak can reach ``amplitude`` (seeded phases/rates)."""
    bands = [(0.06, 0.12), (0.15, 0.28), (0.33, 0.55)]
    weights = np.array([0.55, 0.3, 0.15])
    freqs = np.array([rng.uniform(lo, hi) for lo, hi in bands])
    phases = rng.uniform(0.0, 2.0 * np.pi, size=3)
    out = np.zeros_like(t, dtype=float)
    for w, f, ph in zip(weights, freqs, phases):
        out += w * np.sin(2.0 * np.pi * f * t + ph)
    return amplitude * out


def blink_times(seed: int, duration: float) -> List[float]:
    """Start times (s) of the blinks: gaps uniform in BLINK_INTERVAL_S, the first one 0.5-3 s in."""
    rng = np.random.default_rng([int(seed), 2])
    starts: List[float] = []
    t = float(rng.uniform(0.5, 3.0))
    # One sequential stream: a longer clip extends the schedule of a shorter one.
    while t < duration:
        starts.append(t)
        t += float(rng.uniform(*BLINK_INTERVAL_S))
    return starts


def blink_value(t: np.ndarray, starts: Sequence[float], duration_s: float = BLINK_DURATION_S) -> np.ndarray:
    """Lid closure in [0, 1] at times t: fast close (35%), short hold (15%), slower opening."""
    t = np.asarray(t, dtype=float)
    out = np.zeros_like(t)
    close, hold = 0.35 * duration_s, 0.15 * duration_s
    opening = duration_s - close - hold
    for s in starts:
        dt = t - s
        v = np.zeros_like(t)
        m1 = (dt >= 0) & (dt < close)
        v[m1] = 0.5 - 0.5 * np.cos(np.pi * dt[m1] / close)
        m2 = (dt >= close) & (dt < close + hold)
        v[m2] = 1.0
        m3 = (dt >= close + hold) & (dt < duration_s)
        v[m3] = 0.5 + 0.5 * np.cos(np.pi * (dt[m3] - close - hold) / opening)
        out = np.maximum(out, v)
    return out


@dataclass
class MotionTrack:
    """Per-frame poses (camera frame) and blink values of a clip."""

    times: np.ndarray  # [N] seconds
    euler_deg: np.ndarray  # [N, 3] head (yaw, pitch, roll)
    head_R: np.ndarray  # [N, 3, 3] head frame -> camera frame
    head_t: np.ndarray  # [N, 3]
    neck_R: np.ndarray  # [N, 3, 3] neck frame (origin at the neck base) -> camera
    neck_t: np.ndarray
    torso_R: np.ndarray  # [N, 3, 3] torso frame (origin at the neck base) -> camera
    torso_t: np.ndarray
    blink: np.ndarray  # [N] in [0, 1]
    blink_starts: List[float]

    @property
    def num_frames(self) -> int:
        return int(self.times.shape[0])


def build_motion(seed: int, num_frames: int, fps: float) -> MotionTrack:
    """Seeded smooth head motion, the neck and torso that follow it, and the blinks."""
    times = np.arange(num_frames, dtype=float) / float(fps)
    rng = np.random.default_rng([int(seed), 1])
    yaw = _smooth_signal(rng, times, YAW_DEG)
    pitch = _smooth_signal(rng, times, PITCH_DEG)
    roll = _smooth_signal(rng, times, ROLL_DEG)
    trans = np.stack([_smooth_signal(rng, times, a) for a in TRANSLATION_AMPLITUDE], axis=-1)
    euler = np.stack([yaw, pitch, roll], axis=-1)

    head_R = np.zeros((num_frames, 3, 3))
    head_t = np.zeros((num_frames, 3))
    neck_R = np.zeros_like(head_R)
    torso_R = np.zeros_like(head_R)
    base_cam = HEAD_REST_CENTER + NECK_BASE
    for i in range(num_frames):
        R = euler_to_matrix(*euler[i])
        head_R[i] = R
        # rotate about the pivot: p_cam = R (p - q) + q + c0 + T
        head_t[i] = HEAD_REST_CENTER + trans[i] + HEAD_PIVOT - R @ HEAD_PIVOT
        neck_R[i] = euler_to_matrix(*(NECK_ROTATION_SHARE * euler[i]))
        torso_R[i] = euler_to_matrix(*(TORSO_ROTATION_SHARE * euler[i]))
    neck_t = base_cam[None, :] + trans
    torso_t = base_cam[None, :] + trans
    starts = blink_times(seed, num_frames / float(fps) + 1.0)
    blink = blink_value(times, starts)
    return MotionTrack(
        times=times,
        euler_deg=euler,
        head_R=head_R,
        head_t=head_t,
        neck_R=neck_R,
        neck_t=neck_t,
        torso_R=torso_R,
        torso_t=torso_t,
        blink=blink,
        blink_starts=[s for s in starts if s < num_frames / float(fps)],
    )


def camera_to_world(head_R: np.ndarray, head_t: np.ndarray) -> np.ndarray:
    """The static camera's pose in the head frame (the training folder's world): inverse head pose."""
    c2w = np.eye(4)
    c2w[:3, :3] = head_R.T
    c2w[:3, 3] = -head_R.T @ head_t
    return c2w
