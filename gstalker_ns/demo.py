"""`gstalker-demo`: the whole pipeline on the embedded synthetic subject, with nothing downloaded.

1. `gstalker-synth` makes the subject (video + training folder) unless it is already there;
2. `ns-train gstalker --data SUBJECT` trains with the preset's arguments (the real nerfstudio path);
3. the held-out frames are rendered and scored (PSNR, SSIM, mouth-opening correlation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import yaml

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def load_preset(path: Path) -> dict:
    try:
        preset = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"gstalker-demo: preset {path} not found; pass --preset configs/cpu-demo.yaml") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"gstalker-demo: preset {path} is not valid YAML ({exc}); fix the file") from None
    if not isinstance(preset, dict) or "synth" not in preset or "train_args" not in preset:
        raise SystemExit(f"gstalker-demo: preset {path} needs 'synth' and 'train_args' sections")
    return preset


def ns_train_command(data: Path, output_dir: Path, train_args: List[str], experiment: str) -> List[str]:
    """The ns-train invocation, run with this interpreter so it uses the same environment."""
    return [
        sys.executable,
        "-c",
        "import gstalker_ns._compat as c; c.apply_all(); from nerfstudio.scripts.train import entrypoint; entrypoint()",
        "gstalker",
        f"--data={data}",
        f"--output-dir={output_dir}",
        f"--experiment-name={experiment}",
        "--timestamp=run",
        "--vis=tensorboard",
        "--viewer.quit-on-train-completion=True",
        *train_args,
    ]


def find_config(output_dir: Path, experiment: str) -> Path:
    return output_dir / experiment / "gstalker" / "run" / "config.yml"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gstalker-demo",
        description="Generate the synthetic subject, train gstalker on it (CPU-sized preset), and score held-out frames.",
    )
    parser.add_argument("--preset", type=Path, default=REPO_CONFIGS / "cpu-demo.yaml", help="YAML preset (synth options and ns-train arguments)")
    parser.add_argument("--output", type=Path, default=Path("runs/demo"), help="where the subject, checkpoints and results go")
    parser.add_argument("--retrain", action="store_true", help="train again even if a finished run exists")
    args = parser.parse_args(argv)

    from gstalker_ns import _compat

    _compat.apply_all()
    preset = load_preset(args.preset)
    output: Path = args.output
    subject = output / "subject"
    started = time.perf_counter()

    if not (subject / "transforms.json").exists():
        from gstalker_ns.synth.subject import generate_subject

        print(f"[demo] generating the synthetic subject in {subject} ...", flush=True)
        generate_subject(subject, **preset["synth"])
    else:
        print(f"[demo] using the existing subject in {subject}", flush=True)

    experiment = "demo"
    config_path = find_config(output / "outputs", experiment)
    if args.retrain or not config_path.exists() or not any((config_path.parent / "nerfstudio_models").glob("*.ckpt")):
        command = ns_train_command(subject.resolve(), (output / "outputs").resolve(), preset["train_args"], experiment)
        print("[demo] training: ns-train gstalker " + " ".join(command[4:]), flush=True)
        env = dict(os.environ)
        completed = subprocess.run(command, env=env)
        if completed.returncode != 0:
            print(f"[demo] ns-train failed with exit code {completed.returncode}", file=sys.stderr)
            return completed.returncode

    from gstalker_ns.evaluation import evaluate_held_out, load_pipeline, write_metrics

    print("[demo] rendering and scoring the held-out frames ...", flush=True)
    pipeline, checkpoint, step = load_pipeline(config_path)
    results_dir = output / "results"
    result = evaluate_held_out(pipeline, save_dir=results_dir)
    payload = write_metrics(
        results_dir / "metrics.json",
        result,
        extra={"checkpoint": str(checkpoint), "step": step, "preset": str(args.preset)},
    )
    summary = payload["summary"]
    print(json.dumps(summary, indent=1))
    print(
        f"[demo] done in {time.perf_counter() - started:.0f} s: metrics in {results_dir / 'metrics.json'}, "
        f"renders in {results_dir / 'heldout_gt_vs_render.png'}, config {config_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
