"""Camera paths exported from the viewer's Render tab record the Audio tab's clip.

nerfstudio's Render tab ("Generate Command") writes `camera_paths/NAME.json` with `json.dump`
inside a button callback, with no hook of its own. While our Audio tab is up, its module's `json`
is this module's `_JsonWithClip`: every call goes to the standard `json`, except that a dump of a
camera path (a dict with "camera_path" and "keyframes", written to a file) first gets the
selected clip's `gstalker_audio` entry, and an uploaded clip's sound is copied beside the JSON
(`gstalker_ns.render.path_audio.record`). `ns-render camera-path` renders it with that clip.
If recording fails, the path is written as nerfstudio made it and the console says why.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any, Dict, Optional

from gstalker_ns.render import path_audio

_panel: Optional["weakref.ReferenceType[Any]"] = None


def is_camera_path(obj: Any) -> bool:
    return isinstance(obj, dict) and "camera_path" in obj and "keyframes" in obj


def with_clip(data: Dict[str, Any], json_path: Path, panel: Any) -> Dict[str, Any]:
    """`data` plus the panel's selected clip (a new dict; `data` itself is left alone)."""
    clip = panel.clip_for_export()
    if clip is None:
        return data
    source, av_offset_s, blink = clip
    wave = getattr(source, "wave", None)
    if source.table is None:  # the model's own table: the training track
        entry = path_audio.record(json_path, "training", source.label, av_offset_s=av_offset_s, blink=blink)
    else:
        entry = path_audio.record(
            json_path, "file", source.label, wave=wave, sample_rate=source.sample_rate, av_offset_s=av_offset_s, blink=blink
        )
    return {**data, path_audio.KEY: entry}


class _JsonWithClip:
    """Stands in for the `json` module inside nerfstudio's render panel (see the module doc)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)

    def dump(self, obj: Any, fp: Any, *args: Any, **kwargs: Any) -> None:
        panel = _panel() if _panel is not None else None
        name = getattr(fp, "name", None)
        if panel is not None and isinstance(name, str) and is_camera_path(obj):
            try:
                obj = with_clip(obj, Path(name), panel)
            except Exception as exc:  # the export must work even when the clip cannot be recorded
                from nerfstudio.utils.rich_utils import CONSOLE

                CONSOLE.print(
                    f"gstalker: {Path(name).name} records no audio clip ({exc}); ns-render uses the training track",
                    style="bold yellow",
                    markup=False,
                )
        json.dump(obj, fp, *args, **kwargs)


def install(panel: Any) -> None:
    """Record `panel`'s clip in camera paths the Render tab exports from now on."""
    global _panel
    from nerfstudio.viewer import render_panel

    _panel = weakref.ref(panel)
    if not isinstance(render_panel.json, _JsonWithClip):
        render_panel.json = _JsonWithClip()  # type: ignore[assignment]
