"""The job queue: the one module that owns the SQL for jobs, their events and A allocations.

Claiming: PostgreSQL takes the oldest queued row with FOR UPDATE SKIP LOCKED, so concurrent workers
never block on or double-claim a row; SQLite transactions start with BEGIN IMMEDIATE (registry.db),
which serialises claimers. A running job whose heartbeat is older than the timeout is requeued (or
failed once it has used its attempts).
"""
from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from registry.adapters import decode_cursor, encode_cursor
from registry.errors import Conflict, InvalidInput, NotFound
from registry.models import BaseModel, Job, JobEvent, OrthogonalAllocation, utcnow

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")


def submit_job(session: Session, *, project: str, kind: str, spec: dict, idempotency_key: str | None,
               request_sha256: str, max_attempts: int, gpus: int = 1) -> tuple[Job, bool]:
    """Same Idempotency-Key and same body: the existing job. Same key, other body: 409."""
    if idempotency_key is not None:
        if not 0 < len(idempotency_key) <= 255:
            raise InvalidInput("Idempotency-Key must be 1-255 characters")
        existing = session.scalar(select(Job).where(Job.project == project, Job.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.request_sha256 != request_sha256:
                raise Conflict(f"Idempotency-Key {idempotency_key!r} was used for a different request (job "
                               f"{existing.id}); use a new key")
            return existing, False
    job = Job(id=f"job_{uuid.uuid4().hex}", project=project, kind=kind, spec=spec, inputs={}, status="queued",
              attempts=0, max_attempts=max_attempts, idempotency_key=idempotency_key,
              request_sha256=request_sha256, cancel_requested=False, gpus=gpus)
    session.add(job)
    session.flush()
    add_event(session, job_id=job.id, type="status", data={"status": "queued"})
    return job, True


def forget_unsuccessful(session: Session, *, project: str, idempotency_key: str) -> None:
    """For keys used as a result cache (not a client's Idempotency-Key): a job under the key that failed
    or was cancelled gives the key up, so the next request computes the result again."""
    job = session.scalar(select(Job).where(Job.project == project, Job.idempotency_key == idempotency_key,
                                           Job.status.in_(("failed", "cancelled"))).with_for_update())
    if job is not None:
        job.idempotency_key = None
        session.flush()


def get_job(session: Session, *, project: str | None, job_id: str, lock: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id)
    if project is not None:
        stmt = stmt.where(Job.project == project)
    job = session.scalar(stmt.with_for_update() if lock else stmt)
    if job is None:
        raise NotFound(f"job {job_id!r} not found")
    return job


def list_jobs(session: Session, *, project: str, status: str | None = None, kind: str | None = None,
              cursor: str | None = None, limit: int = 50) -> tuple[list[Job], str | None]:
    """Newest first; keyset pagination on (created_at, id)."""
    stmt = select(Job).where(Job.project == project).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if status:
        if status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}")
        stmt = stmt.where(Job.status == status)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    after = decode_cursor(cursor, "before_id", str)
    if after:
        pivot = session.get(Job, after)
        if pivot is not None:
            stmt = stmt.where((Job.created_at < pivot.created_at) |
                              ((Job.created_at == pivot.created_at) & (Job.id < pivot.id)))
    rows = list(session.scalars(stmt))
    next_cursor = encode_cursor({"before_id": rows[limit - 1].id}) if len(rows) > limit else None
    return rows[:limit], next_cursor


def cancel_job(session: Session, *, project: str, job_id: str) -> Job:
    job = get_job(session, project=project, job_id=job_id, lock=True)
    if job.status in FINISHED:
        return job
    if job.status == "queued":
        _finish(session, job, "cancelled", error="cancelled before it started")
    else:
        job.cancel_requested = True  # the worker sees this at its next heartbeat and stops the child
        add_event(session, job_id=job.id, type="log", data={"message": "cancel requested"})
    return job


def requeue_stale(session: Session, *, heartbeat_timeout_s: float) -> list[str]:
    """Running jobs whose worker stopped heartbeating go back to the queue (or fail, out of attempts)."""
    cutoff = utcnow() - timedelta(seconds=heartbeat_timeout_s)
    stale = list(session.scalars(select(Job).where(Job.status == "running", Job.heartbeat_at < cutoff)
                                 .with_for_update(skip_locked=True)))
    for job in stale:
        if job.cancel_requested:
            _finish(session, job, "cancelled", error="cancelled (its worker stopped responding)")
        elif job.attempts >= job.max_attempts:
            _finish(session, job, "failed", error=f"worker {job.worker_id} stopped heartbeating; gave up after "
                                                  f"{job.attempts} attempts")
        else:
            add_event(session, job_id=job.id, type="status",
                      data={"status": "queued", "reason": f"worker {job.worker_id} stopped heartbeating"})
            job.status, job.worker_id = "queued", None
    return [j.id for j in stale]


def claim_next(session: Session, *, worker_id: str, kinds: tuple[str, ...] | None = None,
               max_gpus: int | None = None) -> Job | None:
    """The oldest queued job this worker can run; max_gpus: how many GPUs it was given (None: no limit, a
    worker on the CPU or one that uses whatever it sees). A job needing more stays queued for a bigger one."""
    stmt = (select(Job).where(Job.status == "queued").order_by(Job.created_at, Job.id).limit(1)
            .with_for_update(skip_locked=True))
    if kinds:
        stmt = stmt.where(Job.kind.in_(kinds))
    if max_gpus is not None:
        stmt = stmt.where(Job.gpus <= max_gpus)
    job = session.scalar(stmt)
    if job is None:
        return None
    now = utcnow()
    job.status, job.worker_id, job.heartbeat_at = "running", worker_id, now
    job.attempts += 1
    job.started_at = job.started_at or now
    add_event(session, job_id=job.id, type="status",
              data={"status": "running", "worker": worker_id, "attempt": job.attempts})
    return job


def heartbeat(session: Session, *, job_id: str, worker_id: str) -> tuple[bool, bool]:
    """Returns (still ours, cancel requested). Not ours: it was requeued and someone else has it."""
    updated = session.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
                              .values(heartbeat_at=utcnow())).rowcount
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return bool(updated), bool(cancel)


def finish_job(session: Session, *, job_id: str, worker_id: str, status: str, result: dict | None = None,
               error: str | None = None) -> bool:
    """Record the outcome if the job is still ours; False means another worker owns it now."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.worker_id != worker_id or job.status != "running":
        return False
    _finish(session, job, status, result=result, error=error)
    return True


def _finish(session: Session, job: Job, status: str, *, result: dict | None = None, error: str | None = None) -> None:
    job.status, job.result, job.error, job.finished_at = status, result, error, utcnow()
    add_event(session, job_id=job.id, type="status", data={"status": status, **({"error": error} if error else {})})


def add_event(session: Session, *, job_id: str, type: str, data: dict) -> None:
    session.add(JobEvent(job_id=job_id, type=type, data=data))


def list_events(session: Session, *, job_id: str, after: int = 0, limit: int = 500) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
                                .order_by(JobEvent.id).limit(limit)))


def basis_seed_for(base: BaseModel) -> int:
    """One orthogonal basis per base model revision, regenerable by anyone from the revision."""
    return int(hashlib.sha256(f"lorifold-orthogonal:{base.revision}".encode()).hexdigest()[:15], 16)


def allocate_orthogonal_rows(session: Session, *, base: BaseModel, job_id: str, rank: int,
                             min_in_features: int) -> OrthogonalAllocation:
    """Give the job the next `rank` unused basis rows. Rows are never reused (the allocation outlives
    failed jobs) so no two adapters can ever share an A direction."""
    session.execute(select(BaseModel.id).where(BaseModel.id == base.id).with_for_update())  # serialise allocators
    used = session.scalar(select(func.coalesce(func.max(OrthogonalAllocation.offset + OrthogonalAllocation.rank), 0))
                          .where(OrthogonalAllocation.base_model_id == base.id))
    if used + rank > min_in_features:
        fits = min_in_features // rank
        raise InvalidInput(
            f"orthogonal A is used up for base model {base.name!r}: its narrowest targeted module has input size "
            f"{min_in_features}, which holds {fits} orthogonal adapters of rank {rank}; {used} of its rows are "
            "allocated already. Use a smaller rank or a_init 'random'.")
    row = OrthogonalAllocation(base_model_id=base.id, basis_seed=basis_seed_for(base), offset=used, rank=rank,
                               job_id=job_id)
    session.add(row)
    session.flush()
    return row


def allocation_for(session: Session, *, job_id: str) -> OrthogonalAllocation | None:
    return session.scalar(select(OrthogonalAllocation).where(OrthogonalAllocation.job_id == job_id))
