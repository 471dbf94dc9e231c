"""Tests of gstalker_ns.fields: hash tri-plane and deformation fields (CPU, fast)."""

from __future__ import annotations

import pytest
import torch

from gstalker_ns.fields import (
    DeformationOutput,
    ExpressionDeformationField,
    HashGrid2D,
    HashTriplane,
    PoseDeformationField,
    apply_deformation,
    tcnn_available,
)
from gstalker_ns.fields.hash_triplane import _interpolate

# Small grids keep the optimisation tests fast; level 0..k dense, the rest hashed.
SMALL = dict(num_levels=6, features_per_level=2, log2_hashmap_size=10, base_resolution=8, max_resolution=128)
AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are small: with 2 OpenMP threads on a busy 2-core box a test ran 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise(grid: HashGrid2D) -> None:
    with torch.no_grad():
        grid.params.normal_()


def _level(features: torch.Tensor, grid: HashGrid2D, level: int) -> torch.Tensor:
    f = grid.features_per_level
    return features[:, level * f : (level + 1) * f]


# ----------------------------------------------------------------------------------------- HashGrid2D


def test_hashgrid_shape_and_default_layout() -> None:
    grid = HashGrid2D()
    assert grid.out_dim == 12 * 2
    out = grid(torch.rand(37, 2))
    assert out.shape == (37, 24) and out.dtype == torch.float32
    assert grid.params.abs().max() <= 1e-4  # tcnn's uniform(-1e-4, 1e-4) initialisation
    layout = grid.layout
    assert layout["resolutions"][0] == 16 and abs(layout["resolutions"][-1] - 512) <= 1
    # Coarse levels dense, fine levels hashed, table capped at 2^16 rows per level.
    assert layout["hashed"][0] is False and layout["hashed"][-1] is True
    assert max(layout["sizes"]) == 2**16


def test_hashgrid_levels_have_increasing_resolution() -> None:
    grid = HashGrid2D(**SMALL)
    res = grid.layout["resolutions"]
    assert all(b > a for a, b in zip(res, res[1:]))
    # Functionally too: a step of a quarter of the finest cell leaves the coarsest level almost
    # unchanged but moves the finest one a lot.
    _randomise(grid)
    uv = torch.rand(200, 2) * 0.9 + 0.05
    step = torch.tensor([0.25 / grid.layout["scales"][-1], 0.0])
    diff = (grid(uv + step) - grid(uv)).abs()
    coarse, fine = _level(diff, grid, 0).mean(), _level(diff, grid, grid.num_levels - 1).mean()
    assert fine > 5 * coarse


def test_hashgrid_is_continuous() -> None:
    grid = HashGrid2D(**SMALL)
    _randomise(grid)
    uv = torch.rand(500, 2)
    near = (grid((uv + 1e-5).clamp(0, 1)) - grid(uv)).abs().max()
    far = (grid(torch.rand(500, 2)) - grid(uv)).abs().mean()
    assert near < 1e-2 and far > 0.3


@pytest.mark.parametrize("level", [0, 2, 5])  # dense, dense, hashed (SMALL)
def test_hashgrid_returns_vertex_values_at_vertices(level: int) -> None:
    grid = HashGrid2D(**SMALL)
    _randomise(grid)
    lay = grid.layout
    scale, res, size, offset = lay["scales"][level], lay["resolutions"][level], lay["sizes"][level], lay["offsets"][level]
    ij = torch.randint(1, int(scale), (50, 2))
    uv = (ij.double() - 0.5) / scale  # tcnn places vertex i at uv = (i - 0.5) / scale
    feats = _level(grid(uv.float()), grid, level)
    i, j = ij[:, 0], ij[:, 1]
    if lay["hashed"][level]:
        row = (i ^ ((j * 2654435761) & 0xFFFFFFFF)) % size
    else:
        row = (i + j * res) % size
    expected = grid.table[offset + row]
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=1e-4)


def test_hashgrid_indices_stay_in_their_level() -> None:
    grid = HashGrid2D(**SMALL)
    lay = grid.layout
    edges = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [-0.3, 1.7]])  # the last one is clamped
    index, weights = grid.level_indices(torch.cat([torch.rand(2000, 2), edges]))
    for level in range(grid.num_levels):
        lo, size = lay["offsets"][level], lay["sizes"][level]
        assert size <= 2 ** SMALL["log2_hashmap_size"]
        assert index[:, level].min() >= lo and index[:, level].max() < lo + size
        if lay["hashed"][level]:
            assert size == 2 ** SMALL["log2_hashmap_size"] and lay["resolutions"][level] ** 2 > size
            # the hash spreads over (nearly) the whole table
            assert index[:, level].unique().numel() > 0.5 * size
    assert index.max() < grid.table.shape[0]
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))
    assert (weights >= 0).all()


def test_hashgrid_gradients_reach_table_and_inputs() -> None:
    grid = HashGrid2D(**SMALL)
    _randomise(grid)
    uv = torch.rand(64, 2, requires_grad=True)
    grid(uv).sum().backward()
    grad = grid.params.grad.view(-1, grid.features_per_level)
    # each point spreads weight 1 per level and feature over its 4 corners
    torch.testing.assert_close(grad.sum(0), torch.full((grid.features_per_level,), 64.0 * grid.num_levels))
    assert 0 < (grad[:, 0] != 0).sum() <= 64 * grid.num_levels * 4
    assert uv.grad is not None and uv.grad.abs().sum() > 0


def test_hashgrid_input_gradient_matches_finite_differences() -> None:
    grid = HashGrid2D(**SMALL)
    _randomise(grid)
    uv = torch.rand(16, 2, dtype=torch.float32, requires_grad=True)
    w = torch.randn(16, grid.out_dim)
    (grid(uv) * w).sum().backward()
    eps = 1e-3 / grid.layout["scales"][-1]  # well inside a cell of the finest level, mostly
    for d in range(2):
        step = torch.zeros(2)
        step[d] = eps
        with torch.no_grad():
            fd = ((grid(uv + step) - grid(uv - step)) * w).sum(-1) / (2 * eps)
        close = (fd - uv.grad[:, d]).abs() <= 2e-2 * fd.abs().clamp_min(1.0)
        assert close.float().mean() >= 0.75  # the few points on a cell boundary may differ


def test_interpolate_backward_matches_gradcheck() -> None:
    grid = HashGrid2D(num_levels=3, log2_hashmap_size=6, base_resolution=4, max_resolution=32)
    index, weights = grid.level_indices(torch.rand(9, 2))
    table = torch.randn(grid.table.shape, dtype=torch.double, requires_grad=True)
    w = weights.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t, ww: _interpolate(t, index, ww), (table, w))


# --------------------------------------------------------------------------------------- HashTriplane


def test_triplane_out_dim_and_plane_dependence() -> None:
    tri = HashTriplane(**SMALL, implementation="torch")
    assert tri.out_dim == 3 * SMALL["num_levels"] * SMALL["features_per_level"]
    for g in tri.grids:
        _randomise(g)
    xyz = torch.rand(100, 3) * 0.8 + 0.1
    base = tri(xyz)
    assert base.shape == (100, tri.out_dim)
    d = tri.grids[0].out_dim
    # planes: xy, yz, xz. Moving one coordinate changes exactly the two planes that contain it.
    touched = {0: (0, 2), 1: (0, 1), 2: (1, 2)}
    for axis in range(3):
        moved = xyz.clone()
        moved[:, axis] += 0.05
        diff = (tri(moved) - base).abs()
        for plane in range(3):
            block = diff[:, plane * d : (plane + 1) * d].max()
            if plane in touched[axis]:
                assert block > 1e-2
            else:
                assert block == 0


def test_triplane_clamps_outside_unit_cube() -> None:
    tri = HashTriplane(**SMALL, implementation="torch")
    for g in tri.grids:
        _randomise(g)
    x = torch.tensor([[1.5, -0.5, 0.3]])
    torch.testing.assert_close(tri(x), tri(torch.tensor([[1.0, 0.0, 0.3]])))


def test_triplane_state_dict_holds_only_the_tables() -> None:
    tri = HashTriplane(**SMALL)
    assert sorted(tri.state_dict()) == ["grids.0.params", "grids.1.params", "grids.2.params"]
    assert not tri.uses_tcnn(torch.zeros(1, 3))  # CPU inputs: always the torch path


@pytest.mark.skipif(tcnn_available(), reason="tinycudann is installed")
def test_triplane_tcnn_requires_tinycudann() -> None:
    with pytest.raises(ImportError):
        HashTriplane(implementation="tcnn")
    with pytest.raises(ValueError):
        HashTriplane(implementation="cuda")


def test_triplane_tcnn_path_shares_the_torch_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tcnn wrapper with a stand-in for tinycudann: same output, gradients into our tables."""
    from gstalker_ns.fields import hash_triplane as ht

    tri = HashTriplane(**SMALL, implementation="auto")
    for g in tri.grids:
        _randomise(g)
    reference = HashGrid2D(**SMALL)
    extra = {"n": 0}

    class FakeEncoding(torch.nn.Module):
        def __init__(self, n_input_dims: int, encoding_config: dict, dtype: torch.dtype = torch.float32) -> None:
            super().__init__()
            assert n_input_dims == 2 and encoding_config["otype"] == "HashGrid"
            assert encoding_config["per_level_scale"] == pytest.approx(reference.level_scale)
            self.params = torch.nn.Parameter(torch.zeros(reference.params.numel() + extra["n"]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            index, weights = reference.level_indices(x)
            return _interpolate(self.params.view(-1, 2), index, weights).reshape(x.shape[0], -1)

    monkeypatch.setattr(ht, "_import_tcnn", lambda: type("tcnn", (), {"Encoding": FakeEncoding}))
    monkeypatch.setattr(tri, "uses_tcnn", lambda x: True)
    xyz = torch.rand(50, 3)
    out = tri(xyz)
    assert all(enc is not None for enc in tri._tcnn)
    torch.testing.assert_close(out, HashTriplane.forward(_torch_only(tri), xyz))
    out.sum().backward()
    assert all(g.params.grad is not None and g.params.grad.abs().sum() > 0 for g in tri.grids)
    assert sorted(tri.state_dict()) == ["grids.0.params", "grids.1.params", "grids.2.params"]

    extra["n"] = 8  # a tinycudann whose layout differs: "auto" warns and falls back to torch
    fresh = HashTriplane(**SMALL, implementation="auto")
    monkeypatch.setattr(fresh, "uses_tcnn", lambda x: True)
    with pytest.warns(UserWarning, match="torch hash grid"):
        fresh(xyz)
    assert fresh._tcnn_failed


def _torch_only(tri: HashTriplane) -> HashTriplane:
    copy = HashTriplane(**SMALL, implementation="torch")
    copy.load_state_dict(tri.state_dict())
    return copy



# ------------------------------------------------------------------------------- deformation fields


def _points(n: int = 256) -> torch.Tensor:
    return torch.rand(n, 3) * 1.6 - 0.8


def test_apply_deformation_shapes_and_identity() -> None:
    means, quats, scales = torch.randn(10, 3), torch.randn(10, 4), torch.randn(10, 3)
    m, q, s = apply_deformation(means, quats, scales, DeformationOutput.zeros(10))
    assert torch.equal(m, means) and torch.equal(q, quats) and torch.equal(s, scales)
    off = DeformationOutput(torch.ones(10, 3), torch.ones(10, 4), torch.ones(10, 3))
    m, q, s = apply_deformation(means, quats, scales, off)
    assert m.shape == (10, 3) and q.shape == (10, 4) and s.shape == (10, 3)
    torch.testing.assert_close(m, means + 1)


def test_expression_field_starts_near_zero_and_is_bounded() -> None:
    field = ExpressionDeformationField(AABB, expression_dim=16, **SMALL)
    out = field(_points(), torch.randn(16), torch.tensor(1.0))
    assert out.d_xyz.shape == (256, 3) and out.d_quat.shape == (256, 4) and out.d_scale.shape == (256, 3)
    for t in (out.d_xyz, out.d_quat, out.d_scale):
        assert t.abs().max() < 1e-4
    with torch.no_grad():
        field.head[-1].weight.normal_(0, 100.0)
    out = field(_points(), torch.randn(16), 0.5)
    assert out.d_xyz.abs().max() <= field.max_offset * 2.0 + 1e-6  # aabb side 2
    assert out.d_scale.abs().max() <= field.max_scale_offset + 1e-6
    assert field(torch.zeros(0, 3), torch.randn(1, 16), torch.tensor([0.0])).d_xyz.shape == (0, 3)


def test_expression_field_gradients_reach_code_tables_and_xyz() -> None:
    field = ExpressionDeformationField(AABB, expression_dim=16, **SMALL, detach_xyz=False)
    xyz = _points().requires_grad_()
    code = torch.randn(16, requires_grad=True)
    out = field(xyz, code, torch.tensor(0.5))
    (out.d_xyz.sum() + out.d_quat.sum() + out.d_scale.sum()).backward()
    assert code.grad is not None and code.grad.abs().sum() > 0
    for g in field.encoding.grids:
        assert g.params.grad is not None and g.params.grad.abs().sum() > 0
    assert xyz.grad is not None and xyz.grad.abs().sum() > 0

    field.detach_xyz = True  # default: no gradient through the grids, but through the offset add
    xyz.grad = None
    out = field(xyz, code, torch.tensor(0.5))
    assert torch.autograd.grad(out.d_xyz.sum(), xyz, retain_graph=True, allow_unused=True)[0] is None
    m, _, _ = apply_deformation(xyz, torch.zeros(256, 4), torch.zeros(256, 3), out)
    m.sum().backward()
    torch.testing.assert_close(xyz.grad, torch.ones_like(xyz))


def _train(field: torch.nn.Module, batches, target_fn, steps: int, lr: float = 1e-2) -> tuple[float, float]:
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    first = last = 0.0
    for step in range(steps):
        args = batches[step % len(batches)]
        loss = (field(*args).d_xyz - target_fn(*args)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if step < len(batches) else first
        last = loss.item()
    return first, last


def test_expression_field_learns_expression_and_blink_dependent_motion() -> None:
    field = ExpressionDeformationField(AABB, expression_dim=8, **SMALL)
    xyz = _points()
    codes = [torch.randn(8), torch.randn(8)]

    def target(x: torch.Tensor, code: torch.Tensor, blink: torch.Tensor) -> torch.Tensor:
        mouth = torch.stack([0 * x[:, 0], 0.05 * torch.sin(3 * x[:, 0]) * (1.0 if code is codes[0] else -1.0), 0 * x[:, 2]], -1)
        eyes = torch.stack([0 * x[:, 0], 0 * x[:, 1], -0.04 * blink * (x[:, 1] > 0).float()], -1)
        return mouth + eyes

    batches = [(xyz, c, torch.tensor(b)) for c in codes for b in (0.0, 1.0)]
    first, last = _train(field, batches, target, steps=240)
    assert last < 0.1 * first, (first, last)
    with torch.no_grad():
        a0 = field(xyz, codes[0], torch.tensor(0.0)).d_xyz
        a1 = field(xyz, codes[1], torch.tensor(0.0)).d_xyz
        b1 = field(xyz, codes[0], torch.tensor(1.0)).d_xyz
    assert (a0 - a1)[:, 1].abs().mean() > 0.02  # the expression moves the "mouth" (y)
    upper = xyz[:, 1] > 0
    assert (b1 - a0)[upper, 2].mean() < -0.02  # blink moves the upper points' z
    assert (b1 - a0)[~upper, 2].abs().mean() < 0.01


def test_expression_field_aabb_is_saved_and_settable() -> None:
    field = ExpressionDeformationField(AABB, expression_dim=4, **SMALL)
    assert "aabb" in field.state_dict()
    field.set_aabb(torch.tensor([[0.0, 0.0, 0.0], [2.0, 4.0, 8.0]]))
    torch.testing.assert_close(field.normalize(torch.tensor([[1.0, 1.0, 1.0]])), torch.tensor([[0.5, 0.25, 0.125]]))
    with pytest.raises(ValueError):
        field.set_aabb(torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 1.0]]))
    with pytest.raises(ValueError):
        field(_points(), torch.randn(5), 0.0)  # wrong expression size


def test_pose_field_depends_on_pose() -> None:
    field = PoseDeformationField(AABB, pose_dim=6, **SMALL)
    xyz = _points()
    out = field(xyz, torch.zeros(6))
    assert out.d_xyz.abs().max() < 1e-4  # starts near zero too
    with torch.no_grad():
        field.head[-1].weight.normal_(0, 0.1)
    p0, p1 = torch.zeros(6), torch.tensor([0.1, 0.0, 0.0, 0.0, 0.0, 0.05])
    d0, d0b, d1 = field(xyz, p0).d_xyz, field(xyz, p0.view(1, 6)).d_xyz, field(xyz, p1).d_xyz
    assert torch.equal(d0, d0b)
    assert (d0 - d1).abs().mean() > 1e-3


def test_pose_field_learns_pose_dependent_motion() -> None:
    field = PoseDeformationField(AABB, pose_dim=2, **SMALL)
    xyz = _points(128)
    poses = [torch.tensor([0.0, 0.0]), torch.tensor([0.3, -0.2])]
    first, last = _train(field, [(xyz, p) for p in poses], lambda x, p: 0.1 * p.sum() * torch.ones_like(x), steps=120)
    assert last < 0.1 * first, (first, last)


@pytest.mark.parametrize("kind", ["expression", "pose"])
def test_folded_inference_matches_the_plain_forward(kind: str) -> None:
    """At inference (cached encoding, no grad) the fields fold the per-Gaussian part of the first
    layer; the offsets must be those of the plain forward, for several frames, and the cache must
    follow a weight change."""
    torch.manual_seed(0)
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    small = dict(num_levels=4, log2_hashmap_size=10, max_resolution=64)
    if kind == "expression":
        field = ExpressionDeformationField(aabb, expression_dim=5, **small)
        conds = [(torch.randn(1, 5), torch.rand(1, 1)) for _ in range(3)]
    else:
        field = PoseDeformationField(aabb, pose_dim=9, **small)
        conds = [(torch.randn(9),) for _ in range(3)]
    for module in field.modules():  # non-trivial outputs
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.5)
    xyz = torch.rand(500, 3) * 2 - 1
    encoded = field.encode_xyz(xyz).detach()
    for _ in range(2):
        for cond in conds:
            with torch.enable_grad():
                plain = field(xyz, *cond)
            with torch.no_grad():
                folded = field(xyz, *cond, encoded=encoded)
            for name in ("d_xyz", "d_quat", "d_scale", "d_color", "d_opacity"):
                a, b = getattr(plain, name), getattr(folded, name)
                assert (a is None) == (b is None), name
                if a is not None:
                    assert torch.allclose(a.detach(), b, atol=1e-5, rtol=1e-4), (name, float((a.detach() - b).abs().max()))
        with torch.no_grad():
            field.head[0].weight.mul_(1.1)  # the cache must notice
