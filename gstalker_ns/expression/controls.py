"""Hand controls for the expression code: a mouth opened to a chosen level.

The viewer's "Mouth by hand" slider drives the head field with a code instead of the audio's.
A code for "open to level x" is taken along the direction in which this person's tracked codes
change with their mouth opening (the codes' least-squares regression on the opening), not along
the shortest direction that opens the lips: the field was trained on real codes, in which the jaw,
the lips and the cheeks move together, so codes off that path would render unseen expressions.
Pure torch.
"""

from __future__ import annotations

import torch

OPENING_RANGE = (0.05, 0.95)
"""Level 0 and 1 are these quantiles of the clip's own opening: closed and wide open as it was seen."""


def opening_code(codes: torch.Tensor, opening_vector: torch.Tensor, level: float) -> torch.Tensor:
    """[1, K] code whose mouth opening (code . opening_vector) sits at `level` of the clip's range.

    codes: [F, K] tracked codes of the clip's frames (rows of zeros, frames without landmarks, are
    ignored); opening_vector: [K], the linear read-out of the inner-lip gap from a code; level in
    [0, 1] (values outside extrapolate along the same direction, clamped to [-0.5, 1.5]).
    """
    codes = torch.as_tensor(codes, dtype=torch.float32)
    u = torch.as_tensor(opening_vector, dtype=torch.float32).to(codes.device)
    tracked = codes[(codes != 0).any(dim=1)]
    if tracked.shape[0] < 2:
        return torch.zeros(1, codes.shape[1], device=codes.device)
    s = tracked @ u  # the opening of each frame
    mean_code, mean_s = tracked.mean(dim=0), s.mean()
    var = (s - mean_s).square().mean()
    if float(var) <= 0:
        return mean_code[None]
    beta = ((tracked - mean_code) * (s - mean_s)[:, None]).mean(dim=0) / var  # d code / d opening; beta . u = 1
    lo, hi = torch.quantile(s, torch.tensor(OPENING_RANGE, device=s.device))
    target = lo + float(min(max(level, -0.5), 1.5)) * (hi - lo)
    return (mean_code + (target - mean_s) * beta)[None]
