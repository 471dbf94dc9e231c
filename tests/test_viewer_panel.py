"""The viewer's audio panel without a browser: upload checks, the clock, sources, the MDX it
sends, and the panel itself against a real viser server with a stand-in model and viewer
(render swaps, dropdown state, interrupted renders). tests/test_viewer_browser.py drives the
real thing in chromium."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import wave as _wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gstalker_ns.viewer import mdx
from gstalker_ns.viewer.clock import PlaybackClock, frame_at
from gstalker_ns.viewer.sources import (
    TRAINING_LABEL,
    WAV_SECONDS_LIMIT,
    closed_eye_level,
    encode_sound,
    frame_lookup,
    training_source,
    unique_label,
    wav_bytes,
)
from gstalker_ns.viewer.uploads import (
    MAX_UPLOAD_ENV,
    UploadError,
    UploadStore,
    check_upload,
    max_upload_bytes,
    sanitize_filename,
    sniff_audio_suffix,
)


def tone(seconds: float, rate: int = 16000, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


# ---------------------------------------------------------------------------------- uploads
@pytest.mark.parametrize(
    "name, expected",
    [
        ("voice.wav", "voice.wav"),
        ("../../etc/passwd.wav", "passwd.wav"),
        ("C:\\Users\\me\\Desktop\\talk.MP3", "talk.mp3"),
        ("héllo wörld (final).flac", "hello_world_final.flac"),
        ("{alert(1)}<b>.ogg", "alert_1_b.ogg"),
        (".bashrc", "bashrc"),
        ("", "upload"),
        ("...", "upload"),
        ("a" * 300 + ".m4a", "a" * 76 + ".m4a"),
    ],
)
def test_sanitize_filename(name, expected):
    assert sanitize_filename(name) == expected
    assert len(expected) <= 80


def test_sniff_knows_each_container_and_nothing_else():
    assert sniff_audio_suffix(wav_bytes(tone(0.1), 16000)[:64]) == ".wav"
    assert sniff_audio_suffix(b"fLaC\x00\x00\x00\x22") == ".flac"
    assert sniff_audio_suffix(b"OggS\x00\x02" + bytes(20)) == ".ogg"
    assert sniff_audio_suffix(b"ID3\x04\x00\x00\x00\x00\x00\x00") == ".mp3"
    assert sniff_audio_suffix(b"\xff\xfb\x90\x64") == ".mp3"
    assert sniff_audio_suffix(b"\x00\x00\x00\x20ftypM4A \x00\x00") == ".m4a"
    for junk in (b"", b"hello, this is text\n", b"%PDF-1.7", b"RIFF\x00\x00\x00\x00AVI ", b"\x89PNG\r\n\x1a\n"):
        assert sniff_audio_suffix(junk) is None


def test_check_upload_messages_are_one_line_and_say_what_to_do():
    good = wav_bytes(tone(0.5), 16000)
    assert check_upload("clip.wav", good, 10**6) == ".wav"
    # the content decides how it is decoded, the name only has to be an audio name
    assert check_upload("clip.mp3", good, 10**6) == ".wav"
    cases = {
        ("notes.txt", b"some text"): "not audio",
        ("noext", b"some text"): "without a type suffix",
        ("renamed.wav", b"this is not a wave file at all"): "does not look like audio",
        ("empty.wav", b""): "is empty",
        ("big.wav", good): "over the viewer's",
    }
    for (name, content), fragment in cases.items():
        with pytest.raises(UploadError) as info:
            check_upload(name, content, 1000 if name == "big.wav" else 10**6)
        message = str(info.value)
        assert fragment in message and "\n" not in message and ";" in message, message
    with pytest.raises(UploadError, match=MAX_UPLOAD_ENV):
        check_upload("big.wav", good, 1000)


def test_upload_limit_is_configurable(monkeypatch):
    monkeypatch.delenv(MAX_UPLOAD_ENV, raising=False)
    assert max_upload_bytes() == 50_000_000
    monkeypatch.setenv(MAX_UPLOAD_ENV, "2.5")
    assert max_upload_bytes() == 2_500_000
    monkeypatch.setenv(MAX_UPLOAD_ENV, "lots")
    with pytest.raises(Exception, match="not a number"):
        max_upload_bytes()


def test_upload_store_names_files_safely_and_never_overwrites(tmp_path):
    store = UploadStore(parent=tmp_path)
    first = store.save("../../x/voice.wav", b"1", ".wav")
    second = store.save("voice.wav", b"2", ".wav")
    assert first.parent == second.parent == store.root and first != second
    assert first.name == "001-voice.wav" and first.read_bytes() == b"1"
    odd = store.save("{evil}<script>.mp3", b"3", ".mp3")
    assert odd.name == "003-evil_script.mp3"
    store.close()
    assert store.closed and not store.root.exists()


def test_folders_of_killed_viewers_are_removed_at_the_next_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"gstalker-viewer-{int(dead.stdout)}-abc"
    (stale / "sub").mkdir(parents=True)
    alive = tmp_path / f"gstalker-viewer-{os.getpid()}-def"
    alive.mkdir()
    other = tmp_path / "gstalker-viewer-notapid-x"
    other.mkdir()
    store = UploadStore(parent=tmp_path)
    assert not stale.exists() and alive.exists() and other.exists()
    assert store.root.name.startswith(f"gstalker-viewer-{os.getpid()}-")
    store.close()


@pytest.mark.parametrize("ending", ["normal", "keyboard-interrupt"])
def test_upload_folder_is_removed_when_the_process_exits(tmp_path, ending):
    code = (
        "from gstalker_ns.viewer.uploads import UploadStore\n"
        "s = UploadStore()\n"
        "s.save('a.wav', b'RIFF', '.wav')\n"
        "print(s.root, flush=True)\n"
        + ("raise KeyboardInterrupt\n" if ending == "keyboard-interrupt" else "")
    )
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    root = Path(done.stdout.strip().splitlines()[0])
    assert root.parent == tmp_path
    assert not root.exists()


# ---------------------------------------------------------------------------------- clock
class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_clock_plays_pauses_seeks_and_stops_at_the_end():
    now = FakeTime()
    clock = PlaybackClock(2.0, now=now)
    assert clock.time() == 0.0 and not clock.playing
    clock.play()
    now.now += 0.5
    assert clock.time() == pytest.approx(0.5) and clock.playing
    clock.seek(1.2)  # seeking while playing keeps playing from there
    now.now += 0.3
    assert clock.time() == pytest.approx(1.5)
    clock.pause()
    now.now += 5.0
    assert clock.time() == pytest.approx(1.5) and not clock.playing
    clock.play()
    now.now += 10.0
    assert clock.time() == pytest.approx(2.0) and not clock.playing  # stopped at the end
    clock.play()  # play at the end starts over
    now.now += 0.25
    assert clock.time() == pytest.approx(0.25)
    clock.seek(-3)
    assert clock.snapshot() == (0.0, True)
    clock.seek(99)
    assert clock.snapshot() == (2.0, False)


def test_time_to_frame_is_the_nearest_frame_centre_clamped():
    fps, n = 25.0, 50
    assert [frame_at(k / fps, fps, n) for k in range(n)] == list(range(n))
    assert frame_at(0.0199, fps, n) == 0 and frame_at(0.0201, fps, n) == 1
    assert frame_at(-1.0, fps, n) == 0 and frame_at(100.0, fps, n) == n - 1
    assert frame_at(1.0, 30.0, 100) == 30
    assert frame_at(1.0, 25.0, 0) == 0


# ---------------------------------------------------------------------------------- sources
def test_labels_stay_unique():
    assert unique_label("a.wav", ["training track"]) == "a.wav"
    assert unique_label("a.wav", ["a.wav", "a.wav (2)"]) == "a.wav (3)"


def test_blink_modes():
    source = training_source(10, 25.0, None, 16000)
    dataset = np.zeros(10, np.float32)
    dataset[3] = 0.8
    assert source.blink("auto", dataset) is None  # the model's own track
    assert np.array_equal(source.blink("open", dataset), np.zeros(10, np.float32))
    closed = source.blink("closed", dataset)
    assert closed.shape == (10,) and np.allclose(closed, closed_eye_level(dataset)) and 0.5 <= closed[0] <= 1.0
    assert closed_eye_level(np.zeros(5)) == 1.0 and closed_eye_level(None) == 1.0
    with pytest.raises(ValueError):
        source.blink("wink", dataset)


def test_sound_is_wav_when_short_and_vorbis_when_long():
    short = tone(1.0)
    mime, data = encode_sound(short, 16000)
    assert mime == "audio/wav"
    with _wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == 16000 and w.getnframes() == short.size
    sf = pytest.importorskip("soundfile")
    long = tone(WAV_SECONDS_LIMIT + 5.0)
    mime, data = encode_sound(long, 16000)  # > 2 min in one write crashed libsndfile's encoder
    assert mime == "audio/ogg" and len(data) < long.size * 2 / 4
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 16000 and abs(decoded.size - long.size) < 16000 * 0.05


def test_frame_lookup_maps_frames_to_splits():
    lookup = frame_lookup({"train": [0, 1, 3], "eval": [2, 3]})
    assert lookup == {0: ("train", 0), 1: ("train", 1), 3: ("train", 2), 2: ("eval", 0)}


# ---------------------------------------------------------------------------------- MDX
def test_outside_text_cannot_become_mdx_or_javascript():
    nasty = 'a}{alert(1)}<script>x</script>"\\ \u2028'
    literal = mdx.js_string(nasty)
    assert not any(c in literal for c in "{}<>")
    assert json.loads(literal) == nasty  # still the same text once the browser reads the literal
    line = mdx.status_line(nasty, error=True)
    assert "<script>" not in line and "alert(1)}" not in line
    assert mdx.text("x") == '{"x"}'


def test_sound_element_and_clock_line():
    element = mdx.sound_element("s7", "audio/wav", b"RIFFdata", "sound: ready")
    assert f'id="{mdx.AUDIO_ID}"' in element and '"data:audio/wav;base64,UklGRmRhdGE="' in element
    assert "\n\n" not in element.split("\n\n")[0]  # the sync loop is one block of MDX
    assert mdx.AUDIO_ID not in mdx.sound_element("s7", None, None, "no sound: none")
    line = mdx.clock_line("frame 3", 12, True, 0.12, -0.05, "s7", sent=1700000000.25)
    for fragment in ('data-sent="1700000000.250"', 'data-seq="12"', 'data-playing="1"', 'data-t="0.1200"', 'data-offset="-0.0500"', 'data-source={"s7"}'):
        assert fragment in line


# ---------------------------------------------------------------------------------- the panel
FEATURE_SPEC = dict(kind="logmel", n_mels=8, window=4, lookahead=1)


class StandInModel(torch.nn.Module):
    """What the panel needs of GSTalkerModel: drive tables, the frame, the extractor, and a
    render that reads them (several Python lines, so interrupts can land anywhere)."""

    def __init__(self, frames: int = 50):
        super().__init__()
        from gstalker_ns.audio.features import AudioFeatureSpec

        self.register_buffer("audio_table", torch.arange(frames, dtype=torch.float32)[:, None, None].repeat(1, 4, 8))
        self.register_buffer("blink_table", torch.zeros(frames))
        self.viewer_frame_idx = 0
        self.audio_extractor = AudioFeatureSpec(**FEATURE_SPEC).to_json()
        self.renders = []

    def expression_for_opening(self, level):
        return torch.tensor([[level, 0.0]])

    def get_outputs_for_camera(self, camera, obb_box=None):
        if camera.metadata is not None and "frame_idx" in camera.metadata:
            frame = int(camera.metadata["frame_idx"][0, 0])
        else:
            frame = self.viewer_frame_idx
        frame = min(frame, len(self.audio_table) - 1)
        row = self.audio_table[frame]
        blink = self.blink_table[frame]
        override = getattr(self, "expression_override", None)
        result = {"rows": len(self.audio_table), "value": float(row.mean()), "blink": float(blink), "frame": frame}
        result["mouth"] = None if override is None else float(override[0, 0])
        self.renders.append(result)
        return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def panel(tmp_path, monkeypatch):
    import viser
    from PIL import Image

    from gstalker_ns.viewer.panel import AudioPanel

    monkeypatch.setenv(MAX_UPLOAD_ENV, "0.2")  # 200 kB
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    frames = 50
    images = []
    for k in range(frames):
        path = tmp_path / f"{k:03d}.png"
        Image.fromarray(np.full((16, 16, 3), k * 5, np.uint8)).save(path)
        images.append(path)
    train = [k for k in range(frames) if k % 10 != 5]
    cameras = SimpleNamespace(metadata={"frame_idx": torch.tensor(train)[:, None]})
    dataset = SimpleNamespace(cameras=cameras, image_filenames=[images[k] for k in train])
    audio_path = tmp_path / "train.wav"
    audio_path.write_bytes(wav_bytes(tone(2.0), 16000))
    datamanager = SimpleNamespace(
        train_dataparser_outputs=SimpleNamespace(metadata={"fps": 25.0, "audio_path": str(audio_path)}),
        train_dataset=dataset,
        eval_dataset=None,
    )
    server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
    rerenders = []
    viewer = SimpleNamespace(
        viser_server=server,
        pipeline=SimpleNamespace(datamanager=datamanager),
        config=SimpleNamespace(websocket_host="127.0.0.1"),
        _trigger_rerender=lambda: rerenders.append(time.monotonic()),
        current_camera_idx=0,
    )
    model = StandInModel(frames)
    audio_panel = AudioPanel(model)
    audio_panel._setup(viewer)
    assert audio_panel._ready, "the panel did not start"
    yield SimpleNamespace(panel=audio_panel, model=model, viewer=viewer, rerenders=rerenders, train=train)
    server.stop()


def viewer_camera():
    return SimpleNamespace(metadata=None)


def upload(panel, name: str, content: bytes) -> None:
    from viser._gui_handles import UploadedFile

    panel._upload._impl.value = UploadedFile(name, content)
    panel._on_upload()


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_panel_renders_the_slider_frame_and_leaves_other_cameras_alone(panel):
    p, model = panel.panel, panel.model
    p._seek(0.96)
    assert p.state()["frame"] == 24 and panel.rerenders
    out = model.get_outputs_for_camera(viewer_camera())
    assert out["frame"] == 24 and out["value"] == 24.0
    assert model.viewer_frame_idx == 0  # restored after the render
    training_camera = SimpleNamespace(metadata={"frame_idx": torch.tensor([[7]])})
    assert model.get_outputs_for_camera(training_camera)["frame"] == 7


def test_mouth_by_hand_drives_viewer_renders_only_and_is_restored(panel):
    p, model = panel.panel, panel.model
    assert model.get_outputs_for_camera(viewer_camera())["mouth"] is None  # the audio drives it
    p._mouth_slider.value = 0.75
    p._on_mouth()
    assert p.state()["mouth"] is None  # the slider alone does nothing until the box is ticked
    p._mouth_toggle.value = True
    p._on_mouth()
    assert p.state()["mouth"] == 0.75
    assert model.get_outputs_for_camera(viewer_camera())["mouth"] == 0.75
    assert getattr(model, "expression_override", None) is None  # set for that render only
    training_camera = SimpleNamespace(metadata={"frame_idx": torch.tensor([[7]])})
    assert model.get_outputs_for_camera(training_camera)["mouth"] is None  # training/eval renders untouched
    p._mouth_slider.value = 0.0
    p._on_mouth()
    assert model.get_outputs_for_camera(viewer_camera())["mouth"] == 0.0
    p._mouth_toggle.value = False
    p._on_mouth()
    assert model.get_outputs_for_camera(viewer_camera())["mouth"] is None


def test_upload_adds_a_source_drives_the_render_and_restores_the_training_table(panel):
    p, model = panel.panel, panel.model
    training_table = model.audio_table
    upload(p, "My Voice.wav", wav_bytes(tone(1.5, rate=22050), 22050))
    state = p.state()
    assert state["sources"] == [TRAINING_LABEL, "My_Voice.wav"] and state["source"] == "My_Voice.wav"
    assert list(p._dropdown.options) == state["sources"] and p._dropdown.value == "My_Voice.wav"
    assert p._source.num_frames == 38 and state["slider_end"] == pytest.approx(37 / 25.0)
    assert "1.5 s, 38 frames at 25 fps" in p._status.content
    assert not any(Path(state["upload_dir"]).iterdir())  # decoded, then deleted
    p._seek(1.0)
    out = model.get_outputs_for_camera(viewer_camera())
    assert out["rows"] == 38 and out["frame"] == 25
    assert model.audio_table is training_table and len(model.audio_table) == 50
    # natural blinks for uploads; 'open' and 'closed' override them
    p._blink.value = "closed"
    p._on_blink()
    assert model.get_outputs_for_camera(viewer_camera())["blink"] == pytest.approx(1.0)
    p._blink.value = "open"
    p._on_blink()
    assert model.get_outputs_for_camera(viewer_camera())["blink"] == 0.0
    # a second upload of the same name gets its own entry; back to the training track
    upload(p, "My Voice.wav", wav_bytes(tone(0.5), 16000))
    assert p.state()["sources"] == [TRAINING_LABEL, "My_Voice.wav", "My_Voice.wav (2)"]
    p._select_source(TRAINING_LABEL)
    assert model.get_outputs_for_camera(viewer_camera())["rows"] == 50


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("notes.txt", b"hello", "not audio"),
        ("broken.wav", b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is no audio", "not a readable audio file"),
        ("big.wav", wav_bytes(tone(8.0), 16000), "over the viewer's 0.2 MB upload limit"),
        ("tiny.wav", wav_bytes(tone(0.02), 16000), "at least"),
    ],
)
def test_bad_uploads_show_one_line_and_change_nothing(panel, name, content, fragment):
    p = panel.panel
    p._seek(0.4)
    before = p.state()
    upload(p, name, content)
    status = p._status.content
    assert fragment in status and "error:" in status, status
    assert "gstalker-viewer-" not in status  # the temporary path is not shown, the user's name is
    assert p.state() == before
    assert list(p._dropdown.options) == [TRAINING_LABEL]


def test_playback_advances_frames_at_the_clip_rate_and_stops_at_the_end(panel):
    p = panel.panel
    p._seek(1.5)
    p._on_play()
    assert wait_for(lambda: p.state()["frame"] >= 45, timeout=5.0)
    assert wait_for(lambda: not p.state()["playing"] and p._play.visible, timeout=5.0)
    state = p.state()
    assert state["frame"] == 49 and state["time"] == pytest.approx(2.0)
    assert p._play.visible and not p._pause.visible
    clock_line = p._clock_md.content
    assert 'data-playing="0"' in clock_line and "frame 49 of 49" in clock_line
    assert len(panel.rerenders) >= 8  # one per new frame (12 frames), give or take a busy machine


def test_offset_reaches_the_browser_clock_and_snap_goes_to_the_camera_frame(panel):
    p = panel.panel
    p._offset.value = 120
    p._on_offset()
    assert 'data-offset="0.1200"' in p._clock_md.content
    upload(p, "a.wav", wav_bytes(tone(0.5), 16000))
    panel.viewer.current_camera_idx = 20
    p._on_snap()
    frame = panel.train[20]
    state = p.state()
    assert state["source"] == TRAINING_LABEL and state["frame"] == frame
    assert state["time"] == pytest.approx(frame / 25.0)


def test_ground_truth_image_follows_the_time(panel):
    p = panel.panel
    p._gt_toggle.value = True
    p._on_gt_toggle()
    p._seek(panel.train[3] / 25.0)
    assert p._gt.visible and "data:image/jpeg;base64," in p._gt.content and f"frame {panel.train[3]} (train" in p._gt.content
    p._seek(5 / 25.0)  # frame 5 is not a training frame here
    assert "no ground-truth image for frame 5" in p._gt.content
    upload(p, "a.wav", wav_bytes(tone(0.5), 16000))
    assert "not the training clip" in p._gt.content


def test_an_interrupted_render_never_leaves_the_uploaded_table_in_the_model(panel):
    """nerfstudio's viewer stops a render by raising from a trace hook on any line; whichever
    line it hits, the model must come back with its training table."""
    from nerfstudio.viewer_legacy.server.viewer_utils import IOChangeException, SetTrace

    p, model = panel.panel, panel.model
    upload(p, "a.wav", wav_bytes(tone(1.0), 16000))
    p._blink.value = "closed"
    p._on_blink()
    training = (model.audio_table, model.blink_table)
    interrupted = 0
    for n in range(1, 400):
        lines = [0]

        def hook(frame, event, arg, lines=lines, n=n):
            if event == "line":
                lines[0] += 1
                if lines[0] == n:
                    raise IOChangeException
            return hook

        try:
            with SetTrace(hook):
                model.get_outputs_for_camera(viewer_camera())
        except IOChangeException:
            interrupted += 1
        assert (model.audio_table, model.blink_table) == training and model.viewer_frame_idx == 0, n
        if lines[0] < n:  # the render finished before the n-th line: every line was tried
            break
    assert interrupted > 10


def test_renders_from_two_tabs_at_once_stay_consistent(panel):
    p, model = panel.panel, panel.model
    upload(p, "a.wav", wav_bytes(tone(1.0), 16000))
    p._seek(0.4)
    errors = []

    def tab():
        for _ in range(200):
            out = model.get_outputs_for_camera(viewer_camera())
            if out["rows"] != 25 or out["frame"] != 10:
                errors.append(out)

    threads = [threading.Thread(target=tab) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(model.audio_table) == 50


def test_an_interrupt_wrapped_by_torch_compile_reaches_the_viewer_as_an_interrupt(panel):
    """torch.compile wraps an exception raised while it compiles (InternalTorchDynamoError); the
    viewer's render thread only survives the interrupt itself, so the panel unwraps it."""
    from nerfstudio.viewer_legacy.server.viewer_utils import IOChangeException

    p, model = panel.panel, panel.model
    upload(p, "a.wav", wav_bytes(tone(1.0), 16000))
    training = model.audio_table

    def compiling(camera, obb_box=None):
        try:
            raise IOChangeException
        except IOChangeException as interrupt:
            raise RuntimeError("InternalTorchDynamoError: IOChangeException") from interrupt

    with pytest.raises(IOChangeException):
        p._render_driven(compiling, viewer_camera(), None)
    assert model.audio_table is training
    with pytest.raises(RuntimeError, match="other"):  # anything else goes through untouched
        p._render_driven(lambda camera, obb_box=None: (_ for _ in ()).throw(RuntimeError("other")), viewer_camera(), None)
    assert model.audio_table is training


def test_an_error_while_updating_the_panel_never_freezes_viser(panel):
    """viser 0.2.7's atomic() leaks its lock when its block raises; the panel's updates must not."""
    p = panel.panel
    with pytest.raises(ZeroDivisionError):
        with p._gui():
            1 / 0
    released = p.viser_server._websock_server._atomic_lock.acquire(timeout=2.0)
    assert released
    p.viser_server._websock_server._atomic_lock.release()
    p._set_status("still alive")
    assert "still alive" in p._status.content
