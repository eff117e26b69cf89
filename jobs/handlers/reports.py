"""Kinds whose product is not a new adapter version: `interference` (a JSON report) and `export`
(a full checkpoint with the adapter folded in, kept in the job's out/ folder for download)."""
from __future__ import annotations

from pathlib import Path

from jobs.handlers.base import Handler, WorkerContext
from jobs.handlers.merge import link_version_folder
from jobs.handlers.results import JobLost
from jobs.specs import ExportSpec
from registry import jobs
from registry.adapters import get_version_by_id
from registry.models import Job


def _finish(ctx: WorkerContext, job: Job, worker_id: str, result: dict) -> dict:
    with ctx.session_factory() as session:
        if not jobs.finish_job(session, job_id=job.id, worker_id=worker_id, status="succeeded", result=result):
            raise JobLost(f"job {job.id} is no longer owned by {worker_id}")
        session.commit()
    return result


def prepare_interference(ctx: WorkerContext, job: Job) -> dict:
    folders, labels = [], []
    with ctx.session_factory() as session:
        for i, version_id in enumerate(job.inputs["version_ids"]):
            version = get_version_by_id(session, version_id=version_id)
            folder = ctx.job_dir(job.id) / "inputs" / str(i)
            link_version_folder(ctx, version, folder)
            folders.append(str(folder))
            labels.append(f"{version.adapter.name}:{version.version}")
    return {"folders": folders, "labels": labels}


def compute_interference(task: dict, emit, should_stop) -> dict:
    from merging.interference import interference_report

    report = interference_report([Path(f) for f in task["folders"]])
    report["adapters"] = task["labels"]
    return report


def finalize_interference(ctx: WorkerContext, job: Job, task: dict, output: dict, worker_id: str) -> dict:
    return _finish(ctx, job, worker_id, output)


def prepare_export(ctx: WorkerContext, job: Job) -> dict:
    spec = ExportSpec.model_validate(job.spec)
    with ctx.session_factory() as session:
        version = get_version_by_id(session, version_id=job.inputs["version_ids"][0])
        base_dir = version.adapter.base_model.local_path
        folder = ctx.job_dir(job.id) / "adapter"
        link_version_folder(ctx, version, folder)
    return {"base_model_dir": base_dir, "adapter_dir": str(folder), "out_dir": str(ctx.job_dir(job.id) / "out"),
            "max_shard_bytes": spec.max_shard_mb << 20}


def compute_export(task: dict, emit, should_stop) -> dict:
    import shutil

    from merging.export import export_merged_checkpoint

    shutil.rmtree(task["out_dir"], ignore_errors=True)
    emit({"type": "log", "message": "folding the adapter into the base weights"})
    return export_merged_checkpoint(Path(task["base_model_dir"]), Path(task["adapter_dir"]), Path(task["out_dir"]),
                                    max_shard_bytes=task["max_shard_bytes"])


def finalize_export(ctx: WorkerContext, job: Job, task: dict, output: dict, worker_id: str) -> dict:
    files = sorted(p.name for p in Path(task["out_dir"]).iterdir())
    return _finish(ctx, job, worker_id, {"files": files, "download": f"/v1/jobs/{job.id}/output",
                                         **{k: v for k, v in output.items() if k != "files"}})


INTERFERENCE = Handler(prepare=prepare_interference, compute=compute_interference, finalize=finalize_interference)
EXPORT = Handler(prepare=prepare_export, compute=compute_export, finalize=finalize_export, keeps_output=True)
