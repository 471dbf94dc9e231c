"""GSTalkerModel on CPU without the trainer: stages, audio dependence, caching, checkpoints, cap."""

from __future__ import annotations

import copy

import pytest
import torch

from gstalker_ns.config import gstalker_trainer_config
from gstalker_ns.strategy import CappedDefaultStrategy, growth_budget_mask
from tests.fixtures import make_tiny_folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    torch.manual_seed(0)
    root = make_tiny_folder(tmp_path_factory.mktemp("model") / "p", num_frames=22, size=32)
    config = gstalker_trainer_config()
    config.pipeline.datamanager.data = root
    config.pipeline.datamanager.dataparser.num_seed_points = 800
    model = config.pipeline.model
    model.init_gaussians, model.sh_degree, model.num_downscales = 300, 0, 0
    model.coarse_steps, model.grid_levels, model.grid_log2_hashmap_size = 2, 4, 10
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    from nerfstudio.engine.optimizers import Optimizers

    return pipe, Optimizers(config.optimizers, pipe.get_param_groups())


def _train_step(pipe, optimizers, step):
    model = pipe.model
    model.train()
    model.step_cb(optimizers, step)
    optimizers.zero_grad_all()
    _, losses, _ = pipe.get_train_loss_dict(step)
    sum(losses.values()).backward()
    return losses


def _camera(pipe, frame):
    camera = copy.deepcopy(pipe.datamanager.eval_dataset.cameras[0:1])
    camera.metadata = {"frame_idx": torch.tensor([[frame]])}
    return camera


def _moving_head(model):
    """Stage 2 on, an offset layer that moves Gaussians visibly, inference mode."""
    model.deformation_enabled.fill_(True)
    with torch.no_grad():
        model.head_field.head[-1].weight.normal_(std=0.5)
    model.eval()
    return model


def test_stages_and_gradients(pipeline):
    pipe, optimizers = pipeline
    model = pipe.model
    losses = _train_step(pipe, optimizers, 0)
    assert not bool(model.deformation_enabled) and "offset_reg" not in losses
    assert model.gauss_params["means"].grad is not None
    assert all(p.grad is None for p in model.head_field.parameters())  # stage 1: fields unused
    losses = _train_step(pipe, optimizers, 2)
    assert bool(model.deformation_enabled) and "offset_reg" in losses and "mouth_l1" in losses
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head_field.parameters())
    assert not any(p.requires_grad for p in model.audio_to_expression.parameters())  # closed-form, fitted once


def test_audio_drives_the_render_and_cache_matches(pipeline):
    pipe, optimizers = pipeline
    model = pipe.model
    model.deformation_enabled.fill_(True)
    with torch.no_grad():  # untrained: make the offset layer and the predicted expression non-trivial
        model.head_field.head[-1].weight.normal_(std=0.5)
        model.audio_to_expression.weight.normal_(std=1.0)
        model._predicted_cache = None
    model.eval()
    with torch.no_grad():
        a = model.get_outputs(_camera(pipe, 3))["rgb"]
        a_cached = model.get_outputs(_camera(pipe, 3))["rgb"]  # second call uses cached encodings
        b = model.get_outputs(_camera(pipe, 17))["rgb"]
    with torch.enable_grad():
        a_uncached = model.get_outputs(_camera(pipe, 3))["rgb"].detach()
    assert torch.allclose(a, a_cached) and torch.allclose(a, a_uncached, atol=1e-6)
    assert (a - b).abs().max() > 1e-3, "different audio frames must change the render"
    # viewer cameras carry no frame index: the model uses viewer_frame_idx
    camera = _camera(pipe, 0)
    camera.metadata = None
    model.viewer_frame_idx = 17
    with torch.no_grad():
        assert torch.allclose(model.get_outputs(camera)["rgb"], b)


def test_product_render_path_matches_get_outputs_and_mouth_override_applies(pipeline):
    """get_outputs_for_camera reads frame and size on the host (no GPU sync) and must render what
    get_outputs renders; a hand-set expression (the viewer's mouth control) replaces the audio's
    code at inference only, and a wider opening level moves the mouth further."""
    pipe, _ = pipeline
    model = _moving_head(pipe.model)
    with torch.no_grad():
        direct = model.get_outputs(_camera(pipe, 5))["rgb"]
        product = model.get_outputs_for_camera(_camera(pipe, 5))["rgb"]
        assert torch.equal(direct, product)
        with model.colour_only():  # file renders skip the depth channel; the colour is the same
            colour = model.get_outputs_for_camera(_camera(pipe, 5))
        assert colour["depth"] is None and torch.allclose(colour["rgb"], direct, atol=1e-6)
        assert model.get_outputs_for_camera(_camera(pipe, 5))["depth"] is not None  # restored
        closed, opened = model.expression_for_opening(0.0), model.expression_for_opening(1.0)
        u = model.expression_opening
        assert float(opened[0] @ u) > float(closed[0] @ u)
        model.expression_override = opened
        try:
            a = model.get_outputs_for_camera(_camera(pipe, 5))["rgb"]
            b = model.get_outputs_for_camera(_camera(pipe, 16))["rgb"]
            assert torch.equal(a, b), "with the mouth set by hand, the audio frame must not matter for the head"
            model.expression_override = closed
            c = model.get_outputs_for_camera(_camera(pipe, 5))["rgb"]
            assert (a - c).abs().max() > 1e-4
            model.train()  # training always sees the tracked code, whatever the viewer set
            assert torch.allclose(model.expression_code(5), model.expression_table[5:6], atol=6 * model.config.expression_noise)
            assert not torch.equal(model.expression_code(5), closed)
        finally:
            model.expression_override = None
            model.eval()


def test_batched_render_matches_one_frame_at_a_time(pipeline):
    """render_batch (several frames, each with its own deformed Gaussians, in one rasterization)
    must give each frame's single-frame image."""
    from nerfstudio.cameras.cameras import Cameras

    pipe, _ = pipeline
    model = _moving_head(pipe.model)
    frames = [2, 9, 16]
    singles = [_camera(pipe, f) for f in frames]
    stacked = Cameras(
        camera_to_worlds=torch.cat([c.camera_to_worlds for c in singles]),
        fx=torch.cat([c.fx for c in singles]), fy=torch.cat([c.fy for c in singles]),
        cx=torch.cat([c.cx for c in singles]), cy=torch.cat([c.cy for c in singles]),
        width=torch.cat([c.width for c in singles]), height=torch.cat([c.height for c in singles]),
        metadata={"frame_idx": torch.tensor([[f] for f in frames])},
    )  # fmt: skip
    with torch.no_grad(), model.colour_only():
        one_by_one = torch.stack([model.get_outputs_for_camera(c)["rgb"] for c in singles])
        batch = model.render_batch(stacked)
    assert batch.shape == one_by_one.shape
    assert torch.allclose(batch, one_by_one, atol=1e-5)
    assert (batch[0] - batch[2]).abs().max() > 1e-4  # the frames really differ


def test_projection_program_renders_what_the_eager_path_renders(pipeline, monkeypatch):
    """The inference split (deform + project, replayed from static buffers; raster eagerly) must
    give the images of the one-call path, a new frame must change them, and a model change must
    retire the program. On the CPU the program runs eagerly on its static buffers (the CUDA
    capture itself is checked on the GPU by benchmarks/render_speed.py)."""
    from gstalker_ns.splatting.graphed import CapturedCall

    pipe, _ = pipeline
    model = _moving_head(pipe.model)
    frames = [3, 3, 11, 17]
    with torch.no_grad():
        eager = [model.get_outputs_for_camera(_camera(pipe, f)) for f in frames]
        monkeypatch.setattr(model, "_graphs_allowed", lambda: True)
        split = [model.get_outputs_for_camera(_camera(pipe, f)) for f in frames]
        programs = model.__dict__.get("_programs", {})
        assert 1 in programs and isinstance(programs[1][1], CapturedCall), "captured on the second call"
        for a, b in zip(eager, split):
            assert torch.allclose(a["rgb"], b["rgb"], atol=1e-5)
            assert torch.allclose(a["depth"], b["depth"], atol=1e-4)
        assert (split[2]["rgb"] - split[3]["rgb"]).abs().max() > 1e-4, "the static inputs must take each frame's drive"
        key = programs[1][0]
        model.head_field.head[-1].weight.mul_(0.5)  # an in-place change (as an optimizer step)
        model.get_outputs_for_camera(_camera(pipe, 5))
        assert 1 not in programs or programs[1][0] != key, "a changed model must not replay the old program"
        changed = model.get_outputs_for_camera(_camera(pipe, 5))["rgb"]
        monkeypatch.undo()
        assert torch.allclose(changed, model.get_outputs_for_camera(_camera(pipe, 5))["rgb"], atol=1e-5)
        monkeypatch.setattr(model, "_graphs_allowed", lambda: True)
        model.get_outputs_for_camera(_camera(pipe, 5))
        assert 1 in model.__dict__.get("_programs", {})
        model.load_state_dict(model.state_dict())  # a reload drops programs and caches built on the old weights
        assert "_programs" not in model.__dict__ and "_encoding_cache" not in model.__dict__


def test_stage_one_draws_no_random_numbers_for_the_drive(pipeline):
    """In stage 1 the fields are off, so the training code's noise must not be drawn: a seeded run's
    random stream (densification, sampling) would shift, and the CPU demo's held-out mouth number
    moved from 0.72 to 0.49 when it did."""
    pipe, _ = pipeline
    model = pipe.model
    saved = model.deformation_enabled.clone()
    try:
        model.train()
        model.deformation_enabled.fill_(False)
        state = torch.get_rng_state()
        model._frame_gaussians(torch.eye(4)[None, :3, :4], 3)
        assert torch.equal(torch.get_rng_state(), state)
        model.deformation_enabled.fill_(True)
        model._frame_gaussians(torch.eye(4)[None, :3, :4], 3)
        assert not torch.equal(torch.get_rng_state(), state)  # stage 2 draws the code's noise
    finally:
        model.deformation_enabled.copy_(saved)
        model.eval()


def test_set_drive_checks_feature_shape(pipeline):
    pipe, _ = pipeline
    model = pipe.model
    with pytest.raises(ValueError, match="do not match"):
        model.set_drive(torch.zeros(10, 16, 3))
    original = model.audio_table.clone()
    model.set_drive(torch.randn(30, *original.shape[1:]))
    assert len(model.audio_table) == 30 and len(model.blink_table) == 30
    model.set_drive(original)


def test_state_dict_round_trip_with_other_gaussian_count(pipeline):
    pipe, _ = pipeline
    model = pipe.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    other = type(model)(config=model.config, scene_box=model.scene_box, num_train_data=model.num_train_data, **model.kwargs)
    keep = 100
    for name, param in list(other.gauss_params.items()):
        other.gauss_params[name] = torch.nn.Parameter(param.data[:keep].clone())
    other.gaussian_part = other.gaussian_part[:keep].clone()
    other.load_state_dict(state)
    assert other.num_points == model.num_points
    assert torch.equal(other.gaussian_part, model.gaussian_part)
    assert other.audio_extractor == {"kind": "test", "dim": 8, "window": 16}


def test_growth_budget_keeps_highest_scores():
    candidates = torch.tensor([True, True, False, True, True])
    scores = torch.tensor([0.1, 0.9, 5.0, 0.5, 0.7])
    keep = growth_budget_mask(candidates, scores, torch.ones(5), budget=2)
    assert keep.tolist() == [False, True, False, False, True]
    assert growth_budget_mask(candidates, scores, torch.ones(5), budget=0).sum() == 0
    assert growth_budget_mask(candidates, scores, torch.ones(5), budget=10).tolist() == candidates.tolist()


def test_capped_strategy_never_exceeds_the_cap():
    n, cap = 50, 60
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.randn(n, 3)),
            "scales": torch.nn.Parameter(torch.full((n, 3), -5.0)),
            "quats": torch.nn.Parameter(torch.randn(n, 4)),
            "opacities": torch.nn.Parameter(torch.zeros(n)),
        }
    )
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = CappedDefaultStrategy(max_gaussians=cap, refine_start_iter=0, refine_every=1, reset_every=10**6)
    state = strategy.initialize_state()
    state["grad2d"] = torch.ones(n)  # every Gaussian wants to grow
    state["count"] = torch.ones(n)
    state["part"] = torch.arange(n) % 2
    n_dupli, n_split = strategy._grow_gs(params, optimizers, state, step=1)
    assert len(params["means"]) == cap and n_dupli + n_split == cap - n
    assert len(state["part"]) == cap  # per-Gaussian state follows the growth
