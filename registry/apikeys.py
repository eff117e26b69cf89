"""API keys: 'lf_<prefix>_<secret>'. Only sha256(secret) is stored; keys are high-entropy, so a fast
hash is the right one (a slow KDF protects guessable passwords, not 256-bit random secrets)."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import InvalidInput, NotFound
from registry.models import ApiKey, utcnow
from registry.names import check_project

SCOPES = ("read", "write", "admin")


@dataclass(frozen=True)
class Principal:
    project: str
    scopes: frozenset[str]
    key_name: str
    superuser: bool = False  # LORIFOLD_ADMIN_KEY: may act on any project

    def can(self, scope: str) -> bool:
        # admin implies write implies read
        rank = {"read": 0, "write": 1, "admin": 2}
        return any(rank[s] >= rank[scope] for s in self.scopes)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, project: str, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Returns the row and the full key, which is shown once and never stored."""
    check_project(project)
    bad = set(scopes) - set(SCOPES)
    if not scopes or bad:
        raise InvalidInput(f"scopes must be a non-empty subset of {list(SCOPES)}; got {scopes}")
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    row = ApiKey(project=project, name=name[:128], prefix=prefix, secret_sha256=_hash(secret), scopes=sorted(set(scopes)))
    session.add(row)
    session.flush()
    return row, f"lf_{prefix}_{secret}"


def authenticate(session: Session, *, token: str) -> Principal | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "lf":
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.secret_sha256, _hash(parts[2])):
        return None
    return Principal(project=row.project, scopes=frozenset(row.scopes), key_name=row.name)


def list_keys(session: Session, *, project: str | None) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(ApiKey.id)
    if project is not None:
        stmt = stmt.where(ApiKey.project == project)
    return list(session.scalars(stmt))


def revoke_key(session: Session, *, prefix: str, project: str | None) -> ApiKey:
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or (project is not None and row.project != project):
        raise NotFound(f"no API key with prefix {prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
