"""Distributed training on the CPU: torchrun with the gloo backend, two processes (one for world size 1),
against run_training in this process. Each torchrun start costs a few seconds of imports per rank.

The data (21 rows, batch 5) makes the last batch of every epoch a single row, so in a two-rank run one
rank gets nothing to learn from there (parallel.Ranks.shard's placeholder row), and the runs cross an
epoch boundary. Learning rates are moderate so that fp32 rounding differences between one process and
two (different summation order of the same gradient) are not amplified by Adam into visible drift.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adapterio.peft_format import ADAPTER_WEIGHTS, LORI_MASKS, parse_lora_key
from tests import factories
from training.data import IGNORE_INDEX, Example
from training.distributed import run_training_distributed
from training.lori_a import seeded_a
from training.masks import load_masks
from training.parallel import Ranks
from training.recipe import TrainConfig, TrainingStopped, run_training

A_SEED = 1234
# fp32 equality to 1e-5 holds on the CPU; on a GPU host the same tests would run in bf16 on cuda devices
# (the GPU comparison lives in benchmarks/train_multigpu.py and test_world_size_one_on_a_gpu_with_nccl).
cpu_only = pytest.mark.skipif(torch.cuda.is_available(),
                              reason="gloo ranks on the CPU (on a CUDA host every rank would take a GPU)")
FAST = dict(rank=8, batch_size=5, max_length=32, checkpoint_every=1000, compile=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return factories.write_jsonl(tmp_path_factory.mktemp("data") / "sums.jsonl", factories.arithmetic_rows(21))


@pytest.fixture(scope="module")
def lori_d_mask(tiny_model_dir, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("lori_d")
    config = TrainConfig(method="lori_d", a_seed=A_SEED, lr=3e-2, max_steps=4, **FAST)
    run_training(config, base_model_dir=tiny_model_dir, dataset_path=data, out_dir=root / "adapter",
                 checkpoint_dir=root / "checkpoints")
    return str(root / "adapter" / LORI_MASKS)


def _paths(base, data, root):
    return dict(base_model_dir=base, dataset_path=data, out_dir=root / "adapter", checkpoint_dir=root / "checkpoints")


def _max_relative_difference(a, b) -> float:
    ta, tb = load_file(str(a.out_dir / ADAPTER_WEIGHTS)), load_file(str(b.out_dir / ADAPTER_WEIGHTS))
    assert ta.keys() == tb.keys()
    return max(float((ta[k] - tb[k]).abs().max() / ta[k].abs().max().clamp(min=1e-30)) for k in ta)


@cpu_only
@pytest.mark.parametrize("method", ["lora", "lori_s"])
def test_two_ranks_train_the_adapter_one_process_trains(method, tiny_model_dir, data, lori_d_mask, tmp_path):
    extra = dict(a_seed=A_SEED, mask_path=lori_d_mask, lr=3e-2) if method == "lori_s" else dict(lr=1e-2)
    config = TrainConfig(method=method, max_steps=8, **extra, **FAST)
    single = run_training(config, **_paths(tiny_model_dir, data, tmp_path / "single"))
    events = []
    two = run_training_distributed(config, world_size=2, backend="gloo", on_event=events.append,
                                   **_paths(tiny_model_dir, data, tmp_path / "two"))

    assert _max_relative_difference(single, two) < 1e-5
    assert two.metrics["world_size"] == 2 and two.metrics["steps"] == 8
    assert two.metrics["loss_curve"] == pytest.approx(single.metrics["loss_curve"], rel=1e-5)
    for key in ("tokens", "supervised_tokens", "trainable_params", "total_steps"):
        assert two.metrics[key] == single.metrics[key]
    assert [e["step"] for e in events if e["type"] == "progress"] == list(range(1, 9))
    if method == "lori_s":  # A regenerated from its seed, the same mask, B exactly zero outside it
        masks = load_masks(two.out_dir / LORI_MASKS)
        assert all(torch.equal(masks[k], m) for k, m in load_masks(lori_d_mask).items())
        for key, t in load_file(str(two.out_dir / ADAPTER_WEIGHTS)).items():
            module, factor = parse_lora_key(key)
            if factor == "A":
                assert torch.equal(t, seeded_a(A_SEED, module, tuple(t.shape)))
            else:
                assert (t[~masks[key]] == 0).all()


@cpu_only
def test_stop_checkpoints_and_a_resumed_run_finishes_like_an_uninterrupted_one(tiny_model_dir, data, tmp_path):
    # 60 steps of a few ms each: the stop (asked once step 1 is reported) lands long before the end.
    config = TrainConfig(method="lora", lr=1e-3, max_steps=60, **FAST)
    reference = run_training(config, **_paths(tiny_model_dir, data, tmp_path / "reference"))
    paths = _paths(tiny_model_dir, data, tmp_path / "two")
    events = []
    progress = lambda: [e["step"] for e in events if e["type"] == "progress"]  # noqa: E731
    with pytest.raises(TrainingStopped, match="stopped at step"):
        run_training_distributed(config, world_size=2, backend="gloo", on_event=events.append,
                                 should_stop=lambda: bool(progress()), **paths)
    stopped_at = progress()[-1]
    assert progress() == list(range(1, stopped_at + 1)) and stopped_at < 60
    assert [p.name for p in paths["checkpoint_dir"].iterdir()] == [f"step-{stopped_at:08d}"]
    assert not paths["out_dir"].exists()

    events.clear()
    resumed = run_training_distributed(config, world_size=2, backend="gloo", on_event=events.append, **paths)
    assert resumed.metrics["resumed_from_step"] == stopped_at and resumed.metrics["steps"] == 60
    assert progress() == list(range(stopped_at + 1, 61))
    assert any(e["type"] == "log" and e["message"].startswith(f"resumed from step-{stopped_at:08d}") for e in events)
    assert _max_relative_difference(reference, resumed) < 1e-5


@cpu_only
def test_world_size_one_through_torchrun_matches_run_training(tiny_model_dir, data, tmp_path):
    config = TrainConfig(method="lora", lr=1e-2, max_steps=6, **FAST)
    single = run_training(config, **_paths(tiny_model_dir, data, tmp_path / "single"))
    one = run_training_distributed(config, world_size=1, backend="gloo",
                                   **_paths(tiny_model_dir, data, tmp_path / "one"))
    assert one.metrics["world_size"] == 1
    assert _max_relative_difference(single, one) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")
def test_world_size_one_on_a_gpu_with_nccl(tiny_model_dir, data, tmp_path):
    """The GPU path of a distributed job: NCCL, cuda:LOCAL_RANK, bf16 model with fp32 masters."""
    config = TrainConfig(method="lora", lr=1e-2, max_steps=6, **FAST)
    single = run_training(config, **_paths(tiny_model_dir, data, tmp_path / "single"))
    one = run_training_distributed(config, world_size=1, **_paths(tiny_model_dir, data, tmp_path / "one"))
    assert one.metrics["world_size"] == 1
    assert _max_relative_difference(single, one) < 5e-2  # bf16 model: same step, different launch


@cpu_only
def test_a_failing_rank_is_reported_with_its_error(tiny_model_dir, tmp_path):
    config = TrainConfig(method="lora", max_steps=2, **FAST)
    with pytest.raises(RuntimeError, match=r"failed on rank 0: FileNotFoundError: .*missing\.jsonl"):
        run_training_distributed(config, world_size=2, backend="gloo",
                                 **_paths(tiny_model_dir, tmp_path / "missing.jsonl", tmp_path))


def test_requests_that_cannot_run_fail_before_starting_processes(tiny_model_dir, data, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="batch_size 5 is smaller than the 8 GPUs"):
        run_training_distributed(TrainConfig(method="lora", **FAST), world_size=8,
                                 **_paths(tiny_model_dir, data, tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="asks for 2 GPUs but this worker sees 1"):
        run_training_distributed(TrainConfig(method="lora", **FAST), world_size=2,
                                 **_paths(tiny_model_dir, data, tmp_path))


def test_ranks_split_the_global_batch_and_normalise_by_its_labelled_tokens():
    rows = [Example(input_ids=list(range(n)), labels=[IGNORE_INDEX] + list(range(1, n))) for n in (3, 4, 5, 6, 7)]

    def as_rank(rank: int, world_size: int) -> Ranks:
        ranks = object.__new__(Ranks)  # the slicing needs no process group
        ranks.rank, ranks.world_size = rank, world_size
        return ranks

    shards = [as_rank(r, 2).shard(rows) for r in range(2)]
    assert shards == [rows[:3], rows[3:]]
    assert as_rank(1, 2).normalizer(rows) * 2 == sum(n - 1 for n in (3, 4, 5, 6, 7))
    placeholder = as_rank(1, 2).shard(rows[:1])  # a one-row batch leaves rank 1 nothing to learn
    assert len(placeholder) == 1 and placeholder[0].labels == [IGNORE_INDEX]


@cpu_only
@pytest.mark.parametrize("gpus", [1, 2])
def test_the_train_job_runs_on_the_gpus_its_spec_asks_for(gpus, tiny_model_dir, data, tmp_path):
    train_job = pytest.importorskip("jobs.handlers.train")  # the jobs layer needs the service's dependencies
    config = TrainConfig(method="lora", lr=1e-2, max_steps=3, **FAST).to_dict()
    task = {"config": {**config, "gpus": gpus}, "base_model_dir": str(tiny_model_dir), "dataset_path": str(data),
            "out_dir": str(tmp_path / "out"), "checkpoint_dir": str(tmp_path / "checkpoints")}
    events = []
    output = train_job.compute(task, events.append, lambda: False)
    assert output["metrics"]["world_size"] == gpus and output["metrics"]["steps"] == 3
    assert (tmp_path / "out" / ADAPTER_WEIGHTS).exists()
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
