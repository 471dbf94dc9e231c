"""Safe handling of audio files uploaded through the viewer's audio panel.

The viewer's websocket is reachable by whoever can reach its port (nerfstudio binds 0.0.0.0 by
default), so an upload is untrusted input: it is size-limited, must be one of a few audio types
(by name *and* by its first bytes, so a renamed text file never reaches a decoder), is written
under a sanitised name inside a private temporary folder, deleted once decoded, and the folder
itself is removed when the process exits.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import unicodedata
import weakref
from pathlib import Path
from typing import Optional

from gstalker_ns.errors import GstalkerUserError

ALLOWED_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".m4a")
ACCEPT_ATTRIBUTE = ",".join(ALLOWED_SUFFIXES) + ",audio/*"
"""What the browser's file dialog offers (the server checks again: a browser filter is no check)."""
DEFAULT_MAX_UPLOAD_MB = 50.0
MAX_UPLOAD_ENV = "GSTALKER_VIEWER_MAX_UPLOAD_MB"
DEFAULT_MAX_AUDIO_SECONDS = 600.0
MAX_SECONDS_ENV = "GSTALKER_VIEWER_MAX_AUDIO_SECONDS"
_MAX_NAME_CHARS = 80


class UploadError(GstalkerUserError):
    """An uploaded file the panel refuses (wrong type, too large, empty); one-line message."""


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise GstalkerUserError(f"{name}={raw!r} is not a number; set it to a positive number or unset it") from None
    if not value > 0:
        raise GstalkerUserError(f"{name}={raw!r} must be positive; set it to a positive number or unset it")
    return value


def max_upload_bytes() -> int:
    """The upload size limit: GSTALKER_VIEWER_MAX_UPLOAD_MB (megabytes, default 50)."""
    return int(_env_float(MAX_UPLOAD_ENV, DEFAULT_MAX_UPLOAD_MB) * 1e6)


def max_audio_seconds() -> float:
    """Longest stretch of an upload that is featurised (the rest is dropped with a note)."""
    return _env_float(MAX_SECONDS_ENV, DEFAULT_MAX_AUDIO_SECONDS)


def format_mb(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB"


def sanitize_filename(name: str) -> str:
    """A safe file name from a browser-supplied one: no folders, ASCII letters/digits/._- only,
    no leading dot, bounded length, suffix kept lower-case. Never empty."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base)
    base = re.sub(r"_+", "_", base).lstrip("._-")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    stem = stem.strip("._-") or "upload"
    suffix = suffix.lower()[:8]
    keep = _MAX_NAME_CHARS - (len(suffix) + 1 if suffix else 0)
    return f"{stem[:keep]}.{suffix}" if suffix else stem[:keep]


def sniff_audio_suffix(head: bytes) -> Optional[str]:
    """The audio container the first bytes belong to (one of ALLOWED_SUFFIXES), or None."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return ".wav"
    if head[:4] == b"fLaC":
        return ".flac"
    if head[:4] == b"OggS":
        return ".ogg"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return ".m4a"
    if head[:3] == b"ID3":  # an ID3 tag leads mp3 files (ffmpeg probes what follows it anyway)
        return ".mp3"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:  # MPEG audio frame sync
        return ".mp3"
    return None


def check_upload(name: str, content: bytes, max_bytes: int) -> str:
    """Validate an upload; returns the suffix to decode it as. Raises UploadError (one line)."""
    shown = sanitize_filename(name)
    suffix = Path(shown).suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        kind = f"a {suffix} file" if suffix else "a file without a type suffix"
        raise UploadError(f"{shown} is {kind}, not audio; upload a wav, mp3, flac, ogg or m4a file")
    check_size(shown, len(content), max_bytes)
    if len(content) == 0:
        raise UploadError(f"{shown} is empty; upload a file that holds audio")
    sniffed = sniff_audio_suffix(bytes(content[:4096]))
    if sniffed is None:
        raise UploadError(
            f"{shown} does not look like audio (its first bytes are no wav/mp3/flac/ogg/m4a header); "
            "upload a real audio file"
        )
    return sniffed


def check_size(shown_name: str, size_bytes: int, max_bytes: int) -> None:
    if size_bytes > max_bytes:
        raise UploadError(
            f"{shown_name} is {format_mb(size_bytes)}, over the viewer's {format_mb(max_bytes)} upload limit; "
            f"upload a shorter clip or raise {MAX_UPLOAD_ENV}"
        )


FOLDER_PREFIX = "gstalker-viewer-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_folders(parent: Path) -> None:
    """Remove upload folders left by viewers that were killed (SIGTERM/SIGKILL skip exit hooks).

    A folder is named after its process id; only folders of processes that no longer exist go.
    """
    for folder in parent.glob(f"{FOLDER_PREFIX}*-*"):
        pid_text = folder.name[len(FOLDER_PREFIX) :].split("-", 1)[0]
        if folder.is_dir() and pid_text.isdigit() and not _process_alive(int(pid_text)):
            shutil.rmtree(folder, ignore_errors=True)


class UploadStore:
    """A private temporary folder for uploads, removed when `close` is called or the process exits."""

    def __init__(self, parent: Optional[Path] = None):
        parent = Path(tempfile.gettempdir()) if parent is None else Path(parent)
        remove_stale_folders(parent)
        self.root = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=str(parent)))
        self._counter = itertools.count(1)
        # finalize also runs at interpreter exit (atexit), which covers Ctrl-C of ns-train/ns-viewer.
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), ignore_errors=True)

    def save(self, name: str, content: bytes, suffix: str) -> Path:
        """Write an upload under a sanitised, numbered name with the sniffed suffix."""
        stem = Path(sanitize_filename(name)).stem or "upload"
        path = self.root / f"{next(self._counter):03d}-{stem}{suffix}"
        with open(path, "xb") as handle:  # "x": never follow or overwrite an existing entry
            handle.write(content)
        return path

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive
