"""`gstalker-demo` end to end at CI size: held-out metrics without NaN (unavailable ones say why),
and results/demo.mp4 with sound, as long as its picture, holding the held-out part and the new
clip."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent


def test_demo_writes_metrics_and_a_video_with_sound(tmp_path):
    import av

    preset = yaml.safe_load((REPO / "configs" / "ci-tiny.yaml").read_text())
    preset["synth"]["duration"] = 4.0
    preset["train_args"].append("--pipeline.datamanager.dataparser.eval-fraction=0.25")
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    done = subprocess.run(
        [sys.executable, "-m", "gstalker_ns.demo", "--preset", str(tmp_path / "preset.yaml"), "--output", str(tmp_path / "demo"),
         "--new-speech-seconds", "1.0"],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "nan" not in done.stdout.lower(), done.stdout[-2000:]
    assert "Warning" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]
    assert "mouth_opening_correlation:" in done.stdout
    metrics = json.loads((tmp_path / "demo" / "results" / "metrics.json").read_text())
    summary = metrics["methods"]["gstalker"]["summary"]
    for key, value in summary.items():
        assert value is None or not (isinstance(value, float) and math.isnan(value)), key
        if value is None:
            assert metrics["methods"]["gstalker"]["unavailable"].get(key), key
    held_out = metrics["num_frames"]
    assert held_out == 25  # the last quarter of 100 frames
    with av.open(str(tmp_path / "demo" / "results" / "demo.mp4")) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(tmp_path / "demo" / "results" / "demo.mp4")) as container:
        audio = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        rate = audio.rate
    assert frames == held_out + 25  # then one second of new speech at 25 fps
    assert abs(len(samples) / rate - frames / 25.0) < 0.1
    assert np.abs(samples).max() > 0.01  # there is sound
