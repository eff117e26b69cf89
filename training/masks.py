"""LoRI-S masks: which entries of each B may be non-zero.

The mask is extracted from a dense LoRI-D adapter with ONE magnitude threshold over |B| of all adapted
modules (the paper's model-wide selection, not per layer), and stored as `lori_masks.safetensors`:
uint8 [out, r] per PEFT lora_B key, beside the adapter.
"""
from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file

from adapterio.peft_format import parse_lora_key


def extract_lori_mask(b_tensors: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep exactly round((1 - sparsity) * N) entries of largest |B| over all modules; bool masks like B.

    Ties at the threshold are broken by position (keys in sorted order, then row-major), so the result
    is deterministic.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    keys = sorted(b_tensors)
    flat = torch.cat([b_tensors[k].detach().float().abs().flatten().cpu() for k in keys])  # [N]
    keep = round((1.0 - sparsity) * flat.numel())
    # A stable descending sort keeps equal magnitudes in position order; the first `keep` survive.
    order = torch.sort(flat, descending=True, stable=True).indices
    kept = torch.zeros(flat.numel(), dtype=torch.bool)
    kept[order[:keep]] = True
    masks, start = {}, 0
    for k in keys:
        n = b_tensors[k].numel()
        masks[k] = kept[start:start + n].view(b_tensors[k].shape)
        start += n
    return masks


def save_masks(masks: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write masks as uint8 safetensors; every key must be a PEFT lora_B key."""
    for key in masks:
        if parse_lora_key(key)[1] != "B":
            raise ValueError(f"mask key {key!r} is not a lora_B key")
    save_file({k: m.to(torch.uint8).contiguous().cpu() for k, m in masks.items()}, str(path),
              metadata={"format": "pt"})


def load_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read masks written by save_masks: {lora_B key: bool [out, r]}."""
    tensors = load_file(str(path))
    for key, t in tensors.items():
        if t.dtype not in (torch.uint8, torch.bool) or parse_lora_key(key)[1] != "B":
            raise ValueError(f"{path}: {key!r} is not a uint8 mask of a lora_B weight")
    return {k: t.bool() for k, t in tensors.items()}
