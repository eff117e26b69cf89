"""Resumable uploads: create (size + sha256), PUT byte ranges in any order, GET what arrived, complete."""
from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool

from app.deps import ServicesDep, SessionDep, Writer
from app.schemas import UploadCreate, UploadPublic
from registry import uploads

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create(body: UploadCreate, principal: Writer, session: SessionDep, services: ServicesDep) -> UploadPublic:
    uploads.expire_uploads(session, services.store)
    row = uploads.create_upload(session, services.store, project=principal.project, filename=body.filename,
                                size=body.size, sha256=body.sha256, max_bytes=services.settings.max_upload_bytes,
                                ttl_s=services.settings.upload_session_ttl_s)
    return UploadPublic.model_validate(row)


@router.put("/{upload_id}")
async def put_range(upload_id: str, request: Request, principal: Writer, services: ServicesDep) -> UploadPublic:
    """Body: the bytes of `Content-Range: bytes <first>-<last>/<size>`. Re-sending a range is harmless;
    a range only counts as received once its whole body arrived and was fsynced."""
    with services.session_factory() as session:
        row = uploads.get_upload(session, project=principal.project, upload_id=upload_id)
        start, end = uploads.parse_content_range(request.headers.get("content-range"), row.size)
    writer = await run_in_threadpool(uploads.RangeWriter, services.store, upload_id=upload_id, start=start, end=end)
    try:
        with services.session_factory() as session:  # read after taking the lock: see RangeWriter
            uploads.check_writable(uploads.get_upload(session, project=principal.project, upload_id=upload_id))
        async for chunk in request.stream():
            writer.write(chunk)
        await run_in_threadpool(writer.finish)
        with services.session_factory() as session:
            row = uploads.record_range(session, project=principal.project, upload_id=upload_id, start=start, end=end)
            session.commit()
            return UploadPublic.model_validate(row)
    finally:
        writer.release()


@router.get("/{upload_id}")
def get(upload_id: str, principal: Writer, session: SessionDep) -> UploadPublic:
    return UploadPublic.model_validate(uploads.get_upload(session, project=principal.project, upload_id=upload_id))


@router.post("/{upload_id}/complete")
def complete(upload_id: str, principal: Writer, services: ServicesDep) -> UploadPublic:
    """Verifies the sha256 of the whole file; only then can the upload be used."""
    row = uploads.complete_upload(services.session_factory, services.store, project=principal.project,
                                  upload_id=upload_id)
    return UploadPublic.model_validate(row)


@router.delete("/{upload_id}", status_code=status.HTTP_204_NO_CONTENT)
def abort(upload_id: str, principal: Writer, session: SessionDep, services: ServicesDep) -> None:
    uploads.delete_upload(session, services.store, project=principal.project, upload_id=upload_id)
