import pytest
import torch
import torch.nn.functional as F

from tests import factories
from training.config import TrainConfig, default_lr
from training.data import IGNORE_INDEX
from training.model_setup import attach_adapters, default_target_modules, trainable_adapter_weights
from training.optim import AdapterOptimizer
from training.step import causal_lm_loss, chunked_cross_entropy


def test_chunked_cross_entropy_matches_full_logits_loss_and_gradient():
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True).requires_grad_(False)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=g)
    targets[::3] = IGNORE_INDEX
    loss = chunked_cross_entropy(hidden, head, targets, chunk_rows=8)  # 5 chunks, the last one short
    (grad,) = torch.autograd.grad(loss * 2, hidden)
    reference = F.cross_entropy(head(hidden), targets, ignore_index=IGNORE_INDEX)
    (ref_grad,) = torch.autograd.grad(reference * 2, hidden)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_causal_lm_loss_equals_transformers_loss():
    model, tok = factories.make_tiny_model()
    peft_model = attach_adapters(model, rank=4, alpha=8, target_modules=default_target_modules(model),
                                 keep_model_dtype=False)
    with torch.no_grad():
        for w in trainable_adapter_weights(peft_model).values():
            w.normal_(0, 0.1)
    lm = peft_model.get_base_model()
    ids = torch.randint(0, len(tok), (3, 12))
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    labels[2, 9:] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    assert causal_lm_loss(lm, batch).item() == pytest.approx(lm(**batch).loss.item(), rel=1e-5)


def test_default_targets_are_every_linear_of_the_decoder_blocks():
    model, _ = factories.make_tiny_model()
    assert default_target_modules(model) == sorted(factories.ALL_PROJECTIONS)


def test_bf16_adapters_step_through_fp32_masters_and_masked_entries_stay_zero():
    b = torch.nn.Parameter(torch.zeros(6, 4, dtype=torch.bfloat16))
    mask = torch.zeros(6, 4, dtype=torch.bool)
    mask[::2] = True
    opt = AdapterOptimizer({"base_model.model.m.lora_B.weight": b}, lr=1e-3, weight_decay=0.1, grad_clip=1.0,
                           masks={"base_model.model.m.lora_B.weight": mask})
    for _ in range(20):
        b.grad = torch.randn(6, 4).to(torch.bfloat16)
        opt.step()
    master = opt.masters[0]
    assert master.dtype == torch.float32 and master is not b
    assert torch.equal(b, master.to(torch.bfloat16))
    assert (master[~mask] == 0).all() and (master[mask] != 0).all()
    # 20 steps of 1e-3 would be lost to bf16 rounding if the parameter itself accumulated them.
    assert master[mask].abs().max() > 5e-3


def test_default_lr_scales_down_with_hidden_size_and_is_10x_for_lori_s():
    assert default_lr(4096, "lora") == pytest.approx(2.86e-4, rel=0.01)
    assert default_lr(4096, "lori_d") == default_lr(4096, "lora")
    assert default_lr(4096, "lori_s") == pytest.approx(10 * default_lr(4096, "lori_d"))
    assert default_lr(2048, "lora") > default_lr(4096, "lora") > default_lr(8192, "lora")


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="dora"), "method must be"),
    (dict(method="lori_d"), "needs a_seed"),
    (dict(method="lori_s", a_seed=1), "needs mask_path"),
    (dict(method="lori_d", a_seed=1, a_init="orthogonal"), "basis_seed and a_offset"),
    (dict(method="lora", sparsity=1.0), "sparsity"),
])
def test_config_rejects_incomplete_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_config_defaults():
    c = TrainConfig(method="lori_d", a_seed=3)
    assert (c.rank, c.lora_alpha, c.sparsity, c.grad_clip, c.max_length) == (16, 32, 0.9, 1.0, 512)
