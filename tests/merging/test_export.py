"""export_merged_checkpoint: the folded checkpoint loads with transformers and matches PeftModel outputs."""
from __future__ import annotations

import json

import pytest
import torch

from merging import MergeInput, MergeParams, export_merged_checkpoint, merge_adapters
from tests.factories import make_tokenizer
from tests.merging.helpers import random_factors, write_adapter


def logits(model, text="fold the adapter into the base"):
    ids = make_tokenizer()(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def peft_logits(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval())


def loaded_logits(out_dir):
    from transformers import AutoModelForCausalLM

    return logits(AutoModelForCausalLM.from_pretrained(out_dir).eval())


def test_single_file_export_equals_peft(base_dir, adapters, tmp_path):
    summary = export_merged_checkpoint(base_dir, adapters["r8"], tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(summary["files"])
    assert summary["folded_modules"] == 14
    assert torch.allclose(loaded_logits(tmp_path / "out"), peft_logits(base_dir, adapters["r8"]), atol=1e-5)


def test_sharded_export_of_a_merged_adapter(base_dir, adapters, tmp_path):
    """A concat merge with rank_pattern, written in many small shards with an index."""
    merge_adapters([MergeInput(adapters["r4"], 0.7), MergeInput(adapters["qv"], -1.2)], "concat", MergeParams(),
                   tmp_path / "merged")
    summary = export_merged_checkpoint(base_dir, tmp_path / "merged", tmp_path / "out", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((tmp_path / "out" / s).is_file() for s in shards)
    assert index["metadata"]["total_size"] == summary["total_bytes"]
    assert torch.allclose(loaded_logits(tmp_path / "out"), peft_logits(base_dir, tmp_path / "merged"), atol=1e-5)


def test_export_refuses_a_foreign_adapter(base_dir, tmp_path):
    wrong = write_adapter(tmp_path / "wrong", random_factors({"model.layers.0.self_attn.q_proj": (48, 48)}, 2, 1),
                          r=2, alpha=2)
    with pytest.raises(ValueError, match="belongs to another base model"):
        export_merged_checkpoint(base_dir, wrong, tmp_path / "o1")
    missing = write_adapter(tmp_path / "missing", random_factors({"model.layers.9.self_attn.q_proj": (32, 32)}, 2, 1),
                            r=2, alpha=2)
    with pytest.raises(ValueError, match="has no base tensor"):
        export_merged_checkpoint(base_dir, missing, tmp_path / "o2")
