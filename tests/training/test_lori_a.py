import math

import pytest
import torch

from training.lori_a import CapacityError, orthogonal_a, orthogonal_capacity, seeded_a

MODULES = [(f"model.layers.{i}.{part}", d) for i in range(2) for part, d in
           [("self_attn.q_proj", 32), ("self_attn.k_proj", 32), ("self_attn.v_proj", 32), ("self_attn.o_proj", 32),
            ("mlp.gate_proj", 32), ("mlp.up_proj", 32), ("mlp.down_proj", 64)]]


def test_seeded_a_is_deterministic_and_depends_on_seed_module_and_shape():
    a = seeded_a(7, "model.layers.0.mlp.up_proj", (8, 32))
    assert a.shape == (8, 32) and a.dtype == torch.float32
    assert torch.equal(a, seeded_a(7, "model.layers.0.mlp.up_proj", (8, 32)))
    assert not torch.equal(a, seeded_a(8, "model.layers.0.mlp.up_proj", (8, 32)))
    assert not torch.equal(a, seeded_a(7, "model.layers.1.mlp.up_proj", (8, 32)))
    assert not torch.equal(a, seeded_a(7, "model.layers.0.mlp.up_proj", (16, 32))[:8])
    assert torch.equal(seeded_a(7, "m", (8, 32), dtype=torch.bfloat16), seeded_a(7, "m", (8, 32)).to(torch.bfloat16))


def test_seeded_a_is_independent_of_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = seeded_a(3, "m", (64, 4096))
        torch.set_num_threads(2)
        assert torch.equal(one, seeded_a(3, "m", (64, 4096)))
    finally:
        torch.set_num_threads(threads)


def test_seeded_a_matches_peft_kaiming_uniform_distribution():
    in_features = 1024
    a = seeded_a(0, "m", (256, in_features))
    bound = 1 / math.sqrt(in_features)
    assert a.abs().max() <= bound
    assert abs(a.mean()) < 0.02 * bound
    assert a.var().item() == pytest.approx(bound ** 2 / 3, rel=0.02)


@pytest.mark.parametrize("module,in_features", MODULES)
def test_orthogonal_adapters_with_different_offsets_do_not_overlap(module, in_features):
    a1 = orthogonal_a(99, module, in_features, offset=0, rank=8)
    a2 = orthogonal_a(99, module, in_features, offset=8, rank=8)
    a3 = orthogonal_a(99, module, in_features, offset=in_features - 8, rank=8)
    for x, y in [(a1, a2), (a1, a3), (a2, a3)]:
        assert (x.double() @ y.double().T).abs().max() < 1e-6
    # Rows are orthogonal to each other and scaled like seeded_a rows (squared norm 1/3).
    assert torch.allclose(a1.double() @ a1.double().T, torch.eye(8, dtype=torch.float64) / 3, atol=1e-6)


def test_orthogonal_basis_prefix_is_stable_and_seeded():
    wide = orthogonal_a(5, "m", 256, offset=0, rank=100)
    assert torch.allclose(orthogonal_a(5, "m", 256, offset=0, rank=40), wide[:40], atol=1e-7)
    assert torch.allclose(orthogonal_a(5, "m", 256, offset=70, rank=30), wide[70:], atol=1e-7)
    assert not torch.allclose(orthogonal_a(6, "m", 256, offset=0, rank=40), wide[:40])
    assert not torch.allclose(orthogonal_a(5, "other", 256, offset=0, rank=40), wide[:40])


def test_capacity_error_names_module_and_allocation():
    assert orthogonal_capacity(64, 8) == 8
    orthogonal_a(1, "model.layers.0.mlp.down_proj", 64, offset=56, rank=8)  # the last free slot
    with pytest.raises(CapacityError) as e:
        orthogonal_a(1, "model.layers.0.mlp.down_proj", 64, offset=64, rank=8)
    assert isinstance(e.value, ValueError)
    assert ("module model.layers.0.mlp.down_proj has input size 64: it holds only 8 orthogonal adapters "
            "of rank 8; 8 are allocated") in str(e.value)
