"""Generate the procedural talking subject into a ready training folder (and a talk.mp4).

    generate_subject("person/", duration=10, size=512, seed=0)

writes, into ``person/``::

    talk.mp4             the raw clip, H.264 + AAC (unless video=False or no writer is installed)
    frames/000000.jpg    RGB frames (JPEG quality 95)
    masks/000000.png     label maps (gstalker_ns.data.layout.LABEL_*)
    background.png       the clean static background plate
    audio.wav            16 kHz mono speech
    audio_features.npy   one feature window per frame (default AudioFeatureSpec)
    transforms.json      cameras (head frame as world), intrinsics, frames
    ground_truth.json    per-frame mouth opening, blink, head/neck/torso poses, seed, audio source
    face_landmarks.npz   the exact expression landmarks (lips, chin) and eye boxes per frame

The same seed gives the same files (on the same device type).
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np

from gstalker_ns.data.layout import (
    GROUND_TRUTH_FILE,
    LABEL_NAMES,
    TRANSFORMS_FILE,
    FrameEntry,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    write_transforms,
)
from gstalker_ns.errors import GstalkerUserError
from gstalker_ns.expression.landmarks import EXPRESSION_FILE, ExpressionTrack

GENERATOR_NAME = "gstalker-synth"
GENERATOR_VERSION = "1.0"
VIDEO_FILE = "talk.mp4"
FRAMES_DIR = "frames"
MASKS_DIR = "masks"
JPEG_QUALITY = 95
MAX_SIZE = 4096
MAX_SUPERSAMPLE = 8


class SynthError(GstalkerUserError, ValueError):
    """Bad arguments or an unusable output folder; the message is one line."""


class SynthWarning(UserWarning):
    """Something optional was skipped (e.g. talk.mp4 without a video writer)."""


@dataclass
class SynthSummary:
    out_dir: Path
    num_frames: int
    width: int
    height: int
    fps: float
    duration: float
    audio_source: str
    device: str
    supersample: int
    files: List[str] = field(default_factory=list)
    video_written: bool = False
    video_note: Optional[str] = None
    seconds: float = 0.0
    render_seconds: float = 0.0


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    try:
        import cv2

        ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY])
        if ok:
            return buf.tobytes()
    except ImportError:  # pragma: no cover
        pass
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _encode_png(arr: np.ndarray) -> bytes:
    try:
        import cv2

        img = arr[..., ::-1] if arr.ndim == 3 else arr
        ok, buf = cv2.imencode(".png", img)
        if ok:
            return buf.tobytes()
    except ImportError:  # pragma: no cover
        pass
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def _video_mode(video: Union[bool, str, None]) -> str:
    """True/'auto' -> 'auto' (write if possible, else warn); 'require' -> fail if impossible; False -> 'off'."""
    if video is True or video == "auto":
        return "auto"
    if video == "require":
        return "require"
    if video is False or video is None or video == "off":
        return "off"
    raise SynthError(f"video must be True, False, 'auto' or 'require', got {video!r}")


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SynthError(f"{out}: folder is not empty; pass --force to overwrite the files gstalker-synth writes there")


def _remove_stale(out: Path, num_frames: int, video_written: bool) -> None:
    """With --force: drop our own numbered frames/masks beyond this clip, and a stale talk.mp4."""
    pattern = re.compile(r"^(\d{6})\.(jpg|png)$")
    for sub in (FRAMES_DIR, MASKS_DIR):
        folder = out / sub
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            m = pattern.match(entry.name)
            if m and int(m.group(1)) >= num_frames and entry.is_file():
                entry.unlink()
    if not video_written and (out / VIDEO_FILE).is_file():
        (out / VIDEO_FILE).unlink()


def _pose_json(R: np.ndarray, t: np.ndarray, with_euler: bool = True) -> Dict[str, Any]:
    from gstalker_ns.synth.motion import matrix_to_euler

    d: Dict[str, Any] = {
        "rotation": np.round(R, 8).tolist(),
        "translation": np.round(t, 8).tolist(),
    }
    if with_euler:
        yaw, pitch, roll = matrix_to_euler(R)
        d["euler_deg"] = {"yaw": round(float(yaw), 5), "pitch": round(float(pitch), 5), "roll": round(float(roll), 5)}
    return d


def _expression_track(mouth: np.ndarray, camera_to_worlds: List[np.ndarray], K) -> "ExpressionTrack":
    """The exact expression landmarks (lips, chin) and eye boxes of every frame."""
    from gstalker_ns.expression.landmarks import ExpressionTrack, world_to_camera
    from gstalker_ns.synth import head as head_mod

    points = np.stack([head_mod.expression_points(float(m)) for m in mouth])
    R, t = world_to_camera(np.stack(camera_to_worlds))
    boxes = np.zeros((len(mouth), 2, 4), dtype=np.float32)
    for e, centre in enumerate(head_mod.EYE_CENTERS[::-1]):  # image-left eye first, as face mesh
        cam = np.einsum("nij,j->ni", R, np.asarray(centre)) + t
        u, v = K.fx * cam[:, 0] / cam[:, 2] + K.cx, K.fy * cam[:, 1] / cam[:, 2] + K.cy
        half = 1.6 * head_mod.EYE_RADIUS * K.fx / cam[:, 2]
        boxes[:, e] = np.stack([u - half, v - half, u + half, v + half], axis=-1)
    return ExpressionTrack(points, boxes, "synthetic", (0, 1))


def generate(
    out_dir: Union[str, os.PathLike],
    duration: float = 10.0,
    size: int = 512,
    seed: int = 0,
    fps: float = 25.0,
    device: str = "auto",
    audio_source: str = "auto",
    supersample: Optional[int] = None,
    video: Union[bool, str] = True,
    force: bool = False,
    progress: bool = True,
) -> SynthSummary:
    """Like :func:`generate_subject`, returning a :class:`SynthSummary`."""
    t_start = time.perf_counter()
    # ---- arguments ----
    try:
        duration = float(duration)
        fps = float(fps)
        size = int(size)
        seed = int(seed)
    except (TypeError, ValueError) as exc:
        raise SynthError(f"bad argument: {exc}") from None
    if not (math.isfinite(duration) and duration > 0):
        raise SynthError(f"duration must be a positive number of seconds, got {duration}")
    if not (math.isfinite(fps) and fps > 0):
        raise SynthError(f"fps must be positive, got {fps}")
    if not 16 <= size <= MAX_SIZE:
        raise SynthError(f"size must be between 16 and {MAX_SIZE} pixels, got {size}")
    if seed < 0:
        raise SynthError(f"seed must be >= 0, got {seed}")
    num_frames = int(round(duration * fps))
    if num_frames < 1:
        raise SynthError(f"duration {duration} s at {fps} fps gives no frame; use a longer duration")
    from gstalker_ns.synth import head as head_mod
    from gstalker_ns.synth.speech import AUDIO_SOURCES, SAMPLE_RATE, SpeechError, mouth_opening_from_audio, synthesize_speech

    if audio_source not in AUDIO_SOURCES:
        raise SynthError(f"audio source must be one of {', '.join(AUDIO_SOURCES)}, got {audio_source!r}")
    ss = head_mod.default_supersample(size) if supersample is None else int(supersample)
    if not 1 <= ss <= MAX_SUPERSAMPLE:
        raise SynthError(f"supersample must be between 1 and {MAX_SUPERSAMPLE}, got {ss}")
    mode = _video_mode(video)
    try:
        dev = head_mod.resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise SynthError(str(exc).splitlines()[0] if str(exc) else f"bad device {device!r}") from None
    out = Path(out_dir)
    _check_out_dir(out, force)

    video_note = None
    write_video = False
    if mode != "off":
        from gstalker_ns.media.video import video_backend

        if video_backend() is None:
            video_note = "talk.mp4 skipped: neither PyAV nor imageio-ffmpeg is installed"
            if mode == "require":
                raise SynthError(video_note.replace("skipped", "cannot be written") + "; install one or pass --no-video")
            warnings.warn(video_note, SynthWarning, stacklevel=2)
        else:
            write_video = True
    else:
        video_note = "talk.mp4 not requested"

    # ---- audio, mouth, motion ----
    try:
        speech = synthesize_speech(duration, seed, audio_source, SAMPLE_RATE)
    except SpeechError as exc:
        raise SynthError(str(exc)) from None
    wave = speech.wave
    mouth = mouth_opening_from_audio(wave, SAMPLE_RATE, num_frames, fps)
    from gstalker_ns.synth.motion import build_motion, camera_to_world

    motion = build_motion(seed, num_frames, fps)

    from gstalker_ns.audio.features import default_feature_spec, extract_features

    spec = default_feature_spec()
    spec.fps = fps
    features = extract_features(wave, spec, num_frames)

    # ---- renderer ----
    appearance = head_mod.Appearance.from_seed(seed)
    K = head_mod.Intrinsics.for_size(size)
    renderer = head_mod.HeadRenderer(appearance, K, ss, dev)

    out.mkdir(parents=True, exist_ok=True)
    (out / FRAMES_DIR).mkdir(exist_ok=True)
    (out / MASKS_DIR).mkdir(exist_ok=True)
    files: List[str] = []
    atomic_write_bytes(out / "background.png", _encode_png(renderer.background))
    files.append("background.png")
    from gstalker_ns.audio.io import write_wav

    write_wav(out / "audio.wav", wave, SAMPLE_RATE)
    files.append("audio.wav")
    atomic_save_npy(out / "audio_features.npy", np.asarray(features, dtype=np.float32))
    files.append("audio_features.npy")

    entries: List[FrameEntry] = []
    gt_frames: List[Dict[str, Any]] = []
    render_time = [0.0]

    def frame_iter() -> Iterator[np.ndarray]:
        bar = None
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_frames, desc="gstalker-synth", unit="frame", disable=not progress, leave=False)
        except ImportError:  # pragma: no cover
            bar = None
        try:
            for i in range(num_frames):
                st = head_mod.FrameState(
                    head_R=motion.head_R[i],
                    head_t=motion.head_t[i],
                    neck_R=motion.neck_R[i],
                    neck_t=motion.neck_t[i],
                    torso_R=motion.torso_R[i],
                    torso_t=motion.torso_t[i],
                    mouth_opening=float(mouth[i]),
                    blink=float(motion.blink[i]),
                )
                t0 = time.perf_counter()
                res = renderer.render(st)
                render_time[0] += time.perf_counter() - t0
                frame_rel = f"{FRAMES_DIR}/{i:06d}.jpg"
                mask_rel = f"{MASKS_DIR}/{i:06d}.png"
                atomic_write_bytes(out / frame_rel, _encode_jpeg(res.image))
                atomic_write_bytes(out / mask_rel, _encode_png(res.labels))
                c2w = camera_to_world(motion.head_R[i], motion.head_t[i])
                entries.append(FrameEntry(i, frame_rel, mask_rel, c2w, float(motion.blink[i])))
                gt_frames.append(
                    {
                        "frame_idx": i,
                        "time": round(float(motion.times[i]), 6),
                        "mouth_opening": round(float(mouth[i]), 6),
                        "blink": round(float(motion.blink[i]), 6),
                        "head": _pose_json(motion.head_R[i], motion.head_t[i]),
                        "neck": _pose_json(motion.neck_R[i], motion.neck_t[i]),
                        "torso": _pose_json(motion.torso_R[i], motion.torso_t[i]),
                        "camera_to_world": np.round(c2w, 8).tolist(),
                    }
                )
                if bar is not None:
                    bar.update(1)
                yield res.image
        finally:
            if bar is not None:
                bar.close()

    import torch

    threads = torch.get_num_threads()
    if dev.type == "cpu":
        # Rendering is many small ops: on a small shared machine, OpenMP threads that wait for each
        # other cost far more than they gain (6x slower seen on 2 busy cores). Use half the cores.
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) // 2)))
    try:
        if write_video:
            from gstalker_ns.media.video import write_mp4

            write_mp4(out / VIDEO_FILE, frame_iter(), fps, audio=wave, sample_rate=SAMPLE_RATE)
            files.append(VIDEO_FILE)
        else:
            for _ in frame_iter():
                pass
    finally:
        torch.set_num_threads(threads)
    files.extend([f"{FRAMES_DIR}/ ({num_frames} jpg)", f"{MASKS_DIR}/ ({num_frames} png)"])
    if force:
        _remove_stale(out, num_frames, write_video)

    landmarks = {k: np.round(v, 6).tolist() for k, v in head_mod.head_landmarks(0.0).items()}
    ground_truth = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "duration": duration,
        "fps": fps,
        "num_frames": num_frames,
        "width": size,
        "height": size,
        "supersample": ss,
        "device": dev.type,
        "audio": {
            "source": speech.source,
            "requested": audio_source,
            "voice": speech.voice,
            "text": speech.text,
            "sample_rate": SAMPLE_RATE,
            "mouth_lead_s": 0.02,
        },
        "conventions": {
            "camera": "OpenGL: x right, y up, looking down -z; static camera at the origin",
            "world": "head frame: origin at the head centre, +y up, +z out of the face",
            "pose": "p_camera = rotation @ p_part + translation (part = head / neck / torso frame)",
            "euler_deg": "rotation = Ry(yaw) @ Rx(pitch) @ Rz(roll)",
            "neck_torso_origin": "neck base; neck follows 60% and torso 30% of the head rotation",
            "mouth_opening": "0 closed .. 1 fully open; drives the mouth cavity height and the jaw",
            "blink": "0 open .. 1 closed",
        },
        "intrinsics": {"fl_x": K.fx, "fl_y": K.fy, "cx": K.cx, "cy": K.cy, "width": K.width, "height": K.height},
        "head_radius": 1.0,
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "appearance": appearance.to_json(),
        "blink_starts": [round(s, 4) for s in motion.blink_starts],
        "landmarks_head": landmarks,
        "frames": gt_frames,
    }
    atomic_write_json(out / GROUND_TRUTH_FILE, ground_truth)
    files.append(GROUND_TRUTH_FILE)
    _expression_track(mouth, [e.camera_to_world for e in entries], K).save(out / EXPRESSION_FILE)
    files.append(EXPRESSION_FILE)
    write_transforms(
        out,
        fps=fps,
        width=size,
        height=size,
        fl_x=K.fx,
        fl_y=K.fy,
        cx=K.cx,
        cy=K.cy,
        frames=entries,
        audio_extractor=spec.to_json(),
        head_radius=1.0,
        extra={"source": GENERATOR_NAME, "ground_truth": GROUND_TRUTH_FILE, "expression": EXPRESSION_FILE},
    )
    files.append(TRANSFORMS_FILE)
    return SynthSummary(
        out_dir=out,
        num_frames=num_frames,
        width=size,
        height=size,
        fps=fps,
        duration=duration,
        audio_source=speech.source,
        device=str(dev),
        supersample=ss,
        files=files,
        video_written=write_video,
        video_note=video_note,
        seconds=time.perf_counter() - t_start,
        render_seconds=render_time[0],
    )


def generate_subject(
    out_dir: Union[str, os.PathLike],
    duration: float = 10.0,
    size: int = 512,
    seed: int = 0,
    fps: float = 25.0,
    device: str = "auto",
    audio_source: str = "auto",
    supersample: Optional[int] = None,
    video: Union[bool, str] = True,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write the procedural subject into ``out_dir``; returns the folder.

    video: True writes talk.mp4 when a writer (PyAV or imageio-ffmpeg) is installed and warns and
    skips otherwise; "require" fails instead; False skips it. A non-empty ``out_dir`` is refused
    unless ``force`` (which only replaces the files listed in the module doc).
    """
    return generate(
        out_dir,
        duration=duration,
        size=size,
        seed=seed,
        fps=fps,
        device=device,
        audio_source=audio_source,
        supersample=supersample,
        video=video,
        force=force,
        progress=progress,
    ).out_dir
