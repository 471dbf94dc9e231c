"""Do the eyes close where the training frames show them closed? (no face mesh needed)

    python benchmarks/blink_fit.py RUN/config.yml

Eye-box L1 against the truth on the training frames with shut eyes (blink >= 0.5) and on 30
random open-eye frames, each rendered with its blink value and with the blink forced to 0.
Training frames only: it checks fitting, never the test or validation frames. RESULTS.md,
"why blinks are not learned".
"""
import json, sys
import numpy as np, torch
from gstalker_ns import _compat
_compat.apply_all()
from gstalker_ns.checkpoint import load_trained_pipeline
config = sys.argv[1]
pipeline, *_ = load_trained_pipeline(config)
model = pipeline.model; model.eval()
ds = pipeline.datamanager.train_dataset
frames = ds.cameras.metadata["frame_idx"].reshape(-1).tolist()
blink = model.blink_table.detach().cpu().numpy()
shut = [i for i, f in enumerate(frames) if blink[f] >= 0.5]
rng = np.random.default_rng(0)
open_ = sorted(rng.choice([i for i, f in enumerate(frames) if blink[f] < 0.2], 30, replace=False).tolist())
def render(i, zero):
    f = frames[i]
    saved = model.blink_table[f].clone()
    if zero: model.blink_table[f] = 0.0
    with torch.no_grad(), model.colour_only():
        rgb = model.get_outputs_for_camera(ds.cameras[i:i+1])["rgb"].numpy()
    model.blink_table[f] = saved
    return rgb
out = {}
for name, idx in (("shut", shut), ("open", open_)):
    d, z, move, gap = [], [], [], []
    for i in idx:
        gt = np.asarray(ds.get_numpy_image(i))[..., :3] / 255.0
        h, w = gt.shape[:2]
        eyes = model._eye_mask(frames[i], h, w).numpy()[..., 0] > 0
        a, b = render(i, False), render(i, True)
        d.append(np.abs(a - gt)[eyes].mean()); z.append(np.abs(b - gt)[eyes].mean())
        move.append(np.abs(a - b)[eyes].mean()); gap.append(np.abs(gt - b)[eyes].mean())
    out[name] = {"frames": len(idx), "eye_l1_with_blink": float(np.mean(d)), "eye_l1_blink_zero": float(np.mean(z)),
                 "closure_gain": float(1 - np.mean(d) / np.mean(z)), "render_change": float(np.mean(move)), "truth_gap": float(np.mean(gap))}
print(json.dumps(out, indent=1))
