"""`ties` and `magnitude_prune`: TIES-Merging (Yadav et al., "TIES-Merging: Resolving Interference When
Merging Models", NeurIPS 2023, https://arxiv.org/abs/2306.01708) on the dense dW of each module, with PEFT's
definitions (peft.utils.merge_utils): trim each update to its top `density` fraction by magnitude, elect a
sign per entry ('total': sign of the sum; 'frequency': sign held by most inputs), average the entries that
agree with it (divided by their count); magnitude_prune is trim + sum, with no election.
The result goes back to rank k by SVD (PEFT's 'ties_svd' / 'magnitude_prune_svd').

Weights: each update arrives already multiplied by w_i s_i, so the election sees weighted updates (as in
mergekit). PEFT elects on s_i B_i A_i and applies w_i afterwards; the two agree whenever the user weights
are equal and positive ('total') or all positive ('frequency'). Trimming is scale-free, so magnitude_prune
equals PEFT's for any weights.
"""
from __future__ import annotations

import torch

from merging.lowrank import dense_deltas, dense_rank, dense_to_factors
from merging.params import Factor, MergeParams
from merging.registry import register

TIES_PAPER = "https://arxiv.org/abs/2306.01708"


def trim_(dW: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the int(density * numel) largest |entries| of dW: [out, in], in place.

    A k-th value threshold instead of PEFT's topk (same result except at exact ties of |value|)."""
    keep = int(density * dW.numel())
    if keep >= dW.numel():
        return dW
    if keep == 0:
        return dW.zero_()
    magnitude = dW.abs().flatten()
    threshold = magnitude.kthvalue(dW.numel() - keep + 1).values
    return dW.mul_(magnitude.view_as(dW) >= threshold)


def elect_and_merge(dWs: torch.Tensor, method: str) -> torch.Tensor:
    """dWs: [n, out, in] trimmed updates -> [out, in], mean over the inputs agreeing with the elected sign."""
    signs = dWs.sign()                                                   # [n, out, in]
    votes = dWs.sum(0) if method == "total" else signs.sum(0)            # [out, in]
    elected = torch.where(votes >= 0, 1.0, -1.0).to(dWs.dtype)           # ties go to +, as in PEFT
    agree = signs == elected                                             # [n, out, in] bool
    return (dWs * agree).sum(0) / agree.sum(0).clamp(min=1)


@register("ties", paper=TIES_PAPER, needs_rank=True, output_rank=dense_rank)
def ties(factors: list[Factor], params: MergeParams) -> tuple[torch.Tensor, torch.Tensor]:
    dWs = dense_deltas(factors)  # [n, out, in]
    for dW in dWs:
        trim_(dW, params.density)
    return dense_to_factors(elect_and_merge(dWs, params.majority_sign_method), params)


@register("magnitude_prune", paper=TIES_PAPER, needs_rank=True, output_rank=dense_rank)
def magnitude_prune(factors: list[Factor], params: MergeParams) -> tuple[torch.Tensor, torch.Tensor]:
    dW = factors[0].B.new_zeros(factors[0].B.shape[0], factors[0].A.shape[1])  # [out, in]
    for f in factors:
        dW += trim_(f.weight * (f.B @ f.A), params.density)
    return dense_to_factors(dW, params)
