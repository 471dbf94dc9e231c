"""nerfstudio's `ns-render` on our checkpoints talks and sounds (gstalker_ns.render.ns_render_hook).

A camera path exported while the viewer's Audio tab has a clip selected records that clip
(gstalker_ns.viewer.path_export, called here without a browser); `ns-render camera-path` then
drives the mouth with it and muxes its sound. Paths without a clip, `ns-render interpolate` and
`ns-render dataset` use the training track. Streams are read with PyAV.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch

from gstalker_ns.media.video import probe_mp4
from gstalker_ns.render import ns_render_hook, path_audio
from tests.fixtures import look_at_camera

BIN = Path(sys.executable).parent
FPS, NUM_FRAMES = 24, 36  # a 1.5 s path
SPEECH_END = 1.0  # the recorded clip: the subject's speech from 0.25 s, silence after 1.0 s


@pytest.fixture(scope="module")
def run(tiny_run):
    root, config, subject = tiny_run
    return config, subject


def still_path(num_frames: int = NUM_FRAMES, fps: float = FPS) -> dict:
    """A Render-tab export whose camera stands still: only the audio changes from frame to frame."""
    pose = look_at_camera(4.0, 0.0).flatten().tolist()
    return {
        "camera_type": "perspective", "render_height": 64, "render_width": 64, "fps": fps, "seconds": num_frames / fps,
        "keyframes": [{"matrix": pose, "fov": 40.0, "aspect": 1.0}],
        "camera_path": [{"camera_to_world": pose, "fov": 40.0, "aspect": 1.0}] * num_frames,
    }  # fmt: skip


class FakePanel:
    """What path_export asks of the Audio tab: the selected source, its A/V offset and blink mode."""

    def __init__(self, source, offset_s: float = 0.0, blink: str = "auto"):
        self.source, self.offset_s, self.blink = source, offset_s, blink

    def clip_for_export(self):
        return self.source, self.offset_s, self.blink


def upload(wave: np.ndarray, rate: int, label: str = "speech.mp3") -> SimpleNamespace:
    return SimpleNamespace(label=label, table=torch.zeros(1), wave=wave, sample_rate=rate)


def export(json_path: Path, data: dict, panel) -> dict:
    """Write a camera path the way nerfstudio's Render tab does, through our stand-in `json`."""
    from gstalker_ns.viewer import path_export

    json_path.parent.mkdir(parents=True, exist_ok=True)
    previous = path_export._panel
    path_export._panel = (lambda: panel) if panel is not None else None
    try:
        with open(json_path.absolute(), "w") as outfile:
            path_export._JsonWithClip().dump(data, outfile)
    finally:
        path_export._panel = previous
    return json.loads(json_path.read_text())


def envelope(wave: np.ndarray, rate: int, seconds: float = 0.02) -> np.ndarray:
    n = int(rate * seconds)
    m = wave.size // n
    return np.sqrt((np.asarray(wave[: m * n], np.float64).reshape(m, n) ** 2).mean(axis=1))


def same_sound(decoded: np.ndarray, expected: np.ndarray, rate: int) -> float:
    """Correlation of the 20 ms RMS envelopes over the expected length (AAC is lossy)."""
    a, b = envelope(decoded, rate), envelope(expected, rate)
    n = min(len(a), len(b))
    assert n >= len(b) - 1, "the video's sound is shorter than expected"
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def decoded_audio(path: Path) -> tuple:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        wave = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
    return wave, rate


def assert_sound_ends_with_picture(info: dict, frames: int, fps: float) -> None:
    assert info["video"]["packets"] == frames and info["audio"] is not None, info
    assert info["audio"]["codec"] == "aac"
    assert abs(info["video"]["end"] - frames / fps) < 1e-6
    assert abs(info["audio"]["end"] - info["video"]["end"]) <= 1.0 / fps, info


@pytest.fixture(scope="module")
def recorded(run, tmp_path_factory):
    """A camera path exported with an uploaded clip selected (blinks off: only audio varies)."""
    _, subject = run
    wave, rate = soundfile.read(str(subject / "audio.wav"), dtype="float32")
    clip = np.concatenate([wave[int(0.25 * rate) : int((0.25 + SPEECH_END) * rate)], np.zeros(int(0.5 * rate), np.float32)])
    folder = tmp_path_factory.mktemp("camera_paths")
    export(folder / "still.json", still_path(), FakePanel(upload(clip, rate), blink="open"))
    return folder / "still.json", clip, rate


def test_export_records_the_selected_clip(tmp_path):
    """The Render tab's JSON gains the clip; an upload's sound is copied beside it, whole."""
    rate = 16000
    wave = (0.3 * np.sin(np.linspace(0, 400, rate))).astype(np.float32)
    data = still_path(4)
    written = export(tmp_path / "camera_paths" / "orbit.json", data, FakePanel(upload(wave, rate), 0.12, "closed"))
    assert path_audio.KEY not in data  # nerfstudio's dict is left alone
    entry = written[path_audio.KEY]
    assert entry == {"source": "file", "file": "orbit.audio.wav", "label": "speech.mp3", "start_s": 0.0,
                     "av_offset_s": 0.12, "blink": "closed"}  # fmt: skip
    assert written["camera_path"] == data["camera_path"]
    copy, copy_rate = soundfile.read(str(tmp_path / "camera_paths" / "orbit.audio.wav"), dtype="float32")
    assert copy_rate == rate and np.abs(copy - wave).max() < 1e-4
    assert sorted(p.name for p in (tmp_path / "camera_paths").iterdir()) == ["orbit.audio.wav", "orbit.json"]
    clip = path_audio.read(written, tmp_path / "camera_paths" / "orbit.json")
    assert clip.file == (tmp_path / "camera_paths" / "orbit.audio.wav").absolute() and clip.av_offset_s == 0.12

    training = SimpleNamespace(label="training track", table=None, wave=wave, sample_rate=rate)
    written = export(tmp_path / "t" / "t.json", data, FakePanel(training))
    assert written[path_audio.KEY]["source"] == "training" and "file" not in written[path_audio.KEY]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["t.json"]
    assert path_audio.KEY not in export(tmp_path / "n" / "n.json", data, None)  # no Audio tab: nerfstudio's JSON


def test_the_viewer_panel_routes_render_tab_writes_through_the_recorder(monkeypatch):
    import json as std_json

    from nerfstudio.viewer import render_panel

    from gstalker_ns.viewer import path_export

    monkeypatch.setattr(render_panel, "json", std_json)
    monkeypatch.setattr(path_export, "_panel", None)
    panel = FakePanel(None)
    path_export.install(panel)
    assert isinstance(render_panel.json, path_export._JsonWithClip)
    assert path_export._panel() is panel and render_panel.json.loads('{"a": 1}') == {"a": 1}


from tests.test_viewer_panel import panel  # noqa: E402,F401  (the Audio tab on a real viser server)


def test_the_audio_tab_records_its_selected_clip(panel, tmp_path, monkeypatch):  # noqa: F811
    """The real panel: after an upload, Render-tab exports record that clip, its offset and blinks."""
    from nerfstudio.viewer import render_panel

    from gstalker_ns.viewer import path_export
    from gstalker_ns.viewer.sources import TRAINING_LABEL, wav_bytes
    from tests.test_viewer_panel import tone, upload as upload_to

    monkeypatch.setattr(path_export, "_panel", path_export._panel)
    p = panel.panel
    assert isinstance(render_panel.json, path_export._JsonWithClip) and path_export._panel() is p
    upload_to(p, "My Voice.wav", wav_bytes(tone(1.5), 16000))
    p._offset.value = 80
    p._on_offset()
    p._blink.value = "closed"
    p._on_blink()
    target = tmp_path / "camera_paths" / "orbit.json"
    target.parent.mkdir()
    with open(target, "w") as outfile:
        render_panel.json.dump(still_path(4), outfile)
    entry = json.loads(target.read_text())[path_audio.KEY]
    assert entry["label"] == "My_Voice.wav" and entry["file"] == "orbit.audio.wav"
    assert entry["av_offset_s"] == pytest.approx(0.08) and entry["blink"] == "closed"
    copy, _ = soundfile.read(str(target.with_name("orbit.audio.wav")), dtype="float32")
    assert copy.size == p._source.wave.size and np.abs(copy - p._source.wave).max() < 1e-4
    p._select_source(TRAINING_LABEL)
    with open(target, "w") as outfile:
        render_panel.json.dump(still_path(4), outfile)
    assert json.loads(target.read_text())[path_audio.KEY]["source"] == "training"


def test_recorded_entries_are_checked(tmp_path):
    where = tmp_path / "p.json"
    cases = [
        ({"source": "file", "file": "gone.wav"}, "no longer exists"),
        ({"source": "file"}, "must name an audio file"),
        ({"source": "radio"}, "is not one of"),
        ({"source": "training", "start_s": -1}, "must not be negative"),
        ({"source": "training", "blink": "wink"}, "is not one of"),
        ({"source": "training", "av_offset_s": "soon"}, "must be a number"),
    ]
    for entry, message in cases:
        with pytest.raises(path_audio.PathAudioError, match=message) as error:
            path_audio.read({path_audio.KEY: entry}, where)
        assert "\n" not in str(error.value)
    assert path_audio.read({}, where) is None


def test_ns_render_camera_path_talks_with_the_recorded_clip(run, recorded, tmp_path):
    """The viewer's generated command, as a user runs it: the mp4 carries the clip's sound."""
    config, _ = run
    json_path, clip, rate = recorded
    before = {p: p.read_bytes() for p in json_path.parent.iterdir()}
    out = tmp_path / "still.mp4"
    done = subprocess.run(
        [str(BIN / "ns-render"), "camera-path", f"--load-config={config}", f"--camera-path-filename={json_path}",
         f"--output-path={out}"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "driven by speech.mp3" in done.stdout
    assert {p: p.read_bytes() for p in json_path.parent.iterdir()} == before  # inputs untouched
    info = probe_mp4(out)
    assert_sound_ends_with_picture(info, NUM_FRAMES, FPS)
    decoded, decoded_rate = decoded_audio(out)
    assert decoded_rate == rate
    assert same_sound(decoded, clip, rate) > 0.95


def test_each_frame_is_driven_by_the_clip_at_its_time(run, recorded, tmp_path, monkeypatch):
    """Frame k renders with the clip's features at k/fps: speech and silence render differently,
    where nerfstudio alone renders every frame at training frame 0."""
    from nerfstudio.scripts.render import RenderCameraPath

    from gstalker_ns.drive.audio import drive_from_file, spec_from_extractor
    from gstalker_ns.model import GSTalkerModel

    config, _ = run
    json_path, _, _ = recorded
    seen, extractor = [], {}
    original = GSTalkerModel._render_view

    def spy(self, camera_to_world, K, W, H, k):  # every render of a frame passes here
        outputs = original(self, camera_to_world, K, W, H, k)
        extractor.update(self.audio_extractor)
        seen.append((k, self.audio_table[k].cpu().numpy().copy(), float(self.blink_table[k]), outputs["rgb"].cpu().clone()))
        return outputs

    monkeypatch.setattr(GSTalkerModel, "_render_view", spy)
    RenderCameraPath(load_config=config, camera_path_filename=json_path, output_path=tmp_path / "still.mp4").main()
    assert [k for k, *_ in seen] == list(range(NUM_FRAMES))
    expected = drive_from_file(json_path.with_name("still.audio.wav"), spec_from_extractor(extractor), fps=FPS).features
    assert expected.shape[0] == NUM_FRAMES
    rows = np.stack([row for _, row, _, _ in seen])
    assert np.allclose(rows, expected, atol=1e-5)
    assert all(blink == 0.0 for _, _, blink, _ in seen)  # "open" as recorded
    speaking, silent = 12, NUM_FRAMES - 1  # 0.5 s (speech) and 1.46 s (silence)
    assert not np.allclose(rows[speaking], rows[silent])
    assert not torch.equal(seen[speaking][3], seen[silent][3])  # the picture follows the sound
    assert probe_mp4(tmp_path / "still.mp4")["audio"] is not None


def test_paths_without_a_clip_and_interpolate_use_the_training_track(run, tmp_path):
    from nerfstudio.scripts.render import RenderCameraPath, RenderInterpolated

    config, subject = run
    training, rate = soundfile.read(str(subject / "audio.wav"), dtype="float32")
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(still_path(30, 24)))
    RenderCameraPath(load_config=config, camera_path_filename=plain, output_path=tmp_path / "plain.mp4").main()
    info = probe_mp4(tmp_path / "plain.mp4")
    assert_sound_ends_with_picture(info, 30, 24)
    assert same_sound(decoded_audio(tmp_path / "plain.mp4")[0], training[: int(30 / 24 * rate)], rate) > 0.95

    out = tmp_path / "interpolate.mp4"
    RenderInterpolated(load_config=config, output_path=out, interpolation_steps=2, frame_rate=10).main()
    info = probe_mp4(out)
    frames = info["video"]["packets"]
    assert frames >= 4 and info["audio"] is not None
    assert abs(info["audio"]["end"] - info["video"]["end"]) <= 1.0 / info["video"]["rate"]
    seconds = info["video"]["end"]
    assert same_sound(decoded_audio(out)[0], training[: int(seconds * rate)], rate) > 0.95


def test_a_training_folder_without_audio_renders_silently(run, tmp_path):
    """Documented fallback: the mouth still follows the training features; the video is silent."""
    from gstalker_ns.checkpoint import load_trained_pipeline

    config, _ = run
    pipeline, *_ = load_trained_pipeline(config)
    model = pipeline.model
    metadata = dict(pipeline.datamanager.train_dataparser_outputs.metadata)
    for audio_path in (str(tmp_path / "moved.wav"), None):
        drive = path_audio.drive_for_frames(model, {**metadata, "audio_path": audio_path}, None, 10, 25.0)
        assert drive.sound is None and "silent" in drive.note
        assert np.array_equal(drive.features, model.audio_table[:10].cpu().numpy())
    with_sound = path_audio.drive_for_frames(model, metadata, None, 10, 25.0)
    assert with_sound.sound.size == int(0.4 * with_sound.sample_rate)


def test_ns_render_dataset_writes_each_split_with_its_frames_sound(run, tmp_path):
    from nerfstudio.scripts.render import DatasetRender

    from gstalker_ns.checkpoint import load_trained_pipeline

    config, subject = run
    DatasetRender(load_config=config, output_path=tmp_path / "dataset", split="train").main()
    video = tmp_path / "dataset" / "train" / "rgb.mp4"
    pipeline, *_ = load_trained_pipeline(config)
    frames = pipeline.datamanager.train_dataset.cameras.metadata["frame_idx"].reshape(-1).tolist()
    assert len(list((tmp_path / "dataset" / "train" / "rgb").glob("*.jpg"))) == len(frames)
    assert_sound_ends_with_picture(probe_mp4(video), len(frames), 25.0)
    training, rate = soundfile.read(str(subject / "audio.wav"), dtype="float32")
    expected = np.concatenate([training[round(f / 25 * rate) : round((f + 1) / 25 * rate)] for f in frames])
    assert same_sound(decoded_audio(video)[0], expected, rate) > 0.95


def test_a_missing_clip_is_one_line_before_the_model_loads(run, recorded, tmp_path, monkeypatch, capsys):
    from nerfstudio.scripts import render

    config, _ = run
    json_path, _, _ = recorded
    data = json.loads(json_path.read_text())
    data[path_audio.KEY]["file"] = "deleted.wav"
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(data))
    monkeypatch.setattr(render, "eval_setup", lambda *a, **k: pytest.fail("loaded the checkpoint first"))
    with pytest.raises(path_audio.PathAudioError) as error:
        render.RenderCameraPath(load_config=config, camera_path_filename=moved, output_path=tmp_path / "x.mp4").main()
    sys.excepthook(error.type, error.value, error.tb)  # what ns-render prints
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {moved}: its audio clip ")
    assert "no longer exists" in lines[0] and "re-export the camera path" in lines[0]
    assert not (tmp_path / "x.mp4").exists()


def test_other_methods_go_straight_to_nerfstudio(tmp_path):
    """The hook is installed on ns-render's script and leaves non-gstalker models alone."""
    from nerfstudio.scripts import render

    assert getattr(render, ns_render_hook._PATCHED) is True
    calls = []

    def nerfstudio_render(pipeline, cameras, output_filename, rendered_output_names, crop_data=None,
                          rendered_resolution_scaling_factor=1.0, seconds=5.0, output_format="video"):  # fmt: skip
        calls.append((pipeline, cameras, output_filename, seconds))

    splatfacto = SimpleNamespace(model=torch.nn.Linear(1, 1))
    cameras = SimpleNamespace(metadata=None, size=3)
    ns_render_hook._trajectory_video(nerfstudio_render, splatfacto, cameras, tmp_path / "o.mp4", ["rgb"], seconds=1.0)
    assert calls == [(splatfacto, cameras, tmp_path / "o.mp4", 1.0)] and cameras.metadata is None

    def dataset_main(self):  # nerfstudio's DatasetRender.main, as far as the hook sees it
        ns_render_hook._eval_setup(lambda *a, **k: (None, splatfacto, None, None), self.load_config)
        ns_render_hook._dataloader(lambda **k: None, input_dataset=object())

    command = SimpleNamespace(load_config=tmp_path / "c.yml", output_path=tmp_path / "renders", split="test",
                              rendered_output_names=None, image_format="jpeg")  # fmt: skip
    ns_render_hook._dataset_main(dataset_main, command)
    assert not (tmp_path / "renders").exists()
