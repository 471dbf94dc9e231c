"""The inference split's pure-torch pieces: static-buffer replay, its replay check, SH colours and
view matrices (the CUDA capture itself is checked on the GPU by benchmarks/render_speed.py)."""

from __future__ import annotations

import pytest
import torch

from gstalker_ns.splatting import torch_rasterizer as tr
from gstalker_ns.splatting.batched import projected_difference, sh_colours, viewmats_from_poses
from gstalker_ns.splatting.graphed import CapturedCall, CaptureFailed


def _poses(n: int) -> torch.Tensor:
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, 3, 3))
    return torch.cat([q, torch.randn(n, 3, 1)], dim=-1)


def test_static_buffers_take_each_call_s_inputs():
    call = CapturedCall(lambda x, y: (x * 2 + y,), [torch.zeros(3), torch.zeros(3)], capture=False)
    assert torch.equal(call(torch.ones(3), torch.arange(3.0))[0], torch.tensor([2.0, 3.0, 4.0]))
    assert torch.equal(call(torch.full((3,), 5.0), torch.zeros(3))[0], torch.full((3,), 10.0))
    with pytest.raises(ValueError, match="differs from the captured"):
        call(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="expected 2 inputs"):
        call(torch.zeros(3))


def test_a_replay_that_misses_a_kernel_is_refused():
    """A graph whose replay leaves an output stale (a kernel launched off the capture stream) must
    be refused, so the caller renders eagerly instead of showing garbage."""

    class StaleGraph:  # replays without touching the outputs
        def replay(self) -> None:
            pass

    call = CapturedCall(lambda x: (x + 1,), [torch.ones(4)], capture=False)
    call.graph, call.static_outputs = StaleGraph(), (torch.zeros(4),)
    with pytest.raises(CaptureFailed, match="differ from the eager result"):
        call._check_replay(1e-3)
    assert not call.captured
    call.graph, call.static_outputs = StaleGraph(), (torch.full((4,), 2.0),)
    call._check_replay(1e-3)  # outputs that match the eager run are accepted
    assert call.captured


def test_view_matrices_and_sh_colours_match_the_reference_code():
    from nerfstudio.models.splatfacto import get_viewmat

    poses = _poses(3)
    viewmats = viewmats_from_poses(poses)
    assert torch.equal(viewmats, get_viewmat(poses))
    means, coeffs = torch.randn(3, 50, 3), torch.randn(3, 50, 16, 3)
    for degree in (0, 1, 3):
        ours = sh_colours(degree, means, coeffs, poses[:, :3, 3])
        reference = torch.cat([tr.sh_to_colors(degree, means[b], coeffs[b], viewmats[b : b + 1]) for b in range(3)])
        assert torch.allclose(ours, reference, atol=1e-5)


def test_projection_difference_ignores_culled_gaussians():
    """gsplat leaves a culled Gaussian's 2D entries unwritten, so they may hold anything; the
    replay check compares the Gaussians both runs keep, and refuses when the culling differs."""
    torch.manual_seed(1)
    radii = torch.tensor([[3, 0, 5, 0]], dtype=torch.int32).repeat(1, 500)  # [1, 2000]
    a = (torch.randn(1, 2000, 2), torch.randn(1, 2000, 3), torch.rand(1, 2000, 3), torch.rand(1, 2000), radii, torch.rand(1, 2000))
    b = tuple(x.clone() for x in a)
    b[0][radii == 0] = 1e6  # culled entries: garbage
    assert projected_difference(a, b) == 0.0
    b[0][0, 0, 0] += 0.5  # a kept Gaussian moved
    assert projected_difference(a, b) == pytest.approx(0.5)
    c = tuple(x.clone() for x in a)
    c[4][0, :10] = 0  # culled by one run only: 10 of 2000 (0.5%)
    assert projected_difference(a, c) == float("inf")
