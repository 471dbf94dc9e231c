"""A lazy full-image datamanager: frames are decoded when needed, never all held in memory.

nerfstudio's FullImageDatamanager caches every training image as float32 (a 5-minute 512x512
clip would need ~24 GB). Talking-portrait clips have thousands of frames, so we decode each frame
when it is drawn (JPEG decode is a few ms) while a background thread decodes the next one.
"""

from __future__ import annotations

import random
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig

from gstalker_ns.data.dataparser import TalkingPortraitDataParserConfig
from gstalker_ns.data.dataset import TalkingPortraitDataset


class LazyFrames(Sequence):
    """A read-only sequence of dataset items that decodes item i on access."""

    def __init__(self, dataset: TalkingPortraitDataset, image_type: Literal["uint8", "float32"] = "uint8"):
        self.dataset = dataset
        self.image_type = image_type

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.dataset.get_data(index, image_type=self.image_type)


class LazyEvalBatches(Sequence):
    """(camera, batch) pairs for evaluation, decoded one at a time (what nerfstudio's eval loop iterates)."""

    def __init__(self, frames: LazyFrames, cameras: Cameras, device: Union[str, torch.device]):
        self.frames = frames
        self.cameras = cameras
        self.device = device

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        batch = self.frames[index]
        batch["image"] = batch["image"].to(self.device)
        return self.cameras[index : index + 1].to(self.device), batch

    def __iter__(self) -> Iterator[Tuple[Cameras, Dict]]:
        for i in range(len(self)):
            yield self[i]


@dataclass
class TalkingPortraitDatamanagerConfig(FullImageDatamanagerConfig):
    _target: Type = field(default_factory=lambda: TalkingPortraitDatamanager)
    dataparser: TalkingPortraitDataParserConfig = field(default_factory=TalkingPortraitDataParserConfig)
    cache_images: Literal["cpu", "gpu"] = "cpu"
    """Unused: frames are decoded lazily (kept for nerfstudio compatibility)."""
    cache_images_type: Literal["uint8", "float32"] = "uint8"
    """Type of decoded frames handed to the model (uint8 saves memory; the model converts)."""
    prefetch_threads: int = 2
    """Threads that decode upcoming training frames in the background."""
    blink_share: float = 0.0
    """Frames with shut eyes (blink value >= 0.5) are drawn more often, until they make up about
    this share of each pass over the training frames (0: drawn like every other frame). Real
    speakers blink rarely: 16 of dfrf_french's 1144 training frames have shut eyes, and drawn once
    per pass the field did not learn to close the eyes even on those frames; at 0.1 the eye-box
    error on them fell by 45%, open eyes unchanged. Off by default: on the CPU demo (1500 steps) 0.1
    cost the held-out mouth-opening correlation 0.72 -> 0.56 (RESULTS.md); its cost at GPU scale
    is unmeasured. A share, not a repeat count, so clips that blink often are not oversampled further."""


def blink_repeat(num_frames: int, num_shut: int, share: float) -> int:
    """How many times each shut-eye frame is drawn per pass so that they make up about `share` of
    it: r * S / (N - S + r * S) = share (at least 1, never fewer than now)."""
    if num_shut <= 0 or share <= 0 or num_shut >= num_frames:
        return 1
    share = min(float(share), 0.5)
    return max(1, int(round(share * (num_frames - num_shut) / ((1.0 - share) * num_shut))))


class TalkingPortraitDatamanager(FullImageDatamanager[TalkingPortraitDataset]):
    """FullImageDatamanager with lazy, prefetched frame decoding."""

    config: TalkingPortraitDatamanagerConfig

    def __init__(self, config: TalkingPortraitDatamanagerConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.train_cameras = self.train_dataset.cameras
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: Dict[int, Future] = {}

    @property
    def cached_train(self) -> LazyFrames:  # type: ignore[override]
        return LazyFrames(self.train_dataset, self.config.cache_images_type)

    @property
    def cached_eval(self) -> LazyFrames:  # type: ignore[override]
        return LazyFrames(self.eval_dataset, self.config.cache_images_type)

    @property
    def fixed_indices_eval_dataloader(self) -> LazyEvalBatches:  # type: ignore[override]
        return LazyEvalBatches(self.cached_eval, deepcopy(self.eval_dataset.cameras), self.device)

    def _load_train_item(self, index: int) -> Dict:
        future = self._pending.pop(index, None)
        if future is not None:
            return future.result()
        return self.train_dataset.get_data(index, image_type=self.config.cache_images_type)

    def _prefetch(self, indices: List[int]) -> None:
        if self.config.prefetch_threads <= 0:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.config.prefetch_threads)
        for index in indices:
            if index not in self._pending:
                self._pending[index] = self._executor.submit(
                    self.train_dataset.get_data, index, self.config.cache_images_type
                )

    def sample_train_cameras(self) -> List[int]:
        """One pass over the training frames in random order, shut-eye frames drawn often enough to
        make up `blink_share` of it (see `blink_repeat`)."""
        indices = list(super().sample_train_cameras())
        if self.config.blink_share <= 0:
            return indices
        blink = np.asarray(self.train_dataparser_outputs.metadata.get("blink", []), dtype=np.float32).reshape(-1)
        frames = self.train_dataset.cameras.metadata["frame_idx"].reshape(-1).tolist()
        shut = [i for i, f in enumerate(frames) if 0 <= f < len(blink) and blink[f] >= 0.5]
        repeat = blink_repeat(len(frames), len(shut), self.config.blink_share)
        if repeat <= 1:
            return indices
        order = indices + shut * (repeat - 1)
        rng = getattr(self, "random_generator", None) or random.Random(self.config.train_cameras_sampling_seed)
        self.random_generator = rng
        rng.shuffle(order)
        return order

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        """The next training frame and its camera (with frame_idx metadata)."""
        image_idx = self.train_unseen_cameras.pop(0)
        if len(self.train_unseen_cameras) == 0:
            self.train_unseen_cameras = self.sample_train_cameras()
        data = self._load_train_item(image_idx)
        self._prefetch(self.train_unseen_cameras[: self.config.prefetch_threads])
        data["image"] = data["image"].to(self.device)
        camera = self.train_cameras[image_idx : image_idx + 1].to(self.device)
        if camera.metadata is None:
            camera.metadata = {}
        camera.metadata["cam_idx"] = image_idx
        return camera, data

    def next_eval_image(self, step: int) -> Tuple[Cameras, Dict]:
        import random

        image_idx = self.eval_unseen_cameras.pop(random.randint(0, len(self.eval_unseen_cameras) - 1))
        if len(self.eval_unseen_cameras) == 0:
            self.eval_unseen_cameras = list(range(len(self.eval_dataset)))
        data = self.cached_eval[image_idx]
        data["image"] = data["image"].to(self.device)
        camera = self.eval_dataset.cameras[image_idx : image_idx + 1].to(self.device)
        return camera, data
