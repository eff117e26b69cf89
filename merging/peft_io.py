"""Read PEFT LoRA folders one module at a time, and turn tensors into buffers for the streaming writer.

Only headers are read up front (adapterio, plain Python): the module index, ranks, shapes, dtypes and byte
offsets. Factors are then read per module with pread at those offsets into a fresh buffer: no mapping, so
nothing of the file stays resident after a module is done, and no header is parsed again per module (a
safe_open per module and input would re-parse the whole header each time).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from adapterio.peft_format import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORI_MASKS, lora_scale, merge_blocker, module_rank_alpha, parse_lora_key,
)
from adapterio.safetensors_header import SafetensorsHeader, read_header_from_path

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_DTYPES = {v: k for k, v in TORCH_DTYPES.items()}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class ModuleEntry:
    """One adapted module inside one adapter: A [rank, in_features], B [out_features, rank]."""
    a_key: str
    b_key: str
    rank: int
    out_features: int
    in_features: int


@dataclass(frozen=True)
class LoraFolder:
    path: Path
    config: dict
    modules: dict[str, ModuleEntry]
    dtype: str              # safetensors dtype of the factors (one per adapter)
    mask_dtype: str | None  # dtype of lori_masks.safetensors, None when the adapter has no masks
    header: SafetensorsHeader  # of adapter_model.safetensors: where each factor's bytes are

    @property
    def weights_path(self) -> Path:
        return self.path / ADAPTER_WEIGHTS

    @property
    def masks_path(self) -> Path:
        return self.path / LORI_MASKS

    def scale(self, module: str) -> float:
        return lora_scale(self.config, module)

    def load(self, module: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [r, in], B [out, r]) of `module` as float32 on `device`."""
        entry = self.modules[module]
        with open(self.weights_path, "rb") as f:
            A, B = (read_tensor(f.fileno(), self.header, key) for key in (entry.a_key, entry.b_key))
        return A.to(device).float(), B.to(device).float()

    def load_mask(self, module: str) -> torch.Tensor:
        """LoRI mask of `module`'s B: [out, r] on the CPU, in the file's dtype."""
        with safe_open(self.masks_path, framework="pt") as f:
            return f.get_tensor(self.modules[module].b_key)


def read_config(path: Path) -> dict:
    """adapter_config.json of a PEFT LoRA folder; refuses configs lorifold cannot merge faithfully."""
    config_path, weights_path = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise ValueError(f"{path}: not a PEFT adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    config = json.loads(config_path.read_text())
    blocker = merge_blocker(config)
    if blocker:
        raise ValueError(f"{path}: {blocker}")
    return config


def open_lora_folder(path: Path) -> LoraFolder:
    """Index a PEFT LoRA folder from its config and safetensors headers (no tensor is loaded)."""
    path = Path(path)
    config = read_config(path)
    header = read_header_from_path(path / ADAPTER_WEIGHTS)
    factors: dict[str, dict] = {}
    for key, info in header.tensors.items():
        module, factor = parse_lora_key(key)
        if len(info.shape) != 2:
            raise ValueError(f"{path}: {key} has shape {list(info.shape)}; LoRA factors are matrices")
        if info.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{path}: {key} has dtype {info.dtype}; LoRA factors are floating point")
        factors.setdefault(module, {})[factor] = (key, info)
    if not factors:
        raise ValueError(f"{path}: {ADAPTER_WEIGHTS} holds no LoRA factors")
    modules = {module: _module_entry(path, config, module, pair) for module, pair in factors.items()}
    dtypes = {info.dtype for info in header.tensors.values()}
    if len(dtypes) != 1:
        raise ValueError(f"{path}: factors mix dtypes {sorted(dtypes)}")
    return LoraFolder(path=path, config=config, modules=modules, dtype=dtypes.pop(),
                      mask_dtype=_check_masks(path, modules), header=header)


def read_tensor(fd: int, header: SafetensorsHeader, key: str) -> torch.Tensor:
    """Tensor `key` of a safetensors file whose (validated) header is `header`, read with pread."""
    info = header.tensors[key]
    raw = torch.empty(info.end - info.begin, dtype=torch.uint8)
    view, done = memoryview(raw.numpy()), 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], header.data_start + info.begin + done)
        if n == 0:
            raise ValueError(f"{key}: the file ends early (changed since its header was read?)")
        done += n
    return raw.view(TORCH_DTYPES[info.dtype]).reshape(info.shape)


def _module_entry(path: Path, config: dict, module: str, pair: dict) -> ModuleEntry:
    if set(pair) != {"A", "B"}:
        missing = ({"A", "B"} - set(pair)).pop()
        raise ValueError(f"{path}: module {module} has no lora_{missing} weight")
    (a_key, a), (b_key, b) = pair["A"], pair["B"]
    rank, in_features = a.shape  # A: [r, in]
    out_features, b_rank = b.shape  # B: [out, r]
    if b_rank != rank:
        raise ValueError(f"{path}: module {module} has A {list(a.shape)} and B {list(b.shape)}; ranks differ")
    config_rank = module_rank_alpha(config, module)[0]
    if config_rank != rank:
        raise ValueError(f"{path}: module {module} has rank {rank} in the weights but {config_rank} in the config "
                         "(r / rank_pattern); its scale would be wrong")
    return ModuleEntry(a_key=a_key, b_key=b_key, rank=rank, out_features=out_features, in_features=in_features)


def _check_masks(path: Path, modules: dict[str, ModuleEntry]) -> str | None:
    """A LoRI mask file must hold one mask per B, shaped like it; returns its dtype (None: no masks)."""
    if not (path / LORI_MASKS).is_file():
        return None
    masks = read_header_from_path(path / LORI_MASKS).tensors
    expected = {e.b_key: (e.out_features, e.rank) for e in modules.values()}
    if set(masks) != set(expected):
        raise ValueError(f"{path}: {LORI_MASKS} keys do not match the B weights "
                         f"({len(set(masks) ^ set(expected))} differ)")
    for key, info in masks.items():
        if info.shape != expected[key]:
            raise ValueError(f"{path}: mask {key} has shape {list(info.shape)}, its B has {list(expected[key])}")
    dtypes = {info.dtype for info in masks.values()}
    if len(dtypes) != 1 or not dtypes <= {"BOOL", "U8"}:
        raise ValueError(f"{path}: {LORI_MASKS} must be all bool or all uint8, got {sorted(dtypes)}")
    return dtypes.pop()


def union_modules(folders: list[LoraFolder]) -> dict[str, list[int]]:
    """Module -> indices of the inputs that adapt it, in natural order (layer 2 before layer 10).
    The same module name must have the same in/out shape in every input."""
    present: dict[str, list[int]] = {}
    for i, folder in enumerate(folders):
        for module, entry in folder.modules.items():
            first = present.setdefault(module, [i])[0]
            if first != i:
                ref = folders[first].modules[module]
                if (ref.out_features, ref.in_features) != (entry.out_features, entry.in_features):
                    raise ValueError(
                        f"module {module} is [{ref.out_features}, {ref.in_features}] (out, in) in "
                        f"{folders[first].path} but [{entry.out_features}, {entry.in_features}] in {folder.path}; "
                        "the adapters were trained on different base models")
                present[module].append(i)
    return dict(sorted(present.items(), key=lambda kv: natural_key(kv[0])))


def natural_key(name: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"\.", name))


def tensor_buffer(t: torch.Tensor):
    """Raw bytes of `t` (moved to the CPU) as a uint8 numpy array, for SafetensorsWriter.write."""
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()



def consecutive_runs(sizes: dict[str, int], budget: int) -> list[list[str]]:
    """Keys in order, grouped greedily into runs of at most `budget` total size; an item bigger than the
    budget gets a run of its own (merge batches, export shards)."""
    runs: list[list[str]] = []
    total = 0
    for key, size in sizes.items():
        if not runs or (runs[-1] and total + size > budget):
            runs.append([])
            total = 0
        runs[-1].append(key)
        total += size
    return runs
