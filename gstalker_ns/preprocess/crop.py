"""Preprocessing: one fixed, face-centred square crop for the whole clip.

    box = choose_crop(points, width, height)      # points: [N, 478, 2] face-mesh pixels, NaN = no face
    small = box.apply(frame)                       # HxWxC -> out_size x out_size x C
    p_crop = box.map_points(points)                # source pixels -> crop pixels
    p_src = box.unmap_points(p_crop)               # and back (to paste renders into the source frame)

**One box per clip.** The camera is static, so the background must stay static too: the box is
chosen once from the whole clip (median face centre and median face height), never per frame.

**Size.** The side is ``face height / face_fraction`` (face height = the landmark bounding box,
forehead to chin; 0.45 leaves room for the hair, neck and shoulders), but never less than
``min(out_size, width, height)``: a face that is small in a large frame is cropped at native
resolution rather than upsampled. The box is then clamped inside the frame (shrunk to the
frame's short side if it is larger). A 512x512 input whose face already fills a normal portrait
share therefore gives the identity box (x0 = y0 = 0, size = 512).

**Output size.** ``out_size`` is lowered to the box side when the box is smaller (frames are
never upsampled: a 256x256 input stays 256x256).

**Coordinates** are continuous pixel coordinates: x right, y down, 0 at the left/top edge of the
first pixel (mediapipe's normalised x * width). Mapping is ``(p - (x0, y0)) * out_size / size``;
NaN stays NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

import numpy as np

from gstalker_ns.errors import GstalkerUserError

DEFAULT_OUT_SIZE = 512
DEFAULT_FACE_FRACTION = 0.45


class CropError(GstalkerUserError, ValueError):
    """No usable crop: typically no face was found in the clip."""


@dataclass
class CropBox:
    """Square box ``[x0, x0 + size) x [y0, y0 + size)`` of a ``src_width x src_height`` frame,
    resized to ``out_size x out_size``."""

    x0: int
    y0: int
    size: int
    out_size: int
    src_width: int
    src_height: int

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "size", "out_size", "src_width", "src_height"):
            setattr(self, name, int(getattr(self, name)))
        if self.size <= 0 or self.out_size <= 0:
            raise ValueError(f"crop size and out_size must be positive, got {self.size}, {self.out_size}")
        if self.x0 < 0 or self.y0 < 0 or self.x0 + self.size > self.src_width or self.y0 + self.size > self.src_height:
            raise ValueError(f"crop box {self} does not lie inside the {self.src_width}x{self.src_height} frame")

    @property
    def scale(self) -> float:
        """Output pixels per source pixel."""
        return self.out_size / self.size

    @property
    def is_identity(self) -> bool:
        return (
            self.x0 == 0
            and self.y0 == 0
            and self.size == self.out_size == self.src_width == self.src_height
        )

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "CropBox":
        return cls(**{key: int(data[key]) for key in ("x0", "y0", "size", "out_size", "src_width", "src_height")})

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Crop and resize an HxW or HxWxC frame of the source size (INTER_AREA when shrinking)."""
        import cv2

        if frame.shape[0] != self.src_height or frame.shape[1] != self.src_width:
            raise ValueError(
                f"frame is {frame.shape[1]}x{frame.shape[0]}, the crop box is for {self.src_width}x{self.src_height}"
            )
        patch = frame[self.y0 : self.y0 + self.size, self.x0 : self.x0 + self.size]
        if self.size == self.out_size:
            return np.ascontiguousarray(patch)
        interp = cv2.INTER_AREA if self.size > self.out_size else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(patch), (self.out_size, self.out_size), interpolation=interp)

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """Source pixel coordinates [..., 2] (x, y) -> crop pixel coordinates (float32)."""
        pts = np.asarray(points, dtype=np.float64)
        out = (pts - np.array([self.x0, self.y0], dtype=np.float64)) * self.scale
        return out.astype(np.float32)

    def unmap_points(self, points: np.ndarray) -> np.ndarray:
        """Crop pixel coordinates [..., 2] -> source pixel coordinates (float32)."""
        pts = np.asarray(points, dtype=np.float64)
        out = pts / self.scale + np.array([self.x0, self.y0], dtype=np.float64)
        return out.astype(np.float32)


def identity_crop(width: int, height: int) -> CropBox:
    """The no-op box for a square frame."""
    if width != height:
        raise ValueError(f"identity crop needs a square frame, got {width}x{height}")
    return CropBox(0, 0, width, width, width, height)


def choose_crop(
    points: np.ndarray,
    width: int,
    height: int,
    out_size: int = DEFAULT_OUT_SIZE,
    face_fraction: float = DEFAULT_FACE_FRACTION,
) -> CropBox:
    """One square box for the clip from face landmarks ``[N, K, 2]`` (NaN rows = no face).

    Centred on the median (over frames) centre of the landmark bounding box, side
    ``median face height / face_fraction`` but at least ``min(out_size, width, height)``,
    clamped inside the frame. Raises CropError when no frame has a face.
    """
    width, height, out_size = int(width), int(height), int(out_size)
    if width <= 0 or height <= 0 or out_size <= 0:
        raise ValueError(f"width, height and out_size must be positive, got {width}, {height}, {out_size}")
    if not (0.0 < face_fraction <= 1.0):
        raise ValueError(f"face_fraction must be in (0, 1], got {face_fraction}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[-1] != 2:
        raise ValueError(f"points must be [N, K, 2], got shape {pts.shape}")
    valid = np.all(np.isfinite(pts), axis=(1, 2))
    if not np.any(valid):
        raise CropError(
            "no face was found in any frame of the clip; use a video in which the face is visible, lit and facing the camera"
        )
    good = pts[valid]
    lo, hi = good.min(axis=1), good.max(axis=1)  # [M, 2]
    centre = np.median((lo + hi) / 2.0, axis=0)
    face_h = float(np.median(hi[:, 1] - lo[:, 1]))
    short = min(width, height)
    side = max(face_h / face_fraction, float(min(out_size, short)))
    side_px = int(min(short, round(side)))
    x0 = int(round(centre[0] - side_px / 2.0))
    y0 = int(round(centre[1] - side_px / 2.0))
    x0 = int(np.clip(x0, 0, width - side_px))
    y0 = int(np.clip(y0, 0, height - side_px))
    return CropBox(x0, y0, side_px, min(out_size, side_px), width, height)
