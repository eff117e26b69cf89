"""Base models: a local transformers checkpoint folder and the shapes of every module an adapter may target."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapterio.checkpoint import CheckpointError, read_checkpoint
from registry.errors import Conflict, InvalidInput, NotFound
from registry.models import BaseModel
from registry.names import check_name


def register_base_model(session: Session, *, project: str, name: str, local_path: str) -> tuple[BaseModel, bool]:
    """Returns (row, created); the same checkpoint under the same name again is idempotent."""
    check_name(name, "base model name")
    path = Path(local_path).expanduser().resolve()
    try:
        info = read_checkpoint(path)
    except CheckpointError as e:
        raise InvalidInput(str(e)) from None
    if not info.module_shapes:
        raise InvalidInput(f"{path} has no 2-D weights an adapter could target")
    existing = session.scalar(select(BaseModel).where(BaseModel.project == project, BaseModel.name == name))
    if existing is not None:
        if existing.revision == info.revision and existing.local_path == str(path):
            return existing, False
        raise Conflict(f"base model {name!r} already exists with another checkpoint (revision {existing.revision[:12]})")
    row = BaseModel(project=project, name=name, local_path=str(path), architecture=info.architecture,
                    revision=info.revision, hidden_size=info.hidden_size, module_shapes=info.module_shapes)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"base model {name!r} already exists") from None
    return row, True


def get_base_model(session: Session, *, project: str, name: str) -> BaseModel:
    row = session.scalar(select(BaseModel).where(BaseModel.project == project, BaseModel.name == name))
    if row is None:
        raise NotFound(f"base model {name!r} not found; register it with POST /v1/base-models")
    return row


def list_base_models(session: Session, *, project: str) -> list[BaseModel]:
    return list(session.scalars(select(BaseModel).where(BaseModel.project == project).order_by(BaseModel.name)))
