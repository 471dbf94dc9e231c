"""Per-frame audio encoding with temporal smoothing (AD-NeRF / ER-NeRF's AudioNet + AudioAttNet).

Why smoothing: a code computed from one frame's feature window jitters from frame to frame, and
the mouth would flicker. An attention over the codes of the K neighbouring frames yields a
learned, content-dependent low-pass filter, which is what GSTalker's temporal smooth module does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["AudioEncoder", "AudioSmoother", "SmoothedAudioEncoder", "neighbour_indices"]

_SLOPE = 0.02  # LeakyReLU slope of ER-NeRF's audio networks


class AudioEncoder(nn.Module):
    """One frame's feature window [B, W, D] -> audio code [B, code_dim].

    Stride-2 1D convolutions over time halve the window until one step is left (16 -> 8 -> 4 ->
    2 -> 1 for ER-NeRF's W=16; any W works, ceil(log2 W) convolutions), then a 2-layer MLP.
    """

    def __init__(self, in_dim: int, window: int, code_dim: int = 32) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.in_dim = in_dim
        self.window = window
        self.code_dim = code_dim
        num_down = max(1, math.ceil(math.log2(window)))
        widths = [32, 32, 64, 64] + [64] * max(0, num_down - 4)
        layers: list[nn.Module] = []
        channels = in_dim
        for width in widths[:num_down]:
            layers += [nn.Conv1d(channels, width, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(_SLOPE)]
            channels = width
        self.conv = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(channels, 64), nn.LeakyReLU(_SLOPE), nn.Linear(64, code_dim))

    def forward(self, windows: Tensor) -> Tensor:
        """windows [B, W, D] -> [B, code_dim]."""
        if windows.shape[-2:] != (self.window, self.in_dim):
            raise ValueError(f"expected [B, {self.window}, {self.in_dim}] windows, got {list(windows.shape)}")
        h = self.conv(windows.float().transpose(1, 2))  # [B, C, 1]: convolve over time
        return self.mlp(h.mean(dim=-1))


class AudioSmoother(nn.Module):
    """Attention over K neighbouring frames' codes [B, K, C] -> one smoothed code [B, C].

    As AD-NeRF's AudioAttNet: 1D convolutions across the K frames squeeze each code to one score,
    a linear layer mixes the K scores, a softmax turns them into weights that sum to one.
    """

    def __init__(self, code_dim: int = 32, num_neighbours: int = 8) -> None:
        super().__init__()
        self.code_dim = code_dim
        self.num_neighbours = num_neighbours
        widths = [code_dim, 16, 8, 4, 2, 1]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv1d(c_in, c_out, kernel_size=3, stride=1, padding=1), nn.LeakyReLU(_SLOPE)]
        self.conv = nn.Sequential(*layers)
        self.mix = nn.Linear(num_neighbours, num_neighbours)

    def weights(self, codes: Tensor) -> Tensor:
        """The attention weights [B, K] (they sum to one over K)."""
        scores = self.conv(codes.transpose(1, 2)).squeeze(1)  # [B, K]
        return torch.softmax(self.mix(scores), dim=-1)

    def forward(self, codes: Tensor) -> Tensor:
        """codes [B, K, C] -> [B, C]."""
        if codes.shape[1] != self.num_neighbours:
            raise ValueError(f"expected {self.num_neighbours} neighbours, got {codes.shape[1]}")
        return (self.weights(codes).unsqueeze(-1) * codes).sum(dim=1)


def neighbour_indices(frame_idx: Tensor, num_frames: int, num_neighbours: int) -> Tensor:
    """Frames of the smoothing window of each frame: [B] -> [B, K], clamped to the clip.

    The window is centred: offsets -K//2 .. K - K//2 - 1 (K=8: -4..3, as ER-NeRF). At the clip's
    ends the first / last frame repeats (ER-NeRF pads with zeros; repeating keeps real audio).
    """
    offsets = torch.arange(num_neighbours, device=frame_idx.device) - num_neighbours // 2
    return (frame_idx.long().unsqueeze(-1) + offsets).clamp(0, num_frames - 1)


class SmoothedAudioEncoder(nn.Module):
    """Audio code of video frames from the clip's feature table: what the model calls.

    `smooth` may be flipped at any time (e.g. off for a warm-up as AD-NeRF does): the smoother
    is always built, so the parameters and the state dict do not depend on it.
    """

    def __init__(
        self, in_dim: int, window: int, code_dim: int = 32, num_neighbours: int = 8, smooth: bool = True
    ) -> None:
        super().__init__()
        self.encoder = AudioEncoder(in_dim, window, code_dim)
        self.smoother = AudioSmoother(code_dim, num_neighbours)
        self.num_neighbours = num_neighbours
        self.smooth = smooth
        self.out_dim = code_dim

    def forward(self, table: Tensor, frame_idx: Tensor) -> Tensor:
        """table [F, W, D] (the whole clip's windows), frame_idx [B] long -> [B, code_dim].

        Only the rows the batch needs are encoded; for B > 1 each distinct row once (windows of
        nearby frames overlap). B = 1, the usual case, skips `unique` and its device sync.
        """
        frame_idx = frame_idx.reshape(-1).long().to(table.device)
        if not self.smooth:
            return self.encoder(table[frame_idx])
        rows = neighbour_indices(frame_idx, table.shape[0], self.num_neighbours)  # [B, K]
        if rows.shape[0] == 1:
            codes = self.encoder(table[rows[0]]).unsqueeze(0)  # [1, K, C]
        else:
            unique_rows, inverse = torch.unique(rows, return_inverse=True)
            codes = self.encoder(table[unique_rows])[inverse]  # [B, K, C]
        return self.smoother(codes)
