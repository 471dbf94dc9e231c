"""Test-session set-up: the same environment fixes the CLI entry points apply."""

import gstalker_ns._compat as _compat

_compat.apply_all()
