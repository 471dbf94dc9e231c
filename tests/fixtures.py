"""Small hand-made training folders for tests that must not depend on the synthetic generator,
and the shared "needs espeak-ng speech" marker and check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gstalker_ns.data import layout as L
from gstalker_ns.synth.speech import espeak_binary

ESPEAK_MISSING = (
    "espeak-ng is not installed, so the synthetic subject speaks with the procedural voice "
    "(scripts/setup.sh installs espeak-ng when run as root; or: apt-get install espeak-ng)"
)


def needs_espeak(why: str) -> pytest.MarkDecorator:
    """Mark a test whose expectations need espeak-ng speech (`why`: what needs it); without
    espeak-ng it skips and says so."""
    return pytest.mark.skipif(espeak_binary() is None, reason=f"needs espeak-ng speech: {why}; {ESPEAK_MISSING}")


def subject_voice(subject: Path) -> str:
    """The voice a synthetic subject speaks with: "espeak", "festival" or "procedural"."""
    return str(json.loads((Path(subject) / "ground_truth.json").read_text())["audio"]["source"])


def require_espeak_voice(subject: Path, why: str) -> None:
    """Skip (saying `why` needs it) unless the synthetic subject speaks with espeak-ng."""
    voice = subject_voice(subject)
    if voice != "espeak":
        detail = ESPEAK_MISSING if espeak_binary() is None else f"the subject speaks with the {voice} voice"
        pytest.skip(f"needs espeak-ng speech: {why}; {detail}")


def look_at_camera(distance: float, yaw_deg: float) -> np.ndarray:
    """Camera-to-world (OpenGL) on a circle around the origin, looking at it."""
    yaw = np.deg2rad(yaw_deg)
    centre = np.array([np.sin(yaw) * distance, 0.0, np.cos(yaw) * distance])
    forward = -centre / np.linalg.norm(centre)  # camera looks down -z, so z axis = -forward
    z_axis = -forward
    x_axis = np.cross([0.0, 1.0, 0.0], z_axis)
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(z_axis, x_axis)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x_axis, y_axis, z_axis, centre
    return c2w


def make_tiny_folder(root: Path, num_frames: int = 22, size: int = 32, head_radius: float = 0.5, feature_rows=None) -> Path:
    """A valid training folder: coloured disc 'heads', label maps, background, feature table."""
    root = Path(root)
    (root / "frames").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    frames = []
    for i in range(num_frames):
        image = np.full((size, size, 3), 40, np.uint8)
        labels = np.zeros((size, size), np.uint8)
        labels[yy > size * 0.8] = L.LABEL_TORSO
        head = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 4) ** 2
        labels[head] = L.LABEL_HEAD
        mouth = (np.abs(xx - size / 2) < 3) & (np.abs(yy - size * 0.6) < 1 + (i % 3))
        labels[mouth] = L.LABEL_MOUTH_INTERIOR
        image[labels == L.LABEL_TORSO] = (40, 60, 160)
        image[labels == L.LABEL_HEAD] = (220, 170, 140)
        image[labels == L.LABEL_MOUTH_INTERIOR] = (30, 5, 5)
        Image.fromarray(image).save(root / "frames" / f"{i:06d}.jpg", quality=95)
        Image.fromarray(labels).save(root / "masks" / f"{i:06d}.png")
        frames.append(
            L.FrameEntry(
                frame_idx=i,
                file_path=f"frames/{i:06d}.jpg",
                mask_path=f"masks/{i:06d}.png",
                camera_to_world=look_at_camera(6.0 * head_radius, yaw_deg=5 * np.sin(i / 3)),
                blink=float(i % 7 == 0),
            )
        )
    Image.fromarray(np.full((size, size, 3), 40, np.uint8)).save(root / "background.png")
    rows = num_frames if feature_rows is None else feature_rows
    L.atomic_save_npy(root / "audio_features.npy", rng.normal(size=(rows, 16, 8)).astype(np.float32))
    (root / "audio.wav").write_bytes(b"")  # presence only; the dataparser does not decode audio
    focal = size * 1.5
    write_expression_track(root, [1 + (i % 3) for i in range(rows)], size)
    L.write_transforms(
        root,
        fps=25.0,
        width=size,
        height=size,
        fl_x=focal,
        fl_y=focal,
        cx=size / 2,
        cy=size / 2,
        frames=frames,
        audio_extractor={"kind": "test", "dim": 8, "window": 16},
        head_radius=head_radius,
        extra={"expression": "face_landmarks.npz"},
    )
    return root


def write_expression_track(root: Path, gaps, size: int) -> None:
    """face_landmarks.npz: upper/lower lip and chin points whose gap is `gaps` (one per row), and
    eye boxes above the disc's centre."""
    from gstalker_ns.expression.landmarks import ExpressionTrack

    gaps = np.asarray(gaps, dtype=np.float32) * 0.01
    points = np.zeros((len(gaps), 3, 3), np.float32)
    points[:, 0, 1], points[:, 1, 1], points[:, 2, 1] = -0.3 + gaps / 2, -0.3 - gaps / 2, -0.5 - gaps / 4
    boxes = np.tile(np.array([[0.3, 0.3, 0.45, 0.4], [0.55, 0.3, 0.7, 0.4]], np.float32) * size, (len(gaps), 1, 1))
    ExpressionTrack(points, boxes, "synthetic", (0, 1)).save(root / "face_landmarks.npz")
