"""mediapipe's native start-up notes are kept off the terminal; anything else written to fd 2 is not."""

import os
import time

from gstalker_ns.native_logs import captured_fd2, quiet_start


def test_known_notes_are_dropped_and_other_lines_pass(capfd):
    with captured_fd2() as lines:
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"W0000 00:00:1795260646.686506   22603 inference_feedback_manager.cc:114] Feedback manager ...\n")
        os.write(2, b"E0000 00:00:1795260646.7   22603 graph.cc:9] a real error\n")
        os.write(2, b"something else\n")
    assert lines == ["E0000 00:00:1795260646.7   22603 graph.cc:9] a real error", "something else"]
    err = capfd.readouterr().err
    assert "a real error" in err and "something else" in err
    assert "XNNPACK" not in err and "Feedback manager" not in err
    os.write(2, b"after\n")  # fd 2 is restored
    assert "after" in capfd.readouterr().err


def test_quiet_start_returns_the_value_and_restores_on_errors(capfd):
    assert quiet_start(lambda: 42) == 42

    def boom():
        os.write(2, b"I0000 00:00:1.0 1 x.cc:1] note\n")
        raise RuntimeError("graph failed")

    try:
        quiet_start(boom)
    except RuntimeError:
        pass
    os.write(2, b"still here\n")
    assert "still here" in capfd.readouterr().err


def test_face_mesh_and_segmentation_runs_leave_no_notes_on_the_terminal(capfd):
    """mediapipe's graph threads log after the constructor returns; a real run over a few frames
    (the notes come with every graph start, not only the first of the process) stays quiet."""
    import numpy as np
    import pytest

    pytest.importorskip("mediapipe")
    from gstalker_ns.preprocess.landmarks import track_landmarks
    from gstalker_ns.preprocess.masks import person_masks

    frames = [np.random.default_rng(k).integers(0, 255, (96, 96, 3), dtype=np.uint8) for k in range(4)]

    def slow_reader():  # like frames decoded from disk: time passes between graph start and frame 0
        for frame in frames:
            time.sleep(0.3)
            yield frame

    capfd.readouterr()
    for _ in range(2):
        track = track_landmarks(slow_reader())
        masks = list(person_masks(slow_reader()))
    assert track.points.shape[0] == 4 and len(masks) == 4
    err = capfd.readouterr().err
    assert "Feedback manager" not in err and "XNNPACK" not in err and "W0000" not in err, err
