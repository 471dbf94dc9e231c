"""Lips on speech the model never heard: held-out and cross-driven lip sync on real clips.

For both real clips in ../shared/data/real and the 60 s synthetic subject, at default settings:
- held-out: `gstalker-eval` of the last 1/11 of the clip (never trained on) with a plain
  splatfacto baseline trained on the same frames: mouth-opening correlation, LMD (gstalker and
  splatfacto), PSNR, blink (eye-aspect-ratio) correlation;
- cross-driven: the model driven by another speaker (whisper_jfk.flac, and another clip's audio),
  scored on face mesh of the renders: the mouth opening's p90-p10 spread over the real clip's
  (amplitude ratio) and its correlation with the driving audio's log RMS envelope at lags
  -5..+5 frames (best value and its lag; positive lag: the mouth moves after the sound).

Three steps, because the GPU machine lacks mediapipe, PyAV, ffmpeg and the Whisper weights:

    python benchmarks/lipsync_generalization.py prepare --work /tmp/lipgen --pack .gpu_data/lipgen   # here
    python benchmarks/lipsync_generalization.py gpu --data .gpu_data/lipgen --work /tmp/lg --out $OUT  # GPU
    python benchmarks/lipsync_generalization.py analyse --returned FILES_AT --work /tmp/lipgen         # here

`prepare` processes the clips (gstalker-process defaults), makes the synthetic subject, extracts
the driving clips' features with the default extractor and packs it all under the transfer cap.
`gpu` trains gstalker and splatfacto on every subject at once (default settings, a time budget
as a safety net: the steps reached are recorded), evaluates, renders the cross-driven clips
(256 px JPEG) and returns one tar in parts. `analyse` finishes the lip-sync metrics here and
writes benchmarks/results/lipsync_generalization.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
REAL = REPO.parent / "shared" / "data" / "real"
CLIPS = {"dfrf_french": "dfrf_french.mp4", "german_20s": "mimictalk_German_20s.mp4"}
SYNTH = "synth60"
JFK = "whisper_jfk.flac"
DRIVERS = {"dfrf_french": ["whisper_jfk", "german_20s"], "german_20s": ["whisper_jfk", "dfrf_french"], SYNTH: ["whisper_jfk", "german_20s"]}
DRIVE_SECONDS = 15.0
FPS = 25.0
PART_BYTES = 15 * 2**20


# ------------------------------------------------------------------------------------------ prepare


def prepare(work: Path, pack_dir: Path, synth_seconds: float) -> None:
    """Subjects go to pack_dir/real (both clips) and pack_dir/synth: each fits one call's
    transfer cap next to the GPU kit (33 MiB); together they would not."""
    from gstalker_ns import _compat

    _compat.apply_all()
    from gstalker_ns.audio.features import default_feature_spec, extract_features
    from gstalker_ns.audio.io import load_audio
    from gstalker_ns.preprocess.pipeline import process_video
    from gstalker_ns.synth.subject import generate_subject
    from pack_dataset import pack

    if not REAL.is_dir():
        raise SystemExit(f"{REAL} is absent: the real clips are not part of the repository")
    folders = {}
    for name, video in CLIPS.items():
        folders[name] = work / name
        if not (folders[name] / "transforms.json").exists():
            print(f"[prepare] gstalker-process {video}", flush=True)
            process_video(REAL / video, folders[name], progress=False)
    folders[SYNTH] = work / SYNTH
    if not (folders[SYNTH] / "transforms.json").exists():
        print(f"[prepare] gstalker-synth {synth_seconds:.0f} s at 512 px", flush=True)
        generate_subject(folders[SYNTH], duration=synth_seconds, size=512, seed=0)
    spec = default_feature_spec()
    waves = {"whisper_jfk": load_audio(REAL / JFK), **{n: load_audio(folders[n] / "audio.wav") for n in CLIPS}}
    for name, folder in folders.items():
        target = pack_dir / ("synth" if name == SYNTH else "real") / name
        pack(folder, target, crf=15, half_features=True)
        for driver in DRIVERS[name]:
            wave = waves[driver][: int(DRIVE_SECONDS * 16000)]
            table = extract_features(wave, spec, int(round(len(wave) / 16000 * FPS)))
            np.save(target / f"drive_{driver}.npy", table.astype(np.float16))
    size = sum(p.stat().st_size for p in pack_dir.rglob("*") if p.is_file())
    print(f"[prepare] packed {len(folders)} subjects into {pack_dir}: {size / 2**20:.1f} MiB", flush=True)


# ------------------------------------------------------------------------------------------ gpu


def _train_all(subjects: Dict[str, Path], work: Path, budget: float, steps: int, extra: List[str], baseline: bool, baseline_steps: int) -> Dict[str, Dict]:
    from gpu_train_eval import train

    methods = ("gstalker", "splatfacto") if baseline else ("gstalker",)
    jobs = [(name, method) for name in subjects for method in methods]

    def one(job):
        name, method = job
        args = extra if method == "gstalker" else []
        n = steps if method == "gstalker" else baseline_steps
        return job, train(method, subjects[name], work / "runs" / name, n, budget, min(1000, n), args)

    with ThreadPoolExecutor(len(jobs)) as pool:
        return {f"{name}/{method}": info for (name, method), info in pool.map(one, jobs)}


def _cross_driven(config: Path, data: Path, ret: Path, name: str, subject: str = "") -> Dict:
    """Render the run `name` (trained on `subject`, default the same) driven by the subject's drivers."""
    import torch
    from PIL import Image

    from gstalker_ns.checkpoint import load_trained_pipeline
    from gstalker_ns.drive.blink import blink_track
    from gstalker_ns.drive.poses import pose_track
    from gstalker_ns.render.video import driven, render_frames

    pipeline, _, _, _ = load_trained_pipeline(config)
    model = pipeline.model
    info = {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for driver in DRIVERS[subject or name]:
            table = np.load(data / f"drive_{driver}.npy").astype(np.float32)
            n = len(table)
            blink = blink_track("natural", n, FPS, model.blink_table.cpu().numpy(), seed=0)
            poses = pose_track("train", n, FPS, FPS, pipeline.datamanager.train_dataset.cameras)
            started = time.perf_counter()
            with driven(model, table, blink):
                for k, frame in enumerate(render_frames(model, poses, range(n))):
                    jpeg = io.BytesIO()
                    Image.fromarray(frame).resize((256, 256), Image.BILINEAR).save(jpeg, "JPEG", quality=90)
                    entry = tarfile.TarInfo(f"{driver}/{k:05d}.jpg")
                    entry.size = jpeg.tell()
                    jpeg.seek(0)
                    tar.addfile(entry, jpeg)
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            info[driver] = {"frames": n, "render_s": round(time.perf_counter() - started, 2)}
    (ret / f"{name}_cross_driven.tar").write_bytes(buffer.getvalue())
    info["gaussians"] = int(model.num_points)
    info["expression_fit"] = model.expression_fit_report
    return info


def gpu(data: Path, work: Path, out: Path, budget: float, steps: int = 10000, extra: List[str] = (), baseline: bool = True, baseline_steps: int = 10000) -> None:
    from gstalker_ns import _compat

    _compat.apply_all()
    from gstalker_ns.evaluation.cli import main as gstalker_eval
    from pack_dataset import unpack
    from pack_eval_frames import pack as pack_eval

    started = time.perf_counter()
    subjects = {}
    for packed in sorted(p for p in data.iterdir() if p.is_dir()):
        subjects[packed.name] = work / "data" / packed.name
        if not (subjects[packed.name] / "transforms.json").exists():
            unpack(packed, subjects[packed.name])
    print(f"[gpu] unpacked {list(subjects)} in {time.perf_counter() - started:.0f} s", flush=True)
    runs = _train_all(subjects, work, budget, steps, list(extra), baseline, baseline_steps)
    print(f"[gpu] trained: {json.dumps(runs)}", flush=True)
    ret = work / "ret"
    ret.mkdir(parents=True, exist_ok=True)
    summary = {"runs": runs, "cross_driven": {}}
    for name in subjects:
        gst = runs[f"{name}/gstalker"]["config"]
        ev = work / "eval" / name
        base = ["--baseline", "splatfacto", "--baseline-config", runs[f"{name}/splatfacto"]["config"]] if baseline else []
        code = gstalker_eval(["--load-config", gst, *base, "--also-tracked", "--output-dir", str(ev), "--quiet"])
        if code == 0:
            pack_eval(ev, ret / f"{name}_eval", quality=85)
        summary["cross_driven"][name] = _cross_driven(Path(gst), data / name, ret, name)
        print(f"[gpu] {name}: eval exit {code}, cross-driven {summary['cross_driven'][name]}", flush=True)
    summary["gpu_seconds"] = round(time.perf_counter() - started, 1)
    size = return_results(ret, out, summary)
    print(f"[gpu] returned {size / 2**20:.1f} MiB in {(size - 1) // PART_BYTES + 1} parts", flush=True)


def return_results(ret: Path, out: Path, summary: Dict) -> int:
    """ret/ (with summary.json) as one tar in parts under the transfer limits, plus the summary
    on its own; returns the tar's size. `analyse` reads it back."""
    (ret / "summary.json").write_text(json.dumps(summary, indent=1))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(ret, arcname="ret")
    blob = buffer.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(blob), PART_BYTES):
        (out / f"lipgen.tar.{i // PART_BYTES:02d}").write_bytes(blob[i : i + PART_BYTES])
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return len(blob)


# ------------------------------------------------------------------------------------------ analyse


def _envelope_corr(opening: np.ndarray, wave: np.ndarray) -> Dict:
    from gstalker_ns.synth.speech import rms_envelope

    ok = np.isfinite(opening)
    n = len(opening)
    envelope = np.log(rms_envelope(wave, 16000, np.arange(n) / FPS, 0.04) + 1e-4)
    corr = {}
    for lag in range(-5, 6):
        a = opening[max(0, lag) : n + min(0, lag)]
        b = envelope[max(0, -lag) : n - max(0, lag)]
        m = ok[max(0, lag) : n + min(0, lag)]
        corr[lag] = float(np.corrcoef(a[m], b[m])[0, 1]) if m.sum() > 10 else float("nan")
    best = max(corr, key=lambda k: corr[k] if np.isfinite(corr[k]) else -2)
    return {"envelope_corr": corr[best], "best_lag_frames": int(best), "envelope_corr_by_lag": corr}


def _spread(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.percentile(x, 90) - np.percentile(x, 10))


def analyse(returned: List[Path], work: Path, out: Path) -> None:
    from PIL import Image

    from gstalker_ns import _compat

    _compat.apply_all()
    from gstalker_ns.audio.io import load_audio
    from gstalker_ns.evaluation.cli import main as gstalker_eval
    from gstalker_ns.evaluation.lipsync import track_mouth
    from pack_eval_frames import merge, unpack

    local = work / "returned"
    summary: Dict = {"runs": {}, "cross_driven": {}}
    for k, folder in enumerate(returned):  # one folder per GPU call; their subjects differ
        blob = b"".join(p.read_bytes() for p in sorted(folder.glob("lipgen.tar.*")))
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(local, filter="data")
        part = json.loads((local / "ret" / "summary.json").read_text())
        for key in summary:
            summary[key].update(part[key])
    ret = local / "ret"
    waves = {"whisper_jfk": load_audio(REAL / JFK), **{n: load_audio(work / n / "audio.wav") for n in CLIPS if (work / n).is_dir()}}
    clips: Dict[str, Dict] = {}
    for name in summary["cross_driven"]:
        subject = summary["cross_driven"][name].get("subject", name)  # gpu_jobs.py runs name their subject
        entry: Dict = {"heldout": {}, "cross_driven": {}, "subject": subject}
        if (ret / f"{name}_eval").is_dir():
            here = work / "eval" / name
            unpack(ret / f"{name}_eval", here)
            gstalker_eval(["--lipsync-from", str(here), "--quiet"])
            merge(ret / f"{name}_eval", here)
            methods = json.loads((here / "metrics_merged.json").read_text())["methods"]
            g, s = methods["gstalker"]["summary"], methods.get("splatfacto", {}).get("summary", {})
            tracked = methods.get("gstalker_tracked", {}).get("summary", {})
            entry["heldout"] = {
                "mouth_opening_corr": g.get("mouth_opening_correlation"),
                "lmd": g.get("lmd"),
                "lmd_splatfacto": s.get("lmd"),
                "psnr": g.get("psnr"),
                "psnr_splatfacto": s.get("psnr"),
                "blink_corr": g.get("blink_correlation"),
                # the renderer's upper bound: the same run driven by the tracked expression
                "mouth_opening_corr_tracked": tracked.get("mouth_opening_correlation"),
                "lmd_tracked": tracked.get("lmd"),
                "unavailable": methods["gstalker"].get("unavailable", {}),
            }
        frames = sorted((work / subject / "frames").glob("*.jpg"))
        real = track_mouth((np.asarray(Image.open(p).convert("RGB").resize((256, 256))) for p in frames), len(frames))
        real_spread = _spread(real.opening)
        if not (ret / f"{name}_cross_driven.tar").exists():
            entry["training"] = {k.split("/")[1]: v for k, v in summary["runs"].items() if k.startswith(name + "/")}
            clips[name] = entry
            continue
        with tarfile.open(ret / f"{name}_cross_driven.tar") as tar:
            members = sorted(tar.getmembers(), key=lambda m: m.name)
            by_driver: Dict[str, List] = {}
            for m in members:
                by_driver.setdefault(m.name.split("/")[0], []).append(np.asarray(Image.open(tar.extractfile(m)).convert("RGB")))
        for driver, images in by_driver.items():
            track = track_mouth(iter(images), len(images))
            result = {"amplitude_ratio": _spread(track.opening) / real_spread, "frames_without_face": int((~track.detected).sum())}
            result.update(_envelope_corr(track.opening, waves[driver][: int(len(images) / FPS * 16000)]))
            entry["cross_driven"][driver] = result
        entry["real_opening_spread"] = real_spread
        entry["training"] = {k.split("/")[1]: v for k, v in summary["runs"].items() if k.startswith(name + "/")}
        entry["expression_fit"] = summary["cross_driven"][name].get("expression_fit")
        clips[name] = entry
        print(f"[analyse] {name}: {json.dumps({k: entry[k] for k in ('heldout', 'cross_driven')}, default=str)[:600]}")
    from gstalker_ns.config import gstalker_trainer_config

    config = gstalker_trainer_config()
    model = config.pipeline.model
    payload = {
        "benchmark": "lipsync_generalization",
        "commands": [
            "python benchmarks/lipsync_generalization.py prepare --work /tmp/lipgen --pack .gpu_data/lipgen",
            "python benchmarks/lipsync_generalization.py gpu --data .gpu_data/lipgen --work /tmp/lg --out $OUT",
            "python benchmarks/lipsync_generalization.py analyse --returned FILES_AT --work /tmp/lipgen",
        ],
        "clips": clips,
        "settings": {
            "max_num_iterations": config.max_num_iterations,
            "coarse_steps": model.coarse_steps,
            "expression_components": model.expression_components,
            "expression_noise": model.expression_noise,
            "eval_expression": model.eval_expression,
            "eye_loss_weight": model.eye_loss_weight,
            "audio_features": "default_feature_spec(): whisper tiny.en layer 3 + log-mel, window 5, lookahead 2",
            "drive_seconds": DRIVE_SECONDS,
        },
        "train_seconds": {name: clips[name]["training"].get("gstalker", {}).get("wall_s") for name in clips},
    }
    out.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    print(f"[analyse] wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--work", type=Path, default=Path("/tmp/lipgen"))
    p.add_argument("--pack", type=Path, default=REPO / ".gpu_data" / "lipgen")
    p.add_argument("--synth-seconds", type=float, default=60.0)
    g = sub.add_parser("gpu")
    g.add_argument("--data", type=Path, required=True)
    g.add_argument("--work", type=Path, default=Path("/tmp/lg"))
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--budget", type=float, default=420.0, help="seconds each training may take at most")
    g.add_argument("--steps", type=int, default=10000, help="training iterations (the default schedule's)")
    g.add_argument("--baseline-steps", type=int, default=10000, help="splatfacto iterations (a static head plateaus early)")
    g.add_argument("--no-baseline", action="store_true", help="skip splatfacto (it needs CUDA; smoke tests on CPU)")
    g.add_argument("--extra", default="", help="extra ns-train arguments for gstalker, one string (smoke tests only)")
    a = sub.add_parser("analyse")
    a.add_argument("--returned", type=Path, nargs="+", required=True, help="the files_at folder of each GPU call")
    a.add_argument("--work", type=Path, default=Path("/tmp/lipgen"))
    a.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lipsync_generalization.json")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.work, args.pack, args.synth_seconds)
    elif args.step == "gpu":
        gpu(args.data, args.work, args.out, args.budget, args.steps, args.extra.split(), not args.no_baseline, args.baseline_steps)
    else:
        analyse(args.returned, args.work, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
