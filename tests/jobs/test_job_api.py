"""Submission, idempotency, bad specs, cancel and events, over HTTP."""
import threading
import time

import pytest

from tests.jobs.helpers import train_spec, upload_dataset, worker_for


def test_idempotent_submission(client, base_model):
    upload_dataset(client)
    spec = train_spec()
    first = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "abc"})
    again = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 201 and again.status_code == 200 and first.json()["id"] == again.json()["id"]
    other = client.post("/v1/jobs", json={**spec, "rank": 8}, headers={"Idempotency-Key": "abc"})
    assert other.status_code == 409 and "different request" in other.json()["detail"]
    assert len(client.get("/v1/jobs").json()["data"]) == 1


BAD_SPECS = {
    "unknown base model": ({"base_model": "nope"}, 404, "base model 'nope' not found"),
    "unknown dataset": ({"dataset": "nope"}, 404, "dataset 'nope' not found"),
    "rank 0": ({"rank": 0}, 422, "rank"),
    "sparsity above 1": ({"method": "lori_d", "sparsity": 1.5}, 422, "sparsity"),
    "sparsity 0": ({"method": "lori_d", "sparsity": 0}, 422, "sparsity"),
    "lori_s without a mask": ({"method": "lori_s"}, 422, "mask_from"),
    "mask from a plain lora": ({"method": "lori_s", "mask_from": {"adapter": "plain"}}, 422, "lori_masks"),
    "unknown field": ({"learning_rate": 1}, 422, "learning_rate"),
    "unknown target": ({"target_modules": ["qkv"]}, 422, "match no linear module"),
    "bad output name": ({"output_name": "../x"}, 422, "output_name"),
    "output name the registry refuses": ({"output_name": "m..x"}, 422, "output_name 'm..x' is not valid"),
    "empty tag": ({"tags": [""]}, 422, "tags must be"),
    "more GPUs than rows": ({"gpus": 4, "batch_size": 2}, 422, "smaller than gpus"),
    "lori_s with its own A": ({"method": "lori_s", "mask_from": {"adapter": "plain"}, "a_init": "orthogonal"},
                              422, "inherits its frozen A"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_specs_are_refused_with_clear_messages(case, client, base_model, peft_adapter_dir):
    from tests.app.helpers import snapshot, upload_folder

    upload_dataset(client)
    upload_folder(client, peft_adapter_dir, name="plain")
    overrides, status, message = BAD_SPECS[case]
    before = snapshot(client.app.state.services)
    r = client.post("/v1/jobs", json=train_spec(**overrides))
    assert r.status_code == status, r.text
    assert message in str(r.json()["detail"])
    assert snapshot(client.app.state.services) == before


def test_cancel_queued_and_running(client, services, base_model):
    upload_dataset(client)
    queued = client.post("/v1/jobs", json=train_spec(output="q")).json()
    r = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert r.json()["status"] == "cancelled"

    job = client.post("/v1/jobs", json=train_spec(output="long", max_steps=100000, checkpoint_every=100000)).json()
    worker = worker_for(services, heartbeat_s=0.3)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline:
        events = client.get(f"/v1/jobs/{job['id']}/events").json()
        if any(e["type"] == "progress" for e in events):
            break
        time.sleep(0.2)
    asked = time.time()
    client.post(f"/v1/jobs/{job['id']}/cancel")
    thread.join(timeout=60)
    assert not thread.is_alive() and time.time() - asked < 15
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "cancelled"
    assert client.get("/v1/adapters/long").status_code == 404


def test_events_as_json_and_server_sent_events(client, services, base_model):
    upload_dataset(client)
    job = client.post("/v1/jobs", json=train_spec(max_steps=3)).json()
    worker_for(services).run_once()
    events = client.get(f"/v1/jobs/{job['id']}/events").json()
    types = [e["type"] for e in events]
    assert types[0] == "status" and types.count("progress") == 3 and events[-1]["data"]["status"] == "succeeded"
    later = client.get(f"/v1/jobs/{job['id']}/events?after={events[2]['id']}").json()
    assert [e["id"] for e in later] == [e["id"] for e in events[3:]]
    stream = client.get(f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"})
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text.count("\nevent: progress\n") == 3 and stream.text.rstrip().endswith("}")
    listed = client.get("/v1/jobs?status=succeeded").json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert listed[0]["result"]["adapter"] == "sums-lora"


def test_an_events_position_past_any_id_is_a_422(client, base_model):
    r = client.get("/v1/jobs/whatever/events?after=99999999999999999999")
    assert r.status_code == 422 and "after" in r.text


def test_non_finite_numbers_are_refused_at_submission(client, base_model):
    import json

    upload_dataset(client)
    for field, value in (("alpha", "NaN"), ("lr", "Infinity"), ("metadata", '{"x": NaN}')):
        body = json.dumps(train_spec())[:-1] + f', "{field}": {value}}}'
        r = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (field, r.text)
    assert client.get("/v1/jobs").json()["data"] == []
