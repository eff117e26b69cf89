"""Resumable uploads: ranges in any order, re-sent after a drop, verified before they become visible."""
import hashlib
from datetime import timedelta

from tests.app.helpers import snapshot


def start(client, data: bytes, filename="adapter_model.safetensors", sha=None):
    r = client.post("/v1/uploads", json={"filename": filename, "size": len(data),
                                         "sha256": sha or hashlib.sha256(data).hexdigest()})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def put(client, upload_id, data, start_at, end_at):
    return client.put(f"/v1/uploads/{upload_id}", content=data[start_at:end_at],
                      headers={"Content-Range": f"bytes {start_at}-{end_at - 1}/{len(data)}"})


def test_out_of_order_ranges_then_use_in_an_adapter(client, services, base_model, peft_adapter_dir):
    weights = (peft_adapter_dir / "adapter_model.safetensors").read_bytes()
    config = (peft_adapter_dir / "adapter_config.json").read_bytes()
    wid, cid = start(client, weights), start(client, config, "adapter_config.json")
    third = len(weights) // 3
    assert put(client, wid, weights, 2 * third, len(weights)).status_code == 200
    assert put(client, wid, weights, 0, third).json()["received"] == [[0, third], [2 * third, len(weights)]]
    early = client.post(f"/v1/uploads/{wid}/complete")
    assert early.status_code == 409 and "missing ranges" in early.json()["detail"]
    assert put(client, wid, weights, third, 2 * third).json()["received"] == [[0, len(weights)]]
    assert put(client, wid, weights, 0, third).status_code == 200  # a retried range is harmless
    assert client.post(f"/v1/uploads/{wid}/complete").json()["status"] == "complete"
    put(client, cid, config, 0, len(config))
    client.post(f"/v1/uploads/{cid}/complete")

    r = client.post("/v1/adapters", data={"name": "big", "base_model": base_model, "upload_ids": f"{wid},{cid}"})
    assert r.status_code == 201, r.text
    got = client.get("/v1/adapters/big/versions/1/files/adapter_model.safetensors").content
    assert got == weights
    assert client.get(f"/v1/uploads/{wid}").status_code == 404  # used up
    counts, files = snapshot(services)
    assert counts["upload_sessions"] == 0 and not [f for f in files if f.startswith("tmp/")]


def test_wrong_sha_is_refused_and_ranges_reset(client, base_model):
    data = b"x" * 5000
    uid = start(client, data, sha="0" * 64)
    put(client, uid, data, 0, len(data))
    r = client.post(f"/v1/uploads/{uid}/complete")
    assert r.status_code == 422 and "not the announced" in r.json()["detail"]
    assert client.get(f"/v1/uploads/{uid}").json()["received"] == []


def test_bad_ranges(client, base_model):
    data = b"y" * 100
    uid = start(client, data)
    assert client.put(f"/v1/uploads/{uid}", content=data).status_code == 422  # no Content-Range
    short = client.put(f"/v1/uploads/{uid}", content=data[:10], headers={"Content-Range": "bytes 0-49/100"})
    assert short.status_code == 422 and "send the range again" in short.json()["detail"]
    outside = client.put(f"/v1/uploads/{uid}", content=data, headers={"Content-Range": "bytes 50-149/100"})
    assert outside.status_code == 422
    assert client.get(f"/v1/uploads/{uid}").json()["received"] == []
    assert client.post("/v1/uploads", json={"filename": "../x", "size": 1, "sha256": "0" * 64}).status_code == 422
    assert client.post("/v1/uploads", json={"filename": "a", "size": 1, "sha256": "nothex"}).status_code == 422


def test_abandoned_sessions_expire(client, services, base_model):
    from sqlalchemy import update

    from registry.models import UploadSession, utcnow

    uid = start(client, b"z" * 10)
    with services.session_factory() as session:
        session.execute(update(UploadSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    assert client.get(f"/v1/uploads/{uid}").status_code == 404
    start(client, b"w" * 10)  # creating a session sweeps expired ones
    counts, files = snapshot(services)
    assert counts["upload_sessions"] == 1 and len([f for f in files if f.startswith("tmp/upload-")]) == 1


def test_a_verified_upload_cannot_be_overwritten(client, services, base_model):
    """After `complete` the bytes are what the sha256 said: a later PUT is refused and changes nothing
    (blobs are shared by hash, so other bytes under a verified sha would poison every later upload)."""
    from registry.uploads import part_path

    data = b"v" * 4096
    uid = start(client, data)
    put(client, uid, data, 0, len(data))
    assert client.post(f"/v1/uploads/{uid}/complete").json()["status"] == "complete"
    other = b"w" * 4096
    r = put(client, uid, other, 0, len(other))
    assert r.status_code == 409 and "can no longer change" in r.json()["detail"]
    assert part_path(services.store, uid).read_bytes() == data


def test_a_put_waits_while_complete_holds_the_part_file(client, services, base_model):
    """The exclusive lock `complete` takes while hashing keeps a PUT from writing under the hash."""
    import fcntl
    import threading

    from registry.uploads import part_path

    data = b"q" * 4096
    uid = start(client, data)
    put(client, uid, data, 0, 2048)
    result = {}
    with open(part_path(services.store, uid), "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # what complete holds while it hashes
        writer = threading.Thread(target=lambda: result.setdefault("r", put(client, uid, data, 2048, 4096)))
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive() and "r" not in result  # blocked on the lock, nothing written yet
    writer.join(timeout=10)
    assert result["r"].status_code == 200 and result["r"].json()["received"] == [[0, 4096]]
