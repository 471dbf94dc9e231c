"""Interpreter start-up hook (imported by `gstalker_ns_startup.pth`, installed by scripts/setup.sh).

It only registers a tiny import guard: the first time anything imports `torchvision`, the guard
runs `_compat.ensure_torchvision_importable()` first. Nothing heavy is imported at start-up.
"""

import importlib.abc
import sys


class _TorchvisionGuard(importlib.abc.MetaPathFinder):
    """Runs the torchvision fix just before torchvision's first import, then steps aside."""

    def find_spec(self, fullname, path, target=None):  # noqa: D401 - importlib protocol
        if fullname == "torchvision":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                from gstalker_ns._compat import ensure_torchvision_importable

                ensure_torchvision_importable()
            except Exception as exc:  # never break the interpreter start
                print(f"gstalker-ns: torchvision start-up fix failed: {exc}", file=sys.stderr)
        return None


def install() -> None:
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionGuard())


install()
