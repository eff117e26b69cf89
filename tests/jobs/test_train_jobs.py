"""lora, lori_d and lori_s jobs submitted over HTTP run to the end in a spawned child, and their
outputs are what the method promises."""
import io
import tarfile

import torch
from safetensors.torch import load_file

from tests.jobs.helpers import run_job, train_spec, upload_dataset


def fetch(client, name, version, tmp_path):
    archive = client.get(f"/v1/adapters/{name}/versions/{version}/archive")
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / f"{name}-v{version}"


def test_lora_then_lori_d_then_lori_s(client, services, base_model, tiny_model_dir, tmp_path):
    upload_dataset(client)
    lora = run_job(client, services, train_spec("lora", "sums-lora"))
    curve = client.get("/v1/adapters/sums-lora/versions/1").json()["metrics"]["loss_curve"]
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.1  # the loss falls (by more than its step-to-step noise)
    events = client.get(f"/v1/jobs/{lora['id']}/events").json()
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert progress[-1]["step"] == 40 and {"loss", "lr", "tokens_per_s", "eta_s", "total_steps"} <= set(progress[-1])

    run_job(client, services, train_spec("lori_d", "sums-lori-d", a_seed=1234, sparsity=0.9))
    d_version = client.get("/v1/adapters/sums-lori-d/versions/1").json()
    assert d_version["kind"] == "lori_d" and d_version["a_seed"] == 1234
    assert "lori_masks.safetensors" in {f["filename"] for f in d_version["files"]}

    run_job(client, services, train_spec("lori_s", "sums-lori-s", mask_from={"adapter": "sums-lori-d"}, lr=1e-1))
    s_version = client.get("/v1/adapters/sums-lori-s/versions/1").json()
    assert s_version["kind"] == "lori_s" and s_version["a_seed"] == 1234
    lineage = client.get("/v1/adapters/sums-lori-s/versions/1/lineage").json()
    assert lineage["parents"] == [{"name": "sums-lori-d", "version": 1, "role": "mask-from"}]
    curve = s_version["metrics"]["loss_curve"]
    assert curve[-1] < curve[0]

    from training.lori_a import seeded_a
    folder = fetch(client, "sums-lori-s", 1, tmp_path)
    weights = load_file(folder / "adapter_model.safetensors")
    masks = load_file(folder / "lori_masks.safetensors")
    b_total = b_zero = 0
    for key, tensor in weights.items():
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            assert torch.equal(tensor, seeded_a(1234, module, tuple(tensor.shape)))
        else:
            mask = masks[key].bool()
            assert torch.all(tensor[~mask] == 0)
            b_total += tensor.numel()
            b_zero += int((tensor == 0).sum())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.1 * b_total)  # exactly the requested fraction survives the mask
    assert b_zero >= b_total - kept

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] > 0


def test_orthogonal_adapters_survive_a_restart(client, services, base_model, tmp_path, settings):
    upload_dataset(client)
    spec = train_spec("lori_d", "ortho-1", a_init="orthogonal", max_steps=2)
    first = run_job(client, services, spec)
    # a restart: a new app and services on the same database
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services import Services
    services2 = Services.from_settings(settings)
    with TestClient(create_app(services=services2)) as client2:
        client2.headers.update(client.headers)
        second = run_job(client2, services2, {**spec, "output_name": "ortho-2"})
    assert first["inputs"]["orthogonal"]["offset"] == 0 and second["inputs"]["orthogonal"]["offset"] == 4
    a1 = load_file(fetch(client, "ortho-1", 1, tmp_path / "1") / "adapter_model.safetensors")
    a2 = load_file(fetch(client, "ortho-2", 1, tmp_path / "2") / "adapter_model.safetensors")
    for key in a1:
        if key.endswith("lora_A.weight"):
            assert (a1[key].double() @ a2[key].double().T).abs().max() < 1e-6, key
    services2.engine.dispose()


def test_orthogonal_capacity_is_a_clear_4xx(client, services, base_model):
    upload_dataset(client)
    r = client.post("/v1/jobs", json=train_spec("lori_d", "too-big", a_init="orthogonal", rank=32))
    assert r.status_code == 201  # input size 32 holds exactly one rank-32 adapter
    r = client.post("/v1/jobs", json=train_spec("lori_d", "too-big-2", a_init="orthogonal", rank=32))
    assert r.status_code == 422 and "holds 1 orthogonal adapters of rank 32" in r.json()["detail"]
