"""Unpack an uploaded .tar / .tar.gz / .zip of a PEFT folder safely into staged blobs.

Members are streamed one at a time with a size cap (a zip bomb stops at the limit, it is never
inflated whole). Refused: absolute paths, '..', links and devices, nested folders, unexpected files,
pickles. One top-level folder ("my-adapter/adapter_config.json") is allowed and stripped.
"""
from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from adapterio.peft_format import ALLOWED_FILES, PICKLE_SUFFIXES
from registry.blobstore import CHUNK, BlobStore, StagedFile
from registry.errors import InvalidInput


def check_member_filename(name: str) -> str:
    """Shared by archive members and multipart file parts: returns the bare allowed filename."""
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise InvalidInput(f"{name!r} is a pickle file, which lorifold never loads; convert the adapter to "
                           "safetensors (PeftModel.save_pretrained(..., safe_serialization=True))")
    if name not in ALLOWED_FILES:
        raise InvalidInput(f"unexpected file {name!r}; an adapter holds only {', '.join(ALLOWED_FILES)}")
    return name


def _member_name(raw: str) -> str:
    path = PurePosixPath(raw.replace("\\", "/"))
    if path.is_absolute() or raw.startswith("/") or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise InvalidInput(f"archive member {raw!r} has an unsafe path (absolute or containing '..')")
    parts = [p for p in path.parts if p not in ("", ".")]
    if len(parts) > 2:
        raise InvalidInput(f"archive member {raw!r} is nested too deep; put the adapter files at the top level "
                           "or inside one folder")
    return "/".join(parts)


def extract_archive(archive: Path, store: BlobStore, *, max_bytes: int, max_members: int) -> dict[str, StagedFile]:
    staged: dict[str, StagedFile] = {}
    prefixes: set[str] = set()
    try:
        for raw_name, stream in _members(archive, max_members):
            name = _member_name(raw_name)
            if "/" in name:
                prefix, name = name.split("/", 1)
                prefixes.add(prefix)
            check_member_filename(name)
            if name in staged:
                raise InvalidInput(f"archive holds {name!r} twice")
            staged[name] = out = store.stage(max_bytes)
            while chunk := stream.read(CHUNK):
                out.write(chunk)
            out.finish()
        if len(prefixes) > 1:
            raise InvalidInput(f"archive holds several folders ({sorted(prefixes)}); upload one adapter at a time")
        return staged
    except BaseException:
        for s in staged.values():
            s.discard()
        raise


def _members(archive: Path, max_members: int) -> Iterator[tuple[str, BinaryIO]]:
    with open(archive, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        yield from _zip_members(archive, max_members)
    else:
        yield from _tar_members(archive, max_members)


def _tar_members(archive: Path, max_members: int):
    try:
        tar = tarfile.open(archive, mode="r:*")
    except tarfile.TarError:
        raise InvalidInput("archive is not a readable .tar, .tar.gz or .zip file") from None
    with tar:
        count = 0
        try:
            for member in tar:
                if member.isdir():
                    continue
                count += 1
                if count > max_members:
                    raise InvalidInput(f"archive has more than {max_members} files")
                if not member.isfile():
                    raise InvalidInput(f"archive member {member.name!r} is a link or special file; only regular "
                                       "files are accepted")
                yield member.name, tar.extractfile(member)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise InvalidInput(f"archive is corrupt or truncated: {e}") from None


def _zip_members(archive: Path, max_members: int):
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise InvalidInput("archive is not a readable .zip file") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > max_members:
            raise InvalidInput(f"archive has more than {max_members} files")
        for info in infos:
            mode = info.external_attr >> 16
            if mode and (mode & 0o170000) not in (0, 0o100000):
                raise InvalidInput(f"archive member {info.filename!r} is a link or special file")
            try:
                with zf.open(info) as stream:
                    yield info.filename, stream
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise InvalidInput(f"archive member {info.filename!r} is corrupt: {e}") from None
