"""Property tests of every public MoE kernel against the torch references (hypothesis,
derandomized so CI is reproducible; few examples of small shapes, for the interpreter's sake).

Each draws shapes, dtypes and adversarial values (ids outside [0, E), -1, int64 ids that wrap to
valid int32 ids, expert_map entries outside [-1, L), NaN/inf logits) and checks both modes:
checks on -> a clear ValueError exactly when the data is out of contract (align keeps vLLM's
"skip out-of-range ids" even then); checks off -> the documented defined result, equal to the
reference of the contract."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vllm_ascend_triton.kernels import (
    fused_experts,
    fused_topk,
    grouped_topk,
    moe_align_block_size,
    moe_permute,
    moe_unpermute,
)
from vllm_ascend_triton.kernels.fused_moe.reference import (
    fused_experts_ref,
    moe_permute_ref,
    moe_unpermute_ref,
)
from vllm_ascend_triton.kernels.moe_routing.reference import grouped_topk_ref, moe_align_block_size_ref
from vllm_ascend_triton.runtime import launch

FEW = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
# The sort is cheap on the interpreter: more examples there.
MORE = settings(FEW, max_examples=16)
checks_mode = st.sampled_from(["1", "0"])


def _checks(mode: str):
    return launch.input_checks(mode == "1")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _with_specials(x: torch.Tensor, specials: list[tuple[int, int, float]]) -> torch.Tensor:
    for r, c, v in specials:
        x[r % x.shape[0], c % x.shape[1]] = v
    return x


specials = st.lists(
    st.tuples(
        st.integers(0, 63), st.integers(0, 63), st.sampled_from([float("nan"), float("inf"), -float("inf")])
    ),
    max_size=4,
)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns of floats (NaN rows compare equal when copied bit for bit)."""
    return t.view(torch.int8) if t.is_floating_point() and t.numel() else t


def _assert_routing(out, ref):
    assert torch.equal(out[1], ref[1]), (out[1], ref[1])
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=0)


@FEW
@given(
    m=st.integers(0, 6),
    e=st.integers(1, 64),
    k=st.integers(1, 8),
    scoring=st.sampled_from(["softmax", "sigmoid"]),
    with_bias=st.booleans(),
    renorm=st.booleans(),
    scale=st.sampled_from([1.0, 2.5]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    bad=specials,
    seed=st.integers(0, 2**16),
)
def test_fused_topk_property(m, e, k, scoring, with_bias, renorm, scale, dtype, bad, seed):
    k = min(k, e)
    logits = _with_specials(torch.randn(max(m, 1), e, generator=_gen(seed)), bad)[:m].to(dtype)
    bias = torch.randn(e, generator=_gen(seed + 1)) * 0.1 if with_bias else None
    out = fused_topk(logits, k, renorm, scoring, bias, scale)
    _assert_routing(out, grouped_topk_ref(logits, k, renorm, 1, 1, scoring, bias, scale))


@FEW
@given(
    m=st.integers(1, 5),
    groups=st.sampled_from([2, 4]),
    group_size=st.integers(2, 8),
    topk_group=st.integers(1, 4),
    k=st.integers(1, 8),
    scoring=st.sampled_from(["softmax", "sigmoid"]),
    with_bias=st.booleans(),
    bad=specials,
    seed=st.integers(0, 2**16),
)
def test_grouped_topk_property(m, groups, group_size, topk_group, k, scoring, with_bias, bad, seed):
    topk_group = min(topk_group, groups)
    k = min(k, topk_group * group_size)
    e = groups * group_size
    logits = _with_specials(torch.randn(m, e, generator=_gen(seed)), bad)
    bias = torch.randn(e, generator=_gen(seed + 1)) * 0.1 if with_bias else None
    out = grouped_topk(logits, k, True, groups, topk_group, scoring, bias, 2.5)
    _assert_routing(out, grouped_topk_ref(logits, k, True, groups, topk_group, scoring, bias, 2.5))


def _hostile_ids(m: int, k: int, e: int, dtype: torch.dtype, hostile: bool, seed: int) -> torch.Tensor:
    gen = _gen(seed)
    ids = torch.randint(0, e, (m, k), generator=gen, dtype=torch.int64)
    if hostile and ids.numel():
        pick = torch.rand(m, k, generator=gen) < 0.3
        bad = torch.tensor(
            [-1, -7, e, e + 5, 2**31 - 1] + ([2**32 + 1, -(2**33)] if dtype == torch.int64 else [])
        )
        ids = torch.where(pick, bad[torch.randint(0, bad.numel(), (m, k), generator=gen)], ids)
    return ids.to(dtype)


def _hostile_map(e: int, num_local: int, dtype: torch.dtype, hostile: bool, seed: int) -> torch.Tensor:
    gen = _gen(seed)
    emap = torch.full((e,), -1, dtype=torch.int64)
    emap[torch.randperm(e, generator=gen)[:num_local]] = torch.randperm(num_local, generator=gen)
    if hostile:
        bad = [num_local, num_local + 3, -2, -100] + ([2**32 + 1] if dtype == torch.int64 else [])
        emap[torch.randint(0, e, (1,), generator=gen)] = bad[seed % len(bad)]
    return emap.to(dtype)


@MORE
@given(
    m=st.integers(0, 20),
    k=st.integers(1, 4),
    e=st.integers(1, 40),
    block_size=st.sampled_from([1, 4, 16]),
    with_map=st.booleans(),
    pad=st.booleans(),
    id_dtype=st.sampled_from([torch.int32, torch.int64]),
    hostile_ids=st.booleans(),
    hostile_map=st.booleans(),
    checks=checks_mode,
    seed=st.integers(0, 2**16),
)
def test_moe_align_property(
    m, k, e, block_size, with_map, pad, id_dtype, hostile_ids, hostile_map, checks, seed
):
    ids = _hostile_ids(m, k, e, id_dtype, hostile_ids, seed)
    emap = _hostile_map(e, max(1, e // 2), id_dtype, hostile_map, seed) if with_map else None
    bad_map = emap is not None and bool(((emap < -1) | (emap >= e)).any())
    event(f"checks={checks} bad_map={bad_map} bad_ids={bool(((ids < 0) | (ids >= e)).any())} m={m > 0}")
    with _checks(checks):
        if checks == "1" and bad_map:
            with pytest.raises(ValueError, match="expert_map"):
                moe_align_block_size(ids, block_size, e, emap, pad)
            return
        out = moe_align_block_size(ids, block_size, e, emap, pad)  # out-of-range ids: skipped
    for got, want in zip(out, moe_align_block_size_ref(ids, block_size, e, emap, pad), strict=True):
        assert torch.equal(got, want)


@MORE
@given(
    m=st.integers(0, 12),
    k=st.integers(1, 4),
    e=st.integers(1, 40),
    hidden=st.sampled_from([1, 8, 40]),
    num_local_share=st.sampled_from([None, 0.5]),
    id_dtype=st.sampled_from([torch.int32, torch.int64]),
    x_dtype=st.sampled_from([torch.float32, torch.float16]),
    hostile_ids=st.booleans(),
    hostile_map=st.booleans(),
    checks=checks_mode,
    seed=st.integers(0, 2**16),
)
def test_permute_unpermute_property(
    m, k, e, hidden, num_local_share, id_dtype, x_dtype, hostile_ids, hostile_map, checks, seed
):
    ids = _hostile_ids(m, k, e, id_dtype, hostile_ids, seed)
    num_local = max(1, int(e * num_local_share)) if num_local_share else None
    emap = _hostile_map(e, num_local, id_dtype, hostile_map, seed) if num_local else None
    x = _with_specials(torch.randn(max(m, 1), hidden, generator=_gen(seed)), [(0, 0, float("nan"))])[:m].to(
        x_dtype
    )
    bad = hostile_ids and bool(((ids < 0) | (ids >= e)).any())
    if emap is not None:
        bad = bad or bool(((emap < -1) | (emap >= num_local)).any())
    event(f"checks={checks} bad={bad} m={m > 0}")
    with _checks(checks):
        if checks == "1" and bad:
            with pytest.raises(ValueError):
                moe_permute(x, ids, e, emap, num_local)
            return
        got = moe_permute(x, ids, e, emap, num_local)
    ref = moe_permute_ref(x, ids, e, emap, num_local)
    for field in ref._fields:
        a, b = getattr(got, field), getattr(ref, field)
        assert a.shape == b.shape and torch.equal(_bits(a), _bits(b)), field

    # unpermute: weights with NaN on some entries, indices with out-of-range entries
    rows = m * k
    y = torch.randn(rows, hidden, generator=_gen(seed + 2)).to(x_dtype)
    w = torch.rand(m, k, generator=_gen(seed + 3))
    inv = got.inv_permuted_idx.clone()
    if hostile_ids and inv.numel():
        inv.view(-1)[0] = rows + 3
        w.view(-1)[0] = float("nan")  # the weight of the skipped entry
    bad_inv = bool(((inv < -1) | (inv >= rows)).any()) if inv.numel() else False
    with _checks(checks):
        if checks == "1" and bad_inv:
            with pytest.raises(ValueError, match="inv_permuted_idx"):
                moe_unpermute(y, w, inv)
            return
        out = moe_unpermute(y, w, inv)
    atol = 1e-5 if x_dtype == torch.float32 else 1e-2
    torch.testing.assert_close(
        out.float(), moe_unpermute_ref(y, w, inv).float(), atol=atol, rtol=0, equal_nan=True
    )


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(1, 6),
    e=st.integers(2, 6),
    k=st.integers(1, 3),
    with_map=st.booleans(),
    hostile_ids=st.booleans(),
    hostile_map=st.booleans(),
    checks=checks_mode,
    seed=st.integers(0, 2**16),
)
def test_fused_experts_property(m, e, k, with_map, hostile_ids, hostile_map, checks, seed):
    k = min(k, e)
    gen = _gen(seed)
    hidden, inter = 16, 16
    ids = _hostile_ids(m, k, e, torch.int32, hostile_ids, seed)
    num_local = max(1, e // 2) if with_map else e
    emap = _hostile_map(e, num_local, torch.int32, hostile_map, seed) if with_map else None
    x = torch.randn(m, hidden, generator=gen)
    w = torch.rand(m, k, generator=gen)
    w13 = torch.randn(num_local, 2 * inter, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(num_local, hidden, inter, generator=gen) / inter**0.5
    bad = hostile_ids and bool(((ids < 0) | (ids >= e)).any())
    if emap is not None:
        bad = bad or bool(((emap < -1) | (emap >= num_local)).any())
    event(f"checks={checks} bad={bad}")
    with _checks(checks):
        if checks == "1" and bad:
            with pytest.raises(ValueError):
                fused_experts(x, w13, w2, w, ids, expert_map=emap, global_num_experts=e)
            return
        out = fused_experts(x, w13, w2, w, ids, expert_map=emap, global_num_experts=e)
    ref = fused_experts_ref(x, w13, w2, w, ids, expert_map=emap, global_num_experts=e)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
