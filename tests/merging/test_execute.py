"""merge_adapters file to file: against PEFT's add_weighted_adapter, loading with PeftModel, folder layout,
scales, dtypes, masks and refusals."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from adapterio.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORI_MASKS, META_KIND, lora_key
from adapterio.safetensors_header import read_header_from_path
from merging import MergeInput, MergeParams, merge_adapters
from tests.factories import make_tokenizer, save_peft_adapter
from tests.merging.helpers import assert_deltas_close, peft_deltas, random_factors, write_adapter

SHAPES = {"model.layers.0.mlp.up_proj": (12, 8), "model.layers.0.self_attn.q_proj": (8, 8)}


def merged_deltas(peft_model, names, out_dir):
    model = peft_model(*names, extra={"ours": out_dir})
    return model, peft_deltas(model, "ours")


@pytest.mark.parametrize("names,weights", [(["r4", "r8", "qv"], [1.0, -0.5, 0.7]), (["r4", "r4b"], [0.5, 0.5])])
def test_concat_equals_peft_cat(peft_model, adapters, tmp_path, names, weights):
    summary = merge_adapters([MergeInput(adapters[n], w) for n, w in zip(names, weights)], "concat", MergeParams(),
                             tmp_path / "out")
    model, ours = merged_deltas(peft_model, names, tmp_path / "out")
    model.add_weighted_adapter(names, weights, "peft", combination_type="cat")
    assert_deltas_close(ours, peft_deltas(model, "peft"), rtol=1e-5)
    assert summary.modules == 14 and summary.masks_written is False


@pytest.mark.parametrize("rank", [16, 6])
def test_linear_equals_peft_svd(peft_model, adapters, tmp_path, rank):
    names, weights = ["r4", "r8", "qv"], [1.0, -0.5, 0.7]
    merge_adapters([MergeInput(adapters[n], w) for n, w in zip(names, weights)], "linear", MergeParams(rank=rank),
                   tmp_path / "out")
    model, ours = merged_deltas(peft_model, names, tmp_path / "out")
    model.add_weighted_adapter(names, weights, "peft", combination_type="svd", svd_rank=rank)
    assert_deltas_close(ours, peft_deltas(model, "peft"), rtol=1e-4)


@pytest.mark.filterwarnings("ignore:The density .* no pruning will be performed")
@pytest.mark.parametrize("method,peft_type,kwargs,weights", [
    ("ties", "ties_svd", {"density": 0.5, "majority_sign_method": "total"}, [0.8, 0.8, 0.8]),
    ("ties", "ties_svd", {"density": 0.3, "majority_sign_method": "frequency"}, [0.5, 0.5, 0.5]),
    ("magnitude_prune", "magnitude_prune_svd", {"density": 0.4}, [1.0, -0.5, 0.7]),
    ("dare_linear", "dare_linear_svd", {"density": 1.0}, [1.0, -0.5, 0.7]),  # PEFT's RNG differs below 1
    ("dare_ties", "dare_ties_svd", {"density": 1.0}, [0.6, 0.6, 0.6]),
])
def test_dense_methods_equal_peft(peft_model, adapters, tmp_path, method, peft_type, kwargs, weights):
    """Full-rank output (64 >= min(out, in) everywhere) makes the final SVD exact on both sides."""
    names = ["r4", "r8", "qv"]
    merge_adapters([MergeInput(adapters[n], w) for n, w in zip(names, weights)], method,
                   MergeParams(rank=64, **kwargs), tmp_path / "out")
    model, ours = merged_deltas(peft_model, names, tmp_path / "out")
    model.add_weighted_adapter(names, weights, "peft", combination_type=peft_type, svd_rank=64,
                               svd_full_matrices=False, **kwargs)
    assert_deltas_close(ours, peft_deltas(model, "peft"), rtol=1e-4)


def test_peft_linear_equals_peft_linear(peft_model, adapters, tmp_path):
    names, weights = ["r4", "r4b"], [0.6, -0.3]
    merge_adapters([MergeInput(adapters[n], w) for n, w in zip(names, weights)], "peft_linear", MergeParams(),
                   tmp_path / "out")
    model, ours = merged_deltas(peft_model, names, tmp_path / "out")
    model.add_weighted_adapter(names, weights, "peft", combination_type="linear")
    assert_deltas_close(ours, peft_deltas(model, "peft"), rtol=1e-5)


@pytest.mark.parametrize("method,params", [("concat", MergeParams()), ("linear", MergeParams(rank=16))])
def test_merged_folder_loads_and_equals_the_weighted_sum(base_dir, adapters, tmp_path, method, params):
    """PeftModel.from_pretrained(merged) == base with W += sum_i w_i s_i B_i A_i, on real forward passes."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    names, weights = ["r4", "r8", "qv"], [1.0, -0.5, 0.7]
    summary = merge_adapters([MergeInput(adapters[n], w) for n, w in zip(names, weights)], method, params,
                             tmp_path / "out")
    reference = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    state = reference.state_dict()
    with torch.no_grad():
        for name, w in zip(names, weights):
            config = json.loads((adapters[name] / ADAPTER_CONFIG).read_text())
            s = config["lora_alpha"] / config["r"]
            for key, A in load_file(adapters[name] / ADAPTER_WEIGHTS).items():
                if ".lora_A." in key:
                    module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                    B = load_file(adapters[name] / ADAPTER_WEIGHTS)[key.replace("lora_A", "lora_B")]
                    state[module + ".weight"] += w * s * (B @ A)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "out").eval()
    ids = make_tokenizer()("merging adapters, file to file", return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = reference(ids).logits, merged(ids).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    if method == "concat":  # q/v carry the qv adapter too: rank 16 vs 12 elsewhere, through rank_pattern
        assert summary.rank == 12 and set(summary.rank_pattern.values()) == {16} and len(summary.rank_pattern) == 4


def test_output_folder_layout(adapters, tmp_path):
    summary = merge_adapters([MergeInput(adapters["r4"], 1.0), MergeInput(adapters["qv"], 2.0)], "concat",
                             MergeParams(), tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    header = read_header_from_path(out / ADAPTER_WEIGHTS)  # adapterio's strict validation
    assert header.metadata == {"format": "pt", META_KIND: "merged"}
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == 4
    assert config["rank_pattern"] == config["alpha_pattern"] == {
        f"model.layers.{i}.self_attn.{p}": 8 for i in (0, 1) for p in ("q_proj", "v_proj")}
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"])
    assert summary.bytes_written == (out / ADAPTER_WEIGHTS).stat().st_size
    assert all(info.dtype == "F32" for info in header.tensors.values())
    assert json.loads(json.dumps(summary.as_dict()))["method"] == "concat"


def test_scales_honour_rslora_and_patterns(peft_model, adapters, tmp_path):
    """A single input merged with weight 1 must reproduce PEFT's own delta, whatever the scale rules."""
    src = tmp_path / "rs"
    shutil.copytree(adapters["r8"], src)
    config = json.loads((src / ADAPTER_CONFIG).read_text())
    config.update(use_rslora=True, alpha_pattern={"q_proj": 3.0, "model.layers.1.mlp.down_proj": 40.0})
    (src / ADAPTER_CONFIG).write_text(json.dumps(config))
    merge_adapters([MergeInput(src, 1.0)], "concat", MergeParams(), tmp_path / "out")
    model = peft_model(extra={"rs": src, "ours": tmp_path / "out"})
    assert_deltas_close(peft_deltas(model, "ours"), peft_deltas(model, "rs"), rtol=1e-6)


def test_rank_pattern_inputs(base_dir, peft_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], rank_pattern={"down_proj": 2},
        alpha_pattern={"down_proj": 6}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(tmp_path / "rp")
    merge_adapters([MergeInput(tmp_path / "rp", -1.5)], "linear", MergeParams(rank=3), tmp_path / "out")
    config = json.loads((tmp_path / "out" / ADAPTER_CONFIG).read_text())
    assert config["r"] == 3 and set(config["rank_pattern"].values()) == {2}  # down_proj: min(3, 2)
    loaded = peft_model(extra={"rp": tmp_path / "rp", "ours": tmp_path / "out"})
    theirs = peft_deltas(loaded, "rp")
    ours = peft_deltas(loaded, "ours")
    for module, delta in theirs.items():
        if "down_proj" in module:  # rank 2 <= 3: exact
            assert torch.allclose(ours[module], -1.5 * delta, atol=1e-6)


def test_input_dtype_and_determinism(tmp_path):
    a = write_adapter(tmp_path / "a", {m: (A.bfloat16(), B.bfloat16()) for m, (A, B) in
                                       random_factors(SHAPES, 4, seed=1).items()}, r=4, alpha=8)
    b = write_adapter(tmp_path / "b", {m: (A.bfloat16(), B.bfloat16()) for m, (A, B) in
                                       random_factors(SHAPES, 4, seed=2).items()}, r=4, alpha=8)
    inputs = [MergeInput(a, 1.0), MergeInput(b, 1.0)]
    summary = merge_adapters(inputs, "dare_ties", MergeParams(rank=4, density=0.5, seed=9), tmp_path / "o1",
                             out_dtype="input")
    assert summary.dtype == "BF16"
    with safe_open(tmp_path / "o1" / ADAPTER_WEIGHTS, "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    merge_adapters(inputs, "dare_ties", MergeParams(rank=4, density=0.5, seed=9), tmp_path / "o2", out_dtype="input")
    merge_adapters(inputs, "dare_ties", MergeParams(rank=4, density=0.5, seed=10), tmp_path / "o3", out_dtype="input")
    same = (tmp_path / "o1" / ADAPTER_WEIGHTS).read_bytes() == (tmp_path / "o2" / ADAPTER_WEIGHTS).read_bytes()
    differ = (tmp_path / "o1" / ADAPTER_WEIGHTS).read_bytes() != (tmp_path / "o3" / ADAPTER_WEIGHTS).read_bytes()
    assert same and differ


def test_concat_stacks_lori_masks(tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = [{m: (torch.rand(o, r, generator=g) < 0.3).to(torch.uint8) for m, (o, _) in SHAPES.items()}
             for r in (4, 2)]
    a = write_adapter(tmp_path / "a", random_factors(SHAPES, 4, seed=1), r=4, alpha=8, masks=masks[0])
    b = write_adapter(tmp_path / "b", random_factors(SHAPES, 2, seed=2), r=2, alpha=2, masks=masks[1])
    summary = merge_adapters([MergeInput(a, 1.0), MergeInput(b, 0.5)], "concat", MergeParams(), tmp_path / "out")
    assert summary.masks_written
    stacked = load_file(tmp_path / "out" / LORI_MASKS)
    weights = load_file(tmp_path / "out" / ADAPTER_WEIGHTS)
    for m in SHAPES:
        key = lora_key(m, "B")
        assert torch.equal(stacked[key], torch.cat([masks[0][m], masks[1][m]], dim=1))
        assert stacked[key].shape == weights[key].shape
    merge_adapters([MergeInput(a, 1.0), MergeInput(b, 0.5)], "linear", MergeParams(rank=6), tmp_path / "lin")
    assert not (tmp_path / "lin" / LORI_MASKS).exists()  # a rotated B has no LoRI mask


def test_incompatible_inputs_are_refused(base_dir, adapters, tmp_path):
    dora = tmp_path / "dora"
    shutil.copytree(adapters["r4"], dora)
    config = json.loads((dora / ADAPTER_CONFIG).read_text())
    (dora / ADAPTER_CONFIG).write_text(json.dumps(config | {"use_dora": True}))
    with pytest.raises(ValueError, match="DoRA"):
        merge_adapters([MergeInput(dora, 1.0)], "concat", MergeParams(), tmp_path / "o1")
    (dora / ADAPTER_CONFIG).write_text(json.dumps(config | {"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="only LoRA adapters"):
        merge_adapters([MergeInput(dora, 1.0)], "concat", MergeParams(), tmp_path / "o2")
    other = write_adapter(tmp_path / "other", random_factors({"model.layers.0.self_attn.q_proj": (16, 8)}, 4, 1),
                          r=4, alpha=8)
    mine = write_adapter(tmp_path / "mine", random_factors({"model.layers.0.self_attn.q_proj": (8, 8)}, 4, 1),
                         r=4, alpha=8)
    with pytest.raises(ValueError, match="different base models"):
        merge_adapters([MergeInput(mine, 1.0), MergeInput(other, 1.0)], "concat", MergeParams(), tmp_path / "o3")
    bad_rank = write_adapter(tmp_path / "bad_rank", random_factors(SHAPES, 4, 1), r=8, alpha=8)
    with pytest.raises(ValueError, match="rank 4 in the weights but 8 in the config"):
        merge_adapters([MergeInput(bad_rank, 1.0)], "concat", MergeParams(), tmp_path / "o4")
    with pytest.raises(ValueError, match="weight must be a finite number"):
        merge_adapters([MergeInput(mine, float("nan"))], "concat", MergeParams(), tmp_path / "o5")
    with pytest.raises(ValueError, match="out_dtype"):
        merge_adapters([MergeInput(mine, 1.0)], "concat", MergeParams(), tmp_path / "o6", out_dtype="fp8")
    with pytest.raises(ValueError, match="set params.rank"):
        merge_adapters([MergeInput(mine, 1.0)], "ties", MergeParams(), tmp_path / "o7")
    with pytest.raises(ValueError, match="not a PEFT adapter folder"):
        merge_adapters([MergeInput(tmp_path / "missing", 1.0)], "concat", MergeParams(), tmp_path / "o8")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="must be empty"):
        merge_adapters([MergeInput(mine, 1.0)], "concat", MergeParams(), tmp_path / "full")


def test_mixed_input_dtypes_need_float32(tmp_path):
    f32 = write_adapter(tmp_path / "a", random_factors(SHAPES, 4, seed=1), r=4, alpha=8)
    bf16 = write_adapter(tmp_path / "b", {m: (A.bfloat16(), B.bfloat16()) for m, (A, B) in
                                          random_factors(SHAPES, 4, seed=2).items()}, r=4, alpha=8)
    inputs = [MergeInput(f32, 1.0), MergeInput(bf16, 1.0)]
    with pytest.raises(ValueError, match="inputs of one dtype"):
        merge_adapters(inputs, "concat", MergeParams(), tmp_path / "o1", out_dtype="input")
    assert merge_adapters(inputs, "concat", MergeParams(), tmp_path / "o2").dtype == "F32"


def test_modules_in_natural_order(tmp_path):
    shapes = {f"model.layers.{i}.mlp.up_proj": (6, 4) for i in (10, 2, 1)}
    a = write_adapter(tmp_path / "a", random_factors(shapes, 2, seed=1), r=2, alpha=2)
    merge_adapters([MergeInput(a, 1.0)], "concat", MergeParams(), tmp_path / "out")
    header = read_header_from_path(tmp_path / "out" / ADAPTER_WEIGHTS)
    order = [k for k, _ in sorted(header.tensors.items(), key=lambda kv: kv[1].begin)]
    assert [k.split(".")[4] for k in order[::2]] == ["1", "2", "10"]


def test_peft_saved_adapter_with_different_target_sets(base_dir, tmp_path, peft_model):
    """Disjoint module sets: every module comes from one input only, so concat, linear and ties agree."""
    a = save_peft_adapter(base_dir, tmp_path / "mlp", r=4, seed=5, target_modules=["up_proj", "down_proj"])
    b = save_peft_adapter(base_dir, tmp_path / "attn", r=4, seed=6, target_modules=["q_proj"])
    inputs = [MergeInput(a, 0.5), MergeInput(b, 2.0)]
    merge_adapters(inputs, "concat", MergeParams(), tmp_path / "cat")
    merge_adapters(inputs, "linear", MergeParams(rank=4), tmp_path / "lin")
    merge_adapters(inputs, "ties", MergeParams(rank=32, density=1.0), tmp_path / "ties")
    model = peft_model(extra={"cat": tmp_path / "cat", "lin": tmp_path / "lin", "ties": tmp_path / "ties"})
    assert_deltas_close(peft_deltas(model, "lin"), peft_deltas(model, "cat"), rtol=1e-5)
    assert_deltas_close(peft_deltas(model, "ties"), peft_deltas(model, "cat"), rtol=1e-5)
    assert sorted(json.loads((tmp_path / "cat" / ADAPTER_CONFIG).read_text())["target_modules"]) == [
        "down_proj", "q_proj", "up_proj"]


def test_failed_merge_leaves_no_partial_weights(tmp_path, monkeypatch):
    import merging.concat

    a = write_adapter(tmp_path / "a", random_factors(SHAPES, 4, seed=1), r=4, alpha=8)
    calls = []

    def boom(factors, params):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return merging.concat.concat(factors, params)

    monkeypatch.setitem(merging.METHODS, "concat", dataclasses.replace(merging.METHODS["concat"], fn=boom))
    with pytest.raises(RuntimeError, match="device lost"):
        merge_adapters([MergeInput(a, 1.0)], "concat", MergeParams(), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []



@pytest.mark.parametrize("method,params", [("linear", MergeParams(rank=6)),
                                           ("dare_ties", MergeParams(rank=4, density=0.5))])
def test_batch_size_does_not_change_the_result(tmp_path, method, params):
    """One module per batch, a few per batch, everything in one batch: the same bytes (the batched solve
    and the per-module seeds do not depend on how modules are grouped)."""
    shapes = {f"model.layers.{i}.{name}": s for i in range(6) for name, s in SHAPES.items()}
    inputs = [MergeInput(write_adapter(tmp_path / f"in{s}", random_factors(shapes, 4, seed=s), r=4, alpha=8), w)
              for s, w in ((1, 1.0), (2, -0.5))]
    outputs = []
    for batch_bytes in (1, 3000, 2**30):
        merge_adapters(inputs, method, params, tmp_path / f"out{batch_bytes}", batch_bytes=batch_bytes)
        outputs.append((tmp_path / f"out{batch_bytes}" / ADAPTER_WEIGHTS).read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_a_file_truncated_after_planning_is_an_error_not_garbage(tmp_path, monkeypatch):
    path = write_adapter(tmp_path / "a", random_factors(SHAPES, 4, seed=1), r=4, alpha=8)
    from merging import peft_io

    opened = peft_io.open_lora_folder(path)
    with open(path / ADAPTER_WEIGHTS, "r+b") as f:
        f.truncate(opened.header.data_start + 16)
    with pytest.raises(ValueError, match="ends early"):
        opened.load(next(iter(opened.modules)), torch.device("cpu"))


def test_progress_is_reported_after_each_batch(tmp_path):
    shapes = {f"model.layers.{i}.{name}": s for i in range(3) for name, s in SHAPES.items()}
    inputs = [MergeInput(write_adapter(tmp_path / "a", random_factors(shapes, 4, seed=1), r=4, alpha=8), 1.0)]
    calls = []
    merge_adapters(inputs, "linear", MergeParams(rank=4), tmp_path / "out", batch_bytes=1,
                   on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]  # one module per batch here


def test_consecutive_runs_respect_the_budget_and_order():
    from merging.peft_io import consecutive_runs

    sizes = {"a": 3, "b": 3, "c": 10, "d": 1, "e": 1, "f": 4}
    assert consecutive_runs(sizes, 6) == [["a", "b"], ["c"], ["d", "e", "f"]]
    assert consecutive_runs(sizes, 1) == [[k] for k in sizes]
    assert consecutive_runs(sizes, 100) == [list(sizes)]
    assert consecutive_runs({}, 5) == []
