"""Blob reference counting. Rows are written before files are promoted, and freed files are deleted
only after the transaction that freed them commits, so a crash leaves at worst an unreferenced file
(never a row pointing at nothing)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from registry.blobstore import BlobStore
from registry.db import is_postgres
from registry.models import Blob


def add_ref(session: Session, *, sha256: str, size: int) -> None:
    """Insert the blob row with refcount 1, or add one to it (atomic on both databases)."""
    insert = pg_insert if is_postgres(session) else sqlite_insert
    stmt = insert(Blob).values(sha256=sha256, size=size, refcount=1)
    stmt = stmt.on_conflict_do_update(index_elements=[Blob.sha256], set_={"refcount": Blob.refcount + 1})
    session.execute(stmt)


def drop_ref(session: Session, *, sha256: str) -> bool:
    """Remove one reference; returns True when it was the last (the caller deletes the file after commit)."""
    blob = session.execute(select(Blob).where(Blob.sha256 == sha256).with_for_update()).scalar_one()
    blob.refcount -= 1
    if blob.refcount <= 0:
        session.delete(blob)
        return True
    return False


def delete_unreferenced_files(session_factory, store: BlobStore, shas: list[str]) -> None:
    """After commit: delete files whose rows are gone (re-checked, in case a new upload revived them)."""
    if not shas:
        return
    with session_factory() as session:
        alive = set(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(shas))))
    for sha in shas:
        if sha not in alive:
            store.delete(sha)
