from fastapi import APIRouter, Response, status

from app.deps import Admin, Reader, SessionDep
from app.schemas import BaseModelCreate, BaseModelPublic
from registry import base_models

router = APIRouter(prefix="/v1/base-models", tags=["base models"])


@router.post("", status_code=status.HTTP_201_CREATED)
def register(body: BaseModelCreate, principal: Admin, session: SessionDep, response: Response) -> BaseModelPublic:
    """Register a checkpoint folder on the server (admin: it names a server path)."""
    row, created = base_models.register_base_model(session, project=principal.project, name=body.name,
                                                   local_path=body.local_path)
    if not created:
        response.status_code = status.HTTP_200_OK
    return BaseModelPublic.model_validate(row)


@router.get("")
def list_all(principal: Reader, session: SessionDep) -> list[BaseModelPublic]:
    return [BaseModelPublic.model_validate(r) for r in base_models.list_base_models(session, project=principal.project)]


@router.get("/{name}")
def get_one(name: str, principal: Reader, session: SessionDep) -> BaseModelPublic:
    return BaseModelPublic.model_validate(base_models.get_base_model(session, project=principal.project, name=name))
