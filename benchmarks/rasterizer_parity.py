"""Parity and speed of the dense torch rasterizer against gsplat 1.4.0's CUDA rasterizer.

Why: the model trains through `gstalker_ns.splatting.rasterize`, which uses gsplat on CUDA and
the dense torch path on CPU; results must mean the same on both. This script renders the
same deterministic scenes with both backends on one CUDA device, backpropagates the same
loss, and reports how far images, alphas, depths and gradients differ, plus timings.

Usage (repo root, PYTHONPATH including the repo):
    python benchmarks/rasterizer_parity.py                      # CUDA: gsplat vs torch
    python benchmarks/rasterizer_parity.py --device cpu --small  # CPU sanity run, torch only

JSON goes to --output (default $OUT/rasterizer_parity.json when $OUT is set).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gstalker_ns.splatting import rasterize  # noqa: E402

PARAM_NAMES = ("means", "quats", "scales", "opacities", "colors")


@dataclass
class SceneConfig:
    """A deterministic random scene and the rasterization options it is rendered with."""

    name: str
    n_gaussians: int
    width: int
    height: int
    sh_degree: Optional[int] = None
    render_mode: str = "RGB+ED"
    rasterize_mode: str = "classic"
    with_background: bool = False
    absgrad: bool = False
    seed: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


def build_scene(config: SceneConfig, device: torch.device) -> Dict[str, Tensor]:
    """Gaussians spread through the camera frustum at depths 2-6 with 1-10 px footprints.

    Generated on CPU with a seeded generator so every device and backend sees the same
    numbers.
    """
    generator = torch.Generator().manual_seed(config.seed)
    n = config.n_gaussians
    focal = 0.8 * config.width
    depth = 2.0 + 4.0 * torch.rand(n, generator=generator)
    half_extent_x = 1.1 * (0.5 * config.width / focal) * depth
    half_extent_y = 1.1 * (0.5 * config.height / focal) * depth
    means = torch.stack(
        [
            (2 * torch.rand(n, generator=generator) - 1) * half_extent_x,
            (2 * torch.rand(n, generator=generator) - 1) * half_extent_y,
            depth,
        ],
        dim=-1,
    )
    log_scales = math.log(0.004) + (math.log(0.04) - math.log(0.004)) * torch.rand(n, 3, generator=generator)
    quats = torch.randn(n, 4, generator=generator)
    opacities = torch.sigmoid(torch.randn(n, generator=generator) + 0.5)
    if config.sh_degree is None:
        colors = torch.rand(n, 3, generator=generator)
    else:
        n_bases = (config.sh_degree + 1) ** 2
        colors = 0.1 * torch.randn(n, n_bases, 3, generator=generator)
        colors[:, 0] = 0.8 * torch.randn(n, 3, generator=generator)
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[focal, 0.0, config.width / 2], [0.0, focal, config.height / 2], [0.0, 0.0, 1.0]]])
    channels = 3 + (1 if "D" in config.render_mode else 0)
    loss_weights = torch.randn(1, config.height, config.width, channels, generator=generator)
    alpha_weights = torch.randn(1, config.height, config.width, 1, generator=generator)
    scene = {
        "means": means,
        "quats": quats,
        "scales": torch.exp(log_scales),
        "opacities": opacities,
        "colors": colors,
        "viewmats": viewmats,
        "Ks": Ks,
        "loss_weights": loss_weights,
        "alpha_weights": alpha_weights,
        "backgrounds": torch.tensor([[0.1, 0.3, 0.6]]),
    }
    return {name: tensor.to(device) for name, tensor in scene.items()}


@dataclass
class RenderResult:
    """Everything compared between backends for one scene."""

    image: Tensor
    alpha: Tensor
    depth: Optional[Tensor]
    radii: Tensor
    grads: Dict[str, Tensor]
    forward_ms: float
    forward_backward_ms: float


def synchronize(device: torch.device) -> None:
    """Make wall-clock timings cover the GPU work, not just the kernel launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_once(config: SceneConfig, scene: Dict[str, Tensor], backend: str, pixel_chunk: Optional[int]):
    """One forward and backward pass; returns outputs, parameters, info and the two timings."""
    device = scene["means"].device
    params = {name: scene[name].detach().clone().requires_grad_() for name in PARAM_NAMES}
    kwargs: Dict[str, Any] = dict(
        viewmats=scene["viewmats"],
        Ks=scene["Ks"],
        width=config.width,
        height=config.height,
        sh_degree=config.sh_degree,
        render_mode=config.render_mode,
        rasterize_mode=config.rasterize_mode,
        absgrad=config.absgrad,
        packed=False,
        backgrounds=scene["backgrounds"] if config.with_background else None,
        **config.extra,
    )
    if backend == "torch" and pixel_chunk is not None:
        kwargs["pixel_chunk"] = pixel_chunk
    synchronize(device)
    start = time.perf_counter()
    colors, alphas, info = rasterize(backend=backend, **params, **kwargs)
    synchronize(device)
    forward_done = time.perf_counter()
    info["means2d"].retain_grad()
    loss = (colors * scene["loss_weights"]).sum() + (alphas * scene["alpha_weights"]).sum()
    loss.backward()
    synchronize(device)
    end = time.perf_counter()
    return colors, alphas, info, params, 1e3 * (forward_done - start), 1e3 * (end - start)


def run_backend(
    config: SceneConfig, scene: Dict[str, Tensor], backend: str, repeats: int, pixel_chunk: Optional[int]
) -> RenderResult:
    """Warm up once, then time `repeats` passes (median) and keep the last pass's outputs."""
    render_once(config, scene, backend, pixel_chunk)
    forward_times: List[float] = []
    total_times: List[float] = []
    for _ in range(repeats):
        colors, alphas, info, params, forward_ms, total_ms = render_once(config, scene, backend, pixel_chunk)
        forward_times.append(forward_ms)
        total_times.append(total_ms)
    grads = {name: params[name].grad.detach() for name in PARAM_NAMES}
    grads["means2d"] = info["means2d"].grad.detach()
    if config.absgrad:
        grads["means2d_absgrad"] = info["means2d"].absgrad.detach()
    has_depth = "D" in config.render_mode
    return RenderResult(
        image=colors[..., :3].detach() if config.render_mode.startswith("RGB") else colors.detach(),
        alpha=alphas.detach(),
        depth=colors[..., -1:].detach() if has_depth else None,
        radii=info["radii"].detach(),
        grads=grads,
        forward_ms=statistics.median(forward_times),
        forward_backward_ms=statistics.median(total_times),
    )


def difference(reference: Tensor, candidate: Tensor, mask: Optional[Tensor] = None) -> Dict[str, float]:
    """Absolute differences, and the same relative to the reference's own magnitude."""
    reference, candidate = reference.double(), candidate.double()
    if mask is not None:
        reference, candidate = reference[mask], candidate[mask]
    if reference.numel() == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0, "ref_max_abs": 0.0, "ref_mean_abs": 0.0}
    diff = (reference - candidate).abs()
    ref_max, ref_mean = reference.abs().max().item(), reference.abs().mean().item()
    flat_ref, flat_cand = reference.flatten(), candidate.flatten()
    cosine = torch.nn.functional.cosine_similarity(flat_ref, flat_cand, dim=0).item()
    return {
        "max_abs": diff.max().item(),
        "mean_abs": diff.mean().item(),
        "ref_max_abs": ref_max,
        "ref_mean_abs": ref_mean,
        "max_rel_to_ref_max": diff.max().item() / ref_max if ref_max > 0 else 0.0,
        "mean_rel_to_ref_mean": diff.mean().item() / ref_mean if ref_mean > 0 else 0.0,
        "cosine": cosine,
    }


def compare(reference: RenderResult, candidate: RenderResult) -> Dict[str, Dict[str, float]]:
    """Per-quantity differences of torch (candidate) against gsplat (reference)."""
    both_visible = (reference.radii > 0) & (candidate.radii > 0)  # [C, N]
    report = {
        "image": difference(reference.image, candidate.image),
        "alpha": difference(reference.alpha, candidate.alpha),
        "radii": {
            "fraction_equal": (reference.radii == candidate.radii).double().mean().item(),
            "max_abs": (reference.radii - candidate.radii).abs().max().item(),
        },
    }
    if reference.depth is not None:
        report["depth"] = difference(reference.depth, candidate.depth)
    for name, grad in reference.grads.items():
        mask = both_visible if name.startswith("means2d") else None
        report[f"grad_{name}"] = difference(grad, candidate.grads[name], mask)
    return report


def sanity(result: RenderResult) -> Dict[str, Any]:
    """Checks for a torch-only run: finite outputs and gradients, alphas within [0, 1]."""
    return {
        "finite": bool(torch.isfinite(result.image).all() and torch.isfinite(result.alpha).all()),
        "alpha_min": result.alpha.min().item(),
        "alpha_max": result.alpha.max().item(),
        "visible": int((result.radii > 0).sum().item()),
        "grads_finite": {name: bool(torch.isfinite(grad).all()) for name, grad in result.grads.items()},
        "grads_abs_mean": {name: grad.abs().mean().item() for name, grad in result.grads.items()},
    }


def scene_configs(small: bool) -> List[SceneConfig]:
    """The benchmark scenes: SH degree 3 at 20k Gaussians, and a 2k one with more options."""
    if small:
        return [
            SceneConfig("sh3_1k_64", 1000, 64, 64, sh_degree=3, seed=1),
            SceneConfig(
                "rgb_500_64_aa_bg_absgrad", 500, 64, 48, rasterize_mode="antialiased",
                with_background=True, absgrad=True, seed=2,
            ),  # fmt: skip
        ]
    return [
        SceneConfig("sh3_20k_512", 20_000, 512, 512, sh_degree=3, seed=1),
        SceneConfig(
            "rgb_2k_512_aa_bg_absgrad", 2_000, 512, 512, rasterize_mode="antialiased",
            with_background=True, absgrad=True, seed=2,
        ),  # fmt: skip
    ]


def format_table(results: Dict[str, Any]) -> str:
    """Human-readable summary: one row per compared quantity, then timings."""
    lines: List[str] = []
    for scene_name, scene in results["scenes"].items():
        lines.append(f"\n== {scene_name} ({scene['config']['n_gaussians']} Gaussians, "
                     f"{scene['config']['width']}x{scene['config']['height']})")  # fmt: skip
        if "diffs" in scene:
            lines.append(f"{'quantity':<22}{'max abs':>12}{'mean abs':>12}{'ref max':>12}{'max/refmax':>12}"
                         f"{'mean/refmean':>14}{'cosine':>10}")  # fmt: skip
            for quantity, stats in scene["diffs"].items():
                if quantity == "radii":
                    lines.append(f"{'radii':<22}  equal fraction {stats['fraction_equal']:.6f}, "
                                 f"max abs {stats['max_abs']}")  # fmt: skip
                    continue
                lines.append(
                    f"{quantity:<22}{stats['max_abs']:>12.3e}{stats['mean_abs']:>12.3e}"
                    f"{stats['ref_max_abs']:>12.3e}{stats.get('max_rel_to_ref_max', 0):>12.3e}"
                    f"{stats.get('mean_rel_to_ref_mean', 0):>14.3e}{stats.get('cosine', 1):>10.6f}"
                )
        if "sanity" in scene:
            lines.append(f"sanity: {json.dumps(scene['sanity'])}")
        for backend, timing in scene["timings"].items():
            lines.append(f"{backend:<8} forward {timing['forward_ms']:9.2f} ms   "
                         f"forward+backward {timing['forward_backward_ms']:9.2f} ms")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (gsplat vs torch) or cpu (torch only)")
    parser.add_argument("--small", action="store_true", help="tiny scenes (64x64, <= 1k Gaussians)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per backend (median)")
    parser.add_argument("--pixel-chunk", type=int, default=None, help="torch backend block size in pixels")
    parser.add_argument("--torch-only", action="store_true", help="skip gsplat even on CUDA")
    default_output = os.path.join(os.environ["OUT"], "rasterizer_parity.json") if os.environ.get("OUT") else None
    parser.add_argument("--output", default=default_output, help="JSON output path")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; use --device cpu --small for a torch-only sanity run")
    with_gsplat = device.type == "cuda" and not args.torch_only
    results: Dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pixel_chunk": args.pixel_chunk,
        "repeats": args.repeats,
        "scenes": {},
    }
    if with_gsplat:
        import gsplat

        results["gsplat_version"] = gsplat.__version__
    for config in scene_configs(args.small):
        scene = build_scene(config, device)
        entry: Dict[str, Any] = {"config": asdict(config), "timings": {}}
        torch_result = run_backend(config, scene, "torch", args.repeats, args.pixel_chunk)
        entry["timings"]["torch"] = {
            "forward_ms": torch_result.forward_ms,
            "forward_backward_ms": torch_result.forward_backward_ms,
        }
        if device.type == "cuda":
            entry["timings"]["torch"]["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        if with_gsplat:
            gsplat_result = run_backend(config, scene, "gsplat", args.repeats, None)
            entry["timings"]["gsplat"] = {
                "forward_ms": gsplat_result.forward_ms,
                "forward_backward_ms": gsplat_result.forward_backward_ms,
                "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            }
            entry["diffs"] = compare(gsplat_result, torch_result)
        else:
            entry["sanity"] = sanity(torch_result)
        results["scenes"][config.name] = entry
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(format_table(results))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"\nwrote {args.output}")
    return results


if __name__ == "__main__":
    main()
