"""interference_report: factored cosines and overlaps against dense computations and known cases."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from merging import interference_report
from tests.merging.helpers import random_factors, write_adapter

SHAPES = {"model.layers.0.mlp.up_proj": (12, 16), "model.layers.0.self_attn.q_proj": (16, 16)}


def test_identical_adapters_have_cosine_and_overlap_one(tmp_path):
    a = write_adapter(tmp_path / "a", random_factors(SHAPES, 4, seed=1), r=4, alpha=8)
    b = shutil.copytree(a, tmp_path / "b")
    report = interference_report([a, b])
    pair = report["pairs"][0]
    assert pair["cosine"] == pytest.approx(1.0, abs=1e-12) and pair["a_overlap"] == pytest.approx(1.0, abs=1e-12)
    assert all(m["cosine"] == pytest.approx(1.0, abs=1e-12) for m in pair["modules"].values())
    assert pair["mask_jaccard"] is None and pair["shared_modules"] == 2
    json.dumps(report)  # plain JSON


def test_orthogonal_a_gives_zero_overlap_and_zero_cosine(tmp_path):
    eye = torch.eye(16)
    g = torch.Generator().manual_seed(0)
    fa = {m: (eye[:4], torch.randn(o, 4, generator=g)) for m, (o, _) in SHAPES.items()}
    fb = {m: (eye[4:10] * 3, torch.randn(o, 6, generator=g)) for m, (o, _) in SHAPES.items()}
    a = write_adapter(tmp_path / "a", fa, r=4, alpha=8)
    b = write_adapter(tmp_path / "b", fb, r=6, alpha=6)
    pair = interference_report([a, b])["pairs"][0]
    assert pair["cosine"] == pytest.approx(0.0, abs=1e-12) and pair["a_overlap"] == pytest.approx(0.0, abs=1e-12)


def test_cosine_matches_dense_computation(tmp_path):
    fa, fb = random_factors(SHAPES, 4, seed=1), random_factors(SHAPES, 2, seed=2)
    shared = {m: (fa[m][0][:2] + 0.1 * fb[m][0], fb[m][1]) for m in SHAPES}  # partly shared input directions
    a = write_adapter(tmp_path / "a", fa, r=4, alpha=8, use_rslora=True)
    b = write_adapter(tmp_path / "b", shared, r=2, alpha=1)
    extra = dict(fa)
    extra["model.layers.1.mlp.down_proj"] = random_factors({"x": (5, 7)}, 4, seed=3)["x"]
    c = write_adapter(tmp_path / "c", extra, r=4, alpha=4)
    report = interference_report([a, b, c])
    dense = {
        "a": {m: 8 / 2 * B.double() @ A.double() for m, (A, B) in fa.items()},  # rsLoRA: alpha / sqrt(4)
        "b": {m: 0.5 * B.double() @ A.double() for m, (A, B) in shared.items()},
        "c": {m: 1.0 * B.double() @ A.double() for m, (A, B) in extra.items()},
    }
    for pair in report["pairs"]:
        x, y = "abc"[pair["a"]], "abc"[pair["b"]]
        for m, values in pair["modules"].items():
            dx, dy = dense[x][m].flatten(), dense[y][m].flatten()
            assert values["cosine"] == pytest.approx(float(dx @ dy / dx.norm() / dy.norm()), abs=1e-10)
        inner = sum(float(dense[x][m].flatten() @ dense[y][m].flatten()) for m in pair["modules"])
        norms = [sum(float(d.square().sum()) for d in dense[z].values()) ** 0.5 for z in (x, y)]
        assert pair["cosine"] == pytest.approx(inner / norms[0] / norms[1], abs=1e-10)
    ac = next(p for p in report["pairs"] if (p["a"], p["b"]) == (0, 2))
    assert ac["shared_modules"] == 2 and ac["cosine"] < 1.0  # c's extra module counts as zero in a
    assert all(v["cosine"] == pytest.approx(1.0) for v in ac["modules"].values())
    assert report["norms"][2] > 0


def test_partial_overlap_of_a_subspaces(tmp_path):
    eye = torch.eye(16)
    shapes = {"model.layers.0.self_attn.q_proj": (16, 16)}
    B = torch.randn(16, 4)
    a = write_adapter(tmp_path / "a", {m: (eye[:4], B) for m in shapes}, r=4, alpha=4)
    b = write_adapter(tmp_path / "b", {m: (eye[2:6], B) for m in shapes}, r=4, alpha=4)
    assert interference_report([a, b])["pairs"][0]["a_overlap"] == pytest.approx(0.5)


def test_mask_jaccard(tmp_path):
    shapes = {"model.layers.0.self_attn.q_proj": (4, 8)}
    f = random_factors(shapes, 2, seed=1)
    m1 = {k: torch.tensor([[1, 0], [1, 0], [0, 0], [1, 1]], dtype=torch.uint8) for k in shapes}
    m2 = {k: torch.tensor([[1, 1], [0, 0], [0, 0], [1, 0]], dtype=torch.uint8) for k in shapes}
    a = write_adapter(tmp_path / "a", f, r=2, alpha=2, masks=m1)
    b = write_adapter(tmp_path / "b", f, r=2, alpha=2, masks=m2)
    c = write_adapter(tmp_path / "c", f, r=2, alpha=2)
    report = interference_report([a, b, c])
    pairs = {(p["a"], p["b"]): p for p in report["pairs"]}
    assert pairs[(0, 1)]["mask_jaccard"] == pytest.approx(2 / 5)  # intersection 2, union 5
    assert pairs[(0, 2)]["mask_jaccard"] is None


def test_needs_two_adapters(tmp_path):
    a = write_adapter(tmp_path / "a", random_factors(SHAPES, 4, seed=1), r=4, alpha=8)
    with pytest.raises(ValueError, match="at least two"):
        interference_report([a])
