"""The streaming safetensors writer: round trips through safetensors.safe_open and adapterio's validator."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adapterio.safetensors_header import SafetensorsError, read_header_from_path
from adapterio.safetensors_writer import SafetensorsWriter, TensorSpec

ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
      torch.int64: "I64", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def raw(t: torch.Tensor):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "b.weight": torch.randn(5, 3, generator=g),
        "a.half": torch.randn(7, generator=g).half(),
        "a.bf16": torch.randn(2, 3, 4, generator=g).bfloat16(),
        "double": torch.randn(3, generator=g).double(),
        "ids": torch.arange(-3, 6),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "mask": torch.rand(4, 5, generator=g) > 0.5,
        "bytes": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }


def write(path, tensors, metadata=None):
    specs = {k: TensorSpec(ST[t.dtype], tuple(t.shape)) for k, t in tensors.items()}
    with SafetensorsWriter(path, specs, metadata) as w:
        for k, t in tensors.items():
            w.write(k, raw(t))
    return w


def test_round_trip_through_safe_open(tmp_path):
    tensors = sample()
    w = write(tmp_path / "x.safetensors", tensors, {"format": "pt", "lorifold.kind": "merged"})
    assert w.nbytes == (tmp_path / "x.safetensors").stat().st_size
    with safe_open(tmp_path / "x.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt", "lorifold.kind": "merged"}
        assert set(f.keys()) == set(tensors)
        for k, t in tensors.items():
            got = f.get_tensor(k)
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)
    header = read_header_from_path(tmp_path / "x.safetensors")  # strict layout checks pass
    assert header.data_start % 8 == 0
    assert list(header.tensors) == list(tensors)  # declaration order is file order


def test_same_tensors_as_safetensors_own_writer(tmp_path):
    tensors = sample()
    write(tmp_path / "ours.safetensors", tensors, {"format": "pt"})
    save_file(tensors, tmp_path / "theirs.safetensors", metadata={"format": "pt"})
    ours, theirs = (read_header_from_path(tmp_path / n) for n in ("ours.safetensors", "theirs.safetensors"))
    assert ours.metadata == theirs.metadata
    assert {k: (i.dtype, i.shape) for k, i in ours.tensors.items()} == {
        k: (i.dtype, i.shape) for k, i in theirs.tensors.items()}
    assert (tmp_path / "ours.safetensors").stat().st_size == (tmp_path / "theirs.safetensors").stat().st_size


def test_no_metadata(tmp_path):
    write(tmp_path / "x.safetensors", {"t": torch.ones(2)})
    with safe_open(tmp_path / "x.safetensors", framework="pt") as f:
        assert f.metadata() is None and torch.equal(f.get_tensor("t"), torch.ones(2))


def test_out_of_order_and_wrong_size_are_refused(tmp_path):
    specs = {"a": TensorSpec("F32", (2,)), "b": TensorSpec("F32", (3,))}
    with pytest.raises(SafetensorsError, match="header order expects 'a'"):
        with SafetensorsWriter(tmp_path / "x.safetensors", specs) as w:
            w.write("b", raw(torch.ones(3)))
    assert not (tmp_path / "x.safetensors").exists()  # partial file removed
    with pytest.raises(SafetensorsError, match="has 12 bytes but F32\\[2\\] needs 8"):
        with SafetensorsWriter(tmp_path / "y.safetensors", specs) as w:
            w.write("a", raw(torch.ones(3)))
    assert not (tmp_path / "y.safetensors").exists()


def test_closing_early_is_refused_and_removes_the_file(tmp_path):
    w = SafetensorsWriter(tmp_path / "x.safetensors", {"a": TensorSpec("F32", (2,)), "b": TensorSpec("U8", (1,))})
    w.write("a", raw(torch.ones(2)))
    with pytest.raises(SafetensorsError, match="before writing 1 tensors, first 'b'"):
        w.close()
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("specs,metadata,message", [
    ({"a": TensorSpec("F8", (2,))}, None, "dtype 'F8'"),
    ({"a": TensorSpec("F32", (-1,))}, None, "invalid shape"),
    ({"__metadata__": TensorSpec("F32", (1,))}, None, "reserved"),
    ({"a": TensorSpec("F32", (1,))}, {"k": 1}, "strings to strings"),
])
def test_bad_declarations(tmp_path, specs, metadata, message):
    with pytest.raises(SafetensorsError, match=message):
        SafetensorsWriter(tmp_path / "x.safetensors", specs, metadata)
