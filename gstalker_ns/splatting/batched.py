"""Several frames in one rasterization: each frame has its own (deformed) Gaussians and camera.

gsplat 1.4.0's `rasterization` renders one set of Gaussians from C cameras; a talking head
deforms its Gaussians every frame, so frames cannot share that call. Here the work is split in
two halves:

- `project_frames`: each frame's Gaussians projected with its own camera (cheap, fixed shapes,
  no host synchronisation, so it can be captured in a CUDA graph: gstalker_ns.splatting.graphed);
- `raster_projected`: tile intersection, sorting and per-pixel blending, once for all frames, as
  gsplat does for C cameras. Its buffer sizes depend on the data (intersection counts), so it
  always runs eagerly.

That also skips `rasterization`'s host synchronisation for `torch.inverse` of the view matrices
(the camera centres are passed in). The torch backend (CPU, tests) runs the same two halves with
the pure-PyTorch rasterizer's pieces, with the same arguments and outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import torch_rasterizer as tr

TILE_SIZE = 16


@dataclass
class ProjectedFrames:
    """B frames' 2D Gaussians, [B, N, ...] like gsplat's non-packed projection."""

    means2d: Tensor  # [B, N, 2]
    conics: Tensor  # [B, N, 3]
    colors: Tensor  # [B, N, 3] activated RGB
    opacities: Tensor  # [B, N] activated (times the antialiasing compensation)
    radii: Tensor  # [B, N] int32, 0 where culled
    depths: Tensor  # [B, N]

    def as_tuple(self) -> Tuple[Tensor, ...]:
        return (self.means2d, self.conics, self.colors, self.opacities, self.radii, self.depths)


def viewmats_from_poses(camera_to_worlds: Tensor) -> Tensor:
    """[B, 3, 4] nerfstudio camera-to-world -> [B, 4, 4] gsplat world-to-camera: nerfstudio's
    `get_viewmat`, without the small host-to-device copy it makes (not allowed in a CUDA graph)."""
    R = camera_to_worlds[:, :3, :3]
    R = torch.cat([R[..., :1], -R[..., 1:]], dim=-1)  # flip y and z (OpenGL -> OpenCV)
    R_inv = R.transpose(1, 2)
    T_inv = -torch.bmm(R_inv, camera_to_worlds[:, :3, 3:4])
    bottom = torch.zeros_like(camera_to_worlds[:, :1, :])
    bottom = torch.cat([bottom[..., :3], torch.ones_like(bottom[..., :1])], dim=-1)
    return torch.cat([torch.cat([R_inv, T_inv], dim=-1), bottom], dim=1)


def sh_colours(sh_degree: int, means: Tensor, coeffs: Tensor, camera_centres: Tensor) -> Tensor:
    """View-dependent RGB [B, N, 3] of SH coefficients [B, N, K, 3] seen from camera_centres [B, 3],
    as gsplat's `spherical_harmonics` + 0.5, clamped at 0, in plain torch: gsplat 1.4.0 launches its
    SH kernel on the legacy default stream, which a CUDA graph capture does not record."""
    dirs = torch.nn.functional.normalize(means - camera_centres[:, None, :], p=2, dim=-1)
    basis = tr.spherical_harmonics_basis(sh_degree, dirs)  # [B, N, (degree + 1)^2]
    rgb = (basis[..., None] * coeffs[..., : basis.shape[-1], :]).sum(dim=-2)
    return torch.clamp_min(rgb + 0.5, 0.0)


def project_frames(
    means: Tensor,  # [B, N, 3]
    quats: Tensor,  # [B, N, 4]
    scales: Tensor,  # [B, N, 3] (activated)
    opacities: Tensor,  # [B, N] (activated)
    colors: Tensor,  # [B, N, K, 3] SH coefficients, or [B, N, 3] colours when sh_degree is None
    viewmats: Tensor,  # [B, 4, 4]
    Ks: Tensor,  # [B, 3, 3]
    camera_centres: Tensor,  # [B, 3] world positions (for the view direction of SH colours)
    width: int,
    height: int,
    sh_degree: Optional[int],
    backend: str,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    rasterize_mode: str = "classic",
) -> ProjectedFrames:
    """Each frame's Gaussians through its own camera, and their view-dependent colours."""
    batch = means.shape[0]
    antialiased = rasterize_mode == "antialiased"
    if backend == "gsplat":
        from gsplat.cuda._wrapper import fully_fused_projection

        parts = [
            fully_fused_projection(
                means[b], None, quats[b], scales[b], viewmats[b : b + 1], Ks[b : b + 1], width, height,
                eps2d=0.3, near_plane=near_plane, far_plane=far_plane, packed=False, calc_compensations=antialiased,
            )  # fmt: skip
            for b in range(batch)
        ]
        radii, means2d, depths, conics = (torch.cat([p[i] for p in parts]) for i in range(4))
        compensations = torch.cat([p[4] for p in parts]) if antialiased else None
    else:
        parts = [
            tr.project_gaussians(
                means[b], tr.quat_scale_to_covariance(quats[b], scales[b]), viewmats[b : b + 1], Ks[b : b + 1],
                width, height, near_plane=near_plane, far_plane=far_plane, calc_compensations=antialiased,
            )  # fmt: skip
            for b in range(batch)
        ]
        radii, means2d, depths, conics = (torch.cat([getattr(p, k) for p in parts]) for k in ("radii", "means2d", "depths", "conics"))
        compensations = torch.cat([p.compensations for p in parts]) if antialiased else None
    if sh_degree is not None:
        colors = sh_colours(sh_degree, means, colors, camera_centres)
    if compensations is not None:
        opacities = opacities * compensations
    return ProjectedFrames(means2d, conics, colors, opacities, radii, depths)


def projected_difference(a: Tuple[Tensor, ...], b: Tuple[Tensor, ...]) -> float:
    """Largest difference of two `ProjectedFrames.as_tuple()` over the Gaussians both keep: gsplat
    leaves culled Gaussians' entries unwritten (any values). Infinite if more than 0.1% of the
    Gaussians are kept by one and culled by the other."""
    kept_a, kept_b = a[4] > 0, b[4] > 0
    if float((kept_a != kept_b).float().mean()) > 1e-3:
        return float("inf")
    both = kept_a & kept_b
    worst = 0.0
    for x, y in zip(a, b):
        x, y = x[both], y[both]
        if x.numel():
            worst = max(worst, float((x.float() - y.float()).abs().max()))
    return worst


def raster_projected(
    projected: ProjectedFrames, width: int, height: int, backend: str, depth: bool = False
) -> Tuple[Tensor, Tensor]:
    """(colours [B, H, W, 3] (+1 expected-depth channel with `depth`), alphas [B, H, W, 1])."""
    p = projected
    features = torch.cat([p.colors, p.depths[..., None].to(p.colors.dtype)], dim=-1) if depth else p.colors
    if backend == "gsplat":
        from gsplat.cuda._wrapper import isect_offset_encode, isect_tiles, rasterize_to_pixels

        batch = p.means2d.shape[0]
        tiles_w, tiles_h = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
        _, isect_ids, flatten_ids = isect_tiles(
            p.means2d, p.radii, p.depths, TILE_SIZE, tiles_w, tiles_h, packed=False, n_cameras=batch
        )
        offsets = isect_offset_encode(isect_ids, batch, tiles_w, tiles_h)
        render, alpha = rasterize_to_pixels(
            p.means2d, p.conics, features, p.opacities, width, height, TILE_SIZE, offsets, flatten_ids
        )
    else:
        render, alpha = tr.rasterize_to_pixels_dense(
            p.means2d, p.conics, features, p.opacities, p.radii, p.depths, width, height, tile_size=TILE_SIZE
        )
    if depth:  # expected depth, as gsplat's "ED" render mode
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp(min=1e-10)], dim=-1)
    return render, alpha

