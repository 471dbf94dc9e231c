"""The base class of errors a user can fix (bad input, missing files), and how they are shown.

Such errors carry a one-line message that says what is wrong and what to do. At the top of a
process (ns-train, ns-render, our CLIs) they are printed as that line, without a traceback.
"""

from __future__ import annotations

import sys


class GstalkerUserError(Exception):
    """An error caused by the user's input; its message is one line: what is wrong, what to do."""


def install_excepthook() -> None:
    """Print uncaught GstalkerUserErrors as one line (exit status 1); leave others untouched."""
    previous = sys.excepthook
    if getattr(previous, "gstalker_hook", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, GstalkerUserError):
            print(f"error: {exc}", file=sys.stderr)
            return
        previous(exc_type, exc, tb)

    hook.gstalker_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
