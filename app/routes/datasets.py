from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from app.deps import Reader, ServicesDep, SessionDep, Writer
from app.file_responses import blob_response, not_modified
from app.forms import required_field, upload_ids
from app.multipart_stream import parse_multipart
from app.schemas import DatasetPublic
from registry import datasets, uploads
from registry.errors import InvalidInput
from registry.models import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic)
async def upload(request: Request, principal: Writer, services: ServicesDep, response: Response):
    """multipart: `name` and a JSONL `file` (or `upload_ids` with one completed upload)."""
    form = await parse_multipart(request, services.store, file_fields={"file"},
                                 max_bytes=services.settings.max_dataset_bytes)
    try:
        name = required_field(form, "name")
        files, ids = form.files.get("file", []), upload_ids(form)
        if len(files) + len(ids) != 1:
            raise InvalidInput("send exactly one JSONL `file` (or one completed upload in `upload_ids`)")
        if ids:
            with services.session_factory() as session:
                staged = next(iter(uploads.stage_completed(session, services.store, project=principal.project,
                                                           upload_ids=ids).values()))
        else:
            staged = files[0][1]
    except BaseException:
        form.discard()
        raise
    dataset_id, created = await run_in_threadpool(
        datasets.ingest_dataset, services.session_factory, services.store, project=principal.project, name=name,
        staged=staged, max_bytes=services.settings.max_dataset_bytes)
    with services.session_factory() as session:
        if ids:
            uploads.delete_uploads(session, services.store, project=principal.project, upload_ids=ids)
            session.commit()
        if not created:
            response.status_code = status.HTTP_200_OK
        return DatasetPublic.model_validate(session.get_one(Dataset, dataset_id))


@router.get("")
def list_all(principal: Reader, session: SessionDep) -> list[DatasetPublic]:
    return [DatasetPublic.model_validate(d) for d in datasets.list_datasets(session, project=principal.project)]


@router.get("/{name}")
def get_one(name: str, principal: Reader, session: SessionDep) -> DatasetPublic:
    return DatasetPublic.model_validate(datasets.get_dataset(session, project=principal.project, name=name))


@router.get("/{name}/content")
def download(name: str, request: Request, principal: Reader, session: SessionDep, services: ServicesDep) -> Response:
    row = datasets.get_dataset(session, project=principal.project, name=name)
    etag = f'"{row.sha256}"'
    if cached := not_modified(request, etag):
        return cached
    return blob_response(services.store.local_path(row.sha256), filename=f"{name}.jsonl", etag=etag,
                         media_type="application/jsonl")
