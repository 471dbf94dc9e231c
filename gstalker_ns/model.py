"""GSTalker as a nerfstudio model: splatfacto's Gaussians, deformed per frame by audio and pose.

Two kinds of Gaussians live in one set, told apart by `gaussian_part` (0 head, 1 torso):
- head Gaussians: canonical (static) positions in the head frame, offset per frame by the
  expression-driven deformation field (hash-grid tri-plane features + expression code + blink).
  The expression code is a bottleneck between audio and motion (gstalker_ns.expression): in
  training it is the frame's tracked mouth shape (plus noise); for held-out frames and any new
  audio it is predicted from the audio by a read-out fitted on the training frames, temporally
  smoothed. The field thus never sees frame identity through the audio, and the audio path is a
  small supervised regressor whose generalisation is measured on validation slices;
- torso Gaussians: offset by the pose-conditioned field, because the torso does not follow the
  head rigidly while the head frame is our world.
Training runs in two stages: `coarse_steps` of static Gaussians (stage 1), then the deformation
fields switch on (stage 2). The render is composited over the clip's background plate.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Literal, Optional, Tuple, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.profiler import record_function
from torch.nn import Parameter

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    SplatfactoModelConfig,
    get_viewmat,
    num_sh_bases,
    random_quat_tensor,
)
from nerfstudio.utils.rich_utils import CONSOLE

from gstalker_ns import _compat
from gstalker_ns.data.dataparser import pose_codes
from gstalker_ns.data.layout import LABEL_LIPS
from gstalker_ns.data.seed_points import PART_HEAD, PART_TORSO
from gstalker_ns.expression import ExpressionBasis, fit_audio_to_expression, opening_code
from gstalker_ns.fields import DeformationOutput, ExpressionDeformationField, PoseDeformationField, apply_deformation
from gstalker_ns.splatting import backend_for, rasterize
from gstalker_ns.splatting.batched import (
    ProjectedFrames,
    project_frames,
    projected_difference,
    raster_projected,
    viewmats_from_poses,
)
from gstalker_ns.splatting.graphed import CaptureFailed, CapturedCall
from gstalker_ns.strategy import CappedDefaultStrategy

_compat.allow_nerfstudio_checkpoints()  # checkpoint configs import this module before torch.load

GAUSSIAN_PARAM_NAMES = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")


@dataclass
class GSTalkerModelConfig(SplatfactoModelConfig):
    """GSTalker: audio-driven deformable Gaussians for talking portraits."""

    _target: Type = field(default_factory=lambda: GSTalkerModel)
    # --- Gaussians
    init_gaussians: int = 30000
    """Initial Gaussians, sampled from the dataparser's seed points (head and torso)."""
    max_gaussians: int = 60000
    """Hard cap on the Gaussian count during densification. 60k (was 200k): on dfrf_french the
    held-out mouth-opening correlation and PSNR held (0.90 -> 0.90, 26.98 -> 27.24 dB) with 3.4x
    fewer Gaussians; without the CUDA graph a frame took 5.2 ms instead of 7.3 (benchmarks/RESULTS.md)."""
    pause_refine_after_reset: int = 100
    """Steps without refinement after each opacity reset (a fixed number, not the frame count).
    Refinement also waits this long after step 0."""
    num_downscales: int = 1
    """Train at 1/2^d resolution at first (doubles every resolution_schedule steps)."""
    resolution_schedule: int = 1000
    sh_degree: int = 3
    warmup_length: int = 500
    refine_every: int = 100
    stop_split_at: int = 7000
    densify_grad_thresh: float = 0.0004
    # --- Stages
    coarse_steps: int = 2000
    """Stage 1: static Gaussians only. The deformation fields switch on after this many steps."""
    # --- Expression bottleneck and deformation fields
    expression_components: int = 8
    """Most PCA components of the tracked mouth/jaw landmarks in the expression code."""
    expression_noise: float = 0.2
    """Std of the noise added to the tracked expression code in training (codes are whitened, so
    in units of each component's own spread), so the field tolerates the audio predictor's
    errors. It shrinks the learnt response by 1/(1 + noise^2): 4% at 0.2."""
    eval_expression: Literal["audio", "tracked"] = "audio"
    """What drives the mouth outside training: `audio` (the code predicted from the audio, as for
    any new speech) or `tracked` (the clip's own tracked code: the renderer's upper bound)."""
    grid_levels: int = 12
    grid_features_per_level: int = 2
    grid_log2_hashmap_size: int = 16
    grid_base_resolution: int = 16
    grid_max_resolution: int = 512
    field_hidden_dim: int = 64
    field_num_layers: int = 2
    grid_implementation: str = "auto"
    """Hash-grid backend: auto (tinycudann on CUDA when importable, else torch), torch or tcnn."""
    torso_field: bool = True
    """Deform torso Gaussians with the pose-conditioned field."""
    appearance_offsets: bool = True
    """The head field also changes colour and opacity with the expression (teeth, mouth cavity)."""
    # --- Losses
    mouth_loss_weight: float = 1.0
    """Extra L1 weight on the lips and mouth interior."""
    eye_loss_weight: float = 1.0
    """Extra L1 weight inside the tracked eye boxes (blinks are small and rare otherwise)."""
    offset_reg_weight: float = 0.01
    """Weight of the regulariser that keeps deformation offsets small (relative to head radius)."""
    # --- Rendering
    rasterizer: str = "auto"
    """auto (gsplat on CUDA, the pure-PyTorch rasterizer elsewhere), gsplat or torch."""
    use_absgrad: bool = True
    """Densify on absolute 2D gradients (gsplat path); the torch path approximates them."""
    inference_graph: bool = True
    """At inference on a GPU, replay each frame's deformation and projection from a CUDA graph
    (captured once the model stops changing): one launch instead of hundreds of small kernels."""


def mouth_mask(labels: torch.Tensor) -> torch.Tensor:
    """Lips and mouth interior, [H, W, 1] bool, from a label map."""
    return labels >= LABEL_LIPS


def _scatter(into: DeformationOutput, indices: torch.Tensor, part: DeformationOutput) -> DeformationOutput:
    """Place one part's offsets at its Gaussians' indices (differentiable, out of place)."""
    def put(base: Optional[torch.Tensor], values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return base if values is None else base.index_put((indices,), values)

    return DeformationOutput(
        d_xyz=into.d_xyz.index_put((indices,), part.d_xyz),
        d_quat=into.d_quat.index_put((indices,), part.d_quat),
        d_scale=into.d_scale.index_put((indices,), part.d_scale),
        d_color=put(into.d_color, part.d_color),
        d_opacity=put(into.d_opacity, part.d_opacity),
    )


class GSTalkerModel(SplatfactoModel):
    """Splatfacto subclass with audio-driven head and pose-driven torso deformation."""

    config: GSTalkerModelConfig

    # ------------------------------------------------------------------ construction
    def populate_modules(self) -> None:
        metadata = self.kwargs.get("metadata") or {}
        self.head_radius = float(metadata.get("head_radius", 1.0))
        xyz, rgb, part = self._initial_points(metadata)
        self._build_gaussians(xyz, rgb)
        self.register_buffer("gaussian_part", part.to(torch.uint8))
        self._build_drive_tables(metadata)
        self._build_expression(metadata)
        self._build_fields(xyz)
        self._build_background(metadata)
        self._build_metrics()
        self.strategy = CappedDefaultStrategy(
            prune_opa=self.config.cull_alpha_thresh,
            grow_grad2d=self.config.densify_grad_thresh,
            grow_scale3d=self.config.densify_size_thresh,
            grow_scale2d=self.config.split_screen_size,
            prune_scale3d=self.config.cull_scale_thresh,
            prune_scale2d=self.config.cull_screen_size,
            refine_scale2d_stop_iter=self.config.stop_screen_size_at,
            refine_start_iter=self.config.warmup_length,
            refine_stop_iter=self.config.stop_split_at,
            reset_every=self.config.reset_alpha_every * self.config.refine_every,
            refine_every=self.config.refine_every,
            pause_refine_after_reset=self.config.pause_refine_after_reset,
            absgrad=self.config.use_absgrad,
            revised_opacity=False,
            verbose=False,
            max_gaussians=self.config.max_gaussians,
        )
        # The part labels ride in the strategy state so duplicate/split/prune keep them aligned.
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.head_radius)
        self.strategy_state["part"] = self.gaussian_part
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.step = 0
        self.crop_box = None
        self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])
        self.viewer_frame_idx = 0
        self._last_deformation: Optional[DeformationOutput] = None
        from gstalker_ns.viewer import AudioPanel  # nerfstudio's viewer finds it (a ViewerControl) and sets it up

        self.audio_panel = AudioPanel(self)

    def _initial_points(self, metadata: Dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample the initial Gaussians from the seed points (or a random head-sized ball)."""
        generator = torch.Generator().manual_seed(0)
        n = self.config.init_gaussians
        if self.seed_points is not None and len(self.seed_points[0]) > 0:
            xyz_all = self.seed_points[0].float()
            rgb_all = self.seed_points[1].float() / 255.0
            part_all = metadata.get("points3D_part")
            part_all = torch.zeros(len(xyz_all), dtype=torch.uint8) if part_all is None else part_all
            take = torch.randperm(len(xyz_all), generator=generator)[: min(n, len(xyz_all))]
            return xyz_all[take].cpu(), rgb_all[take].cpu(), part_all[take].cpu()
        direction = torch.randn(n, 3, generator=generator)
        radius = torch.rand(n, 1, generator=generator) ** (1 / 3)
        xyz = direction / direction.norm(dim=-1, keepdim=True) * radius * self.head_radius
        return xyz, torch.rand(n, 3, generator=generator), torch.full((n,), PART_HEAD, dtype=torch.uint8)

    def _build_gaussians(self, xyz: torch.Tensor, rgb: torch.Tensor) -> None:
        n = len(xyz)
        distances, _ = self.k_nearest_sklearn(xyz, 3)
        avg_dist = torch.from_numpy(distances).mean(dim=-1, keepdim=True).clamp_min(1e-4 * self.head_radius)
        dim_sh = num_sh_bases(self.config.sh_degree)
        shs = torch.zeros(n, dim_sh, 3)
        if self.config.sh_degree > 0:
            shs[:, 0, :] = RGB2SH(rgb)
        else:
            shs[:, 0, :] = torch.logit(rgb.clamp(1e-4, 1 - 1e-4))
        self.gauss_params = torch.nn.ParameterDict(
            {
                "means": Parameter(xyz.clone()),
                "scales": Parameter(torch.log(avg_dist.repeat(1, 3))),
                "quats": Parameter(random_quat_tensor(n)),
                "features_dc": Parameter(shs[:, 0, :].contiguous()),
                "features_rest": Parameter(shs[:, 1:, :].contiguous()),
                "opacities": Parameter(torch.logit(0.5 * torch.ones(n, 1))),
            }
        )
        from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

        self.camera_optimizer = CameraOptimizerConfig(mode="off").setup(num_cameras=self.num_train_data, device="cpu")

    def _build_drive_tables(self, metadata: Dict) -> None:
        """The clip's audio feature table and blink track (replaced when driving with new audio)."""
        table = metadata.get("audio_features")
        if table is None:
            table = torch.zeros(1, 16, 80)
        table = torch.as_tensor(table, dtype=torch.float32)
        blink = torch.as_tensor(metadata.get("blink", torch.zeros(len(table))), dtype=torch.float32)
        # Non-persistent: the tables come from the dataset (or new audio), not the checkpoint.
        self.register_buffer("audio_table", table, persistent=False)
        self.register_buffer("blink_table", blink, persistent=False)
        extractor = json.dumps(metadata.get("audio_extractor") or {}, sort_keys=True)
        self.register_buffer("audio_extractor_json", torch.tensor(list(extractor.encode("utf-8")), dtype=torch.uint8))
        pose_mean = torch.as_tensor(metadata.get("pose_code_mean", torch.zeros(9)), dtype=torch.float32)
        pose_std = torch.as_tensor(metadata.get("pose_code_std", torch.ones(9)), dtype=torch.float32)
        self.register_buffer("pose_code_mean", pose_mean)
        self.register_buffer("pose_code_std", pose_std)
        self.register_buffer("deformation_enabled", torch.tensor(False))
        boxes = metadata.get("eye_boxes")
        boxes = torch.full((len(table), 2, 4), -1.0) if boxes is None else torch.as_tensor(boxes, dtype=torch.float32)
        self.register_buffer("eye_box_table", boxes, persistent=False)

    def _build_expression(self, metadata: Dict) -> None:
        """The expression basis (PCA of the training frames' mouth points), the tracked codes of
        every frame and the audio -> expression read-out, fitted here on the training rows only."""
        points = metadata.get("expression_points")
        rows_all = torch.as_tensor(metadata.get("train_rows", torch.arange(len(self.audio_table))), dtype=torch.long)
        inner = tuple(metadata.get("expression_inner_lips", (0, 1)))
        if points is None:  # no dataset (e.g. a bare model for tests): a neutral one-point track
            points = torch.zeros(len(self.audio_table), 2, 3)
            points[:, 1, 1] = torch.linspace(0.0, 1e-3, len(self.audio_table))
        points_np = torch.as_tensor(points, dtype=torch.float32).numpy()
        finite = np.isfinite(points_np).all(axis=(1, 2))
        rows = [int(r) for r in rows_all.tolist() if 0 <= r < len(points_np) and finite[r]]
        basis = ExpressionBasis.fit(points_np, rows, self.config.expression_components, min_share=1e-4)
        codes = torch.from_numpy(basis.encode(np.nan_to_num(points_np, nan=0.0)))
        codes[torch.from_numpy(~finite)] = 0.0  # frames without landmarks: the mean expression
        opening = torch.from_numpy(basis.opening_vector(inner)).float()
        predictor, report = fit_audio_to_expression(self.audio_table, codes, rows, opening)
        self.register_buffer("expression_table", codes, persistent=False)
        self.register_buffer("expression_opening", opening)
        self.register_buffer("expression_mean", torch.from_numpy(basis.mean).float())
        self.register_buffer("expression_components", torch.from_numpy(basis.components).float())
        self.register_buffer("expression_scale", torch.tensor(basis.scale, dtype=torch.float32))
        self.audio_to_expression = predictor
        self.expression_fit_report = report.to_json()
        self._predicted_cache = None
        CONSOLE.log(
            f"[gstalker] audio -> expression ({basis.dim} components): validation mouth-opening corr "
            f"{report.opening_corr:.3f} on slices of {len(rows)} training frames (ridge {report.lam:g}, smoothing "
            f"{report.sigma:g} frames)"
        )

    def _build_fields(self, xyz: torch.Tensor) -> None:
        def box(points: torch.Tensor) -> torch.Tensor:
            """Bounding box of the part's seed points with a margin: each field's grids and offset
            bound then fit its own part (the head is much smaller than the whole bust)."""
            points = points if len(points) > 0 else xyz
            margin = 0.2 * self.head_radius
            return torch.stack([points.min(dim=0).values - margin, points.max(dim=0).values + margin])

        part = self.gaussian_part
        grid = dict(
            num_levels=self.config.grid_levels,
            features_per_level=self.config.grid_features_per_level,
            log2_hashmap_size=self.config.grid_log2_hashmap_size,
            base_resolution=self.config.grid_base_resolution,
            max_resolution=self.config.grid_max_resolution,
            hidden_dim=self.config.field_hidden_dim,
            num_layers=self.config.field_num_layers,
            implementation=self.config.grid_implementation,
        )
        expression_dim = int(self.expression_table.shape[1])
        self.head_field = ExpressionDeformationField(
            box(xyz[part == PART_HEAD]), expression_dim=expression_dim, appearance=self.config.appearance_offsets, **grid
        )
        self.torso_field = (
            PoseDeformationField(box(xyz[part == PART_TORSO]), pose_dim=9, **grid) if self.config.torso_field else None
        )

    def _build_background(self, metadata: Dict) -> None:
        path = metadata.get("background_path")
        if path:
            from PIL import Image

            image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
            background = torch.from_numpy(image)
        else:
            background = torch.zeros(1, 1, 3)
        self.register_buffer("background_image", background)

    def _build_metrics(self) -> None:
        from pytorch_msssim import SSIM
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.lpips = None
        if _compat.local_lpips_weights() is not None:  # never download at model construction
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self.lpips = LearnedPerceptualImagePatchSimilarity(normalize=True)

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        """Resize the Gaussian-count- and size-dependent tensors to the checkpoint's, then load."""
        if any(key.startswith("audio_encoder.") for key in dict):
            from gstalker_ns.checkpoint import CheckpointError

            raise CheckpointError(
                "this checkpoint was trained by an older gstalker-ns (audio-code conditioning, before the expression "
                "bottleneck); retrain it with `ns-train gstalker --data ...`"
            )
        if "expression_scale" in dict and dict["expression_scale"].ndim == 0:
            from gstalker_ns.checkpoint import CheckpointError

            raise CheckpointError(
                "this checkpoint was trained by an older gstalker-ns (expression codes scaled by one factor, before "
                "whitening); retrain it with `ns-train gstalker --data ...`"
            )
        count = dict["gauss_params.means"].shape[0]
        for param in self.gauss_params.values():
            # Resize in place: the optimizers (built before a resumed run loads its checkpoint)
            # keep pointing at these same Parameter objects, so Adam's loaded state and the
            # densification ops stay attached to the live Gaussians.
            param.data = torch.zeros((count,) + param.shape[1:], device=param.device, dtype=param.dtype)
        for name in ("gaussian_part", "background_image", "audio_extractor_json"):
            if name in dict:
                setattr(self, name, torch.zeros_like(dict[name], device=self.device))
        for name, buffer in list(self.named_buffers()):  # the read-out and basis: the checkpoint's shapes
            if name.startswith(("audio_to_expression.", "expression_")) and name in dict and dict[name].shape != buffer.shape:
                owner, attr = self.get_submodule(name.rpartition(".")[0]) if "." in name else self, name.rpartition(".")[2]
                setattr(owner, attr, torch.zeros_like(dict[name], device=self.device))
        self._forget_derived()
        self.strategy_state["part"] = self.gaussian_part
        result = super(SplatfactoModel, self).load_state_dict(dict, **kwargs)
        self.strategy_state["part"] = self.gaussian_part
        self.step = 30000
        return result

    def _forget_derived(self) -> None:
        """Drop everything computed from the weights (caches, captured graphs). Their keys hold
        data pointers and version counters, which a reloaded tensor can repeat by chance."""
        self._predicted_cache = None
        for name in ("_encoding_cache", "_part_cache", "_background_cache", "_deforming_cache", "_programs", "_program_seen"):
            self.__dict__.pop(name, None)
        for module in self.modules():
            module.__dict__.pop("_fold_cache", None)

    @property
    def audio_extractor(self) -> Dict:
        """The audio feature extractor this model was trained with (as recorded in the checkpoint)."""
        raw = bytes(self.audio_extractor_json.cpu().tolist()).decode("utf-8")
        return json.loads(raw) if raw else {}

    def set_drive(self, audio_table: torch.Tensor, blink: Optional[torch.Tensor] = None) -> None:
        """Drive the avatar with another clip's feature table ([F, W, D]) and blink track ([F])."""
        table = torch.as_tensor(audio_table, dtype=torch.float32, device=self.device)
        if table.shape[1:] != self.audio_table.shape[1:]:
            raise ValueError(
                f"audio feature windows of shape {tuple(table.shape[1:])} do not match the model's "
                f"{tuple(self.audio_table.shape[1:])}; extract them with the checkpoint's extractor"
            )
        self.audio_table = table
        self.blink_table = (
            torch.zeros(len(table), device=self.device) if blink is None else torch.as_tensor(blink).float().to(self.device)
        )

    # ------------------------------------------------------------------ training hooks
    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.step_cb, args=[training_callback_attributes.optimizers]),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.step_post_backward),
        ]

    def step_cb(self, optimizers: Optimizers, step: int) -> None:
        self.step = step
        self.optimizers = optimizers.optimizers
        if step >= self.config.coarse_steps and not self._deforming():
            self.deformation_enabled.fill_(True)
            CONSOLE.log(f"[gstalker] step {step}: stage 2, audio/pose deformation fields on")

    def step_post_backward(self, step: int) -> None:
        if getattr(self, "info", None) is None or self.info["means2d"].grad is None:
            return
        # model.to(device) replaced the buffer: hand the strategy the current one.
        self.strategy_state["part"] = self.gaussian_part
        self.strategy.step_post_backward(
            params=self.gauss_params,
            optimizers={name: self.optimizers[name] for name in GAUSSIAN_PARAM_NAMES},
            state=self.strategy_state,
            step=step,
            info=self.info,
            packed=False,
        )
        self.gaussian_part = self.strategy_state["part"]

    def get_gaussian_param_groups(self) -> Dict[str, List[Parameter]]:
        return {name: [self.gauss_params[name]] for name in GAUSSIAN_PARAM_NAMES}

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = self.get_gaussian_param_groups()
        deformation = list(self.head_field.parameters())
        if self.torso_field is not None:
            deformation += list(self.torso_field.parameters())
        groups["deformation"] = deformation
        return groups

    # ------------------------------------------------------------------ rendering
    def _frame_index(self, camera: Cameras) -> int:
        if camera.metadata is not None and "frame_idx" in camera.metadata:
            index = int(torch.as_tensor(camera.metadata["frame_idx"]).reshape(-1)[0].item())
        else:
            index = int(self.viewer_frame_idx)
        return self._clamp_frame(index)

    def _clamp_frame(self, index: int) -> int:
        return max(0, min(int(index), len(self.audio_table) - 1))

    def _deforming(self) -> bool:
        """Whether stage 2 is on, as a Python bool: the buffer lives on the GPU, so it is read once
        per change of the buffer (its version counter) rather than synchronising every frame."""
        flag = self.deformation_enabled
        key = (flag.data_ptr(), flag._version)
        if getattr(self, "_deforming_cache", (None,))[0] != key:
            self._deforming_cache = (key, bool(flag))
        return self._deforming_cache[1]

    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, torch.Tensor]:
        """Render one camera (gstalker-render, gstalker-eval, the viewer).

        The frame index and the image size are read while the camera is still on the host, and
        its pose and intrinsics travel to the device as one small non-blocking copy, instead of
        `camera.to(device)` (one blocking copy, so one GPU synchronisation, per camera field).
        """
        assert camera is not None, "must provide camera to gaussian model"
        self.set_crop(obb_box)
        if self._get_downscale_factor() != 1 or camera.shape[0] != 1:
            return self.get_outputs(camera.to(self.device))
        pose, K, W, H = self._cameras_on_device(camera)
        return self._render_view(pose, K, W, H, self._frame_index(camera))

    def _cameras_on_device(self, cameras: Cameras) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
        """(camera-to-world [B, 3, 4], K [B, 3, 3]) on the device, moved as one small
        non-blocking copy, and the image size (width, height) read on the host."""
        batch = cameras.shape[0]
        W, H = int(cameras.width.reshape(-1)[0]), int(cameras.height.reshape(-1)[0])
        pose = cameras.camera_to_worlds.reshape(batch, 3, 4)
        K = cameras.get_intrinsics_matrices().reshape(batch, 3, 3)
        packed = self._to_device(torch.cat([pose.reshape(-1), K.reshape(-1)]).float())
        return packed[: 12 * batch].view(batch, 3, 4), packed[12 * batch :].view(batch, 3, 3), W, H

    @contextlib.contextmanager
    def colour_only(self) -> Iterator[None]:
        """Renders inside skip the depth channel: gstalker-render and gstalker-eval use only the
        colour, and the rasterizer then blends three channels instead of four."""
        saved = getattr(self, "_depth_at_inference", True)
        self._depth_at_inference = False
        try:
            yield
        finally:
            self._depth_at_inference = saved

    def _to_device(self, values: torch.Tensor) -> torch.Tensor:
        """A small host tensor on the model's device without a synchronisation: copied through
        one of a few pinned staging buffers (a slot is reused only after its copy has finished)."""
        device = self.device
        if values.device == device or device.type != "cuda":
            return values.to(device)
        ring = getattr(self, "_staging", None)
        if ring is None or ring[0][0].numel() != values.numel():
            ring = [(torch.empty(values.numel(), pin_memory=True), None) for _ in range(4)]
            self._staging, self._staging_next = ring, 0
        slot = self._staging_next
        buffer, done = ring[slot]
        if done is not None:
            done.synchronize()  # only waits if the GPU is four frames behind
        buffer.copy_(values)
        out = buffer.to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        ring[slot] = (buffer, event)
        self._staging_next = (slot + 1) % len(ring)
        return out

    def deformed_gaussians(
        self, camera_to_world: torch.Tensor, frame_idx: int
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means, quats and log-scales of all Gaussians for one frame and head pose."""
        return self._deformed(camera_to_world, *self._drive_if_deforming(frame_idx))

    def _drive(self, frame_idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(expression code [1, K], blink [1]) that drive the head field for one frame."""
        return self.expression_code(frame_idx), self.blink_table[frame_idx : frame_idx + 1]

    def _drive_if_deforming(self, frame_idx: int) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """`_drive`, or (None, None) in stage 1: the training code's noise must not be drawn
        there, so that the random stream (and with it a seeded run) stays what it was."""
        return self._drive(frame_idx) if self._deforming() else (None, None)

    def _deformed(
        self, camera_to_world: torch.Tensor, code: Optional[torch.Tensor], blink: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`deformed_gaussians` for a given drive (None in stage 1; no host synchronisation at
        inference, so it can be captured in a CUDA graph)."""
        means, quats, scales = self.means, self.quats, self.scales
        if not self._deforming():
            self._last_deformation = None
            return means, quats, scales
        deformation = DeformationOutput.zeros(len(means), device=means.device)
        head, torso = self._part_indices()
        head_encoded, torso_encoded = self._cached_encodings(head, torso)
        deformation = _scatter(deformation, head, self.head_field(means[head], code, blink, encoded=head_encoded))
        if self.torso_field is not None and len(torso) > 0:
            pose = (pose_codes(camera_to_world[0, :3, :4]) - self.pose_code_mean) / self.pose_code_std
            deformation = _scatter(deformation, torso, self.torso_field(means[torso], pose, encoded=torso_encoded))
        self._last_deformation = deformation
        return apply_deformation(means, quats, scales, deformation)

    def predicted_expression(self) -> torch.Tensor:
        """[F, K] expression codes predicted from the current audio table (training track, a
        `set_drive` clip or the viewer's upload), computed once per table."""
        table = self.audio_table
        key = (table.data_ptr(), table._version, tuple(table.shape), str(table.device))
        if self._predicted_cache is None or self._predicted_cache[0] != key:
            with torch.no_grad():
                self._predicted_cache = (key, self.audio_to_expression(table))
        return self._predicted_cache[1]

    def expression_for_opening(self, level: float) -> torch.Tensor:
        """[1, K] code of a mouth opened by hand to `level` (0: as closed as the clip's 5th
        percentile of opening, 1: as open as its 95th); see gstalker_ns.expression.controls."""
        return opening_code(self.expression_table, self.expression_opening, level).to(self.device)

    def expression_code(self, frame_idx: int) -> torch.Tensor:
        """[1, K] code that drives the head field for one frame (see the module docstring).
        `expression_override` (the viewer's mouth-by-hand control) replaces it at inference."""
        override = getattr(self, "expression_override", None)
        if override is not None and not self.training:
            return override
        if self.training:
            code = self.expression_table[frame_idx : frame_idx + 1]
            if self.config.expression_noise > 0:
                code = code + self.config.expression_noise * torch.randn_like(code)
            return code
        if self.config.eval_expression == "tracked" and len(self.audio_table) == len(self.expression_table):
            return self.expression_table[frame_idx : frame_idx + 1]
        return self.predicted_expression()[frame_idx : frame_idx + 1]

    def _part_indices(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Indices of head and torso Gaussians; recomputed only when densification changed them
        (avoids a host sync per frame)."""
        part = self.gaussian_part
        key = (part.data_ptr(), part._version, part.numel(), part.device)
        if getattr(self, "_part_cache", (None,))[0] != key:
            head = torch.nonzero(part == PART_HEAD).squeeze(-1)
            torso = torch.nonzero(part == PART_TORSO).squeeze(-1)
            self._part_cache = (key, head, torso)
        return self._part_cache[1], self._part_cache[2]

    def _cached_encodings(
        self, head: torch.Tensor, torso: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Hash-grid features of the canonical positions, reused across frames at inference.

        They depend only on the canonical means and the grids, not on audio or pose, so when no
        gradient is needed they are computed once and reused until either changes.
        """
        if torch.is_grad_enabled():
            return None, None
        means = self.means
        fields = [self.head_field] + ([self.torso_field] if self.torso_field is not None else [])
        versions = tuple(p._version for f in fields for p in f.encoding.parameters())
        key = (means.data_ptr(), means._version, means.shape[0], versions, head.data_ptr(), torso.data_ptr())
        cache = getattr(self, "_encoding_cache", None)
        if cache is None or cache[0] != key:
            head_encoded = self.head_field.encode_xyz(means[head])
            torso_encoded = self.torso_field.encode_xyz(means[torso]) if self.torso_field is not None else None
            self._encoding_cache = cache = (key, head_encoded, torso_encoded)
        return cache[1], cache[2]

    def _background_for(self, height: int, width: int) -> torch.Tensor:
        """The background plate resized to the render size, [H, W, 3]."""
        bg = self.background_image
        if bg.shape[0] == height and bg.shape[1] == width:
            return bg
        key = (bg.data_ptr(), bg._version, height, width)
        cache = getattr(self, "_background_cache", None)
        if cache is None or cache[0] != key:  # resized once per size, not per frame
            resized = F.interpolate(bg.permute(2, 0, 1)[None], size=(height, width), mode="area")
            self._background_cache = cache = (key, resized[0].permute(1, 2, 0))
        return cache[1]

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[torch.Tensor, List]]:
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
        scale_factor = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale_factor)
        K = camera.get_intrinsics_matrices().to(self.device)
        W, H = int(camera.width.item()), int(camera.height.item())
        camera.rescale_output_resolution(scale_factor)
        return self._render_view(camera.camera_to_worlds, K, W, H, self._frame_index(camera))

    def _backend(self, device: torch.device) -> str:
        """The configured rasterizer; "auto" defers to gstalker_ns.splatting (and its env override)."""
        return self.config.rasterizer if self.config.rasterizer != "auto" else backend_for(device)

    def _frame_gaussians(self, camera_to_world: torch.Tensor, frame_idx: int) -> Tuple[torch.Tensor, ...]:
        """(means, quats, log-scales, colours or SH, opacity logits, SH degree) of one frame."""
        return self._driven_gaussians(camera_to_world, *self._drive_if_deforming(frame_idx))

    def _driven_gaussians(
        self, camera_to_world: torch.Tensor, code: Optional[torch.Tensor], blink: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, ...]:
        """`_frame_gaussians` for a given drive."""
        means, quats, scales = self._deformed(camera_to_world, code, blink)
        deformation = self._last_deformation
        features_dc, opacities = self.features_dc, self.opacities
        if deformation is not None and deformation.d_color is not None:  # the head field's appearance change
            features_dc, opacities = features_dc + deformation.d_color, opacities + deformation.d_opacity
        colors = torch.cat((features_dc[:, None, :], self.features_rest), dim=1)
        if self.config.sh_degree > 0:
            sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors = torch.sigmoid(colors).squeeze(1)
            sh_degree = None
        return means, quats, scales, colors, opacities, sh_degree

    # ------------------------------------------------------------------ inference: project, then raster
    def _project_views(
        self, pose: torch.Tensor, K: torch.Tensor, codes: torch.Tensor, blinks: torch.Tensor, width: int, height: int
    ) -> Tuple[torch.Tensor, ...]:
        """B frames' deformed Gaussians projected through their cameras (pose [B, 3, 4], K [B, 3, 3],
        codes [B, K], blinks [B]): `ProjectedFrames.as_tuple()`. Fixed shapes, no host sync."""
        per_frame = [
            self._driven_gaussians(pose[b : b + 1], codes[b : b + 1], blinks[b : b + 1]) for b in range(pose.shape[0])
        ]
        means, quats, scales, colors, opacities = (torch.stack([f[i] for f in per_frame]) for i in range(5))
        return project_frames(
            means, quats, torch.exp(scales), torch.sigmoid(opacities).squeeze(-1), colors, viewmats_from_poses(pose), K,
            pose[:, :3, 3], width, height, per_frame[0][5], self._backend(means.device),
            rasterize_mode=self.config.rasterize_mode,
        ).as_tuple()  # fmt: skip

    def _graphs_allowed(self) -> bool:
        """CUDA graphs at inference on gsplat only (training changes the model every step)."""
        return (
            self.config.inference_graph
            and not self.training
            and not torch.is_grad_enabled()
            and self.device.type == "cuda"
            and self._backend(self.device) == "gsplat"
            and not getattr(self, "_graph_failed", False)
        )

    def _state_key(self) -> Tuple:
        """Changes whenever a parameter or buffer is replaced or changed in place (a captured
        graph reads them, and the caches it reads are derived from them)."""
        tensors = list(self.parameters()) + list(self.buffers())
        return (self.step, self._deforming()) + tuple((t.data_ptr(), t._version) for t in tensors)

    def _projection_program(self, inputs: Tuple[torch.Tensor, ...], width: int, height: int) -> Optional[CapturedCall]:
        """The captured `_project_views` for this batch and image size, or None (run eagerly).

        A graph is captured on the second call with an unchanged model and size, so a viewer
        rendering between training steps never pays for a capture it cannot reuse.
        """
        if not self._graphs_allowed():
            return None
        batch = inputs[0].shape[0]
        key = (batch, width, height, self._state_key())
        programs = self.__dict__.setdefault("_programs", {})
        entry = programs.get(batch)
        if entry is not None and entry[0] == key:
            return entry[1]
        if entry is not None and entry[0] != key:
            del programs[batch]  # the model changed: release the old graph's memory
        seen = self.__dict__.setdefault("_program_seen", {})
        if seen.get(batch) != key:
            seen[batch] = key
            return None
        try:
            program = CapturedCall(
                lambda p, k, c, b: self._project_views(p, k, c, b, width, height),
                inputs,
                capture=self.device.type == "cuda",
                tolerance=1e-2,  # pixels and colour units: a kernel left out of the graph is far off
                difference=projected_difference,
            )
        except CaptureFailed as exc:
            self._graph_failed, self._graph_failure = True, str(exc)[:300]
            CONSOLE.print(f"[yellow]Warning: rendering without CUDA graphs ({exc}); frames are the same, only slower.")
            return None
        programs[batch] = (key, program)
        return program

    def _projected(
        self, pose: torch.Tensor, K: torch.Tensor, codes: torch.Tensor, blinks: torch.Tensor, width: int, height: int
    ) -> ProjectedFrames:
        inputs = (pose, K, codes, blinks)
        program = self._projection_program(inputs, width, height)
        out = program(*inputs) if program is not None else self._project_views(*inputs, width, height)
        return ProjectedFrames(*out)

    def _render_projected(
        self, pose: torch.Tensor, K: torch.Tensor, width: int, height: int, frame_idx: int
    ) -> Dict[str, Union[torch.Tensor, List]]:
        """Inference render of one view through the project-then-raster split (the projection
        replayed from a CUDA graph where allowed); the same outputs as `_render_view`."""
        self._last_frame_idx = frame_idx
        self.last_size = (height, width)
        code, blink = self._drive(frame_idx)
        with record_function("gstalker.project"):
            projected = self._projected(pose, K, code, blink, width, height)
        depth = getattr(self, "_depth_at_inference", True)
        with record_function("gstalker.raster"):
            render, alpha = raster_projected(projected, width, height, self._backend(pose.device), depth=depth)
        with record_function("gstalker.composite"):
            background = self._background_for(height, width)
            rgb = torch.clamp(render[0, ..., :3] + (1 - alpha[0]) * background, 0.0, 1.0)
        out_depth = torch.where(alpha[0] > 0, render[0, ..., 3:4], render[0, ..., 3:4].max()) if depth else None
        return {"rgb": rgb, "depth": out_depth, "accumulation": alpha[0], "background": background}

    @torch.no_grad()
    def render_batch(self, cameras: Cameras) -> torch.Tensor:
        """[B, H, W, 3] colour of B frames (cameras with `frame_idx`, one image size) in one
        rasterization (gstalker_ns.splatting.batched): for rendering files, not the viewer."""
        frames = [self._clamp_frame(f) for f in torch.as_tensor(cameras.metadata["frame_idx"]).reshape(-1).tolist()]
        pose, K, W, H = self._cameras_on_device(cameras)
        drives = [self._drive(f) for f in frames]
        codes, blinks = torch.cat([d[0] for d in drives]), torch.cat([d[1] for d in drives])
        projected = self._projected(pose, K, codes, blinks, W, H)
        render, alpha = raster_projected(projected, W, H, self._backend(pose.device))
        return torch.clamp(render[..., :3] + (1 - alpha) * self._background_for(H, W), 0.0, 1.0)

    def _render_view(
        self, camera_to_world: torch.Tensor, K: torch.Tensor, W: int, H: int, frame_idx: int
    ) -> Dict[str, Union[torch.Tensor, List]]:
        """Render one view: camera_to_world [1, 3, 4] and K [1, 3, 3] on the model's device, the
        image size and the drive frame as Python ints (so nothing here waits for the GPU)."""
        if self._graphs_allowed():
            return self._render_projected(camera_to_world, K, W, H, frame_idx)
        self._last_frame_idx = frame_idx
        with record_function("gstalker.deform"):
            means, quats, scales, colors, opacities, sh_degree = self._frame_gaussians(camera_to_world, frame_idx)
        viewmat = get_viewmat(camera_to_world)
        self.last_size = (H, W)
        depth_wanted = self.config.output_depth_during_training or not self.training
        render_mode = "RGB+ED" if depth_wanted and getattr(self, "_depth_at_inference", True) else "RGB"
        with record_function("gstalker.raster"):
            render, alpha, self.info = rasterize(
                backend=self._backend(means.device),
                means=means,
                quats=quats,
                scales=torch.exp(scales),
                opacities=torch.sigmoid(opacities).squeeze(-1),
                colors=colors,
                viewmats=viewmat,
                Ks=K,
                width=W,
                height=H,
                packed=False,
                near_plane=0.01,
                far_plane=1e10,
                render_mode=render_mode,
                sh_degree=sh_degree,
                sparse_grad=False,
                absgrad=self.config.use_absgrad,
                rasterize_mode=self.config.rasterize_mode,
            )
        if self.training and self.info["means2d"].requires_grad:
            self.info["means2d"].retain_grad()
        with record_function("gstalker.composite"):
            background = self._background_for(H, W)
            rgb = torch.clamp(render[0, ..., :3] + (1 - alpha[0]) * background, 0.0, 1.0)
        depth = None
        if render_mode == "RGB+ED":
            depth = torch.where(alpha[0] > 0, render[0, ..., 3:4], render[0, ..., 3:4].detach().max())
        return {"rgb": rgb, "depth": depth, "accumulation": alpha[0], "background": background}

    # ------------------------------------------------------------------ losses and metrics
    def _labels_for(self, batch: Dict, height: int, width: int) -> Optional[torch.Tensor]:
        labels = batch.get("labels")
        if labels is None:
            return None
        labels = labels.to(self.device)
        if labels.shape[0] != height or labels.shape[1] != width:
            labels = F.interpolate(labels.permute(2, 0, 1)[None].float(), size=(height, width), mode="nearest")
            labels = labels[0].permute(1, 2, 0).to(torch.uint8)
        return labels

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        gt = self.get_gt_img(batch["image"])[..., :3]
        pred = outputs["rgb"]
        abs_diff = torch.abs(gt - pred)
        l1 = abs_diff.mean()
        d_ssim = 1 - self.ssim(gt.permute(2, 0, 1)[None], pred.permute(2, 0, 1)[None])
        loss = {"main_loss": (1 - self.config.ssim_lambda) * l1 + self.config.ssim_lambda * d_ssim}
        labels = self._labels_for(batch, pred.shape[0], pred.shape[1])
        if labels is not None and self.config.mouth_loss_weight > 0:
            mouth = mouth_mask(labels).float()
            if mouth.sum() > 0:
                loss["mouth_l1"] = self.config.mouth_loss_weight * (abs_diff * mouth).sum() / (3 * mouth.sum())
        if self.config.eye_loss_weight > 0:
            eyes = self._eye_mask(getattr(self, "_last_frame_idx", 0), pred.shape[0], pred.shape[1])
            if eyes is not None:
                loss["eye_l1"] = self.config.eye_loss_weight * (abs_diff * eyes).sum() / (3 * eyes.sum())
        deformation = self._last_deformation
        if deformation is not None and self.config.offset_reg_weight > 0:
            scale = self.head_radius
            reg = (deformation.d_xyz / scale).square().mean() + deformation.d_scale.square().mean()
            reg = reg + deformation.d_quat.square().mean()
            if deformation.d_color is not None:
                reg = reg + 0.1 * (deformation.d_color.square().mean() + deformation.d_opacity.square().mean())
            loss["offset_reg"] = self.config.offset_reg_weight * reg
        return loss

    def _eye_mask(self, frame_idx: int, height: int, width: int) -> Optional[torch.Tensor]:
        """[H, W, 1] float: 1 inside the frame's two tracked eye boxes (None when untracked)."""
        boxes = self.eye_box_table[min(frame_idx, len(self.eye_box_table) - 1)]
        if bool((boxes < 0).all()):
            return None
        ys = (torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5) / width
        mask = torch.zeros(height, width, device=boxes.device)
        for x0, y0, x1, y1 in boxes:
            inside_y = (ys >= y0) & (ys <= y1)
            inside_x = (xs >= x0) & (xs <= x1)
            mask = torch.maximum(mask, (inside_y[:, None] & inside_x[None, :]).float())
        return mask[..., None] if mask.sum() > 0 else None

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        gt = self.get_gt_img(batch["image"])[..., :3]
        metrics = {"psnr": self.psnr(outputs["rgb"], gt), "gaussian_count": self.num_points}
        if self._last_deformation is not None:
            metrics["mean_offset"] = self._last_deformation.d_xyz.detach().norm(dim=-1).mean() / self.head_radius
        return metrics

    def get_image_metrics_and_images(
        self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        gt = self.get_gt_img(batch["image"])[..., :3]
        pred = outputs["rgb"]
        combined = torch.cat([gt, pred], dim=1)
        gt_b = gt.permute(2, 0, 1)[None]
        pred_b = pred.permute(2, 0, 1)[None]
        metrics = {"psnr": float(self.psnr(gt_b, pred_b).item()), "ssim": float(self.ssim(gt_b, pred_b))}
        if self.lpips is not None:
            metrics["lpips"] = float(self.lpips(gt_b, pred_b))
        return metrics, {"img": combined}
