"""Tests of gstalker_ns.preprocess.pose on synthetic landmarks with exact ground truth.

The head frame is only defined up to a fixed rotation, origin and scale: rotations are compared
after removing the best-fit constant rotation offset (R_est_i ~ R_gt_i Q), translations through
the camera-space direction of the landmarks' centroid and the (constant) ratio of its distance.
"""

import math

import numpy as np
import pytest

from gstalker_ns.preprocess import pose as P

W = H = 512
FOCAL = P.focal_from_fov(22.0, W)


def _rot(yaw, pitch, roll):
    y, p, r = np.radians([yaw, pitch, roll])
    Ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    Rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return Ry @ Rx @ Rz


def _face_shape(seed=0):
    """478 face-like points on the front of an ellipsoid (head frame: +y up, +z out of the face)."""
    rng = np.random.default_rng(seed)
    th = rng.uniform(-1.3, 1.3, 478)  # azimuth
    ph = rng.uniform(-0.9, 0.9, 478)  # elevation
    pts = np.stack([0.75 * np.sin(th) * np.cos(ph), 0.95 * np.sin(ph), 0.85 * np.cos(th) * np.cos(ph)], 1)
    pts[1] = [0, -0.15, 1.05]  # nose tip
    pts[4] = [0, -0.1, 1.0]
    pts[168] = [0, 0.12, 0.82]
    pts[33], pts[263] = [-0.33, 0.1, 0.62], [0.33, 0.1, 0.62]
    pts[234], pts[454] = [-0.72, 0.12, 0.15], [0.72, 0.12, 0.15]  # ears at the nose bridge's height
    return pts


def _trajectory(n, seed=1):
    s = np.arange(n) / 25.0
    yaw = 15 * np.sin(2 * np.pi * s / 3.1)
    pitch = 8 * np.sin(2 * np.pi * s / 2.3 + 1)
    roll = 5 * np.sin(2 * np.pi * s / 4.7 + 2)
    R_head = np.stack([_rot(a, b, c) for a, b, c in zip(yaw, pitch, roll)])  # head -> OpenGL-like camera axes
    flip = np.diag([1.0, -1.0, -1.0])
    R = flip @ R_head  # head -> OpenCV camera
    t = np.stack([0.3 * np.sin(s), 0.2 * np.cos(1.3 * s), 6.0 + 0.4 * np.sin(0.7 * s)], 1)
    return R, t


def _observe(shape, R, t, noise=0.5, seed=2):
    x = np.einsum("nij,kj->nki", R, shape) + t[:, None]
    uv = FOCAL * x[..., :2] / x[..., 2:3] + W / 2
    uv += np.random.default_rng(seed).normal(0, noise, uv.shape)
    z = (x[..., 2] - x[..., 2].mean(axis=1, keepdims=True)) * FOCAL / x[..., 2].mean(axis=1, keepdims=True)
    return uv, z


def _rot_errors(R_est, R_gt):
    Q = P._project_so3(np.einsum("nji,njk->ik", R_gt, R_est))
    return P.rotation_angle_deg(R_gt @ Q, R_est)


@pytest.fixture(scope="module")
def tracked():
    n = 200
    shape = _face_shape()
    R, t = _trajectory(n)
    uv, z = _observe(shape, R, t)
    detected = np.ones(n, dtype=bool)
    detected[[50, 51, 52, 120]] = False
    uv[[50, 51, 52, 120]] = np.nan
    track = P.estimate_poses(uv, z, detected, W, H, smooth_sigma_frames=0.0)
    return shape, R, t, uv, detected, track


def test_rotation_translation_reprojection(tracked):
    shape, R, t, uv, detected, track = tracked
    err = _rot_errors(track.head_rotation, R)
    assert np.median(err) < 1.5, np.median(err)
    assert np.max(err[detected]) < 4.0
    idx = track.landmark_indices
    c_gt = (np.einsum("nij,kj->nki", R, shape[idx]) + t[:, None]).mean(1)
    c_est = (np.einsum("nij,kj->nki", track.head_rotation, track.canonical) + track.head_translation[:, None]).mean(1)
    cosang = (c_gt * c_est).sum(1) / np.linalg.norm(c_gt, axis=1) / np.linalg.norm(c_est, axis=1)
    assert np.degrees(np.arccos(np.clip(cosang, -1, 1))).max() < 0.5
    ratio = np.linalg.norm(c_est, axis=1) / np.linalg.norm(c_gt, axis=1)
    assert ratio.std() / ratio.mean() < 0.02
    e = track.reprojection_error[detected]
    assert np.all(np.isnan(track.reprojection_error[~detected]))
    assert np.median(e) < 1.0  # 0.5 px noise per axis: mean 2D error ~0.63 px
    assert track.interpolated.sum() == 4
    assert abs(track.focal / FOCAL - 1) < 0.15, (track.focal, FOCAL)


def test_missing_frames_interpolated(tracked):
    shape, R, t, uv, detected, track = tracked
    err = _rot_errors(track.head_rotation, R)
    assert np.isfinite(track.camera_to_world).all()
    assert err[[50, 51, 52, 120]].max() < 3.0


def test_save_load(tracked, tmp_path):
    track = tracked[-1]
    track.save(tmp_path / "poses.npz")
    back = P.PoseTrack.load(tmp_path / "poses.npz")
    np.testing.assert_allclose(back.camera_to_world, track.camera_to_world)
    assert back.focal == track.focal and back.head_radius == track.head_radius


def test_convention_frontal_head():
    """Identity head pose in front of the camera: camera on +z of the head frame, looking down -z."""
    shape = _face_shape()
    n = 30
    R = np.repeat(np.diag([1.0, -1.0, -1.0])[None], n, 0)
    t = np.tile([0.0, 0.0, 6.0], (n, 1))
    uv, z = _observe(shape, R, t, noise=0.0)
    track = P.estimate_poses(uv, z, np.ones(n, bool), W, H, focal=FOCAL, smooth_sigma_frames=1.0)
    c2w = track.camera_to_world[0]
    cam = c2w[:3, 3]
    assert cam[2] > 0 and abs(cam[0]) < 0.05 * cam[2] and abs(cam[1]) < 0.1 * cam[2]
    np.testing.assert_allclose(c2w[:3, 2], [0, 0, 1], atol=0.05)  # OpenGL: looks down -z = -(c2w z axis)
    np.testing.assert_allclose(c2w[:3, 1], [0, 1, 0], atol=0.05)
    # project the canonical nose tip with the transforms.json convention
    k = list(track.landmark_indices).index(1)
    p = track.canonical[k]
    Rc, tc = c2w[:3, :3], c2w[:3, 3]
    x = Rc.T @ (p - tc)
    u = track.focal * x[0] / (-x[2]) + track.cx
    v = -track.focal * x[1] / (-x[2]) + track.cy
    np.testing.assert_allclose([u, v], uv[0, 1], atol=0.05)
    # head frame: nose tip is in front of (+z) and the eyes' x order matches (+x = subject's left)
    assert p[2] > 0
    assert track.canonical[list(track.landmark_indices).index(263)][0] > 0


def test_smoothing_no_lag():
    n = 100
    ang = np.linspace(-20, 20, n)
    R = np.stack([_rot(a, 0, 0) for a in ang])
    t = np.stack([np.linspace(0, 10, n)] * 3, 1)
    Rs, ts = P.smooth_poses(R, t, 3.0)
    np.testing.assert_allclose(ts[15:-15], t[15:-15], atol=1e-9)
    assert P.rotation_angle_deg(Rs[15:-15], R[15:-15]).max() < 0.05
    # a track through 180 deg: the quaternion's sign flips (w >= 0 canonical form) are handled
    R180 = np.stack([_rot(a, 0, 0) for a in np.linspace(170, 190, n)])
    Rs2, _ = P.smooth_poses(R180, t, 1.5)
    assert P.rotation_angle_deg(Rs2[10:-10], R180[10:-10]).max() < 0.05
    # noise is reduced
    rng = np.random.default_rng(0)
    Rn = np.stack([r @ _rot(*rng.normal(0, 1, 3)) for r in R])
    Rs3, _ = P.smooth_poses(Rn, t, 2.0)
    assert np.median(P.rotation_angle_deg(Rs3, R)) < 0.6 * np.median(P.rotation_angle_deg(Rn, R))


def test_interpolate_missing():
    ang = np.linspace(0, 30, 11)
    R = np.stack([_rot(a, 0, 0) for a in ang])
    t = np.arange(11.0)[:, None] * np.ones(3)
    valid = np.ones(11, bool)
    valid[[0, 4, 5, 10]] = False
    Ri, ti = P.interpolate_missing(R, t, valid)
    assert P.rotation_angle_deg(Ri[[4, 5]], R[[4, 5]]).max() < 1e-6
    np.testing.assert_allclose(ti[[4, 5]], t[[4, 5]])
    np.testing.assert_allclose(ti[0], t[1])
    np.testing.assert_allclose(ti[10], t[9])


def test_without_depth():
    """No z: a flat start; depth (and focal) come from the head's rotations."""
    n = 200
    shape = _face_shape()
    R, t = _trajectory(n)
    uv, _ = _observe(shape, R, t)
    track = P.estimate_poses(uv, None, np.ones(n, bool), W, H, smooth_sigma_frames=0.0)
    assert np.median(_rot_errors(track.head_rotation, R)) < 1.5
    assert abs(track.focal / FOCAL - 1) < 0.15, (track.focal, FOCAL)
