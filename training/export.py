"""Write the trained adapter as a plain PEFT LoRA folder, plus lorifold's facts and the LoRI mask.

out_dir/
  adapter_config.json, adapter_model.safetensors, README.md   from PeftModel.save_pretrained (fp32)
  lori_masks.safetensors                                      lori_d (extracted) and lori_s (trained under)
The safetensors `__metadata__` of the weights carries lorifold.kind / a_seed / sparsity.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from adapterio.peft_format import (ADAPTER_WEIGHTS, LORI_MASKS, META_A_SEED, META_KIND, META_SPARSITY,
                                   lora_key)
from training.masks import save_masks
from training.model_setup import ADAPTER_NAME, lora_layers


def mask_sparsity(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of B entries the mask forces to zero."""
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / sum(m.numel() for m in masks.values())


@torch.no_grad()
def save_adapter(peft_model: PeftModel, weights: dict[str, torch.Tensor], out_dir: str | os.PathLike, *,
                 kind: str, a_seed: int | None = None, masks: dict[str, torch.Tensor] | None = None) -> None:
    """weights: fp32 value of EVERY adapter weight by PEFT key (trained masters and the canonical frozen A's).

    The model's adapter layers are switched to fp32 and overwritten with `weights`, so the file holds the
    fp32 masters and the exact regenerable A, not their bf16 roundings; the model is not used afterwards.
    """
    out = Path(out_dir)
    for module, layer in lora_layers(peft_model).items():
        for factor, holder in (("A", layer.lora_A), ("B", layer.lora_B)):
            linear = holder[ADAPTER_NAME].float()
            linear.weight.copy_(weights[lora_key(module, factor)])
    peft_model.save_pretrained(out)

    metadata = {"format": "pt", META_KIND: kind}
    if a_seed is not None:
        metadata[META_A_SEED] = str(a_seed)
    if masks is not None:
        metadata[META_SPARSITY] = f"{mask_sparsity(masks):.6g}"
        save_masks(masks, out / LORI_MASKS)
    path = out / ADAPTER_WEIGHTS
    tensors = load_file(str(path))
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
