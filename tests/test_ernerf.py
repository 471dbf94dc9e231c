"""ER-NeRF / AD-NeRF folders read as they are by the talking-portrait dataparser."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gstalker_ns.data import ernerf
from gstalker_ns.data import layout as L
from gstalker_ns.data.dataparser import TalkingPortraitDataParserConfig
from tests.fixtures import look_at_camera, make_tiny_folder

SIZE = 48
NUM_FRAMES = 12  # 11 train + 1 val, as ER-NeRF splits (the last 1/11 held out)
FOCAL, CX, CY = 60.0, 24.5, 23.5
AU45 = [0.0, 0.5, 1.0, 2.5, -0.3, 3.0, 1.2, 0.0, 0.1, 0.8, 4.0, 1.6]
NO_LMS_FRAME = 5  # this frame has no .lms file: no lips painted
# BGR colours as ER-NeRF's face parsing writes them with cv2
HEAD, NECK, TORSO, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
# known pixels (x, y)
HEAD_PX, NECK_PX, TORSO_PX, BG_PX = (24, 13), (24, 33), (10, 44), (45, 5)
LIPS_PX, INTERIOR_PX = (19, 25), (24, 25)
STRAY_HEAD_PX, STRAY_GREY_PX = (28, 16), (2, 2)


def _ellipse(cx, cy, ax, ay, n):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def make_ernerf_folder(root: Path, num_frames: int = NUM_FRAMES, feature_rows: int = NUM_FRAMES - 1) -> Path:
    """A folder exactly as ER-NeRF's data_utils/process.py leaves it (tiny)."""
    root = Path(root)
    for name in ("gt_imgs", "ori_imgs", "parsing", "torso_imgs"):
        (root / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    background = np.zeros((SIZE, SIZE, 3), np.uint8) + np.array([90, 120, 60], np.uint8)  # BGR
    cv2.imwrite(str(root / "bc.jpg"), background)
    frames = []
    for k in range(num_frames):
        parsing = np.full((SIZE, SIZE, 3), 255, np.uint8)
        head = (xx - 24) ** 2 + (yy - 20) ** 2 < 11**2
        neck = (np.abs(xx - 24) <= 4) & (yy >= 31) & (yy <= 35)
        torso = (xx >= 8) & (xx <= 40) & (yy >= 36)
        parsing[neck], parsing[torso], parsing[head] = NECK, TORSO, HEAD
        parsing[STRAY_HEAD_PX[1], STRAY_HEAD_PX[0]] = (250, 4, 2)  # a stray colour near head
        parsing[STRAY_GREY_PX[1], STRAY_GREY_PX[0]] = (128, 128, 128)  # unknown: background
        cv2.imwrite(str(root / "parsing" / f"{k}.png"), parsing)

        image = background.copy()
        image[head], image[neck | torso] = (140, 170, 220), (160, 60, 40)
        lms = np.zeros((68, 2))
        lms[:17] = _ellipse(24, 20, 11, 11, 17)
        lms[17:48] = np.array([24.0, 18.0]) + rng.normal(scale=2.0, size=(31, 2))
        lms[48:60] = _ellipse(24, 25, 6, 3, 12)
        lms[60:68] = _ellipse(24, 25, 4, 1.0 + 0.5 * (k % 3), 8)
        mouth = ((xx - 24) / 4) ** 2 + ((yy - 25) / (1.0 + 0.5 * (k % 3))) ** 2 < 1
        image[mouth] = (10, 10, 40)
        cv2.imwrite(str(root / "ori_imgs" / f"{k}.jpg"), image)
        cv2.imwrite(str(root / "gt_imgs" / f"{k}.jpg"), image)
        if k != NO_LMS_FRAME:
            np.savetxt(root / "ori_imgs" / f"{k}.lms", lms, "%f")
        torso_rgba = np.concatenate([image, (255 * (neck | torso)).astype(np.uint8)[..., None]], axis=-1)
        cv2.imwrite(str(root / "torso_imgs" / f"{k}.png"), torso_rgba)
        c2w = look_at_camera(0.5, yaw_deg=4 * np.sin(k / 2))
        c2w[:3, 3] += [0.01 * k, 0.002, -0.003]
        frames.append({"img_id": k, "aud_id": k, "transform_matrix": c2w.tolist()})
    split = num_frames - max(1, num_frames // 11)  # 11 train + 1 val for 12 frames
    for name, part in (("train", frames[:split]), ("val", frames[split:])):
        payload = {"focal_len": FOCAL, "cx": CX, "cy": CY, "frames": part}
        (root / f"transforms_{name}.json").write_text(json.dumps(payload, indent=2, separators=(",", ": ")))
    np.save(root / "aud_ds.npy", rng.normal(size=(feature_rows, 16, 29)).astype(np.float32))
    header = "frame, face_id, timestamp, confidence, success, AU01_r, AU45_r, AU45_c"
    rows = [f"{k + 1}, 0, {k * 0.04:.2f}, 0.98, 1, 0.1, {AU45[k % len(AU45)]}, 1" for k in range(num_frames)]
    (root / "au.csv").write_text("\n".join([header] + rows) + "\n")
    with wave.open(str(root / "aud.wav"), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(np.zeros(16000 * num_frames // 25, np.int16).tobytes())
    return root


def parse(root, split="train", **overrides):
    config = TalkingPortraitDataParserConfig(data=root, num_seed_points=500, **overrides)
    return config.setup().get_dataparser_outputs(split=split)


@pytest.fixture
def folder(tmp_path):
    return make_ernerf_folder(tmp_path / "May")


def _json_frames(root):
    frames = []
    for name in ("train", "val"):
        frames += json.loads((root / f"transforms_{name}.json").read_text())["frames"]
    return sorted(frames, key=lambda f: f["img_id"])


def test_detection_and_dispatch(folder, tmp_path):
    assert ernerf.is_ernerf_folder(folder)
    layout = L.read_layout(folder)
    assert layout.source == "ernerf" and layout.num_frames == NUM_FRAMES
    assert layout.extra["ernerf"]["num_train"] == 11 and layout.extra["ernerf"]["num_val"] == 1
    assert (layout.width, layout.height) == (SIZE, SIZE)  # from the first image
    assert layout.frames[0].mask_kind == L.MASK_KIND_ERNERF
    assert layout.frames[0].landmarks_path == "ori_imgs/0.lms"
    assert layout.frames[NO_LMS_FRAME].landmarks_path is None
    L.check_files(layout)
    ours = L.read_layout(make_tiny_folder(tmp_path / "ours", num_frames=4))
    assert ours.source == "gstalker" and ours.frames[0].mask_kind == L.MASK_KIND_LABELS
    assert not ernerf.is_ernerf_folder(tmp_path / "ours")


def test_train_and_val_outputs(folder):
    train, val = parse(folder, "train"), parse(folder, "val")
    assert len(train.image_filenames) == 11 and len(val.image_filenames) == 1
    assert [p.name for p in train.image_filenames] == [f"{k}.jpg" for k in range(11)]
    assert all(p.parent.name == "gt_imgs" for p in train.image_filenames)
    # frame_idx is the aud_id; the val frame (aud_id 11) is clamped to the last feature row
    assert train.cameras.metadata["frame_idx"].shape == (11, 1)
    assert train.cameras.metadata["frame_idx"][:, 0].tolist() == list(range(11))
    assert val.cameras.metadata["frame_idx"].tolist() == [[10]]
    # intrinsics from focal_len / cx / cy, size from the image
    cams = train.cameras
    assert torch.all(cams.fx == FOCAL) and torch.all(cams.fy == FOCAL)
    assert torch.all(cams.cx == CX) and torch.all(cams.cy == CY)
    assert torch.all(cams.width == SIZE) and torch.all(cams.height == SIZE)
    # cameras: the json's c2w, translation rescaled to head-radius units
    raw = np.array([f["transform_matrix"] for f in _json_frames(folder)])
    scale = train.metadata["world_scale"]
    assert scale > 0 and train.dataparser_scale == pytest.approx(scale)
    c2w = cams.camera_to_worlds.numpy()
    np.testing.assert_allclose(c2w[:, :3, :3], raw[:11, :3, :3], atol=1e-6)
    ratios = np.linalg.norm(c2w[:, :3, 3], axis=1) / np.linalg.norm(raw[:11, :3, 3], axis=1)
    np.testing.assert_allclose(ratios, scale, rtol=1e-5)
    directions = c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=1, keepdims=True)
    raw_dirs = raw[:11, :3, 3] / np.linalg.norm(raw[:11, :3, 3], axis=1, keepdims=True)
    np.testing.assert_allclose(directions, raw_dirs, atol=1e-5)
    np.testing.assert_allclose(val.cameras.camera_to_worlds[0, :3, 3].numpy(), raw[11, :3, 3] * scale, rtol=1e-5)
    meta = train.metadata
    table = np.load(folder / "aud_ds.npy")
    assert tuple(meta["audio_features"].shape) == (11, 16, 29)
    np.testing.assert_allclose(meta["audio_features"].numpy(), table)
    expected_blink = np.clip(AU45[:11], 0, 2) / 2
    np.testing.assert_allclose(meta["blink"].numpy(), expected_blink, atol=1e-6)
    assert meta["audio_extractor"] == {
        "kind": "deepspeech",
        "source": "ernerf",
        "window": 16,
        "dim": 29,
        "fps": 25.0,
        "file": "aud_ds.npy",
        "extract_with": ernerf.AUDIO_KINDS["deepspeech"][2],
    }
    assert Path(meta["background_path"]).name == "bc.jpg" and Path(meta["audio_path"]).name == "aud.wav"
    assert meta["label_kinds"] == [L.MASK_KIND_ERNERF] * 11 and meta["data_format"] == "ernerf"
    assert Path(meta["label_paths"][3]).relative_to(folder) == Path("parsing/3.png")
    assert meta["label_landmarks"][NO_LMS_FRAME] is None and meta["label_landmarks"][0].endswith("ori_imgs/0.lms")
    # seed points from the parsing masks sit around the head sphere (radius 1 after rescaling)
    head_points = meta["points3D_xyz"][meta["points3D_part"] == 0]
    assert len(head_points) > 0 and head_points.norm(dim=-1).median() == pytest.approx(1.0, abs=0.15)


def test_labels_from_parsing_and_landmarks(folder):
    from gstalker_ns.data.dataset import label_map_for, load_label_map

    layout = L.read_layout(folder)
    labels = L.frame_label_map(layout, layout.frames[0])
    assert labels.shape == (SIZE, SIZE) and labels.dtype == np.uint8
    at = lambda px: int(labels[px[1], px[0]])  # noqa: E731
    assert at(HEAD_PX) == L.LABEL_HEAD and at(STRAY_HEAD_PX) == L.LABEL_HEAD
    assert at(NECK_PX) == L.LABEL_TORSO and at(TORSO_PX) == L.LABEL_TORSO
    assert at(BG_PX) == L.LABEL_BACKGROUND and at(STRAY_GREY_PX) == L.LABEL_BACKGROUND
    assert at(LIPS_PX) == L.LABEL_LIPS and at(INTERIOR_PX) == L.LABEL_MOUTH_INTERIOR
    # no .lms: parsing only
    bare = L.frame_label_map(layout, layout.frames[NO_LMS_FRAME])
    assert bare[INTERIOR_PX[1], INTERIOR_PX[0]] == L.LABEL_HEAD and not (bare >= L.LABEL_LIPS).any()
    # the torch loader and the metadata route agree, and resizing keeps labels
    tensor = load_label_map(str(folder / "parsing/0.png"), kind=L.MASK_KIND_ERNERF,
                            landmarks_path=str(folder / "ori_imgs/0.lms"))
    assert torch.equal(tensor[..., 0], torch.from_numpy(labels))
    meta = parse(folder, "train").metadata
    assert torch.equal(label_map_for(meta, 0)[..., 0], torch.from_numpy(labels))
    half = label_map_for(meta, 0, scale_factor=0.5)
    assert half.shape == (SIZE // 2, SIZE // 2, 1) and (half == L.LABEL_MOUTH_INTERIOR).any()


def test_dataset_returns_labels(folder):
    from gstalker_ns.data.dataset import TalkingPortraitDataset

    dataset = TalkingPortraitDataset(parse(folder, "train"))
    item = dataset.get_data(2, image_type="uint8")
    assert item["image"].shape == (SIZE, SIZE, 3) and item["labels"].shape == (SIZE, SIZE, 1)
    for label in (L.LABEL_BACKGROUND, L.LABEL_TORSO, L.LABEL_HEAD, L.LABEL_LIPS, L.LABEL_MOUTH_INTERIOR):
        assert (item["labels"] == label).any()
    # the mouth in the image is where the labels say (rgb order: the jpg's BGR was converted)
    mouth = item["labels"][..., 0] == L.LABEL_MOUTH_INTERIOR
    head = item["labels"][..., 0] == L.LABEL_HEAD
    assert item["image"][mouth].float().median() < 60 < item["image"][head].float().median()


def test_audio_feature_choice(folder):
    rng = np.random.default_rng(1)
    np.save(folder / "aud_eo.npy", rng.normal(size=(12, 16, 44)).astype(np.float32))
    np.save(folder / "aud_hu.npy", rng.normal(size=(12, 2, 1024)).astype(np.float32))
    assert L.read_layout(folder).audio_features == "aud_ds.npy"
    meta = parse(folder, "train", ernerf_audio="wav2vec").metadata
    assert tuple(meta["audio_features"].shape) == (12, 16, 44) and meta["audio_extractor"]["kind"] == "wav2vec"
    meta = parse(folder, "train", ernerf_audio="hubert").metadata
    assert tuple(meta["audio_features"].shape) == (12, 2, 1024)
    assert meta["audio_extractor"]["window"] == 2 and meta["audio_extractor"]["file"] == "aud_hu.npy"
    # AD-NeRF's aud.npy (DeepSpeech) comes right after aud_ds.npy
    (folder / "aud_ds.npy").rename(folder / "aud.npy")
    layout = L.read_layout(folder)
    assert layout.audio_features == "aud.npy" and layout.audio_extractor["kind"] == "deepspeech"
    (folder / "aud.npy").unlink()
    assert L.read_layout(folder).audio_features == "aud_eo.npy"


def test_img_id_and_aud_id_kept_apart(folder):
    """Frames whose images are numbered differently from their audio rows (and blink by img_id)."""
    for name in ("train", "val"):
        path = folder / f"transforms_{name}.json"
        meta = json.loads(path.read_text())
        for f in meta["frames"]:
            f["aud_id"] = f["img_id"] + 3
        path.write_text(json.dumps(meta))
    np.save(folder / "aud_ds.npy", np.zeros((15, 16, 29), np.float32))
    train, val = parse(folder, "train"), parse(folder, "val")
    assert train.cameras.metadata["frame_idx"][:, 0].tolist() == [k + 3 for k in range(11)]
    assert [p.name for p in train.image_filenames] == [f"{k}.jpg" for k in range(11)]
    assert val.cameras.metadata["frame_idx"].tolist() == [[14]] and val.image_filenames[0].name == "11.jpg"
    blink = train.metadata["blink"].numpy()
    assert blink.shape == (15,) and blink[:3].tolist() == [0, 0, 0]
    np.testing.assert_allclose(blink[3:], np.clip(AU45, 0, 2) / 2, atol=1e-6)


def test_ori_imgs_fallback_and_optional_files(folder):
    shutil.rmtree(folder / "gt_imgs")
    (folder / "au.csv").unlink()
    (folder / "bc.jpg").unlink()
    (folder / "transforms_val.json").unlink()
    out = parse(folder, "train")
    assert all(p.parent.name == "ori_imgs" for p in out.image_filenames)
    assert len(out.image_filenames) == 10  # 11 frames (no val json), the last 1/11 held out
    assert float(out.metadata["blink"].abs().sum()) == 0.0
    assert out.metadata["background_path"] is None


def test_au_csv_without_leading_space(folder):
    text = (folder / "au.csv").read_text().replace(", ", ",")
    (folder / "au.csv").write_text(text)
    np.testing.assert_allclose(parse(folder).metadata["blink"].numpy(), np.clip(AU45[:11], 0, 2) / 2, atol=1e-6)


@pytest.mark.parametrize(
    "breakage, expected, options",
    [
        ("no_transforms", "transforms.json: missing", {}),
        ("no_train_transforms", "transforms_train.json: missing", {}),
        ("malformed", "transforms_train.json: malformed JSON", {}),
        ("no_focal", "transforms_train.json: missing key focal_len", {}),
        ("bad_matrix", "transform_matrix of shape", {}),
        ("missing_image", "gt_imgs/4.jpg: missing", {}),
        ("missing_parsing", "parsing/3.png: missing", {}),
        ("no_audio", "no audio feature file (aud_ds.npy, aud.npy, aud_eo.npy or aud_hu.npy)", {}),
        ("no_hubert", "no hubert feature file (aud_hu.npy)", {"ernerf_audio": "hubert"}),
        ("feature_dim", "aud_ds.npy: shape [11, 16, 30]", {}),
        ("feature_labels", "aud_ds.npy: shape [11, 16]", {}),
        ("too_few_features", "feature windows", {}),
        ("parsing_colours", "parsing/0.png: 100% of its pixels are none of the ER-NeRF parsing colours", {}),
        ("bad_lms", "ori_imgs/0.lms: expected 68 lines", {}),
        ("au_column", "au.csv: has no AU45_r column", {}),
        ("au_short", "au.csv: has 4 rows", {}),
    ],
)
def test_broken_folders_give_one_line_errors(folder, breakage, expected, options):
    train = folder / "transforms_train.json"
    if breakage == "no_transforms":
        train.unlink()
        (folder / "transforms_val.json").unlink()
    elif breakage == "no_train_transforms":
        train.unlink()
    elif breakage == "malformed":
        train.write_text(train.read_text()[:-30])
    elif breakage == "no_focal":
        meta = json.loads(train.read_text())
        del meta["focal_len"]
        train.write_text(json.dumps(meta))
    elif breakage == "bad_matrix":
        meta = json.loads(train.read_text())
        meta["frames"][2]["transform_matrix"] = [[1, 0], [0, 1]]
        train.write_text(json.dumps(meta))
    elif breakage == "missing_image":
        (folder / "gt_imgs" / "4.jpg").unlink()
    elif breakage == "missing_parsing":
        (folder / "parsing" / "3.png").unlink()
    elif breakage == "no_audio":
        (folder / "aud_ds.npy").unlink()
    elif breakage == "feature_dim":
        np.save(folder / "aud_ds.npy", np.zeros((11, 16, 30), np.float32))
    elif breakage == "feature_labels":
        np.save(folder / "aud_ds.npy", np.zeros((11, 16), np.int64))
    elif breakage == "too_few_features":
        np.save(folder / "aud_ds.npy", np.zeros((5, 16, 29), np.float32))
    elif breakage == "parsing_colours":
        cv2.imwrite(str(folder / "parsing" / "0.png"), np.full((SIZE, SIZE, 3), 100, np.uint8))
    elif breakage == "bad_lms":
        np.savetxt(folder / "ori_imgs" / "0.lms", np.zeros((10, 2)), "%f")
    elif breakage == "au_column":
        (folder / "au.csv").write_text((folder / "au.csv").read_text().replace("AU45_r", "AU46_r"))
    elif breakage == "au_short":
        lines = (folder / "au.csv").read_text().splitlines()
        (folder / "au.csv").write_text("\n".join(lines[:5]) + "\n")
    with pytest.raises(L.DatasetError) as info:
        parse(folder, **options)
    message = str(info.value)
    assert expected in message and "\n" not in message, message


def test_user_folder_is_not_modified(folder):
    from gstalker_ns.data.dataset import TalkingPortraitDataset

    before = {p: (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}  # files and folders
    train = parse(folder, "train")
    parse(folder, "val")
    dataset = TalkingPortraitDataset(train)
    for i in range(3):
        dataset.get_data(i, image_type="uint8")
    after = {p: (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}
    assert before == after


def test_model_trains_on_an_ernerf_folder(tmp_path):
    """End to end: the gstalker pipeline builds on an ER-NeRF folder and takes 3 CPU steps."""
    from nerfstudio.engine.optimizers import Optimizers

    from gstalker_ns.config import gstalker_trainer_config

    torch.manual_seed(0)
    root = make_ernerf_folder(tmp_path / "May")
    config = gstalker_trainer_config()
    config.pipeline.datamanager.data = root
    config.pipeline.datamanager.dataparser.num_seed_points = 800
    config.pipeline.datamanager.prefetch_threads = 0
    model = config.pipeline.model
    model.init_gaussians, model.sh_degree, model.num_downscales = 300, 0, 0
    model.coarse_steps, model.grid_levels, model.grid_log2_hashmap_size = 2, 4, 10
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    optimizers = Optimizers(config.optimizers, pipe.get_param_groups())
    assert pipe.model.audio_table.shape == (11, 16, 29)
    assert pipe.model.audio_extractor["source"] == "ernerf"
    for step in range(3):
        pipe.model.train()
        pipe.model.step_cb(optimizers, step)
        optimizers.zero_grad_all()
        _, losses, _ = pipe.get_train_loss_dict(step)
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()
        optimizers.optimizer_step_all()
    assert "mouth_l1" in losses and "offset_reg" in losses  # lips from the .lms reached the loss
