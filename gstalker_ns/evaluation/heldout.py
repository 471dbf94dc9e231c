"""Held-out evaluation of a trained checkpoint: image metrics and mouth-darkness agreement.

Used by the benchmarks (a quick in-process score). `gstalker-eval` measures more (face crop,
LPIPS, face-mesh lip sync, a baseline) from frames it saves: see gstalker_ns.evaluation. The
mouth measure here is gstalker-eval's `mouth_darkness` (gstalker_ns.synth.mouth_measure: the dark
share of the ground-truth frame's mouth region, applied to rendered and true frames alike), under
the same name, so it is never confused with the face-mesh `mouth_opening_correlation`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from gstalker_ns.data.layout import atomic_write_bytes, atomic_write_json
from gstalker_ns.evaluation.metrics import pearson


@dataclass
class HeldOutResult:
    """Per-frame numbers for the held-out split, and their summary."""

    frame_idx: List[int] = field(default_factory=list)
    psnr: List[float] = field(default_factory=list)
    ssim: List[float] = field(default_factory=list)
    mouth_render: List[float] = field(default_factory=list)
    mouth_gt: List[float] = field(default_factory=list)
    seconds_per_frame: float = 0.0

    def summary(self) -> Dict[str, object]:
        """Means over frames; a number that cannot be computed is None, with its reason under
        `unavailable` (never NaN)."""
        out: Dict[str, object] = {
            "num_frames": len(self.frame_idx),
            "psnr": float(np.mean(self.psnr)) if self.psnr else None,
            "ssim": float(np.mean(self.ssim)) if self.ssim else None,
            "seconds_per_frame": self.seconds_per_frame,
        }
        unavailable = {}
        corr = pearson(self.mouth_render, self.mouth_gt) if len(self.mouth_gt) >= 3 else float("nan")
        out["mouth_darkness_correlation"] = corr if np.isfinite(corr) else None
        if out["mouth_darkness_correlation"] is None:
            unavailable["mouth_darkness_correlation"] = "needs 3+ held-out frames with a mouth region and a varying measure"
        if not self.frame_idx:
            unavailable["psnr"] = unavailable["ssim"] = "no held-out frames"
        out["unavailable"] = unavailable
        return out


def load_pipeline(config_path: Path, test_mode: str = "test"):
    """Load a trained pipeline of any method from its config.yml in eval mode: (pipeline,
    checkpoint path, step). See gstalker_ns.checkpoint.load_trained_pipeline."""
    from gstalker_ns.checkpoint import load_trained_pipeline

    pipeline, _, checkpoint_path, step = load_trained_pipeline(Path(config_path), require_method=None, test_mode=test_mode)
    return pipeline, checkpoint_path, step


@torch.no_grad()
def evaluate_held_out(pipeline, save_dir: Optional[Path] = None, max_saved: int = 8) -> HeldOutResult:
    """Render every held-out frame; collect PSNR/SSIM and the mouth-opening measure."""
    from PIL import Image
    from pytorch_msssim import ssim as ssim_fn

    from gstalker_ns.synth.mouth_measure import mouth_opening_measure, mouth_region

    model = pipeline.model
    result = HeldOutResult()
    batches = pipeline.datamanager.fixed_indices_eval_dataloader
    saved: List[np.ndarray] = []
    save_every = max(1, len(batches) // max_saved)
    elapsed = 0.0
    for i, (camera, batch) in enumerate(batches):
        start = time.perf_counter()
        outputs = model.get_outputs_for_camera(camera)
        elapsed += time.perf_counter() - start
        pred = outputs["rgb"].clamp(0, 1)
        gt = batch["image"][..., :3].to(pred.device)
        gt = gt.float() / 255.0 if gt.dtype == torch.uint8 else gt.float()
        mse = torch.mean((pred - gt) ** 2).item()
        result.frame_idx.append(int(camera.metadata["frame_idx"].reshape(-1)[0]))
        result.psnr.append(float(10 * np.log10(1.0 / max(mse, 1e-12))))
        result.ssim.append(float(ssim_fn(pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None], data_range=1.0)))
        labels = _labels_of(pipeline, batch)
        if labels is not None:
            region = mouth_region(labels, dilate_px=max(1, pred.shape[0] // 64))
            if region.any():
                result.mouth_render.append(mouth_opening_measure(pred.cpu().numpy(), region))
                result.mouth_gt.append(mouth_opening_measure(gt.cpu().numpy(), region))
        if save_dir is not None and i % save_every == 0 and len(saved) < max_saved:
            saved.append(np.concatenate([gt.cpu().numpy(), pred.cpu().numpy()], axis=1))
    result.seconds_per_frame = elapsed / max(1, len(batches))
    if save_dir is not None and saved:
        grid = (np.concatenate(saved, axis=0) * 255).round().astype(np.uint8)
        import io

        buffer = io.BytesIO()
        Image.fromarray(grid).save(buffer, format="PNG")
        atomic_write_bytes(Path(save_dir) / "heldout_gt_vs_render.png", buffer.getvalue())
    return result


def _labels_of(pipeline, batch: Dict) -> Optional[np.ndarray]:
    """The frame's label map: from the batch (our datamanager) or the dataset's label paths
    (other methods, e.g. plain splatfacto, reading the same folder)."""
    if "labels" in batch:
        return batch["labels"][..., 0].cpu().numpy()
    from gstalker_ns.data.dataset import label_map_for

    labels = label_map_for(pipeline.datamanager.eval_dataset.metadata, batch["image_idx"])
    return None if labels is None else labels[..., 0].numpy()


def write_metrics(path: Path, result: HeldOutResult, extra: Optional[Dict] = None) -> Dict:
    payload = {"summary": result.summary(), "per_frame": {
        "frame_idx": result.frame_idx,
        "psnr": result.psnr,
        "ssim": result.ssim,
        "mouth_render": result.mouth_render,
        "mouth_gt": result.mouth_gt,
    }}
    if extra:
        payload.update(extra)
    atomic_write_json(Path(path), payload)
    return payload
