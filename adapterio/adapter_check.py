"""Validate a PEFT LoRA folder against a base model's module shapes, reading headers only (no torch).

Returns what the registry records about the adapter (kind, ranks, alpha, targets, LoRI facts) or raises
AdapterFormatError with a message that says which file and tensor are wrong and what was expected.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from adapterio.peft_format import (ADAPTER_CONFIG, ADAPTER_KINDS, ADAPTER_WEIGHTS, LORI_MASKS, META_A_SEED,
                                   META_KIND, META_SPARSITY, module_rank_alpha, parse_lora_key)
from adapterio.safetensors_header import SafetensorsError, read_header_from_path

MAX_CONFIG_BYTES = 1 << 20
MASK_DTYPES = ("U8", "BOOL")


class AdapterFormatError(ValueError):
    pass


@dataclass
class AdapterSummary:
    kind: str
    rank: int
    rank_pattern: dict[str, int]
    alpha: float
    target_modules: list[str]
    modules: dict[str, int] = field(default_factory=dict)  # module -> rank
    sparsity: float | None = None
    a_seed: int | None = None
    config: dict = field(default_factory=dict)


def load_config(path: Path) -> dict:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterFormatError(f"{ADAPTER_CONFIG} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterFormatError(f"{ADAPTER_CONFIG} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{ADAPTER_CONFIG} must be a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdapterFormatError(f"{ADAPTER_CONFIG}: peft_type is {config.get('peft_type')!r}; only 'LORA' adapters are accepted")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise AdapterFormatError(f"{ADAPTER_CONFIG}: r must be a positive integer, got {r!r}")
    alpha = config.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise AdapterFormatError(f"{ADAPTER_CONFIG}: lora_alpha must be a positive number, got {alpha!r}")
    if config.get("use_dora"):
        raise AdapterFormatError(f"{ADAPTER_CONFIG}: DoRA adapters are not supported (use_dora is true)")
    if config.get("modules_to_save"):
        raise AdapterFormatError(f"{ADAPTER_CONFIG}: modules_to_save is not supported; upload LoRA weights only")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise AdapterFormatError(f"{ADAPTER_CONFIG}: {key} must be an object")
    return config


def inspect_adapter(folder: Path, module_shapes: dict[str, list[int]]) -> AdapterSummary:
    """folder holds adapter_config.json, adapter_model.safetensors and maybe lori_masks.safetensors."""
    config = load_config(folder / ADAPTER_CONFIG)
    try:
        header = read_header_from_path(folder / ADAPTER_WEIGHTS)
    except SafetensorsError as e:
        raise AdapterFormatError(str(e)) from None
    factors: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, info in header.tensors.items():
        try:
            module, factor = parse_lora_key(key)
        except ValueError as e:
            raise AdapterFormatError(f"{ADAPTER_WEIGHTS}: {e}") from None
        if info.dtype not in ("F32", "F16", "BF16", "F64"):
            raise AdapterFormatError(f"{ADAPTER_WEIGHTS}: {key} has dtype {info.dtype}; LoRA weights must be floating point")
        factors.setdefault(module, {})[factor] = info.shape
    if not factors:
        raise AdapterFormatError(f"{ADAPTER_WEIGHTS} holds no LoRA tensors")

    unknown = sorted(set(factors) - set(module_shapes))
    if unknown:
        raise AdapterFormatError(f"{ADAPTER_WEIGHTS}: module {unknown[0]!r} does not exist in the base model "
                                 f"(or is not a linear layer){f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}")
    modules: dict[str, int] = {}
    for module, pair in sorted(factors.items()):
        modules[module] = _check_module(module, pair, config, module_shapes)

    summary = _summary(config, modules, header.metadata)
    if (folder / LORI_MASKS).exists():
        summary.sparsity = _check_masks(folder / LORI_MASKS, factors)
        if summary.kind == "lora":
            summary.kind = "lori_s"
    return summary


def _check_module(module: str, pair: dict, config: dict, module_shapes: dict) -> int:
    if set(pair) != {"A", "B"}:
        missing = ({"A", "B"} - set(pair)).pop()
        raise AdapterFormatError(f"{ADAPTER_WEIGHTS}: {module} has no lora_{missing}.weight")
    out_f, in_f = module_shapes[module]
    a, b = pair["A"], pair["B"]
    if len(a) != 2 or len(b) != 2:
        raise AdapterFormatError(f"{ADAPTER_WEIGHTS}: {module} factors must be 2-D, got A{list(a)} B{list(b)}")
    r, _ = module_rank_alpha(config, module)
    if a != (r, in_f) or b != (out_f, r):
        raise AdapterFormatError(
            f"{ADAPTER_WEIGHTS}: {module} has A{list(a)} B{list(b)}; the base model's [{out_f}, {in_f}] "
            f"weight and rank {r} from {ADAPTER_CONFIG} need A[{r}, {in_f}] and B[{out_f}, {r}]")
    return r


def _summary(config: dict, modules: dict[str, int], metadata: dict[str, str]) -> AdapterSummary:
    kind = metadata.get(META_KIND, "lora")
    if kind not in ADAPTER_KINDS:
        raise AdapterFormatError(f"{ADAPTER_WEIGHTS}: metadata {META_KIND}={kind!r} is not one of {ADAPTER_KINDS}")
    rank = int(config["r"])
    a_seed = metadata.get(META_A_SEED)
    sparsity = metadata.get(META_SPARSITY)
    try:
        a_seed = int(a_seed) if a_seed is not None else None
        sparsity = float(sparsity) if sparsity is not None else None
    except ValueError:
        raise AdapterFormatError(f"{ADAPTER_WEIGHTS}: metadata {META_A_SEED}/{META_SPARSITY} must be numbers") from None
    return AdapterSummary(
        kind=kind, rank=rank, rank_pattern={m: r for m, r in modules.items() if r != rank},
        alpha=float(config.get("lora_alpha", 8)), target_modules=sorted({m.rsplit(".", 1)[-1] for m in modules}),
        modules=modules, sparsity=sparsity, a_seed=a_seed, config=config)


def _check_masks(path: Path, factors: dict) -> float:
    """Masks: one U8/BOOL tensor per lora_B key with B's shape. Returns the fraction of zeros."""
    try:
        header = read_header_from_path(path)
    except SafetensorsError as e:
        raise AdapterFormatError(str(e)) from None
    total = 0
    for key, info in header.tensors.items():
        try:
            module, factor = parse_lora_key(key)
        except ValueError as e:
            raise AdapterFormatError(f"{LORI_MASKS}: {e}") from None
        if factor != "B" or module not in factors:
            raise AdapterFormatError(f"{LORI_MASKS}: {key} does not match a lora_B weight of the adapter")
        if info.dtype not in MASK_DTYPES or info.shape != factors[module]["B"]:
            raise AdapterFormatError(f"{LORI_MASKS}: {key} must be U8/BOOL with shape {list(factors[module]['B'])}, "
                                     f"got {info.dtype}{list(info.shape)}")
        total += info.end - info.begin
    if len(header.tensors) != len(factors):
        raise AdapterFormatError(f"{LORI_MASKS}: has {len(header.tensors)} masks for {len(factors)} adapted modules")
    sparsity = header.metadata.get(META_SPARSITY)
    return float(sparsity) if sparsity is not None else None
