"""One rasterization call for the whole project: gsplat's CUDA kernels on CUDA, dense torch elsewhere.

gsplat 1.4.0 only runs on CUDA; `torch_rasterizer.rasterization` reproduces its non-packed
pinhole path in plain PyTorch. Model code calls `rasterize(...)` with gsplat's keyword
arguments and gets gsplat's `(render_colors, render_alphas, info)` back on either device.

Backend choice, in order:
1. `backend=` argument of `rasterize` ("gsplat", "torch" or "auto"),
2. the environment variable `GSTALKER_RASTERIZER` ("gsplat", "torch" or "auto"),
3. "auto": gsplat for inputs on a CUDA device, torch otherwise.

Forcing "torch" on CUDA is how `benchmarks/rasterizer_parity.py` compares both on one GPU.
`packed` defaults to False on both backends (gsplat's own default is True) so `info` has the
same [C, N, ...] layout whichever backend ran.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .torch_rasterizer import rasterization as torch_rasterization

BACKEND_ENV_VAR = "GSTALKER_RASTERIZER"
BACKENDS = ("auto", "gsplat", "torch")
TORCH_ONLY_KWARGS = ("pixel_chunk",)
"""Keyword arguments of the torch backend that gsplat 1.4.0 does not take."""


def _requested_backend(backend: Optional[str]) -> str:
    """The explicit argument, else the environment override, else "auto"."""
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV_VAR, "auto")
    choice = choice.strip().lower()
    if choice not in BACKENDS:
        source = "backend argument" if backend is not None else f"${BACKEND_ENV_VAR}"
        raise ValueError(f"{source} must be one of {BACKENDS}, got {choice!r}")
    return choice


def backend_for(device: Union[torch.device, str], backend: Optional[str] = None) -> str:
    """Which backend renders inputs on `device`: "gsplat" (CUDA kernels) or "torch" (dense).

    Does not import gsplat, so it is safe to call on machines without a CUDA build.
    """
    choice = _requested_backend(backend)
    if choice != "auto":
        return choice
    return "gsplat" if torch.device(device).type == "cuda" else "torch"


def rasterize(backend: Optional[str] = None, **kwargs: Any) -> Tuple[Tensor, Tensor, Dict[str, Any]]:
    """Render Gaussians with gsplat's `rasterization` keyword arguments on the right backend.

    Args:
        backend: "gsplat", "torch" or "auto"/None (see module docstring).
        kwargs: Arguments of `gsplat.rasterization` (means, quats, scales, opacities, colors,
            viewmats, Ks, width, height, ...), plus `pixel_chunk` for the torch backend,
            which gsplat ignores.
    """
    kwargs.setdefault("packed", False)
    chosen = backend_for(kwargs["means"].device, backend)
    if chosen == "torch":
        return torch_rasterization(**kwargs)
    if kwargs["means"].device.type != "cuda":
        raise RuntimeError("the gsplat backend needs CUDA tensors; use backend='torch' on CPU")
    try:
        from gsplat import rasterization as gsplat_rasterization
    except ImportError as error:  # pragma: no cover - only without gsplat installed
        raise ImportError(
            f"gsplat is needed to rasterize on CUDA; install gsplat==1.4.0 or set {BACKEND_ENV_VAR}=torch"
        ) from error
    gsplat_kwargs = {key: value for key, value in kwargs.items() if key not in TORCH_ONLY_KWARGS}
    if not gsplat_kwargs.get("segmented", False):
        gsplat_kwargs.pop("segmented", None)  # gsplat 1.4.0 has no such argument
    return gsplat_rasterization(**gsplat_kwargs)


__all__ = ["BACKEND_ENV_VAR", "backend_for", "rasterize", "torch_rasterization"]
