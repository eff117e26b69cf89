"""Resolve what a job spec names (base model, dataset, adapter versions) at submission, so a bad spec
is a 4xx now rather than a failed job later, and a retried job runs on exactly the same inputs."""
from __future__ import annotations

import secrets

from sqlalchemy.orm import Session

from adapterio.peft_format import LORI_MASKS, merge_blocker
from registry import adapters, jobs
from registry.base_models import get_base_model
from registry.datasets import get_dataset
from registry.errors import InvalidInput
from registry.models import BaseModel

NOT_TARGETS = ("lm_head", "embed_tokens", "wte", "wpe", "embed_out")


def targeted_in_features(base: BaseModel, target_modules: list[str] | None) -> list[int]:
    """Input sizes of the modules a spec targets (by leaf name, PEFT's rule), from the stored shapes."""
    shapes = base.module_shapes
    if target_modules is None:
        chosen = [s for m, s in shapes.items() if m.rsplit(".", 1)[-1] not in NOT_TARGETS]
    else:
        wanted = set(target_modules)
        chosen = [s for m, s in shapes.items() if m.rsplit(".", 1)[-1] in wanted or m in wanted]
        missing = [t for t in target_modules if not any(m == t or m.endswith("." + t) for m in shapes)]
        if missing:
            raise InvalidInput(f"target_modules {missing} match no linear module of base model {base.name!r}")
    if not chosen:
        raise InvalidInput(f"no module of base model {base.name!r} would be adapted")
    return [in_f for _, in_f in chosen]


def resolve_train(session: Session, *, project: str, job_id: str, method: str, base_model: str, dataset: str,
                  rank: int, target_modules: list[str] | None, a_seed: int | None, a_init: str,
                  mask_from: tuple[str, str] | None) -> dict:
    base = get_base_model(session, project=project, name=base_model)
    data = get_dataset(session, project=project, name=dataset)
    in_features = targeted_in_features(base, target_modules)
    if rank > min(in_features):
        raise InvalidInput(f"rank {rank} is larger than the smallest targeted input size {min(in_features)}")
    inputs: dict = {"base_model_id": base.id, "base_model_revision": base.revision, "dataset_id": data.id,
                    "dataset_sha256": data.sha256, "dataset_format": data.format}
    if method != "lora":
        inputs["a_seed"] = a_seed if a_seed is not None else secrets.randbits(62)
    if mask_from is not None:
        version = adapters.resolve_version(session, project=project, name=mask_from[0], ref=mask_from[1])
        if version.adapter.base_model_id != base.id:
            raise InvalidInput(f"mask_from {mask_from[0]!r} belongs to base model {version.adapter.base_model.name!r}")
        if not any(f.filename == LORI_MASKS for f in version.files):
            raise InvalidInput(f"{mask_from[0]!r} version {version.version} has no {LORI_MASKS}; train it with "
                               "method lori_d first")
        if version.rank != rank or version.rank_pattern:
            raise InvalidInput(f"mask_from has rank {version.rank}; the lori_s job must use the same rank")
        inputs["mask_version_id"] = version.id
        # LoRI-S trains B under LoRI-D's mask with LoRI-D's frozen A: inherit how that A was made.
        source = (version.recipe or {}).get("inputs", {})
        if "orthogonal" in source:
            inputs["orthogonal"] = source["orthogonal"]
            return inputs
        if version.a_seed is None and a_seed is None:
            raise InvalidInput(f"{mask_from[0]!r} version {version.version} records no a_seed; pass a_seed")
        inputs["a_seed"] = a_seed if a_seed is not None else version.a_seed
    if a_init == "orthogonal":
        alloc = jobs.allocate_orthogonal_rows(session, base=base, job_id=job_id, rank=rank,
                                              min_in_features=min(in_features))
        inputs["orthogonal"] = {"basis_seed": alloc.basis_seed, "offset": alloc.offset}
    return inputs


def resolve_merge(session: Session, *, project: str, refs: list[tuple[str, str]]) -> dict:
    versions = [adapters.resolve_version(session, project=project, name=n, ref=r) for n, r in refs]
    for (name, _), v in zip(refs, versions):
        blocker = merge_blocker(v.config)
        if blocker:
            raise InvalidInput(f"{name!r} version {v.version} {blocker}")
    bases = {v.adapter.base_model_id for v in versions}
    if len(bases) != 1:
        raise InvalidInput("all merge inputs must share one base model; got "
                           f"{sorted({v.adapter.base_model.name for v in versions})}")
    return {"base_model_id": bases.pop(), "version_ids": [v.id for v in versions]}
