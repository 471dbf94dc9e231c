"""A small face crop of a processed clip, for CPU experiments (the 256 px square around the eyes, halved).

    python benchmarks/face_crop_dataset.py PROCESSED_CLIP OUT_FOLDER

Frames, masks and the background are cut and resized; intrinsics and eye boxes follow.
"""
import json, shutil, sys
from pathlib import Path
import numpy as np
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
side, out = 256, 128
f = out / side
d = np.load(src / "face_landmarks.npz")
boxes = d["eye_boxes"]
cx = float(np.nanmedian((boxes[:, :, 0] + boxes[:, :, 2]) / 2))
cy = float(np.nanmedian((boxes[:, :, 1] + boxes[:, :, 3]) / 2)) + 45
meta = json.loads((src / "transforms.json").read_text())
W, H = meta["width"], meta["height"]
x0 = int(round(min(max(cx - side / 2, 0), W - side))); y0 = int(round(min(max(cy - side / 2, 0), H - side)))
print("crop", x0, y0)
dst.mkdir(parents=True, exist_ok=True)
(dst / "frames").mkdir(exist_ok=True); (dst / "masks").mkdir(exist_ok=True)
def cut(im, resample):
    return im.crop((x0, y0, x0 + side, y0 + side)).resize((out, out), resample)
for fr in meta["frames"]:
    cut(Image.open(src / fr["file_path"]), Image.BILINEAR).save(dst / fr["file_path"], quality=95)
    cut(Image.open(src / fr["mask_path"]), Image.NEAREST).save(dst / fr["mask_path"])
cut(Image.open(src / "background.png"), Image.BILINEAR).save(dst / "background.png")
for name in ("audio.wav", "audio_features.npy"):
    shutil.copy(src / name, dst / name)
eb = boxes.copy(); eb[..., [0, 2]] = (eb[..., [0, 2]] - x0) * f; eb[..., [1, 3]] = (eb[..., [1, 3]] - y0) * f
np.savez(dst / "face_landmarks.npz", **{k: d[k] for k in d.files if k != "eye_boxes"}, eye_boxes=eb.astype(np.float32))
meta.update(width=out, height=out, fl_x=meta["fl_x"] * f, fl_y=meta["fl_y"] * f, cx=(meta["cx"] - x0) * f, cy=(meta["cy"] - y0) * f)
(dst / "transforms.json").write_text(json.dumps(meta))
