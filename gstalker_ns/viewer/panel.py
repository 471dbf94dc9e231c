"""The viewer's audio panel: scrub, play with sound, and drive the avatar with uploaded audio.

nerfstudio's viewer (`ns-train gstalker`, `ns-viewer`) finds this object on the model as a
`ViewerControl` and calls `_setup(viewer)`; only then does anything start, so training without
a viewer and `gstalker-render` never pay for it.

How it works
- Time: a `PlaybackClock` on the server is the master. A playback thread advances the avatar's
  frame from it (frame k shows time k/fps) and asks every tab's render thread for a new image
  when the frame changes; while nobody plays, the thread sleeps on an event and costs nothing.
- Rendering: the viewer's cameras carry no `frame_idx`, so the model renders
  `model.viewer_frame_idx`. Our wrapper around `model.get_outputs_for_camera` sets that frame
  and, for an uploaded clip or a blink override, swaps the model's drive tables in for that one
  render and back afterwards; "Mouth by hand" likewise sets the model's `expression_override`
  (a code from `model.expression_for_opening`) for that render only. The viewer's render thread
  holds nerfstudio's train lock around the call, so a training step never sees the swapped
  tables; `_render_lock` additionally keeps two tabs' renders from interleaving. Cameras that
  carry `frame_idx` (training, evaluation) pass through untouched.
- Sound: see `gstalker_ns.viewer.mdx`: each tab plays the clip from a data URL and steers it
  towards the server clock, which is republished ~10 times a second while playing.
- Uploads: see `gstalker_ns.viewer.uploads`; decoding and featurising run in viser's callback
  thread (one upload at a time) with `gstalker_ns.drive.audio`, like `gstalker-render`.
- Camera paths: see `gstalker_ns.viewer.path_export`; a path exported from the Render tab records
  the selected clip, and `ns-render camera-path` renders it talking with that clip.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import viser
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerControl

from gstalker_ns.drive.audio import DEFAULT_FPS, drive_from_file, spec_from_extractor
from gstalker_ns.errors import GstalkerUserError
from gstalker_ns.viewer import mdx
from gstalker_ns.viewer.clock import PlaybackClock, frame_at
from gstalker_ns.viewer.sources import (
    BLINK_MODES,
    TRAINING_LABEL,
    DriveSource,
    frame_lookup,
    training_source,
    unique_label,
    upload_source,
)
from gstalker_ns.viewer.uploads import (
    ACCEPT_ATTRIBUTE,
    ALLOWED_SUFFIXES,
    MAX_UPLOAD_ENV,
    UploadError,
    UploadStore,
    check_size,
    check_upload,
    format_mb,
    max_audio_seconds,
    max_upload_bytes,
    sanitize_filename,
)

if TYPE_CHECKING:
    from nerfstudio.viewer.viewer import Viewer

MAX_UPLOADS_KEPT = 8
"""Uploaded clips kept in the dropdown; the oldest unselected one goes first (they hold features)."""
GUI_UPDATE_S = 0.1
"""How often the slider, the time line (with the clock for the browsers) and the ground-truth
image follow a playing clip. Renders follow every frame."""
GT_WIDTH = 320


def _carries_frame(camera: Any) -> bool:
    metadata = getattr(camera, "metadata", None)
    return metadata is not None and "frame_idx" in metadata


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AudioPanel(ViewerControl):
    """The "Audio" tab of the viewer (see the module doc)."""

    def __init__(self, model: torch.nn.Module):
        # Underscore names: nerfstudio's viewer scans public attributes for GUI elements.
        self._model = model
        self._ready = False

    # ------------------------------------------------------------------ set-up
    def _setup(self, viewer: "Viewer") -> None:  # type: ignore[override]
        super()._setup(viewer)
        try:
            self._build(viewer)
        except Exception as exc:  # the viewer (and training) must go on without the panel
            CONSOLE.print(f"gstalker: the viewer's audio panel is off: {_short(exc)}", style="bold yellow", markup=False)
            if not isinstance(exc, GstalkerUserError):
                CONSOLE.print_exception()

    def _build(self, viewer: "Viewer") -> None:
        model = self._model
        datamanager = viewer.pipeline.datamanager
        metadata: Dict[str, Any] = dict(getattr(datamanager, "train_dataparser_outputs").metadata or {})
        self._lock = threading.RLock()
        self._render_lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self._wake = threading.Event()
        self._max_bytes = max_upload_bytes()
        self._max_seconds = max_audio_seconds()
        self._store = UploadStore()
        self._spec: Any = None
        self._spec_error = ""
        try:
            self._spec = spec_from_extractor(model.audio_extractor, origin="this checkpoint")
        except GstalkerUserError as exc:
            self._spec_error = str(exc)
        self._dataset_blink = model.blink_table.detach().cpu().numpy().astype(np.float32)
        self._train_fps = float(metadata.get("fps") or DEFAULT_FPS)
        training = training_source(len(model.audio_table), self._train_fps, None, 16000)
        self._load_training_sound(training, metadata.get("audio_path"))
        self._sources: Dict[str, DriveSource] = {TRAINING_LABEL: training}
        self._source = training
        self._clock = PlaybackClock(training.duration_s)
        self._frame = 0
        self._seq = 0
        self._blink_mode = "auto"
        self._mouth_level: Optional[float] = None  # None: the audio drives the mouth
        self._mouth_codes: Dict[float, torch.Tensor] = {}
        self._offset_s = 0.0
        self._show_gt = False
        self._blink_cache: Dict[Tuple[str, str], Optional[torch.Tensor]] = {}
        self._gt_cache: "OrderedDict[Tuple[str, int], bytes]" = OrderedDict()
        self._gt_content = ""
        self._datasets = {"train": datamanager.train_dataset, "eval": getattr(datamanager, "eval_dataset", None)}
        self._gt_lookup = frame_lookup(
            {
                split: dataset.cameras.metadata["frame_idx"].reshape(-1).tolist()
                for split, dataset in self._datasets.items()
                if dataset is not None and dataset.cameras.metadata and "frame_idx" in dataset.cameras.metadata
            }
        )
        self._container = self._make_container(viewer.viser_server)
        with self._gui(), self._container:
            self._build_gui(viewer.viser_server)
        self._warm_up_compiled_code()
        self._install_render_hook()
        self._install_size_guard(viewer.viser_server)
        from gstalker_ns.viewer import path_export

        path_export.install(self)  # camera paths exported from the Render tab record the selected clip
        self._ready = True
        threading.Thread(target=self._playback_loop, name="gstalker-audio-playback", daemon=True).start()
        host = viewer.config.websocket_host
        exposure = (
            f"it listens on {host}, so anyone who can reach port {viewer.viser_server.get_port()} can use it "
            "(pass --viewer.websocket-host 127.0.0.1 to keep it on this machine)"
            if host not in ("127.0.0.1", "localhost", "::1")
            else f"it listens on {host} only"
        )
        CONSOLE.print(
            f"gstalker: the viewer's Audio tab plays and scrubs the avatar; uploads up to "
            f"{format_mb(self._max_bytes)} ({MAX_UPLOAD_ENV}); {exposure}",
            markup=False,
        )

    @contextlib.contextmanager
    def _gui(self) -> Iterator[None]:
        """Hold the panel lock and viser's send lock while changing what the browsers show.

        viser 0.2.7 sends a message at once when its send lock is free and queues it for later
        when not (e.g. while a tab's camera update holds it), so a later message can overtake an
        earlier one: an update that overtakes its element's creation is dropped, and viser's
        replay buffer for new tabs then keeps the stale content. Under the send lock every
        message of ours is queued, and the queue keeps their order. Always taken in this order
        (panel lock, then send lock).

        viser's `atomic()` releases its lock only when its block ends normally (an exception
        inside leaks it and freezes every tab), so it is exited here as if nothing was raised.
        """
        with self._lock:
            send_lock = self.viser_server.atomic()
            send_lock.__enter__()
            try:
                yield
            finally:
                send_lock.__exit__(None, None, None)

    @staticmethod
    def _make_container(server: viser.ViserServer) -> Any:
        """An "Audio" tab next to nerfstudio's Control/Render/Export tabs (a folder if absent)."""
        root = server.gui._container_handle_from_id.get("root")
        for child in list(getattr(root, "_children", {}).values()):
            if isinstance(child, viser.GuiTabGroupHandle) and "Control" in child._labels:
                return child.add_tab("Audio", viser.Icon.MICROPHONE)
        return server.gui.add_folder("Audio")

    def _build_gui(self, server: viser.ViserServer) -> None:
        gui = server.gui
        self._dropdown = gui.add_dropdown("Audio", [TRAINING_LABEL], TRAINING_LABEL, hint="Which clip drives the avatar")
        self._dropdown.on_update(self._user(lambda: self._select_source(self._dropdown.value)))
        self._upload = gui.add_upload_button(
            "Upload audio",
            icon=viser.Icon.UPLOAD,
            mime_type=ACCEPT_ATTRIBUTE,
            hint=f"wav, mp3, flac, ogg or m4a, up to {format_mb(self._max_bytes)}; decoded and featurised on the server",
        )
        self._upload.on_upload(self._user(self._on_upload))
        self._status = gui.add_markdown(mdx.status_line(self._source.note))
        self._slider = self._add_slider(gui, self._source, None)
        self._clock_md = gui.add_markdown(self._clock_content(0.0, False))
        self._play = gui.add_button("Play", icon=viser.Icon.PLAYER_PLAY_FILLED, hint="Play with sound from the current time")
        self._play.on_click(self._user(self._on_play))
        self._pause = gui.add_button("Pause", icon=viser.Icon.PLAYER_PAUSE_FILLED, visible=False)
        self._pause.on_click(self._user(self._on_pause))
        self._offset = gui.add_number(
            "A/V offset (ms)", 0, min=-2000, max=2000, step=10,
            hint="Positive: the sound plays later than the picture (use it when lips move after the sound)",
        )  # fmt: skip
        self._offset.on_update(self._user(self._on_offset))
        self._blink = gui.add_dropdown("Blink", BLINK_MODES, "auto", hint="auto: the clip's blinks (natural ones for uploads)")
        self._blink.on_update(self._user(self._on_blink))
        if hasattr(self._model, "expression_for_opening"):  # expression controls: the mouth by hand
            self._mouth_toggle = gui.add_checkbox("Mouth by hand", False, hint="Drive the mouth with the slider below instead of the audio")
            self._mouth_toggle.on_update(self._user(self._on_mouth))
            self._mouth_slider = gui.add_slider(
                "Mouth opening", min=0.0, max=1.0, step=0.05, initial_value=0.5,
                hint="0: as closed, 1: as wide open as this person's mouth in the training clip",
            )  # fmt: skip
            self._mouth_slider.on_update(self._user(self._on_mouth))
        self._gt_toggle = gui.add_checkbox("Show ground truth", False, hint="The training frame of the current time, below")
        self._gt_toggle.on_update(self._user(self._on_gt_toggle))
        self._snap = gui.add_button(
            "Snap to clicked camera", icon=viser.Icon.CAMERA,
            hint="Time and view of the training camera last clicked in the scene (the first one before any click)",
        )  # fmt: skip
        self._snap.on_click(self._user(self._on_snap, with_event=True))
        self._sound = gui.add_markdown("")
        self._show_source_sound(self._source)
        self._gt = gui.add_markdown("", visible=False)

    def _add_slider(self, gui: Any, source: DriveSource, order: Optional[float]) -> Any:
        """The time slider of a source (viser 0.2.7 cannot change a slider's range: re-create it)."""
        step = 1.0 / source.fps
        end = max(source.last_frame_time, step)
        slider = gui.add_slider(
            "Time (s)", min=0.0, max=end, step=step, initial_value=0.0, marks=((0.0, "0 s"), (end, f"{end:.2f} s")),
            hint="Scrub the avatar; frame k is shown at k/fps", order=order,
        )  # fmt: skip
        slider.on_update(self._user(lambda: self._seek(float(slider.value))))
        self._slider_end = end
        return slider

    @staticmethod
    def _user(action: Callable[..., None], with_event: bool = False) -> Callable[[Any], None]:
        """Run a GUI callback only for a person's action: viser also calls callbacks (with no
        client) when the server itself sets a value, e.g. the slider following playback."""

        def callback(event: Any) -> None:
            if event.client is None:
                return
            try:
                action(event) if with_event else action()
            except Exception as exc:  # a callback error must not kill viser's worker thread silently
                CONSOLE.print(f"gstalker audio panel: {_short(exc)}", style="bold yellow", markup=False)

        return callback

    # ------------------------------------------------------------------ rendering
    def _warm_up_compiled_code(self) -> None:
        """Compile splatfacto's `get_viewmat` (a `torch.compile` function) for the viewer's renders
        now, outside the render threads.

        Compiled on a tab's first render instead, it runs under the viewer's interrupt hook; a
        scrub or Play during those seconds raises inside torch's compiler, which wraps the
        interrupt in an error the viewer does not catch, and that tab's render thread dies.
        """
        try:
            from nerfstudio.models.splatfacto import get_viewmat

            with torch.no_grad():
                get_viewmat(torch.eye(4, device=self._model.audio_table.device)[None, :3, :4].contiguous())
        except Exception:  # no compiler here: splatfacto's own first call will say so
            pass

    def _install_render_hook(self) -> None:
        model = self._model
        original = model.get_outputs_for_camera
        panel = self

        def get_outputs_for_camera(camera: Any, obb_box: Any = None) -> Dict[str, Any]:
            if _carries_frame(camera):
                return original(camera, obb_box=obb_box)
            return panel._render_driven(original, camera, obb_box)

        model.get_outputs_for_camera = get_outputs_for_camera  # instance attribute: only this model

    def _render_driven(self, original: Callable[..., Dict[str, Any]], camera: Any, obb_box: Any) -> Dict[str, Any]:
        """Render the panel's frame with the panel's drive tables, then put the model's back.

        The viewer aborts a render by raising from a `sys.settrace` hook on any traced line. If
        that hit the restore lines, training would go on with the uploaded clip's table, so this
        frame stops being traced first (its own lines only; the render below is still
        interruptible) and the swaps are C-level dict stores.
        """
        sys._getframe().f_trace = None
        table, blink, frame = self._drive_now()
        expression = self._expression_now()
        model = self._model
        buffers = model._buffers
        attrs = model.__dict__
        with self._render_lock:
            saved = (
                buffers["audio_table"], buffers["blink_table"], attrs.get("viewer_frame_idx", 0), attrs.get("expression_override")
            )  # fmt: skip
            if table is not None:
                buffers["audio_table"] = table
            if blink is not None:
                buffers["blink_table"] = blink
            attrs["viewer_frame_idx"] = frame
            attrs["expression_override"] = expression
            try:
                return original(camera, obb_box=obb_box)
            except Exception as exc:
                # torch.compile wraps an interrupt raised while it compiles; unwrap it so the viewer
                # treats it as the interrupt it is (instead of losing this tab's render thread).
                cause = exc.__cause__ or exc.__context__
                if type(cause).__name__ == "IOChangeException" and type(exc).__name__ != "IOChangeException":
                    raise cause from None
                raise
            finally:
                buffers["audio_table"], buffers["blink_table"], attrs["viewer_frame_idx"], attrs["expression_override"] = saved

    def _drive_now(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], int]:
        """(table or None, blink or None, frame) for the next render; None keeps the model's own."""
        with self._lock:
            source, mode, frame = self._source, self._blink_mode, self._frame
            device = self._model.audio_table.device
            table = None if source.table is None else source.table.to(device)
            key = (source.key, mode)
            if key not in self._blink_cache:
                track = source.blink(mode, self._dataset_blink)
                self._blink_cache[key] = None if track is None else torch.from_numpy(track)
            blink = self._blink_cache[key]
            return table, None if blink is None else blink.to(device), frame

    def _expression_now(self) -> Optional[torch.Tensor]:
        """The hand-set expression code for the next render, or None when the audio drives it."""
        with self._lock:
            level = self._mouth_level
            if level is None:
                return None
            if level not in self._mouth_codes:
                with torch.no_grad():
                    self._mouth_codes[level] = self._model.expression_for_opening(level)
            return self._mouth_codes[level]

    def _request_render(self) -> None:
        try:
            self.viewer._trigger_rerender()
        except (KeyError, RuntimeError):  # a tab connecting or leaving right now; the next frame retries
            pass

    # ------------------------------------------------------------------ time
    def _set_frame_for(self, t: float) -> bool:
        """Set the avatar's frame for media time t; True when it changed."""
        with self._lock:
            frame = frame_at(t, self._source.fps, self._source.num_frames)
            changed, self._frame = frame != self._frame, frame
            return changed

    def _clock_content(self, t: float, playing: bool, sent: Optional[float] = None) -> str:
        source = self._source
        self._seq += 1
        label = f"frame {self._frame} of {max(source.num_frames - 1, 0)}  ·  {t:.2f} s of {source.duration_s:.2f} s"
        return mdx.clock_line(label, self._seq, playing, t, self._offset_s, source.key, sent=sent)

    def _publish(self, slider: bool = True) -> None:
        """Send the time to the browsers: slider, time line (with the clock), ground truth."""
        with self._gui():
            t, playing = self._clock.snapshot()
            sent = time.time()  # the wall time at which the media time was t, for the browsers
            if slider:  # the shown frame's time, so the number box reads 0.96, not 0.9731
                self._slider.value = round(self._frame / self._source.fps, 4)
            self._clock_md.content = self._clock_content(t, playing, sent)
            if self._pause.visible != playing:  # each assignment is a message to every tab
                self._play.visible, self._pause.visible = not playing, playing
            self._update_gt()

    def _seek(self, t: float) -> None:
        with self._lock:
            self._clock.seek(t)
            changed = self._set_frame_for(self._clock.time())
            self._publish(slider=False)  # the person is holding the slider: do not move it under them
        if changed:
            self._request_render()

    def _on_play(self) -> None:
        with self._lock:
            if self._source.num_frames == 0:
                return
            self._clock.play()
            self._set_frame_for(self._clock.time())
            self._publish()
        self._wake.set()
        self._request_render()

    def _on_pause(self) -> None:
        with self._lock:
            self._clock.pause()
            self._set_frame_for(self._clock.time())
            self._publish()
        self._request_render()

    def _on_offset(self) -> None:
        with self._gui():
            self._offset_s = float(self._offset.value) / 1000.0
            self._publish(slider=False)

    def _playback_loop(self) -> None:
        """Advance the avatar while playing; sleep on an event otherwise (no cost to training)."""
        next_gui, was_playing = 0.0, False
        while True:
            playing = self._clock.playing
            if not playing and not was_playing:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            was_playing = playing  # one more pass after the clip ends: show its last frame and the Play button
            try:
                t = self._clock.time()
                if self._set_frame_for(t):
                    self._request_render()
                now = time.monotonic()
                if now >= next_gui or not playing:
                    self._publish()
                    next_gui = now + GUI_UPDATE_S
            except Exception as exc:  # keep the thread alive; the next tick retries
                CONSOLE.print(f"gstalker audio panel, playback: {_short(exc)}", style="bold yellow", markup=False)
            time.sleep(0.5 / max(self._source.fps, 1.0))

    # ------------------------------------------------------------------ sources
    def _load_training_sound(self, source: DriveSource, audio_path: Optional[str]) -> None:
        """The training clip's sound for the browsers (decoded and encoded once, at set-up, so the
        panel's first message already carries it)."""
        if not audio_path:
            source.note = "no sound: the training folder has no audio file"
            return
        from gstalker_ns.audio.io import load_audio

        rate = self._spec.sample_rate if self._spec is not None else 16000
        try:
            source.wave, source.sample_rate = load_audio(audio_path, sample_rate=rate), rate
            source.sound()
        except GstalkerUserError as exc:
            source.wave, source.note = None, f"no sound: {exc}"

    def _set_status(self, message: str, error: bool = False) -> None:
        with self._gui():
            self._status.content = mdx.status_line(message, error=error)

    def _show_source_sound(self, source: DriveSource) -> None:
        payload = source.sound()
        idle = f"sound: ready ({source.duration_s:.1f} s)" if payload else (source.note or "no sound")
        mime, data = payload if payload else (None, None)
        self._sound.content = mdx.sound_element(source.key, mime, data, idle)

    def _select_source(self, label: str) -> None:
        with self._gui():
            source = self._sources.get(label)
            if source is None or source is self._source:
                return
            self._clock.pause()
            self._source = source
            self._clock = PlaybackClock(source.duration_s)
            self._frame = 0
            order = self._slider.order
            self._slider.remove()
            with self._container:
                self._slider = self._add_slider(self.viser_server.gui, source, order)
            if self._dropdown.value != label:
                self._dropdown.value = label
            self._show_source_sound(source)
            self._status.content = mdx.status_line(source.note)
            self._publish()
        self._request_render()

    def _on_upload(self) -> None:
        uploaded = self._upload.value
        shown = sanitize_filename(uploaded.name)
        try:  # viser keeps the last upload's bytes on the handle; they are ours to drop
            from viser._gui_handles import UploadedFile

            self._upload._impl.value = UploadedFile("", b"")
        except (ImportError, AttributeError):
            pass
        with self._upload_lock:
            self._set_status(f"decoding and featurising {shown} ...")
            try:
                source = self._decode_upload(uploaded.name, uploaded.content)
            except GstalkerUserError as exc:
                self._set_status(f"error: {exc}", error=True)
                return
            except Exception as exc:  # a decoder library failing in a way AudioError does not cover
                self._set_status(f"error: {shown} could not be read ({_short(exc)}); upload a wav, mp3, flac, ogg or m4a file", True)
                return
            with self._gui():
                source.label = unique_label(shown, list(self._sources))
                self._sources[source.label] = source
                uploads = [s for s in self._sources.values() if s.table is not None]
                while len(uploads) > MAX_UPLOADS_KEPT:
                    oldest = next(s for s in uploads if s is not self._source and s is not source)
                    del self._sources[oldest.label]
                    uploads.remove(oldest)
                self._dropdown.options = list(self._sources)
                self._select_source(source.label)

    def _decode_upload(self, name: str, content: bytes) -> DriveSource:
        shown = sanitize_filename(name)
        if self._spec is None:
            raise UploadError(self._spec_error)
        suffix = check_upload(name, content, self._max_bytes)
        path = self._store.save(name, content, suffix)
        try:
            drive = drive_from_file(path, self._spec, fps=DEFAULT_FPS, max_seconds=self._max_seconds)
        except GstalkerUserError as exc:
            raise UploadError(str(exc).replace(str(path), shown)) from None
        finally:
            path.unlink(missing_ok=True)
        expected = tuple(self._model.audio_table.shape[1:])
        if tuple(drive.features.shape[1:]) != expected:
            raise UploadError(
                f"{shown}: features of shape {tuple(drive.features.shape[1:])} do not fit this checkpoint's {expected}; "
                "the checkpoint's extractor record is inconsistent, retrain it"
            )
        note = f"{shown}: {drive.duration_s:.1f} s, {drive.num_frames} frames at {drive.fps:g} fps"
        if drive.duration_s >= self._max_seconds - 1.0 / drive.fps:
            note += f" (only the first {self._max_seconds:g} s are used)"
        source = upload_source(drive, shown, self._dataset_blink, self._model.audio_table.device, note=note)
        source.sound()  # encode now, outside the panel lock that renders wait on
        return source

    def _install_size_guard(self, server: viser.ViserServer) -> None:
        """Refuse an oversized or non-audio upload when it starts, before its bytes pile up in memory.

        viser 0.2.7 buffers a whole upload in memory before calling us, with no limit. We listen
        to its transfer-start message too (our handler runs after viser's, so the transfer is
        registered), drop the transfer and tell that browser it is over so its upload button
        works again. `check_upload` repeats every check on the complete file in any case.
        """
        try:
            from viser._messages import FileTransferPartAck, FileTransferStart

            websock = server._websock_server
            transfers = server.gui._current_file_upload_states
        except (ImportError, AttributeError):  # another viser: the check on the complete file remains
            return

        def on_start(client_id: int, message: Any) -> None:
            if message.source_component_id != self._upload._impl.id:
                return
            shown = sanitize_filename(message.filename)
            try:
                suffix = "." + shown.rpartition(".")[2].lower() if "." in shown else ""
                if suffix not in ALLOWED_SUFFIXES:
                    raise UploadError(f"{shown} is not a wav, mp3, flac, ogg or m4a file; upload one of those")
                check_size(shown, int(message.size_bytes), self._max_bytes)
            except UploadError as exc:
                transfers.pop(message.transfer_uuid, None)
                websock.queue_message(
                    FileTransferPartAck(
                        source_component_id=message.source_component_id,
                        transfer_uuid=message.transfer_uuid,
                        transferred_bytes=int(message.size_bytes),
                        total_bytes=int(message.size_bytes),
                    )
                )
                self._set_status(f"error: {exc}", error=True)

        websock.register_handler(FileTransferStart, on_start)

    # ------------------------------------------------------------------ blink, ground truth, cameras
    def _on_blink(self) -> None:
        with self._lock:
            self._blink_mode = str(self._blink.value)
        self._request_render()

    def _on_mouth(self) -> None:
        with self._lock:
            by_hand = bool(self._mouth_toggle.value)
            self._mouth_level = round(float(self._mouth_slider.value), 3) if by_hand else None
        self._request_render()

    def _on_gt_toggle(self) -> None:
        with self._gui():
            self._show_gt = bool(self._gt_toggle.value)
            self._update_gt()

    def _update_gt(self) -> None:
        """Show (or hide) the ground-truth frame of the current time (lock held)."""
        if self._gt.visible != self._show_gt:
            self._gt.visible = self._show_gt
        if not self._show_gt:
            return
        frame, source = self._frame, self._source
        entry = self._gt_lookup.get(frame) if source.label == TRAINING_LABEL else None
        if source.label != TRAINING_LABEL:
            content = mdx.status_line(f"no ground truth: {source.label} is not the training clip", element_id="gstalker-gt-note")
        elif entry is None:
            content = mdx.status_line(f"no ground-truth image for frame {frame} in the training folder", element_id="gstalker-gt-note")
        else:
            split, index = entry
            content = mdx.image(self._gt_jpeg(split, index), f"ground truth: frame {frame} ({split} split)")
        if content != self._gt_content:
            self._gt_content = content
            self._gt.content = content

    def _gt_jpeg(self, split: str, index: int) -> bytes:
        key = (split, index)
        if key not in self._gt_cache:
            from PIL import Image

            dataset = self._datasets[split]
            image = Image.open(dataset.image_filenames[index]).convert("RGB")
            image.thumbnail((GT_WIDTH, GT_WIDTH))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
            self._gt_cache[key] = buffer.getvalue()
            while len(self._gt_cache) > 256:
                self._gt_cache.popitem(last=False)
        return self._gt_cache[key]

    def _on_snap(self, event: Any = None) -> None:
        """The time of the training camera last clicked in the scene and, for the tab that asked,
        its view, so the render and the ground-truth frame show the same thing."""
        index = int(getattr(self.viewer, "current_camera_idx", 0))
        cameras = self._datasets["train"].cameras
        frame = int(cameras.metadata["frame_idx"].reshape(-1)[index])
        client = getattr(event, "client", None)
        if client is not None:
            self._move_view(client, cameras, index)
        t = frame / self._train_fps
        with self._gui():
            self._select_source(TRAINING_LABEL)
            self._clock.seek(t)
            self._set_frame_for(self._clock.time())
            self._publish()
            self._status.content = mdx.status_line(f"time of training camera {index}: frame {frame} ({t:.2f} s)")
        self._request_render()

    @staticmethod
    def _move_view(client: Any, cameras: Any, index: int) -> None:
        """Put a tab's view on a training camera (as nerfstudio does when a frustum is clicked,
        plus that camera's field of view)."""
        import viser.transforms as vtf
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        c2w = cameras.camera_to_worlds[index].detach().cpu().numpy().astype(np.float64)
        rotation = vtf.SO3.from_matrix(c2w[:3, :3]) @ vtf.SO3.from_x_radians(np.pi)
        with client.atomic():
            client.camera.fov = float(2 * np.arctan(float(cameras.cy[index]) / float(cameras.fy[index])))
            client.camera.position = c2w[:3, 3] * VISER_NERFSTUDIO_SCALE_RATIO  # nerfstudio's order: position first
            client.camera.wxyz = rotation.wxyz

    # ------------------------------------------------------------------ introspection (tests)
    def state(self) -> Dict[str, Any]:
        """A snapshot of what the panel shows, for tests and debugging."""
        with self._lock:
            t, playing = self._clock.snapshot()
            return {
                "source": self._source.label,
                "sources": list(self._sources),
                "time": t,
                "frame": self._frame,
                "playing": playing,
                "blink": self._blink_mode,
                "mouth": self._mouth_level,
                "offset_s": self._offset_s,
                "slider_end": self._slider_end,
                "upload_dir": str(self._store.root),
            }

    def clip_for_export(self) -> Optional[Tuple[DriveSource, float, str]]:
        """(selected source, A/V offset in seconds, blink mode) for a camera path being exported
        (`gstalker_ns.viewer.path_export`); None before the panel is built."""
        if not self._ready:
            return None
        with self._lock:
            return self._source, self._offset_s, self._blink_mode

    def labels(self) -> List[str]:
        with self._lock:
            return list(self._sources)
