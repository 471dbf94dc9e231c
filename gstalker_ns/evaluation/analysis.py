"""Every number of `gstalker-eval` from a frames folder, and the files shown to the user.

Reads OUT/frames (gstalker_ns.evaluation.store), writes OUT/metrics.json, OUT/mouth_opening.png,
OUT/best_worst_frames.png and OUT/side_by_side.mp4. Needs no checkpoint and no dataset, so it
runs wherever the frames are (``gstalker-eval --lipsync-from OUT``). A metric or file that cannot
be made here (no face mesh, no LPIPS weights, no mp4 writer, no audio, too few frames) is listed
under ``unavailable`` with the reason; nothing is left out silently.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from gstalker_ns.data.layout import atomic_write_json
from gstalker_ns.evaluation import metrics as M
from gstalker_ns.evaluation.lipsync import MouthTrack, compare_mouths, face_mesh_unavailable, track_mouth
from gstalker_ns.evaluation.store import GT, FrameStore
from gstalker_ns.progress import progress_bar

METRICS_FILE = "metrics.json"
PLOT_FILE = "mouth_opening.png"
GRID_FILE = "best_worst_frames.png"
VIDEO_FILE = "side_by_side.mp4"
FORMAT = "gstalker-eval-metrics"
VERSION = 1

DEFINITIONS = {
    "images": "PSNR, SSIM and LPIPS per frame on the 8-bit RGB frames (renders as saved in frames/), then the mean "
    "over frames. SSIM: pytorch_msssim, 11x11 Gaussian window sigma 1.5, data range 1. LPIPS: AlexNet "
    "(torchmetrics, inputs in [0, 1]), only with locally cached weights.",
    "face_crop": "One square side for the whole evaluation and one position per frame, the same box for the ground "
    "truth and every render. Source 'landmarks': centred on the bounding box of face-mesh points 0..467 of the "
    "ground-truth frame, side = 1.2 x the median (over frames) of that box's larger side. Source 'labels' (no "
    "face mesh): the bounding box of the label map's head/lips/mouth pixels, margin 1.0. Corners rounded to "
    "whole pixels and moved inside the frame; frames without a face use the nearest frame's position.",
    "lmd": "Per frame with a face-mesh face in both the ground truth and the render: the 40 lip points "
    "(mediapipe FACEMESH_LIPS) of each, minus their own mean, mean Euclidean distance between corresponding "
    "points, times 512 / frame height (pixels at 512). Mean over those frames; frames without a face are counted.",
    "mouth_opening": "Face mesh inner-lip gap (points 13-14) / outer eye-corner distance (33-263); 0 = closed. "
    "The correlation is Pearson's over frames with a face in both.",
    "blink_correlation": "Face mesh eye aspect ratio (mean of both eyes, 6 points each) of the render against the "
    "ground truth's, Pearson over frames with a face in both; unavailable when the ground truth does not blink in "
    "those frames (EAR below 0.75 x its 90th percentile), since the EAR then only carries tracking jitter.",
    "mouth_darkness": "Image-based mouth opening without face mesh: share of dark pixels in the ground truth's "
    "dilated lips+mouth label region (gstalker_ns.synth.mouth_measure); meaningful on the synthetic subject.",
    "av_offset": "Lag tau in [-500, +500] ms (1 ms grid) maximising Pearson(mouth opening at frame time t, RMS of the "
    "audio in [t - tau, t - tau + 1/fps)). Positive: the video lags the audio (the mouth moves after the sound). "
    "Reported for each render and for the ground truth; needs av_offset_min_frames frames with a face "
    "(4 s by default: shorter stretches of real clips gave unreliable offsets).",
}


def _finite_or_none(values) -> List[Optional[float]]:
    return [None if v is None or not math.isfinite(float(v)) else round(float(v), 6) for v in values]


def _mean_or_none(values) -> Optional[float]:
    value = M.finite_mean([np.nan if v is None else v for v in values])
    return None if value is None else round(value, 6)


class _Summary:
    """A method's summary: every metric key present, a number or None with a reason."""

    def __init__(self) -> None:
        self.values: Dict[str, Any] = {}
        self.unavailable: Dict[str, str] = {}
        self.notes: List[str] = []  # caveats on numbers that are there

    def set(self, key: str, value: Optional[float], reason: str = "") -> None:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            self.values[key] = None
            self.unavailable[key] = reason or "not computable from these frames"
        else:
            self.values[key] = round(float(value), 6) if isinstance(value, float) else value


def _face_crop(store: FrameStore, gt_track: Optional[MouthTrack]):
    width, height = store.index["width"], store.index["height"]
    if gt_track is not None and gt_track.detected.any():
        return M.face_crop_from_landmarks(gt_track.points, width, height), ""
    crop = M.face_crop_from_labels([store.labels(f) for f in store.frame_idx], width, height)
    if crop is not None:
        return crop, ""
    reason = "no face mesh here and no label maps with a head" if gt_track is None else "no face found in any ground-truth frame and no label maps"
    return None, reason


def _audio_series(store: FrameStore):
    """(wave, rate, start_s, sound): the stored wave for the offset search and the sound of the
    frames in order for the video (runs of consecutive frames cut with audio_for_frames)."""
    audio = store.audio()
    if audio is None:
        return None
    from gstalker_ns.render.frames import audio_for_frames

    wave, rate, first_frame = audio
    fps = store.index["fps"]
    frames = store.frame_idx
    pieces, run_start = [], 0
    for k in range(1, len(frames) + 1):
        if k == len(frames) or frames[k] != frames[k - 1] + 1:
            pieces.append(audio_for_frames(wave, rate, frames[run_start] - first_frame, k - run_start, fps))
            run_start = k
    return wave, rate, store.index["audio"]["start_s"], np.concatenate(pieces)


class _Context:
    """What every method's analysis shares: the frames, the ground truth's measures, the tools."""

    def __init__(self, store: FrameStore, progress: bool, min_av_seconds: float) -> None:
        from gstalker_ns.synth.mouth_measure import mouth_region

        self.store = store
        self.progress = progress
        self.frames = store.frame_idx
        self.fps = float(store.index["fps"])
        self.height = int(store.index["height"])
        self.times = [f / self.fps for f in self.frames]
        self.min_av_frames = max(M.MIN_AV_FRAMES, int(math.ceil(min_av_seconds * self.fps)))
        self.mesh_reason = face_mesh_unavailable()
        self.gt_track: Optional[MouthTrack] = None
        if self.mesh_reason is None:
            self.gt_track = track_mouth((store.read(GT, f) for f in self.frames), len(self.frames), progress)
        self.crop, self.crop_reason = _face_crop(store, self.gt_track)
        self.lpips = M.Lpips("cuda" if _cuda() else "cpu")
        self.audio = _audio_series(store)
        self.audio_reason = store.index.get("audio_unavailable") or "no audio stored"
        self.have_labels = bool(store.index.get("labels"))
        self.mouth_regions: List[Optional[np.ndarray]] = []
        for f in self.frames:
            labels = store.labels(f) if self.have_labels else None
            region = mouth_region(labels, dilate_px=max(1, self.height // 64)) if labels is not None else None
            self.mouth_regions.append(region if region is not None and region.any() else None)

    def darkness(self, image: np.ndarray, k: int) -> float:
        from gstalker_ns.synth.mouth_measure import mouth_opening_measure

        region = self.mouth_regions[k]
        return float("nan") if region is None else mouth_opening_measure(image, region)

    def set_av(self, summary: _Summary, opening: Sequence[float]) -> None:
        """The audio-visual offset of a mouth-opening series, or why there is none."""
        result = None
        if self.mesh_reason is not None:
            reason = self.mesh_reason
        elif self.audio is None:
            reason = self.audio_reason
        else:
            wave, rate, start_s, _ = self.audio
            result = M.av_offset(opening, self.times, wave, rate, self.fps, wave_start_s=start_s, min_frames=self.min_av_frames)
            found = int(np.isfinite(np.asarray(opening, dtype=float)).sum())
            reason = (
                f"needs {self.min_av_frames}+ frames with a face and a moving mouth ({found} with a face here); "
                "evaluate more frames (--split all) or lower --min-av-seconds"
            )
        summary.set("av_offset_ms", None if result is None else round(result.offset_ms, 1), reason)
        summary.set("av_offset_correlation", None if result is None else result.correlation, reason)
        summary.set("av_correlation_at_zero", None if result is None else result.correlation_at_zero, reason)
        if result is not None and abs(result.offset_ms) >= M.AV_MAX_LAG_S * 1000.0 - 0.5:
            summary.notes.append(
                "av_offset_ms lies at the end of the +-500 ms search: no clear peak, the mouth does not follow the audio"
            )


def _image_metrics(ctx: _Context, name: str) -> Dict[str, List[float]]:
    """Per-frame PSNR/SSIM/LPIPS (full frame and face crop) and mouth darkness of one method."""
    crop, lpips = ctx.crop, ctx.lpips
    per: Dict[str, List[float]] = {k: [] for k in ("psnr", "ssim", "lpips", "face_psnr", "face_ssim", "face_lpips", "mouth_darkness")}
    with progress_bar(len(ctx.frames), f"metrics {name}", ctx.progress) as bar:
        for k, f in enumerate(ctx.frames):
            gt, render = ctx.store.read(GT, f), ctx.store.read(name, f)
            per["psnr"].append(M.psnr(render, gt))
            per["ssim"].append(M.ssim(render, gt))
            per["lpips"].append(lpips(render, gt))
            if crop is not None:
                gt_face, render_face = crop.crop(gt, k), crop.crop(render, k)
                per["face_psnr"].append(M.psnr(render_face, gt_face))
                per["face_ssim"].append(M.ssim(render_face, gt_face))
                per["face_lpips"].append(lpips(render_face, gt_face))
            per["mouth_darkness"].append(ctx.darkness(render, k))
            bar.update(1)
    return per


def _method_result(ctx: _Context, name: str, gt_darkness: List[float]) -> Dict[str, Any]:
    per = _image_metrics(ctx, name)
    n = len(ctx.frames)
    summary = _Summary()
    summary.set("psnr", M.finite_mean(per["psnr"]))
    summary.set("ssim", M.finite_mean(per["ssim"]), "frames smaller than the 11-pixel SSIM window")
    summary.set("lpips", M.finite_mean(per["lpips"]), ctx.lpips.reason or "frames smaller than 32 pixels")
    for key in ("face_psnr", "face_ssim", "face_lpips"):
        if ctx.crop is None:
            reason = ctx.crop_reason
        elif key == "face_lpips" and ctx.lpips.reason:
            reason = ctx.lpips.reason
        else:
            reason = "face crop too small"
        summary.set(key, M.finite_mean(per[key]) if per[key] else None, reason)
    dark, dark_gt = np.asarray(per["mouth_darkness"], dtype=float), np.asarray(gt_darkness, dtype=float)
    ok = np.isfinite(dark) & np.isfinite(dark_gt)
    summary.set(
        "mouth_darkness_correlation",
        M.pearson(dark[ok], dark_gt[ok]) if ok.sum() >= M.MIN_SERIES_FRAMES else None,
        f"needs {M.MIN_SERIES_FRAMES}+ frames with a mouth region and a varying measure"
        if ctx.have_labels
        else "no label maps with lips/mouth",
    )
    lip: Dict[str, Any] = {}
    opening: List[float] = [float("nan")] * n
    lmd_per_frame: List[float] = [float("nan")] * n
    if ctx.gt_track is not None:
        r_track = track_mouth((ctx.store.read(name, f) for f in ctx.frames), n, ctx.progress)
        lip = compare_mouths(ctx.gt_track, r_track)
        lmd_per_frame = list(lip.pop("lmd_per_frame"))
        opening = list(r_track.opening)
        summary.set("lmd", lip["lmd"], "no frame with a face in both the ground truth and the render")
        summary.set(
            "mouth_opening_correlation",
            lip["mouth_opening_correlation"],
            f"needs {M.MIN_SERIES_FRAMES}+ frames with a face in both and a varying mouth",
        )
        summary.set("blink_correlation", lip.get("blink_correlation"), lip.get("blink_reason", ""))
    else:
        summary.set("lmd", None, ctx.mesh_reason or "")
        summary.set("mouth_opening_correlation", None, ctx.mesh_reason or "")
        summary.set("blink_correlation", None, ctx.mesh_reason or "")
    ctx.set_av(summary, opening)
    render_info = ctx.store.index["methods"][name]
    summary.set("render_ms_median", (render_info.get("render_ms_per_frame") or {}).get("median"), "not timed")
    return {
        **render_info,
        "summary": summary.values,
        "unavailable": summary.unavailable,
        "notes": summary.notes,
        "lip_sync_frames": lip or None,
        "per_frame": {
            **{key: _finite_or_none(values) for key, values in per.items()},
            "lmd": _finite_or_none(lmd_per_frame),
            "mouth_opening": _finite_or_none(opening),
        },
    }


def analyse(
    store: FrameStore, out_dir: Path, video: bool = True, progress: bool = True, min_av_seconds: float = M.MIN_AV_SECONDS
) -> Dict[str, Any]:
    """Compute everything, write the files, return the metrics.json payload. The audio-visual
    offset needs ``min_av_seconds`` of frames with a face (and at least M.MIN_AV_FRAMES)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = _Context(store, progress, min_av_seconds)
    n = len(ctx.frames)
    methods = store.methods
    gt_darkness = [ctx.darkness(store.read(GT, f), k) if ctx.mouth_regions[k] is not None else float("nan") for k, f in enumerate(ctx.frames)]
    results = {name: _method_result(ctx, name, gt_darkness) for name in methods}

    gt_summary = _Summary()
    gt_opening = list(ctx.gt_track.opening) if ctx.gt_track is not None else [float("nan")] * n
    ctx.set_av(gt_summary, gt_opening)
    ground_truth = {
        "summary": gt_summary.values,
        "unavailable": gt_summary.unavailable,
        "notes": gt_summary.notes,
        "frames_without_face": int((~ctx.gt_track.detected).sum()) if ctx.gt_track is not None else None,
        "per_frame": {"mouth_opening": _finite_or_none(gt_opening), "mouth_darkness": _finite_or_none(gt_darkness)},
    }

    unavailable: Dict[str, str] = {}
    if ctx.crop is None:
        unavailable["face_crop"] = ctx.crop_reason
    files: Dict[str, Optional[str]] = {"metrics": METRICS_FILE, "frames": os.path.relpath(store.root, out_dir)}
    files["mouth_opening_plot"] = _plot(ctx, out_dir, results, gt_opening, gt_darkness, unavailable)
    files["best_worst_frames"] = _grid(store, out_dir, results, methods)
    if files["best_worst_frames"] is None:
        unavailable["best_worst_frames"] = "no frame has a finite PSNR"
    files["side_by_side_video"] = None
    reason = _video(store, out_dir, methods, ctx.audio) if video else "not asked for (--no-video)"
    if reason:
        unavailable["side_by_side_video"] = reason
    else:
        files["side_by_side_video"] = VIDEO_FILE

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "split": store.index["split"],
        "num_frames": n,
        "fps": ctx.fps,
        "resolution": {"width": int(store.index["width"]), "height": ctx.height},
        "frame_idx": ctx.frames,
        "methods": results,
        "ground_truth": ground_truth,
        "face_crop": ctx.crop.as_dict() if ctx.crop is not None else None,
        "lpips": "available" if ctx.lpips.available else ctx.lpips.reason,
        "face_mesh": "mediapipe face mesh (video mode)" if ctx.mesh_reason is None else ctx.mesh_reason,
        "audio": store.index.get("audio") or ctx.audio_reason,
        "av_offset_sign": "positive = the video lags the audio (the mouth moves after the sound)",
        "av_offset_min_frames": ctx.min_av_frames,
        "definitions": DEFINITIONS,
        "files": files,
        "unavailable": unavailable,
    }
    atomic_write_json(out_dir / METRICS_FILE, payload)
    return payload


def _plot(ctx: _Context, out_dir: Path, results: Dict[str, Any], gt_opening, gt_darkness, unavailable: Dict[str, str]) -> Optional[str]:
    """The mouth-opening plot: face-mesh opening when there is face mesh, else the label-region darkness."""
    if ctx.gt_track is not None:
        series = {"ground truth": gt_opening, **{m: r["per_frame"]["mouth_opening"] for m, r in results.items()}}
        ylabel, what = "inner-lip gap / eye-corner distance", "face-mesh mouth opening"
    else:
        series = {"ground truth": gt_darkness, **{m: r["per_frame"]["mouth_darkness"] for m, r in results.items()}}
        ylabel, what = "dark share of the mouth region", "label-region mouth darkness (no face mesh here)"
    series = {k: [np.nan if v is None else v for v in vals] for k, vals in series.items()}
    if not any(np.isfinite(np.asarray(v, dtype=float)).any() for v in series.values()):
        unavailable["mouth_opening_plot"] = ctx.mesh_reason or "no mouth opening could be measured on these frames"
        return None
    try:
        from gstalker_ns.evaluation.report import plot_mouth_opening

        plot_mouth_opening(out_dir / PLOT_FILE, ctx.times, series, ylabel, f"{what}, {ctx.store.index['split']} split")
    except ImportError as exc:
        unavailable["mouth_opening_plot"] = f"matplotlib is not installed ({exc})"
        return None
    return PLOT_FILE


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _grid(store: FrameStore, out_dir: Path, results: Dict[str, Any], methods: List[str]) -> Optional[str]:
    from gstalker_ns.evaluation.report import frame_grid, worst_and_best

    first = methods[0]
    psnrs = [np.nan if v is None else v for v in results[first]["per_frame"]["psnr"]]
    worst, best = worst_and_best(psnrs)
    picks = worst + best
    if not picks:
        return None
    frames = store.frame_idx
    rows, captions = [], []
    for rank, pos in enumerate(picks):
        f = frames[pos]
        row = [store.read(GT, f)] + [store.read(m, f) for m in methods]
        which = f"worst {rank + 1}" if rank < len(worst) else f"best {rank - len(worst) + 1}"
        caps = [f"{which}: frame {f}"] + [
            f"{m} {results[m]['per_frame']['psnr'][pos]:.2f} dB" if results[m]["per_frame"]["psnr"][pos] is not None else m
            for m in methods
        ]
        rows.append(row)
        captions.append(caps)
    frame_grid(out_dir / GRID_FILE, rows, captions)
    return GRID_FILE


def _video(store: FrameStore, out_dir: Path, methods: List[str], audio) -> str:
    """Write the side-by-side mp4; '' on success, else why not."""
    from gstalker_ns.media.video import VideoWriterError, video_backend, write_mp4
    from gstalker_ns.render.frames import side_by_side

    if video_backend() is None:
        return "no mp4 writer here (pip install av, or imageio-ffmpeg); the frames are in frames/"
    frames = ([store.read(GT, f)] + [store.read(m, f) for m in methods] for f in store.frame_idx)
    sound = None if audio is None else audio[3]
    rate = 16000 if audio is None else audio[1]
    try:
        write_mp4(out_dir / VIDEO_FILE, (side_by_side(p) for p in frames), fps=store.index["fps"], audio=sound, sample_rate=rate)
    except VideoWriterError as exc:
        return str(exc)
    return ""
