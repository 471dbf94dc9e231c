"""Stage 2 of preprocessing: 2D face landmarks per frame (mediapipe Face Mesh, 478 points).

    track = landmarks_stage(out / "frames", out)        # out/landmarks.npz, then out/landmarks.json
    track, report = fill_missing(track)                 # short gaps interpolated; NoFaceError if hopeless
    blink = blink_from_ear(eye_aspect_ratio(track.points))
    lips = inner_lip_distance(track.points)

**Tracker.** mediapipe's ``FaceMesh`` in video mode (``static_image_mode=False``: the face is
detected once and then tracked from the previous frame's landmarks, re-detected when tracking
is lost), ``refine_landmarks=True`` (478 points: 468 mesh + 2 x 5 iris), up to two faces.
When two faces are seen the LARGEST one (area of the landmarks' bounding box) is the subject,
and the frame is counted in ``faces_seen``/``multiple_faces_frames``.

**Coordinates.** ``points[k, i] = (x, y)`` in pixels of the frame, x right and y down,
continuous coordinates in which pixel (col, row) covers [col, col+1) x [row, row+1), so its
centre is at (col + 0.5, row + 0.5) (mediapipe's normalised coordinates times width/height;
the synthetic renderer casts rays through the same centres, and on it the nose tip and eye
corners agree with the projected ground truth to about 1.5 px rms at 256 px). ``z`` is
mediapipe's relative depth (smaller = nearer the camera, roughly 0 at the face centre)
multiplied by the frame width, i.e. in the same pixel units as x.

Useful indices (subject's right = image left): nose tip 1 (4 is the tip's lower part), right
eye corners 33/133, left eye corners 362/263, iris centres 468 (right) and 473 (left), inner
lip midpoints 13 (upper) and 14 (lower).

**Caching.** ``landmarks.json`` is written after ``landmarks.npz``; it records the frame list
(names, sizes, mtimes hashed), the tracker options and :data:`LANDMARKS_VERSION`. A later call
whose frames and options match reuses the saved track without running mediapipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from gstalker_ns.data.layout import DEFAULT_FPS, atomic_save_npz, atomic_write_json
from gstalker_ns.errors import GstalkerUserError
from gstalker_ns.progress import progress_bar

PathLike = Union[str, "os.PathLike[str]"]

LANDMARKS_VERSION = 1  # bump when the stage's output for the same frames and options changes
MANIFEST_FILE = "landmarks.json"
TRACK_FILE = "landmarks.npz"
NUM_LANDMARKS = 478

FACE_MESH_OPTIONS: Dict[str, Any] = {
    "static_image_mode": False,
    "refine_landmarks": True,
    "max_num_faces": 2,
    "min_detection_confidence": 0.5,
    "min_tracking_confidence": 0.5,
}

# Six-point eye contours (p1..p6 of Soukupova & Cech): corner, two upper-lid points, corner, two
# lower-lid points; p2-p6 and p3-p5 face each other. Subject's right eye = image left.
RIGHT_EYE = (33, 160, 158, 133, 153, 144)
LEFT_EYE = (362, 385, 387, 263, 373, 380)
NOSE_TIP = 1
RIGHT_IRIS = 468
LEFT_IRIS = 473
UPPER_INNER_LIP = 13
LOWER_INNER_LIP = 14
RIGHT_EYE_OUTER = 33
LEFT_EYE_OUTER = 263

BLINK_OPEN_PERCENTILE = 90.0  # the clip's "eyes open" EAR level
BLINK_CLOSED_FRACTION = 0.5  # "eyes closed" EAR = this fraction of the open level
MAX_MISSING_FRACTION = 0.5  # more frames without a face than this: refuse the clip

_FACE_HINT = (
    "gstalker needs a frontal talking face that stays in the picture: use a clip where the face "
    "is visible, unoccluded and reasonably large"
)


class NoFaceError(GstalkerUserError, ValueError):
    """No usable face in the clip (none at all, or in too few frames); one-line message."""


# --------------------------------------------------------------------------------------------
# the track


@dataclass
class LandmarkTrack:
    """Per-frame landmarks of the subject (see the module docstring for the conventions).

    ``detected[k]``: face mesh found a face in frame k. ``interpolated[k]``: the frame had no
    face and :func:`fill_missing` filled it in. ``valid`` (finite points) = detected or
    interpolated; later stages use only valid frames.
    """

    points: np.ndarray  # [N, 478, 2] float32 pixels; NaN where not valid
    z: np.ndarray  # [N, 478] float32 relative depth in pixels (x scale); NaN where not valid
    detected: np.ndarray  # [N] bool
    faces_seen: np.ndarray  # [N] int32
    width: int
    height: int
    interpolated: np.ndarray = field(default=None)  # type: ignore[assignment]  # [N] bool

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32)
        self.z = np.asarray(self.z, dtype=np.float32)
        self.detected = np.asarray(self.detected, dtype=bool)
        self.faces_seen = np.asarray(self.faces_seen, dtype=np.int32)
        n = self.detected.shape[0]
        if self.interpolated is None:
            self.interpolated = np.zeros(n, dtype=bool)
        self.interpolated = np.asarray(self.interpolated, dtype=bool)
        if self.points.shape != (n, NUM_LANDMARKS, 2) or self.z.shape != (n, NUM_LANDMARKS):
            raise ValueError(f"inconsistent landmark track shapes: points {self.points.shape}, z {self.z.shape}, {n} frames")
        if self.faces_seen.shape != (n,) or self.interpolated.shape != (n,):
            raise ValueError("inconsistent landmark track shapes: faces_seen/interpolated must be [N]")
        self.width = int(self.width)
        self.height = int(self.height)

    @property
    def num_frames(self) -> int:
        return int(self.detected.shape[0])

    @property
    def valid(self) -> np.ndarray:
        """[N] bool: the frame has landmarks (detected or interpolated)."""
        return np.isfinite(self.points).all(axis=(1, 2))

    def save(self, path: PathLike) -> None:
        """Write one .npz atomically (readers never see a partial file)."""
        atomic_save_npz(
            Path(path),
            version=np.int32(LANDMARKS_VERSION),
            points=self.points,
            z=self.z,
            detected=self.detected,
            faces_seen=self.faces_seen,
            interpolated=self.interpolated,
            size=np.array([self.width, self.height], dtype=np.int32),
        )

    @classmethod
    def load(cls, path: PathLike) -> "LandmarkTrack":
        with np.load(Path(path), allow_pickle=False) as data:
            width, height = (int(v) for v in data["size"])
            return cls(
                points=data["points"],
                z=data["z"],
                detected=data["detected"],
                faces_seen=data["faces_seen"],
                width=width,
                height=height,
                interpolated=data["interpolated"] if "interpolated" in data.files else None,
            )


# --------------------------------------------------------------------------------------------
# tracking


def _face_mesh():
    try:
        import mediapipe as mp

        face_mesh = mp.solutions.face_mesh
    except (ImportError, AttributeError):  # pragma: no cover - the dependency is declared
        raise ImportError("face landmarks need mediapipe: `pip install mediapipe`") from None
    return face_mesh.FaceMesh(**FACE_MESH_OPTIONS)


def track_landmarks(
    frames: Iterable[np.ndarray], num_frames: Optional[int] = None, progress: bool = False
) -> LandmarkTrack:
    """Run face mesh (tracking mode) over RGB uint8 frames [H, W, 3] of one size, in order.

    ``num_frames`` only sizes the progress bar. Frames without a face get NaN landmarks and
    ``detected = False``; with two faces the larger is kept (``faces_seen`` = 2).
    """
    points: List[np.ndarray] = []
    depth: List[np.ndarray] = []
    detected: List[bool] = []
    faces_seen: List[int] = []
    size: Optional[Tuple[int, int]] = None
    nan_points = np.full((NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
    nan_z = np.full((NUM_LANDMARKS,), np.nan, dtype=np.float32)
    from gstalker_ns.native_logs import start_graph_quietly

    bar = progress_bar(num_frames, "landmarks", progress)
    mesh = None
    try:
        for k, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frame {k}: expected an RGB uint8 array [H, W, 3], got {frame.dtype} {frame.shape}")
            h, w = frame.shape[:2]
            if size is None:
                size = (w, h)
            elif size != (w, h):
                raise ValueError(f"frame {k} is {w}x{h} but the first frame is {size[0]}x{size[1]}; frames must share one size")
            image = np.ascontiguousarray(frame)
            if mesh is None:
                mesh, result = start_graph_quietly(_face_mesh, image)
            else:
                result = mesh.process(image)
            faces = result.multi_face_landmarks or []
            faces_seen.append(len(faces))
            best: Optional[np.ndarray] = None
            best_area = -1.0
            for face in faces:
                arr = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64)
                if arr.shape[0] != NUM_LANDMARKS:
                    continue
                xy = arr[:, :2] * (w, h)
                extent = xy.max(axis=0) - xy.min(axis=0)
                area = float(extent[0] * extent[1])
                if area > best_area:
                    best, best_area = arr, area
            if best is None:
                points.append(nan_points)
                depth.append(nan_z)
                detected.append(False)
            else:
                points.append((best[:, :2] * (w, h)).astype(np.float32))
                depth.append((best[:, 2] * w).astype(np.float32))
                detected.append(True)
            bar.update(1)
    finally:
        bar.close()
        if mesh is not None:
            mesh.close()
    if size is None:
        raise ValueError("track_landmarks got no frames")
    return LandmarkTrack(
        points=np.stack(points),
        z=np.stack(depth),
        detected=np.asarray(detected, dtype=bool),
        faces_seen=np.asarray(faces_seen, dtype=np.int32),
        width=size[0],
        height=size[1],
    )


# --------------------------------------------------------------------------------------------
# gaps


@dataclass
class LandmarkReport:
    """What :func:`fill_missing` found and did; ``messages`` are one-line notes for the user."""

    num_frames: int
    missing_frames: int  # frames where face mesh found no face
    interpolated_frames: int  # of those, filled in (gaps up to max_gap_frames)
    longest_gap: int  # longest run of frames without a face
    multiple_faces_frames: int  # frames where more than one face was seen (the largest was used)
    messages: List[str] = field(default_factory=list)
    dropped_frames: int = 0  # frames left without landmarks (long gaps); later stages skip them


def _runs(mask: np.ndarray) -> List[Tuple[int, int]]:
    """[start, end) of the runs of True in a 1D bool array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def _seconds(frames: int, fps: float) -> str:
    return f"{frames / fps:.1f} s"


def fill_missing(
    track: LandmarkTrack, max_gap_frames: int = 25, *, source: Optional[str] = None, fps: float = DEFAULT_FPS
) -> Tuple[LandmarkTrack, LandmarkReport]:
    """Fill short runs of frames without a face; refuse clips without a usable face.

    Gaps of at most ``max_gap_frames`` are interpolated linearly between the neighbouring
    detected frames (at the start or end of the clip: copied from the nearest one). Longer gaps
    stay without landmarks (``valid`` False; later stages drop those frames) and are named in the
    report's messages. Raises NoFaceError when no frame has a face, or when more than half of
    the frames have none. ``source`` (the video or folder) prefixes messages.
    """
    n = track.num_frames
    where = f"{source}: " if source else ""
    detected = track.detected.copy()
    found = int(detected.sum())
    multi = int((track.faces_seen > 1).sum())
    if n == 0 or found == 0:
        raise NoFaceError(f"{where}no face found in any of the {n} frames; {_FACE_HINT}")
    missing = n - found
    if missing > MAX_MISSING_FRACTION * n:
        raise NoFaceError(
            f"{where}a face was found in only {found} of the {n} frames ({100.0 * found / n:.0f}%); "
            f"{_FACE_HINT}, or trim the clip to the part where the face is visible"
        )
    points = track.points.copy()
    z = track.z.copy()
    interpolated = track.interpolated.copy()
    gaps = _runs(~detected)
    longest = max((b - a for a, b in gaps), default=0)
    messages: List[str] = []
    dropped = 0
    filled = 0
    for a, b in gaps:
        length = b - a
        if length > max_gap_frames:
            dropped += length
            points[a:b] = np.nan
            z[a:b] = np.nan
            interpolated[a:b] = False
            messages.append(
                f"{where}frames {a}..{b - 1} ({length} frames, {_seconds(length, fps)}) show no face; "
                f"they are left out of training"
            )
            continue
        before, after = a - 1, b  # the neighbouring detected frames (may lie outside the clip)
        if before < 0:
            points[a:b], z[a:b] = points[after], z[after]
        elif after >= n:
            points[a:b], z[a:b] = points[before], z[before]
        else:
            w = ((np.arange(a, b) - before) / float(after - before)).astype(np.float32)
            points[a:b] = (1 - w)[:, None, None] * points[before] + w[:, None, None] * points[after]
            z[a:b] = (1 - w)[:, None] * z[before] + w[:, None] * z[after]
        interpolated[a:b] = True
        filled += length
    if filled:
        messages.append(
            f"{where}{filled} frame(s) without a detected face were interpolated (gaps of up to {max_gap_frames} frames)"
        )
    if multi:
        messages.append(
            f"{where}{multi} frame(s) show more than one face; the largest face was used: "
            "make sure it is the speaker"
        )
    out = LandmarkTrack(
        points=points,
        z=z,
        detected=detected,
        faces_seen=track.faces_seen.copy(),
        width=track.width,
        height=track.height,
        interpolated=interpolated,
    )
    report = LandmarkReport(
        num_frames=n,
        missing_frames=missing,
        interpolated_frames=filled,
        longest_gap=longest,
        multiple_faces_frames=multi,
        messages=messages,
        dropped_frames=dropped,
    )
    return out, report


# --------------------------------------------------------------------------------------------
# expression measures


def _dist(points: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.linalg.norm(points[:, i].astype(np.float64) - points[:, j].astype(np.float64), axis=-1)


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 3 or points.shape[1] < NUM_LANDMARKS or points.shape[2] < 2:
        raise ValueError(f"expected landmarks [N, {NUM_LANDMARKS}, 2], got {points.shape}")
    return points


def eye_aspect_ratio(points: np.ndarray) -> np.ndarray:
    """[N] eye aspect ratio (|p2-p6| + |p3-p5|) / (2 |p1-p4|), mean of both eyes; NaN where
    there are no landmarks. About 0.4 open and 0.2 closed on the synthetic subject."""
    points = _check_points(points)
    ratios = []
    for p1, p2, p3, p4, p5, p6 in (RIGHT_EYE, LEFT_EYE):
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios.append((_dist(points, p2, p6) + _dist(points, p3, p5)) / (2.0 * _dist(points, p1, p4)))
    return ((ratios[0] + ratios[1]) / 2.0).astype(np.float32)


def blink_from_ear(ear: np.ndarray) -> np.ndarray:
    """[N] blink in [0, 1] (0 open, 1 closed) from the eye aspect ratio, normalised per clip.

    The open level is the clip's 90th percentile of the EAR, the closed level half of it; the
    EAR is mapped linearly between them and clipped. NaN stays NaN. (Assumes the eyes are open
    most of the time, which holds for talking clips.)
    """
    ear = np.asarray(ear, dtype=np.float64)
    out = np.full(ear.shape, np.nan, dtype=np.float32)
    finite = np.isfinite(ear)
    if not finite.any():
        return out
    open_level = float(np.percentile(ear[finite], BLINK_OPEN_PERCENTILE))
    if not open_level > 0:
        out[finite] = 0.0
        return out
    closed_level = BLINK_CLOSED_FRACTION * open_level
    out[finite] = np.clip((open_level - ear[finite]) / (open_level - closed_level), 0.0, 1.0)
    return out


def inner_lip_distance(points: np.ndarray) -> np.ndarray:
    """[N] distance between the inner lip midpoints (13, 14) over the distance between the outer
    eye corners (33, 263): scale-free mouth opening, ~0 closed. NaN where no landmarks."""
    points = _check_points(points)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (_dist(points, UPPER_INNER_LIP, LOWER_INNER_LIP) / _dist(points, RIGHT_EYE_OUTER, LEFT_EYE_OUTER)).astype(
            np.float32
        )


# --------------------------------------------------------------------------------------------
# the stage


def _frame_files(frames_dir: Path) -> List[Path]:
    try:
        files = sorted(p for p in frames_dir.iterdir() if p.suffix.lower() == ".jpg" and not p.name.startswith("."))
    except OSError:
        files = []
    if not files:
        raise FileNotFoundError(f"{frames_dir}: no frames (*.jpg) found; run the decode stage first")
    return files


def _frames_fingerprint(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode("utf-8"))
    return digest.hexdigest()


def _read_frames(files: Sequence[Path]) -> Iterator[np.ndarray]:
    import cv2

    for path in files:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{path}: cannot read this frame (damaged JPEG); delete the output folder and decode again")
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _cached_track(stage_dir: Path, expected_input: Dict[str, Any]) -> Optional[LandmarkTrack]:
    try:
        manifest = json.loads((stage_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("stage") != "landmarks":
        return None
    if manifest.get("version") != LANDMARKS_VERSION or manifest.get("options") != FACE_MESH_OPTIONS:
        return None
    if manifest.get("input") != expected_input:
        return None
    try:
        track = LandmarkTrack.load(stage_dir / TRACK_FILE)
    except (OSError, KeyError, ValueError):
        return None
    return track if track.num_frames == expected_input["num_frames"] else None


def landmarks_stage(frames_dir: PathLike, stage_dir: PathLike, progress: bool = True) -> LandmarkTrack:
    """Run stage 2 on the decode stage's ``frames/*.jpg`` (sorted by name): writes
    ``stage_dir/landmarks.npz`` and then, last, ``stage_dir/landmarks.json``.

    Returns the raw track (no gap filling: call :func:`fill_missing` next, which also refuses
    clips without a usable face). A cached track is returned when the manifest matches the
    frames (names, sizes, mtimes), the tracker options and the stage version.
    """
    frames_dir = Path(frames_dir)
    stage_dir = Path(stage_dir)
    files = _frame_files(frames_dir)
    expected_input = {
        "frames_dir": str(frames_dir.resolve()),
        "num_frames": len(files),
        "frames_sha256": _frames_fingerprint(files),
    }
    cached = _cached_track(stage_dir, expected_input)
    if cached is not None:
        return cached
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / MANIFEST_FILE).unlink(missing_ok=True)  # from here on the stage is "not done"
    from gstalker_ns.preprocess.parallel import prefetch

    # frames decode on a second thread while face mesh runs on this one
    track = track_landmarks(prefetch(_read_frames(files)), num_frames=len(files), progress=progress)
    track.save(stage_dir / TRACK_FILE)
    manifest = {
        "stage": "landmarks",
        "version": LANDMARKS_VERSION,
        "input": expected_input,
        "options": FACE_MESH_OPTIONS,
        "output": {
            "track": TRACK_FILE,
            "num_frames": track.num_frames,
            "width": track.width,
            "height": track.height,
            "detected_frames": int(track.detected.sum()),
            "multiple_faces_frames": int((track.faces_seen > 1).sum()),
            "coordinates": "pixels, x right y down, pixel centres at +0.5; z = mediapipe depth * width",
        },
    }
    atomic_write_json(stage_dir / MANIFEST_FILE, manifest)
    return track
