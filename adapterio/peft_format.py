"""Names and conventions of PEFT's LoRA folder format, shared by every package.

A PEFT LoRA folder holds:
  adapter_config.json        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": [...], ...}
  adapter_model.safetensors  "<prefix><module>.lora_A.weight" [r, in] and "...lora_B.weight" [out, r]
  lori_masks.safetensors     (lorifold, LoRI only) "<prefix><module>.lora_B.weight" -> uint8 [out, r]
  README.md                  (PEFT writes a model card; kept as an opaque file)

lorifold writes its own facts (kind, a_seed, sparsity) into the safetensors `__metadata__` of the
weights file under "lorifold.*" keys, so the kind travels with the bytes and the config stays one that
every PEFT release loads.
"""
from __future__ import annotations

import math
import re

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORI_MASKS = "lori_masks.safetensors"
MODEL_CARD = "README.md"
ALLOWED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORI_MASKS, MODEL_CARD)
REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

# PEFT prefixes every key with the wrapper path; the rest is the module path inside the base model.
PEFT_KEY_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>[A-Za-z0-9_.]+)\.lora_(?P<factor>[AB])\.weight$")

ADAPTER_KINDS = ("lora", "lori_d", "lori_s", "merged")
META_KIND = "lorifold.kind"
META_A_SEED = "lorifold.a_seed"
META_SPARSITY = "lorifold.sparsity"


def parse_lora_key(key: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.mlp.up_proj.lora_A.weight' -> ('model.layers.0.mlp.up_proj', 'A')."""
    m = _LORA_KEY.match(key)
    if not m:
        raise ValueError(
            f"tensor {key!r} is not a PEFT LoRA weight; expected '<module>.lora_A.weight' or "
            "'<module>.lora_B.weight' (bias, DoRA magnitude and modules_to_save are not supported)"
        )
    module = m["module"]
    if module.startswith(PEFT_KEY_PREFIX):
        module = module[len(PEFT_KEY_PREFIX):]
    return module, m["factor"]


def lora_key(module: str, factor: str) -> str:
    """Inverse of parse_lora_key: the key PEFT's save_pretrained writes for `module`."""
    return f"{PEFT_KEY_PREFIX}{module}.lora_{factor}.weight"


def _pattern_value(pattern: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern: a key matches when the module path ends with it (or regex)."""
    for key, value in pattern.items():
        if module == key or module.endswith("." + key) or re.fullmatch(key, module):
            return value
    return default


def module_rank_alpha(config: dict, module: str) -> tuple[int, float]:
    """Rank and alpha PEFT will use for `module`, honouring rank_pattern / alpha_pattern."""
    r = int(_pattern_value(config.get("rank_pattern") or {}, module, config["r"]))
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8)))
    return r, alpha


def lora_scale(config: dict, module: str) -> float:
    """s in dW = s * B @ A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    r, alpha = module_rank_alpha(config, module)
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


_NOT_MERGEABLE = {
    "use_dora": "DoRA (its magnitude vector does not merge as B @ A)",
    "modules_to_save": "modules_to_save (full weights, not factors)",
    "target_parameters": "target_parameters (nn.Parameter LoRA)",
    "lora_bias": "lora_bias",
}


def merge_blocker(config: dict) -> str | None:
    """Why a PEFT LoRA config cannot be merged as factors (None: it can). Shared by the merger and by
    merge submission, so a merge the worker would refuse is refused at the door."""
    if config.get("peft_type") != "LORA":
        return f"peft_type is {config.get('peft_type')!r}; only LoRA adapters can be merged"
    for key, what in _NOT_MERGEABLE.items():
        if config.get(key):
            return f"uses {what}; only plain LoRA factors can be merged"
    if config.get("bias", "none") != "none":
        return f"bias={config['bias']!r} trains biases; only bias='none' adapters can be merged"
    return None
