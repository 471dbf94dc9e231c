"""Speed and peak memory of preprocessing stage 1 (`decode_video`) on real videos.

Usage (CPU; writes only under a temporary folder in /tmp):
    OMP_NUM_THREADS=1 python benchmarks/decode_speed.py [VIDEO ...] [--repeat 3] [--json OUT.json]

Each run happens in a fresh subprocess so its peak RSS (ru_maxrss) is the stage's alone; the
baseline line is the same subprocess after the imports only. The real-time factor is the video's
duration divided by the wall time of `decode_video` (probe + audio + frames + JPEGs + manifest).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_VIDEOS = ["/work/shared/data/real/dfrf_french.mp4", "/work/shared/data/real/mimictalk_German_20s.mp4"]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from gstalker_ns.preprocess.decode import decode_video, probe_video
video, out = sys.argv[1], Path(sys.argv[2])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
info = probe_video(video)
probe_s = time.perf_counter() - start
start = time.perf_counter()
result = decode_video(video, out, progress=False)
wall = time.perf_counter() - start
print(json.dumps({
    "video": video, "duration_s": info.duration_s, "size": [info.width, info.height], "fps": info.fps,
    "frames_out": result.num_frames, "probe_s": probe_s, "decode_s": wall, "realtime_factor": info.duration_s / wall,
    "import_rss_mb": rss0 / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="*", default=DEFAULT_VIDEOS)
    parser.add_argument("--repeat", type=int, default=3, help="runs per video; the fastest is reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    results = []
    for video in args.videos:
        if not Path(video).exists():
            print(f"skip {video}: not found", file=sys.stderr)
            continue
        runs = []
        for _ in range(max(1, args.repeat)):
            with tempfile.TemporaryDirectory(prefix="gstalker-decode-bench-") as tmp:
                proc = subprocess.run([sys.executable, "-c", CHILD, video, tmp], capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{video}: decode failed:\n{proc.stderr}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        best = min(runs, key=lambda r: r["decode_s"])
        best["decode_s_all"] = [round(r["decode_s"], 3) for r in runs]
        best["peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in runs)
        results.append(best)
        print(
            f"{Path(video).name}: {best['duration_s']:.1f} s {best['size'][0]}x{best['size'][1]} @ {best['fps']:.2f} fps "
            f"-> {best['frames_out']} frames in {best['decode_s']:.2f} s (runs {best['decode_s_all']}), "
            f"{best['realtime_factor']:.1f}x real time, peak RSS {best['peak_rss_mb_max']:.0f} MB "
            f"(after imports {best['import_rss_mb']:.0f} MB)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
