"""LoRI's frozen A: regenerated deterministically, so an adapter's A can be verified from its seed.

Two ways to draw A (both [r, in], frozen during training):
- `seeded_a`: an independent random projection, distributed like PEFT's default init
  (kaiming_uniform with a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))). Adapters with different seeds are
  nearly orthogonal because random directions in high dimension are.
- `orthogonal_a`: rows [offset, offset + rank) of one fixed orthonormal basis of R^in per
  (basis_seed, module). Adapters given disjoint row ranges satisfy A_i A_j^T = 0 (up to float64 rounding),
  so their updates read disjoint input directions. The registry hands out the offsets.

Everything is generated on the CPU from a torch.Generator, so the values do not depend on the device or
the number of threads.
"""
from __future__ import annotations

import hashlib
import math

import torch

# Rows of the orthonormal basis are drawn in fixed blocks, each from its own seed, so the first k rows
# are the same whatever k is asked for (asking for more rows never changes earlier ones).
_BASIS_BLOCK_ROWS = 64


class CapacityError(ValueError):
    """A module has no room left for another orthogonal adapter of the requested rank."""


def _generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded with 64 bits of sha256 over the parts (stable across runs and machines)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little"))


def seeded_a(a_seed: int, module: str, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A: [r, in] ~ U(-1/sqrt(in), 1/sqrt(in)), a pure function of (a_seed, module, shape).

    Drawn in float32 and then cast, so seeded_a(..., dtype=bf16) == seeded_a(...).to(bf16).
    """
    r, in_features = shape
    bound = 1.0 / math.sqrt(in_features)
    g = _generator("lorifold.seeded_a", a_seed, module, r, in_features)
    a = torch.empty(r, in_features, dtype=torch.float32).uniform_(-bound, bound, generator=g)
    return a.to(dtype)


def orthogonal_capacity(in_features: int, rank: int) -> int:
    """How many rank-`rank` adapters fit side by side in the orthonormal basis of R^in_features."""
    return in_features // rank


def orthogonal_a(basis_seed: int, module: str, in_features: int, offset: int, rank: int,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A: [rank, in] = rows [offset, offset + rank) of the module's orthonormal basis, scaled like seeded_a.

    The basis is the Q of a QR factorisation of seeded Gaussian rows G: [k, in], k = offset + rank.
    Q's j-th vector depends only on G's first j rows (Gram-Schmidt order; signs fixed by diag(R) > 0),
    so any two calls agree on shared rows up to float64 rounding (~1e-15).
    """
    if offset < 0 or rank < 1:
        raise ValueError(f"orthogonal A needs offset >= 0 and rank >= 1, got offset={offset}, rank={rank}")
    k = offset + rank
    if k > in_features:
        raise CapacityError(
            f"module {module} has input size {in_features}: it holds only "
            f"{orthogonal_capacity(in_features, rank)} orthogonal adapters of rank {rank}; "
            f"{offset // rank} are allocated (rows {offset}:{k} requested)")
    blocks = []
    for b in range(math.ceil(k / _BASIS_BLOCK_ROWS)):
        rows = min(_BASIS_BLOCK_ROWS, in_features - b * _BASIS_BLOCK_ROWS)
        g = _generator("lorifold.orthogonal_a", basis_seed, module, in_features, b)
        blocks.append(torch.randn(rows, in_features, dtype=torch.float64, generator=g))
    gaussian = torch.cat(blocks)[:k]  # G: [k, in]
    q, r = torch.linalg.qr(gaussian.T)  # Q: [in, k] orthonormal columns, R: [k, k] upper triangular
    q = q * torch.sign(torch.diagonal(r))  # make the factorisation unique: diag(R) > 0
    # A row of seeded_a has expected squared norm in * (1/in) / 3 = 1/3; give the unit rows that norm.
    rows = q.T[offset:k] / math.sqrt(3.0)  # [rank, in]
    return rows.to(dtype)
