"""Facts about a base-model checkpoint folder read from config.json and safetensors headers (no torch)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from adapterio.safetensors_header import SafetensorsError, read_header_from_path


class CheckpointError(ValueError):
    pass


@dataclass
class CheckpointInfo:
    architecture: str
    hidden_size: int | None
    module_shapes: dict[str, list[int]]  # every 2-D ".weight": module path -> [out, in]
    revision: str  # sha256 over config.json and every weight header


def read_checkpoint(folder: Path) -> CheckpointInfo:
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a directory on the server")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json; give a transformers checkpoint folder")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{folder} has no .safetensors weights (pickled .bin checkpoints are not read; "
                              "convert with save_pretrained(safe_serialization=True))")
    digest = hashlib.sha256(config_path.read_bytes())
    shapes: dict[str, list[int]] = {}
    for shard in shards:
        try:
            header = read_header_from_path(shard)
        except SafetensorsError as e:
            raise CheckpointError(str(e)) from None
        digest.update(shard.name.encode())
        for key in sorted(header.tensors):
            info = header.tensors[key]
            digest.update(f"{key}:{info.dtype}:{info.shape}:{info.end - info.begin}".encode())
            if key.endswith(".weight") and len(info.shape) == 2:
                shapes[key[: -len(".weight")]] = list(info.shape)
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    hidden = config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size")
    return CheckpointInfo(architecture=archs[0], hidden_size=hidden, module_shapes=shapes,
                          revision=digest.hexdigest())
