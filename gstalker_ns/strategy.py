"""Densification with a hard cap on the Gaussian count.

gsplat's DefaultStrategy grows without bound (a random-initialised small scene reached 124 GiB on
an H200), and nerfstudio's splatfacto pauses refinement for `num_train_data` steps after each
opacity reset, which with thousands of video frames means it never refines. This strategy keeps
gsplat's rules but: (1) when growth would exceed `max_gaussians`, only the candidates with the
largest accumulated gradient are grown; (2) the pause after reset is a small fixed number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple, Union

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import duplicate, split


def growth_budget_mask(candidates: torch.Tensor, scores: torch.Tensor, cost: torch.Tensor, budget: int) -> torch.Tensor:
    """Keep the highest-scoring candidates whose summed `cost` (new Gaussians each adds) fits `budget`."""
    if budget <= 0:
        return torch.zeros_like(candidates)
    if int(cost[candidates].sum().item()) <= budget:
        return candidates
    order = torch.argsort(torch.where(candidates, scores, torch.full_like(scores, -1.0)), descending=True)
    cumulative = torch.cumsum(cost[order] * candidates[order], dim=0)
    keep_sorted = candidates[order] & (cumulative <= budget)
    keep = torch.zeros_like(candidates)
    keep[order] = keep_sorted
    return keep


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy with a hard Gaussian budget."""

    max_gaussians: int = 200_000

    @torch.no_grad()
    def _grow_gs(
        self,
        params: Union[Dict[str, torch.nn.Parameter], torch.nn.ParameterDict],
        optimizers: Dict[str, torch.optim.Optimizer],
        state: Dict[str, Any],
        step: int,
    ) -> Tuple[int, int]:
        count = state["count"]
        grads = state["grad2d"] / count.clamp_min(1)
        device = grads.device

        is_grad_high = grads > self.grow_grad2d
        is_small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        is_dupli = is_grad_high & is_small
        is_split = is_grad_high & ~is_small
        if step < self.refine_scale2d_stop_iter:
            is_split |= state["radii"] > self.grow_scale2d

        # Each duplicate adds one Gaussian and each split replaces one by two: both cost one.
        budget = self.max_gaussians - len(params["means"])
        keep = growth_budget_mask(is_dupli | is_split, grads, torch.ones_like(grads), budget)
        is_dupli &= keep
        is_split &= keep
        n_dupli = int(is_dupli.sum().item())
        n_split = int(is_split.sum().item())

        if n_dupli > 0:
            duplicate(params=params, optimizers=optimizers, state=state, mask=is_dupli)
        is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=device)])
        if n_split > 0:
            split(params=params, optimizers=optimizers, state=state, mask=is_split, revised_opacity=self.revised_opacity)
        return n_dupli, n_split
