"""One set of MoE limits (kernels/limits.py), the same in every MoE API, and one error type per
kind of mistake: TypeError for dtypes, ValueError for shapes and values (past a limit included)."""

from __future__ import annotations

import pytest
import torch

from vllm_ascend_triton.kernels import (
    fused_experts,
    fused_topk,
    grouped_topk,
    moe_align_block_size,
    moe_permute,
    moe_unpermute,
)
from vllm_ascend_triton.kernels.limits import MOE_MAX_EXPERTS, MOE_MAX_SLOTS, MOE_MAX_TOPK
from vllm_ascend_triton.runtime import launch


def _ids(m: int, k: int, e: int) -> torch.Tensor:
    return (torch.arange(m * k) % e).to(torch.int32).view(m, k)


def _experts_args(m: int, k: int, e: int, hidden: int = 16, inter: int = 8):
    x = torch.randn(m, hidden)
    w13 = torch.randn(e, 2 * inter, hidden)
    w2 = torch.randn(e, hidden, inter)
    return x, w13, w2, torch.full((m, k), 1.0 / k), _ids(m, k, e)


def test_limits_are_the_documented_ones():
    assert (MOE_MAX_EXPERTS, MOE_MAX_TOPK, MOE_MAX_SLOTS) == (1024, 32, 2**24)


TOPK_PAST = MOE_MAX_TOPK + 1
TOO_MANY_TOPK = [
    ("fused_topk", lambda: fused_topk(torch.randn(2, 64), TOPK_PAST, True)),
    ("grouped_topk", lambda: grouped_topk(torch.randn(2, 64), TOPK_PAST, True, 2, 2)),
    ("moe_permute", lambda: moe_permute(torch.randn(2, 8), _ids(2, TOPK_PAST, 64), 64)),
    (
        "moe_unpermute",
        lambda: moe_unpermute(
            torch.randn(2 * TOPK_PAST, 8),
            torch.rand(2, TOPK_PAST),
            torch.zeros(2, TOPK_PAST, dtype=torch.int32),
        ),
    ),
    ("fused_experts", lambda: fused_experts(*_experts_args(2, TOPK_PAST, 64))),
]


@pytest.mark.parametrize("name,call", TOO_MANY_TOPK, ids=[c[0] for c in TOO_MANY_TOPK])
def test_one_topk_limit_everywhere(name, call):
    with pytest.raises(ValueError, match=str(MOE_MAX_TOPK)):
        call()


def test_topk_at_the_limit_runs():
    e = 64
    ids = torch.stack([torch.randperm(e)[:MOE_MAX_TOPK] for _ in range(2)]).to(torch.int32)
    res = moe_permute(torch.randn(2, 8), ids, e)
    assert int(res.expert_first_token_offset[-1]) == 2 * MOE_MAX_TOPK
    w, i = fused_topk(torch.randn(2, e), MOE_MAX_TOPK, True)
    assert i.shape == (2, MOE_MAX_TOPK)


E_PAST = MOE_MAX_EXPERTS + 1
TOO_MANY_EXPERTS = [
    ("fused_topk", lambda: fused_topk(torch.randn(2, E_PAST), 2, True)),
    ("moe_align_block_size", lambda: moe_align_block_size(_ids(2, 2, 8), 16, E_PAST)),
    ("moe_permute", lambda: moe_permute(torch.randn(2, 8), _ids(2, 2, 8), E_PAST)),
    ("fused_experts", lambda: fused_experts(*_experts_args(2, 2, 8), global_num_experts=E_PAST)),
]


@pytest.mark.parametrize("name,call", TOO_MANY_EXPERTS, ids=[c[0] for c in TOO_MANY_EXPERTS])
def test_one_expert_limit_everywhere(name, call):
    with pytest.raises(ValueError, match=str(MOE_MAX_EXPERTS)):
        call()


def test_slot_limit():
    ids = torch.zeros(MOE_MAX_SLOTS + 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="topk_ids"):
        moe_align_block_size(ids, 1, 8)
    with pytest.raises(ValueError, match=str(MOE_MAX_SLOTS)):
        moe_permute(torch.zeros(MOE_MAX_SLOTS + 1, 1), ids.view(-1, 1), 8)


@pytest.mark.parametrize("api", ["align", "permute", "permute_explicit_l", "fused_experts"])
def test_expert_map_values_past_int32_are_an_error(monkeypatch, api):
    """With checks on, an int64 map entry that does not fit int32 is a clear error, not a wrap."""
    monkeypatch.setattr(launch, "INPUT_CHECKS", True)
    emap = torch.tensor([0, 1, -1, 2**32 + 1], dtype=torch.int64)  # would wrap to 1
    ids = _ids(3, 2, 4)
    with pytest.raises(ValueError, match="expert_map"):
        if api == "align":
            moe_align_block_size(ids, 4, 4, emap)
        elif api == "permute":
            moe_permute(torch.randn(3, 8), ids, 4, emap)
        elif api == "permute_explicit_l":
            moe_permute(torch.randn(3, 8), ids, 4, emap, num_local_experts=2)
        else:
            x, w13, w2, w, _ = _experts_args(3, 2, 2)
            fused_experts(x, w13, w2, w, ids, expert_map=emap)


def test_expert_map_int32_message_says_so(monkeypatch):
    monkeypatch.setattr(launch, "INPUT_CHECKS", True)
    emap = torch.tensor([0, 2**40], dtype=torch.int64)
    with pytest.raises(ValueError, match="int32"):
        moe_align_block_size(_ids(2, 1, 2), 4, 2, emap)
    with pytest.raises(ValueError, match="int32"):
        moe_permute(torch.randn(2, 8), _ids(2, 1, 2), 2, emap, num_local_experts=1)


DTYPE_MISTAKES = [
    ("align ids float", lambda: moe_align_block_size(torch.zeros(2, 2), 16, 8)),
    ("align map float", lambda: moe_align_block_size(_ids(2, 2, 8), 16, 8, torch.zeros(8))),
    ("topk logits int", lambda: fused_topk(torch.zeros(2, 8, dtype=torch.int32), 2, True)),
    ("permute ids float", lambda: moe_permute(torch.randn(2, 8), torch.zeros(2, 2), 8)),
    ("permute map float", lambda: moe_permute(torch.randn(2, 8), _ids(2, 2, 8), 8, torch.zeros(8))),
    ("permute hidden int", lambda: moe_permute(torch.zeros(2, 8, dtype=torch.int32), _ids(2, 2, 8), 8)),
    (
        "unpermute inv int64",
        lambda: moe_unpermute(torch.randn(4, 8), torch.rand(2, 2), torch.zeros(2, 2, dtype=torch.int64)),
    ),
    (
        "unpermute out int",
        lambda: moe_unpermute(
            torch.randn(4, 8),
            torch.rand(2, 2),
            torch.zeros(2, 2, dtype=torch.int32),
            out=torch.zeros(2, 8, dtype=torch.int32),
        ),
    ),
    (
        "experts weights int",
        lambda: fused_experts(*_experts_args(2, 2, 8)[:3], torch.ones(2, 2).int(), _ids(2, 2, 8)),
    ),
]


@pytest.mark.parametrize("name,call", DTYPE_MISTAKES, ids=[c[0] for c in DTYPE_MISTAKES])
def test_dtype_mistakes_are_type_errors(name, call):
    with pytest.raises(TypeError):
        call()


SHAPE_MISTAKES = [
    (
        "align map length",
        lambda: moe_align_block_size(_ids(2, 2, 8), 16, 8, torch.zeros(7, dtype=torch.int32)),
    ),
    ("align ids 3d", lambda: moe_align_block_size(torch.zeros(1, 2, 2, dtype=torch.int32), 16, 8)),
    ("permute rows", lambda: moe_permute(torch.randn(3, 8), _ids(2, 2, 8), 8)),
    ("topk bias length", lambda: fused_topk(torch.randn(2, 8), 2, True, "sigmoid", torch.zeros(7))),
    (
        "unpermute shapes",
        lambda: moe_unpermute(torch.randn(4, 8), torch.rand(2, 2), torch.zeros(3, 2, dtype=torch.int32)),
    ),
    (
        "experts w2",
        lambda: fused_experts(*(lambda a: (a[0], a[1], a[2][:, :4], a[3], a[4]))(_experts_args(2, 2, 8))),
    ),
]


@pytest.mark.parametrize("name,call", SHAPE_MISTAKES, ids=[c[0] for c in SHAPE_MISTAKES])
def test_shape_mistakes_are_value_errors(name, call):
    with pytest.raises(ValueError):
        call()
