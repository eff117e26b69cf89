"""benchmarks/train_multigpu.py --tiny must keep running: two torchrun launches (world size 1 and 2, gloo)
of the code the GPU numbers come from."""
import importlib.util
from pathlib import Path


def test_multigpu_benchmark_runs_tiny_on_cpu(capsys):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_multigpu.py"
    spec = importlib.util.spec_from_file_location("train_multigpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--tiny", "--deterministic", "--check-steps", "2", "--settle-steps", "0", "--steps", "1"])
    assert [r["world_size"] for r in result["rows"]] == [1, 2]
    assert all(r["tokens_per_s"] > 0 for r in result["rows"])
    assert result["equivalent"] and result["relative_difference"] < 1e-4  # fp32 on the CPU
    # the distributed path computes exactly what one process does with the ranks' halves
    assert result["differences"]["2gpu vs 1gpu-halves"] < 1e-6
    assert result["differences"]["1gpu-repeat vs 1gpu"] == 0.0
    out = capsys.readouterr().out
    assert "2 GPUs / 1 GPU" in out and "||B_x - B_y|| / ||B_y||" in out
