"""benchmarks/train_throughput.py --tiny must keep running (the GPU numbers come from the same code)."""
import importlib.util
from pathlib import Path


def test_throughput_benchmark_runs_tiny_on_cpu(capsys):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--tiny", "--no-compile", "--steps", "1", "--settle-steps", "0"])
    assert [r["name"] for r in rows] == ["lorifold lori_s eager", "peft loop, A trains", module.BASELINE]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert f"lorifold lori_s eager / {module.BASELINE}" in capsys.readouterr().out
