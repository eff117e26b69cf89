"""Resumable uploads for large files: byte ranges arrive in any order (and again after a dropped
connection) into a pre-sized part file; `complete` verifies the sha256 before anything becomes
visible. A completed upload is consumed by POST /v1/adapters or /v1/datasets (upload_ids=...).
"""
from __future__ import annotations

import fcntl
import os
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.blobstore import BlobStore, StagedFile, sha256_of_file
from registry.errors import Conflict, InvalidInput, NotFound, TooLarge
from registry.models import UploadSession, as_utc, utcnow

_SHA = re.compile(r"^[0-9a-f]{64}$")


def part_path(store: BlobStore, upload_id: str) -> Path:
    return store.temp_dir() / f"upload-{upload_id}.part"


def merge_ranges(ranges: Iterable[list[int]]) -> list[list[int]]:
    """[[0,5],[5,9],[12,20]] -> [[0,9],[12,20]] (half-open intervals)."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def create_upload(session: Session, store: BlobStore, *, project: str, filename: str, size: int, sha256: str,
                  max_bytes: int, ttl_s: int) -> UploadSession:
    if not _SHA.match(sha256):
        raise InvalidInput("sha256 must be 64 lowercase hex characters")
    if size <= 0:
        raise InvalidInput("size must be positive")
    if size > max_bytes:
        raise TooLarge(f"size {size} is over the {max_bytes}-byte upload limit")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", filename):
        raise InvalidInput(f"filename {filename!r} is not valid")
    row = UploadSession(id=uuid.uuid4().hex, project=project, filename=filename, size=size, sha256=sha256,
                        received=[], status="open", expires_at=utcnow() + timedelta(seconds=ttl_s))
    with open(part_path(store, row.id), "wb") as f:
        f.truncate(size)
    session.add(row)
    return row


def get_upload(session: Session, *, project: str, upload_id: str, lock: bool = False) -> UploadSession:
    stmt = select(UploadSession).where(UploadSession.id == upload_id, UploadSession.project == project)
    row = session.scalar(stmt.with_for_update() if lock else stmt)
    if row is None or as_utc(row.expires_at) < utcnow():
        raise NotFound(f"upload {upload_id!r} not found (or expired)")
    return row


def parse_content_range(header: str | None, size: int) -> tuple[int, int]:
    """'bytes 0-1048575/4194304' -> (0, 1048576). The total must match the session's size."""
    m = re.match(r"^bytes (\d+)-(\d+)/(\d+|\*)$", header or "")
    if not m:
        raise InvalidInput("send a Content-Range header like 'bytes 0-1048575/<size>'")
    start, last = int(m[1]), int(m[2])
    if m[3] != "*" and int(m[3]) != size:
        raise InvalidInput(f"Content-Range total {m[3]} does not match the upload's size {size}")
    if last < start or last >= size:
        raise InvalidInput(f"range {start}-{last} is outside the upload's {size} bytes")
    return start, last + 1


class RangeWriter:
    """Writes the body of one PUT into [start, end) of the pre-sized part file; ranges never overlap
    in effect (same bytes, same place), so concurrent PUTs of different ranges need no lock between them.

    It holds a shared flock on the part file from opening until release(), and `complete` takes the
    exclusive one while it hashes and marks the upload complete. So no byte can change under the hash or
    after it: a PUT either finished before the hash began, or sees the upload complete and is refused
    (open() then check_writable(), in that order, is what closes the window)."""

    def __init__(self, store: BlobStore, *, upload_id: str, start: int, end: int):
        self.remaining = end - start
        self.expected = end - start
        self._f = open(part_path(store, upload_id), "r+b")
        fcntl.flock(self._f.fileno(), fcntl.LOCK_SH)  # waits while a `complete` is hashing
        self._f.seek(start)

    def write(self, chunk: bytes) -> None:
        self.remaining -= len(chunk)
        if self.remaining < 0:
            raise InvalidInput(f"body is longer than the Content-Range ({self.expected} bytes)")
        self._f.write(chunk)

    def finish(self) -> None:
        """Flush and fsync; raises if the body was shorter than the range (the range is not recorded)."""
        self._f.flush()
        os.fsync(self._f.fileno())
        if self.remaining:
            raise InvalidInput(f"body had {self.expected - self.remaining} bytes but Content-Range announced "
                               f"{self.expected}; send the range again")

    def release(self) -> None:
        self._f.close()  # drops the flock


def check_writable(row: UploadSession) -> None:
    if row.status == "complete":
        raise Conflict(f"upload {row.id!r} is complete and verified; its bytes can no longer change "
                       "(create a new upload to send other content)")


def record_range(session: Session, *, project: str, upload_id: str, start: int, end: int) -> UploadSession:
    row = get_upload(session, project=project, upload_id=upload_id, lock=True)
    row.received = merge_ranges([*row.received, [start, end]])
    return row


def complete_upload(session_factory, store: BlobStore, *, project: str, upload_id: str) -> UploadSession:
    """Hash the part file outside any transaction (seconds for GBs), then record the verdict. Holds the
    part file's exclusive flock throughout, so no PUT writes while it hashes (see RangeWriter)."""
    with session_factory() as session:
        get_upload(session, project=project, upload_id=upload_id)  # 404 before touching the file
    with open(part_path(store, upload_id), "rb") as part:
        fcntl.flock(part.fileno(), fcntl.LOCK_EX)  # waits for PUTs in flight to finish and record
        with session_factory() as session:
            row = get_upload(session, project=project, upload_id=upload_id)
            if row.status == "complete":
                return row
            if row.received != [[0, row.size]]:
                raise Conflict(f"upload is incomplete: received {row.received} of [0, {row.size}); "
                               "send the missing ranges")
        actual = sha256_of_file(part_path(store, upload_id))
        with session_factory() as session:
            row = get_upload(session, project=project, upload_id=upload_id, lock=True)
            if actual != row.sha256:
                row.received = []
                session.commit()
                raise InvalidInput(f"sha256 of the received bytes is {actual}, not the announced {row.sha256}; "
                                   "the ranges were reset, send the file again")
            row.status = "complete"
            session.commit()
            return row


def stage_completed(session: Session, store: BlobStore, *, project: str, upload_ids: list[str]) -> dict[str, StagedFile]:
    """Completed uploads as staged files keyed by filename. Each is a hard link to the part file, so a
    failed ingest (which discards what it was given) leaves the upload in place to fix and retry."""
    staged: dict[str, StagedFile] = {}
    try:
        for upload_id in upload_ids:
            row = get_upload(session, project=project, upload_id=upload_id)
            if row.status != "complete":
                raise Conflict(f"upload {upload_id!r} is not complete; POST /v1/uploads/{upload_id}/complete first")
            if row.filename in staged:
                raise InvalidInput(f"two uploads are both named {row.filename!r}")
            link = store.temp_dir() / f"stage-{uuid.uuid4().hex}"
            os.link(part_path(store, upload_id), link)
            staged[row.filename] = StagedFile.adopt(link, sha256=row.sha256, size=row.size)
    except BaseException:
        for s in staged.values():
            s.discard()
        raise
    return staged


def delete_uploads(session: Session, store: BlobStore, *, project: str, upload_ids: list[str]) -> None:
    """After a successful ingest: the uploads are used up."""
    for upload_id in upload_ids:
        delete_upload(session, store, project=project, upload_id=upload_id)


def delete_upload(session: Session, store: BlobStore, *, project: str, upload_id: str) -> None:
    row = get_upload(session, project=project, upload_id=upload_id, lock=True)
    session.delete(row)
    part_path(store, upload_id).unlink(missing_ok=True)


def expire_uploads(session: Session, store: BlobStore) -> int:
    """Delete abandoned sessions and their part files; returns how many."""
    rows = list(session.scalars(select(UploadSession).where(UploadSession.expires_at < utcnow())))
    for row in rows:
        session.delete(row)
        part_path(store, row.id).unlink(missing_ok=True)
    return len(rows)

