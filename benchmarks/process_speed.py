"""`gstalker-process` speed and memory on the real clips in ../shared/data/real, from scratch.

    python benchmarks/process_speed.py [--out benchmarks/results/process_speed.json]

Each clip is processed into a new temporary folder by the `gstalker-process` console script in a
child process (nothing cached), and the benchmark records the wall time, the real-time factor
(clip seconds / wall seconds; the goal is >= 2 on this 2-core machine), CPU use (user + system
over wall: 200% = both cores busy), the child's peak RSS, and the per-stage seconds from
`process_report.json`. Whether a speed-up changed the outputs is checked separately (the plate
and masks byte for byte against an earlier run; benchmarks/process_vs_ground_truth.py for poses).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REAL = REPO.parent / "shared" / "data" / "real"
CLIPS = {"dfrf_french": "dfrf_french.mp4", "german_20s": "mimictalk_German_20s.mp4"}


def run_one(video: Path, work: Path) -> dict:
    exe = Path(sys.executable).with_name("gstalker-process")
    out = work / video.stem
    # a wrapper process per clip, so its children's peak RSS is this clip's alone
    wrapper = (
        "import json, resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "print(json.dumps({'rc': done.returncode, 'err': done.stderr[-2000:], 'cpu': u.ru_utime + u.ru_stime, 'rss_kb': u.ru_maxrss}))"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, str(exe), str(video), str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = json.loads(done.stdout.strip().splitlines()[-1])
    if usage["rc"] != 0:
        raise SystemExit(f"gstalker-process failed on {video}:\n{usage['err']}")
    report = json.loads((out / "process_report.json").read_text())
    frames = len(json.loads((out / "transforms.json").read_text())["frames"])
    fps = float(json.loads((out / "transforms.json").read_text()).get("fps", 25.0))
    cpu = usage["cpu"]
    return {
        "clip_seconds": round(frames / fps, 2),
        "wall_s": round(wall, 2),
        "realtime_factor": round(frames / fps / wall, 3),
        "cpu_percent": round(100 * cpu / wall, 1),
        "peak_rss_mb": round(usage["rss_kb"] / 1024, 1),  # Linux reports KiB
        "stage_seconds": report.get("stage_seconds", {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "process_speed.json")
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--keep", type=Path, help="process into this folder and keep the outputs (default: a temporary one)")
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"skipped: {REAL} is absent (the real clips are not part of the repository)")
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="process_speed_") as tmp:
        work = args.keep or Path(tmp)
        for name in args.clips:
            if (work / Path(CLIPS[name]).stem).exists():
                raise SystemExit(f"{work / Path(CLIPS[name]).stem} exists; pass an empty --keep folder")
            results[name] = run_one(REAL / CLIPS[name], work)
            print(f"[process_speed] {name}: {json.dumps(results[name])}", flush=True)
    payload = {
        "benchmark": "process_speed",
        "command": "python benchmarks/process_speed.py",
        "machine": f"{os.cpu_count()} cores (this CPU machine)",
        "clips": results,
    }
    write_result(args.out, payload, "process_speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
