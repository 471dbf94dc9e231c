"""End to end: `ns-train gstalker` on a tiny synthetic subject, then load the checkpoint and render.

This is the real user path: the console scripts of the project's environment, nerfstudio's
trainer, our dataparser/datamanager/model, a checkpoint on disk, and nerfstudio's own loaders.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml


from gstalker_ns.demo import find_config, ns_train_command

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(command, **kwargs):
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert completed.returncode == 0, f"{command[:3]} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return completed


def test_ns_train_help_lists_gstalker():
    out = _run([str(BIN / "ns-train"), "--help"]).stdout
    assert "gstalker" in out


@pytest.fixture(scope="module")
def trained_run(tiny_run):
    root, config_path, _ = tiny_run
    return root, config_path


def _scalar_series(run_dir: Path, tag: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [event.value for event in acc.Scalars(tag)]


def test_training_saves_a_checkpoint_and_loss_goes_down(trained_run):
    root, config_path = trained_run
    checkpoints = sorted((config_path.parent / "nerfstudio_models").glob("*.ckpt"))
    assert checkpoints, "no checkpoint written"
    losses = _scalar_series(config_path.parent, "Train Loss")
    assert len(losses) >= 30
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.8 * first, f"loss did not go down: {first:.4f} -> {last:.4f}"


def test_checkpoint_loads_and_renders_a_held_out_camera(trained_run):
    from gstalker_ns.evaluation import evaluate_held_out, load_pipeline

    _, config_path = trained_run
    pipeline, checkpoint, step = load_pipeline(config_path)
    model = pipeline.model
    assert bool(model.deformation_enabled), "stage 2 never started"
    assert model.audio_extractor.get("kind") == "whisper"
    camera, batch = pipeline.datamanager.fixed_indices_eval_dataloader[0]
    outputs = model.get_outputs_for_camera(camera)
    rgb = outputs["rgb"]
    assert rgb.shape == batch["image"].shape and torch.isfinite(rgb).all()
    result = evaluate_held_out(pipeline)
    assert result.summary()["psnr"] > 18.0, result.summary()
    # the audio drives the render: another frame's audio changes the image for the same camera
    camera_other = copy.deepcopy(camera)
    camera_other.metadata = {"frame_idx": torch.tensor([[0]])}
    other = model.get_outputs_for_camera(camera_other)["rgb"]
    assert (other - rgb).abs().max() > 1e-4


def test_ns_eval_works_on_the_checkpoint(trained_run):
    root, config_path = trained_run
    out = root / "ns_eval.json"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    _run([str(BIN / "ns-eval"), f"--load-config={config_path}", f"--output-path={out}"], cwd=root, env=env)
    results = json.loads(out.read_text())["results"]
    assert results["psnr"] > 18.0 and 0 < results["ssim"] <= 1


def test_ns_train_on_a_broken_folder_prints_one_line(tmp_path):
    """A dataset problem reaches the user as one line, not a traceback from inside nerfstudio."""
    (tmp_path / "person").mkdir()
    completed = subprocess.run(
        [str(BIN / "ns-train"), "gstalker", f"--data={tmp_path / 'person'}", f"--output-dir={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "transforms.json: missing" in last


def test_training_resumes_from_a_checkpoint(trained_run, tmp_path):
    """`ns-train --load-dir` continues a run: densification and optimizer steps act on the loaded
    Gaussians (the optimizers were built before the checkpoint resized them)."""
    root, config_path = trained_run
    preset = yaml.safe_load((REPO / "configs" / "ci-tiny.yaml").read_text())
    args = [a for a in preset["train_args"] if not a.startswith(("--max-num-iterations", "--steps-per-save"))]
    subject = root / "subject"
    model_dir = config_path.parent / "nerfstudio_models"
    before = torch.load(sorted(model_dir.glob("*.ckpt"))[-1], map_location="cpu", weights_only=False)
    command = ns_train_command(subject, tmp_path / "outputs", args + ["--max-num-iterations=25", "--steps-per-save=25",
                                                                      f"--load-dir={model_dir}"], "resume")
    _run(command, cwd=tmp_path)
    resumed = sorted((find_config(tmp_path / "outputs", "resume").parent / "nerfstudio_models").glob("*.ckpt"))
    assert resumed and int(resumed[-1].stem.split("-")[1]) == before["step"] + 25
    after = torch.load(resumed[-1], map_location="cpu", weights_only=False)
    old, new = before["pipeline"]["_model.gauss_params.means"], after["pipeline"]["_model.gauss_params.means"]
    assert new.shape != old.shape or (new - old).abs().max() > 1e-4  # trained on, not a copy
