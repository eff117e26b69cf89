"""Kind `merge`: combine registered adapter versions into a new version of kind `merged`."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from jobs.handlers.base import Handler, WorkerContext
from jobs.handlers.results import store_adapter_result
from jobs.specs import MergeSpec
from registry.adapters import get_version_by_id
from registry.models import Job


def link_version_folder(ctx: WorkerContext, version, folder: Path) -> None:
    """A PEFT folder view of a stored version: hard links to its blobs under their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in version.files:
        target = folder / f.filename
        if not target.exists():
            os.link(ctx.store.local_path(f.sha256), target)


def prepare(ctx: WorkerContext, job: Job) -> dict:
    spec = MergeSpec.model_validate(job.spec)
    job_dir = ctx.job_dir(job.id)
    inputs = []
    with ctx.session_factory() as session:
        for i, (version_id, item) in enumerate(zip(job.inputs["version_ids"], spec.inputs)):
            folder = job_dir / "inputs" / str(i)
            link_version_folder(ctx, get_version_by_id(session, version_id=version_id), folder)
            inputs.append({"path": str(folder), "weight": item.weight})
    return {"inputs": inputs, "method": spec.method, "params": spec.merge_params(), "out_dir": str(job_dir / "out")}


def compute(task: dict, emit, should_stop) -> dict:
    import torch  # the child only

    from merging.execute import MergeInput, merge_adapters
    from merging.params import MergeParams

    out_dir = Path(task["out_dir"])
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    emit({"type": "log", "message": f"merging {len(task['inputs'])} adapters with {task['method']} on {device}"})
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        emit({"type": "progress", "step": done, "total_steps": total, "unit": "modules",
              "eta_s": (total - done) * elapsed / done})

    summary = merge_adapters([MergeInput(Path(i["path"]), i["weight"]) for i in task["inputs"]], task["method"],
                             MergeParams(**task["params"]), out_dir, device=device, on_progress=progress)
    emit({"type": "log", "message": f"merged {summary.modules} modules in {summary.seconds:.2f}s"})
    return {"metrics": {"seconds": summary.seconds, "compute_seconds": summary.compute_seconds,
                        "modules": summary.modules, "rank": summary.rank}}


def finalize(ctx: WorkerContext, job: Job, task: dict, output: dict, worker_id: str) -> dict:
    spec = MergeSpec.model_validate(job.spec)
    with ctx.session_factory() as session:
        base = get_version_by_id(session, version_id=job.inputs["version_ids"][0]).adapter.base_model.name
    parents = [(vid, "merged-from") for vid in dict.fromkeys(job.inputs["version_ids"])]
    return store_adapter_result(ctx, job, worker_id, out_dir=Path(task["out_dir"]), name=spec.output_name,
                                base_model=base, tags=spec.tags, meta=spec.metadata, metrics=output["metrics"],
                                parents=parents)


HANDLER = Handler(prepare=prepare, compute=compute, finalize=finalize)
