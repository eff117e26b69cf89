"""Session-wide tiny base model and PEFT-made adapters for the merge tests."""
from __future__ import annotations

import pytest

from tests.factories import save_peft_adapter, save_tiny_model


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="session")
def adapters(base_dir, tmp_path_factory):
    """Four PEFT adapters: r4 and r8 on all projections, r4 on q/v only, and a second r4 one."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "r4": save_peft_adapter(base_dir, root / "r4", r=4, alpha=8, seed=1),
        "r8": save_peft_adapter(base_dir, root / "r8", r=8, alpha=4, seed=2),
        "qv": save_peft_adapter(base_dir, root / "qv", r=4, alpha=16, seed=3, target_modules=["q_proj", "v_proj"]),
        "r4b": save_peft_adapter(base_dir, root / "r4b", r=4, alpha=8, seed=4),
    }


@pytest.fixture()
def peft_model(base_dir, adapters):
    """Factory: a PeftModel over the tiny base with the named adapters loaded under their keys."""
    def build(*names, extra: dict | None = None):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_dir)
        paths = {n: adapters[n] for n in names} | (extra or {})
        first, *rest = paths
        model = PeftModel.from_pretrained(base, paths[first], adapter_name=first)
        for name in rest:
            model.load_adapter(paths[name], adapter_name=name)
        return model.eval()
    return build
