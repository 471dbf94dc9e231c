"""Dense pure-PyTorch Gaussian rasterizer with the interface of gsplat 1.4.0's `rasterization`.

Why this exists: gsplat 1.4.0 has no CPU path (even `gsplat.rendering._rasterization` calls
CUDA kernels), but the model must train and be tested on CPU at tiny sizes, and its results
must carry over to the GPU where gsplat renders. So this module re-implements the
non-packed pinhole path of `gsplat.rendering.rasterization` with plain tensor operations and
lets autograd provide the backward pass.

How it follows gsplat (files under `gsplat/cuda/csrc/`):

- Projection (`fully_fused_projection_fwd.cu`, `utils.cuh`): world-to-camera, the pinhole
  Jacobian with gsplat's 1.3x-FOV clamp of x/z and y/z, the `eps2d` blur, the Mip-Splatting
  compensation for "antialiased", the 3-sigma radius `ceil(3 sqrt(lambda_max))`, and the same
  culling (near/far, det <= 0, radius <= radius_clip, 3-sigma square outside the image).
- Tile binning (`isect_tiles.cu`): a Gaussian only reaches the pixels of the
  `tile_size` x `tile_size` tiles its 3-sigma square overlaps. We apply the same rule as a
  per-pixel mask, so a pixel outside those tiles gets nothing from the Gaussian even where
  its alpha would pass the 1/255 threshold, exactly as with gsplat.
- Compositing (`rasterize_to_pixels_fwd.cu`): front to back in depth order (ties in input
  order, as gsplat's stable radix sort), pixel centres at (x + 0.5, y + 0.5),
  alpha = min(0.999, opacity * exp(-sigma)), contributions with alpha < 1/255 (or sigma < 0)
  skipped, and the pixel stops *before* the Gaussian that would push the transmittance to
  <= 1e-4. Because transmittance only decreases, that stop equals a mask on the running
  product, which we evaluate densely as a cumulative sum of log(1 - alpha).

Memory is pixels x Gaussians, so pixels are processed in rectangular blocks (`pixel_chunk`
pixels each) and each block only sees the Gaussians whose tiles overlap it; long depth lists
are composited in batches that carry the transmittance, so one batch never holds more than
`MAX_PAIRS_PER_BATCH` pixel-Gaussian pairs.

Known deviations from gsplat 1.4.0 (documented, small; `benchmarks/rasterizer_parity.py`
measured on an H200, 20k Gaussians, SH degree 3, 512x512: image max abs diff 2e-5, radii
identical, every gradient within 5e-5 of its largest value):

- gsplat's kernels are built with fast math (`__expf`), so a contribution whose alpha sits
  right at the 1/255 threshold can be drawn by one and skipped by the other: isolated pixels
  then differ by up to ~1/255 in alpha (seen once in 2k antialiased Gaussians at 512x512).
- The transmittance is carried as a sum of log(1 - alpha) in the input dtype instead of a
  float32 running product, so pixels that sit right at the 1e-4 stop can include or drop one
  Gaussian differently; elsewhere images agree to float rounding.
- `means2d`, `conics` and `depths` of culled Gaussians (radii == 0) hold finite
  values computed as if the Gaussian sat at depth 1 where it is outside the depth range
  (gsplat leaves them uninitialised); they never reach the image.
- `info["means2d"].absgrad` is a zero buffer attached at forward time that hooks fill during
  backward (gsplat creates it in backward). Like gsplat it is the sum over pixels of the
  per-pixel absolute gradient; a second backward through the same graph adds to it.
- Gradients also flow to `backgrounds` if it requires grad (gsplat gives it none);
  `channel_chunk` and `sparse_grad` are accepted and ignored (the dense path needs no channel
  chunks; sparse gradients only apply to packed mode in gsplat as well); the intersection
  tensors `isect_ids`, `flatten_ids` and `isect_offsets` are None.
- Only non-packed, pinhole, non-distributed rendering; other options raise
  NotImplementedError naming the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
"""Contributions below this alpha are skipped (gsplat's rasterize_to_pixels kernels)."""

MAX_ALPHA = 0.999
"""Per-Gaussian alpha clamp, which keeps 1 - alpha away from zero."""

TRANSMITTANCE_STOP = 1e-4
"""A pixel stops before the Gaussian whose contribution would leave T <= this value."""

DEFAULT_PIXEL_CHUNK = 256
"""Pixels per block on CPU: one 16x16 tile. Blocks of one tile keep the [pixels, Gaussians]
intermediates in cache and were 2-5x faster on CPU than 32x32 or 64x64 blocks."""

DEFAULT_PIXEL_CHUNK_CUDA = 4096
"""Pixels per block on CUDA, where kernel launches, not cache misses, dominate small blocks."""

MAX_PAIRS_PER_BATCH = 1 << 17
"""Upper bound on pixel-Gaussian pairs materialised in one compositing step of one block on
CPU (longer depth lists are composited in batches that carry the transmittance)."""

MAX_PAIRS_PER_BATCH_CUDA = 1 << 24
"""The same bound on CUDA, sized for GPU memory rather than CPU caches."""


MAX_SIGMA = 50.0
"""Mahalanobis exponents are clamped here: exp(-50) ~ 2e-22 is far below the alpha threshold."""

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")

SH_C0 = 0.2820947917738781
"""Degree-0 real spherical harmonic; the DC colour is SH_C0 * c0 + 0.5."""


@dataclass
class ProjectedGaussians:
    """Per-camera 2D Gaussians, shaped [C, N, ...] like gsplat's non-packed projection."""

    radii: Tensor  # [C, N] int32, 0 where culled
    means2d: Tensor  # [C, N, 2]
    depths: Tensor  # [C, N] camera-space z
    conics: Tensor  # [C, N, 3] upper triangle of the inverse blurred 2D covariance
    compensations: Optional[Tensor]  # [C, N] for rasterize_mode="antialiased"


# --------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------


def quat_scale_to_covariance(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances R S S^T R^T [N, 3, 3] from (unnormalised, wxyz) quaternions and scales."""
    w, x, y, z = torch.nn.functional.normalize(quats, p=2, dim=-1).unbind(-1)
    rotation = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))
    rotation_scale = rotation * scales[..., None, :]
    return rotation_scale @ rotation_scale.transpose(-1, -2)


def symmetric_from_upper_triangle(covars: Tensor) -> Tensor:
    """Symmetrise [N, 3, 3] covariances from their upper triangle, as gsplat does.

    gsplat packs user covariances into the 6 upper-triangle values before projecting, so a
    slightly asymmetric input is read the same way here.
    """
    upper = torch.triu(covars)
    return upper + upper.transpose(-1, -2) - torch.diag_embed(torch.diagonal(covars, dim1=-2, dim2=-1))


def world_to_camera(means: Tensor, covars: Tensor, viewmats: Tensor) -> Tuple[Tensor, Tensor]:
    """Gaussian means [C, N, 3] and covariances [C, N, 3, 3] in each camera's frame."""
    rotation = viewmats[:, :3, :3]
    translation = viewmats[:, :3, 3]
    means_cam = torch.einsum("cij,nj->cni", rotation, means) + translation[:, None, :]
    covars_cam = torch.einsum("cij,njk,clk->cnil", rotation, covars, rotation)
    return means_cam, covars_cam


def pinhole_projection(
    means_cam: Tensor, covars_cam: Tensor, Ks: Tensor, width: int, height: int
) -> Tuple[Tensor, Tensor]:
    """Project camera-space Gaussians to pixel means [C, N, 2] and 2D covariances [C, N, 2, 2].

    The Jacobian is evaluated at x/z, y/z clamped to 1.3x the field of view (gsplat's
    `persp_proj`) so Gaussians far outside the image do not get huge, smeared footprints;
    the mean itself is projected unclamped.
    """
    x, y, z = means_cam.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy

    inv_z = 1.0 / z
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * inv_z))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * inv_z))
    zeros = torch.zeros_like(z)
    jacobian = torch.stack(
        [fx * inv_z, zeros, -fx * tx * inv_z * inv_z, zeros, fy * inv_z, -fy * ty * inv_z * inv_z],
        dim=-1,
    ).reshape(z.shape + (2, 3))
    covars2d = jacobian @ covars_cam @ jacobian.transpose(-1, -2)
    means2d = torch.stack([fx * x * inv_z + cx, fy * y * inv_z + cy], dim=-1)
    return means2d, covars2d


def project_gaussians(
    means: Tensor,
    covars: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
) -> ProjectedGaussians:
    """Differentiable equivalent of gsplat's non-packed `fully_fused_projection` (pinhole).

    Culled Gaussians get radius 0, following the CUDA kernel's order of checks: depth
    outside [near_plane, far_plane], non-positive blurred determinant, radius <= radius_clip,
    3-sigma square entirely outside the image.
    """
    means_cam, covars_cam = world_to_camera(means, covars, viewmats)
    depths = means_cam[..., 2]
    in_depth_range = (depths >= near_plane) & (depths <= far_plane)
    # Culled Gaussians can sit at z = 0, where 1/z would put inf/NaN into the graph (and
    # NaN gradients via 0 * inf). Project them as if at depth 1; their values are unused.
    safe_means_cam = torch.where(
        in_depth_range[..., None],
        means_cam,
        torch.cat([means_cam[..., :2], torch.ones_like(depths)[..., None]], dim=-1),
    )
    means2d, covars2d = pinhole_projection(safe_means_cam, covars_cam, Ks, width, height)

    det_original = covars2d[..., 0, 0] * covars2d[..., 1, 1] - covars2d[..., 0, 1] * covars2d[..., 1, 0]
    blurred = covars2d + eps2d * torch.eye(2, dtype=covars2d.dtype, device=covars2d.device)
    det = blurred[..., 0, 0] * blurred[..., 1, 1] - blurred[..., 0, 1] * blurred[..., 1, 0]
    positive_det = det > 0
    safe_det = torch.where(positive_det, det, torch.ones_like(det))
    conics = torch.stack(
        [
            blurred[..., 1, 1] / safe_det,
            -0.5 * (blurred[..., 0, 1] + blurred[..., 1, 0]) / safe_det,
            blurred[..., 0, 0] / safe_det,
        ],
        dim=-1,
    )
    compensations = None
    if calc_compensations:
        compensations = torch.sqrt(torch.clamp(det_original / safe_det, min=0.0))

    with torch.no_grad():
        half_trace = 0.5 * (blurred[..., 0, 0] + blurred[..., 1, 1])
        largest_eigenvalue = half_trace + torch.sqrt(torch.clamp(half_trace * half_trace - det, min=0.01))
        radius = torch.ceil(3.0 * torch.sqrt(largest_eigenvalue))
        inside_image = (
            (means2d[..., 0] + radius > 0)
            & (means2d[..., 0] - radius < width)
            & (means2d[..., 1] + radius > 0)
            & (means2d[..., 1] - radius < height)
        )
        keep = in_depth_range & positive_det & (radius > radius_clip) & inside_image
        radii = torch.where(keep, radius, torch.zeros_like(radius)).to(torch.int32)

    return ProjectedGaussians(radii, means2d, depths, conics, compensations)


# --------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------


def spherical_harmonics_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis [..., (degree + 1)^2] at unit directions, gsplat's constants and order.

    Same evaluation (Sloan, "Efficient Spherical Harmonic Evaluation", JCGT 2013) as gsplat's
    CUDA `sh_coeffs_to_color_fast`, built with `torch.stack` so autograd sees no in-place writes.
    """
    if not 0 <= degree <= 4:
        raise ValueError(f"sh_degree must be in [0, 4], got {degree}")
    bases: Dict[int, Tensor] = {0: torch.full_like(dirs[..., 0], SH_C0)}
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        bases[1] = -0.48860251190292 * y
        bases[2] = 0.48860251190292 * z
        bases[3] = -0.48860251190292 * x
    if degree >= 2:
        z2 = z * z
        c1 = x * x - y * y
        s1 = 2 * x * y
        tmp_b = -1.092548430592079 * z
        bases[4] = 0.5462742152960395 * s1
        bases[5] = tmp_b * y
        bases[6] = 0.9461746957575601 * z2 - 0.3153915652525201
        bases[7] = tmp_b * x
        bases[8] = 0.5462742152960395 * c1
    if degree >= 3:
        c2 = x * c1 - y * s1
        s2 = x * s1 + y * c1
        tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
        tmp_b = 1.445305721320277 * z
        bases[9] = -0.5900435899266435 * s2
        bases[10] = tmp_b * s1
        bases[11] = tmp_c * y
        bases[12] = z * (1.865881662950577 * z2 - 1.119528997770346)
        bases[13] = tmp_c * x
        bases[14] = tmp_b * c1
        bases[15] = -0.5900435899266435 * c2
    if degree >= 4:
        c3 = x * c2 - y * s2
        s3 = x * s2 + y * c2
        tmp_d = z * (-4.683325804901025 * z2 + 2.007139630671868)
        tmp_c = 3.31161143515146 * z2 - 0.47308734787878
        tmp_b = -1.770130769779931 * z
        bases[16] = 0.6258357354491763 * s3
        bases[17] = tmp_b * s2
        bases[18] = tmp_c * s1
        bases[19] = tmp_d * y
        bases[20] = 1.984313483298443 * z2 * (1.865881662950577 * z2 - 1.119528997770346) + (
            -1.006230589874905 * (0.9461746957575601 * z2 - 0.3153915652525201)
        )
        bases[21] = tmp_d * x
        bases[22] = tmp_c * c1
        bases[23] = tmp_b * c2
        bases[24] = 0.6258357354491763 * c3
    return torch.stack([bases[k] for k in range((degree + 1) ** 2)], dim=-1)


def sh_to_colors(sh_degree: int, means: Tensor, sh_coeffs: Tensor, viewmats: Tensor) -> Tensor:
    """View-dependent RGB [C, N, 3] from SH coefficients [N, K, 3] or [C, N, K, 3].

    Directions run from each camera centre to the Gaussian (gradients reach `means` through
    them, as in gsplat), and the result is `clamp_min(rgb + 0.5, 0)` like gsplat's renderer.
    """
    camera_centres = torch.inverse(viewmats)[:, :3, 3]  # [C, 3]
    dirs = torch.nn.functional.normalize(means[None, :, :] - camera_centres[:, None, :], p=2, dim=-1)
    n_bases = (sh_degree + 1) ** 2
    basis = spherical_harmonics_basis(sh_degree, dirs)  # [C, N, n_bases]
    if sh_coeffs.dim() == 3:
        sh_coeffs = sh_coeffs[None]
    rgb = (basis[..., None] * sh_coeffs[..., :n_bases, :]).sum(dim=-2)
    return torch.clamp_min(rgb + 0.5, 0.0)


# --------------------------------------------------------------------------------------
# Compositing
# --------------------------------------------------------------------------------------


def tile_ranges(
    means2d: Tensor, radii: Tensor, tile_size: int, tiles_x: int, tiles_y: int
) -> Tuple[Tensor, Tensor]:
    """Inclusive min and exclusive max tile indices [..., 2] (x, y) of each 3-sigma square.

    Same floor/ceil and clamping as gsplat's `isect_tiles` kernel, so a Gaussian reaches
    exactly the tiles gsplat bins it into.
    """
    with torch.no_grad():
        centre = means2d.detach() / tile_size
        radius = radii.to(centre.dtype)[..., None] / tile_size
        upper = torch.tensor([tiles_x, tiles_y], dtype=centre.dtype, device=means2d.device)
        # Clamp before the integer cast: far off-screen (culled) means would overflow it.
        tile_min = torch.minimum(torch.floor(centre - radius).clamp_min(0), upper).long()
        tile_max = torch.minimum(torch.ceil(centre + radius).clamp_min(0), upper).long()
    return tile_min, tile_max


def default_pixel_chunk(device: torch.device) -> int:
    """Pixels per block when the caller gives none: small on CPU (cache), larger on GPU."""
    return DEFAULT_PIXEL_CHUNK_CUDA if device.type == "cuda" else DEFAULT_PIXEL_CHUNK


def max_pairs_per_batch(device: torch.device) -> int:
    """Pixel-Gaussian pairs composited in one step: cache-sized on CPU, larger on GPU."""
    return MAX_PAIRS_PER_BATCH_CUDA if device.type == "cuda" else MAX_PAIRS_PER_BATCH


def block_shape(width: int, height: int, tile_size: int, pixel_chunk: int) -> Tuple[int, int]:
    """Height and width of the pixel blocks processed at once.

    Blocks are as square as possible (so 3-sigma culling per block is tight) and aligned to
    gsplat tiles when at least one tile large (so a block's Gaussian list is exactly the
    union of its tiles' lists).
    """
    if pixel_chunk <= 0:
        raise ValueError(f"pixel_chunk must be positive, got {pixel_chunk}")
    if pixel_chunk >= width * height:
        return height, width
    side = max(1, math.isqrt(pixel_chunk))
    if side >= tile_size:
        side -= side % tile_size
    block_w = min(width, side)
    block_h = min(height, max(1, pixel_chunk // block_w))
    if tile_size <= block_h < height:
        block_h -= block_h % tile_size
    return block_h, block_w


def _register_absgrad_hook(delta: Tensor, absgrad_column: Tensor, gaussian_ids: Tensor) -> None:
    """Accumulate sum over pixels of |dL/d mean2d| (AbsGS) into `absgrad_column` in backward.

    `delta` is mean2d - pixel for every (pixel, Gaussian) pair, so its gradient per pair is
    exactly the per-pixel gradient gsplat takes the absolute value of before summing.
    """

    def accumulate(grad: Tensor) -> None:
        absgrad_column.index_add_(0, gaussian_ids, grad.abs().sum(dim=0).to(absgrad_column.dtype))

    delta.register_hook(accumulate)


def composite_pixels(
    pixels_x: Tensor,
    pixels_y: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    coverage: Optional[Tensor] = None,
    absgrad: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of depth-sorted Gaussians over a set of pixels.

    Args:
        pixels_x, pixels_y: Pixel-centre coordinates [P].
        means2d, conics, opacities, features: The G Gaussians that may touch these pixels,
            sorted front to back: [G, 2], [G, 3], [G], [G, D].
        coverage: Optional [P, G] bool, False where gsplat's tile binning keeps Gaussian g
            away from pixel p.
        absgrad: Optional ([N, 2] buffer, [G] Gaussian ids) to accumulate AbsGS gradients.

    Returns:
        The composited features [P, D] (without background) and the final transmittance [P].
    """
    n_pixels, n_gaussians = pixels_x.shape[0], means2d.shape[0]
    dtype, device = features.dtype, features.device
    color = torch.zeros(n_pixels, features.shape[-1], dtype=dtype, device=device)
    log_transmittance = torch.zeros(n_pixels, dtype=dtype, device=device)
    log_stop = math.log(TRANSMITTANCE_STOP)
    done = torch.zeros(n_pixels, dtype=torch.bool, device=device)
    batch = max(1, max_pairs_per_batch(device) // max(1, n_pixels))

    for start in range(0, n_gaussians, batch):
        stop = min(n_gaussians, start + batch)
        dx = means2d[None, start:stop, 0] - pixels_x[:, None]  # [P, g]
        dy = means2d[None, start:stop, 1] - pixels_y[:, None]
        if absgrad is not None and dx.requires_grad:
            buffer, ids = absgrad
            _register_absgrad_hook(dx, buffer[:, 0], ids[start:stop])
            _register_absgrad_hook(dy, buffer[:, 1], ids[start:stop])
        conic = conics[start:stop]
        sigma = 0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) + conic[:, 1] * dx * dy
        # Clamping sigma (and below, log T) only touches pairs that are masked out anyway,
        # and keeps exp() out of the denormal range, where CPU arithmetic is ~100x slower.
        alpha = torch.clamp_max(opacities[None, start:stop] * torch.exp(-sigma.clamp_max(MAX_SIGMA)), MAX_ALPHA)
        with torch.no_grad():
            contributes = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
            if coverage is not None:
                contributes &= coverage[:, start:stop]
        alpha = torch.where(contributes, alpha, torch.zeros_like(alpha))
        log_one_minus_alpha = torch.log1p(-alpha)
        log_t_after = log_transmittance[:, None] + torch.cumsum(log_one_minus_alpha, dim=1)
        with torch.no_grad():
            # gsplat: `if (T * (1 - alpha) <= 1e-4) { done = true; break; }`. T only falls,
            # so "not yet stopped" is a prefix mask; a stopped pixel takes nothing more.
            alive = (log_t_after > log_stop) & ~done[:, None]
            done = done | (contributes & ~alive).any(dim=1)
        transmittance_before = torch.exp((log_t_after - log_one_minus_alpha).clamp_min(log_stop - 1.0))
        weights = torch.where(alive, alpha * transmittance_before, torch.zeros_like(alpha))
        color = color + weights @ features[start:stop]
        log_transmittance = log_transmittance + torch.where(
            alive, log_one_minus_alpha, torch.zeros_like(alpha)
        ).sum(dim=1)
        if bool(done.all()):
            break
    return color, torch.exp(log_transmittance)


def rasterize_to_pixels_dense(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,
    pixel_chunk: Optional[int] = None,
    absgrad_buffer: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Dense counterpart of gsplat's `rasterize_to_pixels` (non-packed inputs [C, N, ...]).

    Returns render colours [C, H, W, D] and alphas [C, H, W, 1].
    """
    n_cameras = means2d.shape[0]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    if pixel_chunk is None:
        pixel_chunk = default_pixel_chunk(means2d.device)
    block_h, block_w = block_shape(width, height, tile_size, pixel_chunk)
    images: List[Tensor] = []
    alphas: List[Tensor] = []
    for camera in range(n_cameras):
        image, alpha = _rasterize_camera(
            means2d[camera],
            conics[camera],
            colors[camera],
            opacities[camera],
            radii[camera],
            depths[camera],
            width,
            height,
            tile_size,
            tiles_x,
            tiles_y,
            block_h,
            block_w,
            None if backgrounds is None else backgrounds[camera],
            None if absgrad_buffer is None else absgrad_buffer[camera],
        )
        images.append(image)
        alphas.append(alpha)
    return torch.stack(images), torch.stack(alphas)


def _rasterize_camera(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
    block_h: int,
    block_w: int,
    background: Optional[Tensor],
    absgrad_buffer: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    """Render one camera block by block; returns image [H, W, D] and alpha [H, W, 1]."""
    dtype = colors.dtype
    with torch.no_grad():
        visible = torch.nonzero(radii > 0).squeeze(1)
        order = torch.sort(depths.detach()[visible], stable=True).indices
        sorted_ids = visible[order]
        tile_min, tile_max = tile_ranges(means2d[sorted_ids], radii[sorted_ids], tile_size, tiles_x, tiles_y)

    rows: List[Tensor] = []
    alpha_rows: List[Tensor] = []
    for y0 in range(0, height, block_h):
        y1 = min(height, y0 + block_h)
        row: List[Tensor] = []
        alpha_row: List[Tensor] = []
        for x0 in range(0, width, block_w):
            x1 = min(width, x0 + block_w)
            color, transmittance = _rasterize_block(
                means2d, conics, colors, opacities, sorted_ids, tile_min, tile_max,
                x0, x1, y0, y1, tile_size, absgrad_buffer,
            )  # fmt: skip
            if background is not None:
                color = color + transmittance[..., None] * background.to(dtype)
            row.append(color)
            alpha_row.append(1.0 - transmittance[..., None])
        rows.append(torch.cat(row, dim=1))
        alpha_rows.append(torch.cat(alpha_row, dim=1))
    return torch.cat(rows, dim=0), torch.cat(alpha_rows, dim=0).to(dtype)


def _rasterize_block(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    sorted_ids: Tensor,
    tile_min: Tensor,
    tile_max: Tensor,
    x0: int,
    x1: int,
    y0: int,
    y1: int,
    tile_size: int,
    absgrad_buffer: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    """Composite pixels [y0, y1) x [x0, x1); returns colours [h, w, D] and transmittance [h, w]."""
    dtype, device = colors.dtype, colors.device
    h, w = y1 - y0, x1 - x0
    block_tile_min_x, block_tile_max_x = x0 // tile_size, (x1 - 1) // tile_size + 1
    block_tile_min_y, block_tile_max_y = y0 // tile_size, (y1 - 1) // tile_size + 1
    with torch.no_grad():
        overlaps = (
            (tile_min[:, 0] < block_tile_max_x)
            & (tile_max[:, 0] > block_tile_min_x)
            & (tile_min[:, 1] < block_tile_max_y)
            & (tile_max[:, 1] > block_tile_min_y)
        )
        in_block = torch.nonzero(overlaps).squeeze(1)
    if in_block.numel() == 0:
        empty = torch.zeros(h, w, colors.shape[-1], dtype=dtype, device=device)
        return empty, torch.ones(h, w, dtype=dtype, device=device)

    ids = sorted_ids[in_block]
    xs = torch.arange(x0, x1, device=device)
    ys = torch.arange(y0, y1, device=device)
    coverage = None
    spans_several_tiles = (block_tile_max_x - block_tile_min_x) * (block_tile_max_y - block_tile_min_y) > 1
    if spans_several_tiles:
        with torch.no_grad():
            g_min, g_max = tile_min[in_block], tile_max[in_block]
            tile_x = (xs // tile_size)[:, None]
            tile_y = (ys // tile_size)[:, None]
            covers_x = (tile_x >= g_min[None, :, 0]) & (tile_x < g_max[None, :, 0])  # [w, G]
            covers_y = (tile_y >= g_min[None, :, 1]) & (tile_y < g_max[None, :, 1])  # [h, G]
            coverage = (covers_y[:, None, :] & covers_x[None, :, :]).reshape(h * w, -1)

    pixels_y, pixels_x = torch.meshgrid(ys.to(dtype) + 0.5, xs.to(dtype) + 0.5, indexing="ij")
    color, transmittance = composite_pixels(
        pixels_x.reshape(-1),
        pixels_y.reshape(-1),
        means2d[ids],
        conics[ids],
        opacities[ids],
        colors[ids],
        coverage,
        None if absgrad_buffer is None else (absgrad_buffer, ids),
    )
    return color.reshape(h, w, -1), transmittance.reshape(h, w)


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------


def _check_supported(packed: bool, camera_model: str, distributed: bool, unused: Dict[str, Any]) -> None:
    """Fail loudly on gsplat options this dense path does not implement."""
    if packed:
        raise NotImplementedError("torch rasterizer: packed=True is not supported; pass packed=False")
    if camera_model != "pinhole":
        raise NotImplementedError(f"torch rasterizer: camera_model={camera_model!r} is not supported (pinhole only)")
    if distributed:
        raise NotImplementedError("torch rasterizer: distributed=True is not supported")
    active = {key: value for key, value in unused.items() if value is not None and value is not False}
    if active:
        raise NotImplementedError(f"torch rasterizer: unsupported options {sorted(active)}")


def _check_shapes(
    means: Tensor,
    quats: Optional[Tensor],
    scales: Optional[Tensor],
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    sh_degree: Optional[int],
    covars: Optional[Tensor],
    render_mode: str,
    rasterize_mode: str,
) -> None:
    """Reject inputs gsplat would reject, with messages that name the offending argument."""
    n, c = means.shape[0], viewmats.shape[0]
    if means.shape != (n, 3):
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    if covars is None:
        if quats is None or quats.shape != (n, 4):
            raise ValueError(f"quats must be [N, 4], got {None if quats is None else tuple(quats.shape)}")
        if scales is None or scales.shape != (n, 3):
            raise ValueError(f"scales must be [N, 3], got {None if scales is None else tuple(scales.shape)}")
    elif covars.shape != (n, 3, 3):
        raise ValueError(f"covars must be [N, 3, 3], got {tuple(covars.shape)}")
    if opacities.shape != (n,):
        raise ValueError(f"opacities must be [N], got {tuple(opacities.shape)}")
    if viewmats.shape != (c, 4, 4):
        raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    if Ks.shape != (c, 3, 3):
        raise ValueError(f"Ks must be [C, 3, 3], got {tuple(Ks.shape)}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    if sh_degree is None:
        if not ((colors.dim() == 2 and colors.shape[0] == n) or (colors.dim() == 3 and colors.shape[:2] == (c, n))):
            raise ValueError(f"colors must be [N, D] or [C, N, D] without sh_degree, got {tuple(colors.shape)}")
    else:
        sh_ok = (colors.dim() == 3 and colors.shape[0] == n and colors.shape[2] == 3) or (
            colors.dim() == 4 and colors.shape[:2] == (c, n) and colors.shape[3] == 3
        )
        if not sh_ok:
            raise ValueError(f"SH colors must be [N, K, 3] or [C, N, K, 3], got {tuple(colors.shape)}")
        if (sh_degree + 1) ** 2 > colors.shape[-2]:
            raise ValueError(
                f"sh_degree={sh_degree} needs {(sh_degree + 1) ** 2} SH bases, colors has {colors.shape[-2]}"
            )


def _features_and_backgrounds(
    colors: Tensor, depths: Tensor, backgrounds: Optional[Tensor], render_mode: str, n_cameras: int
) -> Tuple[Tensor, Optional[Tensor]]:
    """Per-camera features [C, N, X] and backgrounds [C, X] for the requested render mode.

    Depth channels get a zero background, as in gsplat.
    """
    if render_mode in ("RGB+D", "RGB+ED"):
        features = torch.cat([colors, depths[..., None].to(colors.dtype)], dim=-1)
        if backgrounds is not None:
            zeros = torch.zeros(n_cameras, 1, dtype=backgrounds.dtype, device=backgrounds.device)
            backgrounds = torch.cat([backgrounds, zeros], dim=-1)
        return features, backgrounds
    if render_mode in ("D", "ED"):
        if backgrounds is not None:
            backgrounds = torch.zeros(n_cameras, 1, dtype=backgrounds.dtype, device=backgrounds.device)
        return depths[..., None], backgrounds
    return colors, backgrounds


def rasterization(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [(C,) N, D] or [(C,) N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: str = "pinhole",
    segmented: bool = False,
    covars: Optional[Tensor] = None,
    pixel_chunk: Optional[int] = None,
    **unused: Any,
) -> Tuple[Tensor, Tensor, Dict[str, Any]]:
    """Rasterize N 3D Gaussians into C images; same contract as `gsplat.rasterization`.

    See gsplat 1.4.0's `rasterization` docstring for the arguments shared with it. Extra:

    Args:
        pixel_chunk: Pixels per block (default 256 on CPU, 4096 on CUDA); memory scales with
            it times the Gaussians overlapping a block. Results do not depend on it beyond
            float rounding.
        segmented: Accepted for signature compatibility with newer gsplat; ignored.
        unused: Other keyword arguments are accepted if None/False (so newer gsplat call
            sites still run) and rejected otherwise.

    Returns:
        render_colors [C, H, W, X], render_alphas [C, H, W, 1] and a meta dict with gsplat's
        non-packed keys; `means2d` is a non-leaf tensor, so `retain_grad()` works on it.
    """
    _check_supported(packed, camera_model, distributed, unused)
    _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, covars, render_mode, rasterize_mode)
    n_cameras = viewmats.shape[0]

    if covars is None:
        covars3d = quat_scale_to_covariance(quats, scales)
    else:
        covars3d = symmetric_from_upper_triangle(covars)
    projected = project_gaussians(
        means, covars3d, viewmats, Ks, width, height,
        eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
        calc_compensations=(rasterize_mode == "antialiased"),
    )  # fmt: skip
    opacities_per_camera = opacities.repeat(n_cameras, 1)  # [C, N]
    if projected.compensations is not None:
        opacities_per_camera = opacities_per_camera * projected.compensations

    if sh_degree is None:
        colors_per_camera = colors.expand(n_cameras, -1, -1) if colors.dim() == 2 else colors
    else:
        colors_per_camera = sh_to_colors(sh_degree, means, colors, viewmats)

    features, backgrounds = _features_and_backgrounds(
        colors_per_camera, projected.depths, backgrounds, render_mode, n_cameras
    )

    absgrad_buffer = None
    if absgrad and projected.means2d.requires_grad:
        absgrad_buffer = torch.zeros_like(projected.means2d, requires_grad=False)
        projected.means2d.absgrad = absgrad_buffer  # filled by hooks during backward

    render_colors, render_alphas = rasterize_to_pixels_dense(
        projected.means2d,
        projected.conics,
        features,
        opacities_per_camera,
        projected.radii,
        projected.depths,
        width,
        height,
        tile_size=tile_size,
        backgrounds=backgrounds,
        pixel_chunk=pixel_chunk,
        absgrad_buffer=absgrad_buffer,
    )
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )

    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tile_min, tile_max = tile_ranges(projected.means2d, projected.radii, tile_size, tiles_x, tiles_y)
    tiles_per_gauss = ((tile_max - tile_min).prod(dim=-1) * (projected.radii > 0)).to(torch.int32)
    meta: Dict[str, Any] = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": projected.radii,
        "means2d": projected.means2d,
        "depths": projected.depths,
        "conics": projected.conics,
        "opacities": opacities_per_camera,
        "tile_width": tiles_x,
        "tile_height": tiles_y,
        "tiles_per_gauss": tiles_per_gauss,
        "isect_ids": None,
        "flatten_ids": None,
        "isect_offsets": None,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": n_cameras,
    }
    return render_colors, render_alphas, meta


__all__: List[str] = [
    "ProjectedGaussians",
    "composite_pixels",
    "project_gaussians",
    "rasterization",
    "rasterize_to_pixels_dense",
    "sh_to_colors",
    "spherical_harmonics_basis",
]
