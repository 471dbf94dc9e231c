"""Replay a fixed-shape GPU computation from a CUDA graph.

At inference a trained model's Gaussian count is fixed, so everything from the frame's drive
(expression code, blink, camera) up to the projected 2D Gaussians has fixed shapes and
addresses. Launched kernel by kernel that part costs more in Python and launch overhead than in
GPU time (a few hundred small kernels per frame); captured once in a `torch.cuda.CUDAGraph` it
is one launch. `CapturedCall` holds the static input buffers: each call copies the new inputs
into them, replays the graph and returns the (static, overwritten on the next call) outputs.

A new graph is replayed once and compared with an eager run before it is used; any failure
raises `CaptureFailed`, and the caller renders eagerly. Without `capture` (CPU, tests) it runs
the function eagerly on the same static buffers, so the plumbing is the same on every device.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor


class CaptureFailed(RuntimeError):
    """The function cannot run inside a CUDA graph (it synchronises with the host, say)."""


class CapturedCall:
    """fn(*inputs) -> tuple of tensors, with fixed input shapes, replayed from a CUDA graph."""

    def __init__(
        self,
        fn: Callable[..., Tuple[Tensor, ...]],
        inputs: Sequence[Tensor],
        capture: bool,
        warmup: int = 2,
        tolerance: float = 1e-3,
        difference: Optional[Callable[[Tuple[Tensor, ...], Tuple[Tensor, ...]], float]] = None,
    ):
        self.fn = fn
        self.difference = difference or largest_difference
        self.static_inputs = [x.detach().clone() for x in inputs]
        self.graph = None
        self.static_outputs: Tuple[Tensor, ...] = ()
        if not capture:
            return
        if not all(x.is_cuda for x in self.static_inputs):
            raise CaptureFailed("CUDA graphs need CUDA tensors")
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture (lazy inits, workspaces)
                for _ in range(warmup):
                    fn(*self.static_inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the viewer may capture while the trainer's thread keeps launching work
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.static_outputs = tuple(fn(*self.static_inputs))
        except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly instead
            raise CaptureFailed(f"{type(exc).__name__}: {exc}") from exc
        self.graph = graph
        self._check_replay(tolerance)

    def _check_replay(self, tolerance: float) -> None:
        """Replay once and compare with an eager run on the same inputs. A kernel launched outside
        the capture stream (gsplat 1.4.0's SH kernel did) is silently left out of a graph, and its
        outputs are then garbage: refuse the graph rather than render wrong frames."""
        expected = tuple(self.fn(*self.static_inputs))
        self.graph.replay()
        worst = self.difference(self.static_outputs, expected)
        if not worst <= tolerance:  # also catches NaN
            self.graph = None
            raise CaptureFailed(f"the replayed graph's outputs differ from the eager result by {worst:.3g}")

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"expected {len(self.static_inputs)} inputs, got {len(inputs)}")
        for static, new in zip(self.static_inputs, inputs):
            if static.shape != new.shape:
                raise ValueError(f"input shape {tuple(new.shape)} differs from the captured {tuple(static.shape)}")
            static.copy_(new)
        if self.graph is None:
            return tuple(self.fn(*self.static_inputs))
        self.graph.replay()
        return self.static_outputs


def largest_difference(a: Tuple[Tensor, ...], b: Tuple[Tensor, ...]) -> float:
    """The largest absolute difference over all outputs (inf if their shapes differ)."""
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            worst = max(worst, float((x.float() - y.float()).abs().max()))
    return worst
