"""Several frames in one rasterization: each frame has its own (deformed) Gaussians and camera.

gsplat 1.4.0's `rasterization` renders one set of Gaussians from C cameras; a talking head
deforms its Gaussians every frame, so frames cannot share that call. Here each frame is
projected on its own (`fully_fused_projection`, cheap), and the expensive part, tile
intersection, sorting and per-pixel blending, runs once for all frames, as gsplat does for C
cameras. That also skips `rasterization`'s host synchronisation for `torch.inverse` of the view
matrices (the camera centres are passed in).

The torch backend (CPU, tests) renders the frames one by one with the pure-PyTorch rasterizer,
with the same arguments and outputs.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .torch_rasterizer import rasterization as torch_rasterization

TILE_SIZE = 16


def rasterize_frames(
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
) -> Tuple[Tensor, Tensor]:
    """(colours [B, H, W, 3], alphas [B, H, W, 1]) of B frames, each with its own Gaussians."""
    batch = means.shape[0]
    if backend != "gsplat":
        images, alphas = [], []
        for b in range(batch):
            image, alpha, _ = torch_rasterization(
                means=means[b], quats=quats[b], scales=scales[b], opacities=opacities[b], colors=colors[b],
                viewmats=viewmats[b : b + 1], Ks=Ks[b : b + 1], width=width, height=height,
                near_plane=near_plane, far_plane=far_plane, sh_degree=sh_degree, rasterize_mode=rasterize_mode,
            )  # fmt: skip
            images.append(image[0])
            alphas.append(alpha[0])
        return torch.stack(images), torch.stack(alphas)

    from gsplat.cuda._wrapper import (
        fully_fused_projection,
        isect_offset_encode,
        isect_tiles,
        rasterize_to_pixels,
        spherical_harmonics,
    )

    antialiased = rasterize_mode == "antialiased"
    parts = [
        fully_fused_projection(
            means[b], None, quats[b], scales[b], viewmats[b : b + 1], Ks[b : b + 1], width, height,
            eps2d=0.3, near_plane=near_plane, far_plane=far_plane, packed=False, calc_compensations=antialiased,
        )  # fmt: skip
        for b in range(batch)
    ]
    radii, means2d, depths, conics = (torch.cat([p[i] for p in parts]) for i in range(4))
    if antialiased:
        opacities = opacities * torch.cat([p[4] for p in parts])
    if sh_degree is not None:
        dirs = means - camera_centres[:, None, :]
        colors = torch.clamp_min(spherical_harmonics(sh_degree, dirs, colors, masks=radii > 0) + 0.5, 0.0)
    tiles_w, tiles_h = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, TILE_SIZE, tiles_w, tiles_h, packed=False, n_cameras=batch)
    offsets = isect_offset_encode(isect_ids, batch, tiles_w, tiles_h)
    return rasterize_to_pixels(means2d, conics, colors, opacities, width, height, TILE_SIZE, offsets, flatten_ids)
