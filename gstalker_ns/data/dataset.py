"""The per-frame dataset: image plus the frame's label map (face, lips, mouth, torso, background)."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from PIL import Image

from nerfstudio.data.datasets.base_dataset import InputDataset


def load_label_map(path: str, scale_factor: float = 1.0) -> torch.Tensor:
    """uint8 [H, W, 1] label map (values: gstalker_ns.data.layout.LABEL_*), nearest-resized."""
    image = Image.open(path)
    if scale_factor != 1.0:
        width, height = image.size
        image = image.resize((int(width * scale_factor), int(height * scale_factor)), resample=Image.NEAREST)
    labels = np.asarray(image)
    if labels.ndim == 3:  # tolerate RGB-saved label maps
        labels = labels[..., 0]
    return torch.from_numpy(labels.astype(np.uint8))[..., None]


class TalkingPortraitDataset(InputDataset):
    """Adds `labels` to each item so the loss can weight the mouth region."""

    def get_metadata(self, data: Dict) -> Dict:
        paths = self.metadata.get("label_paths")
        if not paths or paths[data["image_idx"]] is None:
            return {}
        labels = load_label_map(paths[data["image_idx"]], self.scale_factor)
        image = data["image"]
        if labels.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"{paths[data['image_idx']]}: label map is {tuple(labels.shape[:2])} but its frame is "
                f"{tuple(image.shape[:2])}; re-run preprocessing"
            )
        return {"labels": labels}
