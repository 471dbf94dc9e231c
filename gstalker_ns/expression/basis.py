"""The expression code: PCA of the head-frame mouth/jaw points over the training frames.

A handful of components carry the articulation (opening, stretching, rounding); the rest is
tracking jitter. Codes are whitened: each component is divided by its own spread over the
training frames. On real clips the inner-lip gap lives in the small components (PC3-PC7 of the
French clip: spreads 0.04-0.17 of PC1's), so with one global scale the training noise added to
the code drowned exactly the mouth opening: the field learns E[deformation | noisy code], and
isotropic noise of 0.3 PC1-units cut the expected opening response to 21% (French) and 46%
(German) of the tracked one. Whitened, the same noise attenuates every component alike,
by 1/(1 + noise^2).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from gstalker_ns.expression.landmarks import ExpressionError

MAX_COMPONENTS = 8
MIN_VARIANCE_SHARE = 0.01  # components explaining less of the training variance are dropped


class ExpressionBasis:
    """mean [P*3], components [K, P*3] (orthonormal rows), scale [K] (each component's std)."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, scale: np.ndarray, num_points: int) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (len(self.components),)).copy()
        self.num_points = int(num_points)

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(
        cls,
        head_points: np.ndarray,
        rows: Sequence[int],
        max_components: int = MAX_COMPONENTS,
        min_share: float = MIN_VARIANCE_SHARE,
    ) -> "ExpressionBasis":
        """PCA of the training rows' points ([F, P, 3]); at least one component is kept."""
        points = np.asarray(head_points, dtype=np.float64)
        x = points[np.asarray(rows, dtype=np.int64)].reshape(len(rows), -1)
        if len(x) < 2 or not np.isfinite(x).all():
            raise ExpressionError(
                f"need 2+ training frames with finite expression landmarks, got {len(x)}; re-run preprocessing"
            )
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        variance = s**2
        share = variance / max(float(variance.sum()), 1e-30)
        keep = max(1, min(int(max_components), int((share >= min_share).sum())))
        components = vt[:keep]
        scale = np.sqrt(variance[:keep] / max(len(x) - 1, 1))
        scale = np.where(scale > 1e-12, scale, 1.0)  # a flat component (constant points) stays at 0
        return cls(mean, components, scale, points.shape[1])

    def encode(self, head_points: np.ndarray) -> np.ndarray:
        """[F, P, 3] -> codes [F, K] float32."""
        x = np.asarray(head_points, dtype=np.float64).reshape(len(head_points), -1)
        return (((x - self.mean) @ self.components.T) / self.scale).astype(np.float32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes [F, K] -> points [F, P, 3]."""
        x = (np.asarray(codes, dtype=np.float64) * self.scale) @ self.components + self.mean
        return x.reshape(len(x), self.num_points, 3).astype(np.float32)

    def opening_vector(self, inner_lips: Tuple[int, int]) -> np.ndarray:
        """[K] such that codes @ v is the inner-lip gap along its mean direction: mouth opening,
        linear in the code (what predictions are scored and calibrated on)."""
        upper, lower = inner_lips
        mean = self.mean.reshape(self.num_points, 3)
        direction = mean[upper] - mean[lower]
        norm = np.linalg.norm(direction)
        direction = direction / norm if norm > 1e-12 else np.array([0.0, 1.0, 0.0])
        comps = self.components.reshape(self.dim, self.num_points, 3)
        return ((comps[:, upper] - comps[:, lower]) @ direction * self.scale).astype(np.float64)

    def to_arrays(self) -> dict:
        return {
            "mean": self.mean.astype(np.float32),
            "components": self.components.astype(np.float32),
            "scale": self.scale.astype(np.float32),
            "num_points": np.int32(self.num_points),
        }
