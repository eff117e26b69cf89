"""End-to-end runs of the recipe on the tiny Llama (CPU, well under a second of training each)."""
from __future__ import annotations

import statistics

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from adapterio.peft_format import (ADAPTER_WEIGHTS, LORI_MASKS, META_A_SEED, META_KIND, META_SPARSITY,
                                   parse_lora_key)
from adapterio.safetensors_header import read_header_from_path
from tests import factories
from training.lori_a import orthogonal_a, seeded_a
from training.masks import extract_lori_mask, load_masks
from training.recipe import TrainConfig, TrainingStopped, run_training

A_SEED = 1234
FAST = dict(rank=8, batch_size=8, max_length=32, checkpoint_every=1000, compile=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return factories.write_jsonl(tmp_path_factory.mktemp("data") / "arithmetic.jsonl", factories.arithmetic_rows(64))


def _run(config, base, data, root, **kwargs):
    return run_training(config, base_model_dir=base, dataset_path=data, out_dir=root / "adapter",
                        checkpoint_dir=root / "checkpoints", **kwargs)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, data, tmp_path_factory):
    config = TrainConfig(method="lora", lr=3e-2, max_steps=40, **FAST)
    return _run(config, tiny_model_dir, data, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def lori_d_run(tiny_model_dir, data, tmp_path_factory):
    config = TrainConfig(method="lori_d", a_seed=A_SEED, lr=3e-2, max_steps=40, **FAST)
    return _run(config, tiny_model_dir, data, tmp_path_factory.mktemp("lori_d"))


@pytest.fixture(scope="module")
def lori_s_run(tiny_model_dir, data, lori_d_run, tmp_path_factory):
    config = TrainConfig(method="lori_s", a_seed=A_SEED, lr=1e-1, max_steps=40,
                         mask_path=str(lori_d_run.out_dir / LORI_MASKS), **FAST)
    return _run(config, tiny_model_dir, data, tmp_path_factory.mktemp("lori_s"))


def _tensors(result):
    return load_file(str(result.out_dir / ADAPTER_WEIGHTS))


@pytest.mark.parametrize("run", ["lora_run", "lori_d_run", "lori_s_run"])
def test_loss_falls(request, run):
    metrics = request.getfixturevalue(run).metrics
    curve = metrics["loss_curve"]
    assert metrics["steps"] == len(curve) == 40 and metrics["final_loss"] == curve[-1]
    assert statistics.mean(curve[-5:]) < statistics.mean(curve[:3]) - 0.1
    assert metrics["tokens"] > metrics["supervised_tokens"] > 0 and metrics["seconds"] > 0


def test_lora_trains_both_factors_and_records_its_kind(lora_run):
    header = read_header_from_path(lora_run.out_dir / ADAPTER_WEIGHTS)
    assert header.metadata[META_KIND] == "lora" and META_A_SEED not in header.metadata
    assert not (lora_run.out_dir / LORI_MASKS).exists()
    assert lora_run.metrics["trainable_params"] == sum(t.numel() for t in _tensors(lora_run).values())


def test_lori_d_saves_dense_b_and_its_model_wide_mask(lori_d_run):
    tensors = _tensors(lori_d_run)
    b = {k: t for k, t in tensors.items() if parse_lora_key(k)[1] == "B"}
    masks = load_masks(lori_d_run.out_dir / LORI_MASKS)
    expected = extract_lori_mask(b, 0.9)
    assert masks.keys() == expected.keys() and all(torch.equal(masks[k], expected[k]) for k in masks)
    assert sum(int((t != 0).sum()) for t in b.values()) > 0.9 * sum(t.numel() for t in b.values())
    header = read_header_from_path(lori_d_run.out_dir / ADAPTER_WEIGHTS)
    assert header.metadata[META_KIND] == "lori_d" and header.metadata[META_A_SEED] == str(A_SEED)
    assert float(header.metadata[META_SPARSITY]) == pytest.approx(0.9, abs=1e-3)


def test_lori_s_result_is_exactly_sparse_regenerable_and_loads_with_peft(lori_s_run, lori_d_run, tiny_model_dir):
    out = lori_s_run.out_dir
    tensors = _tensors(lori_s_run)
    masks = load_masks(out / LORI_MASKS)
    d_masks = load_masks(lori_d_run.out_dir / LORI_MASKS)
    assert all(torch.equal(masks[k], d_masks[k]) for k in d_masks)  # the mask it trained under
    n = sum(m.numel() for m in masks.values())
    assert n - sum(int(m.sum()) for m in masks.values()) == n - round(0.1 * n)  # exact zero fraction
    nonzero = 0
    for key, t in tensors.items():
        module, factor = parse_lora_key(key)
        if factor == "A":
            assert torch.equal(t, seeded_a(A_SEED, module, tuple(t.shape)))
        else:
            assert t.dtype == torch.float32 and (t[~masks[key]] == 0).all()
            nonzero += int((t != 0).sum())
    assert 0 < nonzero <= n - round(0.9 * n)
    header = read_header_from_path(out / ADAPTER_WEIGHTS)
    assert header.metadata[META_KIND] == "lori_s" and header.metadata[META_A_SEED] == str(A_SEED)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(ids).logits
    model = PeftModel.from_pretrained(base, out)
    assert not torch.allclose(model(ids).logits, before)  # the trained B changes the outputs
    loaded = {k.replace(".default", ""): p for k, p in model.named_parameters() if "lora_" in k}
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_orthogonal_adapters_read_disjoint_directions_in_every_module(tiny_model_dir, data, tmp_path):
    a = {}
    for offset in (0, 8):
        config = TrainConfig(method="lori_d", a_seed=offset, a_init="orthogonal", basis_seed=77, a_offset=offset,
                             max_steps=2, **FAST)
        tensors = _tensors(_run(config, tiny_model_dir, data, tmp_path / str(offset)))
        a[offset] = {k: t for k, t in tensors.items() if parse_lora_key(k)[1] == "A"}
    assert len(a[0]) == 14
    for key, a0 in a[0].items():
        module = parse_lora_key(key)[0]
        assert torch.equal(a[8][key], orthogonal_a(77, module, a0.shape[1], offset=8, rank=8))
        assert (a0.double() @ a[8][key].double().T).abs().max() < 1e-6


def test_events_and_should_stop(tiny_model_dir, data, tmp_path):
    events = []
    progress = lambda: [e for e in events if e["type"] == "progress"]  # noqa: E731
    config = TrainConfig(method="lora", max_steps=10, **FAST)
    with pytest.raises(TrainingStopped):
        _run(config, tiny_model_dir, data, tmp_path, on_event=events.append,
             should_stop=lambda: len(progress()) >= 3)
    assert [e["step"] for e in progress()] == [1, 2, 3]
    assert set(progress()[0]) == {"type", "step", "total_steps", "loss", "lr", "tokens_per_s", "eta_s"}
    assert progress()[0]["total_steps"] == 10 and progress()[0]["eta_s"] >= 0
    assert any(e["type"] == "log" for e in events)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]
    assert not (tmp_path / "adapter").exists()


def _same_adapter(a, b):
    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and all(torch.allclose(ta[k], tb[k], atol=1e-6) for k in ta)


def test_resume_after_crash_matches_uninterrupted_run(tiny_model_dir, data, tmp_path):
    # lora: both factors and their AdamW state must come back; 12 steps cross an epoch (8 batches).
    config = TrainConfig(method="lora", lr=3e-2, max_steps=12, **{**FAST, "checkpoint_every": 3})
    reference = _run(config, tiny_model_dir, data, tmp_path / "reference")

    def crash_at_step_10(event):
        if event["type"] == "progress" and event["step"] == 10:
            raise RuntimeError("worker died")
    with pytest.raises(RuntimeError, match="worker died"):
        _run(config, tiny_model_dir, data, tmp_path / "resumed", on_event=crash_at_step_10)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-00000009"]

    with pytest.raises(ValueError, match="lr"):
        _run(TrainConfig(method="lora", lr=1e-2, max_steps=12, **FAST), tiny_model_dir, data, tmp_path / "resumed")
    resumed = _run(config, tiny_model_dir, data, tmp_path / "resumed")
    assert resumed.metrics["resumed_from_step"] == 9 and resumed.metrics["steps"] == 12
    assert resumed.metrics["loss_curve"] == pytest.approx(reference.metrics["loss_curve"], abs=1e-5)
    assert _same_adapter(resumed, reference)


def test_resume_after_stop_matches_uninterrupted_run_for_lori_s(tiny_model_dir, data, lori_d_run, tmp_path):
    config = TrainConfig(method="lori_s", a_seed=A_SEED, lr=1e-1, max_steps=6,
                         mask_path=str(lori_d_run.out_dir / LORI_MASKS), **FAST)
    reference = _run(config, tiny_model_dir, data, tmp_path / "reference")
    calls = iter(range(100))
    with pytest.raises(TrainingStopped):
        _run(config, tiny_model_dir, data, tmp_path / "resumed", should_stop=lambda: next(calls) == 4)
    resumed = _run(config, tiny_model_dir, data, tmp_path / "resumed")
    assert resumed.metrics["resumed_from_step"] == 4
    assert _same_adapter(resumed, reference)


def test_gpu_precision_path_on_cpu_keeps_fp32_masters_and_exact_a(tiny_model_dir, data, lori_d_run, tmp_path,
                                                                    monkeypatch):
    # The CUDA path (bf16 model and adapters, fp32 masters) run on the CPU by faking the device choice.
    import training.recipe

    monkeypatch.setattr(training.recipe, "device_and_dtype", lambda: (torch.device("cpu"), torch.bfloat16))
    config = TrainConfig(method="lori_s", a_seed=A_SEED, lr=1e-1, max_steps=20,
                         mask_path=str(lori_d_run.out_dir / LORI_MASKS), **FAST)
    result = _run(config, tiny_model_dir, data, tmp_path)
    curve = result.metrics["loss_curve"]
    assert statistics.mean(curve[-5:]) < statistics.mean(curve[:3])
    masks = load_masks(result.out_dir / LORI_MASKS)
    trained_inside_mask = 0
    for key, t in _tensors(result).items():
        module, factor = parse_lora_key(key)
        assert t.dtype == torch.float32
        if factor == "A":
            assert torch.equal(t, seeded_a(A_SEED, module, tuple(t.shape)))  # not its bf16 rounding
        else:  # the global mask may keep nothing of some module: count over the whole model
            assert (t[~masks[key]] == 0).all()
            trained_inside_mask += int((t[masks[key]] != 0).sum())
    assert trained_inside_mask > 0
