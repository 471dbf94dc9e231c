"""Render a split of a loaded run into the frames folder (gstalker_ns.evaluation.store).

Splits: ``test`` (the held-out frames: the last 1/11 of the clip unless the run says otherwise),
``train``, ``all`` (both, in clip order). Each camera renders the video frame its
``metadata["frame_idx"]`` names, at the dataset's resolution; on a GPU several frames go through
one rasterization (``model.render_batch``, as in gstalker-render), on the CPU one at a time. The
render time per frame is measured around the model's call with CUDA synchronised before and after
(everything the model does for the frames, not the PNG writing), divided by the frames it rendered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from gstalker_ns.errors import GstalkerUserError
from gstalker_ns.evaluation.store import GT, LABELS, FrameStore
from gstalker_ns.progress import progress_bar

SPLITS = ("test", "train", "all")


@dataclass
class FrameRef:
    dataset: Any
    index: int  # in the dataset
    frame: int  # video frame index


def split_frames(pipeline, split: str, max_frames: Optional[int] = None, only: Optional[List[int]] = None) -> List[FrameRef]:
    """The frames of a split in clip order (only the video frames in ``only``, and the first
    ``max_frames`` of them, when given)."""
    from gstalker_ns.drive.poses import frame_indices

    datamanager = pipeline.datamanager
    if split == "test":
        datasets = [datamanager.eval_dataset]
    elif split == "train":
        datasets = [datamanager.train_dataset]
    elif split == "all":
        datasets = [datamanager.train_dataset, datamanager.eval_dataset]
    else:
        raise GstalkerUserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    refs: Dict[int, FrameRef] = {}
    for dataset in datasets:
        for i, frame in enumerate(frame_indices(dataset.cameras).tolist()):
            refs.setdefault(int(frame), FrameRef(dataset, i, int(frame)))
    ordered = [refs[k] for k in sorted(refs)]
    if only is not None:
        wanted = set(int(k) for k in only)
        ordered = [r for r in ordered if r.frame in wanted]
        if not ordered:
            raise GstalkerUserError(f"none of the frames asked for are in the {split} split of this run; check --frames and --split")
    if max_frames is not None:
        ordered = ordered[: max(1, int(max_frames))]
    if not ordered:
        raise GstalkerUserError(f"the {split} split of this run has no frames; choose another --split")
    return ordered


def clip_metadata(pipeline) -> Dict[str, Any]:
    return dict(pipeline.datamanager.train_dataparser_outputs.metadata or {})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_ground_truth(store: FrameStore, refs: List[FrameRef], progress: bool) -> None:
    """Ground-truth frames and label maps of the split, as the dataset loads them."""
    from gstalker_ns.data.dataset import label_map_for

    have_labels = False
    with progress_bar(len(refs), "ground truth", progress) as bar:
        for ref in refs:
            image = np.asarray(ref.dataset.get_numpy_image(ref.index))[..., :3]
            if image.shape[:2] != (store.index["height"], store.index["width"]):
                raise GstalkerUserError(
                    f"frame {ref.frame} is {image.shape[1]}x{image.shape[0]} but the split's cameras are "
                    f"{store.index['width']}x{store.index['height']}; re-run preprocessing"
                )
            store.write(GT, ref.frame, image.astype(np.uint8))
            labels = label_map_for(ref.dataset.metadata, ref.index, getattr(ref.dataset, "scale_factor", 1.0))
            if labels is not None:
                store.write(LABELS, ref.frame, labels[..., 0].numpy().astype(np.uint8))
                have_labels = True
            bar.update(1)
    store.index["ground_truth"] = True
    store.index["labels"] = have_labels
    store.save_index()


def _batches(refs: List[FrameRef], size: int) -> List[List[FrameRef]]:
    """Consecutive refs of one dataset, at most `size` per batch (a batch is one `Cameras`)."""
    out: List[List[FrameRef]] = []
    for ref in refs:
        if out and len(out[-1]) < size and out[-1][0].dataset is ref.dataset:
            out[-1].append(ref)
        else:
            out.append([ref])
    return out


@torch.no_grad()
def render_into(store: FrameStore, pipeline, name: str, refs: List[FrameRef], info: Dict[str, Any], progress: bool) -> Dict[str, Any]:
    """Render every frame of ``refs`` with the pipeline's model into ``store`` under ``name``."""
    from gstalker_ns.render.frames import colour_only
    from gstalker_ns.render.video import render_batch_size, render_group

    model = pipeline.model
    model.eval()
    device = torch.device(model.device)
    size = render_batch_size(model)
    seconds: List[float] = []
    groups = _batches(refs, size)
    with progress_bar(len(refs), f"render {name}", progress) as bar, colour_only(model):
        for group in groups:
            index = torch.tensor([ref.index for ref in group])
            cameras = group[0].dataset.cameras[index]  # the model moves what it needs
            _sync(device)
            start = time.perf_counter()
            images = render_group(model, cameras)
            _sync(device)
            seconds += [(time.perf_counter() - start) / len(group)] * len(group)
            for ref, image in zip(group, images):
                if image.shape[:2] != (store.index["height"], store.index["width"]):
                    raise GstalkerUserError(
                        f"{name} renders {image.shape[1]}x{image.shape[0]} frames but the ground truth is "
                        f"{store.index['width']}x{store.index['height']}; evaluate runs of the same dataset"
                    )
                store.write(name, ref.frame, image)
            bar.update(len(group))
    warm = len(groups[0])  # the first call warms up
    timing = np.asarray(seconds[warm:] if len(seconds) > warm else seconds) * 1000.0
    info = dict(info)
    how = "batch 1, get_outputs_for_camera" if size == 1 else f"batches of {size} frames, render_batch, time per frame"
    info["render_ms_per_frame"] = {
        "median": round(float(np.median(timing)), 3),
        "p90": round(float(np.percentile(timing, 90)), 3),
        "frames_timed": int(timing.size),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "how": how + " (copy to the host included), CUDA synchronised before and after, first call excluded",
    }
    store.add_method(name, info)
    return info


def store_clip_audio(store: FrameStore, pipeline) -> None:
    """Keep the clip's audio around the split (or say why there is none)."""
    from gstalker_ns.audio.io import load_audio
    from gstalker_ns.data.layout import AUDIO_SAMPLE_RATE

    path = clip_metadata(pipeline).get("audio_path")
    if not path:
        store.no_audio("the dataset has no audio file")
        return
    try:
        wave = load_audio(path, sample_rate=AUDIO_SAMPLE_RATE)
    except GstalkerUserError as exc:
        store.no_audio(f"the clip's audio cannot be read ({exc})")
        return
    store.store_audio(wave, AUDIO_SAMPLE_RATE)
