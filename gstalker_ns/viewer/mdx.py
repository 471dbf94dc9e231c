"""The panel's browser side, written as MDX for viser 0.2.7's markdown element.

viser 0.2.7 has no audio or HTML element and no way to run JavaScript, but its markdown element
is compiled with MDX (`@mdx-js/mdx` `evaluate`), so JSX and JavaScript expressions in it run in
the page. We use that for two things only:

- the sound: an `<audio>` element holding the clip as a data URL (no extra HTTP port to expose);
- a small sync loop (installed once per page by the audio element's `ref`) that steers the
  sound towards the server's clock. The server publishes the clock in the frame-status line as
  data attributes (media time, the wall time it was sent, playing, A/V offset, source); the
  line's `ref` stamps when it arrived. The page extrapolates the server time from the sending
  time plus the smallest arrival delay seen, so a late or slowly rendered update never holds the
  sound back. The avatar is rendered on the server for the same clock, so sound and picture
  meet in every open tab.

Every piece of text that comes from outside (file names, error messages) goes in as a
JavaScript string literal with braces and angle brackets escaped, never as MDX source.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Optional

AUDIO_ID = "gstalker-audio"
CLOCK_ID = "gstalker-clock"
SOUND_STATE_ID = "gstalker-sound-state"

SEEK_ERROR_S = 0.12
"""Sound further than this from the server clock jumps there."""
NUDGE_ERROR_S = 0.03
"""Between this and SEEK_ERROR_S the sound is sped up or slowed down by 5% until it catches up."""

# One line of JavaScript: MDX reads a blank line inside an expression as the end of a block.
_SYNC_LOOP = (
    "(el) => { if (!el || window.__gstalkerSync) return;"
    " const st = { pending: false, blocked: false, want: false };"
    " const $ = (id) => document.getElementById(id);"
    f" const say = (text) => {{ const s = $('{SOUND_STATE_ID}'); if (s && text && s.textContent !== text) s.textContent = text; }};"
    " const tick = () => {"
    f" const a = $('{AUDIO_ID}'); const c = $('{CLOCK_ID}'); if (!a || !c) return;"
    " const d = c.dataset; st.want = d.playing === '1' && d.source === a.dataset.source;"
    " if (!st.want) { if (!a.paused) a.pause(); a.playbackRate = 1; say(a.dataset.idle); return; }"
    # The server's time now: its clock at sending plus the time since, where "since" uses the
    # smallest arrival delay seen (window.__gstalkerSkew), so a late update does not hold the sound back.
    " const now = Date.now() / 1000; const skew = window.__gstalkerSkew;"
    " const since = skew === undefined ? now - parseFloat(d.rx || String(now)) : now - skew - parseFloat(d.sent);"
    " const target = parseFloat(d.t) + Math.max(since, 0) - parseFloat(d.offset);"
    " if (target < 0 || (isFinite(a.duration) && target >= a.duration)) { if (!a.paused) a.pause(); return; }"
    " if (a.readyState < 1) { say('sound: loading'); return; }"
    " if (a.paused) { if (st.pending || st.blocked) return; st.pending = true; a.currentTime = target;"
    " a.play().then(() => { st.pending = false; say('sound: playing'); })"
    ".catch(() => { st.pending = false; st.blocked = true;"
    " say('sound: the browser blocked it - click anywhere on the page to hear it'); }); return; }"
    " const err = a.currentTime - target; a.dataset.drift = err.toFixed(3);"
    f" if (Math.abs(err) > {SEEK_ERROR_S}) {{ a.currentTime = target; a.playbackRate = 1; }}"
    f" else if (Math.abs(err) > {NUDGE_ERROR_S}) {{ a.playbackRate = err > 0 ? 0.95 : 1.05; }}"
    " else { a.playbackRate = 1; } say('sound: playing'); };"
    " window.__gstalkerSync = setInterval(tick, 50);"
    # A click is a user gesture: every browser lets play() start the sound inside it.
    " document.addEventListener('pointerdown', () => { st.blocked = false;"
    f" const a = $('{AUDIO_ID}'); if (a && st.want && a.paused && !st.pending) {{ a.play().catch(() => {{}}); }} }}, true); }}"
)

# Runs when an update of the time line arrives (is mounted): stamps the arrival and keeps the
# smallest (arrival - sending) difference of the last 100 updates: the two machines' clock
# difference plus the fastest delivery.
_STAMP_ARRIVAL = (
    "(el) => { if (!el || el.dataset.rxSeq === el.dataset.seq) return; const rx = Date.now() / 1000;"
    " el.dataset.rxSeq = el.dataset.seq; el.dataset.rx = String(rx);"
    " const w = window.__gstalkerSkews || (window.__gstalkerSkews = []); w.push(rx - parseFloat(el.dataset.sent));"
    " if (w.length > 100) w.shift(); window.__gstalkerSkew = Math.min(...w); }"
)


def js_string(text: str) -> str:
    """A JavaScript string literal that is also inert MDX (no braces or tags can end it)."""
    literal = json.dumps(str(text), ensure_ascii=True)
    for char, escape in (("{", "\\u007b"), ("}", "\\u007d"), ("<", "\\u003c"), (">", "\\u003e")):
        literal = literal.replace(char, escape)
    return literal


def text(value: str) -> str:
    """Arbitrary text as an MDX expression that renders it verbatim."""
    return "{" + js_string(value) + "}"


STATUS_ID = "gstalker-status"


def status_line(message: str, error: bool = False, element_id: str = STATUS_ID) -> str:
    colour = "#ff8787" if error else "#c1c2c5"
    return f'<span id="{element_id}" data-error="{int(error)}" style={{{{color: {js_string(colour)}}}}}>{text(message)}</span>'


def sound_element(source_key: str, mime: Optional[str], data: Optional[bytes], idle_text: str) -> str:
    """The audio element of one source (or, without sound, just the line that says why)."""
    state = f'<span id="{SOUND_STATE_ID}" style={{{{fontSize: "0.85em", color: "#909296"}}}}>{text(idle_text)}</span>'
    if data is None or mime is None:
        return state
    url = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    return (
        f'<audio id="{AUDIO_ID}" preload="auto" data-source={{{js_string(source_key)}}} '
        f"data-idle={{{js_string(idle_text)}}} src={{{js_string(url)}}} ref={{{_SYNC_LOOP}}} />\n\n{state}"
    )


def clock_line(
    label: str, seq: int, playing: bool, t: float, offset_s: float, source_key: str, sent: Optional[float] = None
) -> str:
    """The visible time/frame line, carrying the server clock (media time t at wall time `sent`)."""
    sent = time.time() if sent is None else sent
    return (
        f'<span id="{CLOCK_ID}" data-seq="{int(seq)}" data-playing="{1 if playing else 0}" data-sent="{sent:.3f}" '
        f'data-t="{t:.4f}" data-offset="{offset_s:.4f}" data-source={{{js_string(source_key)}}} '
        f"ref={{{_STAMP_ARRIVAL}}}>{text(label)}</span>"
    )


def image(jpeg: bytes, caption: str) -> str:
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    return (
        f'<img src={{{js_string(url)}}} alt="ground truth" style={{{{width: "100%", borderRadius: "4px"}}}} />\n\n'
        f'<span style={{{{fontSize: "0.85em", color: "#909296"}}}}>{text(caption)}</span>'
    )
