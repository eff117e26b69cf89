"""SIGKILL the worker mid-training; another worker resumes from the last checkpoint and the job ends
with exactly one adapter version."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.jobs.helpers import train_spec, upload_dataset

ROOT = Path(__file__).resolve().parents[2]


def start_worker(settings) -> subprocess.Popen:
    env = {**os.environ, "LORIFOLD_DATABASE_URL": settings.resolved_database_url(),
           "LORIFOLD_DATA_DIR": str(settings.data_dir), "LORIFOLD_HEARTBEAT_S": "0.5",
           "LORIFOLD_HEARTBEAT_TIMEOUT_S": "3", "LORIFOLD_POLL_INTERVAL_S": "0.3"}
    return subprocess.Popen([sys.executable, "-m", "cli.main", "worker"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(predicate, timeout=180, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_job_resumes_from_checkpoint(client, settings, base_model):
    upload_dataset(client)
    job = client.post("/v1/jobs", json=train_spec(max_steps=300, checkpoint_every=20)).json()
    url = f"/v1/jobs/{job['id']}"

    def logs():
        return [e["data"].get("message", "") for e in client.get(f"{url}/events").json() if e["type"] == "log"]

    first = start_worker(settings)
    try:
        wait_for(lambda: any(m.startswith("checkpoint at step") for m in logs()), what="a checkpoint")
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    second = start_worker(settings)
    try:
        final = wait_for(lambda: (j := client.get(url).json())["status"] in ("succeeded", "failed") and j,
                         what="the job to finish")
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2
    resumed = [m for m in logs() if m.startswith("resumed from")]
    assert resumed and "step 0 " not in resumed[0]
    adapter = client.get("/v1/adapters/sums-lora").json()
    assert [v["version"] for v in adapter["versions"]] == [1]
    assert adapter["versions"][0]["metrics"]["steps"] == 300
