"""Read and validate a safetensors header without loading any tensor (plain Python, no torch).

Layout (https://github.com/huggingface/safetensors): 8-byte little-endian u64 N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data.
We check everything a hostile file could get wrong: header size, JSON shape, dtype allow-list,
offsets inside the data, byte counts that match shape x dtype, no overlaps or holes, exact file size.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}


class SafetensorsError(ValueError):
    """The file is not a well-formed safetensors file; the message says what is wrong."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the data section
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int  # absolute file offset of the data section


def read_header(f: BinaryIO, file_size: int, *, name: str = "file") -> SafetensorsHeader:
    if file_size < 8:
        raise SafetensorsError(f"{name}: too short to be safetensors ({file_size} bytes)")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES or n > file_size - 8:
        raise SafetensorsError(f"{name}: header length {n} is larger than the file or the {MAX_HEADER_BYTES}-byte limit")
    try:
        raw = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{name}: header is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise SafetensorsError(f"{name}: header must be a JSON object")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError(f"{name}: __metadata__ must map strings to strings")
    tensors = {key: _tensor_info(name, key, entry) for key, entry in raw.items()}
    _check_layout(name, tensors, data_size=file_size - 8 - n)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_start=8 + n)


def read_header_from_path(path: str | os.PathLike) -> SafetensorsHeader:
    with open(path, "rb") as f:
        return read_header(f, os.fstat(f.fileno()).st_size, name=os.path.basename(path))


def _tensor_info(name: str, key: str, entry) -> TensorInfo:
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{name}: entry {key!r} must be an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise SafetensorsError(f"{name}: tensor {key!r} has dtype {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise SafetensorsError(f"{name}: tensor {key!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        raise SafetensorsError(f"{name}: tensor {key!r} has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise SafetensorsError(
            f"{name}: tensor {key!r} spans {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs {expected}")
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def _check_layout(name: str, tensors: dict[str, TensorInfo], *, data_size: int) -> None:
    """Tensors must tile the data section exactly: sorted by offset, no gaps, no overlaps."""
    position = 0
    for key, info in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.begin != position:
            what = "overlaps the previous tensor" if info.begin < position else "leaves a gap before it"
            raise SafetensorsError(f"{name}: tensor {key!r} {what} (offset {info.begin}, expected {position})")
        position = info.end
    if position != data_size:
        raise SafetensorsError(f"{name}: data section is {data_size} bytes but the tensors cover {position}")
