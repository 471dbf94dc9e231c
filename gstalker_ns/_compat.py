"""Work-arounds for the traps of the pinned stack (see ../shared/ENVIRONMENT.md).

Every function here is idempotent and cheap after its first call. Users never set environment
variables by hand: the plugin calls these from its import paths and the start-up hook.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Optional

_TORCHVISION_LIBRARY: Any = None  # keeps the fallback op schemas alive for the process


def ensure_torchvision_importable() -> None:
    """Make `import torchvision` work with a CPU-only torch.

    torchvision's PyPI wheel is a CUDA build; with a CPU torch its `_C.so` cannot load and its
    import dies registering fake kernels for `torchvision::nms`. When the library does not load
    we define the two op schemas it needs, so the pure-Python parts nerfstudio uses import fine.
    """
    global _TORCHVISION_LIBRARY
    if _TORCHVISION_LIBRARY is not None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    so_path = Path(spec.origin).parent / "_C.so"
    if so_path.exists():
        try:
            torch.ops.load_library(str(so_path))
            return  # the real extension works (CUDA torch): nothing to do
        except (OSError, RuntimeError):
            pass
    if _TORCHVISION_LIBRARY is not None or _has_torchvision_nms(torch):
        return  # defined meanwhile (importing torch can itself import torchvision via the hook)
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_LIBRARY = lib


def _has_torchvision_nms(torch_module: Any) -> bool:
    try:
        torch_module.ops.torchvision.nms.default
        return True
    except (AttributeError, RuntimeError):
        return False


def allow_nerfstudio_checkpoints() -> None:
    """Let torch >= 2.6 load nerfstudio 1.1.5 checkpoints (they pickle more than tensors).

    nerfstudio's own `eval_setup` calls `torch.load` without `weights_only`; our plugin is
    imported by nerfstudio's method discovery before any checkpoint loads, so setting torch's
    documented opt-out here covers ns-render, ns-viewer and ns-eval.
    """
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def local_lpips_weights() -> Optional[Path]:
    """The AlexNet weights LPIPS needs, if already in the user's torch cache; never downloads."""
    try:
        import torch

        hub_dir = Path(torch.hub.get_dir())
    except Exception:
        return None
    candidate = hub_dir / "checkpoints" / "alexnet-owt-7be5be79.pth"
    return candidate if candidate.exists() else None


def make_lpips_offline() -> None:
    """Stop torchmetrics' LPIPS from downloading AlexNet when nerfstudio models are built.

    splatfacto (and other nerfstudio models) construct LPIPS in `populate_modules`, which fetches
    AlexNet weights from the web: a URLError offline. After this patch LPIPS is the real metric
    when the weights are in the torch cache, and otherwise a stand-in that returns NaN (shown
    as unavailable) and warns once.
    """
    try:
        import torchmetrics.image as image_metrics
        import torchmetrics.image.lpip as lpip_module
    except ImportError:
        return
    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    if getattr(original, "gstalker_offline", False):
        return
    import warnings

    import torch

    class OfflineLPIPS(torch.nn.Module):
        """LPIPS when its weights are local; otherwise NaN, never a download."""

        gstalker_offline = True

        def __new__(cls, *args, **kwargs):
            if local_lpips_weights() is not None:
                return original(*args, **kwargs)
            return super().__new__(cls)

        def __init__(self, *args, **kwargs) -> None:
            super().__init__()
            warnings.warn(
                "LPIPS unavailable: its AlexNet weights are not in the torch cache and gstalker-ns never "
                f"downloads at run time (put alexnet-owt-7be5be79.pth in {torch.hub.get_dir()}/checkpoints to enable it)",
                stacklevel=2,
            )

        def forward(self, *args, **kwargs) -> "torch.Tensor":
            return torch.tensor(float("nan"))

    lpip_module.LearnedPerceptualImagePatchSimilarity = OfflineLPIPS
    image_metrics.LearnedPerceptualImagePatchSimilarity = OfflineLPIPS


def use_bundled_ffmpeg() -> None:
    """Put imageio-ffmpeg's bundled binary on PATH as `ffmpeg` when the system has none.

    nerfstudio's ns-render checks `shutil.which("ffmpeg")` and mediapy calls it by that name, so
    `ns-render ... --output-path out.mp4` would otherwise need a system install. The link lives in
    our cache folder (~/.cache/gstalker-ns/bin); the PATH change is for this process only.
    """
    import shutil

    if shutil.which("ffmpeg") is not None:
        return
    try:
        import imageio_ffmpeg

        exe = Path(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # not installed, or no binary for this platform
        return
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gstalker-ns" / "bin"
    link = folder / "ffmpeg"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (link.is_symlink() and Path(os.readlink(link)) == exe):
            tmp = folder / f".ffmpeg.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(exe)
            os.replace(tmp, link)
    except OSError:
        return
    os.environ["PATH"] = os.pathsep.join(p for p in (os.environ.get("PATH", ""), str(folder)) if p)


def apply_all() -> None:
    """Everything a gstalker entry point needs before it imports nerfstudio."""
    ensure_torchvision_importable()
    allow_nerfstudio_checkpoints()
    make_lpips_offline()
    use_bundled_ffmpeg()
    from gstalker_ns.errors import install_excepthook

    install_excepthook()
    install_ns_render_hook()


def apply_for_preprocessing() -> None:
    """What `gstalker-process` needs: it never imports nerfstudio, torchvision or torchmetrics, so
    the patches for them (and their 5-7 s of imports) are left to the entry points that do."""
    use_bundled_ffmpeg()
    from gstalker_ns.errors import install_excepthook

    install_excepthook()


def install_ns_render_hook() -> None:
    """Give nerfstudio's `ns-render` sound on our checkpoints (gstalker_ns.render.ns_render_hook).

    Patched now when its script is already loaded; otherwise the start-up guard patches it right
    after its import (`_startup.install` registers the guard, also where no .pth hook is set up).
    """
    from gstalker_ns import _startup
    from gstalker_ns.render import ns_render_hook

    if not ns_render_hook.install():
        _startup.install()
