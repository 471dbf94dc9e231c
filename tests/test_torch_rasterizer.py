"""Tests of the dense PyTorch rasterizer against analytic results and gsplat's semantics.

gsplat's CUDA kernels cannot run here, so parity is checked three ways: analytic renders of
single Gaussians, gsplat's own pure-torch projection (`_fully_fused_projection`), and a
per-pixel Python transcription of gsplat's `rasterize_to_pixels_fwd.cu` loop.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import pytest
import torch
from torch import Tensor

from gstalker_ns import splatting
from gstalker_ns.splatting import torch_rasterizer
from gstalker_ns.splatting.torch_rasterizer import rasterization

SH_C0 = 0.28209479177387814


def make_camera(width: int, height: int, focal: float, dtype=torch.float32, cx=None, cy=None) -> Tuple[Tensor, Tensor]:
    """Identity world-to-camera pose (camera looks down +z) and pinhole intrinsics."""
    cx = width / 2 if cx is None else cx
    cy = height / 2 if cy is None else cy
    Ks = torch.tensor([[[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]]], dtype=dtype)
    return torch.eye(4, dtype=dtype)[None], Ks


def identity_quats(n: int, dtype=torch.float32) -> Tensor:
    return torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype).repeat(n, 1)


def random_scene(n: int, seed: int, dtype=torch.float32, depth: float = 3.0, spread: float = 0.6) -> Dict[str, Tensor]:
    """Random Gaussians in front of the identity camera."""
    generator = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=generator, dtype=dtype) - 0.5) * spread
    means[:, 2] += depth
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=generator, dtype=dtype),
        "scales": torch.rand(n, 3, generator=generator, dtype=dtype) * 0.06 + 0.01,
        "opacities": torch.rand(n, generator=generator, dtype=dtype) * 0.9 + 0.05,
        "colors": torch.rand(n, 3, generator=generator, dtype=dtype),
    }


# --------------------------------------------------------------------------------------
# Single Gaussians: analytic values
# --------------------------------------------------------------------------------------


def render_isotropic(opacity: float, scale: float = 0.05, depth: float = 2.0, **kwargs):
    """One isotropic Gaussian projecting exactly onto the centre of pixel (32, 32) of 64x64."""
    viewmats, Ks = make_camera(64, 64, focal=100.0, cx=32.5, cy=32.5)
    means = torch.tensor([[0.0, 0.0, depth]])
    colors = kwargs.pop("colors", torch.tensor([[0.2, 0.6, 0.9]]))
    return rasterization(
        means, identity_quats(1), torch.full((1, 3), scale), torch.tensor([opacity]), colors,
        viewmats, Ks, 64, 64, **kwargs,
    )  # fmt: skip


def test_single_gaussian_centre_value_and_analytic_falloff():
    scale, depth, focal, opacity = 0.05, 2.0, 100.0, 0.7
    colors, alphas, info = render_isotropic(opacity, scale, depth)
    variance = (focal * scale / depth) ** 2 + 0.3  # projected variance + eps2d blur
    assert torch.allclose(alphas[0, 32, 32, 0], torch.tensor(opacity), atol=1e-6)
    assert torch.allclose(colors[0, 32, 32], opacity * torch.tensor([0.2, 0.6, 0.9]), atol=1e-6)
    for offset in (1, 2, 3, 5):
        expected = opacity * math.exp(-0.5 * offset**2 / variance)
        assert alphas[0, 32, 32 + offset, 0].item() == pytest.approx(expected, rel=1e-5)
        assert alphas[0, 32 - offset, 32, 0].item() == pytest.approx(expected, rel=1e-5)
        diagonal = opacity * math.exp(-(offset**2) / variance)
        assert alphas[0, 32 + offset, 32 + offset, 0].item() == pytest.approx(diagonal, rel=1e-5)
    # Below 1/255 nothing is drawn, even inside the 3-sigma footprint.
    threshold_offset = math.ceil(math.sqrt(2 * variance * math.log(opacity * 255)))
    assert alphas[0, 32, 32 + threshold_offset, 0] == 0
    assert alphas[0, 32, 32 + threshold_offset - 1, 0] > 0
    assert info["radii"][0, 0].item() == math.ceil(3 * math.sqrt(variance))
    assert torch.allclose(info["means2d"][0, 0], torch.tensor([32.5, 32.5]))


def test_opaque_gaussian_alpha_is_clamped_to_0999():
    colors, alphas, _ = render_isotropic(1.0, colors=torch.tensor([[1.0, 0.5, 0.0]]))
    assert alphas[0, 32, 32, 0].item() == pytest.approx(0.999, abs=1e-6)
    assert torch.allclose(colors[0, 32, 32], 0.999 * torch.tensor([1.0, 0.5, 0.0]), atol=1e-6)


@pytest.mark.parametrize("pixel_chunk", [None, 100, 64 * 64])  # one tile, sub-tile, multi-tile blocks
def test_gaussian_only_reaches_pixels_of_its_tiles(pixel_chunk):
    """Like gsplat, a Gaussian draws nothing outside the tiles its 3-sigma square overlaps,
    even where its alpha is above 1/255 (just beyond 3 sigma, alpha is still ~exp(-4.5))."""
    viewmats, Ks = make_camera(64, 64, focal=100.0, cx=4.0, cy=4.0)
    scale = 0.0788  # projected variance 15.52 + 0.3 blur: radius ceil(3 * sqrt(15.92)) = 12
    colors, alphas, info = rasterization(
        torch.tensor([[0.0, 0.0, 2.0]]), identity_quats(1), torch.full((1, 3), scale), torch.tensor([1.0]),
        torch.ones(1, 3), viewmats, Ks, 64, 64, tile_size=16, pixel_chunk=pixel_chunk,
    )  # fmt: skip
    assert info["radii"][0, 0].item() == 12  # square [-8, 16]: only tile 0 in x and y
    variance = (100.0 * scale / 2.0) ** 2 + 0.3
    inside_alpha = math.exp(-0.5 * (11.5**2 + 0.5**2) / variance)
    assert alphas[0, 4, 15, 0].item() == pytest.approx(inside_alpha, rel=1e-5)
    assert math.exp(-0.5 * (12.5**2 + 0.5**2) / variance) > 1.5 / 255  # would be drawn ...
    assert alphas[0, 4, 16, 0] == 0  # ... but pixel 16 is in tile 1
    assert alphas[0, 16, 4, 0] == 0
    assert (alphas[0, 16:, :, 0] == 0).all() and (alphas[0, :, 16:, 0] == 0).all()


def test_nearer_gaussian_wins_regardless_of_input_order():
    viewmats, Ks = make_camera(32, 32, focal=50.0, cx=16.5, cy=16.5)  # centre of pixel (16, 16)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    scales = torch.tensor([[0.05, 0.05, 0.05], [0.08, 0.08, 0.08]])
    opacities = torch.tensor([0.95, 0.95])
    images = []
    for order in ([0, 1], [1, 0]):
        image, alpha, _ = rasterization(
            means[order], identity_quats(2), scales[order], opacities[order], colors[order],
            viewmats, Ks, 32, 32,
        )  # fmt: skip
        images.append((image, alpha))
    assert torch.allclose(images[0][0], images[1][0], atol=1e-6)
    assert torch.allclose(images[0][1], images[1][1], atol=1e-6)
    centre = images[0][0][0, 16, 16]
    assert centre[0].item() == pytest.approx(0.95, abs=1e-5)
    assert centre[1].item() == pytest.approx(0.05 * 0.95, abs=1e-5)
    assert images[0][1][0, 16, 16, 0].item() == pytest.approx(1 - 0.05 * 0.05, abs=1e-5)


def test_background_fills_remaining_transmittance():
    background = torch.tensor([[0.1, 0.2, 0.3]])
    colors, alphas, _ = render_isotropic(0.6, backgrounds=background)
    expected_centre = 0.6 * torch.tensor([0.2, 0.6, 0.9]) + 0.4 * background[0]
    assert torch.allclose(colors[0, 32, 32], expected_centre, atol=1e-6)
    assert torch.allclose(colors[0, 0, 0], background[0])
    assert alphas[0, 0, 0, 0] == 0
    plain, _, _ = render_isotropic(0.6)
    assert torch.allclose(colors, plain + (1 - alphas) * background[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["D", "ED", "RGB+D", "RGB+ED"])
def test_depth_render_modes(mode: str):
    depth = 2.5
    background = torch.tensor([[0.3, 0.3, 0.3]])
    colors, alphas, _ = render_isotropic(0.8, depth=depth, render_mode=mode, backgrounds=background)
    expected_channels = 1 if mode in ("D", "ED") else 4
    assert colors.shape == (1, 64, 64, expected_channels)
    depth_image = colors[..., -1]
    if mode.endswith("ED"):
        assert depth_image[0, 32, 32].item() == pytest.approx(depth, rel=1e-6)
        assert depth_image[0, 32, 36].item() == pytest.approx(depth, rel=1e-5)  # any covered pixel
    else:
        assert depth_image[0, 32, 32].item() == pytest.approx(0.8 * depth, rel=1e-6)
    assert depth_image[0, 0, 0] == 0  # depth gets a zero background, as in gsplat
    if expected_channels == 4:
        assert torch.allclose(colors[0, 0, 0, :3], background[0])


def test_sh_degree_zero_colour():
    coefficients = torch.tensor([[[0.4, -0.2, 1.1]]])  # [N, K=1, 3]
    colors, alphas, _ = render_isotropic(0.9, colors=coefficients, sh_degree=0)
    expected = torch.clamp_min(SH_C0 * coefficients[0, 0] + 0.5, 0.0) * 0.9
    assert torch.allclose(colors[0, 32, 32], expected, atol=1e-6)


def test_sh_basis_matches_gsplat_torch_reference():
    gsplat_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    generator = torch.Generator().manual_seed(3)
    dirs = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    coeffs = torch.randn(50, 25, 3, generator=generator, dtype=torch.float64)
    for degree in range(5):
        expected = gsplat_impl._spherical_harmonics(degree, dirs, coeffs)
        basis = torch_rasterizer.spherical_harmonics_basis(degree, torch.nn.functional.normalize(dirs, dim=-1))
        ours = (basis[..., None] * coeffs[:, : (degree + 1) ** 2]).sum(-2)
        assert torch.allclose(ours, expected, atol=1e-12), degree


def test_view_dependent_sh_uses_camera_centre_direction():
    """Moving the camera changes a degree-1 colour exactly as the SH formula says."""
    coefficients = torch.zeros(1, 4, 3)
    coefficients[0, 3] = torch.tensor([1.0, 0.0, 0.0])  # basis 3 = -0.4886 * x
    means = torch.tensor([[0.3, 0.0, 2.0]])
    viewmats = torch.eye(4)[None]
    rgb = torch_rasterizer.sh_to_colors(1, means, coefficients, viewmats)
    direction_x = 0.3 / math.sqrt(0.3**2 + 4.0)
    assert rgb[0, 0, 0].item() == pytest.approx(-0.48860251190292 * direction_x + 0.5, rel=1e-6)
    assert rgb[0, 0, 1].item() == pytest.approx(0.5)


# --------------------------------------------------------------------------------------
# Parity with gsplat's reference pieces
# --------------------------------------------------------------------------------------


def test_projection_matches_gsplat_torch_reference():
    gsplat_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    scene = random_scene(200, seed=1, dtype=torch.float64, spread=4.0, depth=2.0)  # some behind the camera
    viewmats, Ks = make_camera(80, 60, focal=70.0, dtype=torch.float64)
    viewmats = viewmats.repeat(2, 1, 1)
    viewmats[1, :3, 3] = torch.tensor([0.2, -0.1, 0.5], dtype=torch.float64)
    Ks = Ks.repeat(2, 1, 1)
    covars, _ = gsplat_impl._quat_scale_to_covar_preci(scene["quats"], scene["scales"], True, False)
    for antialiased in (False, True):
        expected = gsplat_impl._fully_fused_projection(
            scene["means"], covars, viewmats, Ks, 80, 60, eps2d=0.3, calc_compensations=antialiased
        )
        ours = torch_rasterizer.project_gaussians(
            scene["means"], torch_rasterizer.quat_scale_to_covariance(scene["quats"], scene["scales"]),
            viewmats, Ks, 80, 60, eps2d=0.3, calc_compensations=antialiased,
        )  # fmt: skip
        assert torch.equal(ours.radii, expected[0])
        visible = ours.radii > 0
        assert 20 < visible.sum() < 400  # both some culled and many kept
        assert torch.allclose(ours.means2d[visible], expected[1][visible], atol=1e-9)
        assert torch.allclose(ours.depths, expected[2], atol=1e-12)
        assert torch.allclose(ours.conics[visible], expected[3][visible], atol=1e-9)
        if antialiased:
            assert torch.allclose(ours.compensations[visible], expected[4][visible], atol=1e-9)


def kernel_reference_render(
    info: Dict, colors: Tensor, width: int, height: int, tile_size: int, background: Tensor
) -> Tuple[Tensor, Tensor, int]:
    """Per-pixel transcription of gsplat's isect_tiles + rasterize_to_pixels_fwd loops.

    Returns image, alpha and the number of pixels that hit the transmittance stop.
    """
    means2d, conics = info["means2d"][0].tolist(), info["conics"][0].tolist()
    opacities, radii, depths = info["opacities"][0].tolist(), info["radii"][0].tolist(), info["depths"][0].tolist()
    colors_list = colors.tolist()
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    bins: Dict[Tuple[int, int], List[int]] = {}
    for g, radius in enumerate(radii):
        if radius <= 0:
            continue
        tx, ty, tr = means2d[g][0] / tile_size, means2d[g][1] / tile_size, radius / tile_size
        x_range = range(min(max(0, math.floor(tx - tr)), tiles_x), min(max(0, math.ceil(tx + tr)), tiles_x))
        y_range = range(min(max(0, math.floor(ty - tr)), tiles_y), min(max(0, math.ceil(ty + tr)), tiles_y))
        for y in y_range:
            for x in x_range:
                bins.setdefault((x, y), []).append(g)
    image = torch.zeros(height, width, colors.shape[-1], dtype=torch.float64)
    alpha_image = torch.zeros(height, width, 1, dtype=torch.float64)
    stopped_pixels = 0
    for i in range(height):
        for j in range(width):
            ids = sorted(bins.get((j // tile_size, i // tile_size), []), key=lambda g: (depths[g], g))
            px, py = j + 0.5, i + 0.5
            transmittance, pixel = 1.0, [0.0] * colors.shape[-1]
            for g in ids:
                a, b, c = conics[g]
                dx, dy = means2d[g][0] - px, means2d[g][1] - py
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(0.999, opacities[g] * math.exp(-sigma))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                next_t = transmittance * (1 - alpha)
                if next_t <= 1e-4:
                    stopped_pixels += 1
                    break
                for k in range(len(pixel)):
                    pixel[k] += colors_list[g][k] * alpha * transmittance
                transmittance = next_t
            image[i, j] = torch.tensor(pixel, dtype=torch.float64) + transmittance * background
            alpha_image[i, j, 0] = 1 - transmittance
    return image, alpha_image, stopped_pixels


@pytest.mark.parametrize("tile_size", [8, 16])
def test_compositing_matches_kernel_transcription(tile_size: int):
    scene = random_scene(80, seed=7, dtype=torch.float64, spread=0.8)
    scene["scales"] = scene["scales"] * 3
    scene["opacities"] = scene["opacities"] * 0.1 + 0.89  # dense and opaque: triggers the T stop
    viewmats, Ks = make_camera(40, 28, focal=40.0, dtype=torch.float64)
    background = torch.tensor([0.2, 0.1, 0.4], dtype=torch.float64)
    image, alpha, info = rasterization(
        **scene, viewmats=viewmats, Ks=Ks, width=40, height=28, tile_size=tile_size,
        backgrounds=background[None], pixel_chunk=200,
    )  # fmt: skip
    expected_image, expected_alpha, stopped = kernel_reference_render(
        info, scene["colors"], 40, 28, tile_size, background
    )
    assert stopped > 50, "the scene should exercise the transmittance stop"
    assert (expected_alpha == 0).sum() > 20, "and leave some pixels empty"
    assert torch.allclose(alpha[0], expected_alpha, atol=1e-10)
    assert torch.allclose(image[0], expected_image, atol=1e-10)


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------


def test_gradients_reach_every_input():
    scene = {k: v.requires_grad_() for k, v in random_scene(40, seed=2).items()}
    viewmats, Ks = make_camera(48, 48, focal=60.0)
    image, alpha, _ = rasterization(**scene, viewmats=viewmats, Ks=Ks, width=48, height=48)
    weights = torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    ((image * weights).sum() + alpha.sum()).backward()
    for name, tensor in scene.items():
        assert tensor.grad is not None, name
        assert torch.isfinite(tensor.grad).all(), name
        assert tensor.grad.abs().sum() > 0, name


def tiny_differentiable_scene() -> Tuple[Dict[str, Tensor], Tensor, Tensor]:
    """Three broad (sigma 5-9 px), semi-transparent Gaussians on a 12x10 image inside one tile.

    Chosen so no pixel sits near a mask boundary (alpha threshold, tile edge, T stop), where
    the render is not differentiable.
    """
    dtype = torch.float64
    scene = {
        "means": torch.tensor([[0.05, 0.0, 2.0], [-0.1, 0.05, 2.4], [0.1, -0.1, 3.0]], dtype=dtype),
        "quats": torch.tensor([[1.0, 0.1, -0.2, 0.05], [0.9, -0.3, 0.1, 0.2], [1.0, 0.0, 0.3, -0.1]], dtype=dtype),
        "scales": torch.tensor([[0.8, 0.6, 0.4], [0.9, 0.7, 0.5], [1.2, 1.0, 0.8]], dtype=dtype),
        "opacities": torch.tensor([0.5, 0.4, 0.6], dtype=dtype),
        "colors": torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=dtype),
    }
    viewmats, Ks = make_camera(12, 10, focal=15.0, dtype=dtype)
    return scene, viewmats, Ks


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"rasterize_mode": "antialiased", "render_mode": "RGB+ED"},
    ],
)
def test_gradients_match_finite_differences(options: Dict):
    scene, viewmats, Ks = tiny_differentiable_scene()
    names = list(scene)

    def render(*tensors: Tensor) -> Tuple[Tensor, Tensor]:
        image, alpha, _ = rasterization(
            **dict(zip(names, tensors)), viewmats=viewmats, Ks=Ks, width=12, height=10, **options
        )
        return image, alpha

    inputs = tuple(scene[name].clone().requires_grad_() for name in names)
    _, alpha = render(*inputs)
    assert alpha.min() > 0.05  # every pixel well covered: smooth everywhere
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_sh_gradients_match_finite_differences():
    scene, viewmats, Ks = tiny_differentiable_scene()
    generator = torch.Generator().manual_seed(4)
    sh = torch.randn(3, 9, 3, generator=generator, dtype=torch.float64) * 0.3
    sh[:, 0] += 1.0

    def render(means: Tensor, sh_coeffs: Tensor) -> Tensor:
        image, _, _ = rasterization(
            means, scene["quats"], scene["scales"], scene["opacities"], sh_coeffs,
            viewmats, Ks, 12, 10, sh_degree=2,
        )  # fmt: skip
        return image

    assert torch.autograd.gradcheck(
        render, (scene["means"].clone().requires_grad_(), sh.requires_grad_()), eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_means2d_retain_grad_and_behind_camera_culling():
    scene = random_scene(30, seed=5)
    scene["means"][0] = torch.tensor([0.0, 0.0, -1.0])  # behind the camera
    scene["means"][1] = torch.tensor([0.0, 0.0, 0.0])  # on the camera centre: z = 0
    scene = {k: v.requires_grad_() for k, v in scene.items()}
    viewmats, Ks = make_camera(40, 40, focal=50.0)
    image, _, info = rasterization(**scene, viewmats=viewmats, Ks=Ks, width=40, height=40)
    means2d = info["means2d"]
    assert not means2d.is_leaf
    means2d.retain_grad()
    image.sum().backward()
    radii = info["radii"]
    assert radii.dtype == torch.int32 and radii.shape == (1, 30)
    assert radii[0, 0] == 0 and radii[0, 1] == 0
    assert torch.isfinite(means2d.grad).all()
    assert torch.isfinite(scene["means"].grad).all()
    assert torch.all(means2d.grad[0, :2] == 0)
    assert torch.all(scene["means"].grad[:2] == 0)
    visible = radii[0] > 0
    assert visible.sum() >= 20
    assert (means2d.grad[0, visible].abs().sum(-1) > 0).all()


def test_absgrad_is_sum_of_per_pixel_absolute_gradients():
    scene = {k: v.requires_grad_() for k, v in random_scene(20, seed=6).items()}
    viewmats, Ks = make_camera(32, 32, focal=40.0)
    image, _, info = rasterization(**scene, viewmats=viewmats, Ks=Ks, width=32, height=32, absgrad=True)
    info["means2d"].retain_grad()
    weights = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    (image * weights).sum().backward()
    grad, absgrad = info["means2d"].grad, info["means2d"].absgrad
    assert absgrad.shape == grad.shape
    assert torch.all(absgrad >= grad.abs() - 1e-6)
    visible = info["radii"][0] > 0
    assert (absgrad[0, visible] > 0).all()
    assert (absgrad[0, visible] > grad[0, visible].abs() + 1e-6).any()  # signed sums cancel
    # One pixel's loss: per-pixel gradient, so |sum| == sum |.| exactly.
    scene2 = {k: v.detach().requires_grad_() for k, v in scene.items()}
    image2, _, info2 = rasterization(**scene2, viewmats=viewmats, Ks=Ks, width=32, height=32, absgrad=True)
    info2["means2d"].retain_grad()
    image2[0, 16, 16].sum().backward()
    assert torch.allclose(info2["means2d"].absgrad, info2["means2d"].grad.abs(), atol=1e-7)


# --------------------------------------------------------------------------------------
# Chunking, batching, cameras
# --------------------------------------------------------------------------------------


def test_chunked_rendering_equals_unchunked(monkeypatch):
    scene = random_scene(300, seed=8)
    viewmats, Ks = make_camera(50, 37, focal=45.0)  # sizes that are not tile multiples
    options = dict(viewmats=viewmats, Ks=Ks, width=50, height=37, render_mode="RGB+ED")
    reference_image, reference_alpha, _ = rasterization(**scene, pixel_chunk=50 * 37, **options)
    for chunk in (1, 37, 100, 256, 1000):
        image, alpha, _ = rasterization(**scene, pixel_chunk=chunk, **options)
        assert torch.allclose(image, reference_image, atol=2e-6), chunk
        assert torch.allclose(alpha, reference_alpha, atol=2e-6), chunk
    # Depth lists split into batches that carry the transmittance give the same image too.
    monkeypatch.setattr(torch_rasterizer, "MAX_PAIRS_PER_BATCH", 256 * 7)
    image, alpha, _ = rasterization(**scene, pixel_chunk=256, **options)
    assert torch.allclose(image, reference_image, atol=2e-6)
    assert torch.allclose(alpha, reference_alpha, atol=2e-6)


def test_several_cameras_and_per_camera_colors():
    scene = random_scene(80, seed=9)
    viewmats, Ks = make_camera(32, 24, focal=35.0)
    second_view = viewmats.clone()
    second_view[0, :3, 3] = torch.tensor([0.1, 0.05, 0.3])
    viewmats2, Ks2 = torch.cat([viewmats, second_view]), Ks.repeat(2, 1, 1)
    per_camera_colors = torch.stack([scene["colors"], 1 - scene["colors"]])
    batch, batch_alpha, info = rasterization(
        scene["means"], scene["quats"], scene["scales"], scene["opacities"], per_camera_colors,
        viewmats2, Ks2, 32, 24,
    )  # fmt: skip
    assert batch.shape == (2, 24, 32, 3) and info["n_cameras"] == 2 and info["radii"].shape == (2, 80)
    for camera in range(2):
        single, single_alpha, _ = rasterization(
            scene["means"], scene["quats"], scene["scales"], scene["opacities"], per_camera_colors[camera],
            viewmats2[camera : camera + 1], Ks, 32, 24,
        )  # fmt: skip
        assert torch.allclose(batch[camera], single[0], atol=1e-6)
        assert torch.allclose(batch_alpha[camera], single_alpha[0], atol=1e-6)


def test_near_far_and_radius_clip_culling():
    viewmats, Ks = make_camera(32, 32, focal=40.0)
    means = torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, 5.0], [0.0, 0.0, 2.0]])
    scales = torch.tensor([[0.05] * 3, [0.05] * 3, [0.001] * 3])
    _, _, info = rasterization(
        means, identity_quats(3), scales, torch.ones(3), torch.ones(3, 3), viewmats, Ks, 32, 32,
        near_plane=1.0, far_plane=4.0, radius_clip=2.0,
    )  # fmt: skip
    assert info["radii"].tolist() == [[0, 0, 0]]  # too near, too far, too small (radius 2)
    _, _, info = rasterization(means, identity_quats(3), scales, torch.ones(3), torch.ones(3, 3), viewmats, Ks, 32, 32)
    assert (info["radii"] > 0).all()


def test_info_keys_and_covars_input():
    scene = random_scene(25, seed=10)
    viewmats, Ks = make_camera(24, 24, focal=30.0)
    image, alpha, info = rasterization(**scene, viewmats=viewmats, Ks=Ks, width=24, height=24)
    for key in ("means2d", "radii", "depths", "conics", "opacities", "width", "height", "n_cameras", "tile_size"):
        assert key in info
    assert info["gaussian_ids"] is None and info["camera_ids"] is None
    assert info["width"] == 24 and info["height"] == 24 and info["tile_size"] == 16
    covars = torch_rasterizer.quat_scale_to_covariance(scene["quats"], scene["scales"])
    image2, alpha2, _ = rasterization(
        scene["means"], None, None, scene["opacities"], scene["colors"], viewmats, Ks, 24, 24, covars=covars
    )
    assert torch.allclose(image, image2, atol=1e-6) and torch.allclose(alpha, alpha2, atol=1e-6)


@pytest.mark.parametrize(
    "option, value",
    [("packed", True), ("camera_model", "ortho"), ("distributed", True), ("with_ut", True)],
)
def test_unsupported_options_raise(option: str, value):
    scene = random_scene(3, seed=11)
    viewmats, Ks = make_camera(8, 8, focal=10.0)
    with pytest.raises(NotImplementedError, match=option):
        rasterization(**scene, viewmats=viewmats, Ks=Ks, width=8, height=8, **{option: value})


# --------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------


def test_backend_selection(monkeypatch):
    monkeypatch.delenv(splatting.BACKEND_ENV_VAR, raising=False)
    assert splatting.backend_for(torch.device("cpu")) == "torch"
    assert splatting.backend_for("cuda") == "gsplat"
    assert splatting.backend_for("cuda", backend="torch") == "torch"
    monkeypatch.setenv(splatting.BACKEND_ENV_VAR, "torch")
    assert splatting.backend_for("cuda") == "torch"
    monkeypatch.setenv(splatting.BACKEND_ENV_VAR, "bogus")
    with pytest.raises(ValueError):
        splatting.backend_for("cpu")


def test_rasterize_dispatches_to_torch_on_cpu(monkeypatch):
    monkeypatch.delenv(splatting.BACKEND_ENV_VAR, raising=False)
    scene = random_scene(10, seed=12)
    viewmats, Ks = make_camera(16, 16, focal=20.0)
    image, alpha, info = splatting.rasterize(**scene, viewmats=viewmats, Ks=Ks, width=16, height=16, pixel_chunk=64)
    expected, expected_alpha, _ = rasterization(**scene, viewmats=viewmats, Ks=Ks, width=16, height=16)
    assert torch.allclose(image, expected, atol=1e-6) and torch.allclose(alpha, expected_alpha, atol=1e-6)
    with pytest.raises(RuntimeError, match="CUDA"):
        splatting.rasterize(backend="gsplat", **scene, viewmats=viewmats, Ks=Ks, width=16, height=16)


# --------------------------------------------------------------------------------------
# Densification with gsplat's DefaultStrategy on CPU
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("absgrad", [False, True])
def test_default_strategy_grows_and_prunes_on_cpu(absgrad: bool):
    strategy_module = pytest.importorskip("gsplat.strategy")
    scene = random_scene(60, seed=13, spread=0.5)
    log_scales = torch.log(scene["scales"])
    log_scales[:10] = math.log(0.05)  # large: split (> grow_scale3d * scene_scale)
    log_scales[10:] = math.log(0.005)  # small: duplicate
    logit_opacities = torch.logit(scene["opacities"])
    logit_opacities[-5:] = -8.0  # sigmoid < prune_opa: pruned
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(scene["means"]),
            "scales": torch.nn.Parameter(log_scales),
            "quats": torch.nn.Parameter(scene["quats"]),
            "opacities": torch.nn.Parameter(logit_opacities),
            "colors": torch.nn.Parameter(scene["colors"]),
        }
    )
    optimizers = {name: torch.optim.Adam([param], lr=1e-3) for name, param in params.items()}
    strategy = strategy_module.DefaultStrategy(
        prune_opa=0.005, grow_grad2d=1e-8, grow_scale3d=0.01, refine_start_iter=0, refine_every=1,
        reset_every=10**9, refine_stop_iter=100, absgrad=absgrad,
    )  # fmt: skip
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    viewmats, Ks = make_camera(40, 40, focal=45.0)

    n_before = len(params["means"])
    image, _, info = rasterization(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        params["colors"], viewmats, Ks, 40, 40, absgrad=absgrad,
    )  # fmt: skip
    strategy.step_pre_backward(params, optimizers, state, step=1, info=info)
    (image - 0.5).square().mean().backward()
    visible = info["radii"][0] > 0
    seen_grads = (info["means2d"].absgrad if absgrad else info["means2d"].grad)[0].norm(dim=-1)
    assert (seen_grads[visible] > 1e-8).sum() > 30
    strategy.step_post_backward(params, optimizers, state, step=1, info=info, packed=False)

    n_after = len(params["means"])
    assert n_after != n_before
    assert n_after > n_before - 5  # growth outweighs the pruned five
    assert torch.sigmoid(params["opacities"]).min() >= 0.005  # low-opacity ones removed
    assert all(len(p) == n_after for p in params.values())
    assert optimizers["means"].param_groups[0]["params"][0] is params["means"]

    # The grown model renders and trains on.
    image, _, info = rasterization(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        params["colors"], viewmats, Ks, 40, 40, absgrad=absgrad,
    )  # fmt: skip
    strategy.step_pre_backward(params, optimizers, state, step=2, info=info)
    image.mean().backward()
    strategy.step_post_backward(params, optimizers, state, step=2, info=info, packed=False)
    assert torch.isfinite(image).all()
