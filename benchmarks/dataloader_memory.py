"""Peak RSS of the data path on a long clip: our lazy datamanager vs nerfstudio's caching one.

Usage (CPU is fine):
    gstalker-synth /tmp/synth180 --duration 180 --size 512 --no-video
    python benchmarks/dataloader_memory.py /tmp/synth180 --steps 2000 [--also-stock]

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that data path
alone: dataparser + datamanager construction, `--steps` training draws, and one pass over the
held-out frames. `--also-stock` measures nerfstudio's FullImageDatamanager (it caches every frame)
on the same folder for reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import gstalker_ns._compat as c; c.apply_all()
from pathlib import Path
from gstalker_ns.data.dataparser import TalkingPortraitDataParserConfig
kind, data, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
parser = TalkingPortraitDataParserConfig(data=data)
if kind == "lazy":
    from gstalker_ns.data.datamanager import TalkingPortraitDatamanagerConfig
    manager = TalkingPortraitDatamanagerConfig(dataparser=parser).setup(device="cpu", test_mode="val")
else:
    from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
    from gstalker_ns.data.dataset import TalkingPortraitDataset
    from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager
    import torch
    torch.Tensor.pin_memory = lambda self, *a, **k: self  # no accelerator here: pinning would fail
    class Stock(FullImageDatamanager[TalkingPortraitDataset]):
        pass
    config = FullImageDatamanagerConfig(_target=Stock, dataparser=parser, cache_images="cpu", cache_images_type="uint8")
    manager = config.setup(device="cpu", test_mode="val")
setup_s = time.perf_counter() - start
start = time.perf_counter()
for step in range(steps):
    camera, batch = manager.next_train(step)
train_s = time.perf_counter() - start
n_eval = 0
for camera, batch in manager.fixed_indices_eval_dataloader:
    n_eval += 1
print(json.dumps({
    "datamanager": kind,
    "train_frames": len(manager.train_dataset),
    "eval_frames": n_eval,
    "setup_s": round(setup_s, 2),
    "ms_per_train_draw": round(1000 * train_s / max(1, steps), 2),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "rss_after_imports_mb": round(rss0 / 1024, 1),
}))
"""


def measure(kind: str, data: Path, steps: int) -> dict:
    completed = subprocess.run([sys.executable, "-c", CHILD, kind, str(data), str(steps)], capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a training folder (e.g. a 3-minute gstalker-synth subject)")
    parser.add_argument("--steps", type=int, default=2000, help="training draws to time")
    parser.add_argument("--also-stock", action="store_true", help="also measure nerfstudio's caching FullImageDatamanager")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results = [measure("lazy", args.data, args.steps)]
    if args.also_stock:
        results.append(measure("stock", args.data, args.steps))
    meta = json.loads((args.data / "transforms.json").read_text())
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "data": str(args.data),
        "frames": len(meta["frames"]),
        "size": f"{meta['width']}x{meta['height']}",
        "results": results,
    }
    print(json.dumps(report, indent=1))
    if args.output:
        args.output.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
