"""Every bad upload is refused with the right status and a useful message, and leaves the database
and the blob folder exactly as they were."""
import io
import json
import struct
import tarfile

import pytest

from tests.app.helpers import snapshot, tar_of

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def rewrite_header(data: bytes, edit) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def first_key(header, suffix="lora_A.weight"):
    return next(k for k in header if k.endswith(suffix))


def _overlap(h):
    """Point one tensor at the bytes of another of the same size."""
    a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    h[a.replace("layers.0", "layers.1")]["data_offsets"] = h[a]["data_offsets"]


def _rename(h, new):
    k = first_key(h)
    h[new] = h.pop(k)


CASES = {
    "pickle file": (lambda f: f | {"adapter_model.bin": b"\x80\x04junk"}, 422, "pickle"),
    "unexpected file": (lambda f: f | {"notes.txt": b"hi"}, 422, "unexpected file"),
    "missing weights": (lambda f: {CONFIG: f[CONFIG]}, 422, "missing adapter_model.safetensors"),
    "huge header length": (lambda f: f | {WEIGHTS: struct.pack("<Q", 1 << 40) + f[WEIGHTS][8:]}, 422, "header length"),
    "header not json": (lambda f: f | {WEIGHTS: struct.pack("<Q", 4) + b"{{{{" + f[WEIGHTS][12:]}, 422, "not valid JSON"),
    "overlapping offsets": (lambda f: f | {WEIGHTS: rewrite_header(f[WEIGHTS], _overlap)}, 422, "overlaps"),
    "truncated data": (lambda f: f | {WEIGHTS: f[WEIGHTS][:-16]}, 422, "data section"),
    "dtype not allowed": (lambda f: f | {WEIGHTS: rewrite_header(
        f[WEIGHTS], lambda h: h[first_key(h)].update(dtype="F8_E4M3"))}, 422, "dtype"),
    "not a lora key": (lambda f: f | {WEIGHTS: rewrite_header(
        f[WEIGHTS], lambda h: _rename(h, "model.layers.0.mlp.up_proj.weight"))}, 422, "not a PEFT LoRA weight"),
    "module not in base": (lambda f: f | {WEIGHTS: rewrite_header(
        f[WEIGHTS], lambda h: _rename(h, "base_model.model.model.layers.9.mlp.up_proj.lora_A.weight"))}, 422,
        "does not exist in the base model"),
    "rank differs from config": (lambda f: f | {CONFIG: json.dumps(json.loads(f[CONFIG]) | {"r": 8}).encode()},
                                 422, "need A[8"),
    "not a lora config": (lambda f: f | {CONFIG: json.dumps(json.loads(f[CONFIG]) | {"peft_type": "IA3"}).encode()},
                          422, "only 'LORA'"),
    "config not json": (lambda f: f | {CONFIG: b"{not json"}, 422, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_files_are_refused_and_leave_nothing(case, client, services, base_model, peft_adapter_dir):
    mutate, status, message = CASES[case]
    files = mutate({p.name: p.read_bytes() for p in peft_adapter_dir.iterdir() if p.name != "README.md"})
    before = snapshot(services)
    r = client.post("/v1/adapters", data={"name": "bad", "base_model": base_model},
                    files=[("files", (n, d)) for n, d in files.items()])
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert snapshot(services) == before


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _member(name, **kw):
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    return info


ARCHIVES = {
    "dot-dot path": (lambda f: tar_of({"../adapter_config.json": f[CONFIG]}), "unsafe path"),
    "absolute path": (lambda f: tar_of({"/etc/adapter_config.json": f[CONFIG]}), "unsafe path"),
    "symlink": (lambda f: _tar_with(_member("adapter_model.safetensors", type=tarfile.SYMTYPE, linkname="/etc/passwd")),
                "link or special file"),
    "too deep": (lambda f: tar_of({"a/b/adapter_config.json": f[CONFIG]}), "nested too deep"),
    "two folders": (lambda f: tar_of({"a/" + CONFIG: f[CONFIG], "b/" + WEIGHTS: f[WEIGHTS]}), "several folders"),
    "pickle inside": (lambda f: tar_of({"pytorch_model.bin": b"x"}), "pickle"),
    "not an archive": (lambda f: b"this is not a tar file at all" * 40, "not a readable"),
}


@pytest.mark.parametrize("case", list(ARCHIVES))
def test_bad_archives_are_refused_and_leave_nothing(case, client, services, base_model, peft_adapter_dir):
    make, message = ARCHIVES[case]
    files = {p.name: p.read_bytes() for p in peft_adapter_dir.iterdir()}
    before = snapshot(services)
    r = client.post("/v1/adapters", data={"name": "bad", "base_model": base_model},
                    files={"archive": ("a.tar", make(files))})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert snapshot(services) == before


def test_wrong_shapes_from_another_model(client, services, base_model, tmp_path):
    from tests.factories import make_tiny_model, save_peft_adapter

    model, _ = make_tiny_model(hidden=64)  # same module names, twice the width
    model.save_pretrained(tmp_path / "wider")
    adapter = save_peft_adapter(tmp_path / "wider", tmp_path / "wider-adapter")
    before = snapshot(services)
    r = client.post("/v1/adapters", data={"name": "bad", "base_model": base_model},
                    files=[("files", (p.name, p.read_bytes())) for p in adapter.iterdir()])
    assert r.status_code == 422 and "base model's [" in r.json()["detail"]
    assert snapshot(services) == before


def test_request_errors(client, services, base_model, peft_adapter_dir):
    files = [("files", (p.name, p.read_bytes())) for p in peft_adapter_dir.iterdir()]
    before = snapshot(services)
    unknown = client.post("/v1/adapters", data={"name": "x", "base_model": "nope"}, files=files)
    assert unknown.status_code == 404 and "POST /v1/base-models" in unknown.json()["detail"]
    bad_name = client.post("/v1/adapters", data={"name": "../x", "base_model": base_model}, files=files)
    assert bad_name.status_code == 422 and "not valid" in bad_name.json()["detail"]
    not_multipart = client.post("/v1/adapters", json={"name": "x"})
    assert not_multipart.status_code == 422 and "multipart" in not_multipart.json()["detail"]
    no_name = client.post("/v1/adapters", data={"base_model": base_model}, files=files)
    assert no_name.status_code == 422 and "'name' is required" in no_name.json()["detail"]
    bad_meta = client.post("/v1/adapters", data={"name": "x", "base_model": base_model, "metadata": "[1]"}, files=files)
    assert bad_meta.status_code == 422
    nan_meta = client.post("/v1/adapters", data={"name": "x", "base_model": base_model, "metadata": '{"a": NaN}'},
                           files=files)
    assert nan_meta.status_code == 422 and "NaN" in nan_meta.json()["detail"]
    # a body cut off before its closing boundary (the trailing fields never arrived) is not a request
    import httpx
    whole = httpx.Request("POST", "http://x/v1/adapters", data={"name": "x", "base_model": base_model}, files=files)
    body = whole.read()
    cut = client.post("/v1/adapters", content=body[:body.rindex(b"--")],
                      headers={"content-type": whole.headers["content-type"]})
    assert cut.status_code == 422 and "closing boundary" in cut.json()["detail"]
    assert snapshot(services) == before


def test_oversized_upload_is_cut_off(services, base_model, peft_adapter_dir, client):
    from fastapi.testclient import TestClient

    from app.main import create_app

    services.settings.max_upload_bytes = 4096
    before = snapshot(services)
    with TestClient(create_app(services=services)) as small:
        small.headers["Authorization"] = client.headers["Authorization"]
        r = small.post("/v1/adapters", data={"name": "big", "base_model": base_model},
                       files=[("files", (p.name, p.read_bytes())) for p in peft_adapter_dir.iterdir()])
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert snapshot(services) == before


def test_adapter_name_bound_to_its_base_model(client, services, base_model, tiny_model_dir, peft_adapter_dir):
    from tests.app.helpers import upload_folder

    assert upload_folder(client, peft_adapter_dir, name="one").status_code == 201
    assert client.post("/v1/base-models", json={"name": "tiny2", "local_path": str(tiny_model_dir)}).status_code == 201
    before = snapshot(services)
    r = upload_folder(client, peft_adapter_dir, name="one", base_model="tiny2")
    assert r.status_code == 409 and "belongs to base model" in r.json()["detail"]
    assert snapshot(services) == before
