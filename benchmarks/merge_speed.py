# Run: .venv/bin/python benchmarks/merge_speed.py --device cpu --shapes 1b,8b --peft-svd-layers 1 --threads 1
#      .venv/bin/python benchmarks/merge_speed.py --device cuda --shapes 1b,8b
"""Merge speed of lorifold vs PEFT's add_weighted_adapter on Llama-shaped LoRA adapters.

Four random rank-32 adapters on all seven projections of Llama-3.2-1B-shaped (hidden 2048, MLP 8192, 16
layers, k/v out 512) or Llama-3.1-8B-shaped (4096, 14336, 32 layers, k/v out 1024) modules are written as
PEFT folders into a temp dir. Timed on the same inputs in one run:
- lorifold `concat` and exact rank-k `linear` (k = 32 and 128), file to file (read, merge, write, fsync)
  and compute only (time inside the method, synchronised on CUDA);
- PEFT add_weighted_adapter 'cat' and 'svd' (svd_rank = k, svd_full_matrices=False, its faster setting) on a
  model whose base Linear layers are shape-only stubs (LoRA weights are real; base weights are not needed);
  the adapters are loaded with PeftModel.from_pretrained / load_adapter first (not timed). PEFT's svd runs a
  dense SVD per module; with --peft-svd-layers N it is timed on N layers and scaled by layers / N ("~").
Every measurement runs in a fresh spawned process, so peak RSS (VmHWM) is its own: it includes the
interpreter and torch ("idle" column: the same process before the work) and, for PEFT, the loaded adapters.
GPU peak is torch.cuda.max_memory_allocated. Random factors are honest for speed: the work does not depend
on the values.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapterio.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, lora_key  # noqa: E402
from adapterio.safetensors_writer import SafetensorsWriter, TensorSpec  # noqa: E402
from merging import MergeInput, MergeParams, merge_adapters  # noqa: E402
from merging.execute import BATCH_BYTES  # noqa: E402
from merging.peft_io import tensor_buffer  # noqa: E402

SHAPES = {  # hidden, intermediate, layers, k/v out
    "1b": (2048, 8192, 16, 512),
    "8b": (4096, 14336, 32, 1024),
}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, N_ADAPTERS = 32, 4


def module_shapes(shape: str, layers: int | None = None) -> dict[str, tuple[int, int]]:
    """{module path: (out, in)} of a Llama of this shape."""
    hidden, inter, n_layers, kv = SHAPES[shape]
    per_layer = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden),
                 "self_attn.v_proj": (kv, hidden), "self_attn.o_proj": (hidden, hidden),
                 "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
    return {f"model.layers.{i}.{name}": s for i in range(layers or n_layers) for name, s in per_layer.items()}


def write_random_adapter(path: Path, shapes: dict[str, tuple[int, int]], seed: int) -> Path:
    """A PEFT LoRA folder of random float32 factors, written module by module."""
    path.mkdir(parents=True)
    specs = {}
    for module, (out, inp) in shapes.items():
        specs[lora_key(module, "A")] = TensorSpec("F32", (RANK, inp))
        specs[lora_key(module, "B")] = TensorSpec("F32", (out, RANK))
    g = torch.Generator().manual_seed(seed)
    with SafetensorsWriter(path / ADAPTER_WEIGHTS, specs, {"format": "pt"}) as w:
        for module, (out, inp) in shapes.items():
            w.write(lora_key(module, "A"), tensor_buffer(torch.randn(RANK, inp, generator=g) / inp ** 0.5))
            w.write(lora_key(module, "B"), tensor_buffer(torch.randn(out, RANK, generator=g) * 0.01))
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": PROJECTIONS,
              "bias": "none", "lora_dropout": 0.0}
    (path / ADAPTER_CONFIG).write_text(json.dumps(config))
    return path


# --- measurement in a fresh process ------------------------------------------------------------

def status_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"no {field} in /proc/self/status")


def measured(work, device: torch.device) -> dict:
    """Run work() and return its seconds, peak RSS since the start (VmHWM reset) and GPU peak."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    idle = status_gib("VmRSS")
    start = time.perf_counter()
    extra = work() or {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"seconds": time.perf_counter() - start, "rss": status_gib("VmHWM"), "idle": idle,
            "gpu": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None, **extra}


def lorifold_job(paths, warm_paths, method, rank, out_dir, device_name, threads) -> dict:
    torch.set_num_threads(threads)
    params = MergeParams(rank=rank)
    merge_adapters([MergeInput(p, 1.0) for p in warm_paths], method, params, out_dir / "warm", device=device_name)

    def work():
        summary = merge_adapters([MergeInput(p, 1.0) for p in paths], method, params, out_dir / "out",
                                 device=device_name)
        return {"compute": summary.compute_seconds, "out_gib": summary.bytes_written / 2**30}
    return measured(work, torch.device(device_name))


def peft_job(shape, paths, combination_type, rank, layers, device_name, threads) -> dict:
    from peft import PeftModel

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unexpected keys when timing on fewer layers
        model = PeftModel.from_pretrained(stub_model(module_shapes(shape, layers), device), paths[0],
                                          adapter_name="a0")
        for i, path in enumerate(paths[1:], start=1):
            model.load_adapter(path, adapter_name=f"a{i}")
    kwargs = {"svd_rank": rank, "svd_full_matrices": False} if combination_type == "svd" else {}

    def work():
        with torch.no_grad():
            model.add_weighted_adapter([f"a{i}" for i in range(len(paths))], [1.0] * len(paths), "merged",
                                       combination_type=combination_type, **kwargs)
    return measured(work, device)


def in_fresh_process(fn, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def stub_linear(inp: int, out: int, device: torch.device) -> nn.Linear:
    """nn.Linear with the right in/out features for PEFT, but a 1-element placeholder weight."""
    layer = nn.Linear(inp, out, bias=False, device="meta")
    layer.weight = nn.Parameter(torch.empty(1, device=device), requires_grad=False)
    return layer


def stub_model(shapes: dict[str, tuple[int, int]], device: torch.device) -> nn.Module:
    """A module tree with the Llama module paths; each adapted module is a stub Linear."""
    root = nn.Module()
    for module, (out, inp) in shapes.items():
        *parents, leaf = module.split(".")
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, nn.Module())
            node = getattr(node, name)
        node.add_module(leaf, stub_linear(inp, out, device))
    return root


# --- main ---------------------------------------------------------------------------------------

def run_shape(shape: str, args, rows: list[dict]) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"merge_speed_{shape}_", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        paths = [write_random_adapter(root / f"in{i}", module_shapes(shape), seed=i) for i in range(N_ADAPTERS)]
        warm = [write_random_adapter(root / f"warm{i}", module_shapes(shape, 1), seed=i) for i in range(N_ADAPTERS)]
        input_gib = sum((p / ADAPTER_WEIGHTS).stat().st_size for p in paths) / 2**30
        print(f"[{shape}] wrote {N_ADAPTERS} rank-{RANK} adapters, {input_gib:.2f} GiB, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        n_layers = SHAPES[shape][2]
        cases = [("concat", None, "cat")] + [(f"linear k={k}", k, "svd") for k in args.ranks]
        for label, k, peft_type in cases:
            ours = in_fresh_process(lorifold_job, paths, warm, label.split()[0], k, root, args.device, args.threads)
            shutil.rmtree(root / "out")
            shutil.rmtree(root / "warm")
            layers = min(args.peft_svd_layers or n_layers, n_layers) if peft_type == "svd" else n_layers
            peft = in_fresh_process(peft_job, shape, paths, peft_type, k, layers, args.device, args.threads)
            rows.append({"shape": shape, "method": label, "ours": ours, "peft": peft,
                         "peft_seconds": peft["seconds"] * n_layers / layers, "extrapolated": layers != n_layers})
            print_row(rows[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)


HEADER = (f"{'shape':5} {'method':12} {'f2f s':>7} {'compute s':>9} {'PEFT s':>9} {'PEFT/f2f':>8} {'PEFT/comp':>9} "
          f"{'out GiB':>7} {'RSS GiB (idle)':>14} {'PEFT RSS':>8} {'GPU GiB':>7} {'PEFT GPU':>8}")


def print_row(row: dict) -> None:
    ours, peft, t = row["ours"], row["peft"], row["peft_seconds"]
    gpu = lambda v: f"{v:7.2f}" if v is not None else "      -"  # noqa: E731
    print(f"{row['shape']:5} {row['method']:12} {ours['seconds']:7.2f} {ours['compute']:9.2f} "
          f"{'~' if row['extrapolated'] else ' '}{t:8.2f} {t / ours['seconds']:7.1f}x {t / ours['compute']:8.1f}x "
          f"{ours['out_gib']:7.2f} {ours['rss']:6.2f} ({ours['idle']:5.2f}) {peft['rss']:8.2f} "
          f"{gpu(ours['gpu'])} {gpu(peft['gpu'])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--shapes", default="1b,8b", help="comma list of " + ", ".join(SHAPES))
    parser.add_argument("--ranks", default="32,128", help="target ranks k for linear")
    parser.add_argument("--peft-svd-layers", type=int, default=None,
                        help="time PEFT's svd on this many layers and extrapolate (default: all layers)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads; 1 is faster on a CPU shared with other busy processes")
    parser.add_argument("--tmp", default=None, help="directory for the adapter files (default: system temp)")
    args = parser.parse_args()
    args.ranks = [int(k) for k in args.ranks.split(",")]
    shapes = args.shapes.split(",")
    if set(shapes) - set(SHAPES):
        parser.error(f"unknown shapes {sorted(set(shapes) - set(SHAPES))}; choose from {', '.join(SHAPES)}")
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"merge batches of {BATCH_BYTES[torch.device(args.device).type] // 2**20} MiB, "
          f"load average {os.getloadavg()[0]:.1f}; {N_ADAPTERS} inputs of rank {RANK}; f2f = file to file; "
          "PEFT/x = PEFT add_weighted_adapter time / ours; ~ = PEFT svd timed on --peft-svd-layers layers and "
          "scaled to all", flush=True)
    print(HEADER, flush=True)
    rows: list[dict] = []
    for shape in shapes:
        run_shape(shape, args, rows)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print(HEADER)
    for row in rows:
        print_row(row)


if __name__ == "__main__":
    main()
