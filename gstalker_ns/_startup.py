"""Interpreter start-up hook (imported by `gstalker_ns_startup.pth`, installed by scripts/setup.sh).

It only registers two tiny import guards; nothing heavy is imported at start-up:
- the first time anything imports `torchvision`, `_compat.ensure_torchvision_importable()` runs
  first;
- right after nerfstudio's render script (`ns-render`) is imported, its audio hook is installed
  (`gstalker_ns.render.ns_render_hook`). The script imports our plugin half-way through its own
  import, too early to patch it, hence a guard that waits for its code to have run.
"""

import importlib.abc
import sys

NS_RENDER = "nerfstudio.scripts.render"


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


class _NsRenderGuard(importlib.abc.MetaPathFinder):
    """Lets nerfstudio's render script load normally, then installs our hook on it; steps aside."""

    def find_spec(self, fullname, path, target=None):  # noqa: D401 - importlib protocol
        if fullname != NS_RENDER:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            try:
                from gstalker_ns.render.ns_render_hook import install

                install(module)
            except Exception as exc:  # ns-render must still work, only without sound
                print(f"gstalker-ns: the ns-render audio hook failed: {exc}", file=sys.stderr)

        loader.exec_module = exec_module  # this module's own loader object (one per found spec)
        return spec


def install() -> None:
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionGuard())
    if NS_RENDER not in sys.modules and not any(isinstance(f, _NsRenderGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, _NsRenderGuard())


install()
