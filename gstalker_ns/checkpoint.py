"""Load a trained run (its config.yml and latest checkpoint) with one-line errors for what users get wrong.

nerfstudio's `eval_setup` resolves the checkpoint folder and the dataset from paths recorded
relative to the directory training ran in, and reports problems with `sys.exit` or deep
tracebacks. Here the checkpoint is looked up next to the config file (so a run can be moved or
used from any directory), a moved dataset can be pointed at with `data=`, and every problem is a
`CheckpointError` that says what to do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Tuple

import torch

from gstalker_ns.errors import GstalkerUserError


class CheckpointError(GstalkerUserError):
    """A config/checkpoint that cannot be used as asked; the message is one line."""


def _read_config(config_path: Path) -> Any:
    import yaml

    from nerfstudio.engine.trainer import TrainerConfig

    if not config_path.exists():
        raise CheckpointError(f"{config_path}: not found; pass the config.yml that ns-train wrote into its run folder")
    if config_path.is_dir():
        candidate = config_path / "config.yml"
        if candidate.exists():
            config_path = candidate
        else:
            raise CheckpointError(f"{config_path}: is a folder without config.yml; pass a run's config.yml")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except Exception as exc:  # yaml errors, missing plugin classes, binary files
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"{config_path}: not a readable nerfstudio config ({reason}); pass a run's config.yml") from None
    if not isinstance(config, TrainerConfig):
        raise CheckpointError(f"{config_path}: not a nerfstudio run config; pass the config.yml that ns-train wrote")
    return config, config_path


def latest_checkpoint(model_dir: Path, step: Optional[int] = None) -> Tuple[Path, int]:
    """The highest-step `step-*.ckpt` in a run's nerfstudio_models folder (or the one at `step`)."""
    steps = []
    if model_dir.is_dir():
        for p in model_dir.iterdir():
            match = re.fullmatch(r"step-(\d+)\.ckpt", p.name)
            if match:
                steps.append((int(match.group(1)), p))
    if not steps:
        raise CheckpointError(
            f"{model_dir}: holds no step-*.ckpt checkpoint; train longer (checkpoints are saved every "
            "steps_per_save steps and at the end) or pass another run's config.yml"
        )
    if step is not None:
        chosen = [(s, p) for s, p in steps if s == step]
        if not chosen:
            raise CheckpointError(
                f"{model_dir}: has no checkpoint at step {step}; steps saved: {', '.join(str(s) for s, _ in sorted(steps))}"
            )
        return chosen[0][1], step
    found, path = max(steps)
    return path, found


def load_trained_pipeline(
    config_path: Path,
    require_method: Optional[str] = "gstalker",
    data: Optional[Path] = None,
    test_mode: str = "test",
    device: Optional[str] = None,
    step: Optional[int] = None,
):
    """Build the pipeline of a run and load its latest checkpoint. Returns (pipeline, config, ckpt_path, step).

    `require_method` refuses runs of other methods (None accepts any); `data` replaces the dataset
    folder recorded in the config (for runs whose data moved); `step` picks a checkpoint other
    than the latest.
    """
    from gstalker_ns import _compat

    _compat.apply_all()
    from nerfstudio.configs.method_configs import all_methods

    config, config_path = _read_config(Path(config_path))
    method = config.method_name
    if require_method is not None and method != require_method:
        raise CheckpointError(
            f"{config_path}: is a {method!r} run, not {require_method!r}; this command drives {require_method} "
            "checkpoints only (use ns-render for other methods)"
        )
    if method in all_methods:
        config.pipeline.datamanager._target = all_methods[method].pipeline.datamanager._target
    datamanager = config.pipeline.datamanager
    if data is not None:
        datamanager.data = Path(data)
        datamanager.dataparser.data = Path(data)
    recorded = Path(datamanager.data if getattr(datamanager, "data", None) is not None else datamanager.dataparser.data)
    if not recorded.exists():
        raise CheckpointError(
            f"the run's dataset {recorded} does not exist (paths in config.yml are relative to where ns-train ran); "
            "run from that folder or pass --data PATH_TO_DATASET"
        )
    model_dir = config_path.parent / config.relative_model_dir
    checkpoint, step = latest_checkpoint(model_dir, step)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = config.pipeline.setup(device=device, test_mode=test_mode)
    pipeline.eval()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    pipeline.load_pipeline(state["pipeline"], state["step"])
    pipeline.eval()
    return pipeline, config, checkpoint, step
