"""The viewer's audio panel in a real browser: `ns-viewer` on a tiny CPU checkpoint, driven
through Debian's chromium with playwright.

What it shows: an upload lands in the dropdown; bad uploads show an error and change nothing;
moving the slider between a silent and a loud time changes the rendered mouth (and coming back
gives the same image again); Play makes the page's <audio> element play with its time advancing
along the server's clock; during `ns-train`, two tabs play while training goes on; the viewer
listens on 127.0.0.1 only when asked; the upload folder is gone after the viewer exits.
Screenshots go to /tmp/viewer_shots/.

Nothing here depends on what a tiny model happens to learn:
- the checkpoint is `tests.mouth_fixture`: built deterministically, its mouth Gaussians made to
  move with the audio by construction, and checked in Python (silent and loud frames render
  differently, the same frame renders identically) before any browser work;
- the viewers run under `tests/viewer_probe.py`, which logs every image the viewer sends (which
  clip, frame and render state). nerfstudio's viewer first sends a low-res preview of a new time
  and only later the full-res image; screenshots are taken once the full-res image of the frame
  asked for has been sent, not when the view "looks settled" (on a busy CPU that caught previews
  and the previous frame's image);
- the `ns-train` test asserts only what the panel and the trainer do (frames advance, images of
  new frames are sent, sound plays, training steps go on), not what the model has learned.

Set-up: `scripts/setup.sh` installs playwright (pip) and Debian's chromium (apt-get, as root);
`playwright install` is never used (it downloads a browser build from a CDN). Without them the
tests skip and say why.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests import viewer_probe

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROBE = REPO / "tests" / "viewer_probe.py"
SHOTS = Path("/tmp/viewer_shots")
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
UPLOAD_LIMIT_MB = 1.0

# The live-training test: the CI preset on a small subject, long enough to still be training
# when the test ends (it is stopped with Ctrl-C then). Nothing is asserted about what it learns.
TRAINING_SYNTH = {"size": 48, "audio_source": "procedural"}
TRAINING_ARGS = ["--max-num-iterations=100000", "--steps-per-save=100000", "--pipeline.model.torso-field=False"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium and playwright, as scripts/setup.sh installs them; skip (saying why) without."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed in this environment: run scripts/setup.sh (it pip-installs it)")
    found = next((p for p in CHROMIUM_PATHS if Path(p).exists()), None)
    if found is None:
        pytest.skip(
            "chromium is not installed: scripts/setup.sh installs it when run as root "
            "(or: apt-get install chromium); playwright's own browser download is not used"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{process.args[0]} did not start its viewer:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops ns-train or ns-viewer."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def mouth(tmp_path_factory):
    """The checkpoint whose mouth opens on loud frames, built and checked in Python (see
    tests/mouth_fixture.py; it raises MouthFixtureError when the renders do not differ)."""
    from tests.mouth_fixture import build_mouth_fixture

    return build_mouth_fixture(tmp_path_factory.mktemp("mouth_fixture"))


def _probed(log: Path, command: str, *args: str) -> list:
    """`command args` (an installed nerfstudio script) under tests/viewer_probe.py, logging to `log`."""
    return [sys.executable, str(PROBE), str(log), command, *args]


@pytest.fixture
def training(tmp_path_factory):
    """`ns-train gstalker` with its viewer on 127.0.0.1, training a tiny subject while the test runs.

    Yields a dict; the run is stopped with Ctrl-C when the test ends.
    """
    from gstalker_ns.demo import find_config
    from gstalker_ns.synth.subject import generate_subject

    root = tmp_path_factory.mktemp("viewer_run")
    work = root / "tmp"
    work.mkdir()
    preset = yaml.safe_load((REPO / "configs" / "ci-tiny.yaml").read_text())
    subject = generate_subject(root / "subject", **{**preset["synth"], **TRAINING_SYNTH}, video=False, progress=False)
    overridden = {arg.split("=")[0] for arg in TRAINING_ARGS}
    args = [a for a in preset["train_args"] if a.split("=")[0] not in overridden] + TRAINING_ARGS
    port = _free_port()
    renders = work / "renders.jsonl"
    command = _probed(renders, "ns-train", "gstalker", f"--data={subject}", f"--output-dir={root / 'outputs'}",
                      "--experiment-name=viewer", "--timestamp=run", "--vis=viewer", "--viewer.quit-on-train-completion=False",
                      "--viewer.websocket-host=127.0.0.1", f"--viewer.websocket-port={port}", *args)  # fmt: skip
    log_path = work / "train.log"
    log = open(log_path, "w")
    env = dict(os.environ, TMPDIR=str(work), GSTALKER_VIEWER_MAX_UPLOAD_MB=str(UPLOAD_LIMIT_MB))
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    _wait_for_port(port, process, log_path)
    info = {"port": port, "work": work, "subject": subject, "process": process, "log": log_path,
            "config": find_config(root / "outputs", "viewer"), "renders": renders}  # fmt: skip
    yield info
    _stop(process)
    log.close()


def _listening_addresses(port: int) -> set:
    """Local addresses with a listening TCP socket on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.fixture(scope="module")
def viewer(mouth, tmp_path_factory):
    """`ns-viewer` on the mouth checkpoint, bound to 127.0.0.1, uploads limited to 1 MB."""
    work = tmp_path_factory.mktemp("viewer_tmp")
    port = _free_port()
    env = dict(os.environ, TMPDIR=str(work), GSTALKER_VIEWER_MAX_UPLOAD_MB=str(UPLOAD_LIMIT_MB))
    log_path = work / "viewer.log"
    log = open(log_path, "w")
    renders = work / "renders.jsonl"
    command = _probed(renders, "ns-viewer", "--load-config", str(mouth.config), "--viewer.websocket-host", "127.0.0.1",
                      "--viewer.websocket-port", str(port))  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    _wait_for_port(port, process, log_path)
    yield {"port": port, "work": work, "subject": mouth.subject, "process": process, "log": log_path, "renders": renders}
    _stop(process)
    log.close()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # The autoplay policy of a desktop Chrome: sound only after the user has clicked the page.
        launched = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--autoplay-policy=document-user-activation-required"]
        )
        yield launched
        launched.close()


def _open_panel(browser, port: int):
    """A new tab on the viewer with the Audio tab open and a first render shown."""
    tab = browser.new_page(viewport={"width": 1100, "height": 700})
    tab.goto(f"http://127.0.0.1:{port}")
    # a small render size keeps the CPU renders quick (nerfstudio's Control tab, "Max res")
    tab.get_by_role("tab", name="Control").click(timeout=120_000)
    slider_id = tab.locator("label", has_text="Max res").get_attribute("for")
    box = tab.locator(f"xpath=//*[@id='{slider_id}']/../..//input").last
    box.fill("160")
    box.press("Enter")
    tab.get_by_role("tab", name="Audio").click()
    tab.wait_for_selector("#gstalker-audio", state="attached", timeout=60_000)
    tab.wait_for_function("() => /Resolution: [1-9]/.test(document.body.innerText)", timeout=120_000)
    # Only now: nerfstudio's "Hide Train Cams" fails before the viewer has drawn the cameras, and
    # that failure leaves viser's send lock taken, which freezes every tab (nerfstudio 1.1.5,
    # viser 0.2.7).
    hide = tab.get_by_role("button", name="Hide Train Cams")
    if hide.is_visible():  # one button for all tabs: the first tab already hid them
        hide.click()
    # look through the first training camera, at the time of its frame
    tab.get_by_role("button", name="Snap to clicked camera").click()
    tab.wait_for_function("() => document.getElementById('gstalker-status')?.textContent.startsWith('time of training camera 0')")
    return tab


@pytest.fixture(scope="module")
def page(browser, viewer):
    tab = _open_panel(browser, viewer["port"])
    yield tab
    tab.close()


# ---------------------------------------------------------------------------------- helpers
def _view(page, name: str = "") -> np.ndarray:
    """The 3D view left of the panel (the render fills it), as RGB."""
    from PIL import Image

    png = page.screenshot(clip={"x": 0, "y": 60, "width": 760, "height": 620})
    if name:
        (SHOTS / f"{name}.png").write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _clear_notifications(page) -> None:
    """Close viser's upload notifications: they float over the view."""
    close = page.locator(".mantine-Notification-closeButton")
    for _ in range(20):
        if close.count() == 0:
            return
        try:
            close.first.click(timeout=2_000)
        except Exception:  # it closed itself meanwhile
            pass
        time.sleep(0.2)
    page.wait_for_function("() => !document.querySelector('.mantine-Notification-root')", timeout=20_000)


def _view_of_frame(page, renders: Path, source: str, frame: int, since: float, name: str, timeout: float = 240) -> np.ndarray:
    """The view once the viewer has sent the full-res image of `frame` of `source` (asked for
    after wall time `since`) and the tab has painted it."""
    _clear_notifications(page)
    deadline = time.monotonic() + timeout
    wanted = {"state": "high", "source": source, "frame": frame}
    while True:
        last = viewer_probe.last_image(renders, since)
        if last is not None and all(last[k] == v for k, v in wanted.items()):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the viewer sent no full-res image of {source} frame {frame} in {timeout:.0f} s; last sent: {last}")
        time.sleep(0.2)
    sent = last["t"]
    # It is queued for the tab (nothing is sent after it while nothing changes): wait until the
    # tab has shown the same picture for 1.5 s.
    previous, unchanged = _view(page), 0
    for _ in range(120):
        time.sleep(0.5)
        current = _view(page)
        unchanged = unchanged + 1 if np.array_equal(current, previous) else 0
        if unchanged == 3:
            break
        previous = current
    later = [r for r in viewer_probe.read_log(renders) if r["t"] > sent]
    assert all(all(r[k] == v for k, v in wanted.items()) for r in later), f"another image was sent meanwhile: {later}"
    return _view(page, name)


def _status(page) -> str:
    return page.locator("#gstalker-status").text_content() or ""


def _upload(page, path: Path) -> None:
    button_id = page.get_by_role("button", name="Upload audio").get_attribute("id")
    page.set_input_files(f"#file_upload_{button_id}", str(path))


def _set_time_with_mouse(page, frame: int, frames: int) -> int:
    """Click the time slider's track where `frame` sits; returns the frame the panel shows."""
    track = page.locator(".mantine-Slider-track").locator("visible=true").first
    box = track.bounding_box()
    x = box["x"] + box["width"] * frame / (frames - 1)
    page.mouse.click(x, box["y"] + box["height"] / 2)
    page.wait_for_function(
        "(k) => document.getElementById('gstalker-clock')?.textContent.startsWith('frame ' + k + ' ')", arg=frame,
        timeout=20_000,
    )
    return frame


def _audio(page) -> dict:
    return page.evaluate(
        "() => { const a = document.getElementById('gstalker-audio');"
        " return {paused: a.paused, time: a.currentTime, source: a.dataset.source,"
        " state: document.getElementById('gstalker-sound-state').textContent}; }"
    )


# ---------------------------------------------------------------------------------- tests
def _step(page) -> int:
    found = page.evaluate("() => (document.body.innerText.match(/Step: (\\d+)/) || [0, -1])[1]")
    return int(found)


def test_the_checkpoint_opens_and_closes_the_mouth(mouth):
    """Before any browser work: in Python, on the checkpoint as loaded from disk, the silent frame
    and the loud frame render differently and the silent frame renders the same twice (the
    builder checks it and raises otherwise; here the numbers are reported)."""
    print(f"mouth fixture: frames {mouth.closed_frame} (silent) and {mouth.open_frame} (loud) differ in "
          f"{mouth.changed_pixels} of {mouth.image_pixels} pixels")  # fmt: skip
    assert mouth.changed_pixels >= 0.004 * mouth.image_pixels


def test_bad_uploads_show_an_error_and_change_nothing(page, viewer, tmp_path):
    assert _listening_addresses(viewer["port"]) == {"0100007F"}  # 127.0.0.1 only, as asked
    assert "listens on 127.0.0.1 only" in " ".join(viewer["log"].read_text().split())
    source_before = _audio(page)["source"]
    clock_before = page.locator("#gstalker-clock").text_content()
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(2000))
    big = tmp_path / "big.wav"
    big.write_bytes((viewer["subject"] / "audio.wav").read_bytes()[:44] + bytes(int(UPLOAD_LIMIT_MB * 1.5e6)))
    for path, fragment in ((text, "wav, mp3, flac, ogg or m4a"), (broken, "not a readable audio file"), (big, "upload limit")):
        _upload(page, path)
        page.wait_for_function(
            "(f) => document.getElementById('gstalker-status')?.textContent.includes(f)", arg=fragment, timeout=30_000
        )
        assert _status(page).startswith("error: ") and page.locator("#gstalker-status").get_attribute("data-error") == "1"
        assert _audio(page)["source"] == source_before
        assert page.locator("#gstalker-clock").text_content() == clock_before
    _view(page, "error_after_bad_upload")
    page.screenshot(path=str(SHOTS / "panel_error.png"))


def test_ground_truth_frame_shows_next_to_the_render(page):
    """The toggle shows the training frame of the current time (camera 0's frame, after the snap)."""
    frame = int(page.locator("#gstalker-clock").text_content().split()[1])
    page.get_by_label("Show ground truth").check()
    image = page.locator("img[alt='ground truth']")
    image.wait_for(timeout=20_000)
    assert image.evaluate("(img) => img.complete && img.naturalWidth > 0")
    assert f"ground truth: frame {frame} (train split)" in page.locator("body").inner_text()
    _clear_notifications(page)
    image.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "panel_ground_truth.png"))
    page.get_by_label("Show ground truth").uncheck()
    image.wait_for(state="detached", timeout=20_000)


def test_upload_scrub_and_play_with_sound(page, viewer, mouth):
    # The clip: one second of silence, then the subject's speech (the fixture's; its mouth Gaussians
    # move down on the loud frame, and its silent frame is the one below).
    frames, closed, opened = mouth.num_frames, mouth.closed_frame, mouth.open_frame
    clip = viewer["work"] / "my voice.wav"
    shutil.copyfile(mouth.clip, clip)
    _upload(page, clip)
    page.wait_for_function(
        "() => document.getElementById('gstalker-status')?.textContent.includes('frames at 25 fps')", timeout=60_000
    )
    assert _status(page).startswith(f"my_voice.wav: {frames / 25:.1f} s, {frames} frames")
    assert page.evaluate("() => [...document.querySelectorAll('input')].some(i => i.value === 'my_voice.wav')")
    page.wait_for_function("() => document.getElementById('gstalker-sound-state')?.textContent.startsWith('sound: ready')")
    _clear_notifications(page)
    page.screenshot(path=str(SHOTS / "panel_uploaded.png"))

    # (a) the render follows the slider: closed mouth, open mouth, closed again; each view is the
    # full-res image of that frame (viewer_probe), not a preview or the previous frame's image
    views = []
    for frame, name in ((closed, "render_closed_mouth"), (opened, "render_open_mouth"), (closed, "render_closed_mouth_again")):
        since = time.time()
        _set_time_with_mouse(page, frame, frames)
        views.append(_view_of_frame(page, viewer["renders"], "my_voice.wav", frame, since, name))
    first, open_view, again = views
    changed = np.abs(open_view - first).max(axis=-1) > 8
    noise = np.abs(again - first).max(axis=-1) > 8
    print(f"pixels changed by > 8/255: closed->open {changed.sum()}, closed->closed {noise.sum()}")
    assert changed.sum() >= 50, f"the render hardly changed between frames {closed} and {opened}: {changed.sum()} px"
    assert changed.mean() < 0.25, "most of the view changed: the camera moved, not the face"
    assert noise.sum() == 0, f"the same time rendered differently: {noise.sum()} px"

    # (b) Play from the start: the sound plays in the page, its time advancing with the server's clock
    _set_time_with_mouse(page, 0, frames)
    page.get_by_role("button", name="Play", exact=True).click()
    page.wait_for_function(
        "() => { const a = document.getElementById('gstalker-audio'); return a && !a.paused && a.currentTime > 0; }",
        timeout=15_000,
    )
    first_look = _audio(page)
    time.sleep(0.5)
    page.screenshot(path=str(SHOTS / "panel_playing.png"))
    later = _audio(page)
    assert not later["paused"] and later["state"] == "sound: playing"
    assert later["time"] > first_look["time"] + 0.2, (first_look, later)
    server_time = float(page.locator("#gstalker-clock").get_attribute("data-t"))
    assert abs(later["time"] - server_time) < 0.6, (later, server_time)  # same clock, give or take an update
    page.wait_for_function("() => document.getElementById('gstalker-audio').paused", timeout=20_000)
    assert page.locator("#gstalker-clock").text_content().startswith(f"frame {frames - 1} of {frames - 1}")


def test_upload_folder_is_removed_when_the_viewer_exits(viewer, page):
    folders = list(viewer["work"].glob("gstalker-viewer-*"))
    assert len(folders) == 1 and not any(folders[0].iterdir())  # uploads are deleted once decoded
    process = viewer["process"]
    process.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops ns-viewer
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:  # say where it hangs: viewer_probe dumps every thread's stack on SIGUSR1
        process.send_signal(signal.SIGUSR1)
        time.sleep(3)
        raise AssertionError("ns-viewer did not exit 60 s after Ctrl-C:\n" + viewer["log"].read_text()[-12000:])
    assert not folders[0].exists()


def test_upload_and_playback_while_training_in_two_tabs(browser, training, tmp_path):
    """During `ns-train`: an upload, then Play drives the avatar with sound in two tabs while the
    training steps go on. Last: the training runs only during this test."""
    from gstalker_ns.audio.io import load_audio, write_wav

    assert _listening_addresses(training["port"]) == {"0100007F"}  # --viewer.websocket-host 127.0.0.1
    first = _open_panel(browser, training["port"])
    second = _open_panel(browser, training["port"])
    speech = load_audio(training["subject"] / "audio.wav", 16000)
    clip = tmp_path / "longer.wav"
    # 24 s: still playing after both tabs' waits below on a loaded CI machine (an 8 s clip had
    # ended, and its Pause button turned back into Play, before the test could press it)
    write_wav(clip, np.concatenate([speech] * 12), 16000)
    _upload(first, clip)
    first.wait_for_function(
        "() => document.getElementById('gstalker-status')?.textContent.startsWith('longer.wav: 24.0 s')", timeout=120_000
    )
    second.mouse.click(300, 300)  # a click in the scene: this tab may now play sound too
    step_before = _step(first)
    played = time.time()
    first.get_by_role("button", name="Play", exact=True).click()
    frames = []
    for _ in range(5):
        time.sleep(0.3)
        frames.append(int(first.locator("#gstalker-clock").text_content().split()[1]))
    for tab in (first, second):
        tab.wait_for_function(
            "() => { const a = document.getElementById('gstalker-audio'); return a && !a.paused && a.currentTime > 0.2; }",
            timeout=30_000,
        )
    first.screenshot(path=str(SHOTS / "training_playing_tab1.png"))
    second.screenshot(path=str(SHOTS / "training_playing_tab2.png"))
    assert frames == sorted(frames) and frames[-1] > frames[0], frames
    # images of the clip's advancing frames reach the tabs (which frames, not what they show:
    # what the model shows depends on what it has learned so far)
    deadline = time.monotonic() + 60
    while True:
        sent = [r for r in viewer_probe.read_log(training["renders"]) if r["t"] >= played and r["source"] == "longer.wav"]
        if len({r["frame"] for r in sent}) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len({r["frame"] for r in sent}) >= 2, f"no images of new frames were sent during playback: {sent}"
    first.get_by_role("button", name="Pause", exact=True).click()
    for tab in (first, second):
        tab.wait_for_function("() => document.getElementById('gstalker-audio').paused", timeout=30_000)
    deadline = time.monotonic() + 120
    while _step(first) <= step_before and time.monotonic() < deadline:
        time.sleep(1.0)
    assert _step(first) > step_before, "training did not go on while the panel played"
    first.close()
    second.close()
