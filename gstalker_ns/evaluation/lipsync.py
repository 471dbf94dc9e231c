"""Face mesh over frame sequences for the lip-sync metrics (needs mediapipe; see metrics.py for the definitions).

Each sequence (the ground truth, each method's renders) is tracked on its own with
gstalker_ns.preprocess.landmarks.track_landmarks: mediapipe Face Mesh in video mode, the face
detected once and then followed, re-detected when lost. Frames where no face is found stay
NaN and are counted, never filled in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import numpy as np

from gstalker_ns.evaluation.metrics import MIN_SERIES_FRAMES, mouth_landmark_distance, pearson


def face_mesh_unavailable() -> Optional[str]:
    """None when face mesh can run here, else the reason."""
    try:
        import mediapipe as mp

        mp.solutions.face_mesh  # noqa: B018  (0.10.30+ ships no solutions)
    except ImportError:
        return "mediapipe is not installed here (pip install mediapipe==0.10.21); finish with gstalker-eval --lipsync-from"
    except AttributeError:
        return "this mediapipe has no face-mesh model (install mediapipe==0.10.21); finish with gstalker-eval --lipsync-from"
    return None


@dataclass
class MouthTrack:
    """Face-mesh points of one sequence and the measures taken from them."""

    points: np.ndarray  # [N, 478, 2] pixels, NaN where no face
    detected: np.ndarray  # [N] bool
    opening: np.ndarray  # [N] inner-lip distance (scale-free), NaN where no face
    height: int
    eye_aspect: Optional[np.ndarray] = None  # [N] eye aspect ratio (both eyes), NaN where no face


def track_mouth(frames: Iterable[np.ndarray], num_frames: Optional[int] = None, progress: bool = False) -> MouthTrack:
    """Face mesh over RGB uint8 frames in order (see the module docstring)."""
    from gstalker_ns.preprocess.landmarks import eye_aspect_ratio, inner_lip_distance, track_landmarks

    track = track_landmarks(frames, num_frames=num_frames, progress=progress)
    return MouthTrack(
        points=track.points,
        detected=track.detected.copy(),
        opening=inner_lip_distance(track.points),
        height=track.height,
        eye_aspect=eye_aspect_ratio(track.points),
    )


BLINK_EAR_FRACTION = 0.75  # a blink: EAR below this share of the sequence's open-eye (90th percentile) level


def blink_agreement(gt: MouthTrack, render: MouthTrack) -> Dict:
    """Correlation of the rendered eye aspect ratio with the ground truth's, or why there is none
    (no blink in the ground truth: the EAR then only carries tracking jitter)."""
    both = gt.detected & render.detected & np.isfinite(gt.eye_aspect) & np.isfinite(render.eye_aspect)
    out: Dict = {"blink_frames_gt": 0, "blink_correlation": None, "blink_reason": ""}
    if both.sum() < MIN_SERIES_FRAMES:
        out["blink_reason"] = f"needs {MIN_SERIES_FRAMES}+ frames with a face in both"
        return out
    ear = gt.eye_aspect[both]
    blinking = ear < BLINK_EAR_FRACTION * np.percentile(ear, 90)
    out["blink_frames_gt"] = int(blinking.sum())
    if not blinking.any():
        out["blink_reason"] = "the ground truth does not blink in these frames"
        return out
    corr = pearson(render.eye_aspect[both], ear)
    out["blink_correlation"] = corr if np.isfinite(corr) else None
    return out


def compare_mouths(gt: MouthTrack, render: MouthTrack) -> Dict:
    """LMD and the mouth-opening correlation of a render sequence against the ground truth's."""
    both = gt.detected & render.detected
    out: Dict = {
        "frames": int(gt.detected.size),
        "frames_without_face_gt": int((~gt.detected).sum()),
        "frames_without_face_render": int((~render.detected).sum()),
        "frames_compared": int(both.sum()),
    }
    per_frame = np.full(gt.detected.size, np.nan)
    if both.any():
        per_frame[both] = mouth_landmark_distance(gt.points[both], render.points[both], gt.height)
    out["lmd_per_frame"] = per_frame
    out["lmd"] = float(np.mean(per_frame[both])) if both.any() else None
    ok = both & np.isfinite(gt.opening) & np.isfinite(render.opening)
    corr = pearson(render.opening[ok], gt.opening[ok]) if ok.sum() >= MIN_SERIES_FRAMES else float("nan")
    out["mouth_opening_correlation"] = corr if np.isfinite(corr) else None
    if gt.eye_aspect is not None and render.eye_aspect is not None:
        out.update(blink_agreement(gt, render))
    return out
