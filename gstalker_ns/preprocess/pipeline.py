"""`gstalker-process VIDEO OUT/`: every stage, in order, into one training folder.

decode (25 fps frames, 16 kHz audio) -> landmarks (face mesh, gaps filled) -> crop (one square box
for the clip) -> head poses -> label masks -> background plate -> audio features -> transforms.json.

Stage outputs are cached in OUT/.gstalker-cache so an interrupted run resumes where it stopped;
the training folder's transforms.json is written last, so a folder without it is never taken for a
finished one. The input video is only read.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from gstalker_ns.data import layout as L
from gstalker_ns.errors import GstalkerUserError
from gstalker_ns.progress import progress_bar

CACHE_DIR = ".gstalker-cache"
OUR_FILES = ("frames", "masks", "previews", "background.png", "audio.wav", "audio_features.npy", "face_landmarks.npz", L.TRANSFORMS_FILE, "process_report.json")


class ProcessError(GstalkerUserError, ValueError):
    """The output folder cannot be used (e.g. it holds someone else's files)."""


@dataclass
class ProcessSummary:
    out_dir: Path
    num_frames: int
    kept_frames: int
    size: int
    seconds: float
    video_seconds: float
    messages: List[str] = field(default_factory=list)
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    previews: List[Path] = field(default_factory=list)
    audio_offset: str = ""

    @property
    def real_time_factor(self) -> float:
        """Video seconds processed per wall-clock second (> 1: faster than real time)."""
        return self.video_seconds / max(self.seconds, 1e-9)


def check_output_folder(out_dir: Path, video: Path) -> None:
    """Refuse an output folder that holds files we did not write (we never delete user data)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ProcessError(f"{out_dir}: exists and is not a folder; choose another output folder")
    if out_dir.is_dir():
        foreign = [p.name for p in out_dir.iterdir() if p.name not in OUR_FILES + (CACHE_DIR, video.name)]
        if foreign:
            raise ProcessError(
                f"{out_dir}: already holds {', '.join(sorted(foreign)[:3])}{'...' if len(foreign) > 3 else ''}; "
                "use an empty or new output folder"
            )


def _write_cropped_frames(frame_paths: List[Path], box, frames_out: Path, progress: bool) -> None:
    """Crop + resize every decoded frame into the training folder (copies when the box is identity)."""
    import cv2

    frames_out.mkdir(parents=True, exist_ok=True)
    with progress_bar(len(frame_paths), "crop", progress) as bar:
        for src in frame_paths:
            dst = frames_out / src.name
            if box.is_identity:
                L.atomic_write_bytes(dst, src.read_bytes())
            else:
                image = cv2.imread(str(src), cv2.IMREAD_COLOR)
                ok, encoded = cv2.imencode(".jpg", box.apply(image), [cv2.IMWRITE_JPEG_QUALITY, 95])
                if not ok:
                    raise RuntimeError(f"could not encode {dst}")
                L.atomic_write_bytes(dst, encoded.tobytes())
            bar.update(1)


def shift_audio(wave: np.ndarray, sample_rate: int, offset_ms: float) -> np.ndarray:
    """Re-align audio that lags (offset > 0) or leads (offset < 0) the lips; the length is kept.

    A clip whose sound is `offset_ms` behind the picture is fixed by dropping that much from the
    start of the audio (and padding silence at the end), so feature window k sits on frame k's speech.
    """
    shift = int(round(abs(offset_ms) * sample_rate / 1000.0))
    if shift == 0:
        return wave
    silence = np.zeros(min(shift, len(wave)), dtype=wave.dtype)
    if offset_ms > 0:
        return np.concatenate([wave[shift:], silence])
    return np.concatenate([silence, wave[: len(wave) - shift]])


def audio_sequence(wave: np.ndarray, rate: int):
    """The clip's encoder sequence as recorded (before any re-alignment): what the offset is
    estimated from, and the features themselves when no shift is applied. It depends on the
    sound alone, so `process_video` computes it in a thread while the video stages run."""
    from gstalker_ns.audio.features import default_feature_spec, whisper_sequence
    from gstalker_ns.audio.io import _resample

    spec = default_feature_spec()
    wave16 = wave if rate == spec.sample_rate else _resample(wave, rate, spec.sample_rate)
    return whisper_sequence(wave16, spec)


def align_audio(
    wave: np.ndarray,
    rate: int,
    num_frames: int,
    fps: float,
    track,
    valid: np.ndarray,
    audio_offset_ms: Optional[float],
    sequence: Optional[tuple] = None,
):
    """(features table, the re-aligned wave, offset record): the sound is shifted by the user's
    `audio_offset_ms`, or by the offset estimated from the clip itself when that is None.
    `sequence`: `audio_sequence(wave, rate)` if already computed."""
    from gstalker_ns.audio.features import default_feature_spec, extract_features
    from gstalker_ns.data.layout import split_indices
    from gstalker_ns.preprocess.av_offset import OffsetEstimate, estimate_offset

    spec = default_feature_spec()
    if audio_offset_ms is None:
        sequence, feature_rate = sequence if sequence is not None else audio_sequence(wave, rate)
        # only training frames (the default split's) inform the estimate, and only tracked ones
        rows = [r for r in split_indices(num_frames, 1.0 / 11.0, "train") if valid[r]]
        estimate = estimate_offset(sequence, feature_rate, track.head_points, track.inner_lips, rows, fps, spec.window, spec.lookahead)
        estimate = estimate or OffsetEstimate(0.0, 0.0, "auto (not applied: clip too short to tell)")
    else:
        estimate = OffsetEstimate(float(audio_offset_ms), float(audio_offset_ms), "user")
    wave = shift_audio(wave, rate, estimate.applied_ms)
    if estimate.applied_ms == 0.0 and audio_offset_ms is None:
        from gstalker_ns.audio.features import window_features

        table = window_features(sequence, num_frames, spec.fps, feature_rate, spec.window, spec.lookahead)
    else:
        table = extract_features(wave, spec, num_frames=num_frames, wave_sample_rate=rate)
    return spec, table, wave, estimate


def _import_quietly(name: str) -> None:
    """Import a module ahead of its use; a failure is left for the stage that needs it to report."""
    import importlib

    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - the real import raises it again, with the stage's message
        pass


def process_video(
    video: Path, out_dir: Path, size: int = 512, progress: bool = True, audio_offset_ms: Optional[float] = None
) -> ProcessSummary:
    """Run every stage; returns what was written and how long each stage took."""
    from gstalker_ns.audio.io import read_wav, write_wav
    from gstalker_ns.expression.landmarks import EXPRESSION_FILE, face_mesh_track
    from gstalker_ns.preprocess.background import PlateSamples, background_plate, write_background
    from gstalker_ns.preprocess.crop import choose_crop
    from gstalker_ns.preprocess.decode import decode_video
    from gstalker_ns.preprocess.landmarks import (
        blink_from_ear,
        eye_aspect_ratio,
        fill_missing,
        inner_lip_distance,
        landmarks_stage,
    )
    from gstalker_ns.preprocess.masks import list_frames, masks_stage
    from gstalker_ns.preprocess.pose import estimate_poses
    from gstalker_ns.preprocess.previews import (
        BACKGROUND_FILE,
        PREVIEWS_DIR,
        write_background_preview,
        write_previews,
    )

    video, out_dir = Path(video), Path(out_dir)
    check_output_folder(out_dir, video)
    cache = out_dir / CACHE_DIR
    started = time.perf_counter()
    times: Dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        times[name] = round(now - since, 2)
        return now

    t = started
    # mediapipe's import (about a second) overlaps the decoding, which runs mostly in PyAV's C code
    importer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gstalker-import")
    importer.submit(_import_quietly, "mediapipe")
    importer.submit(_import_quietly, "matplotlib.figure")
    importer.shutdown(wait=False)
    decoded = decode_video(video, cache / "decode", progress=progress)
    t = lap("decode", t)
    # the sound's own part of the audio stage needs no video: it runs on the core that face
    # tracking (one graph, one frame after another) leaves idle
    wave, rate = read_wav(decoded.audio_path)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gstalker-audio")
    sequence = pool.submit(audio_sequence, wave, rate) if audio_offset_ms is None else None
    pool.shutdown(wait=False)
    raw = landmarks_stage(decoded.frames_dir, cache / "landmarks", progress=progress)
    track, report = fill_missing(raw, source=video.name, fps=decoded.fps)
    t = lap("landmarks", t)

    box = choose_crop(track.points, track.width, track.height, out_size=size)
    _write_cropped_frames(decoded.frame_paths, box, out_dir / "frames", progress)
    points = box.map_points(track.points)
    z = track.z * box.scale
    t = lap("crop", t)

    # head poses (landmarks only) are fitted while the masks are segmented (frames only)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gstalker-poses") as poses_pool:
        poses_job = poses_pool.submit(estimate_poses, points, z, track.valid, box.out_size, box.out_size)
        # the background plate's sampled frames are kept while each frame and its labels are in memory
        samples = PlateSamples(len(list_frames(out_dir / "frames")))
        masks_dir = masks_stage(out_dir / "frames", points, cache / "masks", progress=progress, on_frame=samples.add)
        masks_out = out_dir / "masks"
        masks_out.mkdir(exist_ok=True)
        for src in sorted(Path(masks_dir).glob("*.png")):
            L.atomic_write_bytes(masks_out / src.name, src.read_bytes())
        poses = poses_job.result()
    t = lap("poses_and_masks", t)

    # the previews that need no background plate are drawn while the plate is computed
    blink = np.nan_to_num(blink_from_ear(eye_aspect_ratio(points)), nan=0.0)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gstalker-previews") as previews_pool:
        early_previews = previews_pool.submit(
            write_previews, out_dir, out_dir / "frames", masks_out, points, poses, blink,
            inner_lip_distance(points), None, None, track.valid, decoded.fps,
        )  # fmt: skip
        plate, never_seen = background_plate(out_dir / "frames", masks_dir, samples=samples)
        del samples
        write_background(out_dir / "background.png", plate)
        t = lap("background", t)

        expression = face_mesh_track(points, z, poses.camera_to_world, poses.focal, poses.cx, poses.cy)
        expression.save(out_dir / EXPRESSION_FILE)
        spec, table, wave, offset = align_audio(
            wave, rate, decoded.num_frames, decoded.fps, expression, track.valid, audio_offset_ms,
            sequence.result() if sequence is not None else None,
        )  # fmt: skip
        L.atomic_save_npy(out_dir / "audio_features.npy", table)
        write_wav(out_dir / "audio.wav", wave, rate)
        t = lap("audio_features", t)
        overlays, tracks = early_previews.result()

    frames = [
        L.FrameEntry(
            frame_idx=k,
            file_path=f"frames/{decoded.frame_path(k).name}",
            mask_path=f"masks/{decoded.frame_path(k).name.rsplit('.', 1)[0]}.png",
            camera_to_world=poses.camera_to_world[k],
            blink=float(blink[k]),
        )
        for k in range(decoded.num_frames)
        if track.valid[k]
    ]
    previews = [overlays, write_background_preview(out_dir / PREVIEWS_DIR / BACKGROUND_FILE, plate, never_seen), tracks]
    t = lap("previews", t)
    messages = list(report.messages)
    if never_seen.mean() > 0:
        messages.append(f"{100 * never_seen.mean():.0f}% of the background plate was never seen and is inpainted")
    L.atomic_write_json(
        out_dir / "process_report.json",
        {
            "video": str(video),
            "crop": box.to_json(),
            "focal": poses.focal,
            "reprojection_error_px": {
                "median": float(np.nanmedian(poses.reprojection_error)),
                "max": float(np.nanmax(poses.reprojection_error)),
                "per_frame": np.round(poses.reprojection_error, 3).tolist(),
            },
            "frames_without_face": int((~track.valid).sum()),
            "audio_offset": offset.to_json(),
            "messages": messages,
            "stage_seconds": times,
        },
    )
    L.write_transforms(
        out_dir,
        fps=decoded.fps,
        width=box.out_size,
        height=box.out_size,
        fl_x=poses.focal,
        fl_y=poses.focal,
        cx=poses.cx,
        cy=poses.cy,
        frames=frames,
        audio_extractor=spec.to_json(),
        head_radius=poses.head_radius,
        extra={
            "source": "gstalker-process",
            "crop": box.to_json(),
            "video": video.name,
            "expression": EXPRESSION_FILE,
            "audio_offset": offset.to_json(),
        },
    )
    total = time.perf_counter() - started
    return ProcessSummary(
        out_dir=out_dir,
        num_frames=decoded.num_frames,
        kept_frames=len(frames),
        size=box.out_size,
        seconds=total,
        video_seconds=decoded.duration_s,
        messages=messages,
        stage_seconds=times,
        previews=previews,
        audio_offset=f"{offset.applied_ms:+.0f} ms applied ({offset.source}; estimate {offset.offset_ms:+.0f} ms)",
    )


def remove_cache(out_dir: Path) -> None:
    """Delete the stage cache (only our own folder inside OUT)."""
    shutil.rmtree(Path(out_dir) / CACHE_DIR, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    """`gstalker-process VIDEO OUT/` command line."""
    import argparse
    import sys

    from gstalker_ns import _compat

    _compat.apply_for_preprocessing()
    parser = argparse.ArgumentParser(
        prog="gstalker-process",
        description=(
            "Turn a talking-portrait video into a gstalker training folder: 25 fps frames, 16 kHz audio and "
            "features, head poses, masks and a background plate. Offline; no licence-gated models. "
            "Interrupted runs resume from the last finished stage."
        ),
    )
    parser.add_argument("video", type=Path, help="input video (any frame rate; must contain speech audio)")
    parser.add_argument("out", type=Path, help="output training folder (new or empty, or an earlier run's)")
    parser.add_argument("--size", type=int, default=512, help="side of the square face-centred crop (default 512)")
    parser.add_argument(
        "--audio-offset-ms",
        type=float,
        default=None,
        help="how far the sound lags the lips in this video, in ms (negative: it leads); the audio is re-aligned. "
        "Default: estimated from the clip (recorded in transforms.json under audio_offset)",
    )
    parser.add_argument("--keep-cache", action="store_true", help="keep OUT/.gstalker-cache (stage outputs) after success")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.size < 64:
        parser.error(f"--size must be at least 64, got {args.size}")
    try:
        summary = process_video(
            args.video, args.out, size=args.size, progress=not args.quiet, audio_offset_ms=args.audio_offset_ms
        )
    except GstalkerUserError as exc:
        print(f"gstalker-process: error: {exc}", file=sys.stderr)
        return 2
    if not args.keep_cache:
        remove_cache(args.out)
    print(
        f"gstalker-process: {summary.kept_frames}/{summary.num_frames} frames at {summary.size}x{summary.size} "
        f"in {summary.seconds:.1f} s ({summary.real_time_factor:.1f}x real time) -> {summary.out_dir}"
    )
    print(f"  audio offset: {summary.audio_offset}")
    for message in summary.messages:
        print(f"  note: {message}")
    print(f"  stages (s): {summary.stage_seconds}")
    if summary.previews:
        print(f"  previews: {', '.join(str(p) for p in summary.previews)}")
    print(f"  train: ns-train gstalker --data {summary.out_dir}")
    return 0
