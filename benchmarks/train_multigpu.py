# Run (2 CUDA GPUs):   python benchmarks/train_multigpu.py
#     (CPU smoke, gloo): python benchmarks/train_multigpu.py --tiny
"""Multi-GPU training: tokens/s on 1 and 2 GPUs with the scaling efficiency, and whether a 2-GPU run trains
the adapter a 1-GPU run trains on the same data and seed.

Model: a random-initialised Llama-3-8B-shaped LlamaForCausalLM (hidden 4096, 32 layers, MLP 14336, 32/8
heads, vocab 128256; built on the GPU from a seed, in bf16), LoRI-S at rank 32 on all seven projections
(seeded frozen A, a seeded random mask of 10% density), random tokens of length 1024.
For world size 1 and then 2, torchrun runs this file as its worker (--worker), one rank per GPU. Every rank
runs what a distributed training job runs for a step: training.parallel.Ranks (NCCL, DDP over the adapter
weights, its slice of the global batch, the global-token loss normalisation) around training.step.train_step.
  check phase       --check-steps steps from the same adapters on the same global batches (batch 4: 2 rows
                    per GPU on two GPUs); rank 0 saves the trained B's of each variant:
                      world 2:  "2gpu"         the job's path on two GPUs;
                      world 1:  "1gpu"         the job's path on one GPU, whole global batch at once;
                                "1gpu-repeat"  the same again (run-to-run nondeterminism of the kernels);
                                "1gpu-halves"  one GPU, the two ranks' halves as two micro-batches whose
                                               gradients are summed, then halved as DDP's average does: the
                                               2-GPU computation without the second GPU;
                                "1gpu-fp32"    (bf16 runs) the job's path in fp32: the reference for what bf16
                                               rounding alone does to the result.
                    The driver compares variants per module, ||B_x - B_y|| / ||B_y||, maximum over modules.
  throughput phase  batch 4 x 1024 per GPU (8 x 1024 over two), --settle-steps untimed, then --steps timed.
Scaling efficiency = tokens/s on N GPUs / (N x tokens/s on one); the target for 2 GPUs is >= 0.9 (1.8x).

Equality. Two GPUs split the global batch, so each rank rounds its half of the gradient to bf16 before the
all-reduce, where one GPU rounds the whole; and Adam's first steps move every entry by about +-lr whatever
its gradient's size, so entries whose gradient is within rounding of zero can take either sign. Some
difference is therefore inherent to bf16 data parallelism. The bf16 tolerance is measured, not assumed:
2gpu vs 1gpu must differ less than 1gpu (bf16) differs from 1gpu-fp32, the error bf16 itself makes on this
job. 2gpu vs 1gpu-halves shows whether the distributed path adds any error of its own beyond that split.
In fp32 runs the bar is a fixed 1e-4.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import Example, collate  # noqa: E402
from training.lori_a import seeded_a  # noqa: E402
from training.model_setup import (attach_adapters, default_target_modules, device_and_dtype,  # noqa: E402
                                  freeze_a, trainable_adapter_weights)
from training.optim import AdapterOptimizer  # noqa: E402
from training.parallel import Ranks  # noqa: E402
from training.step import CausalLMLoss, train_step  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
RANK, ALPHA, MASK_DENSITY, LR = 32, 64, 0.1, 5e-4
FP32_TOLERANCE = 1e-4
TARGET_SPEEDUP = 1.8
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def build(shape: dict, device: torch.device, dtype: torch.dtype):
    """(lm, B weights, frozen A, masks): the same model and LoRI-S adapters on every rank and in every run."""
    torch.manual_seed(0)
    with torch.device(device):  # parameters are created and initialised directly on the GPU
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape, tie_word_embeddings=False, use_cache=False),
                                                 dtype=dtype)
    peft_model = attach_adapters(model, rank=RANK, alpha=ALPHA, target_modules=default_target_modules(model),
                                 keep_model_dtype=dtype != torch.float32)
    frozen_a = freeze_a(peft_model, lambda module, r, in_features: seeded_a(0, module, (r, in_features)))
    weights = trainable_adapter_weights(peft_model)  # {lora_B key: [out, r]}
    g = torch.Generator(device="cpu").manual_seed(0)
    masks = {k: torch.rand(w.shape, generator=g) < MASK_DENSITY for k, w in weights.items()}
    return peft_model.get_base_model(), weights, frozen_a, masks


def fresh_optimizer(weights: dict, masks: dict) -> AdapterOptimizer:
    """B back to its initial zeros and a new AdamW: every check variant starts from the same adapters."""
    with torch.no_grad():
        for w in weights.values():
            w.zero_()
    return AdapterOptimizer(weights, lr=LR, weight_decay=0.0, grad_clip=1.0, masks=masks)


def random_rows(g: torch.Generator, rows: int, seq: int, vocab: int) -> list[Example]:
    ids = torch.randint(0, vocab, (rows, seq), generator=g).tolist()
    return [Example(input_ids=row, labels=row) for row in ids]


def worker(args) -> None:
    """One rank (started by torchrun)."""
    dist = Ranks()
    measure(dist, args)  # returns once its DDP wrapper is gone, as close() wants
    dist.close()


def measure(dist: Ranks, args) -> None:
    """The check phase (each variant of this world size), then the throughput phase; rank 0 writes results."""
    device, dtype = device_and_dtype()
    device, dtype = dist.place(device), DTYPES.get(args.dtype, dtype)
    shape = TINY if args.tiny else LLAMA3_8B
    lm, weights, frozen_a, masks = build(shape, device, dtype)
    dist.check_identical({"frozen A": list(frozen_a.values()), "masks": list(masks.values()),
                          "B": list(weights.values())})
    loss_fn = dist.wrap(CausalLMLoss(lm))
    optimizer = fresh_optimizer(weights, masks)

    def step(rows: list[Example]) -> torch.Tensor:
        """The distributed loop's step (training/recipe.py train_process) on a global batch."""
        batch = collate(dist.shard(rows), pad_id=0)
        return dist.mean(train_step(lm, batch, optimizer, loss_fn=loss_fn, normalizer=dist.normalizer(rows)))

    def step_in_halves(rows: list[Example]) -> torch.Tensor:
        """One GPU doing what two ranks do: each half's loss normalised as a rank's, gradients summed by
        accumulation, then halved (exactly, a power of two) as DDP's average over two ranks does."""
        half = len(rows) // 2
        normalizer = dist.normalizer(rows) / 2  # a rank's share of the global labelled tokens
        loss = 0.0
        for part in (rows[:half], rows[half:]):
            batch = {k: v.to(device) for k, v in collate(part, pad_id=0).items()}
            part_loss = CausalLMLoss(lm)(batch, normalizer)
            part_loss.backward()
            loss = loss + part_loss.detach() / 2
        for p in optimizer.params:
            p.grad.mul_(0.5)
        optimizer.step()
        return loss

    variants = {"2gpu": step} if dist.world_size == 2 else {"1gpu": step, "1gpu-repeat": step}
    if dist.world_size == 1 and args.batch % 2 == 0:
        variants["1gpu-halves"] = step_in_halves
    checks = {}
    for name, fn in variants.items():
        optimizer = fresh_optimizer(weights, masks)  # the step closures use the current one
        checks[name] = run_check(fn, optimizer, args, shape)
    optimizer = fresh_optimizer(weights, masks)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # the throughput phase's peak (the checks may use math attention)

    g = torch.Generator(device="cpu").manual_seed(2)
    rows = random_rows(g, args.batch * dist.world_size, args.seq, shape["vocab_size"])  # args.batch per rank
    for _ in range(args.settle_steps):
        step(rows)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step(rows).item()  # the loop's per-step host sync (loss.item()) included
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None

    if dist.world_size == 1 and dtype == torch.bfloat16 and not args.no_reference:
        del loss_fn, optimizer, lm, weights, frozen_a
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        lm, weights, _, masks = build(shape, device, torch.float32)
        optimizer = fresh_optimizer(weights, masks)
        loss_fn = dist.wrap(CausalLMLoss(lm))
        checks["1gpu-fp32"] = run_check(step, optimizer, args, shape)
    if dist.is_main:
        for name, (_, b) in checks.items():
            save_file(b, str(Path(args.out) / f"b-{name}.safetensors"))
        (Path(args.out) / f"world{dist.world_size}.json").write_text(json.dumps({
            "world_size": dist.world_size, "tokens_per_s": args.steps * len(rows) * args.seq / seconds,
            "step_s": seconds / args.steps, "peak_gib": peak, "final_loss": loss,
            "check_losses": {name: losses for name, (losses, _) in checks.items()},
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype)}))


def run_check(step, optimizer: AdapterOptimizer, args, shape: dict) -> tuple[list[float], dict]:
    """--check-steps steps on the check batches (the same in every variant and run); (losses, trained B's)."""
    g = torch.Generator(device="cpu").manual_seed(1)
    with deterministic_kernels(args.deterministic):
        losses = [step(random_rows(g, args.batch, args.seq, shape["vocab_size"])).item()
                  for _ in range(args.check_steps)]
    # clone: on the CPU in fp32 the masters are the parameters, which later variants reset and train
    trained = {k: m.detach().float().cpu().clone() for k, m in zip(optimizer.names, optimizer.masters)}
    return losses, trained


@contextlib.contextmanager
def deterministic_kernels(enabled: bool):
    """--deterministic: deterministic algorithms (cuBLAS with a fixed workspace, CUBLAS_WORKSPACE_CONFIG set
    by main) and the math attention kernel, whose backward, unlike the fused ones, accumulates in a fixed
    order. Only around the check steps: the throughput phase runs the job's usual kernels."""
    if not enabled:
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(False)


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over modules of ||a - b|| / ||a|| (Frobenius)."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).norm() / a[k].norm().clamp(min=1e-30)) for k in a)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny Llama on the CPU with gloo (checks the script)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--batch", type=int, default=4, help="rows per GPU (the check phase's global batch)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per row (default 1024, tiny 64)")
    parser.add_argument("--check-steps", type=int, default=3)
    parser.add_argument("--settle-steps", type=int, default=3, help="untimed steps before the timed ones")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10, tiny 3)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the fp32 reference run of a bf16 benchmark (no bf16 tolerance then)")
    parser.add_argument("--deterministic", action="store_true",
                        help="check steps with deterministic kernels (math attention), to separate the 2-GPU "
                             "split from run-to-run kernel noise")
    parser.add_argument("--one-gpu", action="store_true",
                        help="world size 1 only: the one-GPU check variants (what the split alone does)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.seq = args.seq or (64 if args.tiny else 1024)
    args.steps = args.steps or (3 if args.tiny else 10)
    if args.worker:
        worker(args)
        return {}
    world_sizes = (1,) if args.one_gpu else (1, 2)
    if not args.tiny and torch.cuda.device_count() < max(world_sizes):
        parser.error("this needs 2 CUDA GPUs; use --tiny on the CPU, or --one-gpu")

    with tempfile.TemporaryDirectory(prefix="lorifold-multigpu-") as out:
        worker_args = [f"--batch={args.batch}", f"--seq={args.seq}", f"--check-steps={args.check_steps}",
                       f"--settle-steps={args.settle_steps}", f"--steps={args.steps}", f"--out={out}"]
        worker_args += ["--tiny"] * args.tiny + [f"--dtype={args.dtype}"] * bool(args.dtype)
        worker_args += ["--no-reference"] * args.no_reference + ["--deterministic"] * args.deterministic
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                          os.environ.get("PYTHONPATH")]))}
        if args.deterministic:
            env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # what deterministic cuBLAS needs, before it starts
        if args.tiny:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU and gloo, also on a GPU host
        for world_size in world_sizes:
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={world_size}", __file__, "--worker", *worker_args],
                           env=env, check=True)
        rows = [json.loads((Path(out) / f"world{n}.json").read_text()) for n in world_sizes]
        trained = {p.stem[2:]: load_file(str(p)) for p in Path(out).glob("b-*.safetensors")}

    one = rows[0]["tokens_per_s"]
    bf16 = "bfloat16" in rows[0]["dtype"]
    print(f"{'tiny' if args.tiny else 'Llama-3-8B shape'}, {rows[0]['dtype']}, lori_s rank {RANK}, "
          f"{args.batch} x {args.seq} tokens per GPU, {args.steps} timed steps on {rows[0]['device']}"
          + (", check steps with deterministic kernels" if args.deterministic else ""))
    print(f"{'GPUs':>4} {'tokens/s':>10} {'per GPU':>9} {'speed-up':>9} {'efficiency':>10} {'step s':>7} "
          f"{'peak GiB':>8}")
    for r in rows:
        n, speedup = r["world_size"], r["tokens_per_s"] / one
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"{n:4d} {r['tokens_per_s']:10.0f} {r['tokens_per_s'] / n:9.0f} {speedup:8.2f}x "
              f"{speedup / n:10.2f} {r['step_s']:7.3f} {peak:>8}")
    speedup = rows[1]["tokens_per_s"] / one if len(rows) > 1 else None
    if speedup is not None:
        print(f"2 GPUs / 1 GPU: {speedup:.2f}x tokens/s (target >= {TARGET_SPEEDUP}x: "
              f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})")

    pairs = [("2gpu", "1gpu", "2 GPUs vs 1 GPU (the two jobs)"),
             ("1gpu-repeat", "1gpu", "1 GPU vs 1 GPU again (kernel nondeterminism)"),
             ("2gpu", "1gpu-halves", "2 GPUs vs 1 GPU summing the same two halves"),
             ("1gpu-halves", "1gpu", "1 GPU: two halves summed vs the whole batch"),
             ("1gpu", "1gpu-fp32", "1 GPU bf16 vs 1 GPU fp32 (bf16's own error)")]
    differences = {(a, b): relative_difference(trained[b], trained[a]) for a, b, _ in pairs
                   if a in trained and b in trained}
    print(f"adapters after {args.check_steps} steps on the same data, max over modules of ||B_x - B_y|| / ||B_y||:")
    for a, b, label in pairs:
        if (a, b) in differences:
            print(f"  {label:48} {differences[a, b]:.2e}")
    difference = differences.get(("2gpu", "1gpu"))
    tolerance = differences.get(("1gpu", "1gpu-fp32")) if bf16 else FP32_TOLERANCE
    ok = None if difference is None else tolerance is not None and difference <= tolerance
    if difference is not None:
        source = "bf16 vs fp32 on 1 GPU, measured above" if bf16 else "fixed for fp32"
        print(f"2-GPU adapter equals the 1-GPU adapter within {'bf16' if bf16 else 'fp32'} tolerance "
              f"({difference:.2e} <= {tolerance if tolerance is None else f'{tolerance:.2e}'}, {source}): "
              f"{'yes' if ok else 'NO'}")
    print("check losses: " + "; ".join(f"{name} {[round(x, 6) for x in losses]}" for r in rows
                                       for name, losses in r["check_losses"].items()))
    return {"rows": rows, "speedup": speedup, "relative_difference": difference, "tolerance": tolerance,
            "differences": {f"{a} vs {b}": d for (a, b), d in differences.items()}, "equivalent": ok}


if __name__ == "__main__":
    sys.exit(1 if main().get("equivalent") is False else 0)
