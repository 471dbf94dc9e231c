"""Pack a training folder compactly for the GPU machine (64 MiB transfer cap; it has cv2 but no PyAV).

    python benchmarks/pack_dataset.py /tmp/proc_fr .gpu_data/fr      # here
    python benchmarks/pack_dataset.py --unpack .gpu_data/fr /tmp/fr  # there (cv2 + numpy only)

Frames travel as one near-lossless H.264 video (crf 12), label maps as one compressed npz; the
small files (transforms.json, background.png, audio.wav, audio_features.npy, ground_truth.json,
face_landmarks.npz) travel gzipped and are restored byte for byte, except that `half_features`
sends the feature table as float16 (restored as float32, rounded).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import numpy as np

SMALL_FILES = ("transforms.json", "background.png", "audio.wav", "audio_features.npy", "ground_truth.json", "face_landmarks.npz")


def _half_features(path: Path) -> bytes:
    """audio_features.npy as float16 (the Whisper table is 5x larger than the log-mel one)."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.load(path).astype(np.float16))
    return buffer.getvalue()


def pack(src: Path, dst: Path, crf: int = 12, half_features: bool = False) -> None:
    from PIL import Image

    from gstalker_ns.media.video import write_mp4

    dst.mkdir(parents=True, exist_ok=True)
    meta = json.loads((src / "transforms.json").read_text())
    frames = sorted((src / "frames").glob("*.jpg"))
    write_mp4(dst / "frames.mp4", (np.asarray(Image.open(p).convert("RGB")) for p in frames), fps=25.0, crf=crf)
    labels = np.stack([np.asarray(Image.open(src / "masks" / (p.stem + ".png"))) for p in frames])
    np.savez_compressed(dst / "labels.npz", labels=labels, names=np.array([p.stem for p in frames]))
    for name in SMALL_FILES:
        if (src / name).exists():
            data = (src / name).read_bytes()
            if half_features and name == "audio_features.npy":
                data, name = _half_features(src / name), "audio_features.f16.npy"
            (dst / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"packed {len(frames)} frames of {meta['width']}x{meta['height']} into {dst}")


def unpack(src: Path, dst: Path) -> None:
    import cv2

    (dst / "frames").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    packed = np.load(src / "labels.npz")
    names = [str(n) for n in packed["names"]]
    capture = cv2.VideoCapture(str(src / "frames.mp4"))
    for name in names:
        ok, frame = capture.read()
        if not ok:
            raise SystemExit(f"frames.mp4 ended before frame {name}")
        cv2.imwrite(str(dst / "frames" / f"{name}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    for name, labels in zip(names, packed["labels"]):
        cv2.imwrite(str(dst / "masks" / f"{name}.png"), labels)
    for name in SMALL_FILES:
        if (src / f"{name}.gz").exists():
            (dst / name).write_bytes(gzip.decompress((src / f"{name}.gz").read_bytes()))
        elif (src / name).exists():  # packed before the small files were gzipped
            shutil.copy2(src / name, dst / name)
    if (src / "audio_features.f16.npy.gz").exists():  # packed with half_features: float32 again
        import io

        table = np.load(io.BytesIO(gzip.decompress((src / "audio_features.f16.npy.gz").read_bytes())))
        np.save(dst / "audio_features.npy", table.astype(np.float32))
    print(f"unpacked {len(names)} frames into {dst}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unpack", action="store_true")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args()
    (unpack if args.unpack else pack)(args.src, args.dst)


if __name__ == "__main__":
    main()
