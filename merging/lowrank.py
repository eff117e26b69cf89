"""Low-rank helpers shared by the method families: SVDs and the split of U S V^T into LoRA factors.

Split convention (all methods): B = U_k S_k^(1/2), A = S_k^(1/2) V_k^T, so B @ A = U_k S_k V_k^T and both
factors carry the same norm (better conditioned in bf16/fp16 and for further training than PEFT's
B = U S, A = V^T; the product is identical).
"""
from __future__ import annotations

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
    out_features, R = Bs.shape
    m = min(k, out_features, As.shape[1], R)
    A = As.new_zeros(m, As.shape[1])  # [m, in]
    B = Bs.new_zeros(out_features, m)  # [out, m]
    Bs64, As64 = Bs.double(), As.double()
    G_B = (Bs64.T @ Bs64).cpu()  # [R, R]
    G_A = (As64 @ As64.T).cpu()  # [R, R]
    del Bs64, As64
    lam, V = _eigh_above_noise(G_B)            # lam: [p], V: [R, p]
    if lam.numel() == 0:
        return A, B
    L = V * lam.sqrt()                                       # [R, p]
    S2, W = _eigh_above_noise(L.T @ G_A @ L)                 # S2: [q], W: [p, q], descending
    n = min(m, S2.numel())
    root_S = S2[:n].sqrt().sqrt()                            # S^1/2 for the balanced split
    to_B = (V / lam.sqrt()) @ W[:, :n] * root_S              # [R, n]: B = Q W S^1/2 = Bs @ to_B
    to_A = (W[:, :n].T @ L.T) / root_S[:, None]              # [n, R]: A = S^-1/2 W^T L^T As = S^1/2 Vh
    B[:, :n] = Bs @ to_B.to(Bs.device, Bs.dtype)
    A[:n] = to_A.to(As.device, As.dtype) @ As
    return A, B


def _eigh_above_noise(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a PSD float64 matrix [n, n] above n * eps * the largest eigenvalue, descending."""
    lam, V = torch.linalg.eigh(G)  # ascending
    lam, V = lam.flip(0), V.flip(1)
    keep = lam > max(float(lam[0]), 0.0) * G.shape[0] * torch.finfo(G.dtype).eps
    return lam[keep], V[:, keep]


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
