"""Merges, interference reports and exports through the API, checked against dense references."""
import io
import tarfile

import pytest
import torch
from safetensors.torch import load_file

from tests.app.helpers import upload_folder
from tests.factories import save_peft_adapter
from tests.jobs.helpers import RunningWorker, worker_for


def extract(content: bytes, into):
    with tarfile.open(fileobj=io.BytesIO(content)) as tar:
        tar.extractall(into, filter="data")


def dense_updates(folder, scale_weight: float) -> dict[str, torch.Tensor]:
    """module -> w * s * B @ A in float64, from a PEFT folder."""
    import json

    config = json.loads((folder / "adapter_config.json").read_text())
    s = config["lora_alpha"] / config["r"]
    tensors = load_file(folder / "adapter_model.safetensors")
    out = {}
    for key, A in tensors.items():
        if key.endswith("lora_A.weight"):
            B = tensors[key.replace("lora_A", "lora_B")]
            out[key.removesuffix(".lora_A.weight")] = scale_weight * s * (B.double() @ A.double())
    return out


@pytest.fixture
def two_adapters(client, base_model, tiny_model_dir, tmp_path):
    a = save_peft_adapter(tiny_model_dir, tmp_path / "a", r=4, alpha=8, seed=1)
    b = save_peft_adapter(tiny_model_dir, tmp_path / "b", r=8, alpha=8, seed=2,
                          target_modules=["q_proj", "v_proj", "down_proj"])
    assert upload_folder(client, a, name="math").status_code == 201
    assert upload_folder(client, b, name="code").status_code == 201
    return a, b


def test_sync_linear_merge_equals_weighted_sum(client, services, two_adapters, tiny_model_dir, tmp_path):
    a, b = two_adapters
    with RunningWorker(services):
        r = client.post("/v1/merges", json={"inputs": [{"adapter": "math", "weight": 0.7},
                                                      {"adapter": "code", "version": "1", "weight": 0.3}],
                                           "method": "linear", "rank": 12, "output_name": "both"})
    assert r.status_code == 201, r.text
    version = r.json()["version"]
    # exact rank = sum of the ranks present: 12 where both adapt a module, 4 where only `math` does
    assert version["kind"] == "merged" and version["rank"] == 4 and set(version["rank_pattern"].values()) == {12}
    assert version["recipe"]["spec"]["method"] == "linear" and version["recipe"]["spec"]["inputs"][0]["weight"] == 0.7
    lineage = client.get("/v1/adapters/both/versions/1/lineage").json()
    assert sorted((p["name"], p["role"]) for p in lineage["parents"]) == [("code", "merged-from"), ("math", "merged-from")]

    extract(client.get("/v1/adapters/both/versions/1/archive").content, tmp_path / "dl")
    merged = dense_updates(tmp_path / "dl" / "both-v1", 1.0)
    expected = dense_updates(a, 0.7)
    for module, delta in dense_updates(b, 0.3).items():
        expected[module] = expected.get(module, 0) + delta
    assert merged.keys() == expected.keys()
    for module in expected:
        assert torch.allclose(merged[module], expected[module], atol=1e-5, rtol=1e-4), module

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                           tmp_path / "dl" / "both-v1")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        params = dict(reference.named_parameters())
        for module, delta in expected.items():
            params[module.removeprefix("base_model.model.") + ".weight"] += delta.float()
        ids = torch.tensor([[3, 14, 15, 92, 65]])
        assert torch.allclose(peft_model(ids).logits, reference(ids).logits, atol=1e-4)


def test_concat_job_and_interference_report(client, services, two_adapters):
    job = client.post("/v1/jobs", json={"kind": "merge", "inputs": [{"adapter": "math"}, {"adapter": "code"}],
                                        "method": "concat", "output_name": "cat"}).json()
    worker_for(services).run_once()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done
    version = client.get("/v1/adapters/cat/versions/1").json()
    assert version["rank"] in (4, 12) and version["kind"] == "merged"
    events = client.get(f"/v1/jobs/{job['id']}/events").json()
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["data"]["step"] == progress[-1]["data"]["total_steps"] > 0
    assert progress[-1]["data"]["unit"] == "modules" and progress[-1]["data"]["eta_s"] == 0

    with RunningWorker(services):
        first = client.get("/v1/adapters/interference?versions=math:1,code:latest")
        again = client.get("/v1/adapters/interference?versions=math:latest,code:1")
    assert first.status_code == 200, first.text
    report = first.json()
    assert report["adapters"] == ["math:1", "code:1"] and again.json()["job"] == report["job"]  # cached

    # a report whose job failed is not a cached answer: the next request computes it again
    from registry.models import Job
    with services.session_factory() as session:
        session.get(Job, report["job"]).status = "failed"
        session.commit()
    with RunningWorker(services):
        retried = client.get("/v1/adapters/interference?versions=math:1,code:1")
    assert retried.status_code == 200 and retried.json()["job"] != report["job"]
    pair = report["pairs"][0]
    assert -1.0 <= pair["cosine"] <= 1.0


def test_merge_spec_errors(client, two_adapters):
    bad = client.post("/v1/merges", json={"inputs": [{"adapter": "math"}], "method": "linear", "output_name": "x"})
    assert bad.status_code == 422 and "needs `rank`" in str(bad.json()["detail"])
    unknown = client.post("/v1/merges", json={"inputs": [{"adapter": "math"}], "method": "slerp", "output_name": "x"})
    assert unknown.status_code == 422 and "unknown merge method" in str(unknown.json()["detail"])
    missing = client.post("/v1/merges", json={"inputs": [{"adapter": "nope"}], "method": "concat", "output_name": "x"})
    assert missing.status_code == 404
    many = client.get("/v1/adapters/interference?versions=" + ",".join(["math:1"] * 17))
    assert many.status_code == 422 and "at most 16" in many.json()["detail"], many.text


def test_export_folds_the_adapter_into_a_plain_checkpoint(client, services, two_adapters, tiny_model_dir, tmp_path):
    a, _ = two_adapters
    job = client.post("/v1/jobs", json={"kind": "export", "adapter": {"adapter": "math"}}).json()
    worker_for(services).run_once()
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    extract(client.get(f"/v1/jobs/{job['id']}/output").content, tmp_path / "export")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / job["id"])
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), a)
    ids = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, adapted(ids).logits, atol=1e-5)


def test_merge_spec_method_list_matches_the_merging_registry():
    from jobs.specs import MERGE_METHODS
    from merging.registry import METHODS

    assert set(MERGE_METHODS) == set(METHODS)


def test_an_export_whose_result_cannot_be_stored_leaves_no_checkpoint_behind(client, services, two_adapters,
                                                                             monkeypatch):
    from jobs.handlers import HANDLERS

    def broken_finalize(*args, **kwargs):
        raise RuntimeError("database went away")

    import dataclasses
    monkeypatch.setitem(HANDLERS, "export", dataclasses.replace(HANDLERS["export"], finalize=broken_finalize))
    job = client.post("/v1/jobs", json={"kind": "export", "adapter": {"adapter": "math"}}).json()
    worker_for(services).run_once()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "failed" and "database went away" in done["error"]
    assert not services.store.job_dir(job["id"]).exists()


def test_staging_a_result_folder_that_fails_leaves_no_temp_file(services, tmp_path, monkeypatch):
    from jobs.handlers.base import WorkerContext
    from jobs.handlers.results import stage_folder
    from registry.blobstore import StagedFile

    folder = tmp_path / "out"
    folder.mkdir()
    for name in ("a.json", "b.safetensors", "c.json"):
        (folder / name).write_bytes(name.encode() * 1000)
    real_finish, calls = StagedFile.finish, []

    def finish_then_fail(self):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_finish(self)

    monkeypatch.setattr(StagedFile, "finish", finish_then_fail)
    ctx = WorkerContext(session_factory=services.session_factory, store=services.store, settings=services.settings)
    with pytest.raises(OSError, match="No space"):
        stage_folder(ctx, folder)
    assert not [p for p in services.store.temp_dir().iterdir() if p.is_file()]


def test_a_merge_the_worker_would_refuse_is_refused_at_submission(client, services, base_model, tiny_model_dir,
                                                                  tmp_path):
    import json

    from tests.app.helpers import snapshot

    folder = save_peft_adapter(tiny_model_dir, tmp_path / "dora", r=4, alpha=8, seed=3)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "bias": "all"}))
    assert upload_folder(client, folder, name="biased").status_code == 201  # a valid PEFT adapter to keep
    before = snapshot(services)
    for path, body in (("/v1/merges", {"inputs": [{"adapter": "biased"}], "method": "concat", "output_name": "m"}),
                       ("/v1/jobs", {"kind": "merge", "inputs": [{"adapter": "biased"}], "method": "concat",
                                     "output_name": "m"})):
        r = client.post(path, json=body)
        assert r.status_code == 422 and "bias='all'" in r.json()["detail"], r.text
    assert snapshot(services) == before
