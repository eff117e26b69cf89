"""Training datasets: JSONL of {"prompt","completion"} or {"messages":[...]}, validated line by line."""
from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry import blobs
from registry.blobstore import BlobStore, StagedFile
from registry.errors import Conflict, InvalidInput, NotFound, TooLarge
from registry.models import Dataset
from registry.names import check_name

ROLES = ("system", "user", "assistant", "tool")
MAX_LINE_BYTES = 4 * 1024 * 1024


def _row_format(row, lineno: int) -> str:
    if not isinstance(row, dict):
        raise InvalidInput(f"line {lineno}: each line must be a JSON object")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise InvalidInput(f"line {lineno}: 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise InvalidInput(f"line {lineno}: messages[{i}] needs 'role' (one of {', '.join(ROLES)}) and "
                                   "string 'content'")
        if not any(m["role"] == "assistant" for m in msgs):
            raise InvalidInput(f"line {lineno}: no assistant message, so there is nothing to learn from")
        return "messages"
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return "prompt_completion"
    raise InvalidInput(f"line {lineno}: expected {{\"prompt\": str, \"completion\": str}} or "
                       f"{{\"messages\": [...]}}, got keys {sorted(row)}")


def validate_jsonl(path: Path) -> tuple[str, int]:
    """Returns (format, row count). Every line must parse and all lines must share one format."""
    fmt, count = None, 0
    with open(path, "rb") as f:
        # readline with a bound: one huge "line" is refused after MAX_LINE_BYTES, not read whole into memory
        for lineno, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(line) > MAX_LINE_BYTES:
                raise InvalidInput(f"line {lineno} is longer than {MAX_LINE_BYTES} bytes")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InvalidInput(f"line {lineno} is not valid JSON: {e}") from None
            row_fmt = _row_format(row, lineno)
            if fmt is None:
                fmt = row_fmt
            elif row_fmt != fmt:
                raise InvalidInput(f"line {lineno} is {row_fmt} but earlier lines are {fmt}; use one format per file")
            count += 1
    if not count:
        raise InvalidInput("dataset has no rows")
    return fmt, count


def ingest_dataset(session_factory: sessionmaker[Session], store: BlobStore, *, project: str, name: str,
                   staged: StagedFile, max_bytes: int) -> tuple[int, bool]:
    """Returns (dataset id, created). Same name and same bytes again is idempotent; other bytes are 409.
    max_bytes holds whichever way the file arrived (a multipart body or a completed resumable upload)."""
    try:
        check_name(name, "dataset name")
        if staged.size > max_bytes:
            raise TooLarge(f"dataset is {staged.size} bytes, over the {max_bytes}-byte dataset limit")
        fmt, count = validate_jsonl(staged.path)
        sha = staged.sha256
        with session_factory() as session:
            existing = session.scalar(select(Dataset).where(Dataset.project == project, Dataset.name == name))
            if existing is not None:
                if existing.sha256 == sha:
                    return existing.id, False
                raise Conflict(f"dataset {name!r} already exists with other content; datasets are immutable, "
                               "upload under a new name")
            blobs.add_ref(session, sha256=sha, size=staged.size)  # blob row first: the dataset row references it
            row = Dataset(project=project, name=name, format=fmt, row_count=count, sha256=sha, size=staged.size)
            session.add(row)
            session.flush()
            fresh = not store.exists(sha)
            store.promote(staged, sha)
            try:
                session.commit()
            except BaseException:
                if fresh:
                    store.delete(sha)
                raise
            return row.id, True
    finally:
        staged.discard()


def get_dataset(session: Session, *, project: str, name: str) -> Dataset:
    row = session.scalar(select(Dataset).where(Dataset.project == project, Dataset.name == name))
    if row is None:
        raise NotFound(f"dataset {name!r} not found; upload it with POST /v1/datasets")
    return row


def list_datasets(session: Session, *, project: str) -> list[Dataset]:
    return list(session.scalars(select(Dataset).where(Dataset.project == project).order_by(Dataset.name)))
