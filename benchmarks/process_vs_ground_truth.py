"""Compare gstalker-process poses on a synthetic subject's talk.mp4 with the exact poses.

    gstalker-synth /tmp/syn512 --duration 10 --size 512 --seed 3
    gstalker-process /tmp/syn512/talk.mp4 /tmp/proc_syn
    python benchmarks/process_vs_ground_truth.py /tmp/syn512 /tmp/proc_syn

The estimated head frame equals the true one only up to a fixed rotation, translation and scale
(the canonical shape's axes and origin are conventions), so the best-fit constant rotation is
removed before measuring per-frame rotation error; translation is compared after a best-fit
similarity (scale + offset) of the camera centres in the head frame.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def project_so3(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1, 1, d]) @ vt


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (np.einsum("nij,nij->n", a, b) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def main() -> None:
    truth_dir, est_dir = Path(sys.argv[1]), Path(sys.argv[2])
    truth = {f["frame_idx"]: np.array(f["transform_matrix"]) for f in json.loads((truth_dir / "transforms.json").read_text())["frames"]}
    est = {f["frame_idx"]: np.array(f["transform_matrix"]) for f in json.loads((est_dir / "transforms.json").read_text())["frames"]}
    common = sorted(set(truth) & set(est))
    rt = np.stack([truth[k][:3, :3] for k in common])
    re = np.stack([est[k][:3, :3] for k in common])
    align = project_so3(np.einsum("nij,nkj->ik", re, rt))  # est ~ align @ truth
    rot_err = angle_deg(re, np.einsum("ij,njk->nik", align, rt))
    motion = angle_deg(rt, np.repeat(rt[:1], len(rt), axis=0))
    ct = np.stack([truth[k][:3, 3] for k in common])
    ce = np.stack([est[k][:3, 3] for k in common]) @ align  # into the true head frame's axes
    ct0, ce0 = ct - ct.mean(0), ce - ce.mean(0)
    scale = float((ct0 * ce0).sum() / (ce0 * ce0).sum())
    trans_err = np.linalg.norm(ce0 * scale - ct0, axis=1)
    truth_meta = json.loads((truth_dir / "transforms.json").read_text())
    est_meta = json.loads((est_dir / "transforms.json").read_text())
    report = {
        "frames_compared": len(common),
        "head_rotation_range_deg": round(float(motion.max()), 2),
        "rotation_error_deg": {"median": round(float(np.median(rot_err)), 3), "p95": round(float(np.percentile(rot_err, 95)), 3), "max": round(float(rot_err.max()), 3)},
        "camera_centre_error_head_radii": {"median": round(float(np.median(trans_err)), 4), "max": round(float(trans_err.max()), 4)},
        "camera_centre_motion_head_radii": round(float(np.linalg.norm(ct0, axis=1).max()), 4),
        "focal_px": {"true": truth_meta["fl_x"], "estimated": round(est_meta["fl_x"], 1)},
        "fixed_axis_offset_deg": round(float(np.degrees(np.arccos(np.clip((np.trace(align) - 1) / 2, -1, 1)))), 2),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
