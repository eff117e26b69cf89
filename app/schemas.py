"""Request and response bodies (XCreate / XPublic)."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    scopes: list[str] = Field(default_factory=lambda: ["read"])
    project: str | None = None  # only the LORIFOLD_ADMIN_KEY may name another project


class ApiKeyPublic(Public):
    prefix: str
    name: str
    project: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str  # shown once


class BaseModelCreate(BaseModel):
    name: str
    local_path: str = Field(description="a transformers checkpoint folder on the server")


class BaseModelPublic(Public):
    name: str
    local_path: str
    architecture: str
    revision: str
    hidden_size: int | None
    module_shapes: dict[str, list[int]]
    created_at: datetime


class AdapterFilePublic(Public):
    filename: str
    sha256: str
    size: int


class AdapterVersionPublic(BaseModel):
    name: str
    version: int
    kind: str
    base_model: str
    rank: int
    rank_pattern: dict[str, int]
    alpha: float
    target_modules: list[str]
    sparsity: float | None
    a_seed: int | None
    manifest_sha256: str
    size_bytes: int
    tags: list[str]
    metadata: dict
    config: dict
    recipe: dict | None
    metrics: dict | None
    status: str
    aliases: list[str]
    files: list[AdapterFilePublic]
    created_at: datetime


class AdapterPublic(BaseModel):
    name: str
    base_model: str
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int]
    versions: list[AdapterVersionPublic] | None = None


class AdapterList(BaseModel):
    data: list[AdapterPublic]
    next_cursor: str | None


class AliasUpdate(BaseModel):
    version: str = Field(description="version number or another alias")


class LineageEdgePublic(BaseModel):
    name: str
    version: int
    role: str


class LineagePublic(BaseModel):
    name: str
    version: int
    parents: list[LineageEdgePublic]
    children: list[LineageEdgePublic]


class DatasetPublic(Public):
    name: str
    format: str
    row_count: int
    sha256: str
    size: int
    created_at: datetime


class UploadCreate(BaseModel):
    filename: str
    size: int = Field(gt=0)
    sha256: str


class UploadPublic(Public):
    id: str
    filename: str
    size: int
    sha256: str
    received: list[list[int]]
    status: str
    expires_at: datetime


class JobPublic(Public):
    id: str
    kind: str
    status: str
    spec: dict
    inputs: dict
    attempts: int
    max_attempts: int
    worker_id: str | None
    cancel_requested: bool
    result: dict | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class JobList(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None


class JobEventPublic(Public):
    id: int
    type: str
    data: dict
    created_at: datetime
