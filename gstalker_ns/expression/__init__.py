"""The expression bottleneck: audio -> expression code -> deformation.

- `landmarks`: the tracked mouth/jaw points in the head frame, per frame (and eye boxes);
- `basis`: PCA of those points over the training frames -> a small expression code;
- `predictor`: audio feature windows -> expression code (ridge read-out chosen on validation
  slices of the training frames, temporally smoothed, amplitude-calibrated);
- `controls`: a code for a mouth opened by hand (the viewer's expression controls).

The deformation field trains on the tracked code (with noise, so it tolerates prediction error);
held-out frames and new audio are rendered from the predicted code. Pure numpy/torch.
"""

from .basis import ExpressionBasis
from .landmarks import EXPRESSION_FILE, ExpressionError, ExpressionTrack

_TORCH_NAMES = {
    "AudioToExpression": "predictor",
    "FitReport": "predictor",
    "fit_audio_to_expression": "predictor",
    "opening_code": "controls",
}


def __getattr__(name: str):
    """The torch-based parts load on first use: `gstalker-process` tracks landmarks through this
    package and never needs torch (about 1.5 s of start-up)."""
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "EXPRESSION_FILE",
    "AudioToExpression",
    "ExpressionBasis",
    "ExpressionError",
    "ExpressionTrack",
    "FitReport",
    "fit_audio_to_expression",
    "opening_code",
]
