"""Crop, person/label masks and the background plate, against the synthetic subject's exact
label maps and clean plate. Landmarks come from mediapipe FaceMesh run here (not from the
landmarks stage), so this file tests only crop/masks/background."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
mp = pytest.importorskip("mediapipe")

from gstalker_ns.data.layout import LABEL_HEAD, LABEL_LIPS, LABEL_MOUTH_INTERIOR  # noqa: E402
from gstalker_ns.errors import GstalkerUserError  # noqa: E402
from gstalker_ns.preprocess import masks as masks_mod  # noqa: E402
from gstalker_ns.preprocess.background import background_plate  # noqa: E402
from gstalker_ns.preprocess.crop import CropBox, CropError, choose_crop  # noqa: E402
from gstalker_ns.preprocess.masks import (  # noqa: E402
    FACE_OVAL,
    LIPS_INNER,
    LIPS_OUTER,
    face_mesh_polygons,
    label_map,
    masks_stage,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _face_mesh(frame_paths):
    points = np.full((len(frame_paths), 478, 2), np.nan, np.float32)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, refine_landmarks=True, max_num_faces=1) as mesh:
        for k, path in enumerate(frame_paths):
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            h, w = rgb.shape[:2]
            result = mesh.process(rgb)
            if result.multi_face_landmarks:
                lm = result.multi_face_landmarks[0].landmark
                points[k] = np.array([(p.x * w, p.y * h) for p in lm], np.float32)
    return points


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    from gstalker_ns.synth.subject import generate_subject

    root = tmp_path_factory.mktemp("subject")
    generate_subject(root, duration=2.0, size=256, seed=0, progress=False, video=False, force=True)
    frame_paths = sorted((root / "frames").glob("*.jpg"))
    points = _face_mesh(frame_paths)
    assert np.isfinite(points).all(axis=(1, 2)).mean() > 0.9, "face mesh should find the synthetic face"
    stage = tmp_path_factory.mktemp("stage")
    t0 = time.perf_counter()
    masks_dir = masks_stage(root / "frames", points, stage, progress=False)
    elapsed = time.perf_counter() - t0
    print(f"\nmasks_stage: {1000 * elapsed / len(frame_paths):.1f} ms/frame at 256x256 (incl. jpg read, png write)")
    return root, points, stage, masks_dir


# ----------------------------------------------------------------------------------------------
# polygons


def _loops_from_edges(edges):
    """Chain an undirected edge set into closed vertex loops."""
    adj = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    assert all(len(v) == 2 for v in adj.values()), "every vertex of a closed loop has two neighbours"
    loops, seen = [], set()
    for start in adj:
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        while True:
            seen.add(cur)
            nxt = [n for n in adj[cur] if n != prev][0] if prev is not None else adj[cur][0]
            if nxt == start:
                break
            loop.append(nxt)
            prev, cur = cur, nxt
        loops.append(loop)
    return loops


def _same_cycle(a, b):
    a, b = list(a), list(b)
    if len(a) != len(b) or set(a) != set(b):
        return False
    i = b.index(a[0])
    rot = b[i:] + b[:i]
    rev = [rot[0]] + rot[1:][::-1]
    return a == rot or a == rev


def test_polygons_match_mediapipe_connection_sets():
    fm = mp.solutions.face_mesh
    (oval,) = _loops_from_edges(fm.FACEMESH_FACE_OVAL)
    assert _same_cycle(FACE_OVAL, oval)
    lips = _loops_from_edges(fm.FACEMESH_LIPS)
    assert len(lips) == 2
    assert any(_same_cycle(LIPS_OUTER, loop) for loop in lips)
    assert any(_same_cycle(LIPS_INNER, loop) for loop in lips)
    polys = face_mesh_polygons(np.arange(478 * 2, dtype=np.float32).reshape(478, 2))
    assert polys["face_oval"].shape == (36, 2) and polys["lips_outer"].shape == (20, 2)


def test_label_map_without_face_is_all_torso():
    person = np.zeros((32, 32), bool)
    person[10:, 8:24] = True
    for pts in (None, np.full((478, 2), np.nan, np.float32)):
        labels = label_map(person, pts, 32, 32)
        assert set(np.unique(labels)) == {0, 1}
        assert ((labels == 1) == person).all()


# ----------------------------------------------------------------------------------------------
# accuracy on the synthetic subject


def test_masks_match_ground_truth(subject):
    root, points, stage, masks_dir = subject
    n = len(points)
    person_iou, head_iou, mouth_iou, area, gt_area = [], [], [], [], []
    for k in range(n):
        gt = cv2.imread(str(root / "masks" / f"{k:06d}.png"), cv2.IMREAD_UNCHANGED)
        ours = cv2.imread(str(masks_dir / f"{k:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert ours.dtype == np.uint8 and ours.shape == gt.shape and ours.max() <= 4
        person_iou.append(_iou(ours > 0, gt > 0))
        if not np.isfinite(points[k]).all():
            continue
        head_iou.append(_iou(ours >= LABEL_HEAD, gt >= LABEL_HEAD))
        mouth_iou.append(_iou(ours >= LABEL_LIPS, gt >= LABEL_LIPS))
        area.append((ours == LABEL_MOUTH_INTERIOR).sum())
        gt_area.append((gt == LABEL_MOUTH_INTERIOR).sum())
    corr = float(np.corrcoef(area, gt_area)[0, 1]) if np.std(gt_area) > 0 and np.std(area) > 0 else float("nan")
    print(
        f"\nperson IoU mean {np.mean(person_iou):.3f} (min {np.min(person_iou):.3f}); "
        f"head IoU mean {np.mean(head_iou):.3f} (min {np.min(head_iou):.3f}); "
        f"lips+interior IoU mean {np.mean(mouth_iou):.3f}; interior area Pearson {corr:.3f} "
        f"(GT interior px {np.min(gt_area)}..{np.max(gt_area)}, ours {np.min(area)}..{np.max(area)})"
    )
    assert np.mean(person_iou) > 0.9
    assert np.mean(head_iou) > 0.8
    assert np.mean(mouth_iou) > 0.5
    assert corr > 0.7


def test_background_plate(subject):
    root, points, stage, masks_dir = subject
    truth = cv2.cvtColor(cv2.imread(str(root / "background.png")), cv2.COLOR_BGR2RGB).astype(np.float32)
    plate, never_seen = background_plate(root / "frames", masks_dir, dilate_px=4)
    assert plate.dtype == np.uint8 and plate.shape == truth.shape
    gt_person_ever = np.zeros(never_seen.shape, bool)
    for path in sorted((root / "masks").glob("*.png")):
        gt_person_ever |= cv2.imread(str(path), cv2.IMREAD_UNCHANGED) > 0
    free = ~gt_person_ever
    err = np.abs(plate.astype(np.float32) - truth)
    mae_free = float(err[free].mean())
    mae_inpainted = float(err[never_seen].mean()) if never_seen.any() else 0.0
    print(
        f"\nbackground MAE on never-covered pixels {mae_free:.2f} levels; inpainted "
        f"{never_seen.mean() * 100:.1f}% of the frame (MAE there {mae_inpainted:.1f}); "
        f"GT never-uncovered {gt_person_ever.mean() * 100:.1f}%"
    )
    assert mae_free < 8
    assert never_seen.any() and never_seen.mean() < gt_person_ever.mean() + 0.1


def test_plate_from_the_masks_stage_s_samples_equals_the_plate_from_files(subject, tmp_path):
    """gstalker-process collects the plate's frames while the masks stage labels them; the plate
    must be the one built from the written files, byte for byte, and a subsample (max_frames)
    must take the same frames. A stage that did not label every sampled frame (cached) reads files."""
    from gstalker_ns.preprocess.background import PlateSamples

    root, points, _, _ = subject
    count = len(list(root.glob("frames/*.jpg")))
    for max_frames in (300, 7):
        samples = PlateSamples(count, dilate_px=4, max_frames=max_frames)
        masks_dir = masks_stage(root / "frames", points, tmp_path / f"stage{max_frames}", progress=False, on_frame=samples.add)
        assert samples.complete
        from_samples = background_plate(root / "frames", masks_dir, dilate_px=4, max_frames=max_frames, samples=samples)
        from_files = background_plate(root / "frames", masks_dir, dilate_px=4, max_frames=max_frames)
        assert np.array_equal(from_samples[0], from_files[0]) and np.array_equal(from_samples[1], from_files[1])
        # samples collected with other settings are not used for this call's plate
        other = background_plate(root / "frames", masks_dir, dilate_px=0, max_frames=max_frames, samples=samples)
        assert np.array_equal(other[0], background_plate(root / "frames", masks_dir, dilate_px=0, max_frames=max_frames)[0])
    partial = PlateSamples(count, dilate_px=4)
    partial.add(0, *(np.zeros((256, 256, 3), np.uint8), np.zeros((256, 256), np.uint8)))
    assert not partial.complete  # background_plate then reads the files


# ----------------------------------------------------------------------------------------------
# caching and atomic writes


def test_masks_stage_caching_and_atomic_writes(subject, tmp_path, monkeypatch):
    root, points, _, _ = subject
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(4):
        (frames / f"{k:06d}.jpg").write_bytes((root / "frames" / f"{k:06d}.jpg").read_bytes())
    pts = points[:4].copy()
    stage = tmp_path / "stage"
    masks_dir = masks_stage(frames, pts, stage, progress=False)
    assert sorted(p.name for p in masks_dir.iterdir()) == [f"{k:06d}.png" for k in range(4)]
    assert (stage / "masks.json").is_file()
    mtimes = {p.name: p.stat().st_mtime_ns for p in masks_dir.iterdir()}

    calls = []
    real = masks_mod.person_masks
    monkeypatch.setattr(masks_mod, "person_masks", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    masks_stage(frames, pts, stage, progress=False)
    assert not calls, "second call with unchanged input must reuse the cache"
    assert {p.name: p.stat().st_mtime_ns for p in masks_dir.iterdir()} == mtimes

    # a changed frame recomputes
    src = cv2.imread(str(frames / "000001.jpg"))
    cv2.imwrite(str(frames / "000001.jpg"), np.ascontiguousarray(src[:, ::-1]))
    os.utime(frames / "000001.jpg", ns=(1, 1))
    masks_stage(frames, pts, stage, progress=False)
    assert len(calls) == 1
    # changed landmarks recompute too
    pts2 = pts.copy()
    pts2[2] = np.nan
    masks_stage(frames, pts2, stage, progress=False)
    assert len(calls) == 2
    import json

    assert json.loads((stage / "masks.json").read_text())["output"]["no_face_frames"] == [2]

    # an interrupted run leaves no manifest and no partial files; the next run redoes it
    def boom(*a, **kw):
        yield from []
        raise RuntimeError("interrupted")

    monkeypatch.setattr(masks_mod, "person_masks", boom)
    with pytest.raises(RuntimeError):
        masks_stage(frames, pts, stage, progress=False)
    assert not (stage / "masks.json").exists()
    assert not [p for p in masks_dir.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(masks_mod, "person_masks", real)
    masks_stage(frames, pts, stage, progress=False)
    assert (stage / "masks.json").is_file()

    with pytest.raises(GstalkerUserError):
        masks_stage(frames, pts[:3], stage, progress=False)


# ----------------------------------------------------------------------------------------------
# crop


def _fake_face(cx, cy, h):
    """Landmark-like points: an ellipse of height h around (cx, cy)."""
    t = np.linspace(0, 2 * np.pi, 478, endpoint=False)
    return np.stack([cx + 0.4 * h * np.cos(t), cy + 0.5 * h * np.sin(t)], -1).astype(np.float32)


def test_crop_landscape_face_right_of_centre():
    rng = np.random.default_rng(0)
    pts = np.stack([_fake_face(420 + rng.normal(0, 2), 170 + rng.normal(0, 2), 120) for _ in range(20)])
    pts[3] = np.nan  # a frame without a face is ignored
    box = choose_crop(pts, 640, 360)
    assert box.size <= 360 and box.x0 >= 0 and box.y0 >= 0
    assert box.x0 + box.size <= 640 and box.y0 + box.size <= 360
    lo, hi = np.nanmin(pts, axis=(0, 1)), np.nanmax(pts, axis=(0, 1))
    assert box.x0 <= lo[0] and hi[0] <= box.x0 + box.size and box.y0 <= lo[1] and hi[1] <= box.y0 + box.size
    assert box.x0 > 0  # moved right, towards the face
    assert box.out_size == min(512, box.size)

    frame = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
    out = box.apply(frame)
    assert out.shape == (box.out_size, box.out_size, 3)
    mapped = box.map_points(pts)
    assert np.allclose(box.unmap_points(mapped)[~np.isnan(pts)], pts[~np.isnan(pts)], atol=1e-3)
    assert np.isnan(mapped[3]).all()
    assert CropBox.from_json(box.to_json()) == box

    # a large frame is cropped and shrunk to 512
    big = choose_crop(pts * 3, 1920, 1080)
    assert big.out_size == 512 and big.size > 512
    p = big.map_points(pts[0] * 3)
    assert (p >= 0).all() and (p <= 512).all()
    assert np.allclose(big.unmap_points(p), pts[0] * 3, atol=1e-3)


def test_crop_identity_for_framed_square_input():
    pts = np.stack([_fake_face(256, 240, 220)] * 5)
    box = choose_crop(pts, 512, 512)
    assert (box.x0, box.y0, box.size, box.out_size) == (0, 0, 512, 512) and box.is_identity
    frame = np.zeros((512, 512, 3), np.uint8)
    assert box.apply(frame).shape == (512, 512, 3)
    with pytest.raises(CropError):
        choose_crop(np.full((3, 478, 2), np.nan), 512, 512)


def test_segmentation_on_several_threads_gives_the_same_masks(subject):
    """person_masks runs one mediapipe graph per worker thread; the model keeps no state between
    frames, so the masks must be those of a single graph, in the input order."""
    from PIL import Image

    root, _, _, _ = subject
    frames = [np.asarray(Image.open(root / "frames" / f"{k:06d}.jpg").convert("RGB")) for k in range(12)]
    frames = frames[::-1] + frames  # an order no worker assignment could fake
    single = list(masks_mod.person_masks(iter(frames), workers=1))
    threaded = list(masks_mod.person_masks(iter(frames), workers=3))
    assert len(threaded) == len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(single, threaded))
    assert any(m.any() for m in single) and not all(np.array_equal(single[0], m) for m in single)


def test_masked_median_equals_nanmedian_of_the_valid_samples():
    """The plate's median (radix sort, invalid samples pushed past the valid ones) must equal
    np.nanmedian over the valid samples: even and odd counts, a pixel never valid (NaN)."""
    from gstalker_ns.preprocess.background import _masked_median

    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, size=(9, 40, 37, 3), dtype=np.uint8)
    valid = rng.random((9, 40, 37)) < 0.6
    valid[:, 0, 0] = False
    expected = np.nanmedian(np.where(valid[..., None], stack.astype(np.float64), np.nan), axis=0)
    got = _masked_median(stack, valid, rows=16)
    assert np.isnan(got[0, 0]).all() and np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.array_equal(np.nan_to_num(got, nan=-1), np.nan_to_num(expected, nan=-1).astype(np.float32))
