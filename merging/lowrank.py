"""Low-rank helpers shared by the method families: SVDs and the split of U S V^T into LoRA factors.

Split convention (all methods): B = U_k S_k^(1/2), A = S_k^(1/2) V_k^T, so B @ A = U_k S_k V_k^T and both
factors carry the same norm (better conditioned in bf16/fp16 and for further training than PEFT's
B = U S, A = V^T; the product is identical).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch


def split_svd(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U: [out, k], S: [k], Vh: [k, in] -> (A [k, in], B [out, k]) with B @ A = U diag(S) Vh."""
    root = S.clamp(min=0).sqrt()
    return root[:, None] * Vh, U * root[None, :]


def factored_rank_k(Bs: torch.Tensor, As: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-k approximation of Bs @ As, never formed. Bs: [out, R], As: [R, in] -> (A [m, in], B [out, m]),
    m = min(k, out, in, R); exact when k >= R. Directions with zero singular value come out as zero rows/cols.

    Only R x R problems are decomposed (float64, on the CPU: tiny, and the same on every device):
      G_B = Bs^T Bs = V diag(lam) V^T, so Bs = Q L^T with Q = Bs V lam^-1/2 orthonormal [out, p] and
      L = V lam^1/2 [R, p] (p = directions of Bs above the float64 noise floor, dropping < 1e-7 of its norm);
      then Bs @ As = Q (L^T As) and (L^T As)(L^T As)^T = L^T G_A L = W diag(S^2) W^T [p, p], G_A = As As^T,
      so Bs @ As = (Q W) S (S^-1 W^T L^T As) is its SVD. The big work is four tall-skinny matmuls: the two
      Gram matrices (float64, as they square the condition number) and the two final products.
    """
    return factored_rank_k_many([(Bs, As)], k)[0]


def factored_rank_k_many(stacks: list[tuple[torch.Tensor, torch.Tensor]],
                         k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """factored_rank_k of many modules at once: [(Bs [out, R], As [R, in]), ...] -> [(A, B), ...].

    Per module, each R x R problem costs two float64 eighs of ~1-2 ms on the CPU, which is most of a merge
    when done one module at a time (and a GPU eigh is no faster at this size). So the Gram matrices of all
    modules go to the CPU in one copy, the eighs run batched, split over threads, and the small results
    come back in one copy; only the Gram and final products touch the factors, on their own device.
    Dropped directions are zeroed rather than cut, so every problem keeps its R x R shape and batches.
    """
    results: list = [None] * len(stacks)
    groups: dict[tuple[int, int], list[int]] = {}  # (R, m) -> module indices; one batched solve each
    for i, (Bs, As) in enumerate(stacks):
        R = Bs.shape[1]
        groups.setdefault((R, min(k, Bs.shape[0], As.shape[1], R)), []).append(i)
    for (R, m), members in groups.items():
        grams_B, grams_A = [], []
        for i in members:
            Bs64, As64 = stacks[i][0].double(), stacks[i][1].double()
            grams_B.append(Bs64.T @ Bs64)
            grams_A.append(As64 @ As64.T)
            del Bs64, As64
        to_B, to_A = _solve_cores(torch.stack(grams_B).cpu(), torch.stack(grams_A).cpu(), m)
        device = stacks[members[0]][0].device
        to_B, to_A = to_B.to(device), to_A.to(device)  # [N, R, m], [N, m, R]
        for j, i in enumerate(members):
            Bs, As = stacks[i]
            results[i] = (to_A[j].to(As.dtype) @ As, Bs @ to_B[j].to(Bs.dtype))
    return results


MIN_CHUNK = 2  # problems per thread below which a thread costs more than it saves


def _solve_cores(G_B: torch.Tensor, G_A: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The R x R part of factored_rank_k for N modules: float64 Grams [N, R, R] (CPU) -> the maps
    to_B [N, R, m] and to_A [N, m, R] with B = Bs @ to_B and A = to_A @ As. Threads over chunks of the batch:
    LAPACK's eigh is serial at this size, and one thread per chunk (intra-op threads off meanwhile, else they
    fight) scales with the cores."""
    n = G_B.shape[0]
    workers = min(len(os.sched_getaffinity(0)), n // MIN_CHUNK)
    if workers <= 1:
        return _solve_core_chunk(G_B, G_A, m)
    intra_op = torch.get_num_threads()  # process-wide; merges run alone in their worker process
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            parts = list(pool.map(_solve_core_chunk, G_B.chunk(workers), G_A.chunk(workers), [m] * workers))
    finally:
        torch.set_num_threads(intra_op)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _solve_core_chunk(G_B: torch.Tensor, G_A: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    lam, V = _eigh_above_noise(G_B)                            # [N, R], [N, R, R]; dropped lam are 0
    root_lam = lam.sqrt()
    L = V * root_lam[:, None, :]                               # [N, R, R]
    S2, W = _eigh_above_noise(L.mT @ G_A @ L)                  # descending
    S2, W = S2[:, :m], W[:, :, :m]
    root_S = S2.sqrt().sqrt()                                  # S^1/2 for the balanced split
    to_B = (V * _inverse_or_zero(root_lam)[:, None, :]) @ W * root_S[:, None, :]   # B = Q W S^1/2 = Bs @ to_B
    to_A = (W.mT @ L.mT) * _inverse_or_zero(root_S)[:, :, None]                   # A = S^-1/2 W^T L^T As
    return to_B, to_A


def _eigh_above_noise(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of PSD float64 matrices [N, n, n], descending; eigenvalues at or below n * eps * the
    largest are set to 0 (their directions are float64 noise and would be divided by ~0)."""
    lam, V = torch.linalg.eigh(G)  # ascending
    lam, V = lam.flip(-1), V.flip(-1)
    floor = lam[:, :1].clamp(min=0) * G.shape[-1] * torch.finfo(G.dtype).eps
    return torch.where(lam > floor, lam, 0.0), V


def _inverse_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, 1.0 / torch.where(x > 0, x, 1.0), 0.0)


def truncated_svd(M: torch.Tensor, k: int, mode: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k SVD of a dense M: [out, in] -> U [out, m], S [m], Vh [m, in], m = min(k, out, in).

    'exact': torch.linalg.svd (thin). 'randomized': Halko, Martinsson & Tropp 2011 (arXiv 0909.4061),
    range finder with q = k + 8 columns and 2 power iterations, seeded so the result is reproducible.
    """
    m = min(k, *M.shape)
    if mode == "exact":
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        return U[:, :m], S[:m], Vh[:m]
    q = min(k + 8, *M.shape)
    g = torch.Generator(device=M.device).manual_seed(seed)
    Y = M @ torch.randn(M.shape[1], q, generator=g, device=M.device, dtype=M.dtype)  # [out, q]
    for _ in range(2):  # power iterations sharpen the spectrum; QR keeps the basis well conditioned
        Y = torch.linalg.qr(Y).Q
        Y = M @ torch.linalg.qr(M.T @ Y).Q
    Q = torch.linalg.qr(Y).Q  # [out, q], orthonormal basis of M's dominant range
    U_s, S, Vh = torch.linalg.svd(Q.T @ M, full_matrices=False)  # Q^T M: [q, in]
    return (Q @ U_s)[:, :m], S[:m], Vh[:m]


def dense_deltas(factors) -> torch.Tensor:
    """Stack of the inputs' weighted updates weight_i * B_i @ A_i: [n, out, in] (the dense methods' input)."""
    return torch.stack([f.weight * (f.B @ f.A) for f in factors])


def dense_to_factors(dW: torch.Tensor, params) -> tuple[torch.Tensor, torch.Tensor]:
    """dW: [out, in] -> (A [k, in], B [out, k]), its best rank-k approximation (exact or randomized SVD)."""
    return split_svd(*truncated_svd(dW, params.rank, params.svd, params.seed))


def dense_rank(ranks: list[int], out_features: int, in_features: int, params) -> int:
    """Output rank of the dense methods: their dW is full rank in general, so k capped by the shape."""
    return min(params.rank, out_features, in_features)
