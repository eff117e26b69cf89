"""Write a safetensors file incrementally: header from known shapes first, then tensors in order.

Plain Python (json + struct), no torch: a tensor is written from any buffer (memoryview, bytes, a numpy
array), so peak memory is one tensor whatever the file size (mergekit's lazy writing habit).
Layout (https://github.com/huggingface/safetensors): u64 little-endian N, N bytes of JSON header padded
with spaces so the data starts 8-byte aligned (as safetensors itself does), then the tensors back to back
in the declared order. The result reads with `safetensors.safe_open` and passes `read_header`.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

from adapterio.safetensors_header import DTYPE_BYTES, SafetensorsError


@dataclass(frozen=True)
class TensorSpec:
    dtype: str  # safetensors dtype name, e.g. "F32"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def encode_header(specs: dict[str, TensorSpec], metadata: dict[str, str] | None) -> bytes:
    """The 8-byte length prefix plus the space-padded JSON header for tensors laid out in `specs` order."""
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsError("metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, spec in specs.items():
        if name == "__metadata__":
            raise SafetensorsError("'__metadata__' is reserved and cannot name a tensor")
        if spec.dtype not in DTYPE_BYTES:
            raise SafetensorsError(f"tensor {name!r}: dtype {spec.dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
        if not all(isinstance(d, int) and d >= 0 for d in spec.shape):
            raise SafetensorsError(f"tensor {name!r}: invalid shape {spec.shape!r}")
        header[name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


class SafetensorsWriter:
    """Streaming writer: declare every tensor up front, then `write` each one in declaration order.

        with SafetensorsWriter(path, {"a": TensorSpec("F32", (2, 3))}, metadata={"format": "pt"}) as w:
            w.write("a", tensor.contiguous().view(torch.uint8).numpy())

    On an exception inside the `with` block, or a missing tensor at close, the partial file is deleted.
    """

    def __init__(self, path: str | os.PathLike, specs: dict[str, TensorSpec],
                 metadata: dict[str, str] | None = None):
        self.path = os.fspath(path)
        self._specs = dict(specs)
        self._order = list(self._specs)
        self._next = 0
        header = encode_header(self._specs, metadata)
        self._file = open(self.path, "wb")
        self._file.write(header)
        self.nbytes = len(header) + sum(s.nbytes for s in self._specs.values())

    def write(self, name: str, data) -> None:
        """Append tensor `name`; `data` is a C-contiguous buffer of exactly the declared byte count."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            expected = repr(self._order[self._next]) if self._next < len(self._order) else "nothing (all written)"
            raise SafetensorsError(f"{self.path}: wrote {name!r} but the header order expects {expected}")
        view = memoryview(data).cast("B")
        if view.nbytes != self._specs[name].nbytes:
            spec = self._specs[name]
            raise SafetensorsError(
                f"{self.path}: tensor {name!r} has {view.nbytes} bytes but {spec.dtype}{list(spec.shape)} needs "
                f"{spec.nbytes}")
        self._file.write(view)
        self._next += 1

    def close(self) -> None:
        """Flush and fsync; refuse (and delete the file) when declared tensors were never written."""
        if self._file.closed:
            return
        missing = self._order[self._next:]
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if missing:
            os.unlink(self.path)
            raise SafetensorsError(f"{self.path}: closed before writing {len(missing)} tensors, first {missing[0]!r}")

    def abort(self) -> None:
        """Close and delete the partial file."""
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
