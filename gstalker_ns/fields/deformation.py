"""Deformation fields that move the canonical Gaussians per frame (GSTalker stage 2).

Head: hash tri-plane features of the canonical position, the frame's expression code (tracked
mouth landmarks in training, predicted from the audio when driven by speech: see
gstalker_ns.expression) and the eye-blink value go through a small MLP that predicts position,
rotation and log-scale offsets. Torso: the same with the head pose in place of expression and blink.

Choices, and why:
- The output layer starts at ~1e-5, so a fresh field returns ~zero offsets and stage 2 starts
  from the static stage-1 Gaussians, learning only residual motion.
- The head field also offsets colour and opacity (`appearance`): a mouth that opens shows teeth
  and a dark cavity that a static set of Gaussians only moved around cannot produce (GaussianTalker
  and TalkingGaussian predict appearance changes, or a separate mouth branch, for the same reason).
- Position offsets are `max_offset * tanh(.)` times the aabb's largest side: bounded (a Gaussian
  cannot be flung away by one bad step) and independent of the scene's scale. Log-scale offsets
  are bounded likewise by `max_scale_offset`; quaternion offsets are left free (gsplat
  normalises the quaternion after the offset is added).
- Region attention (ER-NeRF, TalkingGaussian): the expression code is multiplied channel-wise by
  an attention predicted from the position features, and the blink value by a sigmoid gate, so
  regions away from the mouth / eyes can learn to ignore them.
- `detach_xyz=True` by default: the grids see the canonical positions without gradient, as in
  Deformable-3DGS (`deform.step(xyz.detach(), t)`); TalkingGaussian does not detach. The
  positional gradient of a hash grid is piecewise constant and aliased by hash collisions,
  which would push canonical means around for reasons unrelated to the image. The means are
  still optimised: `apply_deformation` adds the offsets to them, so the photometric gradient
  reaches them unchanged. Pass `detach_xyz=False` for the fully coupled variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .hash_triplane import HashTriplane

__all__ = ["DeformationOutput", "apply_deformation", "ExpressionDeformationField", "PoseDeformationField"]

_OUT_XYZ, _OUT_QUAT, _OUT_SCALE = 3, 4, 3
_OUT_COLOR, _OUT_OPACITY = 3, 1
MAX_COLOR_OFFSET = 2.0  # in the colour's stored units (SH DC coefficient or logit): about +-0.55 of 8-bit range
MAX_OPACITY_OFFSET = 6.0  # logit units: enough to hide or reveal a Gaussian


@dataclass
class DeformationOutput:
    """Per-Gaussian offsets for one frame."""

    d_xyz: Tensor  # [N, 3] position offsets, world units
    d_quat: Tensor  # [N, 4] added to the (unnormalised) canonical quaternion
    d_scale: Tensor  # [N, 3] added to the canonical log-scales
    d_color: Optional[Tensor] = None  # [N, 3] added to the base colour (SH DC / logit), if predicted
    d_opacity: Optional[Tensor] = None  # [N, 1] added to the opacity logit, if predicted

    @classmethod
    def zeros(cls, num: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "DeformationOutput":
        """No motion (e.g. for stage 1, or Gaussians no field covers)."""
        z = lambda d: torch.zeros(num, d, device=device, dtype=dtype)  # noqa: E731
        return cls(z(_OUT_XYZ), z(_OUT_QUAT), z(_OUT_SCALE), z(_OUT_COLOR), z(_OUT_OPACITY))


def apply_deformation(
    means: Tensor, quats: Tensor, log_scales: Tensor, out: DeformationOutput
) -> Tuple[Tensor, Tensor, Tensor]:
    """Deformed (means, quats, log_scales); quats are not normalised here (the rasteriser does)."""
    return means + out.d_xyz, quats + out.d_quat, log_scales + out.d_scale


def _mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    """`num_layers` hidden Linear+ReLU layers, then a linear output layer."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.ReLU()]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def _as_row(value: Tensor | float, dim: int, name: str, like: Tensor) -> Tensor:
    """A per-frame condition ([dim], [1, dim] or a scalar when dim == 1) as [1, dim] float."""
    t = torch.as_tensor(value, device=like.device).float().reshape(1, -1)
    if t.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} values for one frame, got shape {tuple(torch.as_tensor(value).shape)}")
    return t


class _GridDeformationField(nn.Module):
    """Shared part: aabb normalisation, tri-plane encoding and the offset head."""

    def __init__(
        self,
        aabb: Tensor,
        cond_dim: int,
        num_levels: int,
        features_per_level: int,
        log2_hashmap_size: int,
        base_resolution: int,
        max_resolution: int,
        hidden_dim: int,
        num_layers: int,
        implementation: str,
        max_offset: float,
        max_scale_offset: float,
        detach_xyz: bool,
        appearance: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("aabb", torch.zeros(2, 3))
        self.set_aabb(aabb)
        self.encoding = HashTriplane(
            num_levels, features_per_level, log2_hashmap_size, base_resolution, max_resolution, implementation
        )
        self.max_offset = max_offset
        self.max_scale_offset = max_scale_offset
        self.detach_xyz = detach_xyz
        self.appearance = appearance
        outputs = _OUT_XYZ + _OUT_QUAT + _OUT_SCALE + (_OUT_COLOR + _OUT_OPACITY if appearance else 0)
        self.head = _mlp(self.encoding.out_dim + cond_dim, hidden_dim, num_layers, outputs)
        last = self.head[-1]
        assert isinstance(last, nn.Linear)
        nn.init.uniform_(last.weight, -1e-5, 1e-5)
        nn.init.zeros_(last.bias)

    @torch.no_grad()
    def set_aabb(self, aabb: Tensor) -> None:
        """Set the box [2, 3] (min, max) mapped to the grids' [0, 1]^3; saved in the state dict."""
        aabb = torch.as_tensor(aabb).reshape(2, 3).to(self.aabb)
        if not bool((aabb[1] > aabb[0]).all()):
            raise ValueError(f"aabb max must exceed min on every axis, got {aabb.tolist()}")
        self.aabb.copy_(aabb)

    def normalize(self, xyz: Tensor) -> Tensor:
        """World positions -> [0, 1]^3 of the aabb (not clamped; the tri-plane clamps)."""
        return (xyz.float() - self.aabb[0]) / (self.aabb[1] - self.aabb[0])

    def encode_xyz(self, xyz: Tensor) -> Tensor:
        x01 = self.normalize(xyz.detach() if self.detach_xyz else xyz)
        return self.encoding(x01)

    def decode(self, h: Tensor) -> DeformationOutput:
        """Head input [N, in] -> bounded offsets."""
        return self._bounded(self.head(h))

    def _foldable(self) -> bool:
        """The folded path needs a hidden layer (Linear, ReLU, ...) in front of the output."""
        return len(self.head) > 2 and isinstance(self.head[1], nn.ReLU)

    def _folded_static(self, enc_x: Tensor, extra: Tuple[nn.Module, ...] = ()) -> Tuple:
        """Per-Gaussian parts of the first layer that do not change between frames, computed once
        per (positions' encoding, weights) and reused: at inference the canonical Gaussians are
        fixed, so only the small per-frame condition goes through the first layer each frame."""
        modules = (self.head,) + extra
        key = (enc_x.data_ptr(), enc_x._version, enc_x.shape[0], tuple(p._version for m in modules for p in m.parameters()))
        cache = getattr(self, "_fold_cache", None)
        if cache is None or cache[0] != key:
            first = self.head[0]
            d = self.encoding.out_dim
            static = torch.addmm(first.bias, enc_x, first.weight[:, :d].t())  # [N, hidden]
            self._fold_cache = cache = (key, static, tuple(m(enc_x) for m in extra))
        return cache[1], cache[2]

    def _decode_folded(self, static: Tensor, cond_part: Tensor) -> DeformationOutput:
        """The MLP from its first layer's pre-activation (static + this frame's condition term)."""
        h = torch.relu(static + cond_part)
        for layer in list(self.head)[2:]:
            h = layer(h)
        return self._bounded(h)

    def _bounded(self, raw: Tensor) -> DeformationOutput:
        extent = (self.aabb[1] - self.aabb[0]).max()
        d_xyz = torch.tanh(raw[:, :_OUT_XYZ]) * (self.max_offset * extent)
        d_quat = raw[:, _OUT_XYZ : _OUT_XYZ + _OUT_QUAT]
        geometry = _OUT_XYZ + _OUT_QUAT + _OUT_SCALE
        d_scale = torch.tanh(raw[:, _OUT_XYZ + _OUT_QUAT : geometry]) * self.max_scale_offset
        if not self.appearance:
            return DeformationOutput(d_xyz=d_xyz, d_quat=d_quat, d_scale=d_scale)
        d_color = torch.tanh(raw[:, geometry : geometry + _OUT_COLOR]) * MAX_COLOR_OFFSET
        d_opacity = torch.tanh(raw[:, geometry + _OUT_COLOR :]) * MAX_OPACITY_OFFSET
        return DeformationOutput(d_xyz=d_xyz, d_quat=d_quat, d_scale=d_scale, d_color=d_color, d_opacity=d_opacity)


class ExpressionDeformationField(_GridDeformationField):
    """Head motion: tri-plane(x) ++ attended expression code ++ gated blink -> MLP -> offsets.

    num_layers counts the hidden layers of the offset MLP (each `hidden_dim` wide).
    max_offset is the bound of |d_xyz| per axis as a fraction of the aabb's largest side.
    """

    def __init__(
        self,
        aabb: Tensor,
        expression_dim: int = 8,
        num_levels: int = 12,
        features_per_level: int = 2,
        log2_hashmap_size: int = 16,
        base_resolution: int = 16,
        max_resolution: int = 512,
        hidden_dim: int = 64,
        num_layers: int = 2,
        implementation: str = "auto",
        max_offset: float = 0.2,
        max_scale_offset: float = 1.0,
        detach_xyz: bool = True,
        region_attention: bool = True,
        appearance: bool = True,
    ) -> None:
        super().__init__(
            aabb,
            expression_dim + 1,
            num_levels,
            features_per_level,
            log2_hashmap_size,
            base_resolution,
            max_resolution,
            hidden_dim,
            num_layers,
            implementation,
            max_offset,
            max_scale_offset,
            detach_xyz,
            appearance,
        )
        self.expression_dim = expression_dim
        self.region_attention = region_attention
        if region_attention:
            # ER-NeRF sizes: audio attention MLP(in, dim, 64, 2) unbounded; eye MLP(in, 1, 16, 2) + sigmoid.
            self.expression_attention = _mlp(self.encoding.out_dim, 64, 1, expression_dim)
            self.blink_attention = _mlp(self.encoding.out_dim, 16, 1, 1)

    def forward(
        self, xyz: Tensor, expression: Tensor, blink: Tensor | float, encoded: Optional[Tensor] = None
    ) -> DeformationOutput:
        """xyz [N, 3]; expression [E] or [1, E] (one frame); blink: scalar, [1] or [1, 1].

        `encoded` may pass `encode_xyz(xyz)` computed earlier: at inference the canonical
        positions do not change between frames, so the hash-grid lookup need not be repeated.
        """
        enc_x = self.encode_xyz(xyz) if encoded is None else encoded
        n = enc_x.shape[0]
        if encoded is not None and not torch.is_grad_enabled() and self.region_attention and self._foldable():
            return self._forward_folded(enc_x, expression, blink)
        code = _as_row(expression, self.expression_dim, "expression", enc_x).expand(n, -1)
        eye = _as_row(blink, 1, "blink", enc_x).expand(n, -1)
        if self.region_attention:
            code = code * self.expression_attention(enc_x)
            eye = eye * torch.sigmoid(self.blink_attention(enc_x))
        return self.decode(torch.cat([enc_x, code, eye], dim=-1))

    def _forward_folded(self, enc_x: Tensor, expression: Tensor | float, blink: Tensor | float) -> DeformationOutput:
        """Inference: the same offsets as `forward`, with the attention weights and the position
        part of the first layer cached per Gaussian (see `_folded_static`)."""
        static, (attention, gate) = self._folded_static(enc_x, (self.expression_attention, self.blink_attention))
        code = _as_row(expression, self.expression_dim, "expression", enc_x)
        eye = _as_row(blink, 1, "blink", enc_x)
        w = self.head[0].weight
        d = self.encoding.out_dim
        w_code, w_eye = w[:, d : d + self.expression_dim], w[:, d + self.expression_dim :]
        # (code * attention_n) @ W_code^T = attention_n @ (code^T * W_code^T); the gate scales one column
        cond = attention @ (w_code * code).t() + torch.sigmoid(gate) * (eye * w_eye).t()
        return self._decode_folded(static, cond)


class PoseDeformationField(_GridDeformationField):
    """Torso motion: tri-plane(x) ++ frequency-encoded pose -> MLP -> offsets.

    The torso moves with the head pose but not rigidly (neck, shoulders); the pose is encoded
    as [p, sin(2^k p), cos(2^k p)] for k < pose_frequencies (ER-NeRF's torso net uses 4) so
    the small MLP can express non-linear dependence. pose_frequencies=0 feeds the raw pose.
    """

    def __init__(
        self,
        aabb: Tensor,
        pose_dim: int,
        num_levels: int = 12,
        features_per_level: int = 2,
        log2_hashmap_size: int = 16,
        base_resolution: int = 16,
        max_resolution: int = 512,
        hidden_dim: int = 64,
        num_layers: int = 2,
        implementation: str = "auto",
        max_offset: float = 0.2,
        max_scale_offset: float = 1.0,
        detach_xyz: bool = True,
        pose_frequencies: int = 4,
    ) -> None:
        super().__init__(
            aabb,
            pose_dim * (1 + 2 * pose_frequencies),
            num_levels,
            features_per_level,
            log2_hashmap_size,
            base_resolution,
            max_resolution,
            hidden_dim,
            num_layers,
            implementation,
            max_offset,
            max_scale_offset,
            detach_xyz,
        )
        self.pose_dim = pose_dim
        self.pose_frequencies = pose_frequencies

    def encode_pose(self, pose: Tensor) -> Tensor:
        """[P] or [1, P] -> [1, P * (1 + 2 * pose_frequencies)]."""
        p = _as_row(pose, self.pose_dim, "pose", self.aabb)
        if self.pose_frequencies == 0:
            return p
        freqs = 2.0 ** torch.arange(self.pose_frequencies, device=p.device, dtype=p.dtype)
        angles = (p.unsqueeze(-1) * freqs).reshape(1, -1)
        return torch.cat([p, torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(self, xyz: Tensor, pose: Tensor, encoded: Optional[Tensor] = None) -> DeformationOutput:
        """xyz [N, 3]; pose [P] (one frame) -> offsets. `encoded`: as in ExpressionDeformationField."""
        enc_x = self.encode_xyz(xyz) if encoded is None else encoded
        cond = self.encode_pose(pose).to(enc_x.device)
        if encoded is not None and not torch.is_grad_enabled() and self._foldable():  # inference: one [hidden] term per frame
            static, _ = self._folded_static(enc_x)
            return self._decode_folded(static, cond @ self.head[0].weight[:, self.encoding.out_dim :].t())
        return self.decode(torch.cat([enc_x, cond.expand(enc_x.shape[0], -1)], dim=-1))
