"""OpenAI-fine-tuning-style jobs: submit (idempotent), list, get, cancel, and follow events."""
import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from app.deps import Reader, ServicesDep, SessionDep, Writer
from app.file_responses import tar_response
from app.schemas import JobEventPublic, JobList, JobPublic
from app.job_submission import create_job
from jobs.specs import JobSpec
from registry import jobs
from registry.errors import Conflict

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_201_CREATED)
def submit(spec: JobSpec, principal: Writer, session: SessionDep, services: ServicesDep, response: Response,
           idempotency_key: Annotated[str | None, Header()] = None) -> JobPublic:
    """Same Idempotency-Key and body again: 200 with the same job; same key, other body: 409."""
    job, created = create_job(session, services, principal, spec, idempotency_key)
    if not created:
        response.status_code = status.HTTP_200_OK
    return JobPublic.model_validate(job)


@router.get("")
def list_jobs(principal: Reader, session: SessionDep, status: str | None = None, kind: str | None = None,
              cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> JobList:
    rows, next_cursor = jobs.list_jobs(session, project=principal.project, status=status, kind=kind, cursor=cursor,
                                       limit=limit)
    return JobList(data=[JobPublic.model_validate(j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}")
def get_job(job_id: str, principal: Reader, session: SessionDep) -> JobPublic:
    return JobPublic.model_validate(jobs.get_job(session, project=principal.project, job_id=job_id))


@router.get("/{job_id}/output")
def download_output(job_id: str, principal: Reader, session: SessionDep, services: ServicesDep) -> Response:
    """What an export job produced (a full checkpoint), as a tar stream."""
    job = jobs.get_job(session, project=principal.project, job_id=job_id)
    out = services.store.job_dir(job.id) / "out"
    if job.status != "succeeded" or not out.is_dir():
        raise Conflict(f"job {job_id} has no downloadable output (kind {job.kind}, status {job.status})")
    files = [(p.name, p.stat().st_size, p) for p in sorted(out.iterdir()) if p.is_file()]
    return tar_response(job.id, files, etag=f'"{job.id}"')


@router.post("/{job_id}/cancel")
def cancel(job_id: str, principal: Writer, session: SessionDep) -> JobPublic:
    """A queued job is cancelled at once; a running one stops within seconds (between steps, else killed)."""
    return JobPublic.model_validate(jobs.cancel_job(session, project=principal.project, job_id=job_id))


@router.get("/{job_id}/events", response_model=list[JobEventPublic])
async def events(job_id: str, request: Request, principal: Reader, services: ServicesDep,
                 after: Annotated[int, Query(ge=0, lt=2**63)] = 0,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 500):
    """JSON list of events after `after`; with `Accept: text/event-stream`, a live stream that ends
    when the job finishes (each SSE `id` is the event id, so clients resume with ?after=)."""
    with services.session_factory() as session:
        jobs.get_job(session, project=principal.project, job_id=job_id)  # 404 for other projects
        if "text/event-stream" not in request.headers.get("accept", ""):
            return [JobEventPublic.model_validate(e) for e in jobs.list_events(session, job_id=job_id, after=after,
                                                                                limit=limit)]
    return StreamingResponse(_stream(services, job_id, after, request), media_type="text/event-stream",
                             headers={"cache-control": "no-cache"})


async def _stream(services, job_id: str, after: int, request: Request):
    while True:
        with services.session_factory() as session:
            batch = jobs.list_events(session, job_id=job_id, after=after)
            finished = jobs.get_job(session, project=None, job_id=job_id).status in jobs.FINISHED
        for event in batch:
            after = event.id
            payload = JobEventPublic.model_validate(event).model_dump_json()
            yield f"id: {event.id}\nevent: {event.type}\ndata: {payload}\n\n"
        if (finished and not batch) or await request.is_disconnected():
            return
        if not batch:
            await asyncio.sleep(0.5)
