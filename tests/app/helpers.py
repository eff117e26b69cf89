"""Helpers for API tests: upload an adapter folder and snapshot what the service has stored."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from sqlalchemy import func, select

from registry.models import Base


def upload_folder(client, folder: Path, *, name: str = "demo", base_model: str = "tiny", **fields):
    files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir()) if p.is_file()]
    return client.post("/v1/adapters", data={"name": name, "base_model": base_model, **fields}, files=files)


def tar_of(members: dict[str, bytes], *, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def snapshot(services) -> tuple[dict[str, int], list[str]]:
    """Row counts of every table and every file under the blob root (temp area included)."""
    with services.session_factory() as session:
        counts = {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    files = sorted(str(p.relative_to(services.store.root)) for p in services.store.root.rglob("*") if p.is_file())
    return counts, files
