"""Fold a LoRA adapter into its base model and write a plain transformers checkpoint, one tensor at a time.

W' = W + s * B @ A for every adapted module (transposed for fan_in_fan_out layouts), computed in float32
and cast back to the base tensor's dtype; every other tensor is copied. Shards are planned from the base
headers up front and written with the streaming writer, so memory stays at one base tensor plus one
module's factors (mergekit's lazy per-tensor habit). Like transformers' save_pretrained: one
model.safetensors when it fits in max_shard_bytes, else model-0000i-of-0000n.safetensors plus
model.safetensors.index.json. Config, generation config and tokenizer files are copied as they are.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from adapterio.peft_format import PICKLE_SUFFIXES
from adapterio.safetensors_header import SafetensorsHeader, TensorInfo, read_header_from_path
from adapterio.safetensors_writer import SafetensorsWriter, TensorSpec
from merging.peft_io import consecutive_runs, open_lora_folder, read_tensor, tensor_buffer

DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # transformers' historical default, "5GB"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CPU = torch.device("cpu")


def export_merged_checkpoint(base_model_dir: Path, adapter_dir: Path, out_dir: Path,
                             max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> dict:
    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    adapter = open_lora_folder(Path(adapter_dir))
    tensors = _base_tensors(base_model_dir)  # name -> (file, header, info), in file and offset order
    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out"))
    folded = {}  # base tensor name -> adapted module
    for module, entry in adapter.modules.items():
        name = module + ".weight"
        expected = (entry.in_features, entry.out_features) if fan_in_fan_out else (entry.out_features, entry.in_features)
        if name not in tensors:
            raise ValueError(f"adapter module {module} has no base tensor {name} in {base_model_dir}")
        if tensors[name][2].shape != expected:
            raise ValueError(f"{name} is {list(tensors[name][2].shape)} in the base but the adapter expects "
                             f"{list(expected)}; the adapter belongs to another base model")
        folded[name] = module
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: output folder must be empty")

    shards = consecutive_runs({t: info.end - info.begin for t, (_, _, info) in tensors.items()}, max_shard_bytes)
    names = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for shard, file_name in zip(shards, names):
        specs = {t: TensorSpec(tensors[t][2].dtype, tensors[t][2].shape) for t in shard}
        with SafetensorsWriter(out_dir / file_name, specs, {"format": "pt"}) as w:
            for t in shard:
                W = _read(*tensors[t][:2], t)
                if t in folded:
                    W = _fold(W, adapter, folded[t], fan_in_fan_out)
                w.write(t, tensor_buffer(W))
                weight_map[t] = file_name
                total += specs[t].nbytes
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    copied = _copy_side_files(base_model_dir, out_dir)
    return {"files": names + ([INDEX_FILE] if len(shards) > 1 else []) + copied,
            "folded_modules": len(folded), "tensors": len(tensors), "total_bytes": total}


def _base_tensors(model_dir: Path) -> dict[str, tuple[Path, SafetensorsHeader, TensorInfo]]:
    index = model_dir / INDEX_FILE
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise ValueError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints are read)")
    tensors = {}
    for file_name in files:
        header = read_header_from_path(model_dir / file_name)
        for name, info in sorted(header.tensors.items(), key=lambda kv: kv[1].begin):
            if name in tensors:
                raise ValueError(f"{model_dir}: tensor {name} appears in two shards")
            tensors[name] = (model_dir / file_name, header, info)
    return tensors


def _read(path: Path, header: SafetensorsHeader, name: str) -> torch.Tensor:
    with open(path, "rb") as f:
        return read_tensor(f.fileno(), header, name)


def _fold(W: torch.Tensor, adapter, module: str, fan_in_fan_out: bool) -> torch.Tensor:
    A, B = adapter.load(module, CPU)                  # A: [r, in], B: [out, r]
    dW = adapter.scale(module) * (B @ A)              # [out, in]
    if fan_in_fan_out:                                # Conv1D-style base weight: [in, out]
        dW = dW.T
    return (W.float() + dW).to(W.dtype)


def _copy_side_files(model_dir: Path, out_dir: Path) -> list[str]:
    """Config, generation config, tokenizer, chat template...: every top-level file that is not weights."""
    copied = []
    for path in sorted(model_dir.iterdir()):
        weights = path.suffix in (".safetensors", *PICKLE_SUFFIXES) or path.name.endswith(".index.json")
        if path.is_file() and not weights:
            shutil.copy2(path, out_dir / path.name)
            copied.append(path.name)
    return copied
