"""The talking-portrait dataparser, dataset and lazy datamanager on tiny hand-made folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gstalker_ns.data import layout as L
from gstalker_ns.data.dataparser import TalkingPortraitDataParserConfig, split_indices
from tests.fixtures import make_tiny_folder


def parse(root, split="train", **overrides):
    config = TalkingPortraitDataParserConfig(data=root, num_seed_points=500, **overrides)
    return config.setup().get_dataparser_outputs(split=split)


def test_split_holds_out_the_last_eleventh():
    train, val = split_indices(22, 1 / 11, "train"), split_indices(22, 1 / 11, "val")
    assert list(val) == [20, 21] and list(train) == list(range(20))
    assert len(split_indices(110, 1 / 11, "val")) == 10
    assert list(split_indices(10, 0.0, "val")) == list(range(10))  # nothing held out: eval on train


def test_train_and_val_outputs(tmp_path):
    root = make_tiny_folder(tmp_path / "p", num_frames=22, size=32, head_radius=0.5)
    train = parse(root, "train")
    val = parse(root, "val")
    assert len(train.image_filenames) == 20 and len(val.image_filenames) == 2
    assert train.cameras.shape == (20,)
    frame_idx = train.cameras.metadata["frame_idx"]
    assert frame_idx.shape == (20, 1) and frame_idx[:, 0].tolist() == list(range(20))
    assert val.cameras.metadata["frame_idx"][:, 0].tolist() == [20, 21]
    # a camera slice keeps its frame index
    assert int(train.cameras[5:6].metadata["frame_idx"]) == 5
    meta = train.metadata
    assert tuple(meta["audio_features"].shape) == (22, 16, 8)
    assert meta["blink"].shape == (22,) and meta["blink"][7] == 1.0 and meta["blink"][1] == 0.0
    # the world is rescaled to head-radius units: cameras 3 radii -> 6 units away
    distances = train.cameras.camera_to_worlds[:, :3, 3].norm(dim=-1)
    assert torch.allclose(distances, torch.full_like(distances, 6.0), atol=1e-4)
    assert meta["points3D_xyz"].shape[1] == 3 and len(meta["points3D_xyz"]) == len(meta["points3D_rgb"])
    head_points = meta["points3D_xyz"][meta["points3D_part"] == 0]
    assert head_points.norm(dim=-1).median() == pytest.approx(1.0, abs=0.1)
    assert len(meta["label_paths"]) == 20


def test_eval_fraction_is_configurable(tmp_path):
    root = make_tiny_folder(tmp_path / "p", num_frames=20)
    assert len(parse(root, "val", eval_fraction=0.25).image_filenames) == 5


def test_dataset_returns_labels(tmp_path):
    from gstalker_ns.data.dataset import TalkingPortraitDataset

    root = make_tiny_folder(tmp_path / "p", size=32)
    dataset = TalkingPortraitDataset(parse(root, "train"))
    item = dataset.get_data(3, image_type="uint8")
    assert item["image"].shape == (32, 32, 3) and item["image"].dtype == torch.uint8
    assert item["labels"].shape == (32, 32, 1)
    assert (item["labels"] == L.LABEL_MOUTH_INTERIOR).any() and (item["labels"] == L.LABEL_TORSO).any()


def test_lazy_datamanager_serves_frames_with_frame_idx(tmp_path):
    from gstalker_ns.data.datamanager import TalkingPortraitDatamanagerConfig

    root = make_tiny_folder(tmp_path / "p", num_frames=22)
    config = TalkingPortraitDatamanagerConfig(dataparser=TalkingPortraitDataParserConfig(data=root, num_seed_points=300))
    manager = config.setup(device="cpu", test_mode="val")
    seen = set()
    for step in range(25):
        camera, batch = manager.next_train(step)
        seen.add(int(camera.metadata["frame_idx"]))
        assert batch["image"].shape == (32, 32, 3) and "labels" in batch
        assert int(camera.metadata["frame_idx"]) == manager.train_dataset.cameras.metadata["frame_idx"][batch["image_idx"]]
    assert seen == set(range(20))  # every training frame drawn once per epoch, none held out
    evals = manager.fixed_indices_eval_dataloader
    assert len(evals) == 2
    frames = [int(cam.metadata["frame_idx"]) for cam, _ in evals]
    assert frames == [20, 21]
    # nothing was cached: the lazy sequences hold no decoded images
    assert not hasattr(manager, "_cached_images")


def test_blink_frames_can_be_drawn_more_often(tmp_path):
    """blink_share: frames with shut eyes are drawn until they make up about that share of a pass,
    the rest once, in a seeded order (the same every run); 0 leaves nerfstudio's sampling alone."""
    import json

    from gstalker_ns.data.datamanager import TalkingPortraitDatamanagerConfig

    root = make_tiny_folder(tmp_path / "p", num_frames=22)
    meta = json.loads((root / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame["blink"] = 1.0 if frame["frame_idx"] in (3, 7) else (0.4 if frame["frame_idx"] == 9 else 0.0)
    (root / "transforms.json").write_text(json.dumps(meta))

    def one_pass(share):
        config = TalkingPortraitDatamanagerConfig(
            dataparser=TalkingPortraitDataParserConfig(data=root, num_seed_points=300), blink_share=share
        )
        manager = config.setup(device="cpu", test_mode="val")
        frames = manager.train_dataset.cameras.metadata["frame_idx"].reshape(-1).tolist()
        return [frames[i] for i in manager.sample_train_cameras()]

    plain, boosted = one_pass(0.0), one_pass(0.25)
    assert sorted(plain) == list(range(20))
    counts = {f: boosted.count(f) for f in set(boosted)}
    # 2 shut of 20: r = 0.25 * 18 / (0.75 * 2) = 3 -> 6 of 24 draws
    assert counts[3] == counts[7] == 3 and counts[9] == 1 and len(boosted) == 24
    assert boosted == one_pass(0.25)  # seeded
    assert sorted(one_pass(0.05)) == list(range(20))  # already 10% shut: no repeats


def test_blink_repeat_reaches_the_share():
    from gstalker_ns.data.datamanager import blink_repeat

    assert blink_repeat(1144, 16, 0.1) == 8  # dfrf_french's training part
    assert blink_repeat(1240, 40, 0.1) == 3
    assert blink_repeat(100, 20, 0.1) == 1  # blinks often enough already
    assert blink_repeat(100, 0, 0.1) == 1 and blink_repeat(100, 5, 0.0) == 1
    r = blink_repeat(409, 3, 0.1)
    assert abs(3 * r / (406 + 3 * r) - 0.1) < 0.01


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("no_transforms", "transforms.json: missing"),
        ("malformed", "malformed JSON"),
        ("missing_frame", "000004.jpg: missing"),
        ("missing_mask", "000002.png: missing"),
        ("missing_features", "audio_features.npy: missing"),
        ("missing_background", "background.png: missing"),
        ("too_few_features", "feature windows"),
        ("bad_matrix", "transform_matrix of shape"),
        ("no_frames", "non-empty list"),
    ],
)
def test_broken_folders_give_one_line_errors(tmp_path, breakage, expected):
    root = make_tiny_folder(tmp_path / "p", num_frames=12)
    tpath = root / "transforms.json"
    meta = json.loads(tpath.read_text())
    if breakage == "no_transforms":
        tpath.unlink()
    elif breakage == "malformed":
        tpath.write_text(tpath.read_text()[:-20])
    elif breakage == "missing_frame":
        (root / "frames" / "000004.jpg").unlink()
    elif breakage == "missing_mask":
        (root / "masks" / "000002.png").unlink()
    elif breakage == "missing_features":
        (root / "audio_features.npy").unlink()
    elif breakage == "missing_background":
        (root / "background.png").unlink()
    elif breakage == "too_few_features":
        L.atomic_save_npy(root / "audio_features.npy", np.zeros((5, 16, 8), np.float32))
    elif breakage == "bad_matrix":
        meta["frames"][3]["transform_matrix"] = [[1, 0], [0, 1]]
        tpath.write_text(json.dumps(meta))
    elif breakage == "no_frames":
        meta["frames"] = []
        tpath.write_text(json.dumps(meta))
    with pytest.raises(L.DatasetError) as info:
        parse(root)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_feature_table_one_short_is_clamped(tmp_path):
    root = make_tiny_folder(tmp_path / "p", num_frames=12, feature_rows=11)
    val = parse(root, "val")
    assert val.cameras.metadata["frame_idx"][:, 0].max() == 10  # clamped to the last feature row


def test_inputs_are_not_modified(tmp_path):
    root = make_tiny_folder(tmp_path / "p", num_frames=12)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    parse(root, "train")
    parse(root, "val")
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert before == after
