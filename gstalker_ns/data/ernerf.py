"""Read a folder prepared by ER-NeRF's / AD-NeRF's preprocessing as it is (nothing is converted
or written): `ns-train gstalker --data ernerf_folder/` trains on it directly.

What such a folder holds (ER-NeRF `data_utils/process.py`; AD-NeRF writes the same names)::

    transforms_train.json   focal_len, cx, cy; frames [{img_id, aud_id, transform_matrix}]
    transforms_val.json     the same for the held-out tail of the clip (optional here)
    gt_imgs/{img_id}.jpg    the frames with the background replaced by bc.jpg (else ori_imgs/)
    ori_imgs/{img_id}.jpg   the raw frames; ori_imgs/{img_id}.lms: 68 2D landmarks ("x y" lines)
    parsing/{img_id}.png    colour-coded segmentation (BGR as cv2 reads it): head (255,0,0),
                            neck (0,255,0), torso (0,0,255), background (255,255,255)
    torso_imgs/{img_id}.png RGBA torso layer (not used)
    bc.jpg                  background plate
    aud.wav                 the audio
    aud_ds.npy / aud.npy    DeepSpeech features [N, 16, 29]
    aud_eo.npy              wav2vec (Esperanto) features [N, 16, 44]
    aud_hu.npy              HuBERT features [N, 2, 1024]
    au.csv                  OpenFace action units; blink = clip(AU45_r, 0, 2) / 2

Cameras are camera-to-world in the NeRF/OpenGL convention with the face tracker's head frame
as world (translation already divided by 10): our convention, used unchanged. A frame's
`aud_id` becomes FrameEntry.frame_idx (it selects the feature row and blink slot); its `img_id`
names the files. Label maps are decoded from the parsing PNGs in memory (`read_parsing_labels`),
with the lips and mouth interior painted from the landmarks.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from gstalker_ns.data import layout as L

TRAIN_FILE = "transforms_train.json"
VAL_FILE = "transforms_val.json"
BACKGROUND_FILE = "bc.jpg"
AUDIO_FILE = "aud.wav"
AU_FILE = "au.csv"
IMAGE_FOLDERS = ("gt_imgs", "ori_imgs")
PARSING_FOLDER = "parsing"
LANDMARK_FOLDER = "ori_imgs"
ERNERF_FPS = 25.0
RERUN = "re-run ER-NeRF's data_utils/process.py on the video"

# Audio feature files: kind -> (file names in preference order, feature dim, how ER-NeRF extracts them)
AUDIO_KINDS: Dict[str, Tuple[Tuple[str, ...], int, str]] = {
    "deepspeech": (("aud_ds.npy", "aud.npy"), 29, "ER-NeRF data_utils/deepspeech_features/extract_ds_features.py"),
    "wav2vec": (("aud_eo.npy",), 44, "ER-NeRF nerf_triplane/asr.py --save_feats (wav2vec2 Esperanto)"),
    "hubert": (("aud_hu.npy",), 1024, "ER-NeRF data_utils/hubert.py"),
}
AUDIO_CHOICES = ("auto",) + tuple(AUDIO_KINDS)
# "auto": the first of these that exists; aud.npy's kind is read from its feature dim.
AUTO_ORDER: Tuple[Tuple[str, Optional[str]], ...] = (
    ("aud_ds.npy", "deepspeech"),
    ("aud.npy", None),
    ("aud_eo.npy", "wav2vec"),
    ("aud_hu.npy", "hubert"),
)

# Parsing colours in BGR order (as cv2 reads the PNG) and their labels.
PARSING_PALETTE_BGR = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], dtype=np.int32)
PARSING_LABELS = np.array([L.LABEL_HEAD, L.LABEL_TORSO, L.LABEL_TORSO, L.LABEL_BACKGROUND], dtype=np.uint8)
MAX_COLOUR_DISTANCE = 80.0  # farther than this from every palette colour: an unknown colour (-> background)
MAX_UNKNOWN_FRACTION = 0.5  # more unknown pixels than this: not a parsing map at all

OUTER_LIPS = slice(48, 60)  # dlib 68-point order
INNER_LIPS = slice(60, 68)


def is_ernerf_folder(root: Path) -> bool:
    """True for a folder with ER-NeRF / AD-NeRF transforms files (and no transforms.json of ours)."""
    root = Path(root)
    return root.is_dir() and ((root / TRAIN_FILE).exists() or (root / VAL_FILE).exists())


def _fail(message: str) -> None:
    raise L.DatasetError(message)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise L.DatasetError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
            f"fix the file or {RERUN}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise L.DatasetError(f"{path}: unreadable ({exc}); {RERUN}") from None
    if not isinstance(meta, dict):
        _fail(f"{path}: expected a JSON object at the top level; {RERUN}")
    if not isinstance(meta.get("frames"), list):
        _fail(f"{path}: missing key frames (a list of {{img_id, aud_id, transform_matrix}}); {RERUN}")
    return meta


def _parse_frame(path: Path, i: int, raw: Any) -> Tuple[int, int, np.ndarray]:
    try:
        img_id = int(raw["img_id"])
        aud_id = int(raw.get("aud_id", img_id))
        matrix = np.asarray(raw["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise L.DatasetError(
            f"{path}: frame entry {i} lacks a valid {exc} (needs img_id, aud_id and a 4x4 transform_matrix); {RERUN}"
        ) from None
    if matrix.shape not in ((4, 4), (3, 4)):
        _fail(f"{path}: frame entry {i} has a transform_matrix of shape {matrix.shape}, expected 4x4; {RERUN}")
    if not np.isfinite(matrix).all():
        _fail(f"{path}: frame entry {i} has a non-finite transform_matrix; {RERUN}")
    if img_id < 0 or aud_id < 0:
        _fail(f"{path}: frame entry {i} has a negative img_id or aud_id; {RERUN}")
    if matrix.shape == (3, 4):
        matrix = np.concatenate([matrix, [[0.0, 0.0, 0.0, 1.0]]], axis=0)
    return img_id, aud_id, matrix


def choose_audio_features(root: Path, audio: str = "auto") -> Tuple[str, Dict[str, Any]]:
    """The feature file to use (relative name) and its extractor description; checks its shape
    (reads the .npy header only)."""
    root = Path(root)
    if audio not in AUDIO_CHOICES:
        _fail(f"ernerf_audio={audio!r} is not one of {', '.join(AUDIO_CHOICES)}")
    if audio == "auto":
        candidates: Tuple[Tuple[str, Optional[str]], ...] = AUTO_ORDER
    else:
        candidates = tuple((name, audio) for name in AUDIO_KINDS[audio][0])
    found = [(name, kind) for name, kind in candidates if (root / name).exists()]
    if not found:
        names = [name for name, _ in candidates]
        listed = ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1]
        what = "no audio feature file" if audio == "auto" else f"no {audio} feature file"
        tool = AUDIO_KINDS["deepspeech" if audio == "auto" else audio][2]
        _fail(
            f"{root}: {what} ({listed}); extract the features from aud.wav (e.g. with {tool}) or pick another "
            "--pipeline.datamanager.dataparser.ernerf-audio"
        )
    name, kind = found[0]
    path = root / name
    try:
        table = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise L.DatasetError(f"{path}: unreadable ({exc}); re-extract the audio features") from None
    shape = tuple(int(s) for s in table.shape)
    if kind is None:  # aud.npy: DeepSpeech for AD-NeRF, else whatever ER-NeRF's --asr_model wrote
        kind = {dim: k for k, (_, dim, _) in AUDIO_KINDS.items()}.get(shape[-1] if shape else -1)
    expected = {"deepspeech": "[frames, 16, 29]", "wav2vec": "[frames, 16, 44]", "hubert": "[frames, 2, 1024]"}
    if kind is None or len(shape) != 3 or shape[0] < 1 or shape[1] < 1 or shape[2] != AUDIO_KINDS[kind][1]:
        wanted = expected[kind] if kind else " or ".join(expected.values())
        label_form = " (ER-NeRF's --emb label form is not supported)" if len(shape) == 2 else ""
        _fail(
            f"{path}: shape {list(shape)} is not the {kind or 'ER-NeRF'} feature shape {wanted}{label_form}; "
            f"re-extract the features with {AUDIO_KINDS[kind][2] if kind else 'ER-NeRF preprocessing'}"
        )
    extractor = {
        "kind": kind,
        "source": "ernerf",
        "window": shape[1],
        "dim": shape[2],
        "fps": ERNERF_FPS,
        "file": name,
        "extract_with": AUDIO_KINDS[kind][2],
    }
    return name, extractor


def read_blink(path: Path) -> Optional[np.ndarray]:
    """Per-video-frame blink in [0, 1] from OpenFace's au.csv (row k = video frame k), or None
    when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    hint = "re-run OpenFace FeatureExtraction (with -aus) on the frames, or delete it (blink is then 0)"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise L.DatasetError(f"{path}: unreadable ({exc}); {hint}") from None
    if not rows:
        _fail(f"{path}: empty; {hint}")
    names = [name.strip() for name in rows[0]]
    if "AU45_r" not in names:
        _fail(f"{path}: has no AU45_r column (the blink intensity); {hint}")
    column = names.index("AU45_r")
    values = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            values.append(float(row[column]))
        except (IndexError, ValueError):
            _fail(f"{path}: line {line} has no numeric AU45_r value; {hint}")
    if not values:
        _fail(f"{path}: has a header but no rows; {hint}")
    blink = np.clip(np.asarray(values, dtype=np.float64), 0.0, 2.0) / 2.0
    if not np.isfinite(blink).all():
        _fail(f"{path}: AU45_r holds non-finite values; {hint}")
    return blink


def read_ernerf(root: Path, audio: str = "auto") -> L.TalkingPortraitLayout:
    """An ER-NeRF / AD-NeRF folder as a TalkingPortraitLayout (train + val frames, sorted by
    img_id). Raises DatasetError with a one-line message naming the file."""
    root = Path(root)
    if not root.is_dir():
        _fail(f"{root}: no such folder")
    train_path, val_path = root / TRAIN_FILE, root / VAL_FILE
    if not train_path.exists():
        _fail(f"{train_path}: missing; an ER-NeRF / AD-NeRF folder needs it (with {VAL_FILE}); {RERUN}")
    train = _read_json(train_path)
    val = _read_json(val_path) if val_path.exists() else None
    frames_file = TRAIN_FILE if val is None else f"{TRAIN_FILE} + {VAL_FILE}"

    if "focal_len" in train:
        fl_x = fl_y = train["focal_len"]
    elif "fl_x" in train or "fl_y" in train:  # RAD-NeRF style
        fl_x = train.get("fl_x", train.get("fl_y"))
        fl_y = train.get("fl_y", train.get("fl_x"))
    else:
        fl_x = fl_y = None
    try:
        fl_x, fl_y = float(fl_x), float(fl_y)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        fl_x = fl_y = float("nan")
    if not (np.isfinite(fl_x) and fl_x > 0 and np.isfinite(fl_y) and fl_y > 0):
        _fail(f"{train_path}: missing key focal_len (a positive focal length in pixels); {RERUN}")

    entries: Dict[int, Tuple[int, np.ndarray]] = {}
    for path, meta in ((train_path, train), (val_path, val)):
        if meta is None:
            continue
        for i, raw in enumerate(meta["frames"]):
            img_id, aud_id, matrix = _parse_frame(path, i, raw)
            entries.setdefault(img_id, (aud_id, matrix))  # a frame listed twice: the first entry wins
    if not entries:
        _fail(f"{train_path}: 'frames' must be a non-empty list; {RERUN}")
    img_ids = sorted(entries)

    folder = next((name for name in IMAGE_FOLDERS if (root / name).is_dir()), None)
    if folder is None:
        _fail(f"{root / IMAGE_FOLDERS[0]}: missing (neither gt_imgs/ nor ori_imgs/ holds the frames); {RERUN}")
    first = root / folder / f"{img_ids[0]}.jpg"
    if not first.exists():
        _fail(f"{first}: missing (frame img_id {img_ids[0]} in {frames_file}); restore the file or {RERUN}")
    from PIL import Image

    try:
        with Image.open(first) as image:
            width, height = image.size
    except (OSError, ValueError) as exc:
        raise L.DatasetError(f"{first}: unreadable image ({exc}); restore the file or {RERUN}") from None
    cx = float(train.get("cx", width / 2.0))
    cy = float(train.get("cy", height / 2.0))

    audio_features, extractor = choose_audio_features(root, audio)

    blink = read_blink(root / AU_FILE)
    if blink is not None and len(blink) < img_ids[-1]:  # one row short is tolerated (clamped)
        _fail(
            f"{root / AU_FILE}: has {len(blink)} rows but the frames go up to img_id {img_ids[-1]}; "
            "it does not belong to these frames: re-run OpenFace on them, or delete it (blink is then 0)"
        )

    has_parsing = (root / PARSING_FOLDER).is_dir()
    frames: List[L.FrameEntry] = []
    for img_id in img_ids:
        aud_id, matrix = entries[img_id]
        mask_path = f"{PARSING_FOLDER}/{img_id}.png" if has_parsing else None
        landmarks = f"{LANDMARK_FOLDER}/{img_id}.lms"
        frames.append(
            L.FrameEntry(
                frame_idx=aud_id,
                file_path=f"{folder}/{img_id}.jpg",
                mask_path=mask_path,
                camera_to_world=matrix,
                blink=float(blink[min(img_id, len(blink) - 1)]) if blink is not None else 0.0,
                mask_kind=L.MASK_KIND_ERNERF,
                landmarks_path=landmarks if mask_path is not None and (root / landmarks).exists() else None,
            )
        )
    return L.TalkingPortraitLayout(
        root=root,
        fps=ERNERF_FPS,
        width=int(width),
        height=int(height),
        fl_x=fl_x,
        fl_y=fl_y,
        cx=cx,
        cy=cy,
        frames=frames,
        background=BACKGROUND_FILE if (root / BACKGROUND_FILE).exists() else None,
        audio=AUDIO_FILE if (root / AUDIO_FILE).exists() else None,
        audio_features=audio_features,
        audio_extractor=extractor,
        head_radius=None,  # the dataparser estimates it from the head masks
        extra={
            "ernerf": {
                "image_folder": folder,
                "num_train": len(train["frames"]),
                "num_val": len(val["frames"]) if val is not None else 0,
                "blink_from": AU_FILE if blink is not None else None,
            }
        },
        source="ernerf",
        frames_file=frames_file,
    )


# --------------------------------------------------------------------------------------------
# Label maps
# --------------------------------------------------------------------------------------------


def decode_parsing(bgr: np.ndarray, path: Path) -> np.ndarray:
    """[H, W, 3] BGR parsing colours -> uint8 [H, W] labels (nearest palette colour; pixels far
    from every palette colour are background). Refuses an image that is mostly unknown colours."""
    pixels = bgr.reshape(-1, 3).astype(np.int32)
    keys = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    palette_keys = (PARSING_PALETTE_BGR[:, 0] << 16) | (PARSING_PALETTE_BGR[:, 1] << 8) | PARSING_PALETTE_BGR[:, 2]
    labels = np.full(len(pixels), L.LABEL_BACKGROUND, dtype=np.uint8)
    matched = np.zeros(len(pixels), dtype=bool)
    for key, label in zip(palette_keys, PARSING_LABELS):
        hit = keys == key
        labels[hit] = label
        matched |= hit
    stray = np.nonzero(~matched)[0]
    if stray.size:  # e.g. a resized or JPEG-recompressed map: nearest palette colour
        dist2 = ((pixels[stray, None, :] - PARSING_PALETTE_BGR[None]) ** 2).sum(-1)
        nearest = dist2.argmin(axis=1)
        close = dist2[np.arange(stray.size), nearest] <= MAX_COLOUR_DISTANCE**2
        labels[stray[close]] = PARSING_LABELS[nearest[close]]
        unknown = int((~close).sum())
        if unknown > MAX_UNKNOWN_FRACTION * len(pixels):
            _fail(
                f"{path}: {unknown / len(pixels):.0%} of its pixels are none of the ER-NeRF parsing colours "
                "(BGR head 255,0,0 / neck 0,255,0 / torso 0,0,255 / background 255,255,255); "
                "re-run ER-NeRF's face parsing (data_utils/face_parsing/test.py)"
            )
    return labels.reshape(bgr.shape[:2])


def read_landmarks(path: Path) -> np.ndarray:
    """[68, 2] float (x, y) pixel coordinates from an .lms file."""
    try:
        lms = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise L.DatasetError(f"{path}: unreadable landmarks ({exc}); {RERUN}") from None
    if lms.shape[0] < 68 or lms.shape[1] < 2 or not np.isfinite(lms[:68, :2]).all():
        _fail(f"{path}: expected 68 lines of 'x y' landmark coordinates, got shape {list(lms.shape)}; {RERUN}")
    return lms[:68, :2]


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def paint_lips(labels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Paint the outer lip polygon (points 48-59) as LABEL_LIPS and the inner one (60-67) as
    LABEL_MOUTH_INTERIOR over `labels` (a closed mouth's degenerate inner polygon is skipped)."""
    from PIL import Image, ImageDraw

    height, width = labels.shape
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in landmarks[OUTER_LIPS].tolist()], fill=L.LABEL_LIPS)
    inner = landmarks[INNER_LIPS]
    if _polygon_area(inner) >= 1.0:
        draw.polygon([tuple(p) for p in inner.tolist()], fill=L.LABEL_MOUTH_INTERIOR)
    painted = np.asarray(canvas)
    out = labels.copy()
    out[painted > 0] = painted[painted > 0]
    return out


def read_parsing_labels(path: Path, landmarks_path: Optional[Path] = None) -> np.ndarray:
    """uint8 [H, W] labels (LABEL_*) of an ER-NeRF parsing PNG, with the lips and mouth interior
    from the landmarks when given. Read in memory only: nothing is written to the folder."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise L.DatasetError(f"{path}: unreadable parsing map ({exc}); re-run ER-NeRF's face parsing") from None
    labels = decode_parsing(rgb[..., ::-1], Path(path))  # PIL gives RGB; the palette is in cv2's BGR
    if landmarks_path is not None:
        labels = paint_lips(labels, read_landmarks(Path(landmarks_path)))
    return labels
