"""Run a nerfstudio command (`ns-viewer`, `ns-train`) with a log of the images its viewer sends.

    python tests/viewer_probe.py LOG_FILE ns-viewer --load-config ...

runs the very entry point the `ns-viewer` script runs, after wrapping two functions so that
every image the viewer sends to a browser tab adds one JSON line to LOG_FILE:

    {"t": wall time, "client": tab id, "state": "low_move" | "low_static" | "high",
     "source": the Audio tab's clip, "frame": the frame rendered, "size": [w, h]}

Why the browser test needs it: after a time change, nerfstudio's viewer sends a quick low-res
preview (JPEG quality 40) and then, once nothing moves, the full-res image ("high"); on a busy
CPU each takes seconds. A screenshot taken "when the view stops changing" can catch the preview,
or the previous frame's image while the new one is still being rendered: both happened (the same
time "rendered differently", and no change between a silent and a loud frame). With this log
the test waits for the full-res image of the frame it asked for, then screenshots it.

Test-only: nothing in the package changes. The line is written after the image is queued for the
tab, so once it is there the browser has it or is about to.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Dict, List, Optional


def install(log_path: str) -> None:
    from nerfstudio.viewer import render_state_machine

    from gstalker_ns.viewer.panel import AudioPanel

    rendered = threading.local()  # the render thread's last (clip, frame), set while it renders
    lock = threading.Lock()

    drive_now = AudioPanel._drive_now

    def _drive_now(self):  # called once per viewer render, in the render thread
        table, blink, frame = drive_now(self)
        rendered.value = (self._source.label, int(frame))
        return table, blink, frame

    AudioPanel._drive_now = _drive_now
    send = render_state_machine.RenderStateMachine._send_output_to_viewer

    def _send_output_to_viewer(self, outputs, static_render=True):
        drive = getattr(rendered, "value", None)
        rendered.value = None
        send(self, outputs, static_render)
        image = outputs.get("rgb")
        size = [int(image.shape[1]), int(image.shape[0])] if image is not None else None
        record = {"t": time.time(), "client": int(self.client.client_id), "state": self.state,
                  "source": drive[0] if drive else None, "frame": drive[1] if drive else None, "size": size}  # fmt: skip
        with lock, open(log_path, "a") as log:
            log.write(json.dumps(record) + "\n")

    render_state_machine.RenderStateMachine._send_output_to_viewer = _send_output_to_viewer


def read_log(log_path: Path) -> List[Dict]:
    """The records so far (a line being written is skipped)."""
    if not Path(log_path).exists():
        return []
    records = []
    for line in Path(log_path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


def last_image(log_path: Path, since: float) -> Optional[Dict]:
    """The last image sent after wall time `since`, or None."""
    records = [r for r in read_log(log_path) if r["t"] >= since]
    return records[-1] if records else None


def main() -> None:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # every thread's stack into the log, on demand
    # Ctrl-C raises KeyboardInterrupt, as in a user's terminal, even when the suite runs as a
    # background job: a non-interactive shell starts those with SIGINT ignored, the ignore is
    # inherited, and Python then installs no handler (ns-viewer would never see the Ctrl-C).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log_path, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == command]
    install(os.path.abspath(log_path))
    sys.argv = [command, *args]
    sys.exit(script.load()())


if __name__ == "__main__":
    main()
