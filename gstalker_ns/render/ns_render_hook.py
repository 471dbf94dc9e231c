"""`ns-render` on gstalker checkpoints: the avatar talks, and its videos carry the sound.

nerfstudio's render script knows nothing of audio: its trajectories render every camera at our
model's default frame (a frozen mouth) and its videos are silent. This module patches that
script once, right after `nerfstudio.scripts.render` is imported (`gstalker_ns._startup` watches
for that import; `_compat.apply_all` patches it when it is already loaded). Every patch hands
other methods' models (splatfacto, ...) to nerfstudio's own code untouched.

- camera-path and interpolate, through `_render_trajectory_video`: output frame k is at
  time k/fps of the trajectory; the cameras get `frame_idx` k and the model a drive table with
  one row per output frame, from the clip a camera path records (`gstalker_ns.render.path_audio`)
  or else the training track from 0. nerfstudio renders and writes as always; then the sound is
  muxed into the mp4 (`--output-format images`: an `audio.wav` beside the frames).
- dataset: nerfstudio writes images only. For each split whose rgb images it wrote we also write
  `<output-path>/<split>/rgb.mp4`: those frames in order at the clip's fps, each with its own
  1/fps of the training folder's audio (frame k covers [k/fps, (k+1)/fps)).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

RENDER_MODULE = "nerfstudio.scripts.render"
_PATCHED = "_gstalker_audio_hook"
_NEEDED = ("_render_trajectory_video", "RenderCameraPath", "DatasetRender", "eval_setup", "FixedIndicesEvalDataloader")

_CAMERA_PATH: "contextvars.ContextVar[Optional[Path]]" = contextvars.ContextVar("gstalker_camera_path", default=None)


@dataclass
class _DatasetJob:
    """What one `ns-render dataset` run loaded, recorded as nerfstudio's code goes."""

    pipeline: Any = None
    datasets: List[Any] = field(default_factory=list)


_DATASET_JOB: "contextvars.ContextVar[Optional[_DatasetJob]]" = contextvars.ContextVar("gstalker_dataset_job", default=None)


def _say(message: str) -> None:
    from nerfstudio.utils.rich_utils import CONSOLE

    CONSOLE.print(f"gstalker: {message}", markup=False)


def is_gstalker(model: Any) -> bool:
    module = sys.modules.get("gstalker_ns.model")
    cls = getattr(module, "GSTalkerModel", None)
    return cls is not None and isinstance(model, cls)


def install(module: Any = None) -> bool:
    """Patch nerfstudio's render script (idempotent). False when it is not (fully) imported yet:
    during its own import the start-up guard calls this again once its code has run."""
    module = module if module is not None else sys.modules.get(RENDER_MODULE)
    if module is None or not all(hasattr(module, name) for name in _NEEDED):
        return False
    if getattr(module, _PATCHED, False):
        return True
    from gstalker_ns.errors import install_excepthook

    install_excepthook()  # a missing clip is one line, never a traceback
    module._render_trajectory_video = _wrap(module._render_trajectory_video, _trajectory_video)
    module.eval_setup = _wrap(module.eval_setup, _eval_setup)
    module.FixedIndicesEvalDataloader = _wrap(module.FixedIndicesEvalDataloader, _dataloader)
    module.RenderCameraPath.main = _wrap(module.RenderCameraPath.main, _camera_path_main)
    module.DatasetRender.main = _wrap(module.DatasetRender.main, _dataset_main)
    setattr(module, _PATCHED, True)
    return True


def _wrap(original: Callable, replacement: Callable) -> Callable:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return replacement(original, *args, **kwargs)

    wrapper.gstalker_original = original  # type: ignore[attr-defined]
    return wrapper


# ---------------------------------------------------------------------- trajectories
def _camera_path_main(original: Callable, self: Any) -> Any:
    """Remember which JSON is rendered: `_render_trajectory_video` only gets its cameras."""
    json_path = Path(self.camera_path_filename)
    if _is_gstalker_config(Path(self.load_config)):
        _read_clip(json_path)  # a missing clip fails now, not after the checkpoint has loaded
    token = _CAMERA_PATH.set(json_path)
    try:
        return original(self)
    finally:
        _CAMERA_PATH.reset(token)


def _is_gstalker_config(config: Path) -> bool:
    """A cheap look at a run's config.yml (the real check is on the loaded model)."""
    try:
        return re.search(r"^method_name: gstalker\b", config.read_text(encoding="utf-8"), re.MULTILINE) is not None
    except (OSError, UnicodeDecodeError):
        return False


def _read_clip(json_path: Path) -> Any:
    """The camera path's recorded clip (None without one, or when the JSON is unreadable:
    nerfstudio reports that itself)."""
    from gstalker_ns.render import path_audio

    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return path_audio.read(data, json_path)


def _trajectory_video(original: Callable, *args: Any, **kwargs: Any) -> Any:
    pipeline = kwargs["pipeline"] if "pipeline" in kwargs else (args[0] if args else None)
    if not is_gstalker(getattr(pipeline, "model", None)):
        return original(*args, **kwargs)
    import torch

    from gstalker_ns.render import path_audio
    from gstalker_ns.render.video import driven

    bound = inspect.signature(original).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = bound.arguments
    cameras = arguments["cameras"]
    json_path = _CAMERA_PATH.get()
    clip = None if json_path is None else _read_clip(json_path)
    num_frames = int(cameras.size)
    fps = num_frames / float(arguments["seconds"])
    metadata = dict(pipeline.datamanager.train_dataparser_outputs.metadata or {})
    drive = path_audio.drive_for_frames(pipeline.model, metadata, clip, num_frames, fps)
    output = Path(arguments["output_filename"])
    video = arguments["output_format"] == "video"
    sound = "silent" if drive.sound is None else ("sound muxed in" if video else "its sound in audio.wav")
    _say(f"{num_frames} frames at {fps:g} fps driven by {drive.note}; {sound}")

    saved = cameras.metadata
    cameras.metadata = {**(saved or {}), "frame_idx": torch.arange(num_frames, dtype=torch.long).reshape(-1, 1)}
    try:
        with driven(pipeline.model, drive.features, drive.blink):
            result = original(*bound.args, **bound.kwargs)
    finally:
        cameras.metadata = saved
    if drive.sound is not None:
        if video:
            from gstalker_ns.media.mux import add_sound

            add_sound(output, drive.sound, drive.sample_rate)
            _respherical(cameras, output)
        else:
            from gstalker_ns.audio.io import write_wav

            write_wav(output.parent / output.stem / "audio.wav", drive.sound, drive.sample_rate)
    return result


def _respherical(cameras: Any, output: Path) -> None:
    """Muxing rewrites the file; put back the 360-video tag nerfstudio adds to equirectangular ones."""
    from nerfstudio.cameras.cameras import CameraType

    if int(cameras.camera_type.reshape(-1)[0]) == CameraType.EQUIRECTANGULAR.value:
        sys.modules[RENDER_MODULE].insert_spherical_metadata_into_file(output)


# ---------------------------------------------------------------------- dataset
def _dataset_main(original: Callable, self: Any) -> Any:
    job = _DatasetJob()
    token = _DATASET_JOB.set(job)
    try:
        result = original(self)
    finally:
        _DATASET_JOB.reset(token)
    if job.pipeline is None or not is_gstalker(job.pipeline.model):
        return result
    names = self.rendered_output_names
    if names is not None and "rgb" not in names:
        _say("no video with sound: the rgb output was not rendered")
        return result
    for split, dataset in zip(self.split.split("+"), job.datasets):
        _dataset_video(dataset, Path(self.output_path) / split, self.image_format, job.pipeline)
    return result


def _eval_setup(original: Callable, *args: Any, **kwargs: Any) -> Any:
    loaded = original(*args, **kwargs)
    job = _DATASET_JOB.get()
    if job is not None:
        job.pipeline = loaded[1]
    return loaded


def _dataloader(original: Callable, *args: Any, **kwargs: Any) -> Any:
    job = _DATASET_JOB.get()
    if job is not None:
        job.datasets.append(kwargs["input_dataset"] if "input_dataset" in kwargs else args[0])
    return original(*args, **kwargs)


def _dataset_video(dataset: Any, split_dir: Path, image_format: str, pipeline: Any) -> Optional[Path]:
    """`split_dir/rgb.mp4` from the rgb images nerfstudio wrote for this split, with their sound."""
    import os

    import numpy as np

    from gstalker_ns.audio.io import load_audio
    from gstalker_ns.drive.audio import spec_from_extractor
    from gstalker_ns.errors import GstalkerUserError
    from gstalker_ns.media.video import write_mp4
    from gstalker_ns.render.frames import audio_for_frames, read_rgb

    cameras_metadata = dataset.cameras.metadata or {}
    if "frame_idx" not in cameras_metadata or len(dataset) == 0:
        _say(f"no video for {split_dir.name}: its cameras carry no frame index")
        return None
    frames = cameras_metadata["frame_idx"].reshape(-1).tolist()
    outputs = getattr(dataset, "_dataparser_outputs", None)
    metadata = dict(getattr(outputs, "metadata", None) or pipeline.datamanager.train_dataparser_outputs.metadata or {})
    fps = float(metadata.get("fps") or 25.0)
    filenames = [Path(p) for p in dataset.image_filenames]
    root = Path(os.path.commonpath(filenames))
    suffix = ".png" if image_format == "png" else ".jpg"
    images = [(split_dir / "rgb" / p.relative_to(root)).with_suffix(suffix) for p in filenames]
    if not all(p.is_file() for p in images):
        _say(f"no video for {split_dir.name}: its rgb images are not all in {split_dir / 'rgb'}")
        return None
    sound, rate, note = None, 16000, "with the training audio"
    try:
        rate = spec_from_extractor(pipeline.model.audio_extractor).sample_rate
    except GstalkerUserError:
        pass
    try:
        if not metadata.get("audio_path"):
            raise GstalkerUserError("the training folder has no audio file")
        wave = load_audio(metadata["audio_path"], sample_rate=rate)
        sound = np.concatenate([audio_for_frames(wave, rate, int(f), 1, fps) for f in frames])
    except GstalkerUserError as exc:
        note = f"silent: {exc}"
    target = split_dir / "rgb.mp4"
    write_mp4(target, (read_rgb(p) for p in images), fps=fps, audio=sound, sample_rate=rate)
    _say(f"wrote {target}: {len(images)} frames at {fps:g} fps, {note}")
    return target
