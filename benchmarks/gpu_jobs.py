"""Several trainings in one GPU call, one per GPU (or sharing one), each followed by its measurements.

    python benchmarks/gpu_jobs.py --jobs jobs.json --data .gpu_data/lipgen/real --work /tmp/gj --out $OUT   # GPU

A GPU call is short (10 min) and a machine is not kept between calls, so everything a run is
needed for happens in the same call, in the same process that trained it. jobs.json is a list of

    {"name": "french_default", "subject": "dfrf_french", "gpu": 0, "steps": 10000, "budget": 500,
     "extra": ["--pipeline.model.max-gaussians=60000"], "validation": false,
     "tasks": ["eval", "cross", "speed"], "baseline": false}

- `validation: true` trains on the first 10/11 of the clip only and scores the last 1/11 of
  that (a validation slice inside the training part): settings are chosen there, never on the
  test frames;
- tasks: `eval` (gstalker-eval --also-tracked, frames packed for face mesh back home), `cross`
  (renders driven by other speakers, as in lipsync_generalization.py), `speed`
  (render_speed.py's measurements), `blinkfit` (gstalker-eval on the training frames around each
  shut-eye frame: does the model close the eyes where it was shown them closed? Training frames,
  so it can be looked at without touching the test or validation frames), `curve` (all checkpoints
  kept, each one's held-out PSNR against training time: heldout_psnr_curve.py);
- tasks run in the order listed; speed first waits until every other job of the call has
  finished its tasks before it (timings taken while another job still trains on the same GPU
  would not be clean), so with several jobs list it last;
- `baseline: true` also trains plain splatfacto on the same frames (for LMD).

The output is shaped like lipsync_generalization.py's `gpu` step (ret/summary.json, one
<name>_eval folder and <name>_cross_driven.tar per job) plus <name>_speed.json, so
`lipsync_generalization.py analyse` reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _validation_folder(full: Path, target: Path) -> Path:
    """A copy of the training folder without the clip's last 1/11 (the test frames): its own last
    1/11 then serves as the validation slice. Frames and masks are linked, not copied."""
    from gstalker_ns.data.dataparser import split_indices

    meta = json.loads((full / "transforms.json").read_text())
    frames = sorted(meta["frames"], key=lambda f: f.get("frame_idx", 0))
    keep = split_indices(len(frames), 1.0 / 11.0, "train")
    target.mkdir(parents=True, exist_ok=True)
    for item in full.iterdir():
        if item.name != "transforms.json" and not (target / item.name).exists():
            (target / item.name).symlink_to(item.resolve())
    meta["frames"] = [frames[i] for i in keep]
    (target / "transforms.json").write_text(json.dumps(meta))
    return target


def blink_frame_ranges(folder: Path, margin: int = 6, threshold: float = 0.5) -> str:
    """'a-b,c-d': the training frames within `margin` of a shut-eye frame (blink >= threshold)."""
    from gstalker_ns.data.dataparser import split_indices

    meta = json.loads((folder / "transforms.json").read_text())
    frames = sorted(meta["frames"], key=lambda f: f.get("frame_idx", 0))
    train = [frames[i] for i in split_indices(len(frames), float(meta.get("eval_fraction", 1.0 / 11.0)), "train")]
    shut = [int(f["frame_idx"]) for f in train if float(f.get("blink", 0.0)) >= threshold]
    last = max(int(f["frame_idx"]) for f in train)
    ranges: list = []
    for k in shut:
        lo, hi = max(0, k - margin), min(last, k + margin)
        if ranges and lo <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], hi)
        else:
            ranges.append([lo, hi])
    return ",".join(f"{a}-{b}" for a, b in ranges)


def _mark_done(work: Path, name: str) -> None:
    (work / f"{name}.done").write_text("done")


def _wait_for_others(spec: Dict, work: Path) -> None:
    """Until every job of the call has marked itself done (or the call's wait limit is reached)."""
    names = [n for n in spec.get("_all_names", []) if n != spec["name"]]
    until = float(spec.get("_wait_until", time.time()))
    while time.time() < until and not all((work / f"{n}.done").exists() for n in names):
        time.sleep(2.0)


def run_job(spec: Dict, data: Path, work: Path, ret: Path) -> Dict:
    try:
        return _run_job(spec, data, work, ret)
    finally:
        _mark_done(work, spec["name"])


def _run_job(spec: Dict, data: Path, work: Path, ret: Path) -> Dict:
    from gstalker_ns import _compat

    _compat.apply_all()
    from gpu_train_eval import train
    from pack_dataset import unpack

    name, subject = spec["name"], spec["subject"]
    folder = work / "data" / name
    if not (folder / "transforms.json").exists():
        unpack(data / subject, folder)
    if spec.get("validation"):
        folder = _validation_folder(folder, work / "data" / f"{name}_val")
    if spec.get("trained"):  # a run this machine already holds (a back-to-back call): measure only
        runs = json.loads(Path(spec["trained"]).read_text())["runs"]
        return _measure(spec, runs, folder, data, work, ret)
    steps = int(spec.get("steps", 10000))
    budget = float(spec.get("budget", 500))
    extra = list(spec.get("extra", []))
    if "curve" in spec.get("tasks", []):
        extra.append("--save-only-latest-checkpoint=False")  # every 1000 steps kept for the curve
    trainings = {"gstalker": (steps, extra)}
    if spec.get("baseline"):  # trained at the same time: a static head plateaus in a few thousand steps
        trainings["splatfacto"] = (int(spec.get("baseline_steps", 5000)), [])
    started_at = time.time()
    with ThreadPoolExecutor(len(trainings)) as pool:
        futures = {
            method: pool.submit(train, method, folder, work / "runs" / name, n, budget, min(1000, n), extra)
            for method, (n, extra) in trainings.items()
        }
        runs = {f"{name}/{method}": future.result() for method, future in futures.items()}
    for run in runs.values():
        run["started_at"] = started_at
    print(f"[{name}] trained: {json.dumps(runs)}", flush=True)
    (work / f"{name}_runs.json").write_text(json.dumps({"runs": runs}))
    return _measure(spec, runs, folder, data, work, ret)


def _measure(spec: Dict, runs: Dict, folder: Path, data: Path, work: Path, ret: Path) -> Dict:
    name, subject = spec["name"], spec["subject"]
    config = Path(runs[f"{name}/gstalker"]["config"])
    out: Dict = {"runs": runs, "cross_driven": {}}
    tasks = spec.get("tasks", ["eval", "cross", "speed"])
    errors = {}

    def speed() -> None:
        from render_speed import measure

        result = measure(config, int(spec.get("speed_frames", 300)), 16)
        (ret / f"{name}_speed.json").write_text(json.dumps(result, indent=1))
        print(f"[{name}] speed: {json.dumps(result['batch1'])} {json.dumps(result['breakdown_ms'])[:400]}", flush=True)

    def curve() -> None:
        from heldout_psnr_curve import psnr_curve

        started = float(runs[f"{name}/gstalker"].get("started_at", 0.0))
        result = psnr_curve(config, started)
        (ret / f"{name}_curve.json").write_text(json.dumps(result, indent=1))
        out["curve"] = {name: {"final_psnr": result["final_psnr"], "first_within_0_2_db": result["first_within_0_2_db"]}}

    def evaluate() -> None:
        from gstalker_ns.evaluation.cli import main as gstalker_eval
        from pack_eval_frames import pack as pack_eval

        ev = work / "eval" / name
        base = ["--baseline", "splatfacto", "--baseline-config", runs[f"{name}/splatfacto"]["config"]] if spec.get("baseline") else []
        code = gstalker_eval(["--load-config", str(config), *base, "--also-tracked", "--output-dir", str(ev), "--quiet"])
        if code == 0:
            pack_eval(ev, ret / f"{name}_eval", quality=85)

    def cross() -> None:
        from lipsync_generalization import _cross_driven

        out["cross_driven"][name] = _cross_driven(config, data / subject, ret, name, subject)

    def blinkfit() -> None:
        from gstalker_ns.evaluation.cli import main as gstalker_eval
        from pack_eval_frames import pack as pack_eval

        ranges = blink_frame_ranges(folder)
        out["blinkfit_frames"] = {name: ranges}
        if not ranges:
            return
        ev = work / "blinkfit" / name
        code = gstalker_eval(["--load-config", str(config), "--split", "train", "--frames", ranges, "--no-video",
                              "--output-dir", str(ev), "--quiet"])  # fmt: skip
        if code == 0:
            pack_eval(ev, ret / f"{name}_blinkfit", quality=90)

    # One failing task must not cost the others (a GPU call cannot be repeated cheaply). Speed
    # waits until the other jobs of the call are done: then this job has the GPU to itself.
    table = {"eval": evaluate, "blinkfit": blinkfit, "curve": curve, "cross": cross, "speed": speed}
    unknown = [t for t in tasks if t not in table]
    if unknown:
        errors["tasks"] = f"unknown tasks {unknown}; known: {sorted(table)}"
    for task in [t for t in tasks if t in table]:  # in the job's order: what matters most goes first
        if task == "speed":
            _mark_done(work, name)
            _wait_for_others(spec, work)
        try:
            table[task]()
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            import traceback

            traceback.print_exc()
            errors[task] = f"{type(exc).__name__}: {exc}"
    out["cross_driven"].setdefault(name, {})["subject"] = subject
    out["cross_driven"][name]["validation"] = bool(spec.get("validation"))
    out["cross_driven"][name]["extra"] = list(spec.get("extra", []))
    out["cross_driven"][name]["errors"] = errors
    return out


def merge_summaries(paths) -> Dict:
    """The jobs' summaries as one: dict entries merged per key, anything else kept per job. Never
    raises: a summary that cannot be merged must not cost the call's returned files (it did once)."""
    summary: Dict = {"runs": {}, "cross_driven": {}}
    for path in paths:
        try:
            part = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(summary.get(key, {}), dict):
                summary.setdefault(key, {}).update(value)
            else:
                summary.setdefault("other", {})[f"{Path(path).stem}:{key}"] = value
    return summary


def coordinate(jobs_path: Path, data: Path, work: Path, out: Path, deadline: float) -> None:
    started = time.perf_counter()
    jobs = json.loads(jobs_path.read_text())
    ret = work / "ret"
    ret.mkdir(parents=True, exist_ok=True)
    procs = []
    names = [spec["name"] for spec in jobs]
    for spec in jobs:
        spec = dict(spec, _all_names=names, _wait_until=time.time() + deadline - 90.0)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(spec.get("gpu", 0)))
        log = open(work / f"{spec['name']}.log", "w")
        command = [sys.executable, __file__, "--job", json.dumps(spec), "--data", str(data), "--work", str(work), "--out", str(out)]
        procs.append((spec, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for spec, proc, log in procs:
        left = deadline - (time.perf_counter() - started)
        try:
            proc.wait(timeout=max(1.0, left))
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"[jobs] {spec['name']} killed at the call's deadline", flush=True)
        log.close()
    summary = merge_summaries([ret / f"{spec['name']}_summary.json" for spec in jobs])
    summary["gpu_seconds"] = round(time.perf_counter() - started, 1)
    for spec in jobs:  # logs' tails travel back too
        log = work / f"{spec['name']}.log"
        if log.exists():
            (ret / f"{spec['name']}.log").write_text(log.read_text()[-20000:])
    from lipsync_generalization import return_results

    size = return_results(ret, out, summary)
    print(f"[jobs] returned {size / 2**20:.1f} MiB; {json.dumps(summary)[:3000]}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=Path, help="the job list (JSON)")
    p.add_argument("--job", help=argparse.SUPPRESS)  # one job, run by the coordinator in its own process
    p.add_argument("--data", type=Path, required=True, help="folder of packed subjects (pack_dataset.py)")
    p.add_argument("--work", type=Path, default=Path("/tmp/gj"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--deadline", type=float, default=560.0, help="seconds after which unfinished jobs are killed")
    args = p.parse_args()
    if args.job:
        spec = json.loads(args.job)
        ret = args.work / "ret"
        ret.mkdir(parents=True, exist_ok=True)
        result = run_job(spec, args.data, args.work, ret)
        (ret / f"{spec['name']}_summary.json").write_text(json.dumps(result, indent=1))
        return 0
    if args.jobs is None:
        p.error("--jobs is required")
    coordinate(args.jobs, args.data, args.work, args.out, args.deadline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
