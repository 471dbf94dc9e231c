"""The on-disk layout of a gstalker training folder: names, label values, reading and writing.

One folder per subject::

    person/
      transforms.json          cameras, intrinsics, per-frame entries, pointers to the files below
      frames/000000.jpg ...     RGB frames (JPEG or PNG), one per video frame at `fps`
      masks/000000.png ...      single-channel label maps (values: see LABEL_*)
      background.png            the clean background plate, same size as the frames
      audio.wav                 16 kHz mono PCM
      audio_features.npy        float [num_frames, window, dim]: one feature window per video frame
      ground_truth.json         optional (synthetic subjects): exact per-frame mouth opening etc.

Cameras are camera-to-world 4x4 matrices in nerfstudio's OpenGL convention (x right, y up,
camera looking down -z). The world is the subject's head frame: origin at the head centre,
+y up, +z out of the face. A moving head therefore shows up as a moving camera.

Folders prepared by ER-NeRF / AD-NeRF (transforms_train.json, gt_imgs/, parsing/, aud_ds.npy, ...)
are read as they are by `gstalker_ns.data.ernerf`; `read_layout` picks the reader.

Everything here is plain numpy/json so preprocessing and tests can use it without nerfstudio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from gstalker_ns.atomic import atomic_output
from gstalker_ns.errors import GstalkerUserError

FORMAT_NAME = "gstalker-talking-portrait"
FORMAT_VERSION = 1
TRANSFORMS_FILE = "transforms.json"
GROUND_TRUTH_FILE = "ground_truth.json"
DEFAULT_FPS = 25.0
AUDIO_SAMPLE_RATE = 16000

# Values of the label maps in masks/. Larger values win where regions overlap.
LABEL_BACKGROUND = 0
LABEL_TORSO = 1  # neck and torso
LABEL_HEAD = 2  # face, hair, ears
LABEL_LIPS = 3
LABEL_MOUTH_INTERIOR = 4  # cavity and teeth
# How a frame's mask file is to be read (FrameEntry.mask_kind).
MASK_KIND_LABELS = "labels"  # our single-channel uint8 label map (values LABEL_*)
MASK_KIND_ERNERF = "ernerf_parsing"  # ER-NeRF colour-coded parsing map (+ lips from the .lms landmarks)
MASK_KINDS = (MASK_KIND_LABELS, MASK_KIND_ERNERF)
LABEL_NAMES = {
    LABEL_BACKGROUND: "background",
    LABEL_TORSO: "torso",
    LABEL_HEAD: "head",
    LABEL_LIPS: "lips",
    LABEL_MOUTH_INTERIOR: "mouth_interior",
}


class DatasetError(GstalkerUserError, ValueError):
    """A training folder is missing a file or holds inconsistent data. The message is one line
    that names the file and says what to do."""


@dataclass
class FrameEntry:
    """One video frame of the subject."""

    frame_idx: int
    file_path: str
    mask_path: Optional[str]
    camera_to_world: np.ndarray  # [4, 4] float, OpenGL convention, head frame as world
    blink: float = 0.0  # 0 = eyes open, 1 = closed
    mask_kind: str = MASK_KIND_LABELS  # how mask_path is read: MASK_KIND_LABELS or MASK_KIND_ERNERF
    landmarks_path: Optional[str] = None  # ER-NeRF only: 68 2D landmarks (.lms) giving the lip polygons


@dataclass
class TalkingPortraitLayout:
    """Everything transforms.json says, with paths resolved against the folder."""

    root: Path
    fps: float
    width: int
    height: int
    fl_x: float
    fl_y: float
    cx: float
    cy: float
    frames: List[FrameEntry]
    background: Optional[str]
    audio: Optional[str]
    audio_features: str
    audio_extractor: Dict[str, Any]
    head_radius: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    source: str = "gstalker"  # "gstalker" (transforms.json) or "ernerf" (an ER-NeRF / AD-NeRF folder)
    frames_file: str = TRANSFORMS_FILE  # the file(s) listing the frames, for messages

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def frames_file_path(self) -> Path:
        return self.root / self.frames_file

    @property
    def rerun_hint(self) -> str:
        """What to re-run when a file is missing or wrong."""
        if self.source == "ernerf":
            return "re-run ER-NeRF's data_utils/process.py on the video"
        return "re-run preprocessing"

    def path(self, relative: str) -> Path:
        return self.root / relative


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers never see a partial one (temp file + rename)."""
    with atomic_output(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode("utf-8"))


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """A compressed .npz, written atomically (readers never see a partial file)."""
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def write_transforms(
    root: Path,
    *,
    fps: float,
    width: int,
    height: int,
    fl_x: float,
    fl_y: float,
    cx: float,
    cy: float,
    frames: Sequence[FrameEntry],
    audio_extractor: Dict[str, Any],
    background: Optional[str] = "background.png",
    audio: Optional[str] = "audio.wav",
    audio_features: str = "audio_features.npy",
    head_radius: Optional[float] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write transforms.json for a folder whose frames, masks and audio files are in place."""
    payload: Dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fps": float(fps),
        "width": int(width),
        "height": int(height),
        "fl_x": float(fl_x),
        "fl_y": float(fl_y),
        "cx": float(cx),
        "cy": float(cy),
        "background": background,
        "audio": audio,
        "audio_features": audio_features,
        "audio_extractor": audio_extractor,
    }
    if head_radius is not None:
        payload["head_radius"] = float(head_radius)
    if extra:
        payload.update(extra)
    payload["frames"] = [
        {
            "frame_idx": int(f.frame_idx),
            "file_path": f.file_path,
            "mask_path": f.mask_path,
            "transform_matrix": np.asarray(f.camera_to_world, dtype=float).round(8).tolist(),
            "blink": round(float(f.blink), 5),
        }
        for f in frames
    ]
    out = Path(root) / TRANSFORMS_FILE
    atomic_write_json(out, payload)
    return out


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DatasetError(message)


def read_transforms(root: Path) -> TalkingPortraitLayout:
    """Parse and check transforms.json. Raises DatasetError with a one-line message."""
    root = Path(root)
    _require(root.is_dir(), f"{root}: no such folder; pass the folder written by gstalker-process or gstalker-synth")
    tpath = root / TRANSFORMS_FILE
    _require(
        tpath.exists(),
        f"{tpath}: missing; this folder is neither a gstalker training folder "
        "(create one with `gstalker-process VIDEO OUT/` or `gstalker-synth OUT/`) "
        "nor an ER-NeRF / AD-NeRF folder (transforms_train.json)",
    )
    try:
        meta = json.loads(tpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{tpath}: malformed JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
            "fix the file or re-run the preprocessing that wrote it"
        ) from None
    _require(isinstance(meta, dict), f"{tpath}: expected a JSON object at the top level; re-run preprocessing")
    fmt = meta.get("format")
    _require(
        fmt in (None, FORMAT_NAME),
        f"{tpath}: format '{fmt}' is not '{FORMAT_NAME}'; re-run preprocessing with gstalker-process",
    )
    required = ["width", "height", "fl_x", "fl_y", "cx", "cy", "frames", "audio_features"]
    missing = [k for k in required if k not in meta]
    _require(not missing, f"{tpath}: missing key(s) {', '.join(missing)}; re-run preprocessing to rewrite it")
    frames_raw = meta["frames"]
    _require(
        isinstance(frames_raw, list) and len(frames_raw) > 0,
        f"{tpath}: 'frames' must be a non-empty list; re-run preprocessing",
    )
    frames: List[FrameEntry] = []
    for i, raw in enumerate(frames_raw):
        try:
            matrix = np.asarray(raw["transform_matrix"], dtype=np.float64)
            file_path = str(raw["file_path"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{tpath}: frame entry {i} lacks a valid {exc} (needs file_path and a 4x4 transform_matrix); "
                "re-run preprocessing"
            ) from None
        _require(
            matrix.shape in ((4, 4), (3, 4)),
            f"{tpath}: frame entry {i} has a transform_matrix of shape {matrix.shape}, expected 4x4; re-run preprocessing",
        )
        _require(np.isfinite(matrix).all(), f"{tpath}: frame entry {i} has a non-finite transform_matrix")
        if matrix.shape == (3, 4):
            matrix = np.concatenate([matrix, [[0.0, 0.0, 0.0, 1.0]]], axis=0)
        frames.append(
            FrameEntry(
                frame_idx=int(raw.get("frame_idx", i)),
                file_path=file_path,
                mask_path=raw.get("mask_path"),
                camera_to_world=matrix,
                blink=float(raw.get("blink", 0.0)),
            )
        )
    known = set(required) | {"format", "version", "fps", "background", "audio", "audio_extractor", "head_radius"}
    return TalkingPortraitLayout(
        root=root,
        fps=float(meta.get("fps", DEFAULT_FPS)),
        width=int(meta["width"]),
        height=int(meta["height"]),
        fl_x=float(meta["fl_x"]),
        fl_y=float(meta["fl_y"]),
        cx=float(meta["cx"]),
        cy=float(meta["cy"]),
        frames=frames,
        background=meta.get("background"),
        audio=meta.get("audio"),
        audio_features=str(meta["audio_features"]),
        audio_extractor=dict(meta.get("audio_extractor") or {}),
        head_radius=meta.get("head_radius"),
        extra={k: v for k, v in meta.items() if k not in known},
    )


def read_layout(root: Path, ernerf_audio: str = "auto") -> TalkingPortraitLayout:
    """Read a training folder in either format: our transforms.json first, else an ER-NeRF /
    AD-NeRF folder (transforms_train.json ...). `ernerf_audio` picks the ER-NeRF feature file."""
    root = Path(root)
    if not (root / TRANSFORMS_FILE).exists():
        from gstalker_ns.data import ernerf

        if ernerf.is_ernerf_folder(root):
            return ernerf.read_ernerf(root, audio=ernerf_audio)
    return read_transforms(root)


def check_files(layout: TalkingPortraitLayout) -> None:
    """Check that every file the layout points at exists (cheap: stat calls only)."""
    tpath = layout.frames_file_path
    hint = layout.rerun_hint
    for name in ("background", "audio"):
        rel = getattr(layout, name)
        if rel is not None:
            _require(
                layout.path(rel).exists(),
                f"{layout.path(rel)}: missing ({name} named in {tpath}); restore it or {hint}",
            )
    _require(
        layout.path(layout.audio_features).exists(),
        f"{layout.path(layout.audio_features)}: missing (audio features named in {tpath}); {hint} to extract them",
    )
    for frame in layout.frames:
        for rel in (frame.file_path, frame.mask_path, frame.landmarks_path):
            if rel is not None and not layout.path(rel).exists():
                raise DatasetError(
                    f"{layout.path(rel)}: missing (frame {frame.frame_idx} in {tpath}); restore the file or {hint}"
                )


def read_label_map(path: Path, kind: str = MASK_KIND_LABELS, landmarks_path: Optional[Path] = None) -> np.ndarray:
    """A frame's label map as uint8 [H, W] (values LABEL_*), whatever the mask format.

    The one reader of mask files: the dataset, seed points, head-radius estimate and evaluation
    all go through it. `kind` is FrameEntry.mask_kind; ER-NeRF parsing maps are decoded in memory
    (nothing is written to the folder)."""
    if kind == MASK_KIND_LABELS:
        from PIL import Image

        labels = np.asarray(Image.open(path))
        if labels.ndim == 3:  # tolerate RGB-saved label maps
            labels = labels[..., 0]
        return labels.astype(np.uint8)
    if kind == MASK_KIND_ERNERF:
        from gstalker_ns.data.ernerf import read_parsing_labels

        return read_parsing_labels(Path(path), Path(landmarks_path) if landmarks_path else None)
    raise DatasetError(f"{path}: unknown mask kind {kind!r} (known: {', '.join(MASK_KINDS)})")


def frame_label_map(layout: TalkingPortraitLayout, frame: FrameEntry) -> Optional[np.ndarray]:
    """`read_label_map` for one frame of a layout; None when the frame has no mask."""
    if frame.mask_path is None:
        return None
    landmarks = layout.path(frame.landmarks_path) if frame.landmarks_path else None
    return read_label_map(layout.path(frame.mask_path), frame.mask_kind, landmarks)


def load_audio_features(layout: TalkingPortraitLayout) -> np.ndarray:
    """Load the [N, window, dim] feature table; clamp or refuse on a count mismatch with frames."""
    fpath = layout.path(layout.audio_features)
    try:
        table = np.load(fpath, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{fpath}: unreadable ({exc}); {layout.rerun_hint} to extract the features") from None
    _require(
        table.ndim in (2, 3),
        f"{fpath}: expected a [frames, window, dim] array, got shape {tuple(table.shape)}; {layout.rerun_hint}",
    )
    if table.ndim == 2:
        table = table[:, None, :]
    max_idx = max(f.frame_idx for f in layout.frames)
    needed = max_idx + 1
    # Feature extractors commonly produce one window less than there are frames: clamp that case.
    if table.shape[0] < needed - 1:
        raise DatasetError(
            f"{fpath}: has {table.shape[0]} feature windows but {layout.frames_file_path} has frames up to "
            f"index {max_idx}; the features do not belong to these frames: {layout.rerun_hint}"
        )
    return np.array(table, dtype=np.float32)  # a private, writable copy (the file may be memory-mapped)


def split_indices(num_frames: int, eval_fraction: float, split: str) -> np.ndarray:
    """Hold out the last `eval_fraction` of the frames (a contiguous tail, as talking-head papers
    do: held-out frames then test unseen speech, not frames interleaved with training ones)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise DatasetError(f"eval_fraction={eval_fraction} must be in [0, 1)")
    num_eval = int(round(num_frames * eval_fraction))
    if eval_fraction > 0 and num_frames >= 2:
        num_eval = min(max(num_eval, 1), num_frames - 1)
    num_train = num_frames - num_eval
    if split == "train":
        return np.arange(num_train)
    if num_eval == 0:  # nothing held out: evaluate on the training frames
        return np.arange(num_train)
    return np.arange(num_train, num_frames)
