"""The `gstalker` method for `ns-train` (registered through the nerfstudio.method_configs entry point)."""

from __future__ import annotations

from gstalker_ns import _compat

_compat.apply_all()  # nerfstudio imports this module before loading any checkpoint

import torch  # noqa: E402
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig  # noqa: E402
from nerfstudio.engine.optimizers import AdamOptimizerConfig  # noqa: E402
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig  # noqa: E402
from nerfstudio.engine.trainer import TrainerConfig  # noqa: E402
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig  # noqa: E402
from nerfstudio.plugins.types import MethodSpecification  # noqa: E402

from gstalker_ns.data.datamanager import TalkingPortraitDatamanagerConfig  # noqa: E402
from gstalker_ns.data.dataparser import TalkingPortraitDataParserConfig  # noqa: E402
from gstalker_ns.model import GSTalkerModelConfig  # noqa: E402

MAX_STEPS = 10000  # about 5-6 minutes on one H200 (benchmarks/RESULTS.md)


def _adam(lr: float, lr_final: float | None = None, warmup: int = 0) -> dict:
    scheduler = None
    if lr_final is not None:
        scheduler = ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=MAX_STEPS, warmup_steps=warmup)
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


def gstalker_trainer_config() -> TrainerConfig:
    """Defaults for a 512x512 clip of 1-5 minutes on one GPU."""
    return TrainerConfig(
        method_name="gstalker",
        steps_per_eval_image=500,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=MAX_STEPS,
        max_num_iterations=MAX_STEPS,
        mixed_precision=False,
        # CUDA when there is a GPU; otherwise the CPU path (pure-PyTorch rasterizer), no flag needed.
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        pipeline=VanillaPipelineConfig(
            datamanager=TalkingPortraitDatamanagerConfig(dataparser=TalkingPortraitDataParserConfig()),
            model=GSTalkerModelConfig(),
        ),
        optimizers={
            # World units are head radii (the dataparser rescales), so these rates fit every subject.
            "means": _adam(1.6e-4, 1.6e-6),
            "features_dc": _adam(0.0025),
            "features_rest": _adam(0.0025 / 20),
            "opacities": _adam(0.05),
            "scales": _adam(0.005),
            "quats": _adam(0.001),
            "deformation": _adam(2e-3, 1e-4, warmup=200),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


gstalker_method = MethodSpecification(
    config=gstalker_trainer_config(),
    description="GSTalker: audio-driven 3D Gaussian talking portrait (static head + audio/pose deformation fields).",
)
