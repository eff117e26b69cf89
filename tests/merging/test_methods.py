"""Each merge method against a dense float64 reference on random factors (no files, no model)."""
from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils

from merging import METHODS, Factor, MergeParams
from merging.dare import drop_and_rescale_
from merging.ties import trim_


def make_factors(ranks, out=24, inp=20, weights=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    weights = weights or [1.0 + 0.5 * i for i in range(len(ranks))]
    return [Factor(torch.randn(r, inp, generator=g, dtype=dtype), torch.randn(out, r, generator=g, dtype=dtype), w)
            for r, w in zip(ranks, weights)]


def dense(factors) -> torch.Tensor:
    """sum_i weight_i B_i A_i in float64: [out, in]."""
    return sum(f.weight * (f.B.double() @ f.A.double()) for f in factors)


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def product(A, B) -> torch.Tensor:
    return B.double() @ A.double()


def test_concat_is_exact_and_keeps_b():
    factors = make_factors([3, 5, 2], weights=[0.7, -1.3, 2.0])
    A, B = METHODS["concat"](factors, MergeParams())
    assert A.shape == (10, 20) and B.shape == (24, 10)
    assert rel(product(A, B), dense(factors)) < 1e-6
    assert torch.equal(B, torch.cat([f.B for f in factors], dim=1))  # B untouched: LoRI sparsity survives


@pytest.mark.parametrize("name", ["linear", "task_arithmetic"])
def test_linear_full_rank_is_exact(name):
    factors = make_factors([3, 5, 2], weights=[0.7, -1.3, 2.0])
    A, B = METHODS[name](factors, MergeParams(rank=10))
    assert A.shape == (10, 20) and B.shape == (24, 10)
    assert rel(product(A, B), dense(factors)) < 1e-5


def test_linear_truncated_is_best_rank_k():
    factors = make_factors([4, 4, 4], weights=[1.0, 0.5, -0.8], dtype=torch.float64)
    ref = dense(factors)
    U, S, Vh = torch.linalg.svd(ref, full_matrices=False)
    for k in (1, 3, 7):
        A, B = METHODS["linear"](factors, MergeParams(rank=k))
        assert A.shape == (k, 20) and B.shape == (24, k)
        best = U[:, :k] @ torch.diag(S[:k]) @ Vh[:k]
        assert rel(product(A, B), best) < 1e-10
        # balanced split: B = U S^1/2, A = S^1/2 V^T
        assert torch.allclose(B.norm(dim=0), A.norm(dim=1))


def test_linear_is_exact_on_degenerate_inputs():
    """Rank-deficient stacks (a duplicate adapter, a zero B, tiny weights) and ill-conditioned factors."""
    base = make_factors([4, 3], weights=[1.0, -0.7])
    g = torch.Generator().manual_seed(5)
    skewed = Factor(torch.randn(4, 20, generator=g) * torch.logspace(0, -5, 4)[:, None], torch.randn(24, 4, generator=g),
                    2.0)
    cases = {
        "duplicate": base + [base[0]],
        "zero_b": base + [Factor(base[0].A, torch.zeros(24, 4), 1.0)],
        "tiny_weight": base + [Factor(base[1].A * 3, base[1].B, 1e-6)],
        "ill_conditioned": base + [skewed],
    }
    for name, factors in cases.items():
        R = sum(f.rank for f in factors)
        A, B = METHODS["linear"](factors, MergeParams(rank=R))
        assert A.shape == (R, 20) and B.shape == (24, R), name
        assert rel(product(A, B), dense(factors)) < 1e-5, name
    A, B = METHODS["linear"]([Factor(torch.randn(4, 20), torch.zeros(24, 4), 1.0)], MergeParams(rank=4))
    assert not A.any() and not B.any()  # a zero update merges to zero factors, not NaN


def test_linear_handles_shapes_smaller_than_the_rank():
    factors = make_factors([6, 6], out=4, inp=5)  # R = 12 > min(out, in) = 4
    A, B = METHODS["linear"](factors, MergeParams(rank=32))
    assert A.shape == (4, 5) and B.shape == (4, 4)
    assert rel(product(A, B), dense(factors)) < 1e-5


def peft_reference(fn, factors, **kwargs) -> torch.Tensor:
    """PEFT's merge_utils on the weighted dense updates with unit weights (weights are folded here)."""
    tensors = [f.weight * (f.B.double() @ f.A.double()) for f in factors]
    return fn(tensors, torch.ones(len(tensors), dtype=torch.float64), **kwargs)


@pytest.mark.filterwarnings("ignore:The density .* no pruning will be performed")
@pytest.mark.parametrize("sign_method", ["total", "frequency"])
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_ties_matches_peft_definition(sign_method, density):
    factors = make_factors([3, 5, 2], dtype=torch.float64)
    params = MergeParams(rank=20, density=density, majority_sign_method=sign_method)
    A, B = METHODS["ties"](factors, params)
    ref = peft_reference(merge_utils.ties, factors, density=density, majority_sign_method=sign_method)
    assert rel(product(A, B), ref) < 1e-10


def test_magnitude_prune_matches_peft_definition():
    factors = make_factors([3, 5], weights=[0.4, -2.0], dtype=torch.float64)
    A, B = METHODS["magnitude_prune"](factors, MergeParams(rank=20, density=0.25))
    ref = peft_reference(merge_utils.magnitude_prune, factors, density=0.25)
    assert rel(product(A, B), ref) < 1e-10


def test_trim_keeps_the_top_fraction():
    x = torch.arange(1.0, 101.0).reshape(10, 10) * torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0).reshape(10, 10)
    kept = trim_(x.clone(), 0.2)
    assert int((kept != 0).sum()) == 20
    assert set(kept[kept != 0].abs().tolist()) == set(range(81, 101))
    assert torch.equal(trim_(x.clone(), 1.0), x)
    assert int((trim_(x.clone(), 0.001) != 0).sum()) == 0  # int(0.1) = 0 entries kept, like PEFT


def test_dare_matches_reference_with_the_same_masks():
    factors = make_factors([3, 5], dtype=torch.float64)
    params = MergeParams(rank=20, density=0.4, seed=123)
    dWs = torch.stack([f.weight * (f.B @ f.A) for f in factors])
    g = torch.Generator().manual_seed(123)
    masks = [torch.empty_like(d).bernoulli_(0.4, generator=g) for d in dWs]
    dropped = torch.stack([d * m / 0.4 for d, m in zip(dWs, masks)])
    A, B = METHODS["dare_linear"](factors, params)
    assert rel(product(A, B), dropped.sum(0)) < 1e-10
    A, B = METHODS["dare_ties"](factors, params)
    ref = merge_utils.disjoint_merge(dropped, merge_utils.calculate_majority_sign_mask(dropped, "total"))
    assert rel(product(A, B), ref) < 1e-10
    kept = torch.stack(masks).mean()
    assert 0.3 < float(kept) < 0.5


def test_dare_is_seeded_and_unbiased():
    dWs = torch.ones(1, 200, 200)
    a = drop_and_rescale_(dWs.clone(), 0.5, seed=7)
    assert torch.equal(a, drop_and_rescale_(dWs.clone(), 0.5, seed=7))
    assert not torch.equal(a, drop_and_rescale_(dWs.clone(), 0.5, seed=8))
    assert set(a.unique().tolist()) == {0.0, 2.0} and abs(float(a.mean()) - 1.0) < 0.05


def test_dare_at_full_density_is_linear():
    factors = make_factors([3, 5], dtype=torch.float64)
    A, B = METHODS["dare_linear"](factors, MergeParams(rank=20, density=1.0))
    assert rel(product(A, B), dense(factors)) < 1e-10


def test_peft_linear_has_cross_terms():
    factors = make_factors([4, 4], weights=[0.6, -0.3], dtype=torch.float64)
    A, B = METHODS["peft_linear"](factors, MergeParams())
    c = [f.weight for f in factors]
    A_ref = sum(torch.sign(torch.tensor(w)) * abs(w) ** 0.5 * f.A for w, f in zip(c, factors))
    B_ref = sum(abs(w) ** 0.5 * f.B for w, f in zip(c, factors))
    assert torch.allclose(A, A_ref) and torch.allclose(B, B_ref)
    assert rel(product(A, B), dense(factors)) > 0.1  # not the sum of the updates


def test_peft_linear_pads_smaller_ranks():
    factors = make_factors([2, 5], dtype=torch.float64)
    A, B = METHODS["peft_linear"](factors, MergeParams())
    assert A.shape == (5, 20) and B.shape == (24, 5)
    padded = [Factor(torch.cat([f.A, f.A.new_zeros(5 - f.rank, 20)]), torch.cat([f.B, f.B.new_zeros(24, 5 - f.rank)], 1),
                     f.weight) for f in factors]
    A2, B2 = METHODS["peft_linear"](padded, MergeParams())
    assert torch.allclose(A, A2) and torch.allclose(B, B2)


def test_randomized_svd_recovers_a_low_rank_update():
    factors = make_factors([3, 3], out=300, inp=200)  # dW has rank 6
    exact = dense(factors)
    for name in ("magnitude_prune", "dare_linear"):
        A, B = METHODS[name](factors, MergeParams(rank=6, svd="randomized", seed=3))
        assert A.shape == (6, 200) and B.shape == (300, 6)
        assert rel(product(A, B), exact) < 1e-4


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("ranks,out,inp", [([3, 5], 24, 20), ([2], 7, 30), ([6, 6, 6], 9, 8)])
def test_rank_rule_matches_returned_shapes(name, ranks, out, inp):
    method = METHODS[name]
    params = MergeParams(rank=10 if method.needs_rank else None, density=0.5)
    A, B = method(make_factors(ranks, out=out, inp=inp), params)
    k = method.output_rank(ranks, out, inp, params)
    assert A.shape == (k, inp) and B.shape == (out, k)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_keep_float32_and_are_deterministic(name):
    method = METHODS[name]
    params = MergeParams(rank=4 if method.needs_rank else None, density=0.5, seed=1)
    factors = make_factors([3, 5])
    A, B = method(factors, params)
    A2, B2 = method(factors, params)
    assert A.dtype == B.dtype == torch.float32
    assert torch.equal(A, A2) and torch.equal(B, B2)


def test_linear_many_equals_one_module_at_a_time():
    """The batched form (one batched eigh over all modules, threads over chunks) gives each module exactly
    what the single-module call gives, also for mixed ranks and shapes in one batch."""
    from merging.lowrank import MIN_CHUNK

    modules = [make_factors([3, 5], out=24 + i, inp=20 - i % 3, seed=i) for i in range(4 * MIN_CHUNK)]
    modules += [make_factors([2, 2], seed=99), make_factors([6, 6], out=4, inp=5, seed=98)]
    params = [MergeParams(rank=5)] * len(modules)
    threads = torch.get_num_threads()
    batched = METHODS["linear"].many(modules, params)
    assert torch.get_num_threads() == threads  # the solve's threads hand the intra-op setting back
    for factors, (A, B) in zip(modules, batched, strict=True):
        A1, B1 = METHODS["linear"](factors, params[0])
        assert A.shape == A1.shape and B.shape == B1.shape
        assert torch.allclose(A, A1, atol=1e-5) and torch.allclose(B, B1, atol=1e-5)
    for factors, (A, B) in zip(modules, batched):
        U, S, Vh = torch.linalg.svd(dense(factors), full_matrices=False)
        k = A.shape[0]
        assert rel(product(A, B), U[:, :k] @ torch.diag(S[:k]) @ Vh[:k]) < 1e-5


def test_threaded_core_solve_equals_serial(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from merging import lowrank
    from merging.lowrank import _solve_core_chunk, _solve_cores

    pools = []  # the threaded branch must run whatever this machine's CPU count

    def counted_pool(*args, **kwargs):
        pools.append(args[0])
        return ThreadPoolExecutor(*args, **kwargs)

    monkeypatch.setattr(lowrank.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(lowrank, "ThreadPoolExecutor", counted_pool)
    threads = torch.get_num_threads()

    g = torch.Generator().manual_seed(3)
    X = torch.randn(24, 12, 30, generator=g, dtype=torch.float64)
    Y = torch.randn(24, 12, 40, generator=g, dtype=torch.float64)
    G_B, G_A = X @ X.mT, Y @ Y.mT
    to_B, to_A = _solve_cores(G_B, G_A, 7)
    assert pools == [4] and torch.get_num_threads() == threads  # 4 threads, intra-op setting handed back
    ref_B, ref_A = _solve_core_chunk(G_B, G_A, 7)
    assert torch.allclose(to_B, ref_B, atol=1e-12) and torch.allclose(to_A, ref_A, atol=1e-12)
