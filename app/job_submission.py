"""Create a job row from a validated spec: idempotency, then resolve what the spec names (4xx now, not a
failed job later). Shared by POST /v1/jobs and the synchronous merge / interference endpoints."""
from __future__ import annotations

import asyncio
import hashlib
import json

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.services import Services
from jobs.specs import ExportSpec, InterferenceSpec, MergeSpec, TrainSpec
from registry import job_inputs, jobs
from registry.apikeys import Principal
from registry.models import Job


def _train_inputs(session: Session, project: str, job_id: str, spec: TrainSpec) -> dict:
    return job_inputs.resolve_train(
        session, project=project, job_id=job_id, method=spec.method, base_model=spec.base_model,
        dataset=spec.dataset, rank=spec.rank, target_modules=spec.target_modules, a_seed=spec.a_seed,
        a_init=spec.a_init, mask_from=(spec.mask_from.adapter, spec.mask_from.version) if spec.mask_from else None)


def _refs_inputs(refs):
    def resolve(session: Session, project: str, job_id: str, spec) -> dict:
        return job_inputs.resolve_merge(session, project=project, refs=[(r.adapter, r.version) for r in refs(spec)])
    return resolve


RESOLVERS = {
    "train": _train_inputs,
    "merge": _refs_inputs(lambda s: s.inputs),
    "interference": _refs_inputs(lambda s: s.inputs),
    "export": _refs_inputs(lambda s: [s.adapter]),
}


def create_job(session: Session, services: Services, principal: Principal,
               spec: TrainSpec | MergeSpec | InterferenceSpec | ExportSpec,
               idempotency_key: str | None) -> tuple[Job, bool]:
    body = spec.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    job, created = jobs.submit_job(session, project=principal.project, kind=spec.kind, spec=body,
                                   idempotency_key=idempotency_key, request_sha256=digest,
                                   max_attempts=services.settings.max_attempts, gpus=getattr(spec, "gpus", 1))
    if created:
        job.inputs = RESOLVERS[spec.kind](session, principal.project, job.id, spec)
        session.flush()
    return job, created


async def wait_for_job(services: Services, job_id: str, timeout_s: float) -> Job:
    """Poll until the job finishes or the timeout passes; returns the last state seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        job = await run_in_threadpool(_load, services, job_id)
        if job.status in jobs.FINISHED or loop.time() >= deadline:
            return job
        await asyncio.sleep(0.25)


def _load(services: Services, job_id: str) -> Job:
    with services.session_factory() as session:
        return jobs.get_job(session, project=None, job_id=job_id)
