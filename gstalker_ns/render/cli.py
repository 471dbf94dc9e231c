"""`gstalker-render`: an mp4 of a trained avatar speaking any audio, sound muxed in, frames in sync.

    gstalker-render --load-config outputs/person/gstalker/RUN/config.yml --audio speech.wav --output speech.mp4
    gstalker-render --load-config CONFIG --side-by-side --output heldout.mp4   # ground truth | render

Output frame k shows time k/fps and is driven by the audio window centred there; the video has
round(duration * fps) frames and the sound is the input audio itself, so both end together.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np

from gstalker_ns.drive.blink import BLINK_MODES
from gstalker_ns.drive.poses import POSE_SOURCES
from gstalker_ns.errors import GstalkerUserError

DECODE_RATE = 16000
"""Audio is decoded at this rate (every extractor so far uses it; others are resampled from it)."""

EXAMPLES = """examples:
  gstalker-render --load-config outputs/person/gstalker/RUN/config.yml --audio speech.wav -o speech.mp4
  gstalker-render --load-config CONFIG --audio talk.m4a --pose fixed --frame 120 --blink off -o still.mp4
  gstalker-render --load-config CONFIG --audio speech.flac --pose camera-path --camera-path orbit.json -o orbit.mp4
  gstalker-render --load-config CONFIG --side-by-side -o heldout.mp4
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gstalker-render",
        description="Render a trained gstalker avatar speaking an audio clip, as an H.264 mp4 with the audio "
        "muxed in (AAC). Reads wav/mp3/flac/m4a/ogg (or a video's sound) at any sample rate, mono or stereo.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--load-config", type=Path, required=True, help="config.yml of a gstalker training run")
    parser.add_argument("--audio", type=Path, help="the speech to drive the avatar with")
    parser.add_argument("--output", "-o", type=Path, help="the mp4 to write (default: <audio name>.gstalker.mp4)")
    parser.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    parser.add_argument(
        "--pose",
        choices=POSE_SOURCES,
        default="train",
        help="head pose: the training poses (looped back and forth at real speed), the held-out ones, "
        "one fixed frame (--frame N), or a viewer camera path (--camera-path FILE) stretched over the audio "
        "(default train)",
    )
    parser.add_argument("--frame", type=int, help="video frame index of the dataset for --pose fixed")
    parser.add_argument("--camera-path", type=Path, help="camera path JSON exported from the nerfstudio viewer")
    parser.add_argument(
        "--blink",
        choices=BLINK_MODES,
        default="natural",
        help="eye blinks: a natural random schedule (about 17 per minute), the training clip's own track, "
        "or none (default natural)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the natural blink schedule")
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="render the held-out (val) split with its own audio as ground truth | render, instead of --audio",
    )
    parser.add_argument("--resolution-scale", type=float, default=1.0, help="scale the output size (default 1)")
    parser.add_argument("--max-seconds", type=float, help="use only the first S seconds of the audio")
    parser.add_argument("--crf", type=int, default=18, help="H.264 quality, 0 (lossless) to 51 (default 18)")
    parser.add_argument("--data", type=Path, help="the run's dataset folder, if it moved since training")
    parser.add_argument("--report", type=Path, help="also write frame count, timing and throughput as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _check_arguments(args: argparse.Namespace) -> Path:
    """Cheap checks before the (slow) checkpoint load; returns the output path."""
    if args.side_by_side:
        if args.audio is not None:
            raise GstalkerUserError("--side-by-side renders the held-out frames with their own audio; drop --audio")
        if args.pose != "train":
            raise GstalkerUserError("--side-by-side always uses the held-out poses; drop --pose")
    elif args.audio is None:
        raise GstalkerUserError("pass --audio CLIP (the speech to render), or --side-by-side for the held-out frames")
    elif not args.audio.is_file():
        raise GstalkerUserError(f"{args.audio}: audio file not found; check the path")
    if not args.fps > 0 or args.fps > 240:
        raise GstalkerUserError(f"--fps {args.fps} is out of range; use a frame rate between 1 and 240 (e.g. 25)")
    if not 0.05 <= args.resolution_scale <= 4:
        raise GstalkerUserError(f"--resolution-scale {args.resolution_scale} is out of range; use 0.05..4")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise GstalkerUserError("--max-seconds must be positive")
    if args.pose == "fixed" and args.frame is None:
        raise GstalkerUserError("--pose fixed needs --frame N (a video frame index of the dataset)")
    if args.pose == "camera-path" and args.camera_path is None:
        raise GstalkerUserError("--pose camera-path needs --camera-path FILE (exported from the viewer's Render panel)")
    if args.camera_path is not None and args.pose != "camera-path":
        raise GstalkerUserError("--camera-path is used with --pose camera-path; add that or drop --camera-path")
    output = args.output
    if output is None:
        output = Path(f"{args.audio.stem}.gstalker.mp4") if args.audio else Path("heldout_side_by_side.mp4")
    if output.suffix.lower() != ".mp4":
        raise GstalkerUserError(f"--output {output}: must end in .mp4")
    if output.is_dir():
        raise GstalkerUserError(f"--output {output}: is a folder; name the mp4 file to write")
    folder = next((p for p in [output.absolute().parent, *output.absolute().parents] if p.exists()), Path("/"))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise GstalkerUserError(f"--output {output}: cannot write into {folder}; choose a folder you can write to")
    protected = [args.audio, args.load_config, args.camera_path]
    if any(p is not None and p.exists() and output.exists() and output.resolve() == p.resolve() for p in protected):
        raise GstalkerUserError(f"--output {output}: is one of the inputs; choose another file name")
    return output


def render_speech(pipeline, args: argparse.Namespace, output: Path, wave: np.ndarray, sample_rate: int):
    """--audio (already decoded to `wave`): featurise it with the checkpoint's extractor and render."""
    from gstalker_ns.drive.audio import drive_from_wave, spec_from_extractor
    from gstalker_ns.drive.blink import blink_track
    from gstalker_ns.drive.poses import pose_track
    from gstalker_ns.render.video import driven, render_frames, write_video

    model = pipeline.model
    datamanager = pipeline.datamanager
    metadata = datamanager.train_dataparser_outputs.metadata
    clip_fps = float(metadata.get("fps") or 25.0)
    spec = spec_from_extractor(model.audio_extractor, origin=str(args.load_config))
    if args.max_seconds is not None:
        wave = wave[: int(round(args.max_seconds * sample_rate))]
    drive = drive_from_wave(wave, sample_rate, spec, fps=args.fps, source=str(args.audio))
    num_frames = drive.num_frames
    dataset_blink = np.asarray(model.blink_table.detach().cpu().numpy())
    blink = blink_track(args.blink, num_frames, args.fps, dataset_blink, seed=args.seed, clip_fps=clip_fps)
    poses = pose_track(
        args.pose,
        num_frames,
        args.fps,
        clip_fps,
        datamanager.train_dataset.cameras,
        datamanager.eval_dataset.cameras,
        frame=args.frame,
        camera_path=args.camera_path,
    )
    with driven(model, drive.features, blink):
        frames = render_frames(model, poses, range(num_frames), args.resolution_scale)
        return write_video(
            output, frames, num_frames, args.fps, drive.wave, drive.sample_rate, crf=args.crf,
            show_progress=not args.quiet, desc=f"render {args.audio.name}",
        )


def render_held_out_side_by_side(pipeline, args: argparse.Namespace, output: Path):
    """--side-by-side: the val split in clip order with the clip's own audio, ground truth | render."""
    import torch

    from gstalker_ns.audio.io import load_audio
    from gstalker_ns.drive.audio import spec_from_extractor
    from gstalker_ns.drive.poses import PoseTrack, frame_indices
    from gstalker_ns.render.frames import audio_for_frames, read_rgb
    from gstalker_ns.render.video import render_frames, with_ground_truth, write_video

    model = pipeline.model
    datamanager = pipeline.datamanager
    metadata = datamanager.train_dataparser_outputs.metadata
    clip_fps = float(metadata.get("fps") or 25.0)
    if args.fps != 25.0 and abs(args.fps - clip_fps) > 1e-6:
        raise GstalkerUserError(f"--side-by-side plays the clip at its own {clip_fps:g} fps; drop --fps")
    dataset = datamanager.eval_dataset
    order = torch.argsort(frame_indices(dataset.cameras)).tolist()
    if args.max_seconds is not None:
        order = order[: max(1, int(round(args.max_seconds * clip_fps)))]
    rows = frame_indices(dataset.cameras)[order].tolist()
    audio_path = metadata.get("audio_path")
    if not audio_path or not Path(audio_path).is_file() or Path(audio_path).stat().st_size == 0:
        raise GstalkerUserError(f"the dataset has no readable audio file ({audio_path}); --side-by-side needs it")
    spec = spec_from_extractor(model.audio_extractor, origin=str(args.load_config))
    wave = load_audio(audio_path, sample_rate=spec.sample_rate)
    audio = np.concatenate([audio_for_frames(wave, spec.sample_rate, r, 1, clip_fps) for r in rows])

    poses = PoseTrack.from_cameras(dataset.cameras[torch.tensor(order)])
    height = int(round(poses.height * args.resolution_scale))
    width = int(round(poses.width * args.resolution_scale))
    truth = (read_rgb(dataset.image_filenames[i], size=(height, width)) for i in order)
    frames = with_ground_truth(render_frames(model, poses, rows, args.resolution_scale), truth)
    return write_video(
        output, frames, len(order), clip_fps, audio, spec.sample_rate, crf=args.crf,
        show_progress=not args.quiet, desc="render held-out",
    )


def main(argv: Optional[List[str]] = None) -> int:
    from gstalker_ns.errors import install_excepthook

    install_excepthook()
    warnings.filterwarnings("ignore", category=FutureWarning)  # nerfstudio's import-time torch.amp notices
    args = build_parser().parse_args(argv)
    try:
        output = _check_arguments(args)
        wave = None
        if args.audio is not None:  # decode first: a bad file fails in a second, not after the model load
            from gstalker_ns.audio.io import load_audio

            wave = load_audio(args.audio, sample_rate=DECODE_RATE)
        from gstalker_ns.checkpoint import load_trained_pipeline

        pipeline, _, checkpoint, step = load_trained_pipeline(args.load_config, "gstalker", data=args.data)
        if args.side_by_side:
            report = render_held_out_side_by_side(pipeline, args, output)
        else:
            report = render_speech(pipeline, args, output, wave, DECODE_RATE)
    except GstalkerUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {report.output}: {report.num_frames} frames at {report.fps:g} fps, "
        f"{report.audio_seconds:.2f} s of audio; {report.frames_per_second:.1f} frames/s (render + encode)"
    )
    if args.report is not None:
        from gstalker_ns.data.layout import atomic_write_json

        atomic_write_json(args.report, {**report.as_dict(), "checkpoint": str(Path(checkpoint).resolve()), "step": step})
    return 0


if __name__ == "__main__":
    sys.exit(main())
