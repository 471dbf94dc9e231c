"""One image-based measure of how open the mouth is, for ground-truth and rendered frames alike.

The synthetic subject's mouth interior is very dark (see head.CAVITY_RGB) against lips and skin,
so the opening shows as the share of dark pixels around the mouth. Darkness is judged relative to
the bright part of the same region (its 90th percentile of luminance), which makes the measure
independent of skin tone, exposure and small colour shifts of a learned renderer:

    score(pixel) = clip((0.5 * ref - lum) / (0.3 * ref), 0, 1)     # 1 at <= 20% of ref, 0 at >= 50%
    measure      = mean score over the region

Use the same region (e.g. from the ground-truth labels) for both images being compared.
"""

from __future__ import annotations

import numpy as np

from gstalker_ns.data.layout import LABEL_LIPS, LABEL_MOUTH_INTERIOR


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    try:
        import cv2

        k = 2 * radius + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        return cv2.dilate(mask.astype(np.uint8), kernel) > 0
    except ImportError:  # pragma: no cover - opencv is part of the stack
        H, W = mask.shape
        padded = np.pad(mask, radius)
        out = np.zeros_like(mask, dtype=bool)
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dx * dx + dy * dy <= radius * radius:
                    out |= padded[radius + dy : radius + dy + H, radius + dx : radius + dx + W]
        return out


def mouth_region(labels: np.ndarray, dilate_px: int) -> np.ndarray:
    """Bool mask of the lips and mouth interior labels, dilated by ``dilate_px`` pixels."""
    labels = np.asarray(labels)
    if labels.ndim == 3:
        labels = labels[..., 0]
    mask = (labels == LABEL_LIPS) | (labels == LABEL_MOUTH_INTERIOR)
    return _dilate(mask, int(dilate_px))


def mouth_opening_measure(image: np.ndarray, region: np.ndarray) -> float:
    """Share of the region's pixels that are dark mouth cavity (0 = closed). See the module doc.

    image: HxWx3, uint8 or float in [0, 1]; region: HxW bool. An empty region gives 0.0.
    """
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    else:
        img = img.astype(np.float32)
    region = np.asarray(region, dtype=bool)
    if img.shape[:2] != region.shape:
        raise ValueError(f"image {img.shape[:2]} and region {region.shape} differ in size")
    if not region.any():
        return 0.0
    px = img[region]
    lum = 0.299 * px[:, 0] + 0.587 * px[:, 1] + 0.114 * px[:, 2]
    ref = float(np.percentile(lum, 90))
    if ref <= 1e-4:
        return 0.0
    score = np.clip((0.5 * ref - lum) / (0.3 * ref), 0.0, 1.0)
    return float(score.mean())
