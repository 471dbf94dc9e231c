"""The `talking-portrait` dataparser: reads a gstalker training folder into nerfstudio.

Registered through the `nerfstudio.dataparser_configs` entry point. This module must not import
datamanagers or method configs: nerfstudio imports it while building its own config registry,
and doing so would be a circular import at `ns-train` start.

What reaches nerfstudio:
- cameras with `metadata["frame_idx"]` ([N, 1] long): the video frame each camera shows, which the
  model uses to look up that frame's audio window and blink value;
- `metadata`: the whole audio feature table and the blink track (sent to the model once), the
  tracked expression landmarks per frame and which frames are for training (the model fits its
  audio -> expression read-out on those only), eye boxes (eye-region loss), the
  audio extractor description, the background plate path, per-split label maps (`label_paths`,
  `label_kinds`, `label_landmarks`: read them with `dataset.label_map_for`), the pose statistics
  the torso field normalises with, and seed points from the masks.

Two folder formats are read (`layout.read_layout`): ours (transforms.json) and ER-NeRF / AD-NeRF
folders as their preprocessing leaves them (`gstalker_ns/data/ernerf.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from gstalker_ns.data import layout as L
from gstalker_ns.data.layout import split_indices  # pure: lives with the folder layout, re-exported here
from gstalker_ns.data.seed_points import seed_points_from_masks


def pose_code_statistics(camera_to_worlds: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and spread of the 9-D pose code (two rotation columns + translation) over frames."""
    codes = pose_codes(torch.from_numpy(camera_to_worlds[:, :3, :4]).float()).numpy()
    mean = codes.mean(axis=0)
    std = codes.std(axis=0)
    std = np.maximum(std, 1e-3 * max(float(np.abs(codes).max()), 1e-6))
    return mean.astype(np.float32), std.astype(np.float32)


def pose_codes(camera_to_worlds: torch.Tensor) -> torch.Tensor:
    """[..., 3, 4] camera-to-world -> [..., 9]: the 6-D rotation (two columns) and the centre."""
    rotation = camera_to_worlds[..., :3, :3]
    return torch.cat([rotation[..., :, 0], rotation[..., :, 1], camera_to_worlds[..., :3, 3]], dim=-1)


@dataclass
class TalkingPortraitDataParserConfig(DataParserConfig):
    """A gstalker training folder (written by gstalker-process or gstalker-synth), or an ER-NeRF /
    AD-NeRF folder as their preprocessing leaves it."""

    _target: Type = field(default_factory=lambda: TalkingPortraitDataParser)
    data: Path = Path("person")
    """The training folder (holds transforms.json, or ER-NeRF's transforms_train.json)."""
    eval_fraction: float = 1.0 / 11.0
    """Fraction of frames held out for evaluation, taken from the end of the clip."""
    num_seed_points: int = 40000
    """How many coloured seed points to make from the masks (the model samples its initial Gaussians from them)."""
    seed_frames: int = 8
    """How many training frames the seed points are taken from."""
    ernerf_audio: Literal["auto", "deepspeech", "wav2vec", "hubert"] = "auto"
    """ER-NeRF folders only: which audio features to train on (auto: aud_ds.npy / aud.npy, then
    aud_eo.npy, then aud_hu.npy, the first that exists)."""


@dataclass
class TalkingPortraitDataParser(DataParser):
    """Parses transforms.json, checks the folder, and builds cameras with frame indices."""

    config: TalkingPortraitDataParserConfig
    includes_time: bool = False

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        layout = L.read_layout(resolve_training_folder(Path(self.config.data)), ernerf_audio=self.config.ernerf_audio)
        L.check_files(layout)
        audio_table = L.load_audio_features(layout)
        num_feature_rows = audio_table.shape[0]

        frames = sorted(layout.frames, key=lambda f: f.frame_idx)
        indices = split_indices(len(frames), self.config.eval_fraction, split)
        chosen = [frames[i] for i in indices]

        # Rescale the world so the head radius is 1: learning rates and densification thresholds
        # are then in head-radius units for every subject, whatever units preprocessing used.
        head_radius = layout.head_radius or estimate_head_radius(layout, frames)
        scale = 1.0 / head_radius
        for f in frames:
            f.camera_to_world = f.camera_to_world.copy()
            f.camera_to_world[:3, 3] *= scale
        c2w_all = np.stack([f.camera_to_world for f in frames]).astype(np.float32)
        c2w = torch.from_numpy(np.stack([f.camera_to_world[:3, :4] for f in chosen]).astype(np.float32))
        n = len(chosen)
        cameras = Cameras(
            camera_to_worlds=c2w,
            fx=torch.full((n, 1), layout.fl_x),
            fy=torch.full((n, 1), layout.fl_y),
            cx=torch.full((n, 1), layout.cx),
            cy=torch.full((n, 1), layout.cy),
            width=torch.full((n, 1), layout.width, dtype=torch.long),
            height=torch.full((n, 1), layout.height, dtype=torch.long),
            camera_type=CameraType.PERSPECTIVE,
            metadata={"frame_idx": torch.tensor([[min(f.frame_idx, num_feature_rows - 1)] for f in chosen])},
        )

        # blink per feature row (frames may be fewer than rows; rows without a frame keep 0)
        blink = np.zeros(num_feature_rows, dtype=np.float32)
        for f in frames:
            if f.frame_idx < num_feature_rows:
                blink[f.frame_idx] = f.blink

        train_frames = [frames[i] for i in split_indices(len(frames), self.config.eval_fraction, "train")]
        pose_mean, pose_std = pose_code_statistics(np.stack([f.camera_to_world for f in train_frames]))
        seed_xyz, seed_rgb, seed_part = seed_points_from_masks(
            layout, train_frames, 1.0, self.config.num_seed_points, self.config.seed_frames
        )
        from gstalker_ns.expression.landmarks import ExpressionError, track_for_layout

        try:
            expression = track_for_layout(layout, num_feature_rows)
        except ExpressionError as exc:
            raise L.DatasetError(str(exc)) from None
        train_rows = sorted({min(f.frame_idx, num_feature_rows - 1) for f in train_frames})
        eye_boxes = expression.eye_boxes / np.array([layout.width, layout.height] * 2, dtype=np.float32)
        centres = c2w_all[:, :3, 3]
        extent = float(np.abs(centres).max()) * 1.2 + 1.0
        metadata: Dict[str, object] = {
            "audio_features": torch.from_numpy(audio_table),
            "audio_extractor": layout.audio_extractor,
            "blink": torch.from_numpy(blink),
            "fps": layout.fps,
            "background_path": str(layout.path(layout.background)) if layout.background else None,
            "label_paths": [str(layout.path(f.mask_path)) if f.mask_path else None for f in chosen],
            "label_kinds": [f.mask_kind for f in chosen],
            "label_landmarks": [str(layout.path(f.landmarks_path)) if f.landmarks_path else None for f in chosen],
            "data_format": layout.source,
            "head_radius": 1.0,
            "world_scale": scale,
            "pose_code_mean": torch.from_numpy(pose_mean),
            "pose_code_std": torch.from_numpy(pose_std),
            "points3D_xyz": torch.from_numpy(seed_xyz),
            "points3D_rgb": torch.from_numpy(seed_rgb),
            "points3D_part": torch.from_numpy(seed_part),
            "audio_path": str(layout.path(layout.audio)) if layout.audio else None,
            # the expression bottleneck: tracked mouth points (world units) per feature row, which
            # rows are training frames (the only ones the audio->expression read-out may fit on)
            "expression_points": torch.from_numpy(expression.head_points * np.float32(scale)),
            "expression_inner_lips": tuple(expression.inner_lips),
            "expression_point_set": expression.point_set,
            "eye_boxes": torch.from_numpy(np.nan_to_num(eye_boxes, nan=-1.0)),
            "train_rows": torch.tensor(train_rows, dtype=torch.long),
        }
        return DataparserOutputs(
            image_filenames=[layout.path(f.file_path) for f in chosen],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-extent] * 3, [extent] * 3], dtype=torch.float32)),
            mask_filenames=None,
            dataparser_scale=scale,
            metadata=metadata,
        )


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
PROCESSED_SUFFIX = ".gstalker"


def _lone_video(folder: Path) -> Optional[Path]:
    """The only video in a folder that holds nothing else (but our own processed folders)."""
    entries = [p for p in folder.iterdir() if not p.name.endswith(PROCESSED_SUFFIX) and not p.name.startswith(".")]
    videos = [p for p in entries if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    return videos[0] if len(videos) == 1 and len(entries) == 1 else None


def resolve_training_folder(data: Path) -> Path:
    """`--data` may name a video, or a folder holding only a video: it is processed first
    (gstalker-process) into `<video stem>.gstalker/` next to it, once; later runs reuse that folder."""
    from gstalker_ns.data.ernerf import is_ernerf_folder

    video: Optional[Path] = None
    if data.is_file() and data.suffix.lower() in VIDEO_SUFFIXES:
        video = data
    elif data.is_dir() and not (data / L.TRANSFORMS_FILE).exists() and not is_ernerf_folder(data):
        video = _lone_video(data)
    if video is None:
        return data
    processed = video.parent / f"{video.stem}{PROCESSED_SUFFIX}"
    if not (processed / L.TRANSFORMS_FILE).exists():
        from gstalker_ns.preprocess.pipeline import process_video
        from nerfstudio.utils.rich_utils import CONSOLE

        CONSOLE.print(f"[gstalker] {video} is a video: processing it first into {processed} (gstalker-process)")
        summary = process_video(video, processed)
        CONSOLE.print(f"[gstalker] processed {summary.kept_frames} frames in {summary.seconds:.0f} s")
    return processed


def estimate_head_radius(layout: L.TalkingPortraitLayout, frames: List[L.FrameEntry]) -> float:
    """Head radius in world units from the head masks' width (for folders that do not state it)."""
    radii = []
    for f in frames[:: max(1, len(frames) // 8)][:8]:
        labels = L.frame_label_map(layout, f)
        if labels is None:
            continue
        cols = np.where((labels >= L.LABEL_HEAD).any(axis=0))[0]
        if cols.size == 0:
            continue
        half_width_px = (cols.max() - cols.min() + 1) / 2.0
        distance = float(np.linalg.norm(f.camera_to_world[:3, 3]))
        radii.append(half_width_px / layout.fl_x * distance)
    if not radii:
        distances = [float(np.linalg.norm(f.camera_to_world[:3, 3])) for f in frames]
        return float(np.median(distances)) / 6.0
    return float(np.median(radii))


talking_portrait_dataparser = DataParserSpecification(
    config=TalkingPortraitDataParserConfig(),
    description="A gstalker talking-portrait folder (gstalker-process / gstalker-synth output) or an ER-NeRF / AD-NeRF folder.",
)
