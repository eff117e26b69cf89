"""One training step: causal-LM loss through a chunked lm_head + cross-entropy, backward, optimizer step.

`train_step` is what run_training calls for every batch and what benchmarks/train_throughput.py and
benchmarks/train_multigpu.py time.

The loss never materialises the full logits: a batch of 4 x 1024 tokens and a 128k vocabulary would need
[4096, 128256] bf16 logits (1 GiB), their fp32 copy (2 GiB) and its gradient (2 GiB). Instead the base
model body produces hidden states [N, H], and lm_head + cross-entropy run over chunks of rows, computing
the gradient w.r.t. the hidden states on the spot (lm_head is frozen, so that is the only gradient
needed). Peak extra memory is one chunk of fp32 logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.data import IGNORE_INDEX
from training.optim import AdapterOptimizer

# Rows per chunk are chosen so one chunk of fp32 logits holds about this many elements (512 MiB).
CHUNK_LOGIT_ELEMENTS = 2 ** 27
# Config attributes of models whose logits are more than lm_head(hidden) (soft-capping, scaling).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class _LinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of F.linear(hidden, weight, bias) against targets, chunk by chunk, summed over the
    labelled tokens and divided by `normalizer` (None: their number, i.e. the mean)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, normalizer):
        # hidden: [N, H] (model dtype); weight: [V, H] frozen; bias: [V] or None; targets: [N] int64
        valid = targets != IGNORE_INDEX  # [N]
        # What the summed loss is divided by: the labelled tokens here (a tensor: no host sync), or a number
        # given by the caller (the distributed loop passes the whole global batch's count, see parallel.py).
        count = valid.sum().clamp(min=1).float() if normalizer is None else float(normalizer)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None  # [N, H]
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = F.linear(hidden[rows], weight, bias).float()  # [c, V] fp32, like transformers' loss
            y = targets[rows].clamp(min=0)  # [c]; ignored rows point at class 0 and are zeroed below
            lse = torch.logsumexp(logits, dim=-1)  # [c]
            total += ((lse - logits.gather(1, y[:, None]).squeeze(1)) * valid[rows]).sum()
            if grad_hidden is not None:
                # d (sum(CE) / count) / d logits = (softmax - one_hot(y)) / count on labelled rows, 0 elsewhere.
                probs = logits.sub_(lse[:, None]).exp_()  # [c, V], reusing the logits buffer
                probs[torch.arange(y.shape[0], device=y.device), y] -= 1.0
                probs.mul_((valid[rows].float() / count)[:, None])
                grad_hidden[rows] = probs.to(hidden.dtype) @ weight  # [c, H]
        ctx.save_for_backward(grad_hidden)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), None, None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor,
                          chunk_rows: int | None = None, normalizer: float | None = None) -> torch.Tensor:
    """hidden: [N, H], targets: [N] (IGNORE_INDEX = no loss) -> CE of head(hidden) summed over labelled rows
    and divided by normalizer (None: their number, the mean), a 0-dim fp32 tensor."""
    if head.weight.requires_grad:
        raise ValueError("chunked cross-entropy needs a frozen lm_head (it computes no gradient for it)")
    chunk_rows = chunk_rows or max(1, CHUNK_LOGIT_ELEMENTS // head.weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk_rows, normalizer)


def causal_lm_loss(lm: nn.Module, batch: dict[str, torch.Tensor], normalizer: float | None = None) -> torch.Tensor:
    """Next-token cross-entropy summed over labelled tokens and divided by normalizer (None: their number,
    the mean); lm is a transformers causal LM (adapters inside).

    batch: input_ids, attention_mask, labels: [B, T] on the model's device.
    """
    head = lm.get_output_embeddings()
    # An adapted lm_head (a PEFT layer, not an nn.Linear) or a transformed logit takes the ordinary path.
    transformed = any(getattr(lm.config, attr, None) not in (None, 1.0) for attr in _LOGIT_TRANSFORMS)
    if transformed or not isinstance(head, nn.Linear):
        # transformers' loss divides its sum by num_items_in_batch when given one
        extra = {} if normalizer is None else {"num_items_in_batch": normalizer}
        return lm(**batch, use_cache=False, **extra).loss
    labels = batch["labels"]
    # Position t predicts token t+1: shift the labels left (not the hidden states, which stay a view).
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)  # [B, T]
    hidden = lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              use_cache=False).last_hidden_state  # [B, T, H]
    return chunked_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head, targets.reshape(-1),
                                 normalizer=normalizer)


class CausalLMLoss(nn.Module):
    """causal_lm_loss as a module, so that DistributedDataParallel can wrap it: DDP averages gradients
    only for forwards that run through its own forward (training/parallel.py)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, batch: dict[str, torch.Tensor], normalizer: float | None = None) -> torch.Tensor:
        return causal_lm_loss(self.lm, batch, normalizer)


def train_step(lm: nn.Module, batch: dict[str, torch.Tensor], optimizer: AdapterOptimizer, *,
               loss_fn: nn.Module | None = None, normalizer: float | None = None) -> torch.Tensor:
    """Forward, backward and one optimizer step on one batch; returns the loss as a 0-dim tensor.

    loss_fn: CausalLMLoss(lm) (the default) or that wrapped by the distributed loop in DDP;
    normalizer: see causal_lm_loss.
    """
    device = lm.get_output_embeddings().weight.device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    loss = (loss_fn if loss_fn is not None else CausalLMLoss(lm))(batch, normalizer)
    loss.backward()
    optimizer.step()
    return loss.detach()
