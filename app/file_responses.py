"""Download responses: single blobs with ETag and HTTP Range (Starlette's FileResponse, larger reads),
and a PEFT folder as an uncompressed tar generated on the fly with an exact Content-Length."""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterator

from fastapi import Request
from fastapi.responses import FileResponse, Response, StreamingResponse

READ_CHUNK = 4 * 1024 * 1024  # Starlette's default of 64 KiB costs a thread hop per 64 KiB


class BlobFileResponse(FileResponse):
    chunk_size = READ_CHUNK


def not_modified(request: Request, etag: str) -> Response | None:
    inm = request.headers.get("if-none-match")
    if inm and etag in [t.strip() for t in inm.split(",")]:
        return Response(status_code=304, headers={"etag": etag})
    return None


def blob_response(path: Path, *, filename: str, etag: str, media_type: str = "application/octet-stream") -> BlobFileResponse:
    # stat_result left to Starlette; the etag is the content hash, stronger than mtime+size.
    return BlobFileResponse(path, media_type=media_type, filename=filename, headers={"etag": etag})


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0  # fixed mtime: same version, same bytes
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def tar_size(files: list[tuple[str, int]]) -> int:
    return sum(512 + -(-size // 512) * 512 for _, size in files) + 1024


def tar_stream(folder: str, files: list[tuple[str, int, Path]]) -> Iterator[bytes]:
    for name, size, path in files:
        yield _tar_header(f"{folder}/{name}", size)
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                yield chunk
        if size % 512:
            yield b"\0" * (512 - size % 512)
    yield b"\0" * 1024


def tar_response(folder: str, files: list[tuple[str, int, Path]], *, etag: str) -> StreamingResponse:
    return StreamingResponse(
        tar_stream(folder, files), media_type="application/x-tar",
        headers={"etag": etag, "content-length": str(tar_size([(n, s) for n, s, _ in files])),
                 "content-disposition": f'attachment; filename="{folder}.tar"'})
