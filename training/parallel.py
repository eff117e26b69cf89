"""How one training process takes part in its run: alone (SingleProcess), or as one rank of a
torch.distributed group started by torchrun (Ranks). The training loop (recipe.train_process) is written
once against this small interface; for a single process every method is a no-op.

Data parallelism over the adapters only (DDP over the PEFT-wrapped model; the base stays frozen, so only
the trainable adapter weights are all-reduced):
- every rank sees the same global batch (the epoch order is a pure function of the seed) and trains on its
  contiguous slice of it, so the global batch size is config.batch_size whatever the number of ranks;
- the loss of a rank is its summed token losses / (the global batch's labelled tokens / world size), and
  DDP averages gradients over ranks, so the gradient is that of sum(token losses) / labelled tokens over
  the whole batch: exactly the gradient a single process computes on the same batch (up to rounding);
- frozen A, LoRI masks and the initial trainable weights are deterministic from seeds (or the same
  checkpoint), so no rank broadcasts them; check_identical verifies that with a cheap checksum.
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.data import IGNORE_INDEX, Example


class SingleProcess:
    """run_training's one process: the whole batch, the plain loss, nothing to agree on."""

    rank, world_size, is_main = 0, 1, True

    def place(self, device: torch.device) -> torch.device:
        return device

    def wrap(self, loss_fn: nn.Module) -> nn.Module:
        return loss_fn

    def shard(self, examples: list[Example]) -> list[Example]:
        return examples

    def normalizer(self, examples: list[Example]) -> float | None:
        return None  # causal_lm_loss takes the mean over the batch's own labelled tokens

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def any(self, flag: bool) -> bool:
        return flag

    def check_identical(self, groups: dict[str, list[torch.Tensor]]) -> None:
        pass


class Ranks:
    """This process as rank RANK of WORLD_SIZE (torchrun's environment variables); device cuda:LOCAL_RANK
    with NCCL, or the CPU with gloo."""

    def __init__(self, backend: str | None = None):
        self.backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
        # Where collectives' tensors live: NCCL reduces CUDA tensors, gloo CPU ones.
        if self.backend == "nccl":
            self.comm_device = torch.device("cuda", self.local_rank)
            torch_dist.init_process_group("nccl", device_id=self.comm_device)
        else:
            self.comm_device = torch.device("cpu")
            torch_dist.init_process_group(self.backend)
        self.rank, self.world_size = torch_dist.get_rank(), torch_dist.get_world_size()
        self.is_main = self.rank == 0

    def close(self) -> None:
        """Leave the group once every rank is done. Call it after the DDP wrapper is gone: a DDP (its reducer)
        outliving the group it reduces over can hang when it is freed."""
        torch_dist.barrier()
        torch_dist.destroy_process_group()

    def place(self, device: torch.device) -> torch.device:
        """This rank's device of the type device_and_dtype chose."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def wrap(self, loss_fn: nn.Module) -> nn.Module:
        """DDP over the loss module. init_sync=False: no broadcast of the (frozen, multi-GB) base weights
        from rank 0; every rank loaded the same checkpoint, and check_identical verifies the adapters."""
        device_ids = [self.local_rank] if next(loss_fn.parameters()).is_cuda else None
        return DistributedDataParallel(loss_fn, device_ids=device_ids, init_sync=False)

    def shard(self, examples: list[Example]) -> list[Example]:
        """This rank's contiguous slice of the global batch; slice sizes differ by at most one. A rank left
        without an example (a short last batch) gets one token with no label: it adds nothing to the loss
        or the gradients but still takes part in DDP's all-reduce."""
        base, extra = divmod(len(examples), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        mine = examples[start:start + base + (self.rank < extra)]
        return mine or [replace(examples[0], input_ids=examples[0].input_ids[:1], labels=[IGNORE_INDEX])]

    def normalizer(self, examples: list[Example]) -> float:
        """Labelled next-token targets of the whole global batch / world size (see the module docstring).
        Target t is label t + 1, so a row's first label is never a target."""
        targets = sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in examples)
        return max(targets, 1) / self.world_size

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average over ranks: with normalizer() this turns each rank's loss into the global batch's loss."""
        total = value.detach().to(self.comm_device, torch.float32).clone()
        torch_dist.all_reduce(total)
        return total / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one (a stop request seen by rank 0, a compile decision)."""
        t = torch.tensor([int(flag)], device=self.comm_device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t.item())

    @torch.no_grad()
    def check_identical(self, groups: dict[str, list[torch.Tensor]]) -> None:
        """Raise on every rank when a group of tensors (frozen A, masks, trainable weights) differs between
        ranks. Compares float64 checksums (sum, a position-weighted sum, sum of squares), not the tensors."""
        local = torch.stack([_checksum(tensors) for tensors in groups.values()]).to(self.comm_device)  # [G, 3]
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        torch_dist.all_gather(gathered, local)
        for rank, other in enumerate(gathered[1:], start=1):
            differ = [name for name, a, b in zip(groups, gathered[0], other)
                      if not torch.allclose(a, b, rtol=1e-9, atol=1e-12)]
            if differ:
                raise RuntimeError(f"{', '.join(differ)} differ between rank 0 and rank {rank}: every rank must "
                                   "build the same adapters (same seeds, masks and checkpoint)")


def _checksum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[3] float64 on the CPU: sum, position-weighted sum and sum of squares of all the tensors."""
    out = torch.zeros(3, dtype=torch.float64)
    for t in tensors:
        flat = t.detach().flatten().double()
        position = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=flat.device)
        out += torch.stack([flat.sum(), (flat * position).sum(), flat.square().sum()]).cpu()
    return out
