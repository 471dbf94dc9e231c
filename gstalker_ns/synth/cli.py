"""`gstalker-synth OUT/`: write the project's procedural talking subject as a training folder."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import List, NoReturn, Optional


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _int_in(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    from gstalker_ns.synth.subject import MAX_SIZE, MAX_SUPERSAMPLE

    p = _Parser(
        prog="gstalker-synth",
        description=(
            "Generate the project's procedural talking subject: a ray-cast 3D head and shoulders that "
            "speaks (espeak-ng/festival speech when installed, else a procedural voice), moves its head "
            "and blinks, in front of a static background. Writes a ready training folder "
            "(frames/, masks/, background.png, audio.wav, audio_features.npy, transforms.json, "
            "ground_truth.json) and talk.mp4 into OUT. Deterministic for a seed."
        ),
        epilog="Example: gstalker-synth data/synth --duration 10 --size 512  then  ns-train gstalker --data data/synth",
    )
    p.add_argument("out", metavar="OUT", help="output folder (created; must be empty unless --force)")
    p.add_argument("--duration", type=_positive_float, default=10.0, help="clip length in seconds (default: 10)")
    p.add_argument("--size", type=_int_in(16, MAX_SIZE), default=512, help="frame width and height in pixels (default: 512)")
    p.add_argument("--seed", type=_int_in(0, 2**31 - 1), default=0, help="seed of the look, motion, blinks and speech (default: 0)")
    p.add_argument("--fps", type=_positive_float, default=25.0, help="video frame rate (default: 25)")
    p.add_argument(
        "--audio-source",
        choices=["auto", "espeak", "festival", "procedural"],
        default="auto",
        help="speech source: espeak-ng, festival (text2wave), or a procedural voice-like signal; "
        "auto picks the first available in that order (default: auto)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="torch device for rendering: auto (CUDA if available, else CPU), cpu, cuda, cuda:N (default: auto)",
    )
    p.add_argument(
        "--supersample",
        type=_int_in(1, MAX_SUPERSAMPLE),
        default=None,
        help="anti-aliasing: N x N samples on edge pixels (default: 2 at size >= 256, 3 below)",
    )
    p.add_argument(
        "--no-video",
        action="store_true",
        help="do not write talk.mp4 (by default it is written when PyAV or imageio-ffmpeg is installed, "
        "and skipped with a warning otherwise)",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT, replacing the files this tool writes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from gstalker_ns.synth.subject import SynthError, SynthWarning, generate

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = generate(
                args.out,
                duration=args.duration,
                size=args.size,
                seed=args.seed,
                fps=args.fps,
                device=args.device,
                audio_source=args.audio_source,
                supersample=args.supersample,
                video=not args.no_video,
                force=args.force,
                progress=not args.quiet,
            )
    except SynthError as exc:
        print(f"gstalker-synth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gstalker-synth: interrupted", file=sys.stderr)
        return 130
    for w in caught:
        if issubclass(w.category, SynthWarning):
            print(f"gstalker-synth: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    per_frame = summary.render_seconds / max(summary.num_frames, 1)
    print(
        f"gstalker-synth: wrote {summary.num_frames} frames of {summary.width}x{summary.height} at {summary.fps:g} fps "
        f"({summary.duration:g} s) to {summary.out_dir}"
    )
    print(f"  audio source: {summary.audio_source}; device: {summary.device}; supersample: {summary.supersample}")
    print(f"  files: {', '.join(summary.files)}")
    if summary.video_note and not summary.video_written:
        print(f"  note: {summary.video_note}")
    print(f"  time: {summary.seconds:.1f} s total, {per_frame:.3f} s/frame rendering")
    print(f"  train: ns-train gstalker --data {summary.out_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
