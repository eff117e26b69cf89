"""Merge methods registered by name, like PEFT's PEFT_TYPE_TO_CONFIG_MAPPING: a name maps to exactly one
function, a second registration of a name is refused, and an unknown name lists the valid ones.

    @register("concat", paper="https://arxiv.org/abs/2504.07448", needs_rank=False, output_rank=sum_of_ranks)
    def concat(factors: list[Factor], params: MergeParams) -> tuple[Tensor, Tensor]: ...

`output_rank(ranks, out_features, in_features, params)` says the rank a method returns for one module
before any tensor is read, so the executor can write the output header up front. `stacks_b` marks methods
whose B is the inputs' B side by side, so the executor stacks their LoRI masks too. `many`, optional,
merges several modules in one call (the executor hands over a batch of modules), for methods whose per-module
overhead batches away; without it the batch runs module by module through `fn`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from merging.params import Factor, MergeParams

RankRule = Callable[[list[int], int, int, MergeParams], int]
ManyFn = Callable[[list[list[Factor]], list[MergeParams]], list[tuple]]


class UnknownMergeMethod(ValueError):
    """A method name that is not registered; the message lists the registered ones."""


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[[list[Factor], MergeParams], tuple]
    paper: str
    needs_rank: bool  # True: params.rank is the target rank k and is required; False: rank must be None
    output_rank: RankRule
    stacks_b: bool  # output B is hstack of the inputs' B in input order, so LoRI masks stack alike
    many_fn: ManyFn | None = None

    def __call__(self, factors: list[Factor], params: MergeParams):
        return self.fn(factors, params)

    def many(self, modules: list[list[Factor]], params: list[MergeParams]) -> list[tuple]:
        """[(A, B) per module] for a batch of modules, params[i] belonging to modules[i]."""
        if self.many_fn is not None:
            return self.many_fn(modules, params)
        return [self.fn(factors, p) for factors, p in zip(modules, params)]

    def check_params(self, params: MergeParams) -> None:
        if self.needs_rank and params.rank is None:
            raise ValueError(f"merge method {self.name!r} compresses to a target rank: set params.rank "
                             "(the sum of the input ranks is lossless for 'linear')")
        if not self.needs_rank and params.rank is not None:
            raise ValueError(f"merge method {self.name!r} takes no rank (its rank follows from the inputs); "
                             f"got rank={params.rank}")


METHODS: dict[str, MergeMethod] = {}


def register(name: str, *, paper: str, needs_rank: bool, output_rank: RankRule, stacks_b: bool = False,
             many: ManyFn | None = None):
    """Decorator adding `fn` (and its batched form `many`) to METHODS under `name`; refuses a taken name."""
    def decorate(fn):
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered (by {METHODS[name].fn.__module__})")
        METHODS[name] = MergeMethod(name=name, fn=fn, paper=paper, needs_rank=needs_rank,
                                   output_rank=output_rank, stacks_b=stacks_b, many_fn=many)
        return fn
    return decorate


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMergeMethod(
            f"unknown merge method {name!r}; valid methods: {', '.join(sorted(METHODS))}") from None
