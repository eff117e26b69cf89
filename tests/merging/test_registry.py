"""The name -> method registry and parameter validation."""
from __future__ import annotations

import sys

import pytest

from merging import METHODS, MergeParams, UnknownMergeMethod, get_method, register
from merging.concat import sum_of_ranks

EXPECTED = {"concat", "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune",
            "peft_linear"}


def test_every_method_is_registered_with_a_paper():
    assert set(METHODS) == EXPECTED
    for name, method in METHODS.items():
        assert method.name == name and method.paper.startswith("https://")
        assert method.paper in sys.modules[method.fn.__module__].__doc__  # each file cites its paper
    assert {n for n, m in METHODS.items() if not m.needs_rank} == {"concat", "peft_linear"}
    assert [n for n, m in METHODS.items() if m.stacks_b] == ["concat"]


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="'concat' is already registered"):
        register("concat", paper="https://example.org", needs_rank=False, output_rank=sum_of_ranks)(lambda f, p: None)
    try:
        register("test_only", paper="https://example.org", needs_rank=False, output_rank=sum_of_ranks)(lambda f, p: None)
        with pytest.raises(ValueError, match="already registered"):
            register("test_only", paper="https://example.org", needs_rank=False, output_rank=sum_of_ranks)(
                lambda f, p: None)
    finally:
        METHODS.pop("test_only", None)


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(UnknownMergeMethod) as info:
        get_method("svd")
    assert isinstance(info.value, ValueError)
    assert "'svd'" in str(info.value) and all(name in str(info.value) for name in EXPECTED)


@pytest.mark.parametrize("kwargs,message", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"rank": 2.5}, "rank must be a positive integer"),
    ({"rank": True}, "rank must be a positive integer"),
    ({"density": 0}, r"density must be a number in \(0, 1\]"),
    ({"density": 1.5}, r"density must be a number in \(0, 1\]"),
    ({"density": "0.5"}, r"density must be a number in \(0, 1\]"),
    ({"majority_sign_method": "sum"}, "majority_sign_method must be one of total, frequency"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*63\)"),
    ({"svd": "lowrank"}, "svd must be one of exact, randomized"),
])
def test_bad_params_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MergeParams(**kwargs)


def test_rank_is_required_exactly_when_the_method_targets_one():
    with pytest.raises(ValueError, match="'linear' compresses to a target rank: set params.rank"):
        get_method("linear").check_params(MergeParams())
    with pytest.raises(ValueError, match="'concat' takes no rank"):
        get_method("concat").check_params(MergeParams(rank=8))
    get_method("ties").check_params(MergeParams(rank=8))
    get_method("peft_linear").check_params(MergeParams())


def test_params_are_frozen_and_json_friendly():
    params = MergeParams(rank=8, density=0.5)
    with pytest.raises(Exception):
        params.rank = 4
    assert params.as_dict() == {"rank": 8, "density": 0.5, "majority_sign_method": "total", "seed": 0, "svd": "exact"}
