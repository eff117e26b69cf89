"""`linear` / `task_arithmetic`: the weighted sum of updates dW = sum_i w_i s_i B_i A_i (task arithmetic,
Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, https://arxiv.org/abs/2212.04089),
compressed to rank k by an exact factored SVD that never forms the dense dW.

dW = Bs @ As with Bs = hstack(w_i s_i B_i): [out, R], As = vstack(A_i): [R, in], R = sum r_i. Orthonormal
bases of Bs's columns and As's rows plus the SVD of the small R x R core (merging.lowrank.factored_rank_k,
which gets the bases from Gram matrices: QR of the tall stacks is several times slower on CPU) give dW's SVD;
keeping the top k is the optimal rank-k approximation (Eckart-Young), and exact when k >= R. Unlike mergekit's `linear`, the sum
is not normalised by the weights: pass weights 1/n for an average.
"""
from __future__ import annotations

import torch

from merging.lowrank import factored_rank_k_many
from merging.params import Factor, MergeParams
from merging.registry import register


def factored_rank(ranks: list[int], out_features: int, in_features: int, params: MergeParams) -> int:
    return min(params.rank, sum(ranks), out_features, in_features)


def linear_many(modules: list[list[Factor]], params: list[MergeParams]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Several modules in one factored_rank_k_many call (their small eighs batch); the rank is the same
    for all (only the per-module seed differs, which linear does not use)."""
    stacks = [(torch.cat([f.weight * f.B for f in factors], dim=1),  # Bs: [out, R]
               torch.cat([f.A for f in factors], dim=0))             # As: [R, in]
              for factors in modules]
    return factored_rank_k_many(stacks, params[0].rank)             # [(A [k, in], B [out, k]), ...]


@register("task_arithmetic", paper="https://arxiv.org/abs/2212.04089", needs_rank=True, output_rank=factored_rank,
          many=linear_many)
@register("linear", paper="https://arxiv.org/abs/2212.04089", needs_rank=True, output_rank=factored_rank,
          many=linear_many)
def linear(factors: list[Factor], params: MergeParams) -> tuple[torch.Tensor, torch.Tensor]:
    return linear_many([factors], [params])[0]
