"""Load a base causal LM and put LoRA / LoRI adapters on it with PEFT.

PEFT injects the layers (so the result is an ordinary PEFT LoRA model); the only LoRI-specific step
here is overwriting each A with a regenerated frozen projection.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapterio.peft_format import PEFT_KEY_PREFIX, lora_key

ADAPTER_NAME = "default"  # PEFT's name for the single adapter; it never appears in saved keys


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """bf16 on a CUDA GPU (the speed path); float32 on the CPU, where bf16 matmuls are slow, and on GPUs
    without bf16 (fp16 would need loss scaling)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.device("cpu"), torch.float32


def load_base(base_model_dir: str | os.PathLike, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer) from a local checkpoint folder; never touches the network."""
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, local_files_only=True, dtype=dtype,
                                                 device_map=str(device))  # straight onto the GPU
    return model, tokenizer


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks, found through transformers' `_no_split_modules` class names."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}; pass target_modules")
    return blocks


def default_target_modules(model: nn.Module) -> list[str]:
    """Every nn.Linear inside the decoder blocks (attention and MLP; never lm_head).

    Returned as leaf names ("q_proj", ...) when those names select exactly these layers, which keeps
    adapter_config.json short and familiar; otherwise as full module paths.
    """
    inside = {id(m) for block in decoder_blocks(model) for m in block.modules() if isinstance(m, nn.Linear)}
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    wanted = sorted(name for name, m in linears.items() if id(m) in inside)
    leaves = {name.rsplit(".", 1)[-1] for name in wanted}
    if sorted(name for name in linears if name.rsplit(".", 1)[-1] in leaves) == wanted:
        return sorted(leaves)
    return wanted


def attach_adapters(model: nn.Module, *, rank: int, alpha: float, target_modules: list[str],
                    keep_model_dtype: bool) -> PeftModel:
    """PEFT LoRA with its defaults (kaiming-uniform A, zero B, no dropout, no bias).

    keep_model_dtype=True keeps adapter weights in the model dtype (bf16) instead of PEFT's fp32
    autocast, which would upcast every adapted layer's input to fp32; fp32 master copies live in the
    optimizer instead (training/optim.py).
    """
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config, autocast_adapter_dtype=not keep_model_dtype)


def lora_layers(peft_model: PeftModel) -> dict[str, LoraLayer]:
    """{module path inside the base model ("model.layers.0.self_attn.q_proj"): PEFT LoRA layer}."""
    return {name.removeprefix(PEFT_KEY_PREFIX): m for name, m in peft_model.named_modules()
            if isinstance(m, LoraLayer)}


def freeze_a(peft_model: PeftModel, make_a: Callable[[str, int, int], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Overwrite every A with make_a(module, rank, in_features) -> [r, in] float32 and freeze it.

    Returns the float32 A's by PEFT lora_A key: the exact values the saved adapter must contain (the
    model may hold them rounded to bf16).
    """
    canonical = {}
    for module, layer in lora_layers(peft_model).items():
        weight = layer.lora_A[ADAPTER_NAME].weight  # [r, in]
        a = make_a(module, weight.shape[0], weight.shape[1])
        with torch.no_grad():
            weight.copy_(a)
        weight.requires_grad_(False)
        canonical[lora_key(module, "A")] = a
    return canonical


def trainable_adapter_weights(peft_model: PeftModel) -> dict[str, nn.Parameter]:
    """{PEFT save key: parameter} for every adapter weight that trains (A and B for LoRA, B for LoRI)."""
    weights = {}
    for module, layer in lora_layers(peft_model).items():
        for factor, holder in (("A", layer.lora_A), ("B", layer.lora_B)):
            p = holder[ADAPTER_NAME].weight
            if p.requires_grad:
                weights[lora_key(module, factor)] = p
    return weights


def compile_decoder_blocks(model: nn.Module) -> int:
    """Regional torch.compile: each decoder block is compiled in place, and since the blocks share one
    class and code, dynamo compiles it once and reuses it for all of them (a much shorter warm-up than
    compiling the whole model). Returns the number of blocks.

    Two things keep that to a single compilation: the embedding output is made to require grad, so the
    first block sees the same kind of input as the others (a frozen embedding would give it a graph of
    its own); and shapes are dynamic from the start, since sequence lengths change from batch to batch.
    """
    model.enable_input_require_grads()
    blocks = decoder_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)
