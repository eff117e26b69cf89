"""Upload and download a ~1 GiB adapter through a running lorifold server on loopback, next to naive
FastAPI endpoints (benchmarks/naive_server.py) served the same way in the same run.

    .venv/bin/python benchmarks/registry_io.py [--size-mb 1024] [--repeat 3]

Client: curl (C, so the client is not what is measured). lorifold fsyncs every stored file before it
becomes visible; the naive endpoints do not (a row with fsync is printed for a like-for-like view), so on
a disk slower than the network the durable write, not the HTTP path, is the ceiling. Server memory: peak RSS (VmHWM) of the server
process, reset before each phase through /proc/<pid>/clear_refs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_safetensors(path: Path, tensors: dict[str, list[int]], *, fill: bool) -> None:
    """F32 tensors of the given shapes; random bytes when `fill`, else a sparse file (headers only matter)."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        if fill:
            block = os.urandom(1 << 24)
            left = offset
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
        else:
            f.truncate(8 + len(raw) + offset)


def make_fixture(root: Path, size_mb: int) -> tuple[Path, Path]:
    """An 8B-Llama-shaped base (sparse, headers only) and a LoRA adapter of about size_mb on all 7 projections."""
    hidden, inter, kv, layers = 4096, 14336, 1024, 32
    shapes = {"q_proj": (hidden, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden), "o_proj": (hidden, hidden),
              "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    per_rank = sum(4 * (o + i) for o, i in shapes.values()) * layers
    rank = max(1, round(size_mb * 2**20 / per_rank))
    base, adapter = root / "base", root / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": hidden}))
    weights, lora = {}, {}
    for layer in range(layers):
        for name, (o, i) in shapes.items():
            group = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            module = f"model.layers.{layer}.{group}.{name}"
            weights[f"{module}.weight"] = [o, i]
            lora[f"base_model.model.{module}.lora_A.weight"] = [rank, i]
            lora[f"base_model.model.{module}.lora_B.weight"] = [o, rank]
    write_safetensors(base / "model.safetensors", weights, fill=False)
    write_safetensors(adapter / "adapter_model.safetensors", lora, fill=True)
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(shapes)}))
    return base, adapter


def start(cmd: list[str], env: dict, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server {cmd} did not start")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def curl(args: list[str]) -> float:
    out = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}",
                          "-H", f"Authorization: Bearer {ADMIN}", *args], check=True, capture_output=True, text=True)
    return float(out.stdout)


def measure(label, pid, size, run, repeat, table, between=None):
    best, peak = float("inf"), 0.0
    for _ in range(repeat):
        reset_peak(pid)
        best = min(best, run())
        peak = max(peak, peak_rss_mb(pid))
        if between:
            between()
    table.append((label, size / best / 1e6, peak))
    return size / best / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lorifold-bench-", dir=os.environ.get("BENCH_DIR")))
    procs = []
    try:
        base, adapter = make_fixture(work, args.size_mb)
        weights = adapter / "adapter_model.safetensors"
        size = weights.stat().st_size
        naive_root = work / "naive"
        naive_root.mkdir()
        shutil.copy(weights, naive_root / "naive-source")
        port, naive_port = free_port(), free_port()
        uv = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--log-level", "warning"]
        server = start([sys.executable, "-m", "cli.main", "serve", "--no-worker", "--port", str(port)],
                       {"LORIFOLD_DATA_DIR": str(work / "data"), "LORIFOLD_ADMIN_KEY": ADMIN,
                        "LORIFOLD_DATABASE_URL": ""}, port)
        naive = start(uv + ["--port", str(naive_port), "benchmarks.naive_server:app"],
                      {"NAIVE_ROOT": str(naive_root)}, naive_port)
        procs += [server, naive]
        url, nurl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{naive_port}"
        subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-H", f"Authorization: Bearer {ADMIN}",
                        "-H", "content-type: application/json", "-d",
                        json.dumps({"name": "llama8b", "local_path": str(base)}), f"{url}/v1/base-models"], check=True)
        sha = hashlib.sha256(weights.read_bytes()).hexdigest()
        table: list[tuple[str, float, float]] = []

        def delete_version():
            curl(["-X", "DELETE", f"{url}/v1/adapters/big/versions/1"])

        def lorifold_multipart():
            return curl(["-F", "name=big", "-F", "base_model=llama8b", "-F", f"files=@{adapter / 'adapter_config.json'}",
                         "-F", f"files=@{weights}", f"{url}/v1/adapters"])

        def lorifold_ranges():
            import urllib.request
            req = urllib.request.Request(f"{url}/v1/uploads", method="POST", headers={
                "Authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
                data=json.dumps({"filename": "adapter_model.safetensors", "size": size, "sha256": sha}).encode())
            uid = json.loads(urllib.request.urlopen(req).read())["id"]
            t = curl(["-X", "PUT", "-H", f"Content-Range: bytes 0-{size - 1}/{size}", "-H",
                      "content-type: application/octet-stream", "--data-binary", f"@{weights}", f"{url}/v1/uploads/{uid}"])
            t0 = time.perf_counter()
            curl(["-X", "POST", f"{url}/v1/uploads/{uid}/complete"])
            t += time.perf_counter() - t0
            curl(["-X", "DELETE", f"{url}/v1/uploads/{uid}"])
            return t

        up = measure("lorifold POST /v1/adapters (multipart, validated, stored)", server.pid, size, lorifold_multipart,
                     args.repeat, table, between=delete_version)
        nup = measure("naive UploadFile -> file + sha256 (multipart)", naive.pid, size,
                      lambda: curl(["-F", f"file=@{weights}", f"{nurl}/upload"]), args.repeat, table)
        measure("naive UploadFile -> file + sha256 + fsync (durable)", naive.pid, size,
                lambda: curl(["-F", f"file=@{weights}", f"{nurl}/upload?fsync=true"]), args.repeat, table)
        measure("lorifold resumable PUT (1 range) + complete (sha256 verify)", server.pid, size, lorifold_ranges,
                args.repeat, table)
        measure("naive raw PUT stream -> file + sha256", naive.pid, size,
                lambda: curl(["-X", "PUT", "--data-binary", f"@{weights}", f"{nurl}/raw"]), args.repeat, table)
        lorifold_multipart()
        down = measure("lorifold GET .../files/adapter_model.safetensors", server.pid, size,
                       lambda: curl([f"{url}/v1/adapters/big/versions/1/files/adapter_model.safetensors"]),
                       args.repeat, table)
        measure("lorifold GET .../archive (tar stream)", server.pid, size,
                lambda: curl([f"{url}/v1/adapters/big/versions/1/archive"]), args.repeat, table)
        ndown = measure("naive FileResponse download", naive.pid, size, lambda: curl([f"{nurl}/download"]),
                        args.repeat, table)
        print(f"\nadapter: {size / 2**20:.0f} MiB, best of {args.repeat}, curl client on loopback, {os.cpu_count()} cores\n")
        print(f"| {'path':<62} | {'MB/s':>7} | {'server peak RSS MiB':>19} |")
        print(f"|{'-' * 64}|{'-' * 9}|{'-' * 21}|")
        for label, mbps, rss in table:
            print(f"| {label:<62} | {mbps:7.0f} | {rss:19.0f} |")
        print(f"\nupload ratio (multipart, lorifold / naive): {up / nup:.2f}x   "
              f"download ratio (file, lorifold / naive): {down / ndown:.2f}x")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
