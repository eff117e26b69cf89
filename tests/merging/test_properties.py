"""Hypothesis properties over random shapes, ranks and weights: concat is exact, linear is the optimal
rank-k approximation (Eckart-Young) and exact at full rank."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging import METHODS, Factor, MergeParams

dims = st.integers(min_value=1, max_value=24)
weights = st.floats(min_value=-3, max_value=3, allow_nan=False).filter(lambda w: abs(w) > 1e-3)


@st.composite
def modules(draw):
    out, inp = draw(dims), draw(dims)
    ranks = draw(st.lists(st.integers(1, 8), min_size=1, max_size=4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    factors = [Factor(torch.randn(r, inp, generator=g, dtype=torch.float64),
                      torch.randn(out, r, generator=g, dtype=torch.float64), draw(weights)) for r in ranks]
    return factors


def dense(factors):
    return sum(f.weight * f.B @ f.A for f in factors)


@settings(max_examples=60, deadline=None)
@given(modules())
def test_concat_is_exact(factors):
    A, B = METHODS["concat"](factors, MergeParams())
    ref = dense(factors)
    assert A.shape[0] == sum(f.rank for f in factors)
    assert torch.allclose(B @ A, ref, atol=1e-10 * (1 + float(ref.abs().max())))


@settings(max_examples=60, deadline=None)
@given(modules(), st.integers(1, 40))
def test_linear_is_the_optimal_rank_k_approximation(factors, k):
    ref = dense(factors)
    A, B = METHODS["linear"](factors, MergeParams(rank=k))
    out, inp = ref.shape
    assert A.shape[0] == min(k, sum(f.rank for f in factors), out, inp)
    S = torch.linalg.svdvals(ref)
    tail = float(S[A.shape[0]:].square().sum()) ** 0.5  # Eckart-Young: the least possible error at rank k
    scale = 1 + float(S[0]) if len(S) else 1.0
    assert abs(float((ref - B @ A).norm()) - tail) < 1e-8 * scale
    if k >= sum(f.rank for f in factors):
        assert float((ref - B @ A).norm()) < 1e-8 * scale
