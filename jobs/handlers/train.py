"""Kind `train`: LoRA / LoRI-D / LoRI-S on a registered base model and dataset."""
from __future__ import annotations

from pathlib import Path

from adapterio.peft_format import LORI_MASKS
from jobs.handlers.base import Handler, WorkerContext
from jobs.handlers.results import store_adapter_result
from jobs.specs import TrainSpec
from registry.adapters import get_version_by_id
from registry.models import BaseModel, Job


def prepare(ctx: WorkerContext, job: Job) -> dict:
    spec, inputs = TrainSpec.model_validate(job.spec), job.inputs
    with ctx.session_factory() as session:
        base = session.get_one(BaseModel, inputs["base_model_id"])
        mask_path = None
        if "mask_version_id" in inputs:
            version = get_version_by_id(session, version_id=inputs["mask_version_id"])
            mask_sha = next(f.sha256 for f in version.files if f.filename == LORI_MASKS)
            mask_path = str(ctx.store.local_path(mask_sha))
    job_dir = ctx.job_dir(job.id)
    orthogonal = inputs.get("orthogonal") or {}
    config = {
        "method": spec.method, "rank": spec.rank, "alpha": spec.alpha, "target_modules": spec.target_modules,
        "lr": spec.lr, "epochs": spec.epochs, "max_steps": spec.max_steps, "batch_size": spec.batch_size,
        "max_length": spec.max_length, "seed": spec.seed, "a_seed": inputs.get("a_seed"),
        "a_init": "orthogonal" if orthogonal else "random", "basis_seed": orthogonal.get("basis_seed"),
        "a_offset": orthogonal.get("offset"), "sparsity": spec.sparsity, "mask_path": mask_path,
        "checkpoint_every": spec.checkpoint_every, "gpus": spec.gpus,
    }
    return {"config": config, "base_model_dir": base.local_path,
            "dataset_path": str(ctx.store.local_path(inputs["dataset_sha256"])),
            "out_dir": str(job_dir / "out"), "checkpoint_dir": str(job_dir / "checkpoints")}


def compute(task: dict, emit, should_stop) -> dict:
    """One process on the worker's GPU, or with `gpus: N > 1` N processes under torchrun, one per GPU of the
    worker's list (the child's CUDA_VISIBLE_DEVICES)."""
    from training.config import TrainConfig  # torch lives in the child only
    from training.recipe import run_training

    out_dir = Path(task["out_dir"])
    if out_dir.exists():  # a previous attempt died while writing its output
        import shutil
        shutil.rmtree(out_dir)
    config = dict(task["config"])
    gpus = config.pop("gpus", 1)  # where the run trains, not what it learns: not part of TrainConfig
    paths = dict(base_model_dir=task["base_model_dir"], dataset_path=task["dataset_path"], out_dir=out_dir,
                 checkpoint_dir=task["checkpoint_dir"])
    if gpus > 1:
        from training.distributed import run_training_distributed
        result = run_training_distributed(TrainConfig(**config), world_size=gpus, **paths, on_event=emit,
                                          should_stop=should_stop)
    else:
        result = run_training(TrainConfig(**config), **paths, on_event=emit, should_stop=should_stop)
    return {"metrics": result.metrics}


def finalize(ctx: WorkerContext, job: Job, task: dict, output: dict, worker_id: str) -> dict:
    spec = TrainSpec.model_validate(job.spec)
    parents = [(job.inputs["mask_version_id"], "mask-from")] if "mask_version_id" in job.inputs else []
    return store_adapter_result(ctx, job, worker_id, out_dir=Path(task["out_dir"]), name=spec.output_name,
                                base_model=spec.base_model, tags=spec.tags, meta=spec.metadata,
                                metrics=output["metrics"], parents=parents)


HANDLER = Handler(prepare=prepare, compute=compute, finalize=finalize)
