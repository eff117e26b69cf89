"""Run jobs in tests: a real Worker (spawned children and all) driven synchronously."""
from __future__ import annotations

import json

from tests.factories import arithmetic_rows


def worker_for(services, **settings_overrides):
    from jobs.handlers.base import WorkerContext
    from jobs.worker import Worker

    for key, value in settings_overrides.items():
        setattr(services.settings, key, value)
    return Worker(WorkerContext(settings=services.settings, session_factory=services.session_factory,
                                store=services.store))


def upload_dataset(client, name="sums", rows=None):
    rows = rows or arithmetic_rows(64)
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = client.post("/v1/datasets", data={"name": name}, files={"file": (f"{name}.jsonl", body)})
    assert r.status_code in (200, 201), r.text
    return name


def train_spec(method="lora", output="sums-lora", **overrides):
    spec = {"kind": "train", "method": method, "base_model": "tiny", "dataset": "sums", "output_name": output,
            "rank": 4, "max_steps": 40, "batch_size": 8, "max_length": 32, "lr": 3e-2, "checkpoint_every": 10}
    spec.update(overrides)
    return spec


def run_job(client, services, spec, **headers):
    r = client.post("/v1/jobs", json=spec, headers=headers)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert worker_for(services).run_once() == job_id
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    return job


class RunningWorker:
    """A worker loop on a background thread for tests of the synchronous endpoints."""

    def __init__(self, services):
        import threading

        self.stop = threading.Event()
        self.thread = threading.Thread(target=worker_for(services, poll_interval_s=0.1).run, args=(self.stop,),
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=60)
