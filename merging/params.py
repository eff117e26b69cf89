"""The data a merge method sees: one module's factors and the merge parameters.

A merge method is a function `fn(factors: list[Factor], params: MergeParams) -> (A [k, in], B [out, k])`
over ONE adapted module; the executor folds each adapter's user weight w_i and LoRA scale s_i
(alpha / r, or alpha / sqrt(r) with rsLoRA) into `Factor.weight`, so the update of input i is
weight * B @ A and the output adapter has scale 1 (alpha = r).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

MAJORITY_SIGN_METHODS = ("total", "frequency")
SVD_MODES = ("exact", "randomized")


@dataclass(frozen=True)
class Factor:
    A: torch.Tensor  # [r_i, in]
    B: torch.Tensor  # [out, r_i]
    weight: float    # w_i * s_i: user weight times the adapter's LoRA scale for this module

    @property
    def rank(self) -> int:
        return self.A.shape[0]


@dataclass(frozen=True)
class MergeParams:
    """Validated on construction; every bad value raises ValueError saying what is allowed.

    rank: target rank k of the rank-targeted methods (None for concat / peft_linear, whose rank follows
          from the inputs). For `linear`, k >= sum of input ranks is exact.
    density: fraction of entries kept by ties / dare_* / magnitude_prune, in (0, 1]; 1.0 (mergekit's default)
          keeps everything.
    majority_sign_method: TIES sign election, 'total' (sign of the summed updates) or 'frequency'
          (sign held by most inputs), as in PEFT.
    seed: DARE's random drop masks; the executor derives one stream per module from it.
    svd: how the dense methods return to rank k: 'exact' (torch.linalg.svd) or 'randomized'
          (torch.svd_lowrank, Halko et al. 2011, q = k + 8, 2 power iterations).
    """
    rank: int | None = None
    density: float = 1.0
    majority_sign_method: str = "total"
    seed: int = 0
    svd: str = "exact"

    def __post_init__(self):
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"rank must be a positive integer or None, got {self.rank!r}")
        if isinstance(self.density, bool) or not isinstance(self.density, (int, float)) or not 0 < self.density <= 1:
            raise ValueError(f"density must be a number in (0, 1] (fraction of entries kept), got {self.density!r}")
        if self.majority_sign_method not in MAJORITY_SIGN_METHODS:
            raise ValueError(
                f"majority_sign_method must be one of {', '.join(MAJORITY_SIGN_METHODS)}, got {self.majority_sign_method!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.svd not in SVD_MODES:
            raise ValueError(f"svd must be one of {', '.join(SVD_MODES)}, got {self.svd!r}")

    def as_dict(self) -> dict:
        return asdict(self)
