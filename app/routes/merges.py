"""Synchronous conveniences over the job queue: small merges and interference reports answer in one
call (the work still runs in a worker; the API process never loads torch). If the worker is busy past
`wait_s`, the answer is 202 with the job to follow."""
import hashlib
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Query, status
from fastapi.responses import JSONResponse
from fastapi.concurrency import run_in_threadpool

from app.deps import Reader, ServicesDep, Writer
from app.job_submission import create_job, wait_for_job
from app.schemas import JobPublic
from app.views import version_public
from jobs.specs import AdapterRef, InterferenceSpec, MergeSpec
from registry import adapters, jobs
from registry.errors import InvalidInput, TooLarge

router = APIRouter(tags=["merges"])
SYNC_MERGE_MAX_BYTES = 2 * 1024**3


def _submit(services, principal, spec, key, *, cache: bool = False):
    """cache=True: `key` names a cached result, which a failed or cancelled job does not hold."""
    with services.session_factory() as session:
        if cache:
            jobs.forget_unsuccessful(session, project=principal.project, idempotency_key=key)
        job, _ = create_job(session, services, principal, spec, key)
        session.commit()
        return job


async def _answer(services, job, wait_s: float, success):
    job = await wait_for_job(services, job.id, wait_s)
    if job.status == "succeeded":
        return await run_in_threadpool(success, job)
    if job.status in ("failed", "cancelled"):
        return JSONResponse({"detail": f"job {job.id} {job.status}: {job.error}", "job": job.id}, status_code=422)
    return JSONResponse(JobPublic.model_validate(job).model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED)


@router.post("/v1/merges", status_code=status.HTTP_201_CREATED)
async def merge_now(spec: MergeSpec, principal: Writer, services: ServicesDep,
                    wait_s: Annotated[float, Query(ge=0, le=600)] = 120,
                    idempotency_key: Annotated[str | None, Header()] = None):
    """Merge and answer with the new version (201), or 202 with the job if it takes longer than wait_s."""
    def total_size():
        with services.session_factory() as session:
            return sum(adapters.resolve_version(session, project=principal.project, name=i.adapter,
                                                ref=i.version).size_bytes for i in spec.inputs)
    if await run_in_threadpool(total_size) > SYNC_MERGE_MAX_BYTES:
        raise TooLarge(f"inputs are over {SYNC_MERGE_MAX_BYTES} bytes; submit a merge job (POST /v1/jobs)")
    job = await run_in_threadpool(_submit, services, principal, spec, idempotency_key)

    def success(job):
        with services.session_factory() as session:
            version = adapters.resolve_version(session, project=principal.project, name=job.result["adapter"],
                                               ref=str(job.result["version"]))
            return JSONResponse({"job": job.id, "version": version_public(session, version).model_dump(mode="json")},
                                status_code=status.HTTP_201_CREATED)
    return await _answer(services, job, wait_s, success)


@router.get("/v1/adapters/interference")
async def interference(principal: Reader, services: ServicesDep,
                       versions: Annotated[str, Query(description="comma-separated name:version (or name:alias)")],
                       wait_s: Annotated[float, Query(ge=0, le=600)] = 120):
    """Cosine of dW_i and dW_j per module and overall, A-subspace overlap and LoRI mask overlap, computed
    in factored form. Reports are cached: the same versions answer from the first job."""
    wanted = []
    for item in versions.split(","):
        name, _, version = item.strip().partition(":")
        wanted.append((name, version or "latest"))
    if len(wanted) < 2:
        raise InvalidInput("give at least two versions, e.g. versions=math:1,code:production")

    def pin_versions():
        """Aliases and 'latest' resolve now, so the cache key is the exact versions compared (ids and content:
        SQLite may give a deleted version's id to a new one)."""
        with services.session_factory() as session:
            found = [adapters.resolve_version(session, project=principal.project, name=n, ref=r) for n, r in wanted]
        spec = InterferenceSpec(inputs=[AdapterRef(adapter=n, version=str(v.version)) for (n, _), v in zip(wanted, found)])
        pinned = ",".join(f"{v.id}:{v.manifest_sha256}" for v in found)
        return spec, "interference:" + hashlib.sha256(pinned.encode()).hexdigest()[:32]
    spec, key = await run_in_threadpool(pin_versions)
    job = await run_in_threadpool(partial(_submit, cache=True), services, principal, spec, key)
    return await _answer(services, job, wait_s, lambda job: JSONResponse({"job": job.id, **job.result}))
