"""Preprocessing: per-frame label maps (background / torso / head / lips / mouth interior).

    polys = face_mesh_polygons(points[k])                 # {"face_oval", "lips_outer", "lips_inner"}
    for person in person_masks(rgb_frames): ...            # bool [H, W] per frame
    labels = label_map(person, points[k], H, W)            # uint8 [H, W], values LABEL_* of data.layout
    masks_stage(frames_dir, points, stage_dir)             # stage_dir/masks/NNNNNN.png + masks.json

**Person** (:func:`person_masks`): mediapipe SelfieSegmentation with ``model_selection=0``, the
"general" 256x256 model. The "landscape" model (1) runs at 144x256 and is a little faster, but
it is made for video calls where the person is small; our frames are square, face-centred
crops where the general model gives cleaner hair and shoulder edges. Confidence > 0.5, then a
small morphological opening and closing (kernel ~ 1/128 of the short side) and removal of
specks (components below 5% of the largest).

**Labels** (:func:`label_map`), written in this order, later ones win:

1. torso = the person mask;
2. head = the face-mesh face oval, plus person pixels that are (a) above the eyebrow line and
   within 1.3 face half-widths of the face's vertical axis (hair), or (b) above the mouth-corner
   line and within 1.3 half-widths (ears, hair at the temples). "Above" and "within" are
   measured in the face's own frame (axis from chin, landmark 152, to the top of the forehead,
   landmark 10), so a tilted head is handled. Neck and shoulders are below the jaw/mouth line
   and stay torso;
3. lips = the outer-lip polygon;
4. mouth interior = the inner-lip polygon (skipped when its area is under 1 pixel, i.e. the
   mouth is closed).

**No face** (landmarks NaN or None): the whole person is labelled torso (no head, lips or
interior). No guess of where the head is: a wrong head label would teach the head model
background or torso, a missing one only withholds supervision. :func:`masks_stage` records those
frames in its manifest (``no_face_frames``) so later stages can drop them.

**Caching** (:func:`masks_stage`): ``masks.json`` is written last; a later call whose frames
(names, sizes, mtimes), landmarks and options are unchanged returns without recomputing. Mask
files are written atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional

import numpy as np

from gstalker_ns.data.layout import (
    LABEL_BACKGROUND,
    LABEL_HEAD,
    LABEL_LIPS,
    LABEL_MOUTH_INTERIOR,
    LABEL_TORSO,
    atomic_write_bytes,
    atomic_write_json,
)
from gstalker_ns.errors import GstalkerUserError
from gstalker_ns.preprocess.parallel import ordered_map, prefetch
from gstalker_ns.preprocess.stage_files import NUMBERED_PNG_RE, remove_stale_files
from gstalker_ns.progress import progress_bar

MASKS_VERSION = 1  # bump when the output for the same input changes
MANIFEST_FILE = "masks.json"
MASKS_DIR = "masks"
MASK_NAME = "{:06d}.png"
SEGMENTATION_MODEL = 0  # mediapipe SelfieSegmentation model_selection (see the module doc)
PERSON_THRESHOLD = 0.5
HEAD_SPAN = 1.3  # hair/ear region: within this many face half-widths of the face axis

# Closed loops of mediapipe face-mesh (478-point, refined) indices, in order around the polygon.
# Identical to chaining the edges of mediapipe.solutions.face_mesh.FACEMESH_FACE_OVAL / _LIPS
# (checked in tests/test_masks.py).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
EYEBROWS = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
MOUTH_CORNERS = (61, 291)
FOREHEAD_TOP, CHIN = 10, 152

_FRAME_FILE_RE = re.compile(r"^(\d{6})\.(jpg|jpeg|png)$")
_TEMP_FILE_RE = re.compile(r"^\.(\d{6}\.png|masks\.json)\..*\.tmp$")


class MasksInputError(GstalkerUserError, ValueError):
    """The masks stage cannot run on its input (missing frames, landmark count mismatch)."""


# --------------------------------------------------------------------------------------------
# polygons and rasterising


def face_mesh_polygons(points_478: np.ndarray) -> Dict[str, np.ndarray]:
    """``{"face_oval", "lips_outer", "lips_inner"}`` -> float32 [K, 2] closed polygons (first
    vertex not repeated) from one frame's face-mesh points [468 or 478, 2]."""
    pts = np.asarray(points_478, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[0] < 468 or pts.shape[1] != 2:
        raise ValueError(f"expected face-mesh points [478, 2], got shape {pts.shape}")
    return {
        "face_oval": pts[list(FACE_OVAL)],
        "lips_outer": pts[list(LIPS_OUTER)],
        "lips_inner": pts[list(LIPS_INNER)],
    }


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0].astype(np.float64), poly[:, 1].astype(np.float64)
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _fill(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool [H, W]: pixels whose centre lies inside the polygon (continuous pixel coordinates,
    sub-pixel accurate via cv2's fixed-point shift)."""
    import cv2

    mask = np.zeros((height, width), np.uint8)
    shift = 4
    # continuous coordinate x covers pixel centre at index x - 0.5
    fixed = np.round((poly.astype(np.float64) - 0.5) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [fixed.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


# --------------------------------------------------------------------------------------------
# person segmentation


def _clean(mask: np.ndarray) -> np.ndarray:
    import cv2

    h, w = mask.shape
    k = max(3, int(round(min(h, w) / 128.0)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    m = mask.astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    count, comp, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if count > 2:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = np.zeros(count, bool)
        keep[1:] = areas >= 0.05 * areas.max()
        m = keep[comp].astype(np.uint8)
    return m.astype(bool)


def person_masks(
    frames: Iterable[np.ndarray], progress: bool = False, model_selection: int = SEGMENTATION_MODEL, workers: int = 0
) -> Iterator[np.ndarray]:
    """bool [H, W] person mask per RGB uint8 frame (HxWx3), in order.

    The segmentation model keeps no state between frames (the masks are identical whichever
    instance sees which frame, checked by the tests), and one mediapipe graph uses about one core,
    so `workers` instances (0: one per core, at most 4) segment frames side by side on threads.
    """
    import threading

    import mediapipe as mp

    from gstalker_ns.native_logs import start_graph_quietly

    def build():
        return mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)

    local = threading.local()
    made: List[Any] = []
    made_lock = threading.Lock()

    def segment(frame: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(frame)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frames must be RGB uint8 HxWx3, got {image.dtype} {image.shape}")
        seg = getattr(local, "seg", None)
        if seg is None:
            local.seg, result = start_graph_quietly(build, image)
            with made_lock:
                made.append(local.seg)
        else:
            result = seg.process(image)
        conf = result.segmentation_mask
        if conf is None:
            return np.zeros(image.shape[:2], bool)
        return _clean(np.asarray(conf) > PERSON_THRESHOLD)

    bar = progress_bar(None, "segment", progress)
    try:
        for person in ordered_map(segment, frames, workers=workers):
            bar.update(1)
            yield person
    finally:
        bar.close()
        for seg in made:
            seg.close()


# --------------------------------------------------------------------------------------------
# labels


def label_map(person: np.ndarray, points_478: Optional[np.ndarray], height: int, width: int) -> np.ndarray:
    """uint8 [H, W] label map from a person mask and one frame's face-mesh points (pixel
    coordinates; None or any NaN = no face). See the module doc for the rules."""
    height, width = int(height), int(width)
    person = np.asarray(person, dtype=bool)
    if person.shape != (height, width):
        raise ValueError(f"person mask is {person.shape}, expected {(height, width)}")
    labels = np.where(person, LABEL_TORSO, LABEL_BACKGROUND).astype(np.uint8)
    if points_478 is None:
        return labels
    pts = np.asarray(points_478, dtype=np.float64)
    if pts.shape[0] < 468 or not np.all(np.isfinite(pts[:468])):
        return labels
    polys = face_mesh_polygons(pts)
    oval = polys["face_oval"].astype(np.float64)

    # The face's frame: up axis from chin to forehead top, side axis perpendicular.
    up = pts[FOREHEAD_TOP] - pts[CHIN]
    norm = float(np.hypot(*up))
    if norm < 1e-6:
        return labels
    up /= norm
    side = np.array([-up[1], up[0]])
    centre = oval.mean(axis=0)
    half_width = float(np.max(np.abs((oval - centre) @ side)))
    brow_u = float(np.mean((pts[list(EYEBROWS)] - centre) @ up))
    mouth_u = float(np.mean((pts[list(MOUTH_CORNERS)] - centre) @ up))

    dx = (np.arange(width) + 0.5 - centre[0])[None, :]  # broadcast: the same values as a full grid,
    dy = (np.arange(height) + 0.5 - centre[1])[:, None]  # without building two [H, W] index arrays
    u = dx * up[0] + dy * up[1]
    s = np.abs(dx * side[0] + dy * side[1])
    span = s <= HEAD_SPAN * half_width
    head = _fill(oval, height, width) | (person & span & (u >= min(brow_u, mouth_u)))
    labels[head] = LABEL_HEAD

    labels[_fill(polys["lips_outer"], height, width)] = LABEL_LIPS
    inner = polys["lips_inner"]
    if _polygon_area(inner) >= 1.0:
        labels[_fill(inner, height, width)] = LABEL_MOUTH_INTERIOR
    return labels


# --------------------------------------------------------------------------------------------
# the stage


def list_frames(frames_dir: Path) -> List[Path]:
    """The stage's input frames: ``NNNNNN.jpg|png``, numbered 0..N-1 without gaps."""
    frames_dir = Path(frames_dir)
    try:
        names = sorted(e.name for e in os.scandir(frames_dir) if _FRAME_FILE_RE.match(e.name))
    except OSError:
        raise MasksInputError(f"{frames_dir}: frames folder not found; run the decode stage first") from None
    if not names:
        raise MasksInputError(f"{frames_dir}: holds no frames (000000.jpg ...); run the decode stage first")
    indices = [int(n[:6]) for n in names]
    if indices != list(range(len(names))):
        raise MasksInputError(f"{frames_dir}: frame numbers have gaps or duplicates; re-run the decode stage")
    return [frames_dir / n for n in names]


def _fingerprint(frame_paths: List[Path], points: np.ndarray) -> Dict[str, Any]:
    digest = hashlib.sha256()
    for path in frame_paths:
        st = path.stat()
        digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    pts = np.ascontiguousarray(points, dtype=np.float32)
    return {
        "num_frames": len(frame_paths),
        "frames_sha256": digest.hexdigest(),
        "points_sha256": hashlib.sha256(pts.tobytes() + str(pts.shape).encode()).hexdigest(),
    }


def _options() -> Dict[str, Any]:
    return {"segmentation_model": SEGMENTATION_MODEL, "threshold": PERSON_THRESHOLD, "head_span": HEAD_SPAN}


def _cached(stage_dir: Path, fingerprint: Dict[str, Any]) -> bool:
    try:
        manifest = json.loads((stage_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("stage") != "masks" or manifest.get("version") != MASKS_VERSION:
        return False
    if manifest.get("input") != fingerprint or manifest.get("options") != _options():
        return False
    try:
        present = {e.name for e in os.scandir(stage_dir / MASKS_DIR)}
    except OSError:
        return False
    return all(MASK_NAME.format(k) in present for k in range(fingerprint["num_frames"]))


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MasksInputError(f"{path}: cannot read this frame; re-run the decode stage")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _tee_frames(frames: Iterable[np.ndarray]) -> Tuple[Iterator[np.ndarray], Dict[int, np.ndarray]]:
    """(the frames, a dict that holds frame k from when it is read until its caller pops it)."""
    kept: Dict[int, np.ndarray] = {}

    def run() -> Iterator[np.ndarray]:
        for k, frame in enumerate(frames):
            kept[k] = frame
            yield frame

    return run(), kept


def masks_stage(
    frames_dir: Path,
    points: np.ndarray,
    stage_dir: Path,
    progress: bool = True,
    on_frame: Optional[Callable[[int, np.ndarray, np.ndarray], None]] = None,
) -> Path:
    """Write ``stage_dir/masks/NNNNNN.png`` (uint8 label maps) for every frame in ``frames_dir``
    and, last, ``stage_dir/masks.json``; returns the masks folder. ``points`` is [N, 478, 2]
    face-mesh pixel coordinates of the same frames (NaN = no face). Cached: see the module doc.
    ``on_frame(k, rgb, labels)`` is called (on a worker thread) for each frame labelled here, not
    for a cached stage: the background plate collects its samples this way."""
    import cv2

    frames_dir, stage_dir = Path(frames_dir), Path(stage_dir)
    frame_paths = list_frames(frames_dir)
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 3 or pts.shape[0] != len(frame_paths) or pts.shape[2] != 2:
        raise MasksInputError(
            f"{frames_dir}: {len(frame_paths)} frames but landmarks of shape {pts.shape}; re-run the landmarks stage"
        )
    fingerprint = _fingerprint(frame_paths, pts)
    masks_dir = stage_dir / MASKS_DIR
    if _cached(stage_dir, fingerprint):
        return masks_dir

    masks_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / MANIFEST_FILE).unlink(missing_ok=True)  # from here on the stage is "not done"
    remove_stale_files(masks_dir, stage_dir, _TEMP_FILE_RE, NUMBERED_PNG_RE, keep_below=None)

    shape = None

    def segmented():
        nonlocal shape
        frames = prefetch(_read_rgb(p) for p in frame_paths)
        if on_frame is not None:  # keep each frame for on_frame (the segmenter only needs it once)
            frames, kept = _tee_frames(frames)
        for k, person in enumerate(person_masks(frames)):
            if shape is None:
                shape = person.shape
            elif person.shape != shape:
                raise MasksInputError(f"{frame_paths[k]}: frame size differs from the first frame; re-run the decode stage")
            yield k, person, (kept.pop(k) if on_frame is not None else None)

    def write(job) -> bool:
        """Label and write frame k; True when it has no face. Runs on a worker thread while the
        next frames are read and segmented."""
        k, person, rgb = job
        h, w = person.shape
        frame_pts = pts[k] if np.all(np.isfinite(pts[k])) else None
        labels = label_map(person, frame_pts, h, w)
        if on_frame is not None:
            on_frame(k, rgb, labels)
        ok, buf = cv2.imencode(".png", labels)
        if not ok:
            raise RuntimeError(f"PNG encoding failed for frame {k}")
        atomic_write_bytes(masks_dir / MASK_NAME.format(k), buf.tobytes())
        return frame_pts is None

    no_face: List[int] = []
    bar = progress_bar(len(frame_paths), "masks", progress)
    try:
        for k, missing in enumerate(ordered_map(write, segmented())):
            if missing:
                no_face.append(k)
            bar.update(1)
    finally:
        bar.close()
    remove_stale_files(masks_dir, stage_dir, _TEMP_FILE_RE, NUMBERED_PNG_RE, keep_below=len(frame_paths))

    atomic_write_json(
        stage_dir / MANIFEST_FILE,
        {
            "stage": "masks",
            "version": MASKS_VERSION,
            "input": fingerprint,
            "options": _options(),
            "output": {
                "masks": f"{MASKS_DIR}/{{:06d}}.png",
                "num_frames": len(frame_paths),
                "width": shape[1] if shape else 0,
                "height": shape[0] if shape else 0,
                "no_face_frames": no_face,
            },
        },
    )
    return masks_dir
