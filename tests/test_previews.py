"""Preview PNGs of gstalker-process (gstalker_ns.preprocess.previews)."""

from pathlib import Path

import numpy as np
from PIL import Image

from gstalker_ns.preprocess.pose import PoseTrack, camera_to_world_from_head_pose
from gstalker_ns.preprocess.previews import (
    HEADER_HEIGHT,
    PANEL_SIZE,
    grid_shape,
    head_euler_degrees,
    sample_indices,
    write_previews,
)

N, S = 20, 64


def _rot(yaw, pitch, roll):
    """Head -> OpenCV camera rotation for the given Euler angles (the module's convention)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return np.diag([1.0, -1.0, -1.0]) @ Ry @ Rx @ Rz


def _inputs(tmp_path: Path):
    rng = np.random.default_rng(0)
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir()
    masks.mkdir()
    yy, xx = np.mgrid[:S, :S]
    for k in range(N):
        img = np.stack([xx * 4, yy * 4, np.full_like(xx, 8 * k)], -1).astype(np.uint8)
        Image.fromarray(img).save(frames / f"{k:06d}.jpg")
        lab = np.zeros((S, S), np.uint8)
        lab[40:, 10:54] = 1
        lab[((xx - 32) ** 2 + (yy - 26) ** 2) < 200] = 2
        lab[36:40, 26:38] = 3
        lab[37:39, 29:35] = 4
        Image.fromarray(lab).save(masks / f"{k:06d}.png")
    base = rng.uniform(16, 48, size=(478, 2))
    t = np.linspace(0, 1, N)[:, None, None]
    points = (base[None] + 2 * np.sin(2 * np.pi * t)).astype(np.float32)
    valid = np.ones(N, bool)
    valid[7:10] = False
    points[7:10] = np.nan
    ang = np.radians(np.stack([10 * np.sin(np.linspace(0, 6, N)), 5 * np.ones(N), np.linspace(-3, 3, N)], 1))
    R = np.stack([_rot(*a) for a in ang])
    tr = np.tile([0.0, 0.0, 10.0], (N, 1))
    err = rng.uniform(0.5, 1.5, N)
    err[~valid] = np.nan
    poses = PoseTrack(
        camera_to_world=camera_to_world_from_head_pose(R, tr), head_rotation=R, head_translation=tr,
        focal=80.0, cx=32.0, cy=32.0, canonical=np.zeros((5, 3)), head_radius=1.0, reprojection_error=err,
    )
    blink = np.clip(np.sin(np.linspace(0, 9, N)), 0, 1).astype(np.float32)
    lip = np.abs(np.sin(np.linspace(0, 5, N))).astype(np.float32) * 0.3
    plate = rng.integers(0, 255, (S, S, 3), dtype=np.uint8)
    never = np.zeros((S, S), bool)
    never[40:, 20:44] = True
    return frames, masks, points, poses, blink, lip, plate, never, valid, ang


def test_write_previews(tmp_path):
    frames, masks, points, poses, blink, lip, plate, never, valid, ang = _inputs(tmp_path)
    arrays = [points, poses.head_rotation, poses.head_translation, poses.reprojection_error, blink, lip, plate, never, valid]
    before = [a.copy() for a in arrays]
    out = tmp_path / "out"
    paths = write_previews(out, frames, masks, points, poses, blink, lip, plate, never, valid, fps=25.0, num_samples=5)
    assert [p.name for p in paths] == ["overlays.png", "background.png", "tracks.png"]
    for p in paths:
        assert p.parent == out / "previews" and p.is_file()
    assert not [p for p in (out / "previews").iterdir() if p not in paths]  # no temp files left
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)

    rows, cols = grid_shape(5)
    assert (rows, cols) == (2, 3)
    with Image.open(paths[0]) as im:  # 5 square panels, 3 per row, legend strip on top
        assert im.size == (cols * PANEL_SIZE, HEADER_HEIGHT + rows * PANEL_SIZE)
        grid = np.asarray(im.convert("RGB"))
    empty = grid[HEADER_HEIGHT + PANEL_SIZE + 5 :, 2 * PANEL_SIZE + 5 :]  # the 6th cell is unused
    assert np.all(empty == 32)
    with Image.open(paths[1]) as im:
        assert im.size[0] >= 2 * S and im.size[1] >= S + HEADER_HEIGHT
    with Image.open(paths[2]) as im:
        assert im.size[0] > 500 and im.size[1] > 500

    # six samples -> 2 x 3 panels; rerun overwrites in place
    paths = write_previews(out, frames, masks, points, poses, blink, lip, plate, never, valid, fps=25.0)
    with Image.open(paths[0]) as im:
        assert im.size == (3 * PANEL_SIZE, HEADER_HEIGHT + 2 * PANEL_SIZE)


def test_euler_and_sampling():
    ang = np.radians([[20.0, -10.0, 5.0], [0.0, 0.0, 0.0], [-35.0, 15.0, -8.0]])
    R = np.stack([_rot(*a) for a in ang])
    np.testing.assert_allclose(head_euler_degrees(R), np.degrees(ang), atol=1e-9)
    assert sample_indices(1258, 6) == [0, 251, 503, 754, 1006, 1257]
    assert sample_indices(3, 6) == [0, 1, 2]
    assert sample_indices(0, 6) == []
