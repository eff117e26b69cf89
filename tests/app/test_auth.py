"""API keys: hashed, scoped, bound to a project; other projects' resources answer 404."""


def make_key(client, project, scopes, name="k"):
    r = client.post("/v1/admin/keys", json={"name": name, "scopes": scopes, "project": project})
    assert r.status_code == 201, r.text
    return r.json()


def as_key(client, key):
    return {"Authorization": f"Bearer {key}"}


def test_projects_are_isolated_and_scopes_enforced(client, services, tiny_model_dir, peft_adapter_dir):
    a_admin = make_key(client, "team-a", ["admin"])
    a_read = make_key(client, "team-a", ["read"])
    b_write = make_key(client, "team-b", ["write"])
    h = as_key(client, a_admin["key"])
    assert client.post("/v1/base-models", json={"name": "tiny", "local_path": str(tiny_model_dir)}, headers=h).status_code == 201
    files = [("files", (p.name, p.read_bytes())) for p in peft_adapter_dir.iterdir()]
    assert client.post("/v1/adapters", data={"name": "secret", "base_model": "tiny"}, files=files, headers=h).status_code == 201

    # team-b sees nothing of team-a: not the adapter, not the base model
    hb = as_key(client, b_write["key"])
    assert client.get("/v1/adapters/secret", headers=hb).status_code == 404
    assert client.get("/v1/adapters/secret/versions/1/archive", headers=hb).status_code == 404
    assert client.get("/v1/adapters", headers=hb).json()["data"] == []
    r = client.post("/v1/adapters", data={"name": "x", "base_model": "tiny"}, files=files, headers=hb)
    assert r.status_code == 404
    # a read key reads but cannot write
    hr = as_key(client, a_read["key"])
    assert client.get("/v1/adapters/secret", headers=hr).status_code == 200
    denied = client.put("/v1/adapters/secret/aliases/production", json={"version": "1"}, headers=hr)
    assert denied.status_code == 403 and "needs 'write'" in denied.json()["detail"]
    assert client.post("/v1/admin/keys", json={"name": "x"}, headers=hb).status_code == 403


def test_missing_bad_and_revoked_keys(client):
    key = make_key(client, "team-a", ["read"])
    assert client.get("/v1/adapters", headers={"Authorization": ""}).status_code == 401
    assert client.get("/v1/adapters", headers={"Authorization": "Bearer lf_nope_nope"}).status_code == 401
    good = as_key(client, key["key"])
    assert client.get("/v1/adapters", headers=good).status_code == 200
    assert client.delete(f"/v1/admin/keys/{key['prefix']}").status_code == 200
    r = client.get("/v1/adapters", headers=good)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_keys_are_stored_hashed(client, services):
    from sqlalchemy import select

    from registry.models import ApiKey

    key = make_key(client, "team-a", ["read"])["key"]
    with services.session_factory() as session:
        row = session.scalar(select(ApiKey))
    assert key.split("_", 2)[2] not in (row.secret_sha256, row.prefix)
    assert len(row.secret_sha256) == 64


def test_project_admin_cannot_mint_keys_elsewhere(client):
    admin = make_key(client, "team-a", ["admin"])
    r = client.post("/v1/admin/keys", json={"name": "x", "project": "team-b"}, headers=as_key(client, admin["key"]))
    assert r.status_code == 403
    bad = client.post("/v1/admin/keys", json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 422 and "scopes" in bad.json()["detail"]
