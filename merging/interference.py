"""How much LoRA adapters would interfere if merged, computed on the factors (no dense dW), module by module.

Measures, for every pair of adapters i < j (LoRI, Zhang et al. 2025, https://arxiv.org/abs/2504.07448, argues
that near-orthogonal A's keep merged adapters apart):
- cosine of the updates dW = s B A, via <B_i A_i, B_j A_j>_F = trace((B_i^T B_j)(A_j A_i^T)): r x r work;
  per module, and overall as the cosine of the whole-model updates (modules missing in one count as zero,
  so big modules weigh by their Frobenius norms);
- A-subspace overlap ||Q_i^T Q_j||_F^2 / min(r_i, r_j), Q an orthonormal basis of A's row space: 1 when one
  adapter reads a subspace of the other's input directions, 0 when they read orthogonal ones;
- Jaccard |M_i & M_j| / |M_i | M_j| of the LoRI-S masks when both adapters carry lori_masks.safetensors and
  the masks have the same shape (only meaningful when the adapters share A).
Values that are undefined (a zero update, a zero A, an empty union) are None, so the report is plain JSON.
"""
from __future__ import annotations

from pathlib import Path

import torch

from merging.peft_io import LoraFolder, open_lora_folder, union_modules

CPU = torch.device("cpu")


def interference_report(paths: list[Path]) -> dict:
    folders = [open_lora_folder(Path(p)) for p in paths]
    n = len(folders)
    if n < 2:
        raise ValueError("an interference report needs at least two adapters")
    modules = union_modules(folders)
    sq_norm = [0.0] * n
    pairs = {(i, j): _PairTotals() for i in range(n) for j in range(i + 1, n)}
    for module, present in modules.items():
        loaded = {i: _ModuleFactors(folders[i], module) for i in present}
        for i in present:
            sq_norm[i] += loaded[i].sq_norm
        for a, i in enumerate(present):
            for j in present[a + 1:]:
                pairs[(i, j)].add(module, loaded[i], loaded[j])
    return {
        "adapters": [str(f.path) for f in folders],
        "norms": [s ** 0.5 for s in sq_norm],
        "pairs": [totals.report(i, j, sq_norm) for (i, j), totals in pairs.items()],
    }


class _ModuleFactors:
    """One adapter's factors for one module in float64, with the quantities every pair reuses."""

    def __init__(self, folder: LoraFolder, module: str):
        A, B = folder.load(module, CPU)
        s = folder.scale(module)
        self.A, self.B = A.double(), s * B.double()           # A: [r, in], s B: [out, r]
        self.sq_norm = _inner(self.A, self.B, self.A, self.B)  # ||s B A||_F^2
        S, Vh = torch.linalg.svd(self.A, full_matrices=False)[1:]
        tol = float(S.max()) * max(self.A.shape) * torch.finfo(torch.float64).eps
        self.basis = Vh[S > tol]                               # Q^T: [rank(A), in], orthonormal rows
        self.mask = folder.load_mask(module).bool() if folder.mask_dtype else None  # [out, r]


def _inner(A_i, B_i, A_j, B_j) -> float:
    """<B_i A_i, B_j A_j>_F = trace((B_i^T B_j)(A_j A_i^T)) = sum((B_i^T B_j) * (A_i A_j^T)); both [r_i, r_j]."""
    return float(((B_i.T @ B_j) * (A_i @ A_j.T)).sum())


class _PairTotals:
    def __init__(self):
        self.inner = 0.0
        self.overlaps: list[float] = []
        self.intersection = self.union = 0
        self.modules: dict[str, dict] = {}

    def add(self, module: str, x: _ModuleFactors, y: _ModuleFactors) -> None:
        inner = _inner(x.A, x.B, y.A, y.B)
        self.inner += inner
        denominator = (x.sq_norm * y.sq_norm) ** 0.5
        overlap = None
        if len(x.basis) and len(y.basis):
            overlap = float((x.basis @ y.basis.T).square().sum()) / min(len(x.basis), len(y.basis))
            self.overlaps.append(overlap)
        jaccard = None
        if x.mask is not None and y.mask is not None and x.mask.shape == y.mask.shape:
            intersection, union = int((x.mask & y.mask).sum()), int((x.mask | y.mask).sum())
            self.intersection += intersection
            self.union += union
            jaccard = intersection / union if union else None
        self.modules[module] = {"cosine": inner / denominator if denominator else None,
                                "a_overlap": overlap, "mask_jaccard": jaccard}

    def report(self, i: int, j: int, sq_norm: list[float]) -> dict:
        denominator = (sq_norm[i] * sq_norm[j]) ** 0.5
        return {
            "a": i, "b": j,
            "cosine": self.inner / denominator if denominator else None,
            "a_overlap": sum(self.overlaps) / len(self.overlaps) if self.overlaps else None,
            "mask_jaccard": self.intersection / self.union if self.union else None,
            "shared_modules": len(self.modules),
            "modules": self.modules,
        }
