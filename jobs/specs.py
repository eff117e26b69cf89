"""Job specs: one pydantic union keyed by `kind`. Torch-free: the API validates requests with these."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from registry.errors import InvalidInput
from registry.names import check_name, check_tags_and_meta

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class _Spec(BaseModel):
    # NaN / Infinity are not numbers a job can use (and PostgreSQL's json refuses them): refused up front.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _StoresAdapter(_Spec):
    """A job whose result becomes an adapter version: its name, tags and metadata pass the registry's own
    rules at submission, not only when the result is stored after the work is done."""
    output_name: str = Field(pattern=NAME_PATTERN, description="adapter name the result is stored under")
    tags: list[str] = Field(default_factory=list, max_length=32)
    metadata: dict = Field(default_factory=dict)

    @field_validator("output_name")
    @classmethod
    def _name(cls, value):
        return _registry_rule(check_name, value, "output_name")

    @model_validator(mode="after")
    def _tags_and_meta(self):
        _registry_rule(check_tags_and_meta, self.tags, self.metadata)
        return self


def _registry_rule(check, *args):
    try:
        return check(*args)
    except InvalidInput as e:
        raise ValueError(str(e)) from None


class AdapterRef(_Spec):
    adapter: str = Field(pattern=NAME_PATTERN)
    version: str = Field("latest", description="version number, alias or 'latest'")


class TrainSpec(_StoresAdapter):
    kind: Literal["train"] = "train"
    method: Literal["lora", "lori_d", "lori_s"]
    base_model: str = Field(pattern=NAME_PATTERN)
    dataset: str = Field(pattern=NAME_PATTERN)
    rank: int = Field(16, ge=1, le=1024)
    alpha: float | None = Field(None, gt=0, description="default 2 * rank")
    target_modules: list[str] | None = Field(None, description="default: every linear layer of the blocks")
    lr: float | None = Field(None, gt=0, lt=1, description="default: from the hidden size (LoRA Without Regret)")
    epochs: int = Field(1, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=4096)
    max_length: int = Field(512, ge=8, le=131072)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    a_seed: int | None = Field(None, ge=0, le=2**62, description="LoRI: default a fresh random seed per adapter")
    a_init: Literal["random", "orthogonal"] = "random"
    sparsity: float = Field(0.9, gt=0, lt=1, description="lori_d: fraction of B zeroed by the mask")
    mask_from: AdapterRef | None = Field(None, description="lori_s: the lori_d (or lori_s) version whose mask to use")
    checkpoint_every: int = Field(50, ge=1)
    gpus: int = Field(1, ge=1, le=64)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value):
        if value is not None and (not value or not all(isinstance(v, str) and v for v in value)):
            raise ValueError("target_modules must be a non-empty list of module names (or omitted)")
        return value

    @model_validator(mode="after")
    def _method_needs(self):
        if self.method == "lori_s" and self.mask_from is None:
            raise ValueError("lori_s needs mask_from: the lori_d adapter version whose mask B is trained under")
        if self.method != "lori_s" and self.mask_from is not None:
            raise ValueError("mask_from is only for method lori_s")
        if self.a_init == "orthogonal" and self.method == "lora":
            raise ValueError("a_init 'orthogonal' needs a LoRI method (A frozen); plain lora trains A")
        if self.a_init == "orthogonal" and self.method == "lori_s":
            raise ValueError("lori_s inherits its frozen A from mask_from (orthogonal or not); drop a_init")
        if self.gpus > self.batch_size:
            raise ValueError(f"batch_size {self.batch_size} is smaller than gpus {self.gpus}: each GPU trains on "
                             "its share of every batch")
        return self


# Names of merging.registry.METHODS, kept here so the API validates without importing torch
# (tests/jobs/test_specs.py checks the two lists agree).
MERGE_METHODS = ("concat", "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune",
                 "peft_linear")
RANKLESS_METHODS = ("concat", "peft_linear")  # their output rank follows from the inputs


class MergeInputSpec(AdapterRef):
    weight: float = 1.0


class MergeSpec(_StoresAdapter):
    kind: Literal["merge"] = "merge"
    inputs: list[MergeInputSpec] = Field(min_length=1, max_length=64)
    method: str
    rank: int | None = Field(None, ge=1, le=65536, description="target rank for linear/ties/dare/magnitude_prune")
    density: float | None = Field(None, gt=0, le=1)
    majority_sign_method: Literal["total", "frequency"] = "total"
    seed: int = Field(0, ge=0, le=2**62)
    svd: Literal["exact", "randomized"] = "exact"

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        if value not in MERGE_METHODS:
            raise ValueError(f"unknown merge method {value!r}; choose one of {', '.join(MERGE_METHODS)}")
        return value

    @model_validator(mode="after")
    def _rank_where_needed(self):
        if self.method not in RANKLESS_METHODS and self.rank is None:
            raise ValueError(f"method {self.method!r} needs `rank`, the rank of the merged adapter")
        if self.method in RANKLESS_METHODS and self.rank is not None:
            raise ValueError(f"method {self.method!r} takes no `rank`: its rank is the sum of the inputs' ranks")
        return self

    def merge_params(self) -> dict:
        """Keyword arguments of merging.params.MergeParams."""
        return {"rank": self.rank, "density": self.density if self.density is not None else 1.0,
                "majority_sign_method": self.majority_sign_method, "seed": self.seed, "svd": self.svd}


class InterferenceSpec(_Spec):
    """Interference report between adapter versions (cosine of dW_i and dW_j, A overlap, mask overlap)."""
    kind: Literal["interference"] = "interference"
    inputs: list[AdapterRef] = Field(min_length=2, max_length=16)


class ExportSpec(_Spec):
    """Fold an adapter version into its base model and keep the full checkpoint for download."""
    kind: Literal["export"] = "export"
    adapter: AdapterRef
    max_shard_mb: int = Field(4096, ge=1, le=65536)


JobSpec = Annotated[Union[TrainSpec, MergeSpec, InterferenceSpec, ExportSpec], Field(discriminator="kind")]
JOB_SPEC = TypeAdapter(JobSpec)
