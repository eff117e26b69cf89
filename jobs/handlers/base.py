"""A handler is three functions: `prepare` (worker process, database) turns the job row into a plain,
picklable task; `compute` (spawned child, torch) does the work into task["out_dir"]; `finalize` (worker
process, database) stores the output and the job's result in one transaction."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from registry.blobstore import LocalBlobStore
from registry.models import Job
from registry.settings import Settings


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    store: LocalBlobStore

    def job_dir(self, job_id: str) -> Path:
        """Per-job scratch beside the blobs (shared storage in a scale-out setup): checkpoints and output."""
        path = self.store.job_dir(job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path


Emit = Callable[[dict], None]
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class Handler:
    prepare: Callable[[WorkerContext, Job], dict]
    compute: Callable[[dict, Emit, ShouldStop], dict]
    finalize: Callable[[WorkerContext, Job, dict, dict, str], dict]  # (ctx, job, task, output, worker_id) -> result
    keeps_output: bool = False  # the job's out/ folder is its downloadable product (GET /v1/jobs/{id}/output)
