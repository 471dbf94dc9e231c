"""The reference method of `gstalker-eval --baseline splatfacto`: nerfstudio's plain splatfacto.

It reads the same training folder through our `talking-portrait` dataparser, with the gstalker
run's dataparser settings (held-out fraction, seed points), so it sees the same frames, the same
split and the same initial points; it renders a static head (no audio input). Either an existing
run is used (`--baseline-config`) or one is trained here with

    ns-train splatfacto --max-num-iterations=STEPS ... talking-portrait --data=FOLDER --eval-fraction=F ...

at nerfstudio's defaults otherwise (frames cached as uint8 to keep memory flat). The default
number of iterations is the gstalker checkpoint's (its step + 1): the same training budget.

On a machine without CUDA, splatfacto cannot run as shipped (gsplat has no CPU kernels and
splatfacto calls `.cuda()`); `splatfacto_cpu_fallback()` then routes its rasterization to our
pure-PyTorch rasterizer and keeps its two `.cuda()` calls on the CPU. That is only for tiny
CPU runs (tests, trying the command); on a GPU nothing is changed.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from gstalker_ns.errors import GstalkerUserError

BASELINES = ("splatfacto",)
EXPERIMENT = "baseline"
_LAUNCHER = (
    "import gstalker_ns._compat as c; c.apply_all(); "
    "from gstalker_ns.evaluation.baseline import splatfacto_cpu_fallback; splatfacto_cpu_fallback(); "
    "from nerfstudio.scripts.train import entrypoint; entrypoint()"
)
_PATCHED = False


class BaselineError(GstalkerUserError):
    """The baseline cannot be trained or loaded; one-line message."""


@contextmanager
def _cuda_calls_stay_on_cpu() -> Iterator[None]:
    import torch

    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[assignment]


def _on_cpu(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _cuda_calls_stay_on_cpu():
            return method(*args, **kwargs)

    return wrapper


def splatfacto_cpu_fallback() -> bool:
    """Without CUDA: make nerfstudio's splatfacto train and render on the CPU (see the module
    docstring). Returns whether the fallback is active. Idempotent; does nothing with CUDA."""
    global _PATCHED
    import torch

    if torch.cuda.is_available():
        return False
    if _PATCHED:
        return True
    from gstalker_ns import _compat

    _compat.apply_all()
    import nerfstudio.models.splatfacto as splatfacto_module

    from gstalker_ns.splatting import rasterize

    def rasterization(**kwargs: Any):
        return rasterize(backend="torch", **kwargs)

    splatfacto_module.rasterization = rasterization
    model = splatfacto_module.SplatfactoModel
    model.populate_modules = _on_cpu(model.populate_modules)
    model.get_outputs = _on_cpu(model.get_outputs)
    _PATCHED = True
    return True


def dataparser_arguments(dataparser_config: Any) -> List[str]:
    """The talking-portrait arguments that make a baseline see what the gstalker run saw."""
    args = [
        f"--data={Path(dataparser_config.data).resolve()}",
        f"--eval-fraction={float(dataparser_config.eval_fraction)!r}",
    ]
    for name, flag in (("num_seed_points", "--num-seed-points"), ("seed_frames", "--seed-frames"), ("ernerf_audio", "--ernerf-audio")):
        value = getattr(dataparser_config, name, None)
        if value is not None:
            args.append(f"{flag}={value}")
    return args


def train_command(method: str, dataparser_args: List[str], output_dir: Path, steps: int) -> List[str]:
    """ns-train for the baseline, run with this interpreter (same environment, CPU fallback loaded)."""
    import torch

    steps = max(1, int(steps))
    common = [
        f"--output-dir={output_dir}",
        f"--experiment-name={EXPERIMENT}",
        "--timestamp=run",
        "--vis=tensorboard",
        "--viewer.quit-on-train-completion=True",
        f"--max-num-iterations={steps}",
        f"--steps-per-save={steps}",
        "--steps-per-eval-batch=0",
        f"--steps-per-eval-image={10 * steps + 1000}",
        f"--steps-per-eval-all-images={10 * steps + 1000}",
        "--pipeline.datamanager.cache-images-type=uint8",
    ]
    if not torch.cuda.is_available():
        common.append("--machine.device-type=cpu")  # cache-images "gpu" then means the CPU
    return [sys.executable, "-c", _LAUNCHER, method, *common, "talking-portrait", *dataparser_args]


def run_config_path(output_dir: Path, method: str) -> Path:
    return Path(output_dir) / EXPERIMENT / method / "run" / "config.yml"


def has_checkpoint(config_path: Path, steps: Optional[int] = None) -> bool:
    """A finished run: config.yml and a checkpoint (the final one of a ``steps``-iteration run, if given)."""
    if not config_path.exists():
        return False
    models = config_path.parent / "nerfstudio_models"
    if steps is None:
        return any(models.glob("step-*.ckpt"))
    return (models / f"step-{int(steps) - 1:09d}.ckpt").exists()


def train_baseline(
    method: str, dataparser_config: Any, output_dir: Path, steps: int, retrain: bool = False, quiet: bool = False
) -> Dict[str, Any]:
    """Train the baseline with ns-train unless a finished run is already in ``output_dir``.

    ``steps`` is the number of training iterations (ns-train's --max-num-iterations); an existing
    run is reused only when its final checkpoint is that of a run this long. Returns
    {"config": path, "trained_here": bool, "log": path}. The ns-train log is kept next to the run;
    a failure is a BaselineError naming the log and its last line.
    """
    if method not in BASELINES:
        raise BaselineError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINES)}")
    output_dir = Path(output_dir)
    config_path = run_config_path(output_dir, method)
    log_path = output_dir / f"{method}_train.log"
    if has_checkpoint(config_path, steps) and not retrain:
        return {"config": config_path, "trained_here": False, "log": log_path}
    output_dir.mkdir(parents=True, exist_ok=True)
    command = train_command(method, dataparser_arguments(dataparser_config), output_dir.resolve(), steps)
    if not quiet:
        print(f"[gstalker-eval] training the {method} baseline for {steps} iterations (log: {log_path}) ...", file=sys.stderr, flush=True)
    returncode = _run_with_progress(command, log_path, steps, f"train {method}", not quiet)
    if returncode != 0 or not has_checkpoint(config_path, steps):
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        last = lines[-1].strip()[:200] if lines else "no output"
        raise BaselineError(f"ns-train {method} failed (exit code {returncode}; last line: {last}); see {log_path}")
    return {"config": config_path, "trained_here": True, "log": log_path}


_STEP_ROW = re.compile(r"^\s*(\d+) \(\s*[\d.]+%\)")  # ns-train's progress table: "1000 (3.33%)  ..."


def _run_with_progress(command: List[str], log_path: Path, steps: int, desc: str, show: bool) -> int:
    """Run ns-train with its output in ``log_path``; a progress bar follows the steps it logs."""
    from gstalker_ns.progress import progress_bar

    done = 0
    with open(log_path, "w") as log, open(log_path, errors="replace") as reader, progress_bar(steps, desc, show, unit="step") as bar:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while True:
            finished = process.poll() is not None
            for line in reader.read().splitlines():
                match = _STEP_ROW.match(line)
                if match and int(match.group(1)) + 1 > done:
                    bar.update(int(match.group(1)) + 1 - done)
                    done = int(match.group(1)) + 1
            if finished:
                return int(process.returncode)
            time.sleep(0.5)


def load_baseline(config_path: Path, method: str, data: Optional[Path] = None):
    """Load a baseline run (pipeline, config, checkpoint, step); refuses runs of other methods."""
    from gstalker_ns.checkpoint import load_trained_pipeline

    splatfacto_cpu_fallback()
    return load_trained_pipeline(Path(config_path), require_method=method, data=data)
