"""FastAPI dependencies and their `XDep` aliases: services, a database session, the caller's identity."""
from __future__ import annotations

import hmac
from typing import Annotated, Iterator

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from app.services import Services
from registry import apikeys
from registry.apikeys import Principal
from registry.errors import Forbidden
from registry.names import check_project


class Unauthorized(Exception):
    pass


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    """One transaction per request: committed when the route returns, rolled back if it raises."""
    with services.session_factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# scope="function": commit when the route returns, before the response is sent, so a 201 means the row
# exists and a failed commit is the response (the default "request" scope commits after sending it).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_principal(services: ServicesDep, request: Request,
                  x_lorifold_project: Annotated[str | None, Header()] = None) -> Principal:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send 'Authorization: Bearer <api key>'")
    admin = services.settings.admin_key
    if admin and hmac.compare_digest(token.encode(), admin.encode()):
        project = check_project(x_lorifold_project or "default")
        return Principal(project=project, scopes=frozenset({"admin"}), key_name="LORIFOLD_ADMIN_KEY", superuser=True)
    with services.session_factory() as session:
        principal = apikeys.authenticate(session, token=token)
    if principal is None:
        raise Unauthorized("API key is unknown or revoked")
    return principal


def _scoped(scope: str):
    def dependency(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.can(scope):
            raise Forbidden(f"this API key has scopes {sorted(principal.scopes)}; this call needs '{scope}'")
        return principal
    return dependency


Reader = Annotated[Principal, Depends(_scoped("read"))]
Writer = Annotated[Principal, Depends(_scoped("write"))]
Admin = Annotated[Principal, Depends(_scoped("admin"))]
