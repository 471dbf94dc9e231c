"""Rigid head pose tracking from 2D face landmarks (no external models, licence-free).

Input: per-frame landmarks in *continuous* pixel coordinates (pixel (u, v) covers [u, u+1) x
[v, v+1), its centre is at (u + 0.5, v + 0.5); mediapipe's normalized x * width is in exactly these
coordinates), optional relative depth ``z`` (mediapipe's normalized z times the image width:
smaller = closer to the camera) and a per-frame ``detected`` flag.

Method (:func:`estimate_poses`)
-------------------------------
1. **Stable subset.** Only landmarks that do not move with speech or blinks are used (forehead,
   nose bridge and tip, eye corners, temples, cheekbones, ear-side face contour:
   :data:`STABLE_LANDMARKS`). For inputs that are not the 478-point face mesh, all points are used
   (or pass ``indices``).
2. **Initial canonical shape** (weak perspective): each detected frame gives a 3D shape
   ``(u - cx, -(v - cy), -z)`` (x right, y up, z towards the camera). The shapes are centred,
   scale-normalised and co-registered by generalised Procrustes (rotation only); their mean is the
   initial canonical shape. Without ``z`` the initial shape is flat; step 3 recovers the depth from
   the head's rotations (this needs some rotation in the clip).
3. **Alternation** (for a given focal length): (a) per-frame PnP (``cv2.solvePnP`` ITERATIVE,
   the previous frame's pose as the initial guess, SQPNP as the start/fallback), (b) the canonical
   shape is re-estimated by linear multi-view triangulation of every landmark from all frames'
   poses, (c) the gauge (origin, axes, scale) is re-fixed (below). A few iterations.
4. **Focal length**: one per clip. A coarse 1-D search over the horizontal field of view
   (:data:`FOV_GRID_DEG`, 10-60 deg) on a subsample of frames picks the fov with the lowest median
   reprojection error, refined by a parabola through the three best grid points. Focal length and
   head depth are only weakly identifiable (perspective effects are small for a face far from the
   camera: the error curve is flat when the head rotates little). When the best error is not
   clearly lower (``flat_tolerance``, relative) than at the default fov (:data:`DEFAULT_FOV_DEG`),
   the default is used. Pass ``focal`` to skip the search.
5. **Head frame** (the world of transforms.json), for the 478-point mesh: +x from the subject's
   right to left (ear-side contour 234 -> 454 and outer eye corners 33 -> 263), +z forward = from
   the ears' midpoint towards the nose bridge (168), orthogonalised; +y = z x x (up). The origin is
   the ears' midpoint pushed back by 0.25 and up by 0.1 of the ear-to-ear width (approximate head
   centre). Units: ``head_radius`` = 1 with ``head_radius`` estimated as 0.6 x the ear-to-ear width
   (234/454 sit on the cheek contour in front of the ears). For other inputs, the axes are those
   of the Procrustes mean (camera-like axes of the first frame), the origin is the centroid pushed
   back by its RMS radius and the RMS radius is the unit. The frame's "up" is approximate (a few
   degrees); rotations *relative* to it are what the tracker measures accurately.
6. **Missing frames** (not detected / non-finite landmarks) are interpolated from their neighbours
   (slerp for rotations, linear for translations; the nearest tracked frame at the ends) and
   flagged in ``PoseTrack.interpolated``.
7. **Smoothing** (:func:`smooth_poses`): zero-phase Gaussian (no lag): translations directly,
   rotations as a Gaussian-weighted quaternion average (signs made consistent) then renormalised.

Conventions of :class:`PoseTrack`
---------------------------------
``head_rotation`` R and ``head_translation`` t map head coordinates to the **OpenCV** camera
(x right, y down, z forward): ``x_cv = R p + t``; pixels ``u = focal * x/z + cx``,
``v = focal * y/z + cy`` (continuous pixel coordinates). ``camera_to_world`` is the inverse of
that transform with the camera axes converted to **OpenGL** (y and z flipped): this is what
``transforms.json`` stores.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from gstalker_ns.data.layout import atomic_write_bytes

# Mediapipe face mesh indices that move little with speech and blinks.
STABLE_LANDMARKS: Tuple[int, ...] = (
    10, 151, 9, 8, 109, 338, 67, 297, 69, 299, 108, 337,  # forehead
    168, 6, 197, 195, 5, 4, 1,  # nose bridge and tip
    33, 133, 263, 362, 130, 359,  # eye corners
    127, 356, 162, 389, 139, 368, 21, 251,  # temples
    116, 345, 123, 352, 50, 280, 117, 346, 111, 340,  # cheekbones
    98, 327, 129, 358,  # nose wings
    234, 454, 93, 323,  # ear-side face contour
)
# Named landmarks used to fix the head frame.
_RIGHT_EAR, _LEFT_EAR = 234, 454
_RIGHT_EYE_OUT, _LEFT_EYE_OUT = 33, 263
_NOSE_BRIDGE = 168
NUM_FACE_MESH = 478

DEFAULT_FOV_DEG = 25.0
FOV_GRID_DEG = (10.0, 14.0, 18.0, 22.0, 26.0, 30.0, 36.0, 42.0, 50.0, 60.0)


def focal_from_fov(fov_deg: float, width: int) -> float:
    return 0.5 * width / math.tan(math.radians(fov_deg) / 2)


# ---- rotation helpers ----------------------------------------------------------------------


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """[..., 3, 3] -> [..., 4] (w, x, y, z), w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    m = R.reshape(-1, 3, 3)
    q = np.empty((m.shape[0], 4))
    tr = np.trace(m, axis1=1, axis2=2)
    cand = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    k = np.argmax(cand, axis=1)
    for i in range(m.shape[0]):
        a = m[i]
        if k[i] == 0:
            s = math.sqrt(max(tr[i] + 1.0, 1e-12)) * 2
            q[i] = [0.25 * s, (a[2, 1] - a[1, 2]) / s, (a[0, 2] - a[2, 0]) / s, (a[1, 0] - a[0, 1]) / s]
        elif k[i] == 1:
            s = math.sqrt(max(1.0 + a[0, 0] - a[1, 1] - a[2, 2], 1e-12)) * 2
            q[i] = [(a[2, 1] - a[1, 2]) / s, 0.25 * s, (a[0, 1] + a[1, 0]) / s, (a[0, 2] + a[2, 0]) / s]
        elif k[i] == 2:
            s = math.sqrt(max(1.0 + a[1, 1] - a[0, 0] - a[2, 2], 1e-12)) * 2
            q[i] = [(a[0, 2] - a[2, 0]) / s, (a[0, 1] + a[1, 0]) / s, 0.25 * s, (a[1, 2] + a[2, 1]) / s]
        else:
            s = math.sqrt(max(1.0 + a[2, 2] - a[0, 0] - a[1, 1], 1e-12)) * 2
            q[i] = [(a[1, 0] - a[0, 1]) / s, (a[0, 2] + a[2, 0]) / s, (a[1, 2] + a[2, 1]) / s, 0.25 * s]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    return q.reshape(R.shape[:-2] + (4,))


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return R.reshape(q.shape[:-1] + (3, 3))


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Angle (degrees) of Ra^T Rb, batched."""
    M = np.einsum("...ji,...jk->...ik", Ra, Rb)
    c = (np.trace(M, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def _project_so3(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.ones(M.shape[:-2] + (3,))
    D[..., 2] = d
    return (U * D[..., None, :]) @ Vt


def _slerp(q0: np.ndarray, q1: np.ndarray, w: float) -> np.ndarray:
    if np.dot(q0, q1) < 0:
        q1 = -q1
    d = min(1.0, float(np.dot(q0, q1)))
    th = math.acos(d)
    if th < 1e-8:
        q = (1 - w) * q0 + w * q1
    else:
        q = (math.sin((1 - w) * th) * q0 + math.sin(w * th) * q1) / math.sin(th)
    return q / np.linalg.norm(q)


# ---- smoothing and interpolation ---------------------------------------------------------------


def smooth_poses(rotations: np.ndarray, translations: np.ndarray, sigma_frames: float) -> Tuple[np.ndarray, np.ndarray]:
    """Zero-phase Gaussian smoothing of a pose track (no lag: the kernel is symmetric).

    Translations are filtered directly; rotations as quaternions (signs made consistent along
    the track, so q and -q never cancel), Gaussian-weighted and renormalised (the normalised
    weighted mean is the chordal L2 rotation average of the window). Edges: nearest-value padding.
    ``sigma_frames <= 0`` returns copies.
    """
    R = np.asarray(rotations, dtype=np.float64)
    t = np.asarray(translations, dtype=np.float64)
    if sigma_frames <= 0 or len(R) < 2:
        return R.copy(), t.copy()
    q = rotmat_to_quat(R)
    for i in range(1, len(q)):
        if np.dot(q[i], q[i - 1]) < 0:
            q[i] = -q[i]
    qs = gaussian_filter1d(q, sigma_frames, axis=0, mode="nearest")
    ts = gaussian_filter1d(t, sigma_frames, axis=0, mode="nearest")
    return quat_to_rotmat(qs), ts


def interpolate_missing(rotations: np.ndarray, translations: np.ndarray, valid: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Fill frames where ``valid`` is False: slerp / linear between the nearest valid neighbours."""
    R = np.array(rotations, dtype=np.float64)
    t = np.array(translations, dtype=np.float64)
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        raise ValueError("no valid frame to interpolate from")
    q = rotmat_to_quat(R[idx])
    for i in np.flatnonzero(~np.asarray(valid)):
        j = np.searchsorted(idx, i)
        if j == 0:
            R[i], t[i] = R[idx[0]], t[idx[0]]
        elif j == len(idx):
            R[i], t[i] = R[idx[-1]], t[idx[-1]]
        else:
            a, b = idx[j - 1], idx[j]
            w = (i - a) / (b - a)
            R[i] = quat_to_rotmat(_slerp(q[j - 1], q[j], w))
            t[i] = (1 - w) * t[a] + w * t[b]
    return R, t


# ---- the track -----------------------------------------------------------------------------------


_OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])


def camera_to_world_from_head_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Head-to-OpenCV-camera (R, t) -> OpenGL camera-to-world (head frame as world), batched."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    Rt = np.swapaxes(R, -1, -2)
    c2w = np.zeros(R.shape[:-2] + (4, 4))
    c2w[..., :3, :3] = Rt @ _OPENCV_TO_OPENGL
    c2w[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    c2w[..., 3, 3] = 1.0
    return c2w


@dataclass
class PoseTrack:
    """Per-frame rigid head poses of a clip (see the module docstring for conventions).

    camera_to_world: [N, 4, 4] OpenGL camera-to-world, head frame as world (transforms.json).
    head_rotation, head_translation: [N, 3, 3], [N, 3] head -> OpenCV camera: x_cv = R p + t.
    focal, cx, cy: pixels (continuous coordinates; cx, cy = image centre).
    canonical: [K, 3] rigid landmark shape in head coordinates (rows = ``landmark_indices``).
    head_radius: in head-frame units. reprojection_error: [N] mean pixel error (NaN if not tracked).
    interpolated: [N] frames whose pose was interpolated (no usable landmarks).
    """

    camera_to_world: np.ndarray
    head_rotation: np.ndarray
    head_translation: np.ndarray
    focal: float
    cx: float
    cy: float
    canonical: np.ndarray
    head_radius: float
    reprojection_error: np.ndarray
    interpolated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    landmark_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_frames(self) -> int:
        return int(self.head_rotation.shape[0])

    def project(self, points_head: np.ndarray) -> np.ndarray:
        """[K, 3] head-frame points -> [N, K, 2] continuous pixel coordinates."""
        x = np.einsum("nij,kj->nki", self.head_rotation, points_head) + self.head_translation[:, None]
        return self.focal * x[..., :2] / x[..., 2:3] + np.array([self.cx, self.cy])

    def save(self, path) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            camera_to_world=self.camera_to_world, head_rotation=self.head_rotation,
            head_translation=self.head_translation, focal=np.float64(self.focal), cx=np.float64(self.cx),
            cy=np.float64(self.cy), canonical=self.canonical, head_radius=np.float64(self.head_radius),
            reprojection_error=self.reprojection_error, interpolated=self.interpolated,
            landmark_indices=self.landmark_indices,
        )
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path) -> "PoseTrack":
        with np.load(Path(path)) as d:
            return cls(
                camera_to_world=d["camera_to_world"], head_rotation=d["head_rotation"],
                head_translation=d["head_translation"], focal=float(d["focal"]), cx=float(d["cx"]),
                cy=float(d["cy"]), canonical=d["canonical"], head_radius=float(d["head_radius"]),
                reprojection_error=d["reprojection_error"], interpolated=d["interpolated"],
                landmark_indices=d["landmark_indices"],
            )


# ---- estimation ------------------------------------------------------------------------------------


def _procrustes_mean(shapes: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Generalised Procrustes (rotation only) of centred, unit-norm shapes [M, K, 3]."""
    S = shapes - shapes.mean(axis=1, keepdims=True)
    S = S / np.linalg.norm(S, axis=(1, 2), keepdims=True)
    ref = S[0]
    for _ in range(iterations):
        H = np.einsum("mki,kj->mij", S, ref)  # rotate S onto ref: R = V U^T
        U, _, Vt = np.linalg.svd(H)
        d = np.sign(np.linalg.det(np.einsum("mij,mjk->mik", U, Vt)))
        D = np.ones((len(S), 3))
        D[:, 2] = d
        Rm = np.einsum("mji,mj,mkj->mik", Vt, D, U)  # V D U^T
        aligned = np.einsum("mij,mkj->mki", Rm, S)
        ref = aligned.mean(axis=0)
        ref = ref / np.linalg.norm(ref)
    return ref


class _Gauge:
    def __init__(self, positions: Optional[dict]):
        self.positions = positions  # landmark id -> row in the canonical array, or None

    def fix(self, C: np.ndarray) -> Tuple[np.ndarray, float]:
        """Re-express C in the head frame; returns (C', head_radius)."""
        p = self.positions
        if p is not None:
            re, le = C[p[_RIGHT_EAR]], C[p[_LEFT_EAR]]
            x = (le - re) + (C[p[_LEFT_EYE_OUT]] - C[p[_RIGHT_EYE_OUT]])
            x /= np.linalg.norm(x)
            mid = 0.5 * (re + le)
            z = C[p[_NOSE_BRIDGE]] - mid
            z -= x * np.dot(z, x)
            z /= np.linalg.norm(z)
            y = np.cross(z, x)
            B = np.stack([x, y, z])  # rows: head axes in current coordinates
            width = np.linalg.norm(le - re)
            origin = mid + width * (-0.25 * z + 0.1 * y)
            radius = 0.6 * width
        else:
            centroid = C.mean(axis=0)
            radius = float(np.sqrt(((C - centroid) ** 2).sum(axis=1).mean()))
            B = np.eye(3)
            origin = centroid - radius * np.array([0.0, 0.0, 1.0])
        Cn = (C - origin) @ B.T / radius
        return Cn, 1.0


def _pnp_all(C, pts, ok, f, cx, cy, prev=None):
    """Per-frame PnP; returns R [N,3,3], t [N,3], err [N] (NaN for frames not ok)."""
    N = len(pts)
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    R = np.full((N, 3, 3), np.nan)
    t = np.full((N, 3), np.nan)
    err = np.full(N, np.nan)
    obj = C.astype(np.float64)
    last = None
    for i in np.flatnonzero(ok):
        img = pts[i].astype(np.float64)
        guess = None
        if prev is not None and np.isfinite(prev[0][i]).all():
            guess = (cv2.Rodrigues(prev[0][i])[0], prev[1][i].reshape(3, 1))
        elif last is not None:
            guess = last
        sol = None
        if guess is not None:
            good, rv, tv = cv2.solvePnP(obj, img, K, None, guess[0].copy(), guess[1].copy(), True, cv2.SOLVEPNP_ITERATIVE)
            if good and tv[2, 0] > 0:
                sol = (rv, tv)
        if sol is not None:
            e = _reproj(obj, img, sol, K)
            if e > 20.0:  # a bad local minimum: restart globally
                sol = None
        if sol is None:
            good, rv, tv = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_SQPNP)
            good, rv, tv = cv2.solvePnP(obj, img, K, None, rv, tv, True, cv2.SOLVEPNP_ITERATIVE)
            sol = (rv, tv)
        last = sol
        R[i] = cv2.Rodrigues(sol[0])[0]
        t[i] = sol[1].ravel()
        err[i] = _reproj(obj, img, sol, K)
    return R, t, err


def _reproj(obj, img, sol, K) -> float:
    proj, _ = cv2.projectPoints(obj, sol[0], sol[1], K, None)
    return float(np.linalg.norm(proj.reshape(-1, 2) - img, axis=1).mean())


def _triangulate(R, t, pts, ok, f, cx, cy, prior: np.ndarray, reg: float = 1e-3) -> np.ndarray:
    """Linear multi-view triangulation of every landmark, [K, 3] in head coordinates.

    A weak pull (``reg`` x the mean eigenvalue of the normal matrix) towards ``prior`` (the current
    shape) keeps directions that the views do not constrain (a static head: depth) where they were.
    """
    Rv, tv, P = R[ok], t[ok], pts[ok]  # [M,3,3], [M,3], [M,K,2]
    a = (P[..., 0] - cx) / f  # normalised coordinates [M, K]
    b = (P[..., 1] - cy) / f
    # rows: (a r3 - r1) . X = t1 - a t3 ; (b r3 - r2) . X = t2 - b t3
    A1 = a[..., None] * Rv[:, None, 2, :] - Rv[:, None, 0, :]  # [M,K,3]
    A2 = b[..., None] * Rv[:, None, 2, :] - Rv[:, None, 1, :]
    b1 = tv[:, None, 0] - a * tv[:, None, 2]
    b2 = tv[:, None, 1] - b * tv[:, None, 2]
    # weight by 1/depth so residuals are ~ normalised image error
    w = 1.0 / tv[:, 2][:, None]
    A1, A2, b1, b2 = A1 * w[..., None], A2 * w[..., None], b1 * w, b2 * w
    AtA = np.einsum("mki,mkj->kij", A1, A1) + np.einsum("mki,mkj->kij", A2, A2)
    Atb = np.einsum("mki,mk->ki", A1, b1) + np.einsum("mki,mk->ki", A2, b2)
    lam = reg * np.trace(AtA, axis1=1, axis2=2)[:, None, None] / 3 + 1e-12
    AtA = AtA + lam * np.eye(3)
    Atb = Atb + lam[:, :, 0] * prior
    return np.linalg.solve(AtA, Atb[..., None])[..., 0]


def _fit(C0, pts, ok, f, cx, cy, gauge, iterations):
    C, _ = gauge.fix(C0)
    R, t, err = _pnp_all(C, pts, ok, f, cx, cy)
    for _ in range(iterations):
        C_new = _triangulate(R, t, pts, ok, f, cx, cy, C)
        if not np.isfinite(C_new).all():
            break
        C, _ = gauge.fix(C_new)
        R, t, err = _pnp_all(C, pts, ok, f, cx, cy)
    return C, R, t, err


def estimate_poses(
    points: np.ndarray,
    z: Optional[np.ndarray],
    detected: np.ndarray,
    width: int,
    height: int,
    focal: Optional[float] = None,
    smooth_sigma_frames: float = 1.5,
    indices: Optional[Sequence[int]] = None,
    iterations: Optional[int] = None,
    flat_tolerance: float = 0.02,
    search_frames: int = 120,
) -> PoseTrack:
    """Track the rigid head pose of a clip (method and conventions: module docstring).

    points: [N, L, 2] continuous pixel coordinates; z: [N, L] relative depth in pixels or None;
    detected: [N] bool. ``iterations``: alternations of the final fit (default 4 with ``z``, 25
    without: depth must then come from the head's rotations). ``indices`` selects the rigid landmarks (default: :data:`STABLE_LANDMARKS`
    for the 478-point face mesh, all points otherwise).
    """
    points = np.asarray(points, dtype=np.float64)
    N, L = points.shape[:2]
    if indices is None:
        indices = STABLE_LANDMARKS if L == NUM_FACE_MESH else range(L)
    idx = np.asarray(list(indices), dtype=np.int64)
    pts = points[:, idx]
    zz = None if z is None else np.asarray(z, dtype=np.float64)[:, idx]
    ok = np.asarray(detected, dtype=bool) & np.isfinite(pts).all(axis=(1, 2))
    if zz is not None:
        ok_z = ok & np.isfinite(zz).all(axis=1)
    if ok.sum() < 2:
        raise ValueError(f"pose estimation needs at least 2 frames with landmarks, got {int(ok.sum())}")
    if iterations is None:  # a flat start (no z) converges slowly: alternation is first order
        iterations = 4 if zz is not None else 25
    search_iterations = 2 if zz is not None else 8
    cx, cy = width / 2.0, height / 2.0
    pos = {int(j): r for r, j in enumerate(idx)}
    named = (_RIGHT_EAR, _LEFT_EAR, _RIGHT_EYE_OUT, _LEFT_EYE_OUT, _NOSE_BRIDGE)
    gauge = _Gauge(pos if L == NUM_FACE_MESH and all(k in pos for k in named) else None)

    # initial canonical shape: weak perspective + generalised Procrustes
    sel = np.flatnonzero(ok if zz is None else (ok_z if ok_z.any() else ok))
    sel = sel[np.linspace(0, len(sel) - 1, min(len(sel), 200)).round().astype(int)]
    shp = np.zeros((len(sel), len(idx), 3))
    shp[..., 0] = pts[sel, :, 0] - cx
    shp[..., 1] = -(pts[sel, :, 1] - cy)
    if zz is not None and np.isfinite(zz[sel]).all():
        shp[..., 2] = -zz[sel]
    C0 = _procrustes_mean(shp)

    # focal length: 1-D search on a subsample
    if focal is None:
        sub = np.flatnonzero(ok)
        if len(sub) > search_frames:
            sub = sub[np.linspace(0, len(sub) - 1, search_frames).round().astype(int)]
        mask = np.zeros(N, dtype=bool)
        mask[sub] = True

        def score(fov):
            _, _, _, e = _fit(C0, pts, mask, focal_from_fov(fov, width), cx, cy, gauge, search_iterations)
            return float(np.nanmedian(e))

        grid = np.array(FOV_GRID_DEG)
        errs = np.array([score(v) for v in grid])
        k = int(np.argmin(errs))
        best_fov, best_err = grid[k], errs[k]
        if 0 < k < len(grid) - 1:  # parabola through the three best points
            x0, x1, x2 = grid[k - 1 : k + 2]
            y0, y1, y2 = errs[k - 1 : k + 2]
            den = (x0 - x1) * (x0 - x2) * (x1 - x2)
            A = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
            B = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
            if A > 0:
                v = float(np.clip(-B / (2 * A), x0, x2))
                e = score(v)
                if e < best_err:
                    best_fov, best_err = v, e
        default_err = score(DEFAULT_FOV_DEG)
        if default_err <= best_err * (1 + flat_tolerance):
            best_fov = DEFAULT_FOV_DEG
        focal = focal_from_fov(best_fov, width)
    focal = float(focal)

    C, R, t, _ = _fit(C0, pts, ok, focal, cx, cy, gauge, iterations)
    _, head_radius = gauge.fix(C)
    R, t = interpolate_missing(np.where(ok[:, None, None], R, 0.0), np.where(ok[:, None], t, 0.0), ok)
    R, t = smooth_poses(R, t, smooth_sigma_frames)
    x = np.einsum("nij,kj->nki", R, C) + t[:, None]
    proj = focal * x[..., :2] / x[..., 2:3] + np.array([cx, cy])
    err = np.linalg.norm(proj - pts, axis=-1).mean(axis=1)
    err[~ok] = np.nan
    return PoseTrack(
        camera_to_world=camera_to_world_from_head_pose(R, t), head_rotation=R, head_translation=t,
        focal=focal, cx=cx, cy=cy, canonical=C, head_radius=float(head_radius), reprojection_error=err,
        interpolated=~ok, landmark_indices=idx,
    )
