"""Small builders for merge tests: hand-written PEFT LoRA folders and PEFT-side delta weights."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from adapterio.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORI_MASKS, PEFT_KEY_PREFIX, lora_key


def write_adapter(path: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], *, r: int, alpha: float,
                  masks: dict[str, torch.Tensor] | None = None, **config) -> Path:
    """A PEFT LoRA folder from {module: (A [r, in], B [out, r])}, without building a model."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (A, B) in factors.items():
        tensors[lora_key(module, "A")] = A.clone()
        tensors[lora_key(module, "B")] = B.clone()
    save_file(tensors, path / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    if masks is not None:
        save_file({lora_key(m, "B"): v.clone() for m, v in masks.items()}, path / LORI_MASKS)
    leaves = sorted({m.rsplit(".", 1)[-1] for m in factors})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "target_modules": leaves,
           "bias": "none", "use_dora": False, "use_rslora": False}
    cfg.update(config)
    (path / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    return path


def random_factors(shapes: dict[str, tuple[int, int]], r: int, seed: int, dtype=torch.float32):
    """{module: (A [r, in], B [out, r])} with nonzero B."""
    g = torch.Generator().manual_seed(seed)
    return {m: (torch.randn(r, i, generator=g, dtype=dtype) / i ** 0.5, torch.randn(o, r, generator=g, dtype=dtype))
            for m, (o, i) in shapes.items()}


def peft_deltas(model, adapter: str) -> dict[str, torch.Tensor]:
    """{module path in the base model: dW [out, in]} of one adapter loaded in a PeftModel (PEFT's own maths)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A:
            module = name[len(PEFT_KEY_PREFIX):] if name.startswith(PEFT_KEY_PREFIX) else name
            out[module] = layer.get_delta_weight(adapter).detach().double()
    return out


def assert_deltas_close(ours: dict, theirs: dict, rtol: float = 1e-5, zero_missing: bool = False):
    """Relative Frobenius error per module; modules absent on one side must be zero on the other."""
    for module in sorted(set(ours) | set(theirs)):
        a, b = ours.get(module), theirs.get(module)
        if a is None or b is None:
            assert zero_missing, f"{module} only on one side"
            assert float((a if a is not None else b).abs().max()) == 0.0, module
            continue
        err = float((a - b).norm() / b.norm().clamp(min=1e-30))
        assert err < rtol, f"{module}: relative error {err:.2e}"
