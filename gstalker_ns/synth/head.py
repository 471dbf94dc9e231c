"""The synthetic subject: appearance, analytic geometry and a vectorised torch ray caster.

The subject is a union of analytic primitives (ellipsoids, spheres, an elliptic cylinder) in three
rigid parts: the head (world = head frame), the neck and the torso. Brows, lips, the mouth
opening (dark cavity with teeth and tongue), iris/pupil and hair strands are textures or decals
evaluated in the primitives' local coordinates. Shading is Lambertian (key + fill light, fixed in
the camera frame) plus ambient, with a little specular on eyes, lips and hair.

Rendering casts one ray per pixel centre from the static camera at the origin, intersects each
primitive only for the rays inside its projected bounding box, keeps the nearest valid hit and
shades it. Pixels at edges (a 4-neighbour differs in primitive, label or colour by > 0.05) are
then re-cast with `supersample` x `supersample` sub-samples and box-filtered (adaptive
anti-aliasing: same result as full supersampling on those pixels at a fraction of the cost).
Labels (see gstalker_ns.data.layout) come from the hit primitive or decal; an anti-aliased
pixel's label is the majority of its sub-samples (ties go to the larger label).

Everything is torch on one device picked once (`resolve_device`), so the same code runs on the
CPU here and on CUDA on the GPU machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from gstalker_ns.data.layout import (
    LABEL_HEAD,
    LABEL_LIPS,
    LABEL_MOUTH_INTERIOR,
    LABEL_TORSO,
)
from gstalker_ns.synth.motion import NECK_BASE

NUM_LABELS = 5
# Pairs of primitives shaded as a smooth union (their normals blend near the crease).
_SMOOTH_UNION = {"jaw": "cranium", "cranium": "jaw"}

# Camera framing: focal length in units of the image size (head spans ~43% of the height).
FOCAL_PER_SIZE = 1.22

# ---- head-frame geometry (world units; head radius ~1) -------------------------------------
CRANIUM_CENTER = (0.0, 0.08, -0.05)
CRANIUM_RADII = (0.86, 1.0, 0.97)
JAW_CENTER = (0.0, -0.36, 0.10)
JAW_RADII = (0.68, 0.74, 0.80)
JAW_DROP = 0.06  # world units the jaw moves down at full mouth opening
EYE_CENTERS = ((0.30, 0.10, 0.76), (-0.30, 0.10, 0.76))  # subject's left (+x), right (-x)
EYE_RADIUS = 0.125
LID_RADIUS = 0.133
LOWER_LID_EDGE = -0.48  # in units of LID_RADIUS, eye-local y
NOSE_CENTER = (0.0, -0.04, 0.84)  # the bridge
NOSE_RADII = (0.068, 0.22, 0.11)
NOSE_TILT_DEG = -18.0  # rotation about x: the bottom of the nose comes forward
NOSE_TIP_CENTER = (0.0, -0.19, 0.915)
NOSE_TIP_RADII = (0.082, 0.075, 0.08)
ALA_CENTERS = ((0.068, -0.235, 0.865), (-0.068, -0.235, 0.865))
ALA_RADIUS = 0.055
EAR_CENTERS = ((0.84, 0.0, -0.06), (-0.84, 0.0, -0.06))
EAR_RADII = (0.07, 0.25, 0.15)
HAIR_CENTER = (0.0, 0.15, -0.1)
HAIR_RADII = (0.93, 1.08, 1.05)
# Mouth (head frame, decal projected along z onto the jaw)
MOUTH_Y = -0.50
MOUTH_HALF_WIDTH = 0.235
MOUTH_MAX_GAP = 0.15
# Neck (neck frame: origin at the neck base, axis +y) and torso (torso frame, same origin)
NECK_RADII = (0.39, 0.36)
NECK_Y_RANGE = (-0.35, 1.15)
SHOULDERS_CENTER = (0.0, -0.82, -0.18)  # ellipsoid: the rounded top of the shoulders
SHOULDERS_RADII = (2.05, 0.9, 0.72)
TRUNK_RADII = (2.05, 0.72)  # elliptic cylinder below the shoulders' equator (same centre in x, z)
TRUNK_Y_RANGE = (-5.0, -0.82)

# Lighting, fixed in the camera frame.
_KEY = np.array([-0.40, 0.50, 0.77])
_FILL = np.array([0.70, -0.10, 0.70])
AMBIENT, KEY_STRENGTH, FILL_STRENGTH = 0.36, 0.62, 0.18

# Colours of the mouth interior: very dark, so an image measure can find the opening robustly.
CAVITY_RGB = (0.075, 0.018, 0.022)
TONGUE_RGB = (0.30, 0.08, 0.09)
TEETH_RGB = (0.93, 0.91, 0.85)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else is parsed by torch."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available; use --device cpu or auto")
    return dev


# ---- appearance -------------------------------------------------------------------------------

_SKIN = [
    (0.96, 0.80, 0.69),
    (0.93, 0.74, 0.62),
    (0.87, 0.66, 0.52),
    (0.78, 0.57, 0.43),
    (0.66, 0.46, 0.34),
    (0.54, 0.37, 0.27),
]
_HAIR = [
    (0.07, 0.055, 0.05),
    (0.17, 0.10, 0.06),
    (0.32, 0.20, 0.11),
    (0.45, 0.22, 0.10),
    (0.72, 0.58, 0.36),
    (0.52, 0.51, 0.50),
]
_IRIS = [(0.33, 0.20, 0.10), (0.22, 0.38, 0.58), (0.30, 0.42, 0.25), (0.45, 0.33, 0.16)]


def _hsv_to_rgb(h: float, s: float, v: float) -> Tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


@dataclass
class Appearance:
    """Seeded look of the subject and its background (colours in [0, 1] sRGB)."""

    seed: int
    skin: Tuple[float, float, float]
    lips: Tuple[float, float, float]
    hair: Tuple[float, float, float]
    brow: Tuple[float, float, float]
    iris: Tuple[float, float, float]
    shirt: Tuple[float, float, float]
    neckline: str  # "crew" or "v"
    hairline_front: float  # normalised height of the front hairline on the hair shell
    hair_side_drop: float  # how far the hair comes down at the sides
    bg_colors: List[Tuple[float, float, float]] = field(default_factory=list)
    bg_layout: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_seed(cls, seed: int) -> "Appearance":
        rng = np.random.default_rng([int(seed), 4])
        jitter = lambda c, a: tuple(float(np.clip(v * (1.0 + rng.uniform(-a, a)), 0.0, 1.0)) for v in c)  # noqa: E731
        skin = jitter(_SKIN[rng.integers(len(_SKIN))], 0.04)
        lips = tuple(float(np.clip(v, 0, 1)) for v in np.array(skin) * np.array([0.86, 0.56, 0.58]) + np.array([0.04, 0.0, 0.0]))
        hair = jitter(_HAIR[rng.integers(len(_HAIR))], 0.08)
        brow = tuple(float(v) for v in np.array(hair) * 0.75 + np.array(skin) * 0.05)
        iris = jitter(_IRIS[rng.integers(len(_IRIS))], 0.08)
        shirt = _hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.2, 0.55)), float(rng.uniform(0.3, 0.75)))
        neckline = "v" if rng.uniform() < 0.5 else "crew"
        hairline_front = float(rng.uniform(0.36, 0.5))
        hair_side_drop = float(rng.uniform(0.0, 0.15))
        hue = float(rng.uniform())
        bg_colors = [
            _hsv_to_rgb(hue, float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.55, 0.8))),
            _hsv_to_rgb((hue + rng.uniform(-0.1, 0.1)) % 1.0, float(rng.uniform(0.1, 0.35)), float(rng.uniform(0.3, 0.5))),
            _hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.5, 0.85))),
            _hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.25, 0.6))),
        ]
        bg_layout = {
            "door_x": float(rng.uniform(0.05, 0.25) * (1 if rng.uniform() < 0.5 else -1) + 0.5),
            "door_w": float(rng.uniform(0.18, 0.28)),
            "shelf_y": float(rng.uniform(0.55, 0.75)),
            "floor_y": float(rng.uniform(0.8, 0.92)),
            "noise_seed": float(rng.integers(1 << 30)),
        }
        return cls(
            seed=int(seed),
            skin=skin,
            lips=lips,
            hair=hair,
            brow=brow,
            iris=iris,
            shirt=shirt,
            neckline=neckline,
            hairline_front=hairline_front,
            hair_side_drop=hair_side_drop,
            bg_colors=bg_colors,
            bg_layout=bg_layout,
        )

    def to_json(self) -> Dict[str, object]:
        return {
            "skin": list(self.skin),
            "lips": list(self.lips),
            "hair": list(self.hair),
            "iris": list(self.iris),
            "shirt": list(self.shirt),
            "neckline": self.neckline,
        }


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def make_background(appearance: Appearance, width: int, height: int) -> np.ndarray:
    """A static, out-of-focus indoor background plate: float32 [H, W, 3] in [0, 1].

    Defined in normalised image coordinates, so every size shows the same scene.
    """
    rng = np.random.default_rng([int(appearance.bg_layout["noise_seed"]), 7])
    u = (np.arange(width, dtype=np.float64) + 0.5) / width
    v = (np.arange(height, dtype=np.float64) + 0.5) / height
    U, V = np.meshgrid(u, v)
    wall, wall_dark, accent, floor = (np.array(c) for c in appearance.bg_colors)
    lay = appearance.bg_layout
    img = wall[None, None, :] * (1.0 - 0.25 * V[..., None]) + 0.0 * U[..., None]
    # a soft light patch
    cx, cy = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.4)
    glow = np.exp(-(((U - cx) / 0.35) ** 2 + ((V - cy) / 0.3) ** 2))
    img = img * (1.0 + 0.18 * glow[..., None])
    # a door / panel, out of focus
    blur = 0.012
    dx0, dx1 = lay["door_x"] - lay["door_w"] / 2, lay["door_x"] + lay["door_w"] / 2
    door = _smoothstep(dx0 - blur, dx0 + blur, U) * (1 - _smoothstep(dx1 - blur, dx1 + blur, U))
    door = door * _smoothstep(0.08 - blur, 0.08 + blur, V)
    img = img * (1 - door[..., None]) + (wall_dark[None, None, :] * (1.0 - 0.15 * V[..., None])) * door[..., None]
    frame_line = np.exp(-(((U - dx0) / 0.006) ** 2)) + np.exp(-(((U - dx1) / 0.006) ** 2))
    img = img * (1 - 0.25 * np.clip(frame_line, 0, 1)[..., None] * (V > 0.07)[..., None])
    # a shelf with a few blurred objects on the other side
    sy = lay["shelf_y"]
    side = 1.0 if lay["door_x"] < 0.5 else 0.0
    sx0, sx1 = (0.62, 1.0) if side else (0.0, 0.38)
    shelf_mask = _smoothstep(sx0 - blur, sx0 + blur, U) * (1 - _smoothstep(sx1 - blur, sx1 + blur, U))
    shelf = shelf_mask * np.exp(-(((V - sy) / 0.01) ** 2))
    img = img * (1 - 0.35 * shelf[..., None])
    for _ in range(4):
        ox = rng.uniform(sx0 + 0.04, sx1 - 0.04)
        ow, oh = rng.uniform(0.02, 0.05), rng.uniform(0.04, 0.12)
        col = np.array(_hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.85))))
        obj = _smoothstep(-1.0, -0.8, -np.abs(U - ox) / ow) * _smoothstep(-1.0, -0.8, -np.abs(V - (sy - oh)) / oh)
        img = img * (1 - obj[..., None]) + col[None, None, :] * obj[..., None]
    # a plant-like accent blob and the floor line
    ax, ay = rng.uniform(0.05, 0.95), rng.uniform(0.45, 0.75)
    blob = np.exp(-(((U - ax) / 0.07) ** 2 + ((V - ay) / 0.12) ** 2) ** 2)
    img = img * (1 - 0.8 * blob[..., None]) + 0.8 * accent[None, None, :] * blob[..., None]
    fl = _smoothstep(lay["floor_y"] - blur, lay["floor_y"] + blur, V)
    img = img * (1 - fl[..., None]) + floor[None, None, :] * (1.0 - 0.2 * (V - lay["floor_y"]))[..., None] * fl[..., None]
    # smooth texture (sum of sinusoids) and a vignette
    tex = np.zeros_like(U)
    for _ in range(10):
        ang = rng.uniform(0, np.pi)
        freq = rng.uniform(6.0, 40.0)
        tex += np.sin(freq * (np.cos(ang) * U + np.sin(ang) * V) * 2 * np.pi + rng.uniform(0, 2 * np.pi))
    img = img * (1.0 + 0.007 * tex[..., None])
    vig = 1.0 - 0.18 * ((U - 0.5) ** 2 + (V - 0.5) ** 2) / 0.5
    img = img * vig[..., None]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# ---- intrinsics / per-frame state ------------------------------------------------------------


@dataclass
class Intrinsics:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def for_size(cls, size: int) -> "Intrinsics":
        f = FOCAL_PER_SIZE * size
        return cls(width=size, height=size, fx=f, fy=f, cx=size / 2.0, cy=size / 2.0)


@dataclass
class FrameState:
    """Poses (part frame -> camera frame) and expression of one frame."""

    head_R: np.ndarray
    head_t: np.ndarray
    neck_R: np.ndarray
    neck_t: np.ndarray
    torso_R: np.ndarray
    torso_t: np.ndarray
    mouth_opening: float = 0.0
    blink: float = 0.0


@dataclass
class RenderResult:
    image: np.ndarray  # [H, W, 3] uint8
    labels: np.ndarray  # [H, W] uint8
    ids: Optional[np.ndarray] = None  # [H*ss, W*ss] int16 primitive ids (0 = background)


# ---- primitives ---------------------------------------------------------------------------------


@dataclass
class _Prim:
    name: str
    kind: str  # "ellipsoid" or "cylinder" (axis y, open, clipped to yrange)
    part: str  # "head", "neck" or "torso"
    center: np.ndarray
    radii: np.ndarray
    R: np.ndarray
    label: int
    material: str
    clip: Optional[str] = None
    yrange: Optional[Tuple[float, float]] = None
    pid: int = 0


def _rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def build_primitives() -> List[_Prim]:
    eye = np.eye(3)
    P: List[_Prim] = []

    def add(name, kind, part, center, radii, R=eye, label=LABEL_HEAD, material="skin", clip=None, yrange=None):
        P.append(
            _Prim(name, kind, part, np.asarray(center, float), np.asarray(radii, float), np.asarray(R, float), label, material, clip, yrange)
        )

    for side, c in zip(("l", "r"), EYE_CENTERS):
        add(f"eye_{side}", "ellipsoid", "head", c, (EYE_RADIUS,) * 3, material="eye")
        add(f"lid_{side}", "ellipsoid", "head", c, (LID_RADIUS,) * 3, material="lid", clip="lid")
    add("nose", "ellipsoid", "head", NOSE_CENTER, NOSE_RADII, R=_rot_x(NOSE_TILT_DEG), material="nose")
    add("nose_tip", "ellipsoid", "head", NOSE_TIP_CENTER, NOSE_TIP_RADII, material="nose")
    for side, c in zip(("l", "r"), ALA_CENTERS):
        add(f"ala_{side}", "ellipsoid", "head", c, (ALA_RADIUS,) * 3, material="nose")
    add("jaw", "ellipsoid", "head", JAW_CENTER, JAW_RADII, material="skin")
    add("cranium", "ellipsoid", "head", CRANIUM_CENTER, CRANIUM_RADII, material="skin")
    add("hair", "ellipsoid", "head", HAIR_CENTER, HAIR_RADII, material="hair", clip="hair")
    for side, c in zip(("l", "r"), EAR_CENTERS):
        add(f"ear_{side}", "ellipsoid", "head", c, EAR_RADII, R=_rot_y(15.0 if c[0] > 0 else -15.0), material="ear")
    add("neck", "cylinder", "neck", (0.0, 0.0, 0.0), (NECK_RADII[0], 1.0, NECK_RADII[1]), label=LABEL_TORSO, material="neck", yrange=NECK_Y_RANGE)
    add("shoulders", "ellipsoid", "torso", SHOULDERS_CENTER, SHOULDERS_RADII, label=LABEL_TORSO, material="shirt")
    add("trunk", "cylinder", "torso", (0.0, 0.0, SHOULDERS_CENTER[2]), (TRUNK_RADII[0], 1.0, TRUNK_RADII[1]), label=LABEL_TORSO, material="shirt", yrange=TRUNK_Y_RANGE)
    for i, p in enumerate(P):
        p.pid = i + 1
    return P


PRIMITIVE_NAMES = ["background"] + [p.name for p in build_primitives()]


def primitive_id(name: str) -> int:
    return PRIMITIVE_NAMES.index(name)


def _jaw_front_z(x: float, y: float, mouth_opening: float) -> float:
    """z of the jaw's front surface at (x, y) when the mouth is this open (the jaw drops)."""
    cx, cy, cz = JAW_CENTER
    rx, ry, rz = JAW_RADII
    cy = cy - JAW_DROP * mouth_opening
    return cz + rz * math.sqrt(max(0.0, 1 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2))


def head_landmarks(mouth_opening: float = 0.0) -> Dict[str, np.ndarray]:
    """Known surface points in head (world) coordinates, for tests and checks."""
    gap = MOUTH_MAX_GAP * mouth_opening
    mouth_y = MOUTH_Y - 0.2 * gap
    chin_y = JAW_CENTER[1] - JAW_RADII[1] * 0.8 - JAW_DROP * mouth_opening
    return {
        "nose_tip": np.asarray(NOSE_TIP_CENTER) + np.array([0.0, 0.0, NOSE_TIP_RADII[2]]),
        "left_eye": np.asarray(EYE_CENTERS[0]) + np.array([0.0, 0.0, EYE_RADIUS]),
        "right_eye": np.asarray(EYE_CENTERS[1]) + np.array([0.0, 0.0, EYE_RADIUS]),
        "mouth_center": np.array([0.0, mouth_y, _jaw_front_z(0.0, mouth_y, mouth_opening)]),
        "chin": np.array([0.0, chin_y, _jaw_front_z(0.0, chin_y, mouth_opening)]),
    }


EXPRESSION_POINT_NAMES = ("upper_inner_lip", "lower_inner_lip", "chin")


def expression_points(mouth_opening: float) -> np.ndarray:
    """[3, 3] head-frame points that move with speech (:data:`EXPRESSION_POINT_NAMES`): the
    synthetic subject's exact counterpart of the tracked mouth landmarks of a real clip."""
    gap = MOUTH_MAX_GAP * mouth_opening
    points = []
    for y in (MOUTH_Y + 0.3 * gap, MOUTH_Y - 0.7 * gap):  # the lip edges at the mouth's centre
        points.append((0.0, y, _jaw_front_z(0.0, y, mouth_opening)))
    chin = head_landmarks(mouth_opening)["chin"]
    points.append(tuple(chin))
    return np.asarray(points, dtype=np.float64)


# ---- the renderer -------------------------------------------------------------------------------


class HeadRenderer:
    """Renders the subject for a :class:`FrameState`. Create once per clip, call :meth:`render`."""

    def __init__(
        self,
        appearance: Appearance,
        intrinsics: Intrinsics,
        supersample: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.appearance = appearance
        self.K = intrinsics
        self.ss = int(max(1, supersample))
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.prims = build_primitives()
        W, H, ss = intrinsics.width, intrinsics.height, self.ss
        dev = self.device
        f32 = dict(device=dev, dtype=torch.float32)
        self._f32 = f32
        # one ray through each pixel centre (nerfstudio convention: pixel (i, j) centre at (j+0.5, i+0.5))
        jj = torch.arange(W, **f32) + 0.5
        ii = torch.arange(H, **f32) + 0.5
        self.pix_u = jj[None, :].expand(H, W).reshape(-1)
        self.pix_v = ii[:, None].expand(H, W).reshape(-1)
        self.dirs = self._dirs(self.pix_u, self.pix_v)
        # sub-sample offsets (relative to the pixel corner) for anti-aliased pixels
        g = (torch.arange(ss, **f32) + 0.5) / ss
        self.sub_off = torch.stack([g[None, :].expand(ss, ss).reshape(-1), g[:, None].expand(ss, ss).reshape(-1)], -1)
        self.background_f = make_background(appearance, W, H)  # [H, W, 3] float
        self.background = np.round(self.background_f * 255.0).astype(np.uint8)
        self._bg = torch.from_numpy(self.background.astype(np.float32) / 255.0).to(dev).reshape(-1, 3)
        t = lambda v: torch.tensor(v, **f32)  # noqa: E731
        self.c_skin, self.c_lips, self.c_hair = t(appearance.skin), t(appearance.lips), t(appearance.hair)
        self.c_brow, self.c_iris, self.c_shirt = t(appearance.brow), t(appearance.iris), t(appearance.shirt)
        self.c_cavity, self.c_tongue, self.c_teeth = t(CAVITY_RGB), t(TONGUE_RGB), t(TEETH_RGB)
        self._blush = t([0.04, -0.05, -0.04])
        self.key = t(_KEY / np.linalg.norm(_KEY))
        self.fill = t(_FILL / np.linalg.norm(_FILL))
        rng = np.random.default_rng([appearance.seed, 5])
        k = 8
        nd = rng.normal(size=(3, k))
        nd /= np.linalg.norm(nd, axis=0, keepdims=True)
        nd *= rng.uniform(0.7, 1.3, size=(1, k))
        self._noise_dirs = t(nd)
        self._noise_ph = t(rng.uniform(0, 2 * np.pi, size=k))

    # -- helpers --
    def _noise(self, p: torch.Tensor, scale: float) -> torch.Tensor:
        """Smooth tileless noise in about [-1, 1]: mean of sinusoids along random directions."""
        return torch.sin(scale * (p @ self._noise_dirs) + self._noise_ph).mean(-1) * 2.0

    def _dirs(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Camera-frame ray directions (z = -1) through image points (u, v) in pixels."""
        K = self.K
        return torch.stack([(u - K.cx) / K.fx, -(v - K.cy) / K.fy, torch.full_like(u, -1.0)], -1)

    def _bbox(self, c: np.ndarray, radius: float) -> Optional[Tuple[float, float, float, float]]:
        """Conservative image box (u0, u1, v0, v1), in pixels, of a sphere given in camera coordinates."""
        K = self.K
        depth = -c[2]
        if depth - radius <= 1e-3:
            return -1e9, 1e9, -1e9, 1e9
        ds = (depth - radius, depth + radius)
        xs = [(c[0] + sx * radius) / d for sx in (-1, 1) for d in ds]
        ys = [(c[1] + sy * radius) / d for sy in (-1, 1) for d in ds]
        u0, u1 = K.fx * min(xs) + K.cx, K.fx * max(xs) + K.cx
        v0, v1 = -K.fy * max(ys) + K.cy, -K.fy * min(ys) + K.cy
        if u1 < 0 or v1 < 0 or u0 > K.width or v0 > K.height:
            return None
        return u0, u1, v0, v1

    # -- materials: (albedo [P,3], label [P] long or None, specular [P] or None, lit [P] or None) --
    def _mat_skin(self, prim, pp, pl, st):
        P = pp.shape[0]
        dev = pp.device
        alb = self.c_skin.expand(P, 3) * (1.0 + 0.035 * self._noise(pp, 9.0))[:, None]
        label = torch.full((P,), LABEL_HEAD, dtype=torch.long, device=dev)
        spec = torch.full((P,), 0.05, **self._f32)
        lit = torch.ones(P, dtype=torch.bool, device=dev)
        # Facial features only on the front of the face: work on that subset.
        fi = ((pp[:, 2] > 0.3) & (pp[:, 1] < 0.6) & (pp[:, 1] > -0.9)).nonzero().squeeze(1)
        if fi.numel() == 0:
            return alb, label, spec, lit
        q = pp[fi]
        x, y = q[:, 0], q[:, 1]
        a = alb[fi]
        ax = x.abs()
        # cheeks (a little redder) and eye sockets (a little darker)
        g = torch.exp(-((ax - 0.42) ** 2 + (y + 0.22) ** 2) * (1.0 / (2 * 0.12**2)))
        a = a * (1.0 + g[:, None] * self._blush)
        s = torch.exp(-(((ax - 0.30) * (1.0 / 0.21)) ** 2 + ((y - 0.13) * (1.0 / 0.16)) ** 2))
        a = a * (1.0 - 0.10 * s)[:, None]
        # brows (mirror-symmetric: xx grows outwards)
        xx = ax - 0.30
        yc = 0.32 + 0.045 * (1 - (xx / 0.19) ** 2) - 0.03 * xx
        th = 0.044 - 0.022 * (xx + 0.19) / 0.38
        brow = (xx.abs() < 0.19) & ((y - yc).abs() < th * 0.5)
        hairs = 0.85 + 0.15 * torch.sin(260.0 * (x + 0.3 * y))
        a = torch.where(brow[:, None], self.c_brow * hairs[:, None], a)
        alb = alb.index_copy(0, fi, a)
        # mouth: lips, and the cavity with teeth and tongue when open
        o = float(st.mouth_opening)
        w_m = MOUTH_HALF_WIDTH - 0.02 * o
        mi_local = ((ax < w_m) & (y > MOUTH_Y - 0.3) & (y < MOUTH_Y + 0.2) & (q[:, 2] > 0.4)).nonzero().squeeze(1)
        if mi_local.numel() == 0:
            return alb, label, spec, lit
        mi = fi[mi_local]
        q = pp[mi]
        x, y = q[:, 0], q[:, 1]
        M = q.shape[0]
        gap = MOUTH_MAX_GAP * o
        xn = x / w_m
        prof = torch.clamp(1.0 - xn * xn, min=0.0).sqrt()
        y_ul = MOUTH_Y + 0.3 * gap * prof
        y_ll = MOUTH_Y - 0.7 * gap * prof
        t_u = 0.056 * prof**0.6 - 0.012 * torch.exp(-((x / 0.035) ** 2)) * prof
        t_l = 0.074 * prof**0.7
        upper = (y >= y_ul) & (y < y_ul + t_u)
        lower = (y < y_ll) & (y >= y_ll - t_l)
        cavity = (y < y_ul) & (y >= y_ll)
        lips = upper | lower
        a = alb[mi]
        lab = label[mi]
        sp = spec[mi]
        li = lit[mi]
        lip_col = self.c_lips.expand(M, 3) * (1.0 + 0.03 * self._noise(q, 40.0))[:, None]
        lower_v = ((y_ll - y) / torch.clamp(t_l, min=1e-4)).clamp(0, 1)
        lip_col = torch.where(upper[:, None], lip_col * 0.9, lip_col * (1.0 + 0.08 * torch.sin(math.pi * lower_v))[:, None])
        if gap < 0.016:  # closed or nearly: a dark line where the lips meet
            line = lips & ((y - MOUTH_Y).abs() < 0.008)
            lip_col = torch.where(line[:, None], lip_col * 0.72, lip_col)
        a = torch.where(lips[:, None], lip_col, a)
        lab = torch.where(lips, torch.full_like(lab, LABEL_LIPS), lab)
        sp = torch.where(lips, torch.full_like(sp, 0.12), sp)
        if bool(cavity.any()):
            h = torch.clamp(y_ul - y_ll, min=1e-5)
            upper_teeth = cavity & (y > y_ul - torch.clamp(0.3 * h, max=0.03)) & (x.abs() < 0.155)
            lower_teeth = cavity & (y < y_ll + torch.clamp(0.12 * h, max=0.015)) & (x.abs() < 0.12)
            tongue = cavity & ~lower_teeth & (y < y_ll + 0.38 * h) & (x.abs() < 0.15)
            sep = (torch.remainder(x + 0.021, 0.042) < 0.004).float()
            depth = 1.0 - 0.35 * prof  # darker in the middle
            cav = self.c_cavity.expand(M, 3) * depth[:, None]
            cav = torch.where(tongue[:, None], self.c_tongue.expand(M, 3) * depth[:, None], cav)
            teeth = upper_teeth | lower_teeth
            tcol = self.c_teeth * (1.0 - 0.35 * sep)[:, None] * torch.where(lower_teeth, 0.82, 0.92)[:, None]
            cav = torch.where(teeth[:, None], tcol, cav)
            a = torch.where(cavity[:, None], cav, a)
            lab = torch.where(cavity, torch.full_like(lab, LABEL_MOUTH_INTERIOR), lab)
            sp = torch.where(cavity, torch.where(teeth, 0.05, 0.0), sp)
            li = li & ~cavity
        alb = alb.index_copy(0, mi, a)
        label = label.index_copy(0, mi, lab)
        spec = spec.index_copy(0, mi, sp)
        lit = lit.index_copy(0, mi, li)
        return alb, label, spec, lit

    def _mat_nose(self, prim, pp, pl, st):
        P = pp.shape[0]
        alb = self.c_skin.expand(P, 3) * torch.tensor([1.0, 0.96, 0.95], **self._f32)
        alb = alb * (1.0 + 0.02 * self._noise(pp, 30.0))[:, None]
        if prim.name.startswith("ala"):
            # nostril: the under side of the ala, towards the middle
            u = pl / ALA_RADIUS
            nostril = (u[:, 1] < -0.45) & (u[:, 0] * math.copysign(1.0, prim.center[0]) < 0.35) & (u[:, 2] > -0.2)
            alb = torch.where(nostril[:, None], alb * 0.35, alb)
        return alb, None, torch.full((P,), 0.06, **self._f32), None

    def _mat_ear(self, prim, pp, pl, st):
        P = pp.shape[0]
        u = pl / torch.tensor(prim.radii, **self._f32)
        side = math.copysign(1.0, prim.center[0])
        inner = (u[:, 1] ** 2 + u[:, 2] ** 2 < 0.45) & (u[:, 0] * side > 0)
        alb = self.c_skin.expand(P, 3) * torch.where(inner, 0.78, 0.97)[:, None]
        return alb, None, None, None

    def _mat_eye(self, prim, pp, pl, st):
        P = pp.shape[0]
        u = pl / EYE_RADIUS
        side = math.copysign(1.0, prim.center[0])
        g = torch.tensor([-0.06 * side, 0.0, 1.0], **self._f32)
        g = g / g.norm()
        c = u @ g
        ang = torch.atan2(u[:, 1], u[:, 0])
        sclera = torch.tensor([0.94, 0.92, 0.89], **self._f32) * (1.0 - 0.25 * (1.0 - c).clamp(0, 1))[:, None]
        iris_mod = 0.78 + 0.22 * torch.sin(17.0 * ang + 3.0 * torch.sin(5.0 * ang))
        iris = self.c_iris * iris_mod[:, None]
        limbus = c < math.cos(0.41)
        iris = torch.where(limbus[:, None], iris * 0.55, iris)
        alb = torch.where((c > math.cos(0.47))[:, None], iris, sclera)
        alb = torch.where((c > math.cos(0.19))[:, None], torch.full_like(alb, 0.03), alb)
        return alb, None, torch.full((P,), 0.7, **self._f32), None

    def _mat_lid(self, prim, pp, pl, st):
        P = pp.shape[0]
        u = pl / LID_RADIUS
        edge = self._upper_lid_edge(st.blink)
        alb = self.c_skin.expand(P, 3) * 0.96
        lash = (u[:, 1] >= edge) & (u[:, 1] < edge + 0.13)
        alb = torch.where(lash[:, None], self.c_hair * 0.4 + 0.02, alb)
        lower_line = (u[:, 1] <= LOWER_LID_EDGE) & (u[:, 1] > LOWER_LID_EDGE - 0.05)
        alb = torch.where(lower_line[:, None], alb * 0.75, alb)
        return alb, None, torch.full((P,), 0.04, **self._f32), None

    def _mat_hair(self, prim, pp, pl, st):
        P = pp.shape[0]
        u = pl / torch.tensor(prim.radii, **self._f32)
        theta = torch.atan2(u[:, 0], u[:, 2])
        strands = torch.sin(70.0 * theta + 4.0 * self._noise(pp, 3.0)) * 0.5 + 0.5
        fine = torch.sin(190.0 * theta + 2.0 * self._noise(pp, 9.0)) * 0.5 + 0.5
        shade = 0.72 + 0.18 * strands + 0.10 * fine
        alb = self.c_hair * shade[:, None]
        return alb, None, torch.full((P,), 0.10, **self._f32), None

    def _mat_neck(self, prim, pp, pl, st):
        P = pp.shape[0]
        y = pl[:, 1]
        shadow = 1.0 - 0.3 * torch.clamp((y - 0.1) / 0.45, 0.0, 1.0)
        alb = self.c_skin.expand(P, 3) * (0.95 * shadow * (1.0 + 0.02 * self._noise(pp, 9.0)))[:, None]
        return alb, None, torch.full((P,), 0.03, **self._f32), None

    def _mat_shirt(self, prim, pp, pl, st):
        P = pp.shape[0]
        x, y, z = pp[:, 0], pp[:, 1], pp[:, 2]
        folds = 1.0 + 0.06 * self._noise(pp * torch.tensor([1.0, 0.4, 1.0], **self._f32), 3.0)
        weave = 1.0 + 0.025 * torch.sin(400.0 * x) * torch.sin(400.0 * y)
        alb = self.c_shirt * (folds * weave)[:, None]
        if self.appearance.neckline == "v":
            dist = (y - (-0.50 + 1.15 * x.abs()))  # > 0 inside the opening
            opening = (dist > 0) & (z > 0.0)
        else:
            e = (x / 0.44) ** 2 + ((y - 0.12) / 0.30) ** 2
            dist = (1.0 - e) * 0.2
            opening = (e < 1.0) & (z > 0.0)
        collar = (dist > -0.06) & ~opening & (z > 0.0)
        alb = torch.where(collar[:, None], alb * 0.78, alb)
        skin = self.c_skin.expand(P, 3) * 0.9
        alb = torch.where(opening[:, None], skin, alb)
        return alb, None, None, None

    # -- clipping (valid region of a primitive's surface) --
    @staticmethod
    def _upper_lid_edge(blink: float) -> float:
        # the upper lid comes down to just past the lower lid's edge (closed: a lash line remains)
        return max(0.38 - 1.3 * float(blink), LOWER_LID_EDGE - 0.03)

    def _clip(self, prim, pp, pl, st) -> torch.Tensor:
        if prim.clip == "lid":
            uy = pl[:, 1] / LID_RADIUS
            return (uy > self._upper_lid_edge(st.blink)) | (uy < LOWER_LID_EDGE)
        if prim.clip == "hair":
            u = pl / torch.tensor(prim.radii, **self._f32)
            theta = torch.atan2(u[:, 0], u[:, 2])
            a = self.appearance
            front = a.hairline_front
            side = 0.12 - a.hair_side_drop
            back = -0.45
            # h(theta) = A + B cos + C cos2 through front (0), side (pi/2), back (pi)
            B = (front - back) / 2.0
            A = (front + back) / 4.0 + side / 2.0
            C = (front + back) / 2.0 - A
            h = A + B * torch.cos(theta) + C * torch.cos(2 * theta) + 0.025 * torch.sin(9.0 * theta + 1.3)
            return u[:, 1] > h
        return torch.ones(pl.shape[0], dtype=torch.bool, device=pl.device)

    # -- render --
    def _jobs(self, st: FrameState):
        """Per-frame placement of every primitive, front to back, with its image box."""
        parts = {
            "head": (np.asarray(st.head_R, float), np.asarray(st.head_t, float)),
            "neck": (np.asarray(st.neck_R, float), np.asarray(st.neck_t, float)),
            "torso": (np.asarray(st.torso_R, float), np.asarray(st.torso_t, float)),
        }
        jobs = []
        centers: Dict[str, np.ndarray] = {}
        for prim in self.prims:
            Rp, tp = parts[prim.part]
            center = prim.center.copy()
            if prim.name == "jaw":
                center[1] -= JAW_DROP * float(st.mouth_opening)
            centers[prim.name] = center
            R = Rp @ prim.R
            c = Rp @ center + tp
            if prim.kind == "cylinder":
                y0, y1 = prim.yrange
                mid = R @ np.array([0.0, (y0 + y1) / 2, 0.0]) + c
                brad = math.sqrt(max(prim.radii[0], prim.radii[2]) ** 2 + ((y1 - y0) / 2) ** 2)
                box = self._bbox(mid, brad)
            else:
                box = self._bbox(c, float(prim.radii.max()))
            if box is not None:
                jobs.append((-c[2], prim, R, c, center, box, Rp))
        jobs.sort(key=lambda j: j[0])  # front to back: fewer shaded samples get overwritten
        return jobs, centers

    def _grid_cull(self, box) -> Optional[torch.Tensor]:
        """Indices of the pixel-centre rays inside an image box."""
        u0, u1, v0, v1 = box
        W, H = self.K.width, self.K.height
        c0, c1 = max(0, int(math.floor(u0 - 0.5))), min(W, int(math.ceil(u1 - 0.5)) + 1)
        r0, r1 = max(0, int(math.floor(v0 - 0.5))), min(H, int(math.ceil(v1 - 0.5)) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        rows = torch.arange(r0, r1, device=self.device)
        cols = torch.arange(c0, c1, device=self.device)
        return (rows[:, None] * W + cols[None, :]).reshape(-1)

    def _trace(self, dirs, cull, st, jobs, centers):
        """Nearest valid hit of every ray: (color [N,3] or bg, label [N] uint8, ids [N] int16, hit [N])."""
        dev, f32 = self.device, self._f32
        n_rays = dirs.shape[0]
        depth = torch.full((n_rays,), float("inf"), **f32)
        color = torch.zeros(n_rays, 3, **f32)
        label = torch.zeros(n_rays, dtype=torch.uint8, device=dev)
        ids = torch.zeros(n_rays, dtype=torch.int16, device=dev)
        prim_by_name = {p.name: p for p in self.prims}
        for _, prim, R_np, c_np, center_np, box, Rp in jobs:
            idx = cull(box)
            if idx is None or idx.numel() == 0:
                continue
            d = dirs[idx]
            R = torch.tensor(R_np, **f32)
            o_l = torch.tensor(-R_np.T @ c_np, **f32)  # camera origin in local coordinates
            dl = d @ R  # directions in local coordinates
            inv_r = torch.tensor(1.0 / prim.radii, **f32)
            if prim.kind == "cylinder":
                m = torch.tensor([1.0, 0.0, 1.0], **f32)
                ds, os_ = dl * (inv_r * m), o_l * inv_r * m
            else:
                ds, os_ = dl * inv_r, o_l * inv_r
            a = (ds * ds).sum(-1)
            b = ds @ os_
            cc = float((os_ * os_).sum()) - 1.0
            disc = b * b - a * cc
            t = (-b - torch.sqrt(torch.clamp(disc, min=0.0))) / torch.clamp(a, min=1e-12)
            hit = (disc > 0) & (t > 0) & (t < depth[idx])
            sel = hit.nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            t_s, dl_s = t[sel], dl[sel]
            pl = o_l + t_s[:, None] * dl_s
            ok = None
            if prim.kind == "cylinder":
                ok = (pl[:, 1] >= prim.yrange[0]) & (pl[:, 1] <= prim.yrange[1])
            pp = pl @ torch.tensor(prim.R.T, **f32) + torch.tensor(center_np, **f32)
            if prim.clip is not None:
                c_ok = self._clip(prim, pp, pl, st)
                ok = c_ok if ok is None else ok & c_ok
            if ok is not None:
                keep = ok.nonzero().squeeze(1)
                if keep.numel() == 0:
                    continue
                if keep.numel() < sel.numel():
                    sel, t_s, pl, pp = sel[keep], t_s[keep], pl[keep], pp[keep]
            rays = idx[sel]
            # normals: local -> part frame (smooth unions blend here) -> camera frame
            nl = pl * (inv_r * inv_r)
            if prim.kind == "cylinder":
                nl = nl * torch.tensor([1.0, 0.0, 1.0], **f32)
            n = nl @ torch.tensor(prim.R.T, **f32)
            n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-9)
            other = _SMOOTH_UNION.get(prim.name)
            if other is not None:
                n = self._blend_normal(n, pp, centers[other], prim_by_name[other].radii)
            n = n @ torch.tensor(Rp.T, **f32)
            alb, lab, spec, lit = getattr(self, f"_mat_{prim.material}")(prim, pp, pl, st)
            diff = AMBIENT + KEY_STRENGTH * (n @ self.key).clamp(min=0.0) + FILL_STRENGTH * (n @ self.fill).clamp(min=0.0)
            rgb = alb * diff[:, None]
            if spec is not None:
                v = -dirs[rays]
                v = v / v.norm(dim=-1, keepdim=True)
                hvec = self.key + v
                hvec = hvec / hvec.norm(dim=-1, keepdim=True)
                sp = (n * hvec).sum(-1).clamp(min=0.0) ** 40
                rgb = rgb + (spec * sp)[:, None]
            if lit is not None:
                rgb = torch.where(lit[:, None], rgb, alb * 0.9)
            depth[rays] = t_s
            color[rays] = rgb.clamp(0.0, 1.0)
            label[rays] = lab.to(torch.uint8) if lab is not None else prim.label
            ids[rays] = prim.pid
        return color, label, ids, torch.isfinite(depth)

    def render(self, st: FrameState, return_ids: bool = False) -> RenderResult:
        """Render one frame: one ray per pixel, then `supersample`^2 rays on pixels at edges.

        A pixel is re-sampled when a 4-neighbour differs in primitive, label or colour; its colour
        is then the box filter of its sub-samples and its label their majority (ties: larger label).
        """
        H, W, ss = self.K.height, self.K.width, self.ss
        jobs, centers = self._jobs(st)
        color, label, ids, hit = self._trace(self.dirs, self._grid_cull, st, jobs, centers)
        color = torch.where(hit[:, None], color, self._bg)
        if ss > 1:
            flag = self._edge_pixels(color.reshape(H, W, 3), label.reshape(H, W), ids.reshape(H, W))
            fidx = flag.reshape(-1).nonzero().squeeze(1)
            if fidx.numel() > 0:
                n_sub = ss * ss
                cu = (fidx % W).to(torch.float32)
                cv = torch.div(fidx, W, rounding_mode="floor").to(torch.float32)
                su = (cu[:, None] + self.sub_off[None, :, 0]).reshape(-1)
                sv = (cv[:, None] + self.sub_off[None, :, 1]).reshape(-1)
                sdirs = self._dirs(su, sv)

                def cull(box):
                    u0, u1, v0, v1 = box
                    return ((su >= u0) & (su <= u1) & (sv >= v0) & (sv <= v1)).nonzero().squeeze(1)

                scol, slab, _, shit = self._trace(sdirs, cull, st, jobs, centers)
                bg = self._bg[fidx].repeat_interleave(n_sub, 0)
                scol = torch.where(shit[:, None], scol, bg).reshape(-1, n_sub, 3).mean(1)
                slab = slab.reshape(-1, n_sub).long()
                votes = torch.stack([(slab == l).sum(1) for l in range(NUM_LABELS - 1, -1, -1)], 1)
                vlab = (NUM_LABELS - 1) - torch.argmax(votes, dim=1)  # first maximum: larger label
                color = color.index_copy(0, fidx, scol)
                label = label.index_copy(0, fidx, vlab.to(torch.uint8))
        out = torch.round(color.clamp(0, 1) * 255.0).to(torch.uint8).reshape(H, W, 3)
        return RenderResult(
            image=out.cpu().numpy(),
            labels=label.reshape(H, W).cpu().numpy(),
            ids=ids.reshape(H, W).cpu().numpy() if return_ids else None,
        )

    @staticmethod
    def _edge_pixels(color, label, ids, threshold: float = 0.05) -> torch.Tensor:
        """Pixels whose 4-neighbourhood shows an edge (other primitive/label, or a colour step)."""
        flag = torch.zeros(label.shape, dtype=torch.bool, device=label.device)
        for dim in (0, 1):
            n = label.shape[dim]
            a = [slice(None), slice(None)]
            b = [slice(None), slice(None)]
            a[dim], b[dim] = slice(0, n - 1), slice(1, n)
            a, b = tuple(a), tuple(b)
            e = (label[a] != label[b]) | (ids[a] != ids[b])
            e = e | ((color[a] - color[b]).abs().amax(-1) > threshold)
            flag[a] |= e
            flag[b] |= e
        return flag

    def _blend_normal(self, n, pp, other_center, other_radii, k: float = 0.3):
        """Smooth-union shading: near the curve where two ellipsoids meet, blend their normals."""
        inv_r2 = torch.tensor(1.0 / np.asarray(other_radii) ** 2, **self._f32)
        d = pp - torch.tensor(other_center, **self._f32)
        f = (d * d * inv_r2).sum(-1) - 1.0  # algebraic distance to the other surface (>= 0 outside)
        g = d * inv_r2
        g = g / g.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        w = (0.5 * torch.exp(-f.clamp(min=0.0) / k))[:, None]
        m = (1.0 - w) * n + w * g
        return m / m.norm(dim=-1, keepdim=True).clamp(min=1e-9)


def default_supersample(size: int) -> int:
    """2 at 256 px and above, 3 below (small frames need more anti-aliasing, and it is cheap)."""
    return 2 if size >= 256 else 3


def rest_state(mouth_opening: float = 0.0, blink: float = 0.0) -> FrameState:
    """The frontal rest pose (handy for previews and tests)."""
    from gstalker_ns.synth.motion import HEAD_REST_CENTER

    eye3 = np.eye(3)
    base = HEAD_REST_CENTER + NECK_BASE
    return FrameState(eye3, HEAD_REST_CENTER.copy(), eye3, base.copy(), eye3, base.copy(), mouth_opening, blink)
