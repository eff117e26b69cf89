"""Aliases, lineage, deletion and refcounted blobs."""
from registry.ingest import NewVersion
from tests.app.helpers import snapshot, upload_folder
from tests.factories import save_peft_adapter


def two_versions(client, tiny_model_dir, peft_adapter_dir, tmp_path):
    assert upload_folder(client, peft_adapter_dir).status_code == 201
    other = save_peft_adapter(tiny_model_dir, tmp_path / "v2", seed=9)
    assert upload_folder(client, other).status_code == 201


def test_aliases_move_atomically_and_resolve(client, base_model, tiny_model_dir, peft_adapter_dir, tmp_path):
    two_versions(client, tiny_model_dir, peft_adapter_dir, tmp_path)
    r = client.put("/v1/adapters/demo/aliases/production", json={"version": "1"})
    assert r.status_code == 200 and r.json()["aliases"] == ["production"]
    assert client.get("/v1/adapters/demo/versions/production").json()["version"] == 1
    client.put("/v1/adapters/demo/aliases/production", json={"version": "2"})
    assert client.get("/v1/adapters/demo/versions/production").json()["version"] == 2
    assert client.get("/v1/adapters/demo").json()["aliases"] == {"production": 2}
    assert client.put("/v1/adapters/demo/aliases/7up", json={"version": "1"}).status_code == 422
    assert client.put("/v1/adapters/demo/aliases/staging", json={"version": "9"}).status_code == 404
    assert client.delete("/v1/adapters/demo/aliases/production").status_code == 204
    assert client.get("/v1/adapters/demo/versions/production").status_code == 404


def test_delete_refuses_while_descendants_exist_unless_forced(client, services, base_model, tiny_model_dir,
                                                                peft_adapter_dir, tmp_path):
    from registry.ingest import ingest_adapter

    parent = upload_folder(client, peft_adapter_dir, name="parent").json()
    with services.session_factory() as session:
        from registry.adapters import resolve_version
        parent_id = resolve_version(session, project="default", name="parent", ref="1").id
    child_dir = save_peft_adapter(tiny_model_dir, tmp_path / "child", seed=5)
    staged = {}
    for p in child_dir.iterdir():
        s = services.store.stage()
        s.write(p.read_bytes())
        s.finish()
        staged[p.name] = s
    ingest_adapter(services.session_factory, services.store,
                   NewVersion(project="default", name="child", base_model=base_model,
                              parents=[(parent_id, "continued-from")]), staged)
    lineage = client.get("/v1/adapters/child/versions/1/lineage").json()
    assert lineage["parents"] == [{"name": "parent", "version": 1, "role": "continued-from"}]
    assert client.get("/v1/adapters/parent/versions/1/lineage").json()["children"][0]["name"] == "child"

    r = client.delete("/v1/adapters/parent/versions/1")
    assert r.status_code == 409 and "force=true" in r.json()["detail"]
    assert client.delete("/v1/adapters/parent/versions/1?force=true").status_code == 204
    assert client.get("/v1/adapters/parent").status_code == 404  # last version gone: adapter gone
    assert client.get("/v1/adapters/child/versions/1/lineage").json()["parents"] == []
    # files only the parent used are freed; the child's files still download
    parent_shas = {f["sha256"] for f in parent["files"]}
    child_shas = {f["sha256"] for f in client.get("/v1/adapters/child/versions/1").json()["files"]}
    for sha in parent_shas - child_shas:
        assert not services.store.exists(sha)
    for sha in child_shas:
        assert services.store.exists(sha)


def test_shared_blob_survives_until_last_reference(client, services, base_model, peft_adapter_dir):
    a = upload_folder(client, peft_adapter_dir, name="a").json()
    upload_folder(client, peft_adapter_dir, name="b")  # same bytes, other name: blobs shared
    sha = a["files"][0]["sha256"]
    assert client.delete("/v1/adapters/a/versions/1").status_code == 204
    assert services.store.exists(sha)
    assert client.get(f"/v1/adapters/b/versions/1/files/{a['files'][0]['filename']}").status_code == 200
    assert client.delete("/v1/adapters/b/versions/1").status_code == 204
    assert not services.store.exists(sha)
    counts, files = snapshot(services)
    assert counts["blobs"] == 0 and not [f for f in files if f.startswith("sha256/")]


def test_listing_filters_and_cursor(client, base_model, peft_adapter_dir):
    for i in range(5):
        upload_folder(client, peft_adapter_dir, name=f"task-{i}", tags="even" if i % 2 == 0 else "odd")
    upload_folder(client, peft_adapter_dir, name="other")
    page1 = client.get("/v1/adapters?limit=2&prefix=task-").json()
    page2 = client.get(f"/v1/adapters?limit=2&prefix=task-&cursor={page1['next_cursor']}").json()
    page3 = client.get(f"/v1/adapters?limit=2&prefix=task-&cursor={page2['next_cursor']}").json()
    names = [a["name"] for p in (page1, page2, page3) for a in p["data"]]
    assert names == [f"task-{i}" for i in range(5)] and page3["next_cursor"] is None
    assert [a["name"] for a in client.get("/v1/adapters?tag=odd").json()["data"]] == ["task-1", "task-3"]
    assert len(client.get("/v1/adapters?kind=lora&base_model=tiny").json()["data"]) == 6
    assert client.get("/v1/adapters?kind=lori_s").json()["data"] == []
    assert client.get("/v1/adapters?cursor=garbage").status_code == 422
    import base64
    import json
    for value in ({"after_id": "x"}, {"after_id": 2**70}, {"after_id": True}, [1], {}):
        forged = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
        assert client.get(f"/v1/adapters?cursor={forged}").status_code == 422, value
        assert client.get(f"/v1/jobs?cursor={forged}").status_code == 422, value


def test_odd_version_references_are_404_not_500(client, base_model, peft_adapter_dir):
    upload_folder(client, peft_adapter_dir, name="x")
    for ref in ("\u00b2", "99999999999999999999", "0", "latest2"):
        r = client.get(f"/v1/adapters/x/versions/{ref}")
        assert r.status_code == 404 and "no version or alias" in r.json()["detail"], ref
    assert client.get("/v1/adapters/x/versions/1").status_code == 200


def test_range_requests_and_etags(client, base_model, peft_adapter_dir):
    upload_folder(client, peft_adapter_dir)
    data = (peft_adapter_dir / "adapter_model.safetensors").read_bytes()
    url = "/v1/adapters/demo/versions/1/files/adapter_model.safetensors"
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    etag = client.get(url).headers["etag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get("/v1/adapters/demo/versions/1/files/nope.bin").status_code == 404
