"""Merge PEFT LoRA folders file to file, a bounded batch of modules at a time (mergekit's lazy, out-of-core habit).

    merge_adapters([MergeInput(Path("math"), 1.0), MergeInput(Path("code"), 0.5)], "linear",
                   MergeParams(rank=64), out_dir=Path(tmp), device="cuda")

Plan from headers only: union of the inputs' modules (a module missing in one input counts as zero), each
module's output rank from the method's rank rule, the output safetensors header. Then per batch of
consecutive modules (up to `batch_bytes` of float32 input factors, at least one module): load the inputs'
factors onto `device` as float32, fold w_i * s_i into Factor.weight, run the method on the batch (methods
with a batched form, like linear, amortise their per-module overhead over it), append A and B to the output
file. Peak memory is one batch's inputs and outputs plus the method's workspace (the dense methods hold n
float32 [out, in] updates per module), never a whole adapter.

Output folder: adapter_config.json (PEFT LoRA, lora_alpha = r so the scale is 1; rank_pattern/alpha_pattern
for modules whose rank differs from the most common one), adapter_model.safetensors with metadata
{"format": "pt", "lorifold.kind": "merged"}, and for methods that stack B (concat) over inputs that all
carry LoRI masks, lori_masks.safetensors with the masks stacked the same way.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from adapterio.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORI_MASKS, META_KIND, lora_key
from adapterio.safetensors_writer import SafetensorsWriter, TensorSpec
from merging.params import Factor, MergeParams
from merging.peft_io import (TORCH_DTYPES, LoraFolder, consecutive_runs, open_lora_folder, tensor_buffer,
                             union_modules)
from merging.registry import MergeMethod, get_method

OUT_DTYPES = ("float32", "input")  # float32, or the dtype the inputs share
# Float32 input factors per batch of modules (tens of modules of an 8B model, never the whole adapter). On a
# GPU a batch amortises the per-module launches and host round trips (8B linear: 0.93 s compute at 32 MiB,
# 0.37 s at 128, 0.22 s at 512 on an H100); on the CPU it gains nothing past the solve's threads, and
# memory is the scarcer resource.
BATCH_BYTES = {"cuda": 256 * 2**20, "cpu": 64 * 2**20}


@dataclass(frozen=True)
class MergeInput:
    path: Path     # a PEFT LoRA folder
    weight: float  # w_i; the adapter's own scale s_i is read from its config


@dataclass(frozen=True)
class MergeSummary:
    method: str
    params: dict
    out_dir: str
    rank: int                    # r of the output config (the most common module rank)
    rank_pattern: dict[str, int]  # modules whose rank differs from r
    modules: int
    target_modules: list[str]
    dtype: str                   # safetensors dtype of the output factors
    masks_written: bool
    bytes_written: int
    seconds: float               # wall time, file to file
    compute_seconds: float       # time inside the method (synchronised on CUDA)

    def as_dict(self) -> dict:
        return asdict(self)


def merge_adapters(inputs: list[MergeInput], method: str, params: MergeParams, out_dir: Path,
                   device: str = "cpu", *, out_dtype: str = "float32",
                   batch_bytes: int | None = None,
                   on_progress: Callable[[int, int], None] | None = None) -> MergeSummary:
    """on_progress(modules done, modules in all) is called after each batch is written."""
    start = time.perf_counter()
    spec = get_method(method)
    spec.check_params(params)
    if not inputs:
        raise ValueError("merge needs at least one input adapter")
    for item in inputs:
        if isinstance(item.weight, bool) or not isinstance(item.weight, (int, float)) or not math.isfinite(item.weight):
            raise ValueError(f"{item.path}: weight must be a finite number, got {item.weight!r}")
    folders = [open_lora_folder(Path(item.path)) for item in inputs]
    _check_compatible(folders)
    dtype = _output_dtype(folders, out_dtype)
    modules = union_modules(folders)
    ranks = {m: _module_rank(spec, folders, idx, m, params) for m, idx in modules.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: output folder must be empty")

    dev = torch.device(device)
    batch_bytes = batch_bytes or BATCH_BYTES.get(dev.type, BATCH_BYTES["cpu"])
    compute, done = 0.0, 0
    weight_specs = {}
    for module, r in ranks.items():
        entry = folders[modules[module][0]].modules[module]
        weight_specs[lora_key(module, "A")] = TensorSpec(dtype, (r, entry.in_features))   # A: [k, in]
        weight_specs[lora_key(module, "B")] = TensorSpec(dtype, (entry.out_features, r))  # B: [out, k]
    with SafetensorsWriter(out_dir / ADAPTER_WEIGHTS, weight_specs, {"format": "pt", META_KIND: "merged"}) as w:
        for batch in _batches(folders, modules, batch_bytes):
            factors = [[Factor(*folders[i].load(module, dev), inputs[i].weight * folders[i].scale(module))
                        for i in modules[module]] for module in batch]
            t0 = time.perf_counter()
            merged = spec.many(factors, [replace(params, seed=module_seed(params.seed, m)) for m in batch])
            _synchronize(dev)
            compute += time.perf_counter() - t0
            del factors
            for module, (A, B) in zip(batch, merged, strict=True):
                for key, t in ((lora_key(module, "A"), A), (lora_key(module, "B"), B)):
                    if tuple(t.shape) != weight_specs[key].shape:
                        raise RuntimeError(f"{method} returned {key} of shape {list(t.shape)}, "
                                           f"its rank rule promised {list(weight_specs[key].shape)}")
                    w.write(key, tensor_buffer(t.to(TORCH_DTYPES[dtype])))
            del merged
            done += len(batch)
            if on_progress is not None:
                on_progress(done, len(modules))
    written = w.nbytes

    masks_written = spec.stacks_b and all(f.mask_dtype for f in folders)
    if masks_written:
        written += _write_stacked_masks(folders, modules, out_dir / LORI_MASKS)
    rank, rank_pattern = _common_rank(ranks)
    target_modules = sorted({m.rsplit(".", 1)[-1] for m in modules})
    config = _output_config(folders, rank, rank_pattern, target_modules)
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return MergeSummary(
        method=method, params=params.as_dict(), out_dir=str(out_dir), rank=rank, rank_pattern=rank_pattern,
        modules=len(modules), target_modules=target_modules, dtype=dtype, masks_written=masks_written,
        bytes_written=written, seconds=time.perf_counter() - start, compute_seconds=compute)


def module_seed(seed: int, module: str) -> int:
    """One random stream per module, independent of module order and of which modules exist."""
    digest = hashlib.blake2b(f"{seed}:{module}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _batches(folders: list[LoraFolder], modules: dict[str, list[int]], batch_bytes: int) -> list[list[str]]:
    """Consecutive runs of modules whose float32 input factors sum to at most batch_bytes."""
    sizes = {module: sum(4 * e.rank * (e.in_features + e.out_features)
                         for e in (folders[i].modules[module] for i in present))
             for module, present in modules.items()}
    return consecutive_runs(sizes, batch_bytes)


def _module_rank(spec: MergeMethod, folders: list[LoraFolder], present: list[int], module: str,
                 params: MergeParams) -> int:
    entries = [folders[i].modules[module] for i in present]
    return spec.output_rank([e.rank for e in entries], entries[0].out_features, entries[0].in_features, params)


def _check_compatible(folders: list[LoraFolder]) -> None:
    fan_in_fan_out = {bool(f.config.get("fan_in_fan_out")) for f in folders}
    if len(fan_in_fan_out) > 1:
        raise ValueError("inputs disagree on fan_in_fan_out (their weight layouts differ); merge adapters of one base")


def _output_dtype(folders: list[LoraFolder], out_dtype: str) -> str:
    if out_dtype == "float32":
        return "F32"
    if out_dtype != "input":
        raise ValueError(f"out_dtype must be one of {', '.join(OUT_DTYPES)}, got {out_dtype!r}")
    dtypes = {f.dtype for f in folders}
    if len(dtypes) > 1:
        raise ValueError(f"out_dtype='input' needs inputs of one dtype, got {sorted(dtypes)}; use 'float32'")
    return dtypes.pop()


def _common_rank(ranks: dict[str, int]) -> tuple[int, dict[str, int]]:
    """Most common module rank (larger wins a tie) and the rank_pattern for the others."""
    counts = Counter(ranks.values())
    rank = max(counts, key=lambda r: (counts[r], r))
    return rank, {m: r for m, r in ranks.items() if r != rank}


def _write_stacked_masks(folders: list[LoraFolder], modules: dict[str, list[int]], path: Path) -> int:
    """hstack of the present inputs' masks per module, [out, sum r_i], mirroring concat's B."""
    dtype = folders[0].mask_dtype if len({f.mask_dtype for f in folders}) == 1 else "U8"
    specs = {}
    for module, present in modules.items():
        entries = [folders[i].modules[module] for i in present]
        specs[lora_key(module, "B")] = TensorSpec(dtype, (entries[0].out_features, sum(e.rank for e in entries)))
    with SafetensorsWriter(path, specs, {"format": "pt"}) as w:
        for module, present in modules.items():
            mask = torch.cat([folders[i].load_mask(module).to(TORCH_DTYPES[dtype]) for i in present], dim=1)
            w.write(lora_key(module, "B"), tensor_buffer(mask))
    return w.nbytes


def _output_config(folders: list[LoraFolder], rank: int, rank_pattern: dict[str, int],
                   target_modules: list[str]) -> dict:
    """A fresh PEFT LoRA config with scale 1 everywhere; only provenance fields come from the inputs.
    (Copying a whole input config could carry init options such as PiSSA that rewrite the base on load.)"""
    first = folders[0].config
    return {
        "peft_type": "LORA",
        "task_type": first.get("task_type"),
        "base_model_name_or_path": first.get("base_model_name_or_path"),
        "revision": first.get("revision"),
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": rank_pattern,
        "alpha_pattern": dict(rank_pattern),  # alpha = r per module keeps the scale at 1
        "target_modules": target_modules,
        "fan_in_fan_out": bool(first.get("fan_in_fan_out")),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
