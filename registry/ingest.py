"""Turn staged files into an immutable adapter version: validate, then one transaction writes the rows,
bumps blob refcounts and promotes the files. Used by uploads, training and merge results alike.

Order matters for "nothing left behind": validation happens before any row exists; blob rows are
written before files are promoted; if the transaction fails, files promoted by it whose blob rows did
not exist before are removed again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from adapterio.adapter_check import AdapterFormatError, inspect_adapter
from adapterio.peft_format import REQUIRED_FILES
from registry import blobs
from registry.blobstore import BlobStore, StagedFile
from registry.errors import Conflict, InvalidInput
from registry.models import Adapter, AdapterFile, AdapterVersion, Blob, LineageEdge
from registry.base_models import get_base_model
from registry.names import check_name, check_tags_and_meta



@dataclass
class NewVersion:
    project: str
    name: str
    base_model: str
    tags: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    recipe: dict | None = None
    metrics: dict | None = None
    parents: list[tuple[int, str]] = field(default_factory=list)  # (parent version id, role)


def manifest_sha256(files: dict[str, str]) -> str:
    """sha256 of the canonical {filename: sha256} JSON: the identity of a version's content."""
    return hashlib.sha256(json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()).hexdigest()


InTransaction = Callable[[Session, int, int], None]


def ingest_adapter(session_factory: sessionmaker[Session], store: BlobStore, new: NewVersion,
                   staged: dict[str, StagedFile], in_transaction: InTransaction | None = None) -> tuple[int, bool]:
    """Returns (version id, created). Always consumes `staged` (promoted or discarded).

    `in_transaction(session, version_id, version_number)` runs inside the transaction that stores the
    version, e.g. to mark the job that produced it succeeded in the same commit.
    """
    folder = store.temp_dir() / f"adapter-{uuid.uuid4().hex}"
    folder.mkdir()
    try:
        check_name(new.name, "adapter name")
        check_tags_and_meta(new.tags, new.meta)
        missing = [f for f in REQUIRED_FILES if f not in staged]
        if missing:
            raise InvalidInput(f"missing {', '.join(missing)}; an adapter needs {' and '.join(REQUIRED_FILES)}")
        for filename, s in staged.items():  # give files their names so the validator sees a PEFT folder
            os.replace(s.path, folder / filename)
            s.path = folder / filename
        with session_factory() as session:
            base = get_base_model(session, project=new.project, name=new.base_model)
            shapes = base.module_shapes
        try:
            summary = inspect_adapter(folder, shapes)
        except AdapterFormatError as e:
            raise InvalidInput(str(e)) from None
        shas = {name: s.sha256 for name, s in staged.items()}
        for attempt in range(3):
            try:
                return _write_version(session_factory, store, new, staged, shas, summary, in_transaction)
            except IntegrityError as e:  # two writers took the same version number (PostgreSQL); retry
                if attempt == 2:
                    raise Conflict(f"adapter {new.name!r} is being written concurrently; retry") from e
        raise AssertionError("unreachable")
    finally:
        for s in staged.values():
            s.discard()  # no-op for promoted files (their staged path no longer exists)
        shutil.rmtree(folder, ignore_errors=True)


def _write_version(session_factory, store, new: NewVersion, staged, shas, summary, in_transaction) -> tuple[int, bool]:
    manifest = manifest_sha256(shas)
    promoted_new: list[str] = []
    with session_factory() as session:
        try:
            base = get_base_model(session, project=new.project, name=new.base_model)
            adapter = session.scalar(select(Adapter).where(Adapter.project == new.project, Adapter.name == new.name))
            if adapter is None:
                adapter = Adapter(project=new.project, name=new.name, base_model_id=base.id)
                session.add(adapter)
                session.flush()
            elif adapter.base_model_id != base.id:
                raise Conflict(f"adapter {new.name!r} belongs to base model {adapter.base_model.name!r}, "
                               f"not {new.base_model!r}; pick another name")
            existing = session.scalar(select(AdapterVersion).where(
                AdapterVersion.adapter_id == adapter.id, AdapterVersion.manifest_sha256 == manifest))
            if existing is not None:
                if in_transaction is not None:
                    in_transaction(session, existing.id, existing.version)
                session.commit()
                return existing.id, False
            number = (session.scalar(select(func.max(AdapterVersion.version))
                                     .where(AdapterVersion.adapter_id == adapter.id)) or 0) + 1
            version = AdapterVersion(
                adapter_id=adapter.id, version=number, kind=summary.kind, rank=summary.rank,
                rank_pattern=summary.rank_pattern, alpha=summary.alpha, target_modules=summary.target_modules,
                sparsity=summary.sparsity, a_seed=summary.a_seed, manifest_sha256=manifest,
                size_bytes=sum(s.size for s in staged.values()), tags=list(new.tags), meta=dict(new.meta),
                config=summary.config, recipe=new.recipe, metrics=new.metrics)
            known = set(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(list(shas.values())))))
            for n, s in staged.items():  # blob rows first: file rows reference them
                blobs.add_ref(session, sha256=shas[n], size=s.size)
            version.files = [AdapterFile(filename=n, sha256=shas[n], size=s.size) for n, s in staged.items()]
            session.add(version)
            session.flush()
            for parent_id, role in new.parents:
                session.add(LineageEdge(parent_id=parent_id, child_id=version.id, role=role))
            for n, s in staged.items():
                if shas[n] not in known and not store.exists(shas[n]):
                    promoted_new.append(shas[n])
                store.promote(s, shas[n])
            if in_transaction is not None:
                in_transaction(session, version.id, version.version)
            session.commit()
            return version.id, True
        except BaseException:
            session.rollback()
            for sha in promoted_new:
                store.delete(sha)
            raise
