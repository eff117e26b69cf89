"""Reading and changing adapters after they exist: lookups, listing, aliases, lineage, deletion."""
from __future__ import annotations

import base64
import json

from sqlalchemy import false, func, or_, select
from sqlalchemy.orm import Session

from registry import blobs
from registry.errors import Conflict, InvalidInput, NotFound
from registry.models import Adapter, AdapterVersion, Alias, BaseModel, LineageEdge, utcnow
from registry.names import check_alias

LINEAGE_ROLES = ("merged-from", "continued-from", "mask-from")


def get_adapter(session: Session, *, project: str, name: str) -> Adapter:
    row = session.scalar(select(Adapter).where(Adapter.project == project, Adapter.name == name))
    if row is None:
        raise NotFound(f"adapter {name!r} not found")
    return row


def encode_cursor(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def decode_cursor(cursor: str | None, key: str, kind: type = int):
    """The row id (an int, or a str for kind=str) a next_cursor (encode_cursor({key: id})) points at; None
    for the first page."""
    if not cursor:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))[key]
    except Exception:
        value = None
    if type(value) is not kind or (kind is int and not 0 <= value < 2**63) or (kind is str and len(value) > 64):
        raise InvalidInput("cursor is not valid; pass the next_cursor value of the previous page")
    return value


def list_adapters(session: Session, *, project: str, base_model: str | None = None, kind: str | None = None,
                  tag: str | None = None, prefix: str | None = None, cursor: str | None = None,
                  limit: int = 50) -> tuple[list[Adapter], str | None]:
    """Adapters ordered by id; filters on kind/tag match any of their versions. Keyset pagination."""
    stmt = select(Adapter).where(Adapter.project == project).order_by(Adapter.id).limit(limit + 1)
    after = decode_cursor(cursor, "after_id")
    if after is not None:
        stmt = stmt.where(Adapter.id > after)
    if base_model:
        stmt = stmt.join(BaseModel, BaseModel.id == Adapter.base_model_id).where(BaseModel.name == base_model)
    if prefix:
        stmt = stmt.where(Adapter.name.startswith(prefix, autoescape=True))
    if kind or tag:
        versions = (select(AdapterVersion.adapter_id).join(Adapter, Adapter.id == AdapterVersion.adapter_id)
                    .where(Adapter.project == project))
        if kind:
            versions = versions.where(AdapterVersion.kind == kind)
        rows = session.execute(versions.add_columns(AdapterVersion.tags)).all()
        ids = {r[0] for r in rows if tag is None or tag in (r[1] or [])}
        stmt = stmt.where(Adapter.id.in_(ids))
    rows = list(session.scalars(stmt).unique())
    next_cursor = encode_cursor({"after_id": rows[limit - 1].id}) if len(rows) > limit else None
    return rows[:limit], next_cursor


def list_versions(session: Session, *, adapter: Adapter) -> list[AdapterVersion]:
    return list(session.scalars(select(AdapterVersion).where(AdapterVersion.adapter_id == adapter.id)
                                .order_by(AdapterVersion.version)))


def aliases_of(session: Session, *, adapter: Adapter) -> dict[str, int]:
    rows = session.execute(select(Alias.alias, AdapterVersion.version)
                           .join(AdapterVersion, AdapterVersion.id == Alias.version_id)
                           .where(Alias.adapter_id == adapter.id)).all()
    return {alias: version for alias, version in rows}


def resolve_version(session: Session, *, project: str, name: str, ref: str) -> AdapterVersion:
    """ref is a version number, an alias, or 'latest'."""
    adapter = get_adapter(session, project=project, name=name)
    stmt = select(AdapterVersion).where(AdapterVersion.adapter_id == adapter.id)
    if ref.isascii() and ref.isdigit():  # ('²'.isdigit() is True); a number too big for a version finds none
        stmt = stmt.where(AdapterVersion.version == int(ref)) if len(ref) <= 9 else stmt.where(false())
    elif ref == "latest":
        stmt = stmt.order_by(AdapterVersion.version.desc()).limit(1)
    else:
        stmt = stmt.join(Alias, Alias.version_id == AdapterVersion.id).where(Alias.alias == ref)
    row = session.scalar(stmt)
    if row is None:
        raise NotFound(f"adapter {name!r} has no version or alias {ref!r}")
    return row


def get_version_by_id(session: Session, *, version_id: int) -> AdapterVersion:
    return session.get_one(AdapterVersion, version_id)


def set_alias(session: Session, *, project: str, name: str, alias: str, ref: str) -> AdapterVersion:
    """Point alias at a version. One row per (adapter, alias) updated in place: moves are atomic."""
    check_alias(alias)
    version = resolve_version(session, project=project, name=name, ref=ref)
    row = session.scalar(select(Alias).where(Alias.adapter_id == version.adapter_id, Alias.alias == alias)
                         .with_for_update())
    if row is None:
        session.add(Alias(adapter_id=version.adapter_id, alias=alias, version_id=version.id))
    else:
        row.version_id, row.updated_at = version.id, utcnow()
    session.flush()
    return version


def delete_alias(session: Session, *, project: str, name: str, alias: str) -> None:
    adapter = get_adapter(session, project=project, name=name)
    row = session.scalar(select(Alias).where(Alias.adapter_id == adapter.id, Alias.alias == alias))
    if row is None:
        raise NotFound(f"adapter {name!r} has no alias {alias!r}")
    session.delete(row)


def lineage(session: Session, *, version: AdapterVersion) -> dict[str, list[tuple[AdapterVersion, str]]]:
    """Direct parents and children of a version, with the role of each edge."""
    parents = session.execute(select(AdapterVersion, LineageEdge.role)
                              .join(LineageEdge, LineageEdge.parent_id == AdapterVersion.id)
                              .where(LineageEdge.child_id == version.id)).all()
    children = session.execute(select(AdapterVersion, LineageEdge.role)
                               .join(LineageEdge, LineageEdge.child_id == AdapterVersion.id)
                               .where(LineageEdge.parent_id == version.id)).all()
    return {"parents": [tuple(r) for r in parents], "children": [tuple(r) for r in children]}


def delete_version(session: Session, *, version: AdapterVersion, force: bool) -> list[str]:
    """Delete one version; returns the blob shas freed (delete their files after commit).

    While other versions descend from it the answer is 409 unless forced; forcing drops the edges,
    the descendants themselves stay (they are complete adapters in their own right).
    """
    n_children = session.scalar(select(func.count()).select_from(LineageEdge)
                                .where(LineageEdge.parent_id == version.id))
    if n_children and not force:
        raise Conflict(f"{n_children} other version(s) descend from this one; pass force=true to delete it anyway")
    session.execute(LineageEdge.__table__.delete().where(
        or_(LineageEdge.parent_id == version.id, LineageEdge.child_id == version.id)))
    session.execute(Alias.__table__.delete().where(Alias.version_id == version.id))
    shas = [f.sha256 for f in version.files]
    adapter_id = version.adapter_id
    session.delete(version)
    session.flush()  # file rows go first: they reference the blob rows
    freed = [sha for sha in shas if blobs.drop_ref(session, sha256=sha)]
    remaining = session.scalar(select(func.count()).select_from(AdapterVersion)
                               .where(AdapterVersion.adapter_id == adapter_id))
    if not remaining:
        session.delete(session.get_one(Adapter, adapter_id))
    return freed
