"""Multi-resolution hash-grid tri-plane encoding (ER-NeRF / GSTalker), in pure torch.

Why a tri-plane of 2D hash grids rather than one 3D grid: ER-NeRF showed that factorising the
space into the xy, yz and xz planes gives far fewer hash collisions for the same table size,
which matters for the small, detailed motion of a talking mouth.

The torch implementation reproduces tiny-cuda-nn's `HashGrid` encoding exactly (same level
scales, same `+0.5` vertex offset, same dense/hashed indexing, same parameter layout), so a
table trained with tinycudann on a GPU is the very same tensor the torch path reads on a CPU,
and the other way round: checkpoints are portable between the two backends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import warnings
from typing import Any, List, Optional

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["HashGrid2D", "HashTriplane", "tcnn_available", "grid_level_layout"]

# tiny-cuda-nn's coherent prime hash, first two factors (one per input dimension).
_PRIMES = (1, 2654435761)
_UINT32_MASK = 0xFFFFFFFF

_TCNN_MODULE: Any = None
_TCNN_CHECKED = False


def _import_tcnn() -> Any:
    """tinycudann if it imports, else None; checked once per process."""
    global _TCNN_MODULE, _TCNN_CHECKED
    if not _TCNN_CHECKED:
        _TCNN_CHECKED = True
        if importlib.util.find_spec("tinycudann") is not None:
            try:
                import tinycudann  # type: ignore[import-not-found]

                _TCNN_MODULE = tinycudann
            except Exception:  # built for another GPU / CUDA: behave as if absent
                _TCNN_MODULE = None
    return _TCNN_MODULE


def tcnn_available() -> bool:
    return _import_tcnn() is not None


def per_level_scale(num_levels: int, base_resolution: int, max_resolution: int) -> float:
    """Growth factor between levels (Instant-NGP eq. 3), as nerfstudio passes it to tcnn."""
    if num_levels <= 1:
        return 1.0
    return float(math.exp((math.log(max_resolution) - math.log(base_resolution)) / (num_levels - 1)))


def grid_level_layout(
    num_levels: int, base_resolution: int, log2_hashmap_size: int, level_scale: float, num_dims: int = 2
) -> dict:
    """Per-level scale, vertex resolution, table size and offset, computed as tiny-cuda-nn does.

    tcnn works in float32 (`exp2f(level * log2(per_level_scale)) * base - 1`), so we do too: a
    differently rounded `ceil` would shift every later level's offset.
    """
    log2_scale = np.log2(np.float32(level_scale)).astype(np.float32)
    max_table = 1 << log2_hashmap_size
    scales, resolutions, sizes, offsets, hashed = [], [], [], [], []
    offset = 0
    for level in range(num_levels):
        scale = np.float32(np.exp2(np.float32(level) * log2_scale) * np.float32(base_resolution) - np.float32(1.0))
        resolution = int(math.ceil(float(scale))) + 1
        dense_size = resolution**num_dims
        params = min(-(-dense_size // 8) * 8, max_table)  # aligned to 8 entries, capped at the table
        scales.append(float(scale))
        resolutions.append(resolution)
        sizes.append(params)
        offsets.append(offset)
        hashed.append(dense_size > params)
        offset += params
    return {
        "scales": scales,
        "resolutions": resolutions,
        "sizes": sizes,
        "offsets": offsets,
        "hashed": hashed,
        "total": offset,
    }


class HashGrid2D(nn.Module):
    """Multi-resolution 2D hash grid with bilinear interpolation (Instant-NGP), pure torch.

    Levels whose dense vertex grid fits in the table are indexed densely (no collisions);
    finer levels use the hash `x * 1 ^ y * 2654435761 (mod 2^32)`. The four cell corners of all
    levels are gathered in one `index_select` ([N, L, 4] rows), with a scatter-add backward.

    `params` is the flat table in tiny-cuda-nn's layout ([total entries, F] row-major, levels
    back to back); `table` is its [total, F] view.
    """

    def __init__(
        self,
        num_levels: int = 12,
        features_per_level: int = 2,
        log2_hashmap_size: int = 16,
        base_resolution: int = 16,
        max_resolution: int = 512,
    ) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.max_resolution = max_resolution
        self.level_scale = per_level_scale(num_levels, base_resolution, max_resolution)
        layout = grid_level_layout(num_levels, base_resolution, log2_hashmap_size, self.level_scale)
        self.layout = layout
        self.out_dim = num_levels * features_per_level

        self.params = nn.Parameter(torch.empty(layout["total"] * features_per_level))
        nn.init.uniform_(self.params, -1e-4, 1e-4)  # tcnn's initialisation

        # Constants of the lookup; not persistent: they follow from the constructor arguments.
        self.register_buffer("_scales", torch.tensor(layout["scales"], dtype=torch.float32), persistent=False)
        self.register_buffer("_resolutions", torch.tensor(layout["resolutions"], dtype=torch.long), persistent=False)
        self.register_buffer("_sizes", torch.tensor(layout["sizes"], dtype=torch.long), persistent=False)
        self.register_buffer("_offsets", torch.tensor(layout["offsets"], dtype=torch.long), persistent=False)
        self._num_dense = sum(1 for h in layout["hashed"] if not h)
        if any(layout["hashed"][: self._num_dense]):
            raise AssertionError("dense levels must precede hashed ones")

    @property
    def table(self) -> Tensor:
        """The feature table as [total entries, features_per_level] (a view of `params`)."""
        return self.params.view(-1, self.features_per_level)

    def level_indices(self, uv01: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows and bilinear weights of the 4 cell corners: ([N, L, 4] long, [N, L, 4]).

        Corner order (dx, dy) = (0,0), (1,0), (0,1), (1,1), as tcnn's bit loop. Dense levels come
        first (resolution grows with the level), so each index rule runs only on its own slice.
        """
        uv = uv01.float().clamp(0.0, 1.0)  # outside [0,1] the uint32 grid coordinates would wrap
        pos = uv[:, None, :] * self._scales[None, :, None] + 0.5  # [N, L, 2]; tcnn's half-vertex offset
        cell_f = torch.floor(pos)
        frac = pos - cell_f  # gradient w.r.t. uv flows through here (floor has zero gradient)
        cell = cell_f.long()
        gx, gy = cell[..., 0], cell[..., 1]  # [N, L]

        index = torch.empty(uv.shape[0], self.num_levels, 4, dtype=torch.long, device=uv.device)
        nd = self._num_dense
        if nd > 0:  # row-major dense grid, x fastest; `% size` as tcnn (corners on the far edge wrap)
            res = self._resolutions[:nd]
            base = gx[:, :nd] + gy[:, :nd] * res
            dense = torch.stack([base, base + 1, base + res, base + res + 1], dim=-1)
            index[:, :nd] = torch.remainder(dense, self._sizes[:nd, None]) + self._offsets[:nd, None]
        if nd < self.num_levels:  # x * 1 ^ y * 2654435761 in uint32, then `% 2^k` as a mask
            hx0, hx1 = gx[:, nd:], gx[:, nd:] + 1
            hy0 = (gy[:, nd:] * _PRIMES[1]) & _UINT32_MASK
            hy1 = ((gy[:, nd:] + 1) * _PRIMES[1]) & _UINT32_MASK
            hashed = torch.stack([hx0 ^ hy0, hx1 ^ hy0, hx0 ^ hy1, hx1 ^ hy1], dim=-1)
            index[:, nd:] = (hashed & (self._sizes[nd:, None] - 1)) + self._offsets[nd:, None]

        fx, fy = frac[..., 0], frac[..., 1]
        gx_, gy_ = 1 - fx, 1 - fy
        weights = torch.stack([gx_ * gy_, fx * gy_, gx_ * fy, fx * fy], dim=-1)
        return index, weights

    def forward(self, uv01: Tensor) -> Tensor:
        """uv01 [N, 2] in [0, 1] (clamped) -> features [N, L * F] (level-major, as tcnn)."""
        index, weights = self.level_indices(uv01)
        feats = _interpolate(self.table, index, weights)  # [N, L, F]
        return feats.reshape(uv01.shape[0], self.out_dim)


class _Interpolate(torch.autograd.Function):
    """sum_c weights[..., c] * table[index[..., c]], with a scatter-add backward.

    Autograd's own `embedding` backward sorts the indices and was ~40% of a CPU step; this one
    uses `index_add_` and saves only indices and weights (the corner features are re-gathered
    for the weight gradient instead of being kept alive: [N, L, 4, F] floats per plane).
    """

    @staticmethod
    def forward(ctx: Any, table: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        corners = table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])
        out = (corners * weights.unsqueeze(-1)).sum(dim=-2)
        ctx.save_for_backward(table, index, weights)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], None, Optional[Tensor]]:
        table, index, weights = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            per_corner = (weights.unsqueeze(-1) * grad_out.unsqueeze(-2)).reshape(-1, table.shape[1])
            grad_table = torch.zeros_like(table).index_add_(0, index.reshape(-1), per_corner)
        if ctx.needs_input_grad[2]:
            corners = table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])
            grad_weights = (corners * grad_out.unsqueeze(-2)).sum(dim=-1)
        return grad_table, None, grad_weights


def _interpolate(table: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    return _Interpolate.apply(table, index, weights)


class _TcnnGrid:
    """A tcnn `HashGrid` encoding that reads the table of a `HashGrid2D`.

    Kept out of the module tree on purpose: the `HashGrid2D` owns the only parameter, so the
    state dict is the same whichever backend ran, and nothing is built on machines without tcnn.
    """

    def __init__(self, grid: HashGrid2D, device: torch.device) -> None:
        tcnn = _import_tcnn()
        config = {
            "otype": "HashGrid",
            "n_levels": grid.num_levels,
            "n_features_per_level": grid.features_per_level,
            "log2_hashmap_size": grid.log2_hashmap_size,
            "base_resolution": grid.base_resolution,
            "per_level_scale": grid.level_scale,
        }
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            try:
                self.encoding = tcnn.Encoding(n_input_dims=2, encoding_config=config, dtype=torch.float32)
            except TypeError:  # older bindings without `dtype`: output is half, cast in forward
                self.encoding = tcnn.Encoding(n_input_dims=2, encoding_config=config)
        n_params = self.encoding.params.numel()
        if n_params != grid.params.numel():
            raise RuntimeError(
                f"tinycudann's HashGrid has {n_params} parameters, the torch layout {grid.params.numel()}: "
                "the two layouts disagree, use implementation='torch'"
            )
        self.device = device

    def __call__(self, grid: HashGrid2D, uv01: Tensor) -> Tensor:
        # Re-point every call: `.to()` / `load_state_dict` may have swapped the Parameter object.
        self.encoding.params = grid.params
        return self.encoding(uv01.float().clamp(0.0, 1.0).contiguous()).float()


class HashTriplane(nn.Module):
    """Three `HashGrid2D`s on the xy, yz and xz planes; features concatenated (ER-NeRF order).

    implementation: "auto" uses tinycudann when it imports and the input is on CUDA, else torch;
    "torch" always torch; "tcnn" requires tinycudann (and CUDA inputs). Both backends share the
    parameters, so switching (e.g. training on GPU, rendering on CPU) needs no conversion.
    """

    PLANES = ((0, 1), (1, 2), (0, 2))  # xy, yz, xz

    def __init__(
        self,
        num_levels: int = 12,
        features_per_level: int = 2,
        log2_hashmap_size: int = 16,
        base_resolution: int = 16,
        max_resolution: int = 512,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        if implementation not in ("auto", "torch", "tcnn"):
            raise ValueError(f"implementation must be 'auto', 'torch' or 'tcnn', not {implementation!r}")
        if implementation == "tcnn" and not tcnn_available():
            raise ImportError("implementation='tcnn' but tinycudann cannot be imported")
        self.implementation = implementation
        self.grids = nn.ModuleList(
            HashGrid2D(num_levels, features_per_level, log2_hashmap_size, base_resolution, max_resolution)
            for _ in self.PLANES
        )
        self.out_dim = sum(g.out_dim for g in self.grids)
        self._tcnn: List[Optional[_TcnnGrid]] = [None] * len(self.PLANES)
        self._tcnn_failed = False

    def uses_tcnn(self, x: Tensor) -> bool:
        if self.implementation == "torch":
            return False
        if self.implementation == "tcnn":
            if not x.is_cuda:
                raise RuntimeError("implementation='tcnn' needs CUDA inputs")
            return True
        return x.is_cuda and not self._tcnn_failed and tcnn_available()

    def _tcnn_grid(self, plane: int, device: torch.device) -> Optional[_TcnnGrid]:
        """The plane's tcnn encoding on `device`; None when "auto" could not build it (torch then)."""
        enc = self._tcnn[plane]
        if enc is None or enc.device != device:
            try:
                enc = _TcnnGrid(self.grids[plane], device)
            except Exception as exc:
                if self.implementation == "tcnn":
                    raise
                warnings.warn(f"tinycudann HashGrid unusable ({exc}); using the torch hash grid", stacklevel=3)
                self._tcnn_failed = True
                return None
            self._tcnn[plane] = enc
        return enc

    def forward(self, xyz01: Tensor) -> Tensor:
        """xyz01 [N, 3] in [0, 1] (values outside are clamped) -> [N, out_dim]."""
        xyz01 = xyz01.float().clamp(0.0, 1.0)
        use_tcnn = self.uses_tcnn(xyz01)
        feats = []
        for plane, ((a, b), grid) in enumerate(zip(self.PLANES, self.grids)):
            uv = xyz01[:, [a, b]]
            enc = self._tcnn_grid(plane, xyz01.device) if use_tcnn else None
            feats.append(enc(grid, uv) if enc is not None else grid(uv))
        return torch.cat(feats, dim=-1)

    def __getstate__(self) -> dict:
        # The tcnn wrappers hold native handles; rebuild them lazily after pickling / deepcopy.
        state = self.__dict__.copy()
        state["_tcnn"] = [None] * len(self.PLANES)
        return state
