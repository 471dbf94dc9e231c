"""Bring a GPU `gstalker-eval` back through the device's return limits (8 files of 16 MiB).

There (no mediapipe, PyAV or ffmpeg), gstalker-eval computes the image metrics exactly from its
renders and leaves the lip-sync metrics unavailable; its frames folder (lossless PNGs) is too big
to return. So:

    python benchmarks/pack_eval_frames.py pack /tmp/ev $OUT              # there: metrics.json + JPEG tar parts
    python benchmarks/pack_eval_frames.py unpack FILES_AT /tmp/ev_here   # here: a frames folder again
    gstalker-eval --lipsync-from /tmp/ev_here                             # here: lip sync, face crops, plots, mp4
    python benchmarks/pack_eval_frames.py merge FILES_AT /tmp/ev_here    # -> /tmp/ev_here/metrics_merged.json

Frames travel as JPEG (quality 95, no chroma subsampling); label maps and the audio as they are.
The merged metrics take the full-frame PSNR/SSIM/LPIPS from the GPU run (exact renders) and
everything else from the local analysis, whose face crops come from face mesh. Face-crop PSNR
is then measured on JPEG frames, and the merged file says so. Landmarks are sensitive to the
JPEG step on tiny frames: on a 64 px, 5-frame CPU check, LMD moved from 2.93 to 3.09 px and the
(meaningless, 5-frame) mouth correlation flipped sign; use this on 512 px frames, whole splits.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

PART_BYTES = 15 * 2**20
EXACT_KEYS = ("psnr", "ssim", "lpips")
"""Summary keys taken from the GPU run (computed there from the exact renders, full frame)."""


def pack(eval_dir: Path, out: Path, quality: int = 95) -> None:
    frames = eval_dir / "frames"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(frames.rglob("*")):
            if not path.is_file():
                continue
            name = str(path.relative_to(frames))
            if path.suffix == ".png" and not name.startswith("labels/"):
                image = io.BytesIO()
                Image.open(path).convert("RGB").save(image, format="JPEG", quality=quality, subsampling=0)
                data, name = image.getvalue(), name[:-4] + ".jpg"
            else:
                data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    payload = buffer.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(eval_dir / "metrics.json", out / "metrics.json")
    parts = [payload[i : i + PART_BYTES] for i in range(0, len(payload), PART_BYTES)]
    if len(parts) > 7:
        raise SystemExit(f"{len(payload) / 2**20:.0f} MiB of frames: more than 7 parts; use --max-frames or a lower quality")
    for i, part in enumerate(parts):
        (out / f"frames.tar.{i:03d}").write_bytes(part)
    print(f"packed {len(payload) / 2**20:.1f} MiB into {len(parts)} part(s) + metrics.json in {out}")


def unpack(packed: Path, eval_dir: Path) -> None:
    payload = b"".join(p.read_bytes() for p in sorted(packed.glob("frames.tar.*")))
    frames = eval_dir / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r") as tar:
        for member in tar.getmembers():
            target = (frames / member.name).resolve()
            if frames.resolve() not in target.parents:
                raise SystemExit(f"refusing to write outside {frames}: {member.name}")
            data = tar.extractfile(member).read()
            target.parent.mkdir(parents=True, exist_ok=True)
            if member.name.endswith(".jpg"):
                image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                Image.fromarray(image).save(target.with_suffix(".png"), compress_level=1)
            else:
                target.write_bytes(data)
    print(f"unpacked into {frames}; now run: gstalker-eval --lipsync-from {eval_dir}")


def merge(packed: Path, eval_dir: Path) -> None:
    remote = json.loads((packed / "metrics.json").read_text())
    local = json.loads((eval_dir / "metrics.json").read_text())
    merged = dict(local)
    for name, method in merged["methods"].items():
        exact = remote["methods"][name]["summary"]
        method["summary"] = {**method["summary"], **{k: exact.get(k) for k in EXACT_KEYS}}
        method["render_ms_per_frame"] = remote["methods"][name].get("render_ms_per_frame")
        method["summary"]["render_ms_median"] = exact.get("render_ms_median")
    merged["merged_from"] = {
        "gpu_run": {"keys": list(EXACT_KEYS) + ["render_ms_median"], "why": "computed there from the exact renders"},
        "local_analysis": "everything else, from JPEG q95 (4:4:4) copies of the frames; face crops from face mesh",
    }
    (eval_dir / "metrics_merged.json").write_text(json.dumps(merged, indent=1) + "\n")
    print(f"wrote {eval_dir / 'metrics_merged.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "unpack", "merge"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--quality", type=int, default=95)
    args = parser.parse_args()
    if args.action == "pack":
        pack(args.source, args.target, args.quality)
    elif args.action == "unpack":
        unpack(args.source, args.target)
    else:
        merge(args.source, args.target)


if __name__ == "__main__":
    main()
