"""Evaluation of trained runs: `gstalker-eval` and the quick held-out score the demo uses.

Modules:

- ``metrics``: the metric definitions as pure functions (PSNR, SSIM, LPIPS, face crop, LMD,
  audio-visual offset);
- ``store``: the folder of saved frames (ground truth, each method's renders, label maps, the
  clip's audio) that the analysis reads, so it can run on another machine (``--lipsync-from``);
- ``render_pass``: renders a split of a loaded run into that folder;
- ``lipsync``: face mesh over saved frames (mouth landmarks, mouth opening);
- ``analysis``: every number from a frames folder -> metrics.json;
- ``report``: the mouth-opening plot, the worst/best grid, the side-by-side mp4, the table;
- ``baseline``: plain splatfacto on the same frames (trained with ns-train, or an existing run);
- ``cli``: the `gstalker-eval` command;
- ``heldout``: the in-process held-out score of `gstalker-demo` and the benchmarks.

The names below are re-exported lazily, so `gstalker-eval --help` does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HeldOutResult", "evaluate_held_out", "load_pipeline", "pearson", "write_metrics"]


def __getattr__(name: str) -> Any:
    if name == "pearson":
        from gstalker_ns.evaluation.metrics import pearson

        return pearson
    if name in __all__:
        from gstalker_ns.evaluation import heldout

        return getattr(heldout, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
