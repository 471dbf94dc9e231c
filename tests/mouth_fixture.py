"""A tiny checkpoint whose mouth opens on loud audio and stays shut in silence, by construction.

The browser test needs a render that changes with the audio. A tiny model trained for a few
hundred CPU steps learns that only sometimes, and a test that hopes for it fails on some
machines. So the checkpoint is built:

1. a deterministic short run: the synthetic subject with its procedural voice (the same on every
   machine, espeak-ng or not), `ns-train` with the CI preset, fixed seed, one thread;
2. the mouth is made certain: the head Gaussians nearest to the lips in the first training view
   stay head Gaussians, every other head Gaussian becomes a torso Gaussian (the run has no torso
   field, so those stay where they are whatever the audio); then only the head deformation
   field's output layer is replaced, by a least-squares read-out of its last hidden features
   that is 0 on the clip's silent frame and 1 on its loud frame (the two the browser test
   shows), times a gain that moves the mouth Gaussians down in the view by 0.3 head radius. The
   clip drives the model exactly as the viewer's Audio tab drives it with the uploaded file (the
   same features and automatic blinks). Nothing here depends on how the field turns audio into
   its condition vector: the read-out is fitted to whatever the hidden features are (in a barely
   trained field they differ little between the two frames, so the gain is large, but it is
   deterministic). Pure silence (eyes as in that frame) gives the silent frame's features again,
   so the mouth stays shut there; the other speech frames are not fitted (during playback the mouth Gaussians move
   by whatever the read-out gives there);
3. the checkpoint is saved where `ns-train` saved it, a normal nerfstudio checkpoint that
   `ns-viewer --load-config` loads;
4. then checked by behaviour, with the checkpoint loaded again from disk: the renders of a silent
   frame and of a loud frame differ in many pixels (and not in most of the image), and the same
   frame rendered twice is the same image. `MouthFixtureError` says what did not hold.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 16000
FPS = 25.0
SILENCE_S = 1.0
CLOSED_FRAME = 12  # the middle of the clip's leading second of silence
MOUTH_GAUSSIANS = 24
MOUTH_DROP = 0.3  # how far the mouth Gaussians move down on a loud frame, in head radii (world units)
SUBJECT = {"duration": 2.0, "size": 64, "seed": 1, "audio_source": "procedural"}
# The CI preset (configs/ci-tiny.yaml) without the torso field: every non-mouth Gaussian is static.
EXTRA_TRAIN_ARGS = ["--pipeline.model.torso-field=False", "--machine.seed=42"]
MIN_CHANGED_FRACTION = 0.004  # of the native-resolution render, between the silent and the loud frame
MAX_CHANGED_FRACTION = 0.25


class MouthFixtureError(AssertionError):
    """The built checkpoint does not behave as it must (the message says how)."""


@dataclass
class MouthFixture:
    config: Path
    """The run's config.yml (ns-viewer --load-config)."""
    subject: Path
    clip: Path
    """A wav: one second of silence, then the subject's speech (what the browser test uploads)."""
    num_frames: int
    closed_frame: int
    open_frame: int
    changed_pixels: int
    """Pixels that differ by more than 8/255 between the closed and the open frame (native size)."""
    image_pixels: int


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _clip_and_frames(subject: Path, out: Path):
    """Write the clip; return (path, mouth opening per frame, closed frame, open frame)."""
    from gstalker_ns.audio.io import load_audio, write_wav
    from gstalker_ns.synth.speech import mouth_opening_from_audio

    wave = np.concatenate([np.zeros(int(SILENCE_S * SAMPLE_RATE), np.float32), load_audio(subject / "audio.wav", SAMPLE_RATE)])
    write_wav(out, wave, SAMPLE_RATE)
    frames = int(round(wave.size / SAMPLE_RATE * FPS))
    # the synthetic generator's own rule for how far its mouth opens with this sound
    opening = mouth_opening_from_audio(wave, SAMPLE_RATE, frames, FPS)
    inner = np.arange(2, frames - 2)
    open_frame = int(inner[np.argmax([opening[k - 1 : k + 2].min() for k in inner])])
    if not (opening[CLOSED_FRAME - 2 : CLOSED_FRAME + 3].max() < 0.05 and opening[open_frame] > 0.6):
        raise MouthFixtureError(f"the clip has no clear silent and loud frames: {opening.round(2).tolist()}")
    return out, opening, CLOSED_FRAME, open_frame


def _train(subject: Path, outputs: Path) -> Path:
    from gstalker_ns.demo import find_config, ns_train_command

    preset = yaml.safe_load((REPO / "configs" / "ci-tiny.yaml").read_text())
    command = ns_train_command(subject, outputs, preset["train_args"] + EXTRA_TRAIN_ARGS, "mouth")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=outputs.parent, env=env)
    if done.returncode != 0:
        raise MouthFixtureError(f"ns-train failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return find_config(outputs, "mouth")


def _plain_camera(cameras, index: int):
    """Training camera `index` without frame metadata: the model renders `viewer_frame_idx`, as
    in the viewer."""
    from nerfstudio.cameras.cameras import Cameras

    c = cameras[index : index + 1]
    return Cameras(camera_to_worlds=c.camera_to_worlds, fx=c.fx, fy=c.fy, cx=c.cx, cy=c.cy, width=c.width,
                   height=c.height, camera_type=c.camera_type)  # fmt: skip


def _drive(model, clip: Path, dataset_blink: np.ndarray) -> None:
    """Drive the model with the clip as the viewer's Audio tab does with an upload: the same
    features and the same automatic (natural) blink track."""
    from gstalker_ns.drive.audio import DEFAULT_FPS, drive_from_file, spec_from_extractor
    from gstalker_ns.viewer.sources import upload_source

    drive = drive_from_file(clip, spec_from_extractor(model.audio_extractor), fps=DEFAULT_FPS)
    source = upload_source(drive, clip.name, dataset_blink, model.audio_table.device)
    model.set_drive(source.table, torch.from_numpy(source.blink("auto", dataset_blink)))


def _dataset_blink(model) -> np.ndarray:
    """The training clip's blink track, as the viewer's panel reads it when it starts."""
    return model.blink_table.detach().cpu().numpy().astype(np.float32).copy()


def render(model, camera, frame: int) -> torch.Tensor:
    """The model's RGB render of `frame` of its current drive, [H, W, 3] in [0, 1]."""
    model.viewer_frame_idx = frame
    with torch.no_grad():
        return model.get_outputs_for_camera(camera)["rgb"].detach().cpu()


def _mouth_gaussians(model, pipeline, count: int) -> torch.Tensor:
    """Indices of the `count` head Gaussians nearest to the lips' centre in training view 0,
    from the front half of those that project into a small disc around it."""
    from gstalker_ns.data.layout import LABEL_LIPS, read_label_map
    from gstalker_ns.data.seed_points import PART_HEAD

    dataset = pipeline.datamanager.train_dataset
    camera = dataset.cameras[0:1]
    labels = read_label_map(Path(dataset._dataparser_outputs.metadata["label_paths"][0]))
    ys, xs = np.nonzero(labels >= LABEL_LIPS)
    if xs.size == 0:
        raise MouthFixtureError("training view 0 shows no lips")
    centre = torch.tensor([xs.mean(), ys.mean()], dtype=torch.float32)
    head = torch.nonzero(model.gaussian_part == PART_HEAD).squeeze(-1)
    c2w = camera.camera_to_worlds[0]
    local = (model.means.detach()[head] - c2w[:3, 3]) @ c2w[:3, :3]  # camera frame, looking down -z
    depth = -local[:, 2]
    uv = torch.stack([camera.fx[0, 0] * local[:, 0] / depth + camera.cx[0, 0],
                      -camera.fy[0, 0] * local[:, 1] / depth + camera.cy[0, 0]], dim=-1)  # fmt: skip
    distance = (uv - centre).norm(dim=-1)
    radius = max(float(xs.max() - xs.min()), float(ys.max() - ys.min())) / 2 + 2.0
    near = torch.nonzero((distance < radius) & (depth > 0)).squeeze(-1)
    if len(near) < count:
        raise MouthFixtureError(f"only {len(near)} head Gaussians project near the lips (need {count})")
    front = near[depth[near] <= depth[near].median()]
    chosen = front[torch.argsort(distance[front])[:count]] if len(front) >= count else near[torch.argsort(distance[near])[:count]]
    return head[chosen]


def _hidden_features(model, camera_to_world: torch.Tensor, frames: List[int]) -> torch.Tensor:
    """Input of the head field's output layer for each frame: [len(frames), head Gaussians, hidden]."""
    captured = []
    last = model.head_field.head[-1]
    hook = last.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach().double()))
    try:
        with torch.no_grad():
            for frame in frames:
                model.deformed_gaussians(camera_to_world, frame)
    finally:
        hook.remove()
    return torch.stack(captured)


def _fit_readout(features: torch.Tensor, targets: torch.Tensor) -> tuple:
    """Least squares: (u, b) with u . h + b ~= target for every Gaussian and frame (features
    [frames, Gaussians, hidden]; a tiny ridge on standardised columns keeps the solve well
    conditioned when the hidden units are fewer than the equations or some are dead)."""
    samples = features.reshape(-1, features.shape[-1])
    y = targets[:, None].expand(-1, features.shape[1]).reshape(-1)
    mean, std = samples.mean(0), samples.std(0).clamp_min(1e-12)
    z = torch.cat([(samples - mean) / std, torch.ones(len(samples), 1, dtype=samples.dtype)], dim=1)
    ridge = 1e-8 * len(z) * torch.eye(z.shape[1], dtype=z.dtype)
    ridge[-1, -1] = 0.0  # the constant is free
    solution = torch.linalg.solve(z.T @ z + ridge, z.T @ y)
    u = solution[:-1] / std
    return u, float(solution[-1] - (u * mean).sum())


def make_mouth_move(pipeline, clip: Path, closed: int, opened: int) -> None:
    """Steps 2 (relabel, read-out) on a loaded pipeline, in place."""
    from gstalker_ns.data.seed_points import PART_HEAD, PART_TORSO

    model = pipeline.model
    if getattr(model, "torso_field", None) is not None:
        raise MouthFixtureError("the run has a torso field; train it with --pipeline.model.torso-field=False")
    mouth = _mouth_gaussians(model, pipeline, MOUTH_GAUSSIANS)
    part = model.gaussian_part.clone()
    part[part == PART_HEAD] = PART_TORSO
    part[mouth] = PART_HEAD
    model.gaussian_part = part
    model.strategy_state["part"] = part
    model.deformation_enabled.fill_(True)
    _drive(model, clip, _dataset_blink(model))
    camera = _plain_camera(pipeline.datamanager.train_dataset.cameras, 0)
    # The two frames the browser test shows: silence (0) and the loud vowel (1), exactly. Other
    # frames of the clip are not fitted: pure silence (eyes as in the silent frame) gives the
    # silent frame's features again (so the mouth stays shut), the rest of the speech moves the
    # mouth Gaussians by whatever the read-out gives there.
    frames = [closed, opened]
    features = _hidden_features(model, camera.camera_to_worlds, frames)
    targets = torch.tensor([0.0, 1.0], dtype=torch.float64)
    u, b = _fit_readout(features, targets)
    error = (features @ u + b - targets[:, None]).abs().amax(dim=1)  # [frames]: worst Gaussian
    print(f"mouth fixture: read-out error {error[0]:.4f} (silent frame), {error[1]:.4f} (loud frame)")
    if error.max() > 0.1:
        raise MouthFixtureError(
            f"the read-out does not tell frame {closed} (silent) from {opened} (loud): errors {error.tolist()}"
        )
    field = model.head_field
    extent = float((field.aabb[1] - field.aabb[0]).max())
    bound = float(getattr(field, "max_offset", 0.2)) * extent  # |d_xyz| = bound * tanh(raw)
    gain = float(np.arctanh(min(MOUTH_DROP / bound, 0.9)))
    down = -camera.camera_to_worlds[0, :3, 1].double()  # the view's "down" in world (head) coordinates
    last = field.head[-1]
    with torch.no_grad():
        weight = torch.zeros_like(last.weight, dtype=torch.float64)
        bias = torch.zeros_like(last.bias, dtype=torch.float64)
        weight[:3] = gain * down[:, None] * u[None, :]  # rows 0..2: the position offset
        bias[:3] = gain * down * b
        last.weight.copy_(weight.float())
        last.bias.copy_(bias.float())


def check_mouth(pipeline, clip: Path, closed: int, opened: int) -> int:
    """Step 4: the behaviour the browser test relies on. Returns the changed pixel count."""
    model = pipeline.model
    _drive(model, clip, _dataset_blink(model))
    camera = _plain_camera(pipeline.datamanager.train_dataset.cameras, 0)
    first = render(model, camera, closed)
    open_image = render(model, camera, opened)
    again = render(model, camera, closed)
    if not torch.equal(first, again):
        raise MouthFixtureError(f"frame {closed} rendered twice differs: max {float((first - again).abs().max()):.2e}")
    changed = int(((open_image - first).abs().amax(dim=-1) > 8 / 255).sum())
    total = first.shape[0] * first.shape[1]
    if not MIN_CHANGED_FRACTION * total <= changed <= MAX_CHANGED_FRACTION * total:
        raise MouthFixtureError(
            f"frames {closed} (silent) and {opened} (loud) differ in {changed} of {total} pixels; "
            f"expected {MIN_CHANGED_FRACTION:.0%}..{MAX_CHANGED_FRACTION:.0%}"
        )
    return changed


def build_mouth_fixture(root: Path) -> MouthFixture:
    """Steps 1-4 in `root` (a few minutes on 2 busy cores, most of it ns-train)."""
    from gstalker_ns.checkpoint import latest_checkpoint, load_trained_pipeline
    from gstalker_ns.synth.subject import generate_subject

    root = Path(root)
    subject = generate_subject(root / "subject", **SUBJECT, video=False, progress=False)
    clip, opening, closed, opened = _clip_and_frames(subject, root / "silence then speech.wav")
    (root / "outputs").mkdir(parents=True, exist_ok=True)
    config = _train(subject, root / "outputs")
    with _one_thread():
        pipeline, run_config, checkpoint, _ = load_trained_pipeline(config, device="cpu")
        make_mouth_move(pipeline, clip, closed, opened)
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        new = {k: v.detach().clone() for k, v in pipeline.state_dict().items()}
        if set(new) != set(state["pipeline"]):
            raise MouthFixtureError(f"state dict keys changed: {sorted(set(new) ^ set(state['pipeline']))[:5]}")
        state["pipeline"] = new
        torch.save(state, checkpoint)
        del pipeline
        # from disk, as ns-viewer will load it
        loaded, _, reloaded, _ = load_trained_pipeline(config, device="cpu")
        assert reloaded == latest_checkpoint(checkpoint.parent)[0]
        changed = check_mouth(loaded, clip, closed, opened)
        image = loaded.datamanager.train_dataset.cameras[0:1]
        pixels = int(image.width.item() * image.height.item())
    return MouthFixture(config=config, subject=subject, clip=clip, num_frames=len(opening), closed_frame=closed,
                        open_frame=opened, changed_pixels=changed, image_pixels=pixels)  # fmt: skip


if __name__ == "__main__":  # python tests/mouth_fixture.py OUT_DIR: build it and say how it went
    built = build_mouth_fixture(Path(sys.argv[1]))
    print(built)
