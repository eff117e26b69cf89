"""Registering base models: shapes read from headers, idempotent, clear errors for bad folders."""
from tests.app.helpers import snapshot
from tests.factories import save_tiny_model


def test_register_is_idempotent_and_conflicts_are_409(client, services, tiny_model_dir, tmp_path):
    first = client.post("/v1/base-models", json={"name": "tiny", "local_path": str(tiny_model_dir)})
    assert first.status_code == 201
    body = first.json()
    assert body["architecture"] == "LlamaForCausalLM" and body["hidden_size"] == 32
    assert body["module_shapes"]["model.layers.0.mlp.down_proj"] == [32, 64]
    again = client.post("/v1/base-models", json={"name": "tiny", "local_path": str(tiny_model_dir)})
    assert again.status_code == 200 and again.json()["revision"] == body["revision"]
    other = save_tiny_model(tmp_path / "other", seed=5)
    clash = client.post("/v1/base-models", json={"name": "tiny", "local_path": str(other)})
    assert clash.status_code == 409 and "already exists" in clash.json()["detail"]
    assert [b["name"] for b in client.get("/v1/base-models").json()] == ["tiny"]


def test_bad_folders_are_refused(client, services, tmp_path):
    before = snapshot(services)
    missing = client.post("/v1/base-models", json={"name": "x", "local_path": str(tmp_path / "nope")})
    assert missing.status_code == 422 and "not a directory" in missing.json()["detail"]
    (tmp_path / "empty").mkdir()
    empty = client.post("/v1/base-models", json={"name": "x", "local_path": str(tmp_path / "empty")})
    assert empty.status_code == 422 and "config.json" in empty.json()["detail"]
    (tmp_path / "empty" / "config.json").write_text("{}")
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"pickle")
    pickled = client.post("/v1/base-models", json={"name": "x", "local_path": str(tmp_path / "empty")})
    assert pickled.status_code == 422 and "safetensors" in pickled.json()["detail"]
    for bad in ("{not json", "[1, 2]"):
        (tmp_path / "empty" / "config.json").write_text(bad)
        r = client.post("/v1/base-models", json={"name": "x", "local_path": str(tmp_path / "empty")})
        assert r.status_code == 422 and "config.json" in r.json()["detail"], r.text
    assert client.get("/v1/base-models/x").status_code == 404
    assert snapshot(services) == before


def test_only_admins_name_server_paths(client, tiny_model_dir):
    key = client.post("/v1/admin/keys", json={"name": "w", "scopes": ["write"]}).json()["key"]
    r = client.post("/v1/base-models", json={"name": "tiny", "local_path": str(tiny_model_dir)},
                    headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403


def test_a_failed_commit_is_the_response_not_a_201_before_it(client, services, tiny_model_dir, monkeypatch):
    """The session commits before the response is sent; a unique-constraint loss at commit (two requests
    creating the same name at once) answers 409 and leaves no row."""
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    def lose_the_race(self):
        raise IntegrityError("INSERT ...", {}, Exception("duplicate key"))

    monkeypatch.setattr(Session, "commit", lose_the_race)
    r = client.post("/v1/base-models", json={"name": "tiny", "local_path": str(tiny_model_dir)})
    monkeypatch.undo()
    assert r.status_code == 409 and "concurrent request" in r.json()["detail"]
    assert client.get("/v1/base-models").json() == []
