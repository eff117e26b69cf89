"""Resumable checkpoints without pickle.

checkpoint_dir/step-000050/
  train_state.safetensors   fp32 masters of the trainable adapter weights + AdamW state ("<key>.exp_avg", ...)
  train_state.json          {"step", "data_position": {"epoch", "batch"}, "rng": {...}, "config", progress}

A checkpoint is written into a hidden temporary folder and renamed into place, so a crash leaves either
the previous checkpoint or the new one, never half of one. Older checkpoints are removed afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TENSORS_FILE = "train_state.safetensors"
STATE_FILE = "train_state.json"
_PREFIX = "step-"


def save_checkpoint(checkpoint_dir: str | os.PathLike, step: int, state: dict,
                    tensors: dict[str, torch.Tensor]) -> None:
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    for stale in root.glob(".tmp-*"):  # left by a save that crashed
        shutil.rmtree(stale)
    tmp = root / f".tmp-{final.name}"
    tmp.mkdir()
    save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, str(tmp / TENSORS_FILE))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "rng": _rng_state()}))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    os.rename(tmp, final)
    for old in root.glob(f"{_PREFIX}*"):
        if old != final:
            shutil.rmtree(old)


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (temporary folders of an interrupted save are ignored)."""
    root = Path(checkpoint_dir)
    found = sorted(root.glob(f"{_PREFIX}*")) if root.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(state, tensors) of a checkpoint folder; also restores the RNG states saved with it."""
    state = json.loads((path / STATE_FILE).read_text())
    _set_rng_state(state["rng"])
    return state, load_file(str(path / TENSORS_FILE))


def _rng_state() -> dict:
    """torch CPU and CUDA generator states as plain int lists (JSON, not pickle)."""
    cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {"torch_cpu": torch.get_rng_state().tolist(), "torch_cuda": cuda}


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(torch.tensor(rng["torch_cpu"], dtype=torch.uint8))
    if rng["torch_cuda"] and torch.cuda.is_available() and len(rng["torch_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in rng["torch_cuda"]])
