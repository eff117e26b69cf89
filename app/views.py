"""Rows -> public schemas (the joins a response needs, in one place)."""
from __future__ import annotations

from sqlalchemy.orm import Session

from app.schemas import AdapterFilePublic, AdapterPublic, AdapterVersionPublic
from registry import adapters
from registry.models import Adapter, AdapterVersion


def version_public(session: Session, version: AdapterVersion, aliases: dict[str, int] | None = None) -> AdapterVersionPublic:
    if aliases is None:
        aliases = adapters.aliases_of(session, adapter=version.adapter)
    return AdapterVersionPublic(
        name=version.adapter.name, version=version.version, kind=version.kind,
        base_model=version.adapter.base_model.name, rank=version.rank, rank_pattern=version.rank_pattern,
        alpha=version.alpha, target_modules=version.target_modules, sparsity=version.sparsity,
        a_seed=version.a_seed, manifest_sha256=version.manifest_sha256, size_bytes=version.size_bytes,
        tags=version.tags, metadata=version.meta, config=version.config, recipe=version.recipe,
        metrics=version.metrics, status=version.status,
        aliases=sorted(a for a, v in aliases.items() if v == version.version),
        files=[AdapterFilePublic.model_validate(f) for f in version.files], created_at=version.created_at)


def adapter_public(session: Session, adapter: Adapter, *, with_versions: bool) -> AdapterPublic:
    versions = adapters.list_versions(session, adapter=adapter)
    aliases = adapters.aliases_of(session, adapter=adapter)
    return AdapterPublic(
        name=adapter.name, base_model=adapter.base_model.name, created_at=adapter.created_at,
        latest_version=versions[-1].version if versions else None, aliases=aliases,
        versions=[version_public(session, v, aliases) for v in versions] if with_versions else None)
