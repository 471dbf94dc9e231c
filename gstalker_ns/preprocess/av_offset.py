"""Estimate how far a clip's sound is shifted against its lips (gstalker-process).

Method: for each candidate shift, the audio feature windows are re-aligned and a ridge read-out
from audio to the tracked mouth (gstalker_ns.expression.predictor) is scored on validation
slices of the clip; the shift whose audio best explains the mouth wins (parabola-refined between
feature frames). This uses the phonetic content of the speech, not only its loudness, which
correlates weakly with the mouth in continuous speech (measured here: ~0.2 on both real clips).

The default feature alignment (the windows' lookahead) already encodes the usual lead of the
mouth over the sound, so the estimate is the clip's own offset on top of it: 0 for a clip in
sync, positive when the sound lags the lips. Small or unclear estimates are not applied
(:data:`MIN_APPLIED_MS`, :data:`MIN_GAIN`): shifting an in-sync clip by noise would only hurt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np

SEARCH_MS = 200.0  # +- range searched
MIN_APPLIED_MS = 40.0  # smaller estimates are within the measurement's noise: not applied
MIN_GAIN = 0.02  # the peak must beat no shift by this much validation correlation


@dataclass
class OffsetEstimate:
    offset_ms: float  # estimated: positive = the sound lags the lips
    applied_ms: float  # what preprocessing shifted the audio by
    source: str  # "auto", "auto (not applied: ...)" or "user"
    scores: Dict[str, float] = field(default_factory=dict)  # validation corr per shift (ms)

    def to_json(self) -> Dict:
        return {
            "estimated_ms": round(self.offset_ms, 1),
            "applied_ms": round(self.applied_ms, 1),
            "source": self.source,
            "validation_corr_by_shift_ms": {k: round(v, 4) for k, v in self.scores.items()},
        }


def estimate_offset(
    features: np.ndarray,
    feature_rate: float,
    head_points: np.ndarray,
    inner_lips: Sequence[int],
    rows: Sequence[int],
    fps: float,
    window: int,
    lookahead: int,
    search_ms: float = SEARCH_MS,
) -> Optional[OffsetEstimate]:
    """Offset of the sound against the mouth from a [T, D] feature sequence and the tracked
    mouth points [F, P, 3] of `rows` (None when the clip is too short to tell)."""
    import torch

    from gstalker_ns.audio.features import window_features
    from gstalker_ns.expression.basis import ExpressionBasis
    from gstalker_ns.expression.predictor import validation_score

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) < 64:
        return None
    basis = ExpressionBasis.fit(head_points, rows, min_share=0.0)
    codes = torch.from_numpy(basis.encode(head_points))
    opening = torch.from_numpy(basis.opening_vector(tuple(inner_lips))).float()
    step_ms = 1000.0 / feature_rate
    shifts = np.arange(-int(search_ms // step_ms), int(search_ms // step_ms) + 1)
    scores = []
    for shift in shifts:
        # one feature frame per video frame keeps the 21 fits fast; the alignment is what is compared
        table = window_features(features, head_points.shape[0], fps, feature_rate, 1, lookahead + int(shift))
        scores.append(validation_score(torch.from_numpy(table), codes, rows, opening))
    scores_arr = np.nan_to_num(np.asarray(scores), nan=-1.0)
    best = int(np.argmax(scores_arr))
    offset = float(shifts[best])
    if 0 < best < len(shifts) - 1:  # parabola through the peak and its neighbours
        a, b, c = scores_arr[best - 1 : best + 2]
        denominator = a - 2 * b + c
        if denominator < 0:
            offset += float(np.clip(0.5 * (a - c) / denominator, -0.5, 0.5))
    offset_ms = offset * step_ms
    at_zero = scores_arr[int(np.where(shifts == 0)[0][0])]
    table_scores = {f"{s * step_ms:+.0f}": float(v) for s, v in zip(shifts, scores_arr)}
    if abs(offset_ms) < MIN_APPLIED_MS:
        return OffsetEstimate(offset_ms, 0.0, f"auto (not applied: below {MIN_APPLIED_MS:.0f} ms)", table_scores)
    if scores_arr[best] - at_zero < MIN_GAIN:
        return OffsetEstimate(offset_ms, 0.0, "auto (not applied: no clear peak)", table_scores)
    return OffsetEstimate(offset_ms, offset_ms, "auto", table_scores)
