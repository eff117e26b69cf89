"""SQLAlchemy 2 models. Alembic migrations (migrations/versions) are the only way the schema is made;
tests check that these models and the migrations agree.

Every user-visible resource carries `project`: API keys are bound to one, and a lookup from another
project answers 404 as if the row did not exist.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, MetaData, String,
                        Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones in the session's zone."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict: JSON, list: JSON, datetime: DateTime(timezone=True)}


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)  # public part, shown in listings
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class Blob(Base):
    """One content-addressed file in the blob store; refcount counts the rows that point at it."""
    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    refcount: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BaseModel(Base):
    __tablename__ = "base_models"
    __table_args__ = (UniqueConstraint("project", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    local_path: Mapped[str] = mapped_column(Text)
    architecture: Mapped[str] = mapped_column(String(128))
    revision: Mapped[str] = mapped_column(String(64))  # sha256 over config + weight headers
    hidden_size: Mapped[int | None] = mapped_column(Integer)
    module_shapes: Mapped[dict] = mapped_column()  # {"model.layers.0.mlp.up_proj": [out, in], ...}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Adapter(Base):
    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("project", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    base_model: Mapped[BaseModel] = relationship(lazy="joined")


class AdapterVersion(Base):
    """Immutable once created; only status and aliases pointing at it change."""
    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("adapter_id", "version"), UniqueConstraint("adapter_id", "manifest_sha256"))
    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # lora | lori_d | lori_s | merged
    rank: Mapped[int] = mapped_column(Integer)
    rank_pattern: Mapped[dict] = mapped_column()  # per-module ranks that differ from `rank`
    alpha: Mapped[float] = mapped_column(Float)
    target_modules: Mapped[list] = mapped_column()
    sparsity: Mapped[float | None] = mapped_column(Float)
    a_seed: Mapped[int | None] = mapped_column(BigInteger)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    tags: Mapped[list] = mapped_column()
    meta: Mapped[dict] = mapped_column("metadata")
    config: Mapped[dict] = mapped_column()  # adapter_config.json as uploaded, unknown fields kept
    recipe: Mapped[dict | None] = mapped_column()  # training spec or merge recipe that made it
    metrics: Mapped[dict | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="ready")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    adapter: Mapped[Adapter] = relationship(lazy="joined")
    files: Mapped[list["AdapterFile"]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="AdapterFile.filename")


class AdapterFile(Base):
    __tablename__ = "adapter_files"
    __table_args__ = (UniqueConstraint("version_id", "filename"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("adapter_id", "alias"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class LineageEdge(Base):
    """parent -> child with a role: merged-from, continued-from, mask-from."""
    __tablename__ = "lineage_edges"
    __table_args__ = (UniqueConstraint("parent_id", "child_id", "role"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), index=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(32))


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    format: Mapped[str] = mapped_column(String(32))  # prompt_completion | messages
    row_count: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UploadSession(Base):
    """A resumable upload: byte ranges land in a part file until `complete` verifies the sha256."""
    __tablename__ = "upload_sessions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    received: Mapped[list] = mapped_column()  # merged [start, end) ranges
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | complete
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


Index("ix_adapter_versions_kind", AdapterVersion.kind)


class Job(Base):
    """A job is a data row; the worker claims it, heartbeats while it runs, and writes the result."""
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("project", "idempotency_key"), Index("ix_jobs_status_created", "status", "created_at"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict] = mapped_column()  # the validated request, as submitted
    inputs: Mapped[dict] = mapped_column()  # what the spec resolved to at submission (ids, shas, seeds)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|succeeded|failed|cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    gpus: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # a worker claims jobs that fit
    worker_id: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[dict | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class JobEvent(Base):
    """Progress (step, loss, lr, tokens/s, ETA), log lines and state changes; `id` orders them (?after=)."""
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(16))  # progress | log | status | checkpoint
    data: Mapped[dict] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OrthogonalAllocation(Base):
    """Rows [offset, offset + rank) of a base model's orthogonal A basis, given to one training job.

    The basis is regenerated from (basis_seed, module name); disjoint row ranges make the adapters'
    A row spaces exactly orthogonal. Rows are never reused, so a restart cannot hand them out twice.
    """
    __tablename__ = "orthogonal_allocations"
    __table_args__ = (UniqueConstraint("base_model_id", "offset"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="CASCADE"), index=True)
    basis_seed: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
