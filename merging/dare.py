"""`dare_linear` and `dare_ties`: DARE, Drop And REscale (Yu et al., "Language Models are Super Mario:
Absorbing Abilities from Homologous Models as a Free Lunch", ICML 2024, https://arxiv.org/abs/2311.03099),
on the dense dW of each module with PEFT's definitions: keep each entry with probability `density` and
divide the kept ones by `density`, then sum (dare_linear) or TIES-elect and average (dare_ties); back to
rank k by SVD (PEFT's 'dare_linear_svd' / 'dare_ties_svd').

The drop masks come from a torch.Generator seeded with params.seed (the executor derives one seed per
module), so a merge is reproducible on the same device type; CPU and CUDA generators differ.
"""
from __future__ import annotations

import torch

from merging.lowrank import dense_deltas, dense_rank, dense_to_factors
from merging.params import Factor, MergeParams
from merging.registry import register
from merging.ties import elect_and_merge

DARE_PAPER = "https://arxiv.org/abs/2311.03099"


def drop_and_rescale_(dWs: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """dWs: [n, out, in], in place: each entry kept with probability density and scaled by 1 / density."""
    if density >= 1:
        return dWs
    g = torch.Generator(device=dWs.device).manual_seed(seed)
    for dW in dWs:  # one [out, in] mask at a time
        dW.mul_(torch.empty_like(dW).bernoulli_(density, generator=g)).div_(density)
    return dWs


@register("dare_linear", paper=DARE_PAPER, needs_rank=True, output_rank=dense_rank)
def dare_linear(factors: list[Factor], params: MergeParams) -> tuple[torch.Tensor, torch.Tensor]:
    dWs = drop_and_rescale_(dense_deltas(factors), params.density, params.seed)  # [n, out, in]
    return dense_to_factors(dWs.sum(0), params)


@register("dare_ties", paper=DARE_PAPER, needs_rank=True, output_rank=dense_rank)
def dare_ties(factors: list[Factor], params: MergeParams) -> tuple[torch.Tensor, torch.Tensor]:
    dWs = drop_and_rescale_(dense_deltas(factors), params.density, params.seed)  # [n, out, in]
    return dense_to_factors(elect_and_merge(dWs, params.majority_sign_method), params)
