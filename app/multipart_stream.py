"""Streaming multipart/form-data: file parts go straight into staged blob files (hashed as they are
written), small fields into memory. Starlette's own parser spools every file to a temporary file first
and the route then copies it again; this writes each byte once, which is where upload speed comes from.

File data is gathered into 8 MiB blocks and hashed + written on one background thread (hashlib and
file writes release the GIL), so receiving and parsing the next block overlaps with storing this one.
At most MAX_PENDING blocks are in flight: memory stays bounded whatever the file size.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from registry.blobstore import BlobStore, StagedFile
from registry.errors import InvalidInput, TooLarge

MAX_FIELD_BYTES = 256 * 1024
BLOCK_BYTES = 8 << 20
MAX_PENDING = 3


@dataclass
class ParsedForm:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[tuple[str, StagedFile]]] = field(default_factory=dict)  # field -> [(filename, staged)]

    def field(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else default

    def discard(self) -> None:
        for parts in self.files.values():
            for _, staged in parts:
                staged.discard()


class _Collector:
    def __init__(self, store: BlobStore, file_fields: set[str], max_file_bytes: int):
        self.store, self.file_fields, self.max_file_bytes = store, file_fields, max_file_bytes
        self.form = ParsedForm()
        self.ended = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._staged: StagedFile | None = None
        self._buffer = bytearray()
        self._block = bytearray()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorifold-upload")
        self.pending: list[Future] = []

    def callbacks(self):
        return {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data, "on_part_end": self._part_end,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished,
            "on_end": self._end,
        }

    def _end(self):
        self.ended = True  # the closing boundary arrived

    def _part_begin(self):
        self._headers, self._name, self._staged = {}, None, None
        self._buffer = bytearray()

    def _header_end(self):
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self):
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if b"filename" in options:
            if name not in self.file_fields:
                raise InvalidInput(f"unexpected file field {name!r}; expected one of {sorted(self.file_fields)}")
            filename = options[b"filename"].decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
            self._staged = self.store.stage(self.max_file_bytes)
            self.form.files.setdefault(name, []).append((filename, self._staged))

    def _part_data(self, data, start, end):
        if self._staged is not None:
            self._block.extend(memoryview(data)[start:end])
            if len(self._block) >= BLOCK_BYTES:
                self._flush_block()
        else:
            self._buffer.extend(data[start:end])
            if len(self._buffer) > MAX_FIELD_BYTES:
                raise InvalidInput(f"form field {self._name!r} is larger than {MAX_FIELD_BYTES} bytes")

    def _flush_block(self) -> None:
        block, self._block = bytes(self._block), bytearray()
        self.pending.append(self._writer.submit(self._staged.write, block))

    def _part_end(self):
        if self._staged is not None:
            self._flush_block()
            self.pending.append(self._writer.submit(self._staged.finish))
        else:
            try:
                value = self._buffer.decode()
            except UnicodeDecodeError:
                raise InvalidInput(f"form field {self._name!r} is not UTF-8 text") from None
            self.form.fields.setdefault(self._name or "", []).append(value)


async def parse_multipart(request: Request, store: BlobStore, *, file_fields: set[str], max_bytes: int) -> ParsedForm:
    """Parse the body; on any error every staged file is removed before the error propagates."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype == b"application/x-www-form-urlencoded":  # fields only (e.g. upload_ids=...)
        return await _parse_urlencoded(request)
    if ctype != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidInput("send multipart/form-data (e.g. curl -F name=... -F files=@adapter_config.json)")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise TooLarge(f"request body of {length} bytes is over the {max_bytes}-byte limit")
    collector = _Collector(store, file_fields, max_bytes)
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise TooLarge(f"request body is over the {max_bytes}-byte limit")
            parser.write(chunk)
            while len(collector.pending) > MAX_PENDING:  # back-pressure: wait for the writer thread
                await asyncio.wrap_future(collector.pending.pop(0))
        parser.finalize()
        if not collector.ended:  # python_multipart's finalize does not check this (yet)
            raise InvalidInput("multipart body ended before its closing boundary (a cut-off upload?); send it again")
        for future in collector.pending:
            await asyncio.wrap_future(future)
    except BaseException as e:
        collector._writer.shutdown(wait=True)  # no write may land after the files are discarded
        collector.form.discard()
        if isinstance(e, (InvalidInput, TooLarge)):
            raise
        if isinstance(e, Exception) and type(e).__module__.startswith("python_multipart"):
            raise InvalidInput(f"malformed multipart body: {e}") from None
        raise
    collector._writer.shutdown(wait=False)
    return collector.form


async def _parse_urlencoded(request: Request) -> ParsedForm:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_FIELD_BYTES:
            raise InvalidInput(f"form body is larger than {MAX_FIELD_BYTES} bytes; send files as multipart")
    form = ParsedForm()
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.fields.setdefault(key, []).append(value)
    return form
