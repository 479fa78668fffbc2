"""The pure balance plan: determinism, bounds, gate semantics, starvation escalation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_ascend_triton.scheduler.plan import (
    UNLIMITED,
    BalanceParams,
    LoadVector,
    RankPlan,
    compute_plan,
    escalation_levels,
    starvation_bound,
)

BUDGET = 8192


def lv(decode=0, run_pf=0, wait_pf=0, running=0, waiting=0, free=128, starve=0, ctx=0) -> LoadVector:
    return LoadVector(decode, run_pf, wait_pf, running, waiting, free, starve, ctx)


vectors = st.builds(
    LoadVector,
    st.integers(0, 256),
    st.integers(0, 20000),
    st.integers(0, 20000),
    st.integers(0, 256),
    st.integers(0, 512),
    st.integers(0, 256),
    st.integers(0, 64),
    st.integers(0, 10**6),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(vectors, min_size=1, max_size=16))
def test_plan_bounds(loads: list[LoadVector]) -> None:
    params = BalanceParams()
    plan = compute_plan(loads, params, BUDGET)
    assert len(plan) == len(loads)
    # A pure function of the snapshot: every rank computes the same plan.
    assert compute_plan(list(loads), params, BUDGET) == plan
    if len(loads) == 1:
        assert plan == [UNLIMITED]
        return
    for load, p in zip(loads, plan, strict=True):
        assert p.admit_new
        if p.prefill_allowance is None:
            continue
        room = max(0, BUDGET - load.decode_tokens)
        assert 0 <= p.prefill_allowance <= room
        # Small pending prefill always goes; after escalate_steps cut steps so does a chunk.
        if load.prefill_pending <= params.min_chunk or load.starve_steps >= params.escalate_steps:
            assert p.prefill_allowance >= min(params.min_chunk, room)


def test_equal_level_fills_light_ranks_and_chunks_heavy_ones() -> None:
    # 8 ranks; 5 have 3000 pending prefill tokens, one 20000, one 1000, one none.
    loads = (
        [lv(decode=100, wait_pf=3000)] * 5
        + [lv(decode=100, wait_pf=20000)]
        + [lv(decode=100, wait_pf=1000), lv(decode=100)]
    )
    plan = compute_plan(loads, BalanceParams(quorum=0.75), BUDGET)
    # Level = 6th largest total = 100 + 3000: the heavy rank is chunked to that level,
    # the others may fill up to it.
    assert [p.prefill_allowance for p in plan] == [3000] * 8


def test_lone_long_prefill_waits_then_escalates() -> None:
    params = BalanceParams(min_chunk=512, escalate_steps=4, quorum=0.75)
    lone = [lv(decode=128, run_pf=3500)] + [lv(decode=128)] * 7
    assert compute_plan(lone, params, BUDGET)[0] == RankPlan(0, True)
    starved = [lv(decode=128, run_pf=3500, starve=4)] + [lv(decode=128)] * 7
    assert compute_plan(starved, params, BUDGET)[0] == RankPlan(512, True)
    # A short prompt is never held back: its padding costs little.
    short = [lv(decode=128, wait_pf=300)] + [lv(decode=128)] * 7
    assert compute_plan(short, params, BUDGET)[0] == RankPlan(512, True)


def test_nothing_pending_means_unlimited() -> None:
    loads = [lv(decode=50)] * 4
    assert compute_plan(loads, BalanceParams(), BUDGET) == [UNLIMITED] * 4


def test_escalation_doubles_then_unlimited() -> None:
    params = BalanceParams(min_chunk=512, escalate_steps=8)
    assert escalation_levels(params, BUDGET) == 4
    assert starvation_bound(params, BUDGET) == 41
    got = []
    for starve in (0, 7, 8, 16, 24, 32, 39, 40):
        loads = [lv(decode=0, run_pf=50000, starve=starve)] + [lv()] * 7
        got.append(compute_plan(loads, params, BUDGET)[0].prefill_allowance)
    assert got == [0, 0, 512, 1024, 2048, 4096, 4096, None]


def test_gate_blocks_admission_while_any_rank_is_full() -> None:
    params = BalanceParams(mode="gate", max_num_seqs=4)
    full = [lv(running=4), lv(running=1, wait_pf=100)]
    assert compute_plan(full, params, BUDGET) == [RankPlan(None, False)] * 2
    free = [lv(running=3), lv(running=1, wait_pf=100)]
    assert compute_plan(free, params, BUDGET) == [UNLIMITED] * 2


def test_params_validation() -> None:
    with pytest.raises(ValueError):
        BalanceParams(mode="nope")
    with pytest.raises(ValueError):
        BalanceParams(min_chunk=0)
    with pytest.raises(ValueError):
        BalanceParams(quorum=0.0)
    with pytest.raises(ValueError):
        BalanceParams(escalate_steps=0)
