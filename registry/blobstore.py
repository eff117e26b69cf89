"""Content-addressed blob storage: files are named by their sha256 and written tmp -> fsync -> rename.

`BlobStore` is the interface an S3-compatible backend can implement later; `LocalBlobStore` keeps
blobs under <root>/sha256/ab/cd/<sha>. Reference counts live in the database (registry.blobs), not here:
this layer only moves bytes.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol

from registry.errors import TooLarge

CHUNK = 1 << 20
WRITEBACK_EVERY = 64 << 20


class StagedFile:
    """A file being written into the store's temp area, hashed as it is written.

    Sequential writes go through `write`; resumable uploads write at offsets and call `rehash` once
    complete. Nothing is visible in the store until `BlobStore.promote`.
    """

    def __init__(self, path: Path, max_bytes: int | None):
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._digest: str | None = None
        self._f: BinaryIO = open(path, "wb")

    @classmethod
    def adopt(cls, path: Path, *, sha256: str, size: int) -> "StagedFile":
        """Wrap a finished file whose digest is already verified (a completed resumable upload)."""
        staged = cls.__new__(cls)
        staged.path, staged.max_bytes, staged.size = path, None, size
        staged._hash, staged._digest, staged._f = None, sha256, None
        return staged

    def write(self, data: bytes | memoryview) -> None:
        before = self.size
        self.size += len(data)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise TooLarge(f"file is larger than the {self.max_bytes}-byte limit")
        self._hash.update(data)
        self._f.write(data)
        if self.size // WRITEBACK_EVERY != before // WRITEBACK_EVERY:
            # Start writeback of what is written so far (asynchronously) so the final fsync has
            # little left to wait for, instead of flushing a whole large file at the end.
            self._f.flush()
            os.posix_fadvise(self._f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    def finish(self) -> str:
        """Flush and fsync; returns the sha256 hex digest."""
        if self._f is not None and not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        return self.sha256

    @property
    def sha256(self) -> str:
        return self._digest or self._hash.hexdigest()

    def discard(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)


def sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK * 4):
            h.update(chunk)
    return h.hexdigest()


class BlobStore(Protocol):
    def stage(self, max_bytes: int | None = None) -> StagedFile: ...
    def promote(self, staged: StagedFile, sha256: str) -> None: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def local_path(self, sha256: str) -> Path: ...
    def exists(self, sha256: str) -> bool: ...
    def delete(self, sha256: str) -> None: ...
    def temp_dir(self) -> Path: ...
    def job_dir(self, job_id: str) -> Path: ...


class LocalBlobStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._blobs = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def temp_dir(self) -> Path:
        """Scratch space on the same filesystem as the blobs, so promotion is a rename."""
        return self._tmp

    def job_dir(self, job_id: str) -> Path:
        """Where a job keeps checkpoints and output (shared storage in a scale-out setup); not created here."""
        return self.root / "jobs" / job_id

    def stage(self, max_bytes: int | None = None) -> StagedFile:
        return StagedFile(self._tmp / f"stage-{uuid.uuid4().hex}", max_bytes)

    def local_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self._blobs / sha256[:2] / sha256[2:4] / sha256

    def promote(self, staged: StagedFile, sha256: str) -> None:
        """Move a finished staged file into place. Same content already there: keep it (dedup)."""
        target = self.local_path(sha256)
        if target.exists():
            staged.discard()
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)
        _fsync_dir(target.parent)

    def open(self, sha256: str) -> BinaryIO:
        return open(self.local_path(sha256), "rb")

    def exists(self, sha256: str) -> bool:
        return self.local_path(sha256).exists()

    def delete(self, sha256: str) -> None:
        self.local_path(sha256).unlink(missing_ok=True)

    def list_all(self) -> list[str]:
        return [p.name for p in self._blobs.glob("*/*/*") if p.is_file()]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
