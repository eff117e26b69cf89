"""Store a job's output folder as a new adapter version and mark the job succeeded, atomically: the
version row and the job's result commit in the same transaction, so a worker dying at any point
never leaves a version without a finished job (a retried job would otherwise store a duplicate)."""
from __future__ import annotations

from pathlib import Path

from jobs.handlers.base import WorkerContext
from registry import jobs
from registry.blobstore import StagedFile
from registry.ingest import NewVersion, ingest_adapter
from registry.models import Job


def stage_folder(ctx: WorkerContext, folder: Path) -> dict[str, StagedFile]:
    """Every file of `folder` as a staged blob; on any error (a full disk) none is left in the store's tmp."""
    staged: dict[str, StagedFile] = {}
    try:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                staged[path.name] = s = ctx.store.stage()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 22):
                        s.write(chunk)
                s.finish()
    except BaseException:
        for s in staged.values():
            s.discard()
        raise
    return staged


def store_adapter_result(ctx: WorkerContext, job: Job, worker_id: str, *, out_dir: Path, name: str, base_model: str,
                         tags: list[str], meta: dict, metrics: dict | None,
                         parents: list[tuple[int, str]]) -> dict:
    recipe = {"job_id": job.id, "kind": job.kind, "spec": job.spec, "inputs": job.inputs}
    new = NewVersion(project=job.project, name=name, base_model=base_model, tags=tags, meta=meta, recipe=recipe,
                     metrics=metrics, parents=parents)
    result: dict = {}

    def mark_succeeded(session, version_id: int, version_number: int) -> None:
        result.update({"adapter": name, "version": version_number, "metrics_summary": _summary(metrics)})
        if not jobs.finish_job(session, job_id=job.id, worker_id=worker_id, status="succeeded", result=result):
            raise JobLost(f"job {job.id} is no longer owned by {worker_id}")

    ingest_adapter(ctx.session_factory, ctx.store, new, stage_folder(ctx, out_dir), in_transaction=mark_succeeded)
    return result


class JobLost(Exception):
    """The job was requeued and claimed by another worker while this one finished; drop our output."""


def _summary(metrics: dict | None) -> dict:
    if not metrics:
        return {}
    return {k: metrics[k] for k in ("steps", "final_loss", "tokens_per_s", "seconds") if k in metrics}
