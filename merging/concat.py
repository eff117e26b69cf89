"""`concat`: LoRI's concatenated merge (Zhang et al., "LoRI: Reducing Cross-Task Interference in Multi-Task
Low-Rank Adaptation", COLM 2025, https://arxiv.org/abs/2504.07448); PEFT calls it combination_type='cat'.

Stacking the factors gives exactly sum_i w_i s_i B_i A_i at rank sum_i r_i; every B is copied untouched,
so LoRI-S sparsity survives and the masks can be stacked the same way.
"""
from __future__ import annotations

import torch

from merging.params import Factor, MergeParams
from merging.registry import register


def sum_of_ranks(ranks: list[int], out_features: int, in_features: int, params: MergeParams) -> int:
    return sum(ranks)


@register("concat", paper="https://arxiv.org/abs/2504.07448", needs_rank=False, output_rank=sum_of_ranks,
          stacks_b=True)
def concat(factors: list[Factor], params: MergeParams) -> tuple[torch.Tensor, torch.Tensor]:
    A = torch.cat([f.weight * f.A for f in factors], dim=0)  # [sum r_i, in]; weights go on A only
    B = torch.cat([f.B for f in factors], dim=1)             # [out, sum r_i]; B (and its zeros) unchanged
    return A, B
