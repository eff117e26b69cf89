import json

from tests.app.helpers import snapshot
from tests.factories import arithmetic_rows


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_upload_list_download(client):
    data = jsonl(arithmetic_rows(10))
    r = client.post("/v1/datasets", data={"name": "sums"}, files={"file": ("sums.jsonl", data)})
    assert r.status_code == 201, r.text
    assert (r.json()["format"], r.json()["row_count"]) == ("prompt_completion", 10)
    assert client.post("/v1/datasets", data={"name": "sums"}, files={"file": ("s.jsonl", data)}).status_code == 200
    assert client.get("/v1/datasets/sums/content").content == data
    chat = jsonl([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}])
    r = client.post("/v1/datasets", data={"name": "chat"}, files={"file": ("c.jsonl", chat)})
    assert r.json()["format"] == "messages"
    assert [d["name"] for d in client.get("/v1/datasets").json()] == ["chat", "sums"]


def test_bad_datasets_name_the_line(client, services):
    before = snapshot(services)
    cases = {
        b'{"prompt": "a", "completion": "b"}\n{"prompt": 1}\n': "line 2",
        b'{"prompt": "a", "completion": "b"}\nnot json\n': "line 2 is not valid JSON",
        b'{"messages": [{"role": "user", "content": "hi"}]}\n': "no assistant message",
        b'{"messages": [{"role": "wizard", "content": "hi"}]}\n': "role",
        b'{"prompt": "a", "completion": "b"}\n{"messages": [{"role": "assistant", "content": "x"}]}\n': "one format",
        b"\n\n": "no rows",
    }
    for body, message in cases.items():
        r = client.post("/v1/datasets", data={"name": "bad"}, files={"file": ("d.jsonl", body)})
        assert r.status_code == 422 and message in r.json()["detail"], (body, r.text)
    other = client.post("/v1/datasets", data={"name": "x"}, files={"file": ("d.jsonl", jsonl(arithmetic_rows(2)))})
    assert other.status_code == 201
    r = client.post("/v1/datasets", data={"name": "x"}, files={"file": ("d.jsonl", jsonl(arithmetic_rows(3)))})
    assert r.status_code == 409 and "immutable" in r.json()["detail"]
    client_counts, _ = snapshot(services)
    assert client_counts["datasets"] == before[0]["datasets"] + 1


def test_a_dataset_from_a_resumable_upload_and_its_size_limit(client, services, monkeypatch):
    """The dataset limit holds for completed uploads too (their own limit is the much larger upload one)."""
    import hashlib

    data = jsonl(arithmetic_rows(20))

    def uploaded() -> str:
        up = client.post("/v1/uploads", json={"filename": "d.jsonl", "size": len(data),
                                              "sha256": hashlib.sha256(data).hexdigest()}).json()["id"]
        client.put(f"/v1/uploads/{up}", content=data, headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
        assert client.post(f"/v1/uploads/{up}/complete").json()["status"] == "complete"
        return up

    monkeypatch.setattr(services.settings, "max_dataset_bytes", len(data) - 1)
    before = snapshot(services)
    big = uploaded()
    r = client.post("/v1/datasets", data={"name": "big", "upload_ids": big})
    assert r.status_code == 413 and "dataset limit" in r.json()["detail"]
    assert client.get(f"/v1/uploads/{big}").status_code == 200  # kept, to use elsewhere or delete
    client.delete(f"/v1/uploads/{big}")
    assert snapshot(services) == before
    monkeypatch.setattr(services.settings, "max_dataset_bytes", len(data))
    r = client.post("/v1/datasets", data={"name": "ok", "upload_ids": uploaded()})
    assert r.status_code == 201 and r.json()["row_count"] == 20
    assert client.get("/v1/datasets/ok/content").content == data


def test_an_overlong_line_is_refused_without_reading_it_whole(client, monkeypatch):
    from registry import datasets

    monkeypatch.setattr(datasets, "MAX_LINE_BYTES", 64)
    body = b'{"prompt": "' + b"a" * 500 + b'", "completion": "b"}\n'
    r = client.post("/v1/datasets", data={"name": "long"}, files={"file": ("d.jsonl", body)})
    assert r.status_code == 422 and "line 1 is longer than 64 bytes" in r.json()["detail"]
