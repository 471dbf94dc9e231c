"""The viewer's audio panel in a real browser: `ns-viewer` on a tiny CPU checkpoint, driven
through Debian's chromium with playwright.

What it shows: an upload lands in the dropdown; bad uploads show an error and change nothing;
moving the slider between a closed-mouth and an open-mouth time changes the rendered image
(and coming back gives the same image again); Play makes the page's <audio> element play with
its time advancing along the server's clock; the viewer listens on 127.0.0.1 only when asked;
the upload folder is gone after the viewer exits. Screenshots go to /tmp/viewer_shots/.

Set-up: playwright is pip-installed into this interpreter's environment when missing, and
chromium with apt-get (as root); `playwright install` is never used (it downloads a browser
build from a CDN). When either cannot be installed the test is skipped with the reason.
"""

from __future__ import annotations

import importlib
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

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHOTS = Path("/tmp/viewer_shots")
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
UPLOAD_LIMIT_MB = 1.0

# A tiny subject trained long enough for its render to change with the audio: the shared
# `tiny_run` (40 steps) renders open and closed mouths within 1e-5 of each other, which no screen
# can show. Here stage 2 gets most of the steps, a higher deformation rate, no offset penalty and
# ten times the weight on the mouth (500 steps at 48 px: about 3 minutes on 2 busy cores).
MOUTH_RUN_SYNTH = {"size": 48}
MOUTH_RUN_ARGS = [
    "--max-num-iterations=500",
    "--steps-per-save=500",
    "--pipeline.model.coarse-steps=50",
    "--optimizers.deformation.optimizer.lr=6e-3",
    "--optimizers.deformation.scheduler.warmup-steps=0",
    "--optimizers.deformation.scheduler.max-steps=500",
    "--optimizers.deformation.scheduler.lr-final=2e-3",
    "--pipeline.model.mouth-loss-weight=10",
    "--pipeline.model.offset-reg-weight=0",
    "--pipeline.model.smooth-audio=False",
    "--pipeline.model.torso-field=False",
]


def _tail(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text[-limit:]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Playwright and Debian's chromium, installed when missing; skip (saying why) when impossible."""
    try:
        importlib.import_module("playwright.sync_api")
    except ImportError:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "playwright"], capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0:
            pytest.skip(f"playwright is not installed and `pip install playwright` failed: {_tail(done.stderr)}")
        importlib.invalidate_caches()
        importlib.import_module("playwright.sync_api")
    found = next((p for p in CHROMIUM_PATHS if Path(p).exists()), None)
    if found is None:
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip("chromium is not installed, and installing it needs apt-get as root (apt-get install chromium)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        done = subprocess.run(install, capture_output=True, text=True, timeout=1200, env=env)
        if done.returncode != 0:  # a stale package list: refresh it once
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=600, env=env)
            done = subprocess.run(install, capture_output=True, text=True, timeout=1200, env=env)
        found = next((p for p in CHROMIUM_PATHS if Path(p).exists()), None)
        if found is None:
            pytest.skip(f"chromium could not be installed with apt-get: {_tail(done.stdout + done.stderr)}")
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
def training(tmp_path_factory):
    """`ns-train gstalker` with its viewer on 127.0.0.1, training the tiny subject in the background.

    The viewer stays up after the last step (as with --viewer.quit-on-train-completion False),
    so the finished checkpoint can be watched too. Yields a dict; the run is stopped with Ctrl-C.
    """
    from gstalker_ns.demo import find_config
    from gstalker_ns.synth.subject import generate_subject

    root = tmp_path_factory.mktemp("viewer_run")
    work = root / "tmp"
    work.mkdir()
    preset = yaml.safe_load((REPO / "configs" / "ci-tiny.yaml").read_text())
    subject = generate_subject(root / "subject", **{**preset["synth"], **MOUTH_RUN_SYNTH}, progress=False)
    overridden = {arg.split("=")[0] for arg in MOUTH_RUN_ARGS}
    args = [a for a in preset["train_args"] if a.split("=")[0] not in overridden] + MOUTH_RUN_ARGS
    port = _free_port()
    command = [str(BIN / "ns-train"), "gstalker", f"--data={subject}", f"--output-dir={root / 'outputs'}",
               "--experiment-name=viewer", "--timestamp=run", "--vis=viewer", "--viewer.quit-on-train-completion=False",
               "--viewer.websocket-host=127.0.0.1", f"--viewer.websocket-port={port}", *args]  # fmt: skip
    log_path = work / "train.log"
    log = open(log_path, "w")
    env = dict(os.environ, TMPDIR=str(work), GSTALKER_VIEWER_MAX_UPLOAD_MB=str(UPLOAD_LIMIT_MB))
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    _wait_for_port(port, process, log_path)
    config = find_config(root / "outputs", "viewer")
    steps = int(next(a for a in MOUTH_RUN_ARGS if a.startswith("--max-num-iterations=")).split("=")[1])
    final = config.parent / "nerfstudio_models" / f"step-{steps - 1:09d}.ckpt"
    info = {"port": port, "work": work, "subject": subject, "process": process, "log": log_path, "config": config,
            "final_checkpoint": final}  # fmt: skip
    yield info
    _stop(process)
    log.close()


@pytest.fixture(scope="module")
def mouth_run(training):
    """(config.yml, subject folder) of the finished tiny checkpoint whose mouth moves with the audio."""
    deadline = time.monotonic() + 1800
    while not training["final_checkpoint"].exists():
        if training["process"].poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"training did not finish:\n{training['log'].read_text()[-3000:]}")
        time.sleep(1.0)
    time.sleep(2.0)  # the checkpoint is written in one go, but give the file system a moment
    return training["config"], training["subject"]


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
def viewer(mouth_run, tmp_path_factory):
    """`ns-viewer` on the finished checkpoint, bound to 127.0.0.1, uploads limited to 1 MB."""
    config, subject = mouth_run
    work = tmp_path_factory.mktemp("viewer_tmp")
    port = _free_port()
    env = dict(os.environ, TMPDIR=str(work), GSTALKER_VIEWER_MAX_UPLOAD_MB=str(UPLOAD_LIMIT_MB))
    log_path = work / "viewer.log"
    log = open(log_path, "w")
    command = [str(BIN / "ns-viewer"), "--load-config", str(config), "--viewer.websocket-host", "127.0.0.1",
               "--viewer.websocket-port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    _wait_for_port(port, process, log_path)
    yield {"port": port, "work": work, "subject": subject, "process": process, "log": log_path}
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


def _settled_view(page, name: str, timeout: float = 40.0) -> np.ndarray:
    """The view once the viewer has finished refining it (two identical looks 0.8 s apart)."""
    _clear_notifications(page)
    start = time.monotonic()
    previous = _view(page)
    while time.monotonic() - start < timeout:
        time.sleep(0.8)
        current = _view(page)
        if np.array_equal(current, previous) and time.monotonic() - start > 2.0:
            break
        previous = current
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


def test_upload_and_playback_while_training_in_two_tabs(browser, training, tmp_path):
    """During `ns-train`: an upload, then Play drives the avatar with sound in two tabs while the
    training steps go on."""
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
    view_before = _view(first)
    first.get_by_role("button", name="Play", exact=True).click()
    frames, views = [], []
    for _ in range(5):
        time.sleep(0.3)
        frames.append(int(first.locator("#gstalker-clock").text_content().split()[1]))
        views.append(_view(first))
    for tab in (first, second):
        tab.wait_for_function(
            "() => { const a = document.getElementById('gstalker-audio'); return a && !a.paused && a.currentTime > 0.2; }",
            timeout=30_000,
        )
    first.screenshot(path=str(SHOTS / "training_playing_tab1.png"))
    second.screenshot(path=str(SHOTS / "training_playing_tab2.png"))
    assert frames == sorted(frames) and frames[-1] > frames[0], frames
    assert any(np.abs(v - view_before).max() > 0 for v in views), "no new render arrived during playback"
    first.get_by_role("button", name="Pause", exact=True).click()
    for tab in (first, second):
        tab.wait_for_function("() => document.getElementById('gstalker-audio').paused", timeout=30_000)
    deadline = time.monotonic() + 120
    while _step(first) <= step_before and time.monotonic() < deadline:
        time.sleep(1.0)
    assert _step(first) > step_before, "training did not go on while the panel played"
    first.close()
    second.close()


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


def test_upload_scrub_and_play_with_sound(page, viewer):
    from gstalker_ns.audio.io import load_audio, write_wav
    from gstalker_ns.synth.speech import mouth_opening_from_audio

    # The clip: one second of silence, then the subject's speech. The synthetic generator's own
    # rule says where a mouth is open (it opens the subject's mouth with the same function), and
    # silence closes it. The tiny model is weak at the subtle open/closed changes inside speech,
    # but reliably tells silence from a loud vowel.
    rate = 16000
    wave = np.concatenate([np.zeros(rate, np.float32), load_audio(viewer["subject"] / "audio.wav", rate)])
    frames = int(round(wave.size / rate * 25))
    mouth = mouth_opening_from_audio(wave, rate, frames, 25.0)
    clip = viewer["work"] / "my voice.wav"
    write_wav(clip, wave, rate)
    _upload(page, clip)
    page.wait_for_function(
        "() => document.getElementById('gstalker-status')?.textContent.includes('frames at 25 fps')", timeout=60_000
    )
    assert _status(page).startswith(f"my_voice.wav: {wave.size / rate:.1f} s, {frames} frames")
    assert page.evaluate("() => [...document.querySelectorAll('input')].some(i => i.value === 'my_voice.wav')")
    page.wait_for_function("() => document.getElementById('gstalker-sound-state')?.textContent.startsWith('sound: ready')")
    _clear_notifications(page)
    page.screenshot(path=str(SHOTS / "panel_uploaded.png"))

    # (a) the render follows the slider: closed mouth, open mouth, closed again
    inner = np.arange(2, frames - 2)
    closed = 12  # the middle of the silence
    opened = int(inner[np.argmax([mouth[k - 1 : k + 2].min() for k in inner])])
    assert mouth[closed - 2 : closed + 3].max() < 0.05 and mouth[opened] > 0.6, (mouth[closed], mouth[opened])
    _set_time_with_mouse(page, closed, frames)
    first = _settled_view(page, "render_closed_mouth")
    _set_time_with_mouse(page, opened, frames)
    open_view = _settled_view(page, "render_open_mouth")
    _set_time_with_mouse(page, closed, frames)
    again = _settled_view(page, "render_closed_mouth_again")
    changed = np.abs(open_view - first).max(axis=-1) > 8
    noise = np.abs(again - first).max(axis=-1) > 8
    print(f"pixels changed by > 8/255: closed->open {changed.sum()}, closed->closed {noise.sum()}")
    assert changed.sum() >= 50, f"the render hardly changed between frames {closed} and {opened}: {changed.sum()} px"
    assert changed.mean() < 0.25, "most of the view changed: the camera moved, not the face"
    assert noise.sum() * 10 <= changed.sum(), f"the same time rendered differently: {noise.sum()} px"

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
    process.wait(60)
    assert not folders[0].exists()
