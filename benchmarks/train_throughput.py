# Run (CUDA GPU):  python benchmarks/train_throughput.py
#     (CPU smoke):  python benchmarks/train_throughput.py --tiny --no-compile
"""Training throughput: lorifold's LoRI-S step against a plain PEFT LoRA loop, in one process.

Model: a random-initialised Llama-3-8B-shaped LlamaForCausalLM (hidden 4096, 32 layers, MLP 14336, 32/8
heads, vocab 128256) in bf16 (random weights are honest for speed), rank 32 on all seven projections,
batch 4 x 1024 random tokens. Variants, each on a freshly built model:
  lorifold eager     training.step.train_step, the step run_training executes: bf16 adapters with fp32
                     masters, chunked lm_head + cross-entropy, LoRI-S gradient masks (10% density)
  lorifold compiled  the same with the decoder blocks compiled (what compile='auto' turns on for long jobs)
  lorifold compiled, warm cache  the compiled variant again after torch._dynamo.reset(): what a later job
                     pays when Inductor's compile cache already holds these graphs
  peft loop, A frozen  the baseline: get_peft_model(LoraConfig) defaults (fp32 adapter autocast) with A
                     frozen as in LoRI, model(input_ids, labels=...).loss, AdamW
  peft loop, A trains  PEFT defaults untouched (A trains too), for reference
Reported: tokens/s over the timed steps, peak torch.cuda.max_memory_allocated, and warm-up (wall time
from the first step's start to its end, compilation included).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.lori_a import seeded_a  # noqa: E402
from training.model_setup import (attach_adapters, compile_decoder_blocks, default_target_modules,  # noqa: E402
                                  device_and_dtype, freeze_a, trainable_adapter_weights)
from training.optim import AdapterOptimizer  # noqa: E402
from training.step import train_step  # noqa: E402

LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
RANK, ALPHA, MASK_DENSITY = 32, 64, 0.1
BASELINE = "peft loop, A frozen (baseline)"


def build_model(shape: dict, device: torch.device, dtype: torch.dtype):
    config = LlamaConfig(**shape, tie_word_embeddings=False, use_cache=False)
    with torch.device(device):  # parameters are created and initialised directly on the GPU
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def lorifold_step(model, dtype: torch.dtype, compiled: bool):
    peft_model = attach_adapters(model, rank=RANK, alpha=ALPHA, target_modules=default_target_modules(model),
                                 keep_model_dtype=dtype != torch.float32)
    freeze_a(peft_model, lambda module, r, in_features: seeded_a(0, module, (r, in_features)))
    weights = trainable_adapter_weights(peft_model)  # {lora_B key: [out, r]}
    g = torch.Generator(device="cpu").manual_seed(0)
    masks = {k: torch.rand(w.shape, generator=g) < MASK_DENSITY for k, w in weights.items()}
    optimizer = AdapterOptimizer(weights, lr=5e-4, weight_decay=0.0, grad_clip=1.0, masks=masks)
    lm = peft_model.get_base_model()
    if compiled:
        compile_decoder_blocks(lm)
    return lambda batch: train_step(lm, batch, optimizer)


def peft_loop_step(model, freeze_a: bool):
    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA,
                                                  target_modules=default_target_modules(model)))
    for name, p in peft_model.named_parameters():
        if freeze_a and "lora_A" in name:
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-4)

    def step(batch):
        loss = peft_model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def measure(name: str, make_step, args, shape, device, dtype) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = make_step(build_model(shape, device, dtype))
    g = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, shape["vocab_size"], (args.batch, args.seq), generator=g).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    step(batch).item()
    warmup = time.perf_counter() - start
    for _ in range(args.settle_steps):  # autotuning, allocator growth
        step(batch)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step(batch)
    loss.item()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    del step, batch
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"name": name, "tokens_per_s": args.steps * args.batch * args.seq / seconds, "peak_gib": peak,
            "warmup_s": warmup}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny Llama on the CPU (checks the script runs)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled lorifold variant")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--settle-steps", type=int, default=2, help="untimed steps after the first")
    args = parser.parse_args(argv)
    device, dtype = device_and_dtype()
    if not args.tiny and device.type != "cuda":
        parser.error("the Llama-3-8B shape needs a CUDA GPU; use --tiny on the CPU")
    shape = TINY if args.tiny else LLAMA3_8B
    args.batch = args.batch or (2 if args.tiny else 4)
    args.seq = args.seq or (64 if args.tiny else 1024)
    args.steps = args.steps or (3 if args.tiny else 10)

    variants = [("lorifold lori_s eager", lambda m: lorifold_step(m, dtype, compiled=False))]
    if not args.no_compile:
        variants.append(("lorifold lori_s compiled", lambda m: lorifold_step(m, dtype, compiled=True)))
        variants.append(("lorifold compiled, warm cache", lambda m: lorifold_step(m, dtype, compiled=True)))
    variants.append(("peft loop, A trains", lambda m: peft_loop_step(m, freeze_a=False)))
    variants.append((BASELINE, lambda m: peft_loop_step(m, freeze_a=True)))
    rows = [measure(name, make, args, shape, device, dtype) for name, make in variants]

    print(f"{'tiny' if args.tiny else 'Llama-3-8B shape'}, {dtype}, rank {RANK}, batch {args.batch} x {args.seq}, "
          f"{args.steps} timed steps on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print(f"{'variant':28} {'tokens/s':>10} {'peak GiB':>9} {'warm-up s':>10}")
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"{r['name']:28} {r['tokens_per_s']:10.0f} {peak:>9} {r['warmup_s']:10.1f}")
    baseline = rows[-1]["tokens_per_s"]
    for r in rows[:-1]:
        print(f"{r['name']} / {BASELINE}: {r['tokens_per_s'] / baseline:.2f}x tokens/s")
    return rows


if __name__ == "__main__":
    main()
