"""Admin: create, list and revoke API keys. A project admin manages its own project's keys; the
LORIFOLD_ADMIN_KEY manages any project's."""
from fastapi import APIRouter, status

from app.deps import Admin, SessionDep
from app.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from registry import apikeys
from registry.errors import Forbidden

router = APIRouter(prefix="/v1/admin/keys", tags=["admin"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_key(body: ApiKeyCreate, principal: Admin, session: SessionDep) -> ApiKeyCreated:
    project = body.project or principal.project
    if project != principal.project and not principal.superuser:
        raise Forbidden("only the LORIFOLD_ADMIN_KEY can create keys for another project")
    row, key = apikeys.create_key(session, project=project, name=body.name, scopes=body.scopes)
    return ApiKeyCreated(**ApiKeyPublic.model_validate(row).model_dump(), key=key)


@router.get("")
def list_keys(principal: Admin, session: SessionDep) -> list[ApiKeyPublic]:
    project = None if principal.superuser else principal.project
    return [ApiKeyPublic.model_validate(r) for r in apikeys.list_keys(session, project=project)]


@router.delete("/{prefix}")
def revoke_key(prefix: str, principal: Admin, session: SessionDep) -> ApiKeyPublic:
    project = None if principal.superuser else principal.project
    return ApiKeyPublic.model_validate(apikeys.revoke_key(session, prefix=prefix, project=project))
