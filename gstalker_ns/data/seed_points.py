"""Coloured seed points for the initial Gaussians, made from a few frames and their masks.

Talking-portrait clips have no SfM point cloud (the camera barely moves relative to the head).
We back-project the head pixels onto a sphere of the head's radius around the head centre and the
torso pixels onto a plane through the head centre facing the camera. That puts every seed point
where its pixel was seen, with that pixel's colour: a far better start than random points.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from gstalker_ns.data import layout as L

PART_HEAD = 0
PART_TORSO = 1


def pixel_rays(
    u: np.ndarray, v: np.ndarray, camera_to_world: np.ndarray, fx: float, fy: float, cx: float, cy: float
) -> Tuple[np.ndarray, np.ndarray]:
    """World-space ray origins and unit directions for pixel centres (OpenGL camera)."""
    directions_cam = np.stack([(u + 0.5 - cx) / fx, -(v + 0.5 - cy) / fy, -np.ones_like(u, dtype=np.float64)], -1)
    directions = directions_cam @ camera_to_world[:3, :3].T
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    origins = np.broadcast_to(camera_to_world[:3, 3], directions.shape)
    return origins, directions


def intersect_sphere(origins: np.ndarray, directions: np.ndarray, radius: float) -> np.ndarray:
    """Nearest hit on a sphere at the origin; rays that miss take their closest approach point."""
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    t = np.where(disc >= 0, -b - np.sqrt(np.maximum(disc, 0.0)), -b)
    return origins + t[:, None] * directions


def intersect_facing_plane(origins: np.ndarray, directions: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """Hit on the plane {x : normal.x = offset}."""
    denom = directions @ normal
    denom = np.where(np.abs(denom) < 1e-6, 1e-6, denom)
    t = (offset - origins @ normal) / denom
    return origins + t[:, None] * directions


def seed_points_from_masks(
    layout: L.TalkingPortraitLayout,
    frames: List[L.FrameEntry],
    head_radius: float,
    num_points: int,
    num_frames: int,
    seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return xyz [M,3] float32, rgb [M,3] uint8 and part [M] uint8 (0 head, 1 torso)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    picks = np.linspace(0, len(frames) - 1, num=min(num_frames, len(frames))).round().astype(int)
    per_frame = max(1, num_points // max(1, len(picks)))
    xyz_all, rgb_all, part_all = [], [], []
    for i in picks:
        frame = frames[i]
        image = np.asarray(Image.open(layout.path(frame.file_path)).convert("RGB"))
        labels = L.frame_label_map(layout, frame)
        if labels is None:  # no masks: treat the central ellipse as head
            h, w = image.shape[:2]
            yy, xx = np.mgrid[:h, :w]
            labels = np.where(((xx - w / 2) / (w / 3)) ** 2 + ((yy - h / 2) / (h / 3)) ** 2 < 1, L.LABEL_HEAD, 0)
        c2w = frame.camera_to_world.astype(np.float64)
        for part, selector in ((PART_HEAD, labels >= L.LABEL_HEAD), (PART_TORSO, labels == L.LABEL_TORSO)):
            v, u = np.nonzero(selector)
            if u.size == 0:
                continue
            share = per_frame * (3 if part == PART_HEAD else 1) // 4
            take = rng.choice(u.size, size=min(u.size, max(1, share)), replace=False)
            u, v = u[take].astype(np.float64), v[take].astype(np.float64)
            origins, directions = pixel_rays(u, v, c2w, layout.fl_x, layout.fl_y, layout.cx, layout.cy)
            if part == PART_HEAD:
                points = intersect_sphere(origins, directions, head_radius)
            else:
                view_dir = -c2w[:3, 2]
                points = intersect_facing_plane(origins, directions, -view_dir, -0.3 * head_radius)
            xyz_all.append(points)
            rgb_all.append(image[v.astype(int), u.astype(int)])
            part_all.append(np.full(len(points), part, dtype=np.uint8))
    if not xyz_all:
        raise L.DatasetError(
            f"{layout.root}: the masks of the training frames contain no head or torso pixels; "
            "re-run preprocessing (the face was not found)"
        )
    xyz = np.concatenate(xyz_all).astype(np.float32)
    rgb = np.concatenate(rgb_all).astype(np.uint8)
    part = np.concatenate(part_all)
    xyz += rng.normal(scale=0.01 * head_radius, size=xyz.shape).astype(np.float32)
    return xyz, rgb, part
