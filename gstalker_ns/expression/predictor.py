"""Audio -> expression code: a ridge read-out of the audio feature window, temporally smoothed.

Why this shape: with 1-2k frames a per-frame audio path memorises frame identity. A linear
read-out of pretrained speech features has few degrees of freedom and, measured on held-out
validation slices of two real clips, predicts mouth opening as well as the small convolutional
and MLP regressors we tried (benchmarks/RESULTS.md, "audio to expression"). Being closed-form
it also fits in well under a second, deterministically, on CPU or GPU.

Everything that could be tuned is chosen per clip on validation slices inside the training
frames (never the held-out tail): the ridge strength and the temporal smoothing of the predicted
code sequence (GSTalker's smoothing of the driving signal); preprocessing also aligns the audio
with :func:`validation_score` (gstalker_ns.preprocess.av_offset). The predicted codes are then
scaled by one gain so that the mouth opening's spread matches the tracked one's on those slices:
a least-squares fit shrinks towards the mean where it is unsure, and a mouth that only half
opens reads as mumbling.

Speaker robustness: each clip's features are standardised with that clip's own per-channel mean
and spread (training audio and any new driving audio alike), which removes level, channel and
much of the speaker offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

LAMBDAS = (0.3, 1.0, 3.0, 10.0)
SMOOTHING_SIGMAS = (0.0, 0.75, 1.5)  # frames
FOLDS = 4
FOLD_GAP = 8  # frames dropped around each validation slice (windows overlap across it)
MAX_GAIN = 2.5


def standardise_table(table: Tensor) -> Tensor:
    """[F, W, D] -> the same, each channel at zero mean and unit spread over the whole clip."""
    flat = table.reshape(-1, table.shape[-1]).double()
    mean, std = flat.mean(dim=0), flat.std(dim=0)
    return ((table.double() - mean) / (std + 1e-5)).float()


def gaussian_smooth(codes: Tensor, sigma: float) -> Tensor:
    """Zero-phase Gaussian smoothing along time of [F, K] (edges replicated); sigma in frames."""
    if sigma <= 0 or codes.shape[0] < 2:
        return codes
    radius = max(1, int(round(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=codes.device, dtype=codes.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).reshape(1, 1, -1).expand(codes.shape[1], 1, -1)
    x = torch.nn.functional.pad(codes.T[None], (radius, radius), mode="replicate")
    return torch.nn.functional.conv1d(x, kernel, groups=codes.shape[1])[0].T


def _ridge_double(x: Tensor, y: Tensor, lam: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Ridge regression in float64 (penalty lam x D on standardised inputs): weight [D, K], and
    the input and output means (bias = y_mean - x_mean @ weight). A Cholesky solve, dual
    (n x n) or primal (d x d), whichever is smaller."""
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
    xc, yc = x - x_mean, y - y_mean
    n, d = xc.shape
    if n <= d:  # dual form: an n x n solve instead of d x d
        gram = xc @ xc.T
        gram.diagonal().add_(lam * d)
        weight = xc.T @ torch.cholesky_solve(yc, torch.linalg.cholesky(gram))
    else:
        gram = xc.T @ xc
        gram.diagonal().add_(lam * d)
        weight = torch.cholesky_solve(xc.T @ yc, torch.linalg.cholesky(gram))
    return weight, x_mean, y_mean


def _ridge(x: Tensor, y: Tensor, lam: float) -> Tuple[Tensor, Tensor]:
    """Weights [D, K] and bias [K] of ridge regression (penalty lam x D on standardised inputs)."""
    weight, x_mean, y_mean = _ridge_double(x, y, lam)
    return weight.float(), (y_mean - x_mean @ weight).float()


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def validation_folds(rows: Sequence[int], folds: int = FOLDS, gap: int = FOLD_GAP) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Contiguous (fit rows, validation rows) splits of the training rows, a gap around each slice."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    folds = max(2, min(int(folds), len(rows) // 8))
    bounds = np.linspace(0, len(rows), folds + 1).astype(int)
    out = []
    for i in range(folds):
        val = rows[bounds[i] : bounds[i + 1]]
        lo, hi = val.min() - gap, val.max() + gap
        fit = rows[(rows < lo) | (rows > hi)]
        if len(val) >= 4 and len(fit) >= 8:
            out.append((fit, val))
    return out


@dataclass
class FitReport:
    """What validation chose and how well it did (all on slices of the training frames)."""

    lam: float
    sigma: float
    gain: List[float]
    opening_corr: float  # mean over folds of corr(predicted, tracked mouth opening)
    opening_amplitude: float  # predicted / tracked opening spread, after the gain
    grid: Dict[str, float] = field(default_factory=dict)

    def to_json(self) -> Dict:
        return {
            "lambda": self.lam,
            "smoothing_sigma_frames": self.sigma,
            "gain": [round(g, 4) for g in self.gain],
            "validation_opening_corr": round(self.opening_corr, 4),
            "validation_opening_amplitude": round(self.opening_amplitude, 4),
            "grid": {k: round(v, 4) for k, v in self.grid.items()},
        }


class _FoldSolver:
    """Ridge on one fold for many lambdas at the cost of one: the fit rows' Gram matrix is
    eigendecomposed once (kernel form, n_fit x n_fit), then every lambda is a rescaling."""

    def __init__(self, x: Tensor, codes: Tensor, fit: np.ndarray, val: np.ndarray) -> None:
        xf, xv = x[fit].double(), x[val].double()
        self.x_mean, self.y_mean = xf.mean(dim=0), codes[fit].double().mean(dim=0)
        xc = xf - self.x_mean
        self.dim = xc.shape[1]
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(xc @ xc.T)
        self.projected = self.eigenvectors.T @ (codes[fit].double() - self.y_mean)
        self.cross = (xv - self.x_mean) @ xc.T  # [n_val, n_fit]
        self.val = val

    def predict(self, lam: float) -> Tensor:
        alpha = self.eigenvectors @ (self.projected / (self.eigenvalues + lam * self.dim)[:, None])
        return (self.cross @ alpha + self.y_mean).float()


def _cross_validate(solvers: List[_FoldSolver], codes: Tensor, opening: Tensor, lam: float, sigmas) -> Dict[float, Tuple[float, List]]:
    """For one lambda: per smoothing sigma, the mean fold correlation of the opening and the
    validation predictions (for the gain)."""
    predictions = [(solver.predict(lam), solver.val) for solver in solvers]
    out = {}
    for sigma in sigmas:
        scores, smoothed = [], []
        for pred, val in predictions:
            p = gaussian_smooth(pred, sigma)
            smoothed.append((p, val))
            scores.append(_pearson(p @ opening, codes[val] @ opening))
        out[sigma] = (float(np.mean(scores)), smoothed)
    return out


def _fold_prediction(x: Tensor, codes: Tensor, fit: np.ndarray, val: np.ndarray, lam: float) -> Tensor:
    """Validation predictions of ridge fitted on `fit` rows for ONE lambda: one solve, the same
    numbers as `_FoldSolver`, whose eigendecomposition only pays off over several lambdas (10x
    the cost of one solve)."""
    weight, x_mean, y_mean = _ridge_double(x[fit], codes[fit], lam)
    return ((x[val].double() - x_mean) @ weight + y_mean).float()


def validation_score(table: Tensor, codes: Tensor, rows: Sequence[int], opening: Tensor, lam: float = 1.0) -> float:
    """Mean fold correlation of the predicted and tracked mouth opening (no smoothing): how well
    this audio table explains the mouth, e.g. to compare alignments of the same audio."""
    x = standardise_table(table.to(codes.device)).reshape(table.shape[0], -1)
    opening = torch.as_tensor(opening, dtype=torch.float32, device=codes.device)
    codes = codes.float()
    folds = validation_folds(rows)
    if not folds:
        return float("nan")
    scores = [_pearson(_fold_prediction(x, codes, fit, val, lam) @ opening, codes[val] @ opening) for fit, val in folds]
    return float(np.mean(scores))


def fit_audio_to_expression(
    table: Tensor,
    codes: Tensor,
    rows: Sequence[int],
    opening: Tensor,
    lambdas: Sequence[float] = LAMBDAS,
    sigmas: Sequence[float] = SMOOTHING_SIGMAS,
) -> Tuple["AudioToExpression", FitReport]:
    """Fit on `rows` of a clip: table [F, W, D] audio windows, codes [F, K] tracked expression,
    opening [K] the code's mouth-opening direction (what validation scores)."""
    device = codes.device
    x = standardise_table(table.to(device)).reshape(table.shape[0], -1)
    codes = codes.float()
    opening = torch.as_tensor(opening, dtype=torch.float32, device=device)
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    solvers = [_FoldSolver(x, codes, fit, val) for fit, val in validation_folds(rows)]
    grid: Dict[str, float] = {}
    best = (-2.0, float(lambdas[0]), 0.0, None)
    if solvers:
        for lam in lambdas:
            for sigma, (score, preds) in _cross_validate(solvers, codes, opening, float(lam), sigmas).items():
                grid[f"lambda={lam:g},sigma={sigma:g}"] = score
                if score > best[0] + 1e-9:
                    best = (score, float(lam), float(sigma), preds)
    score, lam, sigma, preds = best
    gain = torch.ones(codes.shape[1], device=device)
    amplitude = 1.0
    if preds is not None:  # one gain for all components: the opening's spread on validation
        predicted = torch.cat([p - p.mean(dim=0) for p, _ in preds]) @ opening
        tracked = torch.cat([codes[v] - codes[v].mean(dim=0) for _, v in preds]) @ opening
        ratio = float(tracked.std() / predicted.std().clamp_min(1e-12))
        gain = gain * min(max(ratio, 1.0), MAX_GAIN)
        amplitude = float((predicted * gain[0]).std() / tracked.std().clamp_min(1e-12))
    weight, bias = _ridge(x[rows], codes[rows], lam)
    module = AudioToExpression(weight.reshape(table.shape[1], table.shape[2], -1), bias, gain, sigma, codes[rows].mean(dim=0))
    report = FitReport(lam, sigma, gain.tolist(), score if preds is not None else float("nan"), amplitude, grid)
    return module, report


class AudioToExpression(nn.Module):
    """Audio feature windows of a whole clip [F, W, D] -> smoothed expression codes [F, K]."""

    def __init__(self, weight: Tensor, bias: Tensor, gain: Tensor, sigma: float, centre: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float())  # [W, D, K]
        self.register_buffer("bias", bias.float())
        self.register_buffer("gain", gain.float())  # per component, about the training mean
        self.register_buffer("centre", centre.float())  # the training codes' mean
        self.register_buffer("sigma", torch.tensor(float(sigma)))

    @classmethod
    def empty(cls, window: int, dim: int, codes: int) -> "AudioToExpression":
        """A placeholder with the right shapes, for loading a checkpoint into."""
        z = torch.zeros
        return cls(z(window, dim, codes), z(codes), torch.ones(codes), 0.0, z(codes))

    @property
    def window(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, table: Tensor) -> Tensor:
        x = standardise_table(table.to(self.weight.device)).reshape(table.shape[0], -1)
        raw = x @ self.weight.reshape(-1, self.weight.shape[-1]) + self.bias
        smoothed = gaussian_smooth(raw, float(self.sigma))
        return self.centre + (smoothed - self.centre) * self.gain
