"""`gstalker-eval`: measure a trained run the same way every time, next to a baseline, with pictures.

    gstalker-eval --load-config outputs/person/gstalker/RUN/config.yml
    gstalker-eval --load-config CONFIG --baseline splatfacto            # trains splatfacto on the same frames
    gstalker-eval --load-config CONFIG --baseline splatfacto --baseline-config SPLATFACTO_RUN/config.yml
    gstalker-eval --lipsync-from OUT                                     # finish on a machine with face mesh

Two steps: (1) render the split into OUT/frames (ground truth, label maps, each method's renders,
the clip's audio; see gstalker_ns.evaluation.store), (2) compute every metric from those frames
and write OUT/metrics.json, OUT/mouth_opening.png, OUT/best_worst_frames.png and
OUT/side_by_side.mp4 (gstalker_ns.evaluation.analysis). Step 2 needs no checkpoint, so a machine
without mediapipe/PyAV/ffmpeg (the GPU machine) can render, report what it could not compute,
and another machine finishes with --lipsync-from.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from gstalker_ns.errors import GstalkerUserError

EXAMPLES = """examples:
  gstalker-eval --load-config outputs/person/gstalker/RUN/config.yml
  gstalker-eval --load-config CONFIG --split all --output-dir eval_all
  gstalker-eval --load-config CONFIG --baseline splatfacto --baseline-steps 20000
  gstalker-eval --load-config CONFIG --baseline splatfacto --baseline-config outputs/person/splatfacto/RUN/config.yml
  gstalker-eval --lipsync-from OUT          # re-run the analysis of OUT/frames here (e.g. where mediapipe is)

metrics (exact definitions in metrics.json and docs/evaluation.md):
  PSNR, SSIM, LPIPS    full frame and a face crop (one box per frame from the ground truth's face mesh,
                       else its label map; the same box for every method). LPIPS only with locally
                       cached AlexNet weights: never downloaded.
  LMD                  mean distance of the 40 lip landmarks (face mesh), each set mean-centred, in
                       pixels at 512; frames where either face is not found are counted.
  mouth opening corr.  Pearson correlation over time of render vs ground-truth mouth opening.
  AV offset            lag (ms, +-500, 1 ms steps) maximising the correlation of mouth opening and
                       audio energy, for each render and the ground truth; positive = video late.
                       Needs 4 s of frames with a face (--min-av-seconds): use --split all on short clips.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gstalker-eval",
        description=textwrap.fill(
            "Render the held-out frames (or any split) of a trained gstalker run and report image "
        "quality (PSNR/SSIM/LPIPS, full frame and face crop) and lip sync (LMD, mouth-opening correlation, "
        "audio-visual offset), optionally side by side with plain splatfacto trained on the same frames. "
        "Writes metrics.json, a mouth-opening plot, a grid of the worst and best frames and a side-by-side "
        "mp4 with sound.",
            width=100,
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("what to evaluate (one of)")
    source.add_argument("--load-config", type=Path, help="config.yml of a gstalker training run")
    source.add_argument(
        "--lipsync-from",
        type=Path,
        metavar="DIR",
        help="the output folder of an earlier gstalker-eval: recompute every metric and file from its saved "
        "frames without loading any checkpoint (use it where mediapipe / PyAV are installed)",
    )
    parser.add_argument(
        "--output-dir",
        "-o",
        type=Path,
        help="where results go (default: eval_SPLIT next to the config.yml; with --lipsync-from, that folder)",
    )
    parser.add_argument(
        "--split",
        choices=("test", "train", "all"),
        default="test",
        help="frames to evaluate: test = the held-out end of the clip (default), train, or all in clip order",
    )
    parser.add_argument("--max-frames", type=int, help="only the first N frames of the split (quick looks)")
    parser.add_argument(
        "--frames",
        metavar="RANGES",
        help="only these video frames of the split, e.g. 70-90,800-812 (inclusive ranges): a closer look at "
        "moments such as blinks",
    )
    parser.add_argument("--data", type=Path, help="the training folder, if it moved since training")
    base = parser.add_argument_group("baseline")
    base.add_argument(
        "--baseline",
        choices=("splatfacto",),
        help="also evaluate nerfstudio's plain splatfacto on the same frames and report both side by side",
    )
    base.add_argument(
        "--baseline-config", type=Path, help="config.yml of an existing splatfacto run on the same dataset (else one is trained)"
    )
    base.add_argument(
        "--baseline-steps",
        type=int,
        help="training iterations for the baseline (default: as many as the gstalker checkpoint had, the same budget)",
    )
    base.add_argument(
        "--retrain-baseline", action="store_true", help="train the baseline again even if OUT/baseline_run holds one"
    )
    parser.add_argument(
        "--min-av-seconds",
        type=float,
        default=4.0,
        help="frames with a face (in seconds) needed for an audio-visual offset (default 4; shorter stretches "
        "of real clips gave offsets off by hundreds of ms)",
    )
    parser.add_argument(
        "--also-tracked",
        action="store_true",
        help="also render the run driven by the clip's tracked expression instead of the audio (method 'gstalker_tracked'): "
        "how much of the lip-sync gap is the audio prediction and how much the renderer",
    )
    parser.add_argument("--no-video", action="store_true", help="skip the side-by-side mp4")
    parser.add_argument(
        "--discard-frames",
        action="store_true",
        help="delete OUT/frames at the end (they are kept by default so --lipsync-from can finish or redo the "
        "analysis elsewhere)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return parser


def _check(args: argparse.Namespace) -> None:
    if (args.load_config is None) == (args.lipsync_from is None):
        raise GstalkerUserError("pass either --load-config CONFIG (render and evaluate) or --lipsync-from DIR (re-analyse saved frames)")
    if args.lipsync_from is not None:
        for flag in ("baseline", "baseline_config", "baseline_steps", "max_frames", "frames", "data"):
            if getattr(args, flag):
                raise GstalkerUserError(f"--{flag.replace('_', '-')} does not apply to --lipsync-from (the frames are already rendered)")
        if args.split != "test":
            raise GstalkerUserError("--split does not apply to --lipsync-from (the frames are already rendered)")
    if (args.baseline_config is not None or args.baseline_steps is not None or args.retrain_baseline) and args.baseline is None:
        raise GstalkerUserError("--baseline-config/--baseline-steps/--retrain-baseline need --baseline splatfacto")
    if args.baseline_config is not None and (args.baseline_steps is not None or args.retrain_baseline):
        raise GstalkerUserError("--baseline-steps/--retrain-baseline train a baseline; drop them with --baseline-config")
    if args.baseline_steps is not None and args.baseline_steps < 1:
        raise GstalkerUserError(f"--baseline-steps must be at least 1, got {args.baseline_steps}")
    if not args.min_av_seconds >= 0:
        raise GstalkerUserError(f"--min-av-seconds must be 0 or more, got {args.min_av_seconds}")
    if args.frames is not None:
        args.frames = parse_frame_ranges(args.frames)
    if args.max_frames is not None and args.max_frames < 1:
        raise GstalkerUserError(f"--max-frames must be at least 1, got {args.max_frames}")
    # before the slow imports: the commonest mistake is a mistyped path
    for flag, path in (("--load-config", args.load_config), ("--baseline-config", args.baseline_config), ("--data", args.data)):
        if path is not None and not Path(path).exists():
            raise GstalkerUserError(f"{flag} {path}: not found; check the path")


def parse_frame_ranges(text: str) -> List[int]:
    """'70-90,800,805-812' -> the sorted video frame indices (ranges inclusive)."""
    frames = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise GstalkerUserError(f"--frames {text!r}: expected ranges like 70-90,800-812 (frame indices)") from None
        if a < 0 or b < a:
            raise GstalkerUserError(f"--frames {text!r}: {part} is not a range of frame indices (from <= to, both >= 0)")
        frames.update(range(a, b + 1))
    if not frames:
        raise GstalkerUserError(f"--frames {text!r}: names no frame")
    return sorted(frames)


def _free_memory() -> None:
    """After the caller dropped its pipeline: return its (GPU) memory before the next one loads."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


TRACKED = "gstalker_tracked"


def render_step(args: argparse.Namespace, out_dir: Path):
    """Load the run (and the baseline), render the split into out_dir/frames; returns the store."""
    from gstalker_ns.checkpoint import load_trained_pipeline
    from gstalker_ns.evaluation import render_pass
    from gstalker_ns.evaluation.store import FrameStore

    progress = not args.quiet
    pipeline, config, checkpoint, step = load_trained_pipeline(args.load_config, "gstalker", data=args.data)
    refs = render_pass.split_frames(pipeline, args.split, args.max_frames, args.frames)
    metadata = render_pass.clip_metadata(pipeline)
    camera = refs[0].dataset.cameras
    store = FrameStore.create(
        out_dir / "frames",
        split=args.split,
        fps=float(metadata.get("fps") or 25.0),
        width=int(camera.width[0]),
        height=int(camera.height[0]),
        frame_idx=[r.frame for r in refs],
    )
    _say(args, f"evaluating {len(refs)} frames of the {args.split} split of {args.load_config} (step {step})")
    render_pass.write_ground_truth(store, refs, progress)
    render_pass.store_clip_audio(store, pipeline)
    model_config = pipeline.model.config
    own = model_config.eval_expression  # what drives held-out frames in this run (audio by default)
    info = {"method": "gstalker", "config": str(args.load_config), "checkpoint": str(checkpoint), "step": step}
    render_pass.render_into(store, pipeline, "gstalker", refs, {**info, "expression": own}, progress)
    if args.also_tracked:  # the same run driven by the clip's tracked expression: the renderer's upper bound
        model_config.eval_expression = "tracked"
        try:
            render_pass.render_into(store, pipeline, TRACKED, refs, {**info, "expression": "tracked"}, progress)
        finally:
            model_config.eval_expression = own
    dataparser = pipeline.datamanager.config.dataparser
    del pipeline, refs
    _free_memory()
    if args.baseline is not None:
        _baseline(args, store, out_dir, dataparser, step)
    return store


def _baseline(args: argparse.Namespace, store, out_dir: Path, dataparser: Any, gstalker_step: int) -> None:
    from gstalker_ns.evaluation import baseline, render_pass

    method = args.baseline
    trained: Dict[str, Any] = {}
    if args.baseline_config is not None:
        config_path = args.baseline_config
    else:
        steps = args.baseline_steps or max(1, int(gstalker_step) + 1)
        trained = baseline.train_baseline(method, dataparser, out_dir / "baseline_run", steps, args.retrain_baseline, args.quiet)
        config_path = trained["config"]
        if not trained["trained_here"]:
            _say(args, f"using the {method} baseline already trained in {config_path.parent} (--retrain-baseline to train again)")
    pipeline, _, checkpoint, step = baseline.load_baseline(config_path, method, data=args.data)
    refs = render_pass.split_frames(pipeline, store.index["split"], args.max_frames, args.frames)
    frames = [r.frame for r in refs]
    if frames != store.frame_idx:
        raise GstalkerUserError(
            f"the {method} run {config_path} holds out other frames ({len(frames)}, from {frames[0]}) than the gstalker run "
            f"({len(store.frame_idx)}, from {store.frame_idx[0]}); train it on the same folder with the same --eval-fraction"
        )
    info = {"method": method, "config": str(config_path), "checkpoint": str(checkpoint), "step": step}
    if trained:
        info["trained_by_gstalker_eval"] = bool(trained["trained_here"])
    render_pass.render_into(store, pipeline, method, refs, info, not args.quiet)
    del pipeline, refs
    _free_memory()


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"[gstalker-eval] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from gstalker_ns.evaluation.analysis import analyse
    from gstalker_ns.evaluation.store import FrameStore

    if args.lipsync_from is not None:
        store = FrameStore.open(args.lipsync_from)
        out_dir = args.output_dir or store.root.parent
    else:
        config = Path(args.load_config)
        out_dir = args.output_dir or (config.parent if config.is_file() else config) / f"eval_{args.split}"
        render_step(args, Path(out_dir))
        store = FrameStore.open(Path(out_dir) / "frames")
    payload = analyse(store, Path(out_dir), video=not args.no_video, progress=not args.quiet, min_av_seconds=args.min_av_seconds)
    payload["output_dir"] = str(out_dir)
    if args.discard_frames:
        from gstalker_ns.data.layout import atomic_write_json

        shutil.rmtree(store.root, ignore_errors=True)
        payload["files"]["frames"] = None
        atomic_write_json(Path(out_dir) / "metrics.json", {k: v for k, v in payload.items() if k != "output_dir"})
    return payload


def print_report(payload: Dict[str, Any]) -> None:
    from gstalker_ns.evaluation.report import format_table

    out = Path(payload["output_dir"])
    print(format_table(payload))
    for name, method in list(payload["methods"].items()) + [("ground truth", payload["ground_truth"])]:
        for note in method.get("notes", []):
            print(f"note: {name}: {note}")
    notes = []
    for name, method in list(payload["methods"].items()) + [("ground truth", payload["ground_truth"])]:
        for key, reason in method["unavailable"].items():
            notes.append(f"  {name} {key}: {reason}")
    for key, reason in payload["unavailable"].items():
        notes.append(f"  {key}: {reason}")
    if notes:
        print("unavailable:")
        # one reason shared by many metrics is listed once per metric; keep the list short
        seen, short = set(), []
        for line in notes:
            reason = line.split(": ", 1)[1]
            if reason in seen:
                continue
            seen.add(reason)
            short.append(line)
        print("\n".join(short))
        if len(short) < len(notes):
            print(f"  (and {len(notes) - len(short)} more for the same reasons: see 'unavailable' in metrics.json)")
    files = [f for f in payload["files"].values() if f]
    print("wrote " + ", ".join(str(out / f) if not Path(f).is_absolute() else f for f in files))


def main(argv: Optional[List[str]] = None) -> int:
    from gstalker_ns.errors import install_excepthook

    install_excepthook()
    warnings.filterwarnings("ignore", category=FutureWarning)  # nerfstudio's import-time torch.amp notices
    warnings.filterwarnings("ignore", message="LPIPS unavailable")  # said once, in the report's "unavailable"
    args = build_parser().parse_args(argv)
    try:
        _check(args)
        payload = run(args)
    except GstalkerUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_report(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
