"""MoE routing kernels under the interpreter, against vLLM 0.32's own references where it has them
(native `grouped_topk`, the CPU router's softmax/bias top-k, `moe_align_block_size`'s Python
wrapper) and against this module's torch references for the documented edge cases.

The interpreter runs max-reductions element by element, so shapes are small: few token rows,
full expert counts (the model shapes), one case per axis combination."""

import re
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_ascend_triton.codegen.lower import LoweringRequest, lower_many
from vllm_ascend_triton.codegen.report import parse_adapter_ir
from vllm_ascend_triton.kernels import fused_topk, grouped_topk, moe_align_block_size
from vllm_ascend_triton.kernels import moe_routing as mr
from vllm_ascend_triton.kernels.moe_routing import _kernels as mrk
from vllm_ascend_triton.kernels.moe_routing.checks import self_check
from vllm_ascend_triton.kernels.moe_sort import jit as sort_jit
from vllm_ascend_triton.runtime.sku import get_sku

ATOL = 1e-5


# ------------------------------------------------------------------------------------------
# vLLM's references
# ------------------------------------------------------------------------------------------


def _vllm_native_grouped_topk():
    from vllm.model_executor.layers.fused_moe.router import grouped_topk_router

    fn = grouped_topk_router.grouped_topk
    # It is wrapped in torch.compile; the reference semantics are the undecorated function.
    return getattr(fn, "_torchdynamo_orig_callable", None) or fn.__wrapped__


def vllm_grouped(logits, topk, renormalize, groups, topk_group, scoring, bias=None, scale=1.0):
    fn = _vllm_native_grouped_topk()
    return fn(logits, logits, topk, renormalize, groups, topk_group, scoring, scale, bias)


def vllm_fused(logits, topk, renormalize, scoring="softmax", bias=None, scale=1.0):
    """vLLM's fused top-k semantics on CPU: the CPU router's plain softmax top-k, and for sigmoid or
    a correction bias its grouped top-k with a single group (select by score + bias, weights
    from the unbiased scores, renormalize, then scale) -- the torch path of `fused_topk_bias`."""
    from vllm.model_executor.layers.fused_moe.router import cpu_router

    if scoring == "softmax" and bias is None and scale == 1.0:
        return cpu_router._softmax_topk(logits, topk, renormalize)
    return cpu_router._grouped_topk(logits, topk, renormalize, 1, 1, scoring, scale, bias)


def by_id(weights, ids):
    """Rows ordered by expert id (vLLM's top-k uses sorted=False: its order is unspecified)."""
    order = ids.long().argsort(dim=1)
    return weights.gather(1, order), ids.long().gather(1, order)


def assert_same_routing(actual, expected, atol=ATOL):
    (w, i), (we, ie) = by_id(*actual), by_id(*expected)
    assert torch.equal(i, ie), f"ids differ:\n{actual[1]}\n{expected[1]}"
    torch.testing.assert_close(w, we.float(), atol=atol, rtol=0)


def check_outputs(out, m, k):
    weights, ids = out
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.shape == ids.shape == (m, k)


# ------------------------------------------------------------------------------------------
# fused_topk
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m, e, k, renorm, dtype",
    [
        (7, 8, 2, True, torch.float32),  # Mixtral 8x2
        (3, 128, 8, True, torch.float16),  # Qwen3-30B-A3B 128x8
        (2, 60, 4, False, torch.float32),  # Qwen1.5-MoE-A2.7B, not a power of two
        (1, 512, 16, True, torch.float32),  # the largest supported pair
    ],
)
def test_fused_topk_softmax_matches_vllm(m, e, k, renorm, dtype):
    logits = torch.randn(m, e).to(dtype)
    out = fused_topk(logits, k, renorm)
    check_outputs(out, m, k)
    # Our scores are computed in fp32 whatever the input dtype.
    assert_same_routing(out, vllm_fused(logits.float(), k, renorm))
    ref = mr.grouped_topk_ref(logits, k, renorm)
    assert torch.equal(out[1], ref[1])  # descending order, exactly
    torch.testing.assert_close(out[0], ref[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "m, e, k, scoring, with_bias, renorm, scale",
    [
        (5, 8, 2, "sigmoid", False, True, 1.0),
        (3, 64, 6, "sigmoid", True, True, 2.5),
        (4, 37, 5, "softmax", True, False, 1.5),
        (2, 128, 8, "softmax", False, True, 2.5),
    ],
)
def test_fused_topk_sigmoid_bias_scaling_match_vllm(m, e, k, scoring, with_bias, renorm, scale):
    logits = torch.randn(m, e)
    # A bias large enough to change the choice, so selection-by-biased-score is really tested.
    bias = torch.randn(e) * 0.5 if with_bias else None
    out = fused_topk(logits, k, renorm, scoring, bias, scale)
    check_outputs(out, m, k)
    assert_same_routing(out, vllm_fused(logits, k, renorm, scoring, bias, scale))
    if with_bias:  # weights are the unbiased scores of the chosen experts
        scores = logits.sigmoid() if scoring == "sigmoid" else logits.softmax(-1)
        unbiased = scores.gather(1, out[1].long())
        if renorm:
            unbiased = unbiased / unbiased.sum(-1, keepdim=True)
        torch.testing.assert_close(out[0], unbiased * scale, atol=ATOL, rtol=0)


def test_fused_topk_bf16_goes_through_fp32():
    logits = torch.randn(4, 32).to(torch.bfloat16)
    bias = (torch.randn(32) * 0.1).to(torch.bfloat16)
    out = fused_topk(logits, 4, True, "sigmoid", bias)
    assert_same_routing(out, vllm_fused(logits.float(), 4, True, "sigmoid", bias.float()))


def test_fused_topk_strided_rows():
    wide = torch.randn(6, 40)
    logits = wide[:, 3:35]  # row stride 40, last dim contiguous
    assert_same_routing(fused_topk(logits, 3, True), vllm_fused(logits.contiguous(), 3, True))


@pytest.mark.parametrize("fn", ["fused", "grouped"])
def test_empty_batch(fn):
    logits = torch.randn(0, 16)
    out = fused_topk(logits, 4, True) if fn == "fused" else grouped_topk(logits, 4, True, 4, 2)
    check_outputs(out, 0, 4)


# ------------------------------------------------------------------------------------------
# grouped_topk
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m, e, k, groups, topk_group, scoring, with_bias, renorm, scale",
    [
        (2, 256, 8, 8, 4, "sigmoid", True, True, 2.5),  # DeepSeek-V3 / R1
        (1, 256, 8, 8, 4, "softmax", False, True, 1.0),  # DeepSeek-V3 shape, softmax, decode
        (2, 160, 6, 8, 3, "softmax", False, False, 16.0),  # DeepSeek-V2: groups of 20 experts
        (3, 64, 4, 8, 3, "sigmoid", True, False, 1.0),
        (2, 96, 8, 3, 2, "softmax", True, True, 2.5),  # 3 groups of 32
    ],
)
def test_grouped_topk_matches_vllm_native(m, e, k, groups, topk_group, scoring, with_bias, renorm, scale):
    logits = torch.randn(m, e)
    bias = torch.randn(e) * 0.1 if with_bias else None
    out = grouped_topk(logits, k, renorm, groups, topk_group, scoring, bias, scale)
    check_outputs(out, m, k)
    assert_same_routing(out, vllm_grouped(logits, k, renorm, groups, topk_group, scoring, bias, scale))
    ref = mr.grouped_topk_ref(logits, k, renorm, groups, topk_group, scoring, bias, scale)
    assert torch.equal(out[1], ref[1])
    torch.testing.assert_close(out[0], ref[0], atol=ATOL, rtol=0)


def test_grouped_topk_fp16_logits():
    logits = torch.randn(2, 64).half()
    out = grouped_topk(logits, 4, True, 4, 2, "softmax")
    assert_same_routing(out, vllm_grouped(logits.float(), 4, True, 4, 2, "softmax"))


def test_grouped_topk_only_uses_chosen_groups():
    # Group 1 holds the single best expert, but groups 0 and 2 have the best group scores
    # (sum of their top-2 + bias): experts must come from groups 0 and 2 only.
    logits = torch.full((1, 12), -4.0)
    logits[0, [0, 1, 8, 9]] = 2.0
    logits[0, 4] = 3.0
    out = grouped_topk(logits, 4, False, 3, 2, "sigmoid", torch.zeros(12))
    assert sorted(out[1][0].tolist()) == [0, 1, 8, 9]
    assert_same_routing(out, vllm_grouped(logits, 4, False, 3, 2, "sigmoid", torch.zeros(12)))


# ------------------------------------------------------------------------------------------
# Edge cases: ties, non-finite logits
# ------------------------------------------------------------------------------------------


def test_ties_lowest_expert_index_wins():
    logits = torch.tensor(
        [
            [0.0] * 16,
            [1.0, 3.0, 3.0, 0.0, 3.0, 2.0, 2.0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0],
            [5.0] * 8 + [7.0] * 8,
        ]
    )
    weights, ids = fused_topk(logits, 4, False)
    assert ids.tolist() == [[0, 1, 2, 3], [1, 2, 4, 5], [8, 9, 10, 11]]
    torch.testing.assert_close(weights[0], torch.full((4,), 1 / 16), atol=ATOL, rtol=0)
    # Repeated calls give the same answer (no atomics, no order dependence).
    assert torch.equal(fused_topk(logits, 4, False)[1], ids)


def test_tied_groups_lowest_group_wins():
    logits = torch.zeros(2, 16)
    logits[1, 12:] = 1.0  # group 3 is best; groups 0..2 tie for second place
    _, ids = grouped_topk(logits, 4, True, 4, 2, "softmax")
    assert ids[0].tolist() == [0, 1, 2, 3]  # all groups tie: groups 0 and 1, lowest ids first
    assert sorted(ids[1].tolist()) == [12, 13, 14, 15]
    _, ids = grouped_topk(logits, 6, True, 4, 2, "softmax")
    assert ids[1].tolist() == [12, 13, 14, 15, 0, 1]  # group 0 wins the tie for the second slot


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_non_finite_logits(scoring):
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor(
        [
            [nan, 1.0, nan, 0.5, -1.0, 2.0, nan, 0.0],  # NaN counts as -inf
            [0.0, inf, 1.0, inf, -inf, 0.0, 0.0, 0.0],  # +inf experts win
            [-inf] * 8,  # nothing finite
            [nan] * 8,
        ]
    )
    weights, ids = fused_topk(logits, 3, True, scoring)
    assert torch.isfinite(weights).all()
    assert ids[0].tolist() == [5, 1, 3]
    # softmax: every finite expert has probability exactly 0 next to +inf ones, a tie -> expert 0
    assert ids[1].tolist() == ([1, 3, 0] if scoring == "softmax" else [1, 3, 2])
    assert ids[2].tolist() == ids[3].tolist() == [0, 1, 2]
    ref = mr.grouped_topk_ref(logits, 3, True, scoring_func=scoring)
    assert torch.equal(ids, ref[1])
    torch.testing.assert_close(weights, ref[0], atol=ATOL, rtol=0)
    if scoring == "softmax":  # +inf experts share the mass; no finite logit: uniform
        torch.testing.assert_close(weights[1, :2], torch.tensor([0.5, 0.5]), atol=ATOL, rtol=0)
        torch.testing.assert_close(weights[2], torch.full((3,), 1 / 3), atol=ATOL, rtol=0)
    else:  # sigmoid(-inf) = 0 everywhere: renormalizing leaves zeros, not NaN
        assert weights[2].tolist() == [0.0, 0.0, 0.0]


def test_non_finite_logits_grouped():
    logits = torch.randn(2, 32)
    logits[0, :8] = float("nan")
    logits[1, 8:16] = float("inf")
    bias = torch.randn(32) * 1e-3  # small: sigmoid(+inf) + bias beats every finite expert
    weights, ids = grouped_topk(logits, 4, True, 4, 2, "sigmoid", bias)
    ref = mr.grouped_topk_ref(logits, 4, True, 4, 2, "sigmoid", bias)
    assert torch.equal(ids, ref[1])
    assert not torch.isin(ids[0], torch.arange(8)).any()  # the NaN group is never preferred
    assert torch.isin(ids[1], torch.arange(8, 16)).all()
    torch.testing.assert_close(weights, ref[0], atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda g: fused_topk(g, 17, True), "topk"),
        (lambda g: fused_topk(g.double(), 2, True), "gating_output"),
        (lambda g: fused_topk(g.to(torch.int32), 2, True), "gating_output"),
        (lambda g: fused_topk(g[0], 2, True), "gating_output"),
        (lambda g: fused_topk(g, 2, True, "relu"), "scoring_func"),
        (lambda g: fused_topk(g, 2, True, "sigmoid", torch.zeros(15)), "e_score_correction_bias"),
        (
            lambda g: fused_topk(g, 2, True, "sigmoid", torch.zeros(16, dtype=torch.int64)),
            "e_score_correction_bias",
        ),
        (lambda g: fused_topk(g, 0, True), "topk"),
        (lambda g: grouped_topk(g, 2, True, 3, 1), "num_expert_group"),  # 3 does not divide 16
        (lambda g: grouped_topk(g, 2, True, 4, 5), "topk_group"),
        (lambda g: grouped_topk(g, 9, True, 4, 2), "topk"),  # only 2 groups of 4 experts kept
        (lambda g: grouped_topk(g, 2, True, 16, 4, "sigmoid", torch.zeros(16)), "2 experts per group"),
        (lambda g: grouped_topk(g.half().to(torch.int16), 2, True, 4, 2), "gating_output"),
    ],
)
def test_bad_routing_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(4, 16))


def test_bad_argument_types_raise_type_error():
    g = torch.randn(4, 16)
    with pytest.raises(TypeError, match="topk"):
        fused_topk(g, 2.0, True)
    with pytest.raises(TypeError, match="renormalize"):
        fused_topk(g, 2, 1)
    with pytest.raises(TypeError, match="routed_scaling_factor"):
        fused_topk(g, 2, True, routed_scaling_factor="2")
    with pytest.raises(TypeError, match="gating_output"):
        fused_topk(g.numpy(), 2, True)
    with pytest.raises(TypeError, match="gating_output"):  # a wrong dtype is both
        fused_topk(g.double(), 2, True)


# ------------------------------------------------------------------------------------------
# moe_align_block_size
# ------------------------------------------------------------------------------------------


def _cuda_op_semantics(
    topk_ids,
    num_experts,
    block_size,
    sorted_ids,
    expert_ids,
    num_tokens_post_pad,
    expert_map=None,
    scatter_idx=None,
):
    """Stand-in for `torch.ops._moe_C.moe_align_block_size` (not built into vLLM's CPU wheel):
    fills vLLM's buffers as its CUDA kernels do -- sentinel numel everywhere, routes of each
    expert in ascending flat index, each expert padded to a block, inactive blocks -1."""
    assert expert_map is None and scatter_idx is None  # the wrapper maps experts itself
    flat = topk_ids.reshape(-1).long()
    sorted_ids.fill_(flat.numel())
    expert_ids.fill_(-1)
    valid = (flat >= 0) & (flat < num_experts)
    counts = torch.bincount(flat[valid], minlength=num_experts)
    padded = (counts + block_size - 1) // block_size * block_size
    starts = torch.cumsum(padded, 0) - padded
    order = torch.argsort(torch.where(valid, flat, num_experts), stable=True)[: int(valid.sum())]
    rank = torch.arange(order.numel()) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    sorted_ids[starts.repeat_interleave(counts) + rank] = order.to(torch.int32)
    blocks = (padded // block_size).tolist()
    expert_ids[: sum(blocks)] = torch.repeat_interleave(torch.arange(num_experts), torch.tensor(blocks)).to(
        torch.int32
    )
    num_tokens_post_pad[0] = int(padded.sum())


def vllm_align(monkeypatch, topk_ids, block_size, num_experts, expert_map=None, pad_sorted_ids=False):
    from vllm.model_executor.layers.fused_moe import moe_align_block_size as module

    monkeypatch.setattr(module, "ops", types.SimpleNamespace(moe_align_block_size=_cuda_op_semantics))
    return module.moe_align_block_size(topk_ids, block_size, num_experts, expert_map, pad_sorted_ids)


ALIGN_CASES = [
    # m, k, experts, block_size, ids dtype, expert-parallel map, pad_sorted_ids
    (5, 2, 8, 16, torch.int32, False, False),  # Mixtral decode-ish
    (9, 8, 128, 16, torch.int32, False, True),  # Qwen3: fewer routes than experts
    (33, 8, 256, 64, torch.int64, True, False),  # DeepSeek-V3 with EP (half the experts local)
    (13, 3, 10, 5, torch.int64, False, True),  # odd sizes
    (700, 8, 8, 32, torch.int32, True, True),  # many tiles: the scan runs several steps
    (96, 8, 256, 16, torch.int32, False, False),  # 48 tiles on 40 cores: runs of 2 tiles, idle programs
    (1, 4, 512, 128, torch.int32, False, False),  # one token, the largest expert count
]


@pytest.mark.parametrize("m, k, e, block_size, dtype, with_map, pad", ALIGN_CASES)
def test_moe_align_matches_vllm_layout(monkeypatch, m, k, e, block_size, dtype, with_map, pad):
    topk_ids = torch.stack([torch.randperm(e)[:k] for _ in range(m)]).to(dtype)
    expert_map = None
    if with_map:  # this rank owns the odd experts
        expert_map = torch.full((e,), -1, dtype=torch.int32)
        expert_map[1::2] = torch.arange(e // 2, dtype=torch.int32)
    sorted_ids, expert_ids, post_pad = moe_align_block_size(topk_ids, block_size, e, expert_map, pad)
    v_sorted, v_experts, v_post = vllm_align(monkeypatch, topk_ids, block_size, e, expert_map, pad)
    assert sorted_ids.dtype == expert_ids.dtype == post_pad.dtype == torch.int32
    assert sorted_ids.shape == v_sorted.shape and expert_ids.shape == v_experts.shape
    assert torch.equal(sorted_ids, v_sorted)
    assert torch.equal(post_pad, v_post)
    used = int(post_pad) // block_size
    # vLLM's wrapper indexes expert_map with the -1 of unused blocks (wrapping to the last
    # expert's entry); those blocks lie past num_tokens_post_pad and are -1 here.
    assert torch.equal(expert_ids[:used], v_experts[:used])
    assert (expert_ids[used:] == -1).all()
    if not with_map:
        assert torch.equal(expert_ids, v_experts)
    for got, want in zip(
        (sorted_ids, expert_ids, post_pad),
        mr.moe_align_block_size_ref(topk_ids, block_size, e, expert_map, pad),
        strict=True,
    ):
        assert torch.equal(got, want)


def test_moe_align_vllm_docstring_example():
    # The example in vLLM's wrapper docstring (its ids run 1..4, i.e. five experts).
    topk_ids = torch.tensor([[2, 3, 4], [1, 2, 4], [1, 3, 4], [1, 2, 3]], dtype=torch.int32)
    sorted_ids, expert_ids, post_pad = moe_align_block_size(topk_ids, 4, 5)
    assert sorted_ids[:16].tolist() == [3, 6, 9, 12, 0, 4, 10, 12, 1, 7, 11, 12, 2, 5, 8, 12]
    assert (sorted_ids[16:] == 12).all() and sorted_ids.numel() == 12 + 5 * 3
    assert expert_ids[:4].tolist() == [1, 2, 3, 4] and (expert_ids[4:] == -1).all()
    assert post_pad.tolist() == [16]


def test_moe_align_repeated_experts_and_out_of_range_ids(monkeypatch):
    # Duplicated expert ids in a row, and ids outside [0, E) which vLLM's kernels skip.
    topk_ids = torch.tensor([[3, 3], [0, 3], [-1, 8], [3, 0], [9, 2]], dtype=torch.int32)
    sorted_ids, expert_ids, post_pad = moe_align_block_size(topk_ids, 2, 8)
    v_sorted, v_experts, v_post = vllm_align(monkeypatch, topk_ids, 2, 8)
    assert (
        torch.equal(sorted_ids, v_sorted)
        and torch.equal(expert_ids, v_experts)
        and torch.equal(post_pad, v_post)
    )
    assert sorted_ids[:8].tolist() == [2, 7, 9, 10, 0, 1, 3, 6]  # stable within each expert


@pytest.mark.parametrize("m", [0, 1])
def test_moe_align_tiny_batches(monkeypatch, m):
    topk_ids = torch.randint(0, 16, (m, 4), dtype=torch.int32)
    out = moe_align_block_size(topk_ids, 8, 16)
    ref = vllm_align(monkeypatch, topk_ids, 8, 16)
    for got, want in zip(out, ref, strict=True):
        assert got.shape == want.shape and torch.equal(got, want)
    assert int(out[2]) == 8 * len(set(topk_ids.flatten().tolist()))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda ids: moe_align_block_size(ids.float(), 16, 8), ValueError, "topk_ids"),
        (lambda ids: moe_align_block_size(ids.to(torch.int16), 16, 8), ValueError, "topk_ids"),
        (lambda ids: moe_align_block_size(ids, 0, 8), ValueError, "block_size"),
        (lambda ids: moe_align_block_size(ids, 16, 0), ValueError, "num_experts"),
        (lambda ids: moe_align_block_size(ids, 16, 2048), ValueError, "num_experts"),
        (
            lambda ids: moe_align_block_size(ids, 16, 8, torch.zeros(7, dtype=torch.int32)),
            ValueError,
            "expert_map",
        ),
        (lambda ids: moe_align_block_size(ids, 16, 8, torch.zeros(8)), ValueError, "expert_map"),
        (lambda ids: moe_align_block_size(ids, 16.0, 8), TypeError, "block_size"),
        (lambda ids: moe_align_block_size(ids, 16, 8, pad_sorted_ids=1), TypeError, "pad_sorted_ids"),
    ],
)
def test_moe_align_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(torch.zeros(4, 2, dtype=torch.int32))


def _guarded(n, dtype, fill):
    """A buffer of n elements followed by canaries: a kernel writing past its output shows up."""
    full = torch.full((n + 64,), fill, dtype=dtype)
    return full, full[:n]


def test_align_kernels_stay_inside_their_buffers():
    # Direct launches with canaries after every output: masked edges must not be written
    # (the interpreter writes int64-widened int32 reductions 8 bytes per element).
    numel, e, block_size = 39, 10, 5
    ids = torch.stack([torch.randperm(e)[:3] for _ in range(13)]).reshape(-1)  # int64
    size = mr.max_num_tokens_padded(numel, block_size, e, True)
    num_blocks = -(-size // block_size)
    counts_full, counts = _guarded(e, torch.int32, -77)
    sorted_full, sorted_ids = _guarded(size, torch.int32, -77)
    experts_full, expert_ids = _guarded(num_blocks, torch.int32, -77)
    post_full, post_pad = _guarded(1, torch.int32, -77)
    emap = torch.arange(e, dtype=torch.int32)
    # The shared sort: one run (one program) counts, the layout fills, the run scatters.
    sort_jit._sort_count_kernel[(1,)](
        ids, ids, counts, numel, e, e, 1, HAS_MAP=False, BLOCK_N=64, BLOCK_B=16, BLOCK_I=1
    )
    mrk._align_layout_kernel[(2,)](
        counts,
        emap,
        sorted_ids,
        expert_ids,
        post_pad,
        1,
        e,
        block_size,
        numel,
        size,
        num_blocks,
        HAS_MAP=True,
        BLOCK_E=16,
        BLOCK_B=64,
        BLOCK_S=64,
    )
    sort_jit._sort_scatter_kernel[(1,)](
        ids,
        ids,
        counts,
        sorted_ids,
        sorted_ids,
        1,
        numel,
        e,
        e,
        block_size,
        1,
        HAS_MAP=False,
        WRITE_INV=False,
        BLOCK_N=64,
        BLOCK_B=16,
        BLOCK_I=1,
    )
    for full, n in ((counts_full, e), (sorted_full, size), (experts_full, num_blocks), (post_full, 1)):
        assert (full[n:] == -77).all()
    ref = mr.moe_align_block_size_ref(ids, block_size, e, emap, True)
    assert (
        torch.equal(sorted_ids, ref[0]) and torch.equal(expert_ids, ref[1]) and torch.equal(post_pad, ref[2])
    )


def test_topk_kernel_persistent_loop_and_bounds():
    # 9 rows in tiles of 2 on a grid of 2: each program loops over several tiles, the last tile
    # is half empty, and nothing past the outputs is written.
    m, e, k = 9, 10, 3
    logits = torch.randn(m, e)
    w_full, weights = _guarded(m * k, torch.float32, -77.0)
    i_full, ids = _guarded(m * k, torch.int32, -77)
    mrk._topk_routing_kernel[(2,)](
        logits,
        logits,
        weights,
        ids,
        m,
        e,
        e,
        5,
        1.0,
        TOPK=k,
        BLOCK_K=4,
        BLOCK_M=2,
        BLOCK_E=16,
        SIGMOID=False,
        HAS_BIAS=False,
        RENORMALIZE=True,
        NUM_GROUPS=2,
        TOPK_GROUP=1,
    )
    assert (w_full[m * k :] == -77.0).all() and (i_full[m * k :] == -77).all()
    ref = mr.grouped_topk_ref(logits, k, True, 2, 1)
    assert torch.equal(ids.view(m, k), ref[1])
    torch.testing.assert_close(weights.view(m, k), ref[0], atol=ATOL, rtol=0)


@settings(max_examples=12, deadline=None)
@given(
    m=st.integers(0, 40),
    k=st.integers(1, 8),
    e=st.integers(1, 300),
    block_size=st.sampled_from([1, 3, 16, 64]),
    with_map=st.booleans(),
    pad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_moe_align_random_layouts(m, k, e, block_size, with_map, pad, seed):
    gen = torch.Generator().manual_seed(seed)
    topk_ids = torch.randint(0, e, (m, k), generator=gen, dtype=torch.int32)  # repeats allowed
    expert_map = None
    if with_map:
        expert_map = torch.where(torch.rand(e, generator=gen) < 0.5, torch.arange(e), -1).to(torch.int32)
    out = moe_align_block_size(topk_ids, block_size, e, expert_map, pad)
    ref = mr.moe_align_block_size_ref(topk_ids, block_size, e, expert_map, pad)
    for got, want in zip(out, ref, strict=True):
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------
# self_check and lowering for Ascend
# ------------------------------------------------------------------------------------------


def test_self_check_passes():
    results = self_check()
    assert len(results) >= 4 and all(r.ok for r in results), [r for r in results if not r.ok]


@pytest.fixture(scope="module")
def lowered_910b3():
    from vllm_ascend_triton.codegen.compile import variant_specs

    requests = [
        LoweringRequest.from_spec(vs.spec, "Ascend910B3", vs.label)
        for vs in variant_specs("Ascend910B3", ["moe_routing"])
    ]
    return list(zip(requests, lower_many(requests, jobs=2), strict=True))


@pytest.mark.slow
def test_every_routing_kernel_lowers_for_910b3(lowered_910b3):
    labels = {req.label for req, _ in lowered_910b3}
    for kernel in (
        "fused_topk",
        "grouped_topk",
        "moe_sort_count",  # the MoE counting sort shared with moe_permute (issue 12)
        "moe_align_layout",
        "moe_sort_scatter",
    ):
        assert any(label.startswith(kernel) for label in labels), kernel
    ub = get_sku("Ascend910B3").ub_bytes
    for req, result in lowered_910b3:
        assert result.ok, f"{req.label}: {result.error}"
        report = parse_adapter_ir(result.ttadapter)
        assert report.mix_mode == "aiv", req.label  # vector cores only
        assert report.fits_ub(ub), (req.label, report.ub_bytes)
        if req.label.startswith(("fused_topk", "grouped_topk")):
            # Tile bases are int64 products (rows x stride may pass 2^31 elements).
            assert re.search(r"tt\.addptr %arg\d+, %\w+ : !tt\.ptr<\w+>, i64", result.ttir), req.label
        # Only the align scatter (a permutation) writes through computed addresses.
        if req.label.startswith("moe_sort_scatter"):
            assert 0 < report.discrete_accesses <= 3, (req.label, report.discrete_accesses)
        else:
            assert report.discrete_accesses == 0, (req.label, report.discrete_accesses)
