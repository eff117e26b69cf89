"""A PEFT-made adapter goes in, comes out byte-identical, and loads back with the same outputs."""
import hashlib
import io
import tarfile

import torch

from tests.app.helpers import upload_folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_list_download_and_load_back(client, base_model, peft_adapter_dir, tiny_model_dir, tmp_path):
    r = upload_folder(client, peft_adapter_dir, name="demo", tags="math,v1", metadata='{"owner": "team-a"}')
    assert r.status_code == 201, r.text
    version = r.json()
    assert (version["version"], version["kind"], version["rank"], version["alpha"]) == (1, "lora", 4, 8.0)
    assert version["tags"] == ["math", "v1"] and version["metadata"] == {"owner": "team-a"}
    assert set(version["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # PEFT adds config fields every release: unknown ones are kept as they were
    assert version["config"]["peft_version"] and "qalora_group_size" in version["config"]

    listed = client.get("/v1/adapters").json()
    assert [a["name"] for a in listed["data"]] == ["demo"] and listed["data"][0]["latest_version"] == 1

    originals = {p.name: p.read_bytes() for p in peft_adapter_dir.iterdir()}
    for name, data in originals.items():
        got = client.get(f"/v1/adapters/demo/versions/1/files/{name}")
        assert got.status_code == 200 and sha(got.content) == sha(data)
        assert got.headers["etag"] == f'"{sha(data)}"'

    archive = client.get("/v1/adapters/demo/versions/latest/archive")
    assert archive.status_code == 200
    assert archive.headers["etag"] == f'"{version["manifest_sha256"]}"'
    assert int(archive.headers["content-length"]) == len(archive.content)
    out = tmp_path / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(out, filter="data")
    folder = out / "demo-v1"
    assert {p.name: sha(p.read_bytes()) for p in folder.iterdir()} == {n: sha(d) for n, d in originals.items()}

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 17, 42, 99, 3]])
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), peft_adapter_dir)
    got = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, got(ids).logits)
        assert not torch.allclose(base(ids).logits, got(ids).logits)  # the adapter really does something


def test_same_bytes_same_version_other_bytes_next_version(client, base_model, peft_adapter_dir, tiny_model_dir, tmp_path):
    from tests.factories import save_peft_adapter

    assert upload_folder(client, peft_adapter_dir).status_code == 201
    again = upload_folder(client, peft_adapter_dir)
    assert again.status_code == 200 and again.json()["version"] == 1
    other = save_peft_adapter(tiny_model_dir, tmp_path / "other", r=8, alpha=16, seed=7)
    second = upload_folder(client, other)
    assert second.status_code == 201 and second.json()["version"] == 2 and second.json()["rank"] == 8
    assert client.get("/v1/adapters/demo").json()["latest_version"] == 2


def test_archive_upload_with_top_level_folder(client, base_model, peft_adapter_dir):
    from tests.app.helpers import tar_of

    members = {p.name: p.read_bytes() for p in peft_adapter_dir.iterdir()}
    r = client.post("/v1/adapters", data={"name": "from-tar", "base_model": base_model},
                    files={"archive": ("a.tar.gz", tar_of(members, prefix="my-adapter/"))})
    assert r.status_code == 201, r.text
    assert {f["filename"] for f in r.json()["files"]} == set(members)


def test_zip_upload(client, base_model, peft_adapter_dir):
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in peft_adapter_dir.iterdir():
            zf.writestr(p.name, p.read_bytes())
    r = client.post("/v1/adapters", data={"name": "from-zip", "base_model": base_model},
                    files={"archive": ("a.zip", buf.getvalue())})
    assert r.status_code == 201, r.text
