"""The numbers `gstalker-eval` reports, as pure functions with exact definitions.

Nothing here renders, reads files or runs a face tracker: inputs are arrays (8-bit frames,
landmark arrays, an audio wave), so every definition can be tested against known answers and
is the same on every machine. docs/evaluation.md explains them for users.

Image metrics (per frame, then the mean over frames), on 8-bit RGB frames scaled to [0, 1]:

- ``psnr``: 10 log10(1 / MSE) over all pixels and channels (MSE floored at 1e-12).
- ``ssim``: pytorch_msssim's SSIM (11x11 Gaussian window, sigma 1.5, K = (0.01, 0.03), data range 1,
  valid convolution, mean over the map); the same settings nerfstudio uses.
- ``lpips``: torchmetrics' LPIPS with the AlexNet backbone on inputs in [0, 1] (``normalize=True``),
  only when the AlexNet weights are already in the local torch cache: never downloaded.

Face crop (one square side for the whole evaluation, one position per frame, the same box for the
ground truth and every render of that frame):

- source ``landmarks``: the face-mesh points 0..467 of the ground-truth frame; the frame's box is
  centred on their bounding box; its side is ``FACE_BOX_MARGIN_LANDMARKS`` (1.2) x the median,
  over the ground-truth frames with a face, of the larger side of that bounding box;
- source ``labels`` (no landmarks): the same with the bounding box of the label map's head, lips
  and mouth-interior pixels (labels >= LABEL_HEAD; includes hair and ears) and margin
  ``FACE_BOX_MARGIN_LABELS`` (1.0);
- the side is rounded to whole pixels and limited to the frame; the box's corner is rounded to
  whole pixels and moved (not shrunk) to lie inside the frame; frames without a box of their own
  take the nearest frame's position.

Lip sync:

- ``lmd`` (landmark distance of the mouth): for each frame where face mesh finds a face in both
  the ground truth and the render, take the 40 lip points (``LIP_LANDMARKS``, mediapipe's
  FACEMESH_LIPS), subtract each set's own mean (so head translation does not count), and average
  the Euclidean distance between corresponding points; scaled by 512 / frame height (pixels at a
  512-pixel-high frame); the mean over those frames.
- mouth opening: ``inner_lip_distance`` of gstalker_ns.preprocess.landmarks (inner-lip gap 13-14
  over the outer eye-corner distance 33-263: no units, 0 = closed).
- ``av_offset``: for a mouth-opening series m_k at video times t_k = frame_idx_k / fps and the
  clip's audio, the audio energy e_k(tau) is the RMS of the samples in [t_k - tau, t_k - tau + 1/fps);
  the offset is the tau in [-500, +500] ms, on a 1 ms grid (finer than a frame), that maximises
  Pearson(m, e(tau)). Positive: the video lags the audio (the mouth moves tau after the sound).
  gstalker-eval asks for MIN_AV_SECONDS (4 s) of frames with a face: on the real clips of
  ../shared/data/real, 2-second stretches gave offsets hundreds of ms away from the whole clip's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# mediapipe face mesh: the 40 points of FACEMESH_LIPS (outer and inner lip contours)
LIP_LANDMARKS: Tuple[int, ...] = (
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181,
    185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415,
)  # fmt: skip
FACE_MESH_POINTS = 468  # the mesh proper (478 with the iris points, which the box ignores)
LMD_REFERENCE_HEIGHT = 512.0
FACE_BOX_MARGIN_LANDMARKS = 1.2
FACE_BOX_MARGIN_LABELS = 1.0
AV_MAX_LAG_S = 0.5
AV_LAG_STEP_S = 0.001
MIN_SERIES_FRAMES = 3  # a correlation over fewer frames is reported as unavailable
MIN_AV_FRAMES = 20  # an audio-visual offset from fewer frames is never computed
MIN_AV_SECONDS = 4.0  # gstalker-eval's default: shorter series gave offsets off by hundreds of ms on real clips


# --------------------------------------------------------------------------------------------
# series


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; nan when either series is constant (or shorter than 2)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 2 or x.std() < 1e-12 or y.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def finite_mean(values: Sequence[float]) -> Optional[float]:
    """Mean of the finite values, None when there are none."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else None


# --------------------------------------------------------------------------------------------
# image metrics


def _unit(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image[..., :3].astype(np.float64) / 255.0
    return np.clip(image[..., :3].astype(np.float64), 0.0, 1.0)


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR in dB of two RGB images (uint8, or float in [0, 1]) of one size."""
    a, b = _unit(pred), _unit(gt)
    if a.shape != b.shape:
        raise ValueError(f"image sizes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float(10.0 * math.log10(1.0 / max(mse, 1e-12)))


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """SSIM (pytorch_msssim, the settings in the module docstring); nan for images under 11 px."""
    import torch
    from pytorch_msssim import ssim as ssim_fn

    a, b = _unit(pred), _unit(gt)
    if a.shape != b.shape:
        raise ValueError(f"image sizes differ: {a.shape} vs {b.shape}")
    if min(a.shape[:2]) < 11:
        return float("nan")
    ta = torch.from_numpy(a).float().permute(2, 0, 1)[None]
    tb = torch.from_numpy(b).float().permute(2, 0, 1)[None]
    return float(ssim_fn(ta, tb, data_range=1.0))


class Lpips:
    """LPIPS (AlexNet) when its weights are local; otherwise ``available`` is False with a reason."""

    def __init__(self, device: str = "cpu") -> None:
        from gstalker_ns import _compat

        self.metric = None
        self.device = device
        weights = _compat.local_lpips_weights()
        if weights is None:
            import torch

            self.reason = (
                "AlexNet weights for LPIPS are not in the local torch cache and are never downloaded "
                f"(put alexnet-owt-7be5be79.pth into {torch.hub.get_dir()}/checkpoints to enable)"
            )
            return
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self.metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device).eval()
            self.reason = ""
        except Exception as exc:  # a broken install must not stop the other metrics
            self.reason = f"LPIPS could not be built ({' '.join(str(exc).split())[:160]})"

    @property
    def available(self) -> bool:
        return self.metric is not None

    def __call__(self, pred: np.ndarray, gt: np.ndarray) -> float:
        if self.metric is None:
            return float("nan")
        import torch

        a, b = _unit(pred), _unit(gt)
        if min(a.shape[:2]) < 32:  # AlexNet's strides leave nothing to compare below this size
            return float("nan")
        ta = torch.from_numpy(a).float().permute(2, 0, 1)[None].to(self.device)
        tb = torch.from_numpy(b).float().permute(2, 0, 1)[None].to(self.device)
        with torch.no_grad():
            return float(self.metric(ta, tb))


# --------------------------------------------------------------------------------------------
# face crop


@dataclass
class FaceCrop:
    """Per-frame square boxes (x0, y0) of one side, and how they were found."""

    source: str  # "landmarks" or "labels"
    side: int
    margin: float
    corners: List[Tuple[int, int]]  # (x0, y0) per frame; the box is [x0, x0+side) x [y0, y0+side)
    own_box: List[bool]  # False where the frame had no face and took its nearest neighbour's place

    def box(self, k: int) -> Tuple[int, int, int, int]:
        x0, y0 = self.corners[k]
        return x0, y0, x0 + self.side, y0 + self.side

    def crop(self, image: np.ndarray, k: int) -> np.ndarray:
        x0, y0, x1, y1 = self.box(k)
        return image[y0:y1, x0:x1]

    def as_dict(self) -> Dict:
        return {
            "source": self.source,
            "side_px": self.side,
            "margin": self.margin,
            "frames_with_own_box": int(sum(self.own_box)),
            "boxes_xyxy": [list(self.box(k)) for k in range(len(self.corners))],
        }


def _bbox_of_points(points: np.ndarray) -> Optional[Tuple[float, float, float, float]]:
    pts = np.asarray(points, dtype=np.float64)[:FACE_MESH_POINTS]
    if pts.size == 0 or not np.isfinite(pts).all():
        return None
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def _bbox_of_labels(labels: Optional[np.ndarray]) -> Optional[Tuple[float, float, float, float]]:
    from gstalker_ns.data.layout import LABEL_HEAD

    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 3:
        labels = labels[..., 0]
    rows = np.flatnonzero((labels >= LABEL_HEAD).any(axis=1))
    cols = np.flatnonzero((labels >= LABEL_HEAD).any(axis=0))
    if rows.size == 0:
        return None
    # continuous pixel coordinates: pixel c covers [c, c + 1)
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def face_crop_from_bboxes(
    bboxes: Sequence[Optional[Tuple[float, float, float, float]]], width: int, height: int, margin: float, source: str
) -> Optional[FaceCrop]:
    """The FaceCrop for per-frame face bounding boxes (None where a frame has none); None if no frame has one."""
    have = [k for k, b in enumerate(bboxes) if b is not None]
    if not have:
        return None
    extents = [max(bboxes[k][2] - bboxes[k][0], bboxes[k][3] - bboxes[k][1]) for k in have]  # type: ignore[index]
    side = int(round(margin * float(np.median(extents))))
    side = max(1, min(side, int(width), int(height)))
    corners: List[Tuple[int, int]] = []
    for k in range(len(bboxes)):
        nearest = k if bboxes[k] is not None else min(have, key=lambda j: (abs(j - k), j))
        x0, y0, x1, y1 = bboxes[nearest]  # type: ignore[misc]
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        left = int(round(cx - side / 2.0))
        top = int(round(cy - side / 2.0))
        corners.append((min(max(left, 0), int(width) - side), min(max(top, 0), int(height) - side)))
    return FaceCrop(source=source, side=side, margin=margin, corners=corners, own_box=[b is not None for b in bboxes])


def face_crop_from_landmarks(points: np.ndarray, width: int, height: int) -> Optional[FaceCrop]:
    """From face-mesh points [N, >=468, 2] of the ground-truth frames (NaN rows: no face)."""
    return face_crop_from_bboxes([_bbox_of_points(p) for p in points], width, height, FACE_BOX_MARGIN_LANDMARKS, "landmarks")


def face_crop_from_labels(label_maps: Sequence[Optional[np.ndarray]], width: int, height: int) -> Optional[FaceCrop]:
    """From the ground-truth frames' label maps (None: no label map)."""
    return face_crop_from_bboxes([_bbox_of_labels(m) for m in label_maps], width, height, FACE_BOX_MARGIN_LABELS, "labels")


# --------------------------------------------------------------------------------------------
# lip sync


def mouth_landmark_distance(gt_points: np.ndarray, render_points: np.ndarray, height: int) -> np.ndarray:
    """[N] per-frame LMD in pixels at a 512-pixel-high frame (module docstring); NaN where either
    side has no landmarks. Inputs: face-mesh points [N, 478, 2] in pixels of frames ``height`` high."""
    gt = np.asarray(gt_points, dtype=np.float64)[:, LIP_LANDMARKS, :2]
    rd = np.asarray(render_points, dtype=np.float64)[:, LIP_LANDMARKS, :2]
    gt = gt - gt.mean(axis=1, keepdims=True)
    rd = rd - rd.mean(axis=1, keepdims=True)
    per_frame = np.linalg.norm(gt - rd, axis=-1).mean(axis=1)
    return per_frame * (LMD_REFERENCE_HEIGHT / float(height))


def audio_energy(
    wave: np.ndarray, sample_rate: int, frame_times: np.ndarray, fps: float, lag_s: float = 0.0, wave_start_s: float = 0.0
) -> np.ndarray:
    """RMS of the samples in [t - lag, t - lag + 1/fps) for each frame time t (seconds).

    ``wave_start_s`` is the time of ``wave[0]``; samples outside the wave count as silence.
    """
    return _energy_table(np.asarray(wave, dtype=np.float64), sample_rate, np.asarray(frame_times, dtype=np.float64), fps,
                         np.asarray([lag_s]), wave_start_s)[0]


def _energy_table(wave: np.ndarray, sr: int, times: np.ndarray, fps: float, lags: np.ndarray, wave_start_s: float) -> np.ndarray:
    """[len(lags), len(times)] windowed RMS energies (see audio_energy), from one cumulative sum."""
    cumsum = np.concatenate([[0.0], np.cumsum(wave * wave)])
    n = wave.size
    starts = np.rint((times[None, :] - lags[:, None] - wave_start_s) * sr).astype(np.int64)
    length = max(1, int(round(sr / fps)))
    a = np.clip(starts, 0, n)
    b = np.clip(starts + length, 0, n)
    return np.sqrt((cumsum[b] - cumsum[a]) / length)


@dataclass
class AVOffset:
    offset_ms: float  # positive: video lags audio
    correlation: float  # Pearson at the offset
    correlation_at_zero: float
    frames: int

    def as_dict(self) -> Dict:
        return {
            "offset_ms": round(self.offset_ms, 1),
            "correlation": round(self.correlation, 4),
            "correlation_at_zero": round(self.correlation_at_zero, 4),
            "frames": self.frames,
        }


def av_offset(
    mouth: Sequence[float],
    frame_times: Sequence[float],
    wave: np.ndarray,
    sample_rate: int,
    fps: float,
    wave_start_s: float = 0.0,
    max_lag_s: float = AV_MAX_LAG_S,
    step_s: float = AV_LAG_STEP_S,
    min_frames: int = MIN_AV_FRAMES,
) -> Optional[AVOffset]:
    """The audio-visual offset of a mouth-opening series (module docstring); None when fewer than
    ``min_frames`` (at least MIN_AV_FRAMES) frames have a finite value, the mouth does not move,
    or no lag gives a defined correlation."""
    m = np.asarray(mouth, dtype=np.float64)
    t = np.asarray(frame_times, dtype=np.float64)
    ok = np.isfinite(m)
    if ok.sum() < max(MIN_AV_FRAMES, int(min_frames)) or m[ok].std() < 1e-12:
        return None
    m, t = m[ok], t[ok]
    steps = int(round(max_lag_s / step_s))
    lags = np.arange(-steps, steps + 1) * step_s
    energy = _energy_table(np.asarray(wave, dtype=np.float64), int(sample_rate), t, fps, lags, wave_start_s)
    mc = m - m.mean()
    ec = energy - energy.mean(axis=1, keepdims=True)
    denom = np.sqrt((mc * mc).sum() * (ec * ec).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 1e-12, (ec @ mc) / np.maximum(denom, 1e-300), np.nan)
    if not np.isfinite(r).any():
        return None
    best = int(np.nanargmax(r))
    return AVOffset(
        offset_ms=float(lags[best] * 1000.0),
        correlation=float(r[best]),
        correlation_at_zero=float(r[steps]) if np.isfinite(r[steps]) else float("nan"),
        frames=int(m.size),
    )
