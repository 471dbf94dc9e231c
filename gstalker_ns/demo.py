"""`gstalker-demo`: the whole pipeline on the embedded synthetic subject, with nothing downloaded.

1. `gstalker-synth` makes the subject (video + training folder) unless it is already there;
2. `ns-train gstalker --data SUBJECT` trains with the preset's arguments (the real nerfstudio path);
3. `gstalker-eval`'s analysis scores the held-out frames (PSNR/SSIM, face-mesh lip sync: the same
   `mouth_opening_correlation` that gstalker-eval reports on any run);
4. the avatar speaks a clip it never heard (new synthetic speech, another seed), and
   `results/demo.mp4` shows, with sound: ground truth | render on the held-out frames, then the
   new clip.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import yaml

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
NEW_SPEECH_SECONDS = 6.0
NEW_SPEECH_SEED_OFFSET = 7919  # another seed: other words, never in training
SHOWN = ("psnr", "ssim", "lmd", "mouth_opening_correlation", "blink_correlation", "av_offset_ms")


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


def _quiet_environment() -> Dict[str, str]:
    """The training subprocess's environment: dependencies' Future/Deprecation notices off."""
    env = dict(os.environ)
    quiet = [
        "ignore::FutureWarning",
        "ignore::DeprecationWarning",
        "ignore::UserWarning:nerfstudio.engine.optimizers",  # lr_scheduler.step() order, on the first step
        "ignore::UserWarning:nerfstudio.utils.writer",  # a tensor with requires_grad turned into a float
    ]
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), *quiet]))
    return env


def evaluate(config_path: Path, results: Path) -> Dict[str, Any]:
    """gstalker-eval's held-out render + analysis into `results` (metrics.json, plots, frames)."""
    from gstalker_ns.evaluation.cli import build_parser, run

    args = build_parser().parse_args(["--load-config", str(config_path), "--output-dir", str(results), "--quiet", "--no-video"])
    return run(args)


def speak_new_clip(config_path: Path, subject: Path, seed: int, results: Path, seconds: float = NEW_SPEECH_SECONDS):
    """Synthesise speech the avatar never heard and render it: (frames, wave at 16 kHz)."""
    from gstalker_ns.audio.io import write_wav
    from gstalker_ns.checkpoint import load_trained_pipeline
    from gstalker_ns.drive.audio import drive_from_wave, spec_from_extractor
    from gstalker_ns.drive.blink import blink_track
    from gstalker_ns.drive.poses import pose_track
    from gstalker_ns.render.video import driven, render_frames
    from gstalker_ns.synth.speech import synthesize_speech

    source = json.loads((subject / "ground_truth.json").read_text())["audio"]["source"]
    speech = synthesize_speech(seconds, seed + NEW_SPEECH_SEED_OFFSET, source)
    write_wav(results / "new_speech.wav", speech.wave, speech.sample_rate)
    pipeline, _, _, _ = load_trained_pipeline(config_path)
    model = pipeline.model
    drive = drive_from_wave(speech.wave, speech.sample_rate, spec_from_extractor(model.audio_extractor), source="new speech")
    blink = blink_track("natural", drive.num_frames, drive.fps, model.blink_table.cpu().numpy(), seed=seed)
    poses = pose_track("train", drive.num_frames, drive.fps, drive.fps, pipeline.datamanager.train_dataset.cameras)
    with driven(model, drive.features, blink):
        frames = list(render_frames(model, poses, range(drive.num_frames)))
    return frames, drive.wave, speech


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """A dark panel the size of `image` with a caption (the left half of the new-speech part)."""
    from PIL import Image, ImageDraw

    panel = Image.new("RGB", (image.shape[1], image.shape[0]), (24, 26, 32))
    draw = ImageDraw.Draw(panel)
    y = 4
    for line in text.split("\n"):
        draw.text((4, y), line, fill=(230, 230, 230))
        y += 12
    return np.asarray(panel)


def write_demo_video(results: Path, subject: Path, new_frames: List[np.ndarray], new_wave: np.ndarray) -> Path:
    """demo.mp4: held-out ground truth | render with the clip's sound, then the new speech."""
    from gstalker_ns.audio.io import read_wav
    from gstalker_ns.evaluation.store import GT, FrameStore
    from gstalker_ns.media.video import write_mp4
    from gstalker_ns.render.frames import audio_for_frames, side_by_side

    store = FrameStore.open(results / "frames")
    fps = float(store.index["fps"])
    held = [side_by_side([store.read(GT, f), store.read("gstalker", f)]) for f in store.frame_idx]
    wave, rate = read_wav(subject / "audio.wav")
    sound = audio_for_frames(wave, rate, store.frame_idx[0], len(held), fps)
    caption = _label(new_frames[0], "new speech\n(never heard\nin training)")
    new = [side_by_side([caption, f]) for f in new_frames]
    new_sound = audio_for_frames(new_wave, 16000, 0, len(new), fps)
    if rate != 16000:
        from gstalker_ns.audio.io import _resample

        sound = _resample(sound, rate, 16000)
    return write_mp4(results / "demo.mp4", held + new, fps, audio=np.concatenate([sound, new_sound]), sample_rate=16000)


def summary_lines(payload: Dict[str, Any]) -> List[str]:
    """The headline numbers; an unavailable one says why (never NaN)."""
    method = payload["methods"]["gstalker"]
    lines = [f"held-out frames: {payload['num_frames']}"]
    for key in SHOWN:
        value = method["summary"].get(key)
        if value is None:
            lines.append(f"{key}: unavailable ({method['unavailable'].get(key, 'not computed')})")
        else:
            lines.append(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gstalker-demo",
        description="Generate the synthetic subject, train gstalker on it (CPU-sized preset), score the held-out frames "
        "and make it speak a clip it never heard (results/demo.mp4, with sound).",
    )
    parser.add_argument("--preset", type=Path, default=REPO_CONFIGS / "cpu-demo.yaml", help="YAML preset (synth options and ns-train arguments)")
    parser.add_argument("--output", type=Path, default=Path("runs/demo"), help="where the subject, checkpoints and results go")
    parser.add_argument("--retrain", action="store_true", help="train again even if a finished run exists")
    parser.add_argument(
        "--new-speech-seconds", type=float, default=NEW_SPEECH_SECONDS, help="length of the never-heard clip (default 6)"
    )
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", category=FutureWarning)  # nerfstudio's import-time torch.amp notices
    warnings.filterwarnings("ignore", category=DeprecationWarning)
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
        completed = subprocess.run(command, env=_quiet_environment())
        if completed.returncode != 0:
            print(f"[demo] ns-train failed with exit code {completed.returncode}", file=sys.stderr)
            return completed.returncode

    results = output / "results"
    print("[demo] rendering and scoring the held-out frames (gstalker-eval) ...", flush=True)
    payload = evaluate(config_path, results)
    print("[demo] the avatar speaks a clip it never heard ...", flush=True)
    frames, wave, speech = speak_new_clip(
        config_path, subject, int(preset["synth"].get("seed", 0)), results, args.new_speech_seconds
    )
    video = write_demo_video(results, subject, frames, wave)
    print("\n".join("  " + line for line in summary_lines(payload)))
    print(
        f"[demo] done in {time.perf_counter() - started:.0f} s.\n"
        f"  watch (with sound): {video}  (held-out ground truth | render, then new {speech.source} speech)\n"
        f"  metrics: {results / 'metrics.json'}; plot: {results / 'mouth_opening.png'}; config: {config_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
