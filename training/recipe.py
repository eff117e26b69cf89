"""The training recipe: LoRA, LoRI-D and LoRI-S on any transformers causal LM, resumable, with events.

    lora    PEFT defaults: A (kaiming-uniform) and B (zero) both train.
    lori_d  A overwritten with a regenerable frozen projection (seeded_a / orthogonal_a); only B trains.
            At the end, one model-wide magnitude mask over |B| is extracted and saved beside the adapter.
    lori_s  Same frozen A, B restarts from zero and trains with its gradients masked by a lori_d mask.

Called by the jobs layer in a spawned worker process; it knows nothing about the registry or the database.
run_training is one process on one device; training/distributed.py runs the same loop (train_process) in
every rank of a torchrun group, with training/parallel.py saying how a rank takes part.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import TrainConfig, default_lr
from training.data import IGNORE_INDEX, collate, epoch_order, load_examples, pad_token_id
from training.export import save_adapter
from training.lori_a import orthogonal_a, seeded_a
from training.masks import extract_lori_mask, load_masks
from training.model_setup import (attach_adapters, compile_decoder_blocks, default_target_modules,
                                  device_and_dtype, freeze_a, load_base, trainable_adapter_weights)
from training.optim import AdapterOptimizer
from training.parallel import SingleProcess
from training.step import CausalLMLoss, train_step

__all__ = ["TrainConfig", "TrainResult", "TrainingStopped", "default_lr", "run_training"]

# compile='auto' compiles when the eager step time it would save over the remaining steps repays the
# compilation. Regional compilation (one decoder block, forward + backward, dynamic shapes) takes on the
# order of a minute on a GPU host; fused elementwise ops and fewer saved activations typically save
# 10-20% of a step. Both numbers are estimates, not measurements of this job.
AUTO_COMPILE_COST_S = 60.0
AUTO_COMPILE_SAVING = 0.15


class TrainingStopped(Exception):
    """should_stop() asked the run to stop; the last finished step was checkpointed first."""


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict  # JSON-serialisable: loss_curve, final_loss, steps, tokens, seconds, ...


def run_training(config: TrainConfig, *, base_model_dir, dataset_path, out_dir, checkpoint_dir,
                 on_event: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> TrainResult:
    return train_process(config, dist=SingleProcess(), base_model_dir=base_model_dir, dataset_path=dataset_path,
                         out_dir=out_dir, checkpoint_dir=checkpoint_dir, on_event=on_event, should_stop=should_stop)


def train_process(config: TrainConfig, *, dist, base_model_dir, dataset_path, out_dir, checkpoint_dir,
                  on_event: Callable[[dict], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """The recipe as run by one process: alone (dist = parallel.SingleProcess) or as one rank of a
    torch.distributed group (parallel.Ranks). Every rank trains on its slice of each global batch; the main
    rank alone writes checkpoints and the adapter, and only it is given on_event and should_stop (its stop
    decision reaches the other ranks through dist.any, so all of them stop after the same step).
    """
    emit = on_event or (lambda event: None)

    def log(message: str) -> None:
        emit({"type": "log", "message": message})

    device, dtype = device_and_dtype()
    device = dist.place(device)
    model, tokenizer = load_base(base_model_dir, device, dtype)
    log(f"loaded {type(model).__name__} from {base_model_dir} on {device} in {dtype}")
    examples, skipped = load_examples(dataset_path, tokenizer, config.max_length)
    log(f"{len(examples)} examples" + (f" ({skipped} skipped: nothing left to learn after truncation)"
                                       if skipped else ""))

    lr = config.lr or default_lr(model.config.hidden_size, config.method)
    peft_model, frozen_a, masks, optimizer = _build_adapters(config, model, lr=lr,
                                                             keep_model_dtype=dtype != torch.float32)
    lm = peft_model.get_base_model()  # the causal LM with PEFT's layers inside
    log(f"{config.method}: rank {config.rank}, alpha {config.lora_alpha}, lr {lr:.3g}, "
        f"{sum(p.numel() for p in optimizer.params)} trainable adapter parameters")

    batches_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = config.max_steps or config.epochs * batches_per_epoch
    progress = {"loss_curve": [], "tokens": 0, "supervised_tokens": 0, "seconds": 0.0}
    step = 0
    checkpoint = latest_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        state, tensors = load_checkpoint(checkpoint)
        _check_same_run(state["config"], config)
        optimizer.load_state_tensors(tensors)
        step, progress = state["step"], state["progress"]
        log(f"resumed from {checkpoint.name} (step {step} of {total_steps})")
    resumed_from, saved_step = step, step
    dist.check_identical({"frozen A": list(frozen_a.values()), "LoRI masks": list((masks or {}).values()),
                          "trainable adapter weights": optimizer.masters})
    loss_fn = dist.wrap(CausalLMLoss(lm))

    def checkpoint_now() -> None:
        if dist.is_main:
            epoch, batch = divmod(step, batches_per_epoch)
            save_checkpoint(checkpoint_dir, step, {"data_position": {"epoch": epoch, "batch": batch},
                                                   "config": config.to_dict(), "progress": progress},
                            optimizer.state_tensors())
            log(f"checkpoint at step {step}")

    compiled = config.compile is True
    if compiled:
        log(f"compiling {compile_decoder_blocks(lm)} decoder blocks (regional torch.compile)")
    pad_id, pad_multiple = pad_token_id(tokenizer), (8 if device.type == "cuda" else 1)
    order, order_epoch = None, None
    started, step_seconds = time.perf_counter(), []
    while step < total_steps:
        if dist.any(should_stop is not None and should_stop()):
            if step > saved_step:
                checkpoint_now()
            raise TrainingStopped(f"stopped at step {step} of {total_steps}")
        epoch, batch_index = divmod(step, batches_per_epoch)
        if order_epoch != epoch:
            order, order_epoch = epoch_order(len(examples), config.seed, epoch), epoch
        rows = [examples[i] for i in order[batch_index * config.batch_size:(batch_index + 1) * config.batch_size]]
        batch = collate(dist.shard(rows), pad_id, pad_multiple)  # this process's part of the global batch

        t0 = time.perf_counter()
        loss = dist.mean(train_step(lm, batch, optimizer, loss_fn=loss_fn, normalizer=dist.normalizer(rows))).item()
        step_seconds.append(time.perf_counter() - t0)
        if not math.isfinite(loss):
            raise RuntimeError(f"loss became {loss} at step {step + 1}; try a lower learning rate")
        step += 1
        progress["loss_curve"].append(loss)
        progress["tokens"] += sum(len(e.input_ids) for e in rows)  # over the global batch
        progress["supervised_tokens"] += sum(label != IGNORE_INDEX for e in rows for label in e.labels)
        progress["seconds"] += step_seconds[-1]

        elapsed = time.perf_counter() - started
        emit({"type": "progress", "step": step, "total_steps": total_steps, "loss": loss, "lr": lr,
              "tokens_per_s": progress["tokens"] / max(progress["seconds"], 1e-9),
              "eta_s": (total_steps - step) * elapsed / (step - resumed_from)})
        if step % config.checkpoint_every == 0:
            checkpoint_now()
            saved_step = step
        if config.compile == "auto" and not compiled and len(step_seconds) == 2 and device.type == "cuda":
            # Step 1 pays CUDA/cuBLAS warm-up, so step 2 is the first honest eager step time.
            if dist.any((total_steps - step) * step_seconds[-1] * AUTO_COMPILE_SAVING > AUTO_COMPILE_COST_S):
                compiled = True
                log(f"compiling {compile_decoder_blocks(lm)} decoder blocks: {total_steps - step} steps left")

    if dist.is_main:  # the ranks hold identical masters (the same all-reduced gradients every step)
        if config.method == "lori_d":
            b = {k: m for k, m in zip(optimizer.names, optimizer.masters) if k.endswith("lora_B.weight")}
            masks = extract_lori_mask(b, config.sparsity)
            log(f"extracted the LoRI mask: kept {sum(int(m.sum()) for m in masks.values())} of "
                f"{sum(m.numel() for m in masks.values())} B entries (one threshold over all modules)")
        trained = {k: m.detach() for k, m in zip(optimizer.names, optimizer.masters)}
        save_adapter(peft_model, {**frozen_a, **trained}, out_dir, kind=config.method,
                     a_seed=config.a_seed if config.method != "lora" else None, masks=masks)
        log(f"saved the adapter to {out_dir}")

    curve = progress["loss_curve"]
    return TrainResult(out_dir=Path(out_dir), metrics={
        "method": config.method, "steps": step, "total_steps": total_steps, "lr": lr,
        "final_loss": curve[-1] if curve else None, "loss_curve": curve,
        "tokens": progress["tokens"], "supervised_tokens": progress["supervised_tokens"],
        "seconds": progress["seconds"],
        "tokens_per_s": progress["tokens"] / progress["seconds"] if progress["seconds"] else None,
        "examples": len(examples), "skipped_examples": skipped, "resumed_from_step": resumed_from,
        "compiled": compiled, "trainable_params": sum(p.numel() for p in optimizer.params),
        "world_size": dist.world_size,
    })


def _build_adapters(config: TrainConfig, model, *, lr: float, keep_model_dtype: bool):
    """PEFT adapters on `model`; for LoRI the frozen A and (lori_s) the mask.

    Returns (peft_model, frozen A's {key: fp32 [r, in]}, masks or None, AdapterOptimizer).
    """
    targets = config.target_modules or default_target_modules(model)
    torch.manual_seed(config.seed)  # PEFT draws plain LoRA's A from the global generator
    peft_model = attach_adapters(model, rank=config.rank, alpha=config.lora_alpha, target_modules=targets,
                                 keep_model_dtype=keep_model_dtype)
    frozen_a, masks = {}, None
    if config.method != "lora":
        def make_a(module: str, rank: int, in_features: int) -> torch.Tensor:
            if config.a_init == "orthogonal":
                return orthogonal_a(config.basis_seed, module, in_features, config.a_offset, rank)
            return seeded_a(config.a_seed, module, (rank, in_features))
        frozen_a = freeze_a(peft_model, make_a)
    weights = trainable_adapter_weights(peft_model)  # {key: B} for LoRI
    if config.method == "lori_s":
        masks = load_masks(config.mask_path)
        if set(masks) != set(weights):
            raise ValueError(f"mask {config.mask_path} covers {len(masks)} modules, the adapter has "
                             f"{len(weights)}: train lori_s with the targets of its lori_d run")
    optimizer = AdapterOptimizer(weights, lr=lr, weight_decay=config.weight_decay, grad_clip=config.grad_clip,
                                 masks=masks)
    return peft_model, frozen_a, masks, optimizer


def _check_same_run(saved: dict, config: TrainConfig) -> None:
    """A checkpoint only resumes the run that wrote it (checkpoint cadence and compilation may change)."""
    current = config.to_dict()
    differ = [k for k in current if k not in ("checkpoint_every", "compile") and saved.get(k) != current[k]]
    if differ:
        raise ValueError(f"checkpoint was written by a different run; these settings differ: {', '.join(differ)}")
