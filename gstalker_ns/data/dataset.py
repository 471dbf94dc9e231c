"""The per-frame dataset: image plus the frame's label map (face, lips, mouth, torso, background)."""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np
import torch
from PIL import Image

from nerfstudio.data.datasets.base_dataset import InputDataset

from gstalker_ns.data import layout as L


def load_label_map(
    path: str,
    scale_factor: float = 1.0,
    kind: str = L.MASK_KIND_LABELS,
    landmarks_path: Optional[str] = None,
) -> torch.Tensor:
    """uint8 [H, W, 1] label map (values: gstalker_ns.data.layout.LABEL_*), nearest-resized.

    `kind` is the frame's mask kind (FrameEntry.mask_kind): our label PNGs, or ER-NeRF parsing
    maps decoded in memory (lips and mouth interior from `landmarks_path`)."""
    labels = L.read_label_map(path, kind, landmarks_path)
    if scale_factor != 1.0:
        height, width = labels.shape
        image = Image.fromarray(labels).resize(
            (int(width * scale_factor), int(height * scale_factor)), resample=Image.NEAREST
        )
        labels = np.asarray(image)
    return torch.from_numpy(labels.astype(np.uint8))[..., None]


def label_map_for(metadata: Mapping, index: int, scale_factor: float = 1.0) -> Optional[torch.Tensor]:
    """The label map of image `index` from the dataparser's per-split metadata (`label_paths`,
    with `label_kinds` / `label_landmarks` alongside), or None when the frame has none."""
    paths = metadata.get("label_paths")
    if not paths or paths[index] is None:
        return None
    kinds = metadata.get("label_kinds")
    landmarks = metadata.get("label_landmarks")
    return load_label_map(
        paths[index],
        scale_factor,
        kind=kinds[index] if kinds else L.MASK_KIND_LABELS,
        landmarks_path=landmarks[index] if landmarks else None,
    )


class TalkingPortraitDataset(InputDataset):
    """Adds `labels` to each item so the loss can weight the mouth region."""

    def get_metadata(self, data: Dict) -> Dict:
        labels = label_map_for(self.metadata, data["image_idx"], self.scale_factor)
        if labels is None:
            return {}
        image = data["image"]
        if labels.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"{self.metadata['label_paths'][data['image_idx']]}: label map is {tuple(labels.shape[:2])} but its "
                f"frame is {tuple(image.shape[:2])}; re-run preprocessing"
            )
        return {"labels": labels}
