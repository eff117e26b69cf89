import pytest
import torch
from safetensors import safe_open

from adapterio.peft_format import lora_key
from training.masks import extract_lori_mask, load_masks, save_masks


def _b_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        lora_key("model.layers.0.self_attn.q_proj", "B"): -1 - torch.rand(32, 8, generator=g),  # |B| in [1, 2]
        lora_key("model.layers.0.mlp.down_proj", "B"): torch.randn(32, 8, generator=g) * 0.1,  # |B| < 1
        lora_key("model.layers.1.mlp.up_proj", "B"): torch.zeros(64, 8),  # ties
    }


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_mask_keeps_exact_fraction_with_one_global_threshold(sparsity):
    b = _b_tensors()
    masks = extract_lori_mask(b, sparsity)
    n = sum(t.numel() for t in b.values())
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - sparsity) * n)
    kept = torch.cat([b[k][masks[k]].abs() for k in b])
    dropped = torch.cat([b[k][~masks[k]].abs() for k in b])
    if len(kept) and len(dropped):
        assert kept.min() >= dropped.max()  # one model-wide threshold, not one per module


def test_mask_is_model_wide_not_per_layer():
    b = _b_tensors()
    masks = extract_lori_mask(b, 0.75)  # 1/4 of 1024 entries = 256 = exactly the large q_proj B
    assert masks[lora_key("model.layers.0.self_attn.q_proj", "B")].all()
    assert not masks[lora_key("model.layers.0.mlp.down_proj", "B")].any()


def test_mask_ties_are_broken_deterministically():
    b = {lora_key("m", "B"): torch.ones(16, 4)}
    first = extract_lori_mask(b, 0.5)
    assert int(first[lora_key("m", "B")].sum()) == 32
    assert torch.equal(first[lora_key("m", "B")], extract_lori_mask(b, 0.5)[lora_key("m", "B")])


def test_masks_round_trip_as_uint8_safetensors(tmp_path):
    masks = extract_lori_mask(_b_tensors(), 0.9)
    save_masks(masks, tmp_path / "lori_masks.safetensors")
    with safe_open(tmp_path / "lori_masks.safetensors", "pt") as f:
        assert set(f.keys()) == set(masks)
        assert all(f.get_tensor(k).dtype == torch.uint8 for k in f.keys())
    loaded = load_masks(tmp_path / "lori_masks.safetensors")
    assert all(torch.equal(loaded[k], masks[k]) and loaded[k].dtype == torch.bool for k in masks)


def test_save_masks_rejects_non_b_keys(tmp_path):
    with pytest.raises(ValueError, match="lora_B"):
        save_masks({lora_key("m", "A"): torch.ones(2, 2, dtype=torch.bool)}, tmp_path / "x.safetensors")
