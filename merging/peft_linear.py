"""`peft_linear`: the factor-space average that PEFT (add_weighted_adapter(combination_type='linear'),
https://huggingface.co/docs/peft/developer_guides/model_merging) and LoRAX call "linear".

With c_i = w_i s_i: A = sum_i sign(c_i) sqrt|c_i| A_i and B = sum_i sqrt|c_i| B_i, so
B @ A = sum_i c_i B_i A_i + sum_{i != j} sign(c_j) sqrt|c_i c_j| B_i A_j: the cross terms B_i A_j mix one
adapter's output map with another's input map. It is NOT the average of the updates (use `linear` for that);
it is kept for compatibility and comparison. PEFT requires equal ranks; here smaller factors are zero-padded
to the largest rank (a padded row/column adds nothing).
"""
from __future__ import annotations

import math

import torch

from merging.params import Factor, MergeParams
from merging.registry import register


def max_rank(ranks: list[int], out_features: int, in_features: int, params: MergeParams) -> int:
    return max(ranks)


@register("peft_linear", paper="https://huggingface.co/docs/peft/developer_guides/model_merging",
          needs_rank=False, output_rank=max_rank)
def peft_linear(factors: list[Factor], params: MergeParams) -> tuple[torch.Tensor, torch.Tensor]:
    r = max(f.rank for f in factors)
    A = factors[0].A.new_zeros(r, factors[0].A.shape[1])  # [r, in]
    B = factors[0].B.new_zeros(factors[0].B.shape[0], r)  # [out, r]
    for f in factors:
        root = math.sqrt(abs(f.weight))
        A[: f.rank] += math.copysign(root, f.weight) * f.A  # sign on A only, as PEFT does
        B[:, : f.rank] += root * f.B
    return A, B
