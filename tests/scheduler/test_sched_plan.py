"""The pure balance plan: determinism, bounds, deadline escalation, skew release, and the
anchor modes (vllm-ascend's gate, SGLang's prefill delayer)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_ascend_triton.scheduler.plan import (
    HOLD,
    UNLIMITED,
    BalanceParams,
    LoadVector,
    RankPlan,
    compute_plan,
    cost_hold,
    escalation_levels,
    starvation_bound,
    step_cost,
)

BUDGET = 8192


# Busy by default: 8 arrivals per rank per 64-step window, so a partner is expected
# within the hold (the low-load case sets arrivals=0 explicitly).
def lv(
    decode=0, run_pf=0, wait_pf=0, running=0, waiting=0, free=128, starve=0, ctx=0, arrivals=8, cost=(0, 0)
) -> LoadVector:
    return LoadVector(decode, run_pf, wait_pf, running, waiting, free, starve, ctx, arrivals, 0, *cost)


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
    st.integers(0, 64),
    st.integers(0, 8192),
    st.integers(0, 50_000),  # step fixed part, us
    st.integers(0, 500_000),  # step cost per token, ns (0: no estimate)
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
    saturated = any(x.num_waiting > x.free_slots for x in loads)
    backlog = params.backlog_share * params.max_num_seqs
    over_capacity = all(x.num_waiting > x.free_slots + backlog for x in loads)
    partner = sum(x.recent_arrivals for x in loads) * params.hold_steps >= params.arrival_window_steps
    top = escalation_levels(params, BUDGET)
    cost = step_cost(loads)
    for load, p in zip(loads, plan, strict=True):
        assert p.admit_new
        room = max(0, BUDGET - load.decode_tokens)
        age = load.starve_steps
        if over_capacity and any(x.prefill_pending for x in loads):
            if age >= params.backlog_hold_steps:
                assert p == UNLIMITED
            floor = params.min_chunk if load.prefill_pending <= params.min_chunk else 0
        elif saturated:
            if age // params.saturated_escalate_steps > top:
                assert p == UNLIMITED
            forced = load.prefill_pending <= params.min_chunk or age >= params.saturated_escalate_steps
            floor = params.min_chunk if forced else 0
        else:
            # The step-cost hold lies between hold_steps and max_hold_steps whatever the fit.
            hold = params.hold_steps
            if cost is not None:
                most = load.decode_tokens + min(room, load.prefill_pending)
                hold = cost_hold(params, cost, most, 0, 1.0)  # the longest it can be
                assert params.hold_steps <= hold <= params.max_hold_steps
            deadline = params.escalate_steps + hold - params.hold_steps
            if age >= deadline or (age < params.hold_steps and not partner):
                assert p == UNLIMITED  # deadline, or nobody to wait for: exactly vLLM
            if cost is None:
                left = params.escalate_steps - age
                past_hold = params.hold_steps <= age < params.escalate_steps
                floor = max(-(-load.prefill_pending // left), params.min_chunk) if past_hold else 0
            else:
                floor = 0
        if p.prefill_allowance is None:
            continue
        assert 0 <= p.prefill_allowance <= room
        assert p.prefill_allowance >= min(room, floor)


def test_deadline_escalation_and_bound() -> None:
    params = BalanceParams(
        min_chunk=512,
        escalate_steps=6,
        hold_steps=3,
        saturated_escalate_steps=2,
        backlog_hold_steps=8,
        continue_skewed=False,  # the escalation schedule itself (the continuation: below)
        hold_cost_factor=0.0,  # the fixed hold (the step-cost hold: test_step_cost_hold_*)
    )
    # max(deadline 6 + 1, over capacity 8 + 1, saturated 2 * (4 doublings 512 -> 8192 + 1) + 1)
    assert starvation_bound(params, BUDGET) == 11
    # The step-cost hold moves the deadline by up to max_hold_steps - hold_steps.
    assert starvation_bound(dataclasses.replace(params, hold_cost_factor=1.5, max_hold_steps=8), BUDGET) == 12
    assert starvation_bound(dataclasses.replace(params, backlog_hold_steps=20), BUDGET) == 21
    assert starvation_bound(BalanceParams(), BUDGET) == 81
    got = []
    for age in range(8):
        loads = [lv(decode=100, run_pf=6000, starve=age)] + [lv(decode=100)] * 7
        got.append(compute_plan(loads, params, BUDGET)[0].prefill_allowance)
    # Held for 3 steps, then the backlog spread over the steps left (6000/3, /2, /1), then
    # no limit: whatever was pending at the first hold is done by the deadline.
    assert got == [0, 0, 0, 2000, 3000, 6000, None, None]


def test_step_cost_hold_follows_the_prefill_to_step_ratio() -> None:
    params = BalanceParams()  # hold 3, up to 8 steps, factor 1.5
    # Prefill-heavy: 15 ms fixed, 0.25 ms/token; 500 tokens over a 40-token decode level add
    # 125 ms to a 25 ms step (r = 5), with the ranks' decode slots a third in use.
    heavy = (15_000, 250_000)
    assert cost_hold(params, heavy, 500, 40, 40.0) == 8  # ceil(1.5 * 1.0 * 5), capped at 8
    assert cost_hold(params, heavy, 500, 40, 16.0) == 4  # half the weight: ceil(3.75)
    # Cheap prefill against the step (25 ms fixed, 0.08 ms/token, 300 tokens: r = 0.85): 3.
    assert cost_hold(params, (25_000, 80_000), 300, 40, 40.0) == 3
    # Few decodes to protect (short outputs): the wait buys little, the hold stays 3.
    assert cost_hold(params, heavy, 1500, 40, 2.0) == 3
    # No estimate, or the factor off: the fixed hold.
    assert cost_hold(params, None, 500, 40, 40.0) == 3
    assert cost_hold(dataclasses.replace(params, hold_cost_factor=0.0), heavy, 500, 40, 40.0) == 3
    # The cluster's fit is the lower median of the ranks that publish one.
    loads = [lv(cost=(10, 100)), lv(cost=(30, 300)), lv(cost=(20, 200)), lv(), lv(cost=(40, 400))]
    assert step_cost(loads) == (20, 200)
    assert step_cost([lv(), lv()]) is None


def test_step_cost_hold_in_the_plan() -> None:
    # One rank with a fresh chat prompt while every rank decodes 40 sequences: under the
    # prefill-heavy fit it is held 8 steps (not 3), then spread over 3, then unlimited.
    heavy = (15_000, 250_000)
    got = []
    for age in range(13):
        loads = [lv(decode=40, wait_pf=600, starve=age, cost=heavy)]
        loads += [lv(decode=40, cost=heavy)] * 7
        got.append(compute_plan(loads, BalanceParams(), BUDGET)[0].prefill_allowance)
    assert got == [0] * 8 + [512, 512, 600, None, None]
    # A long prompt vLLM has started (over half a step's room left) keeps the fixed hold:
    # at age 3 its 5000 tokens are spread over the 3 steps left, not held to age 8.
    loads = [lv(decode=40, run_pf=5000, starve=3, cost=heavy)] + [lv(decode=40, cost=heavy)] * 7
    assert compute_plan(loads, BalanceParams(), BUDGET)[0].prefill_allowance == 1667
    # The same chat prompt under a cheap fit keeps the fixed 3-step hold.
    cheap = (25_000, 80_000)
    loads = [lv(decode=40, wait_pf=600, starve=3, cost=cheap)] + [lv(decode=40, cost=cheap)] * 7
    assert compute_plan(loads, BalanceParams(), BUDGET)[0].prefill_allowance == 512


def test_low_arrival_rate_means_no_hold() -> None:
    # Nobody is likely to arrive within the hold (fewer than window / hold_steps arrivals in
    # the cluster over the window): waiting only adds latency, so fresh prefill runs at once.
    params = BalanceParams()
    quiet = [lv(decode=4, wait_pf=3000, arrivals=2)] + [lv(decode=4, arrivals=2)] * 7
    assert compute_plan(quiet, params, BUDGET)[0] == UNLIMITED
    # 21 arrivals * 3 steps < 64 < 22 * 3: the rate threshold is exact.
    busy = [lv(decode=4, wait_pf=3000, arrivals=22)] + [lv(decode=4, arrivals=0)] * 7
    assert compute_plan(busy, params, BUDGET)[0].prefill_allowance == 0
    almost = [lv(decode=4, wait_pf=3000, arrivals=21)] + [lv(decode=4, arrivals=0)] * 7
    assert compute_plan(almost, params, BUDGET)[0] == UNLIMITED
    # Past the hold the deadline floors apply whatever the rate.
    held = [lv(decode=4, wait_pf=3000, arrivals=0, starve=3)] + [lv(decode=4, arrivals=0)] * 7
    assert compute_plan(held, params, BUDGET)[0].prefill_allowance == 1000


def test_over_capacity_waits_for_every_rank_then_shares_the_step() -> None:
    params = BalanceParams(backlog_hold_steps=30)
    deep = {"waiting": 100, "free": 1}  # a backlog beyond max_num_seqs / 4 on every rank
    # One rank without prefill: the level is the smallest total, long prefill waits.
    loads = [lv(decode=127, wait_pf=3500, **deep)] * 7 + [lv(decode=128, waiting=100, free=0)]
    plan = compute_plan(loads, params, BUDGET)
    assert [p.prefill_allowance for p in plan[:7]] == [1] * 7  # up to the idle rank's 128 tokens
    # Every rank has prefill: each fills up to the smallest rank total.
    loads = [lv(decode=127, wait_pf=3500, **deep)] * 7 + [lv(decode=127, wait_pf=7000, **deep)]
    plan = compute_plan(loads, params, BUDGET)
    assert {p.prefill_allowance for p in plan} == {3500}
    # Small prompts go at once; a long one held backlog_hold_steps steps runs unlimited.
    loads = [lv(decode=127, wait_pf=300, **deep), lv(decode=127, wait_pf=3500, starve=30, **deep)]
    loads += [lv(decode=128, waiting=100, free=0)] * 6
    plan = compute_plan(loads, params, BUDGET)
    assert plan[0].prefill_allowance >= 300 and plan[1] == UNLIMITED
    # A shallow queue on one rank is the saturated regime (quorum level, doubling floors).
    loads[2] = lv(decode=128, waiting=2, free=0)
    assert compute_plan(loads, params, BUDGET)[1].prefill_allowance == 512


def test_saturated_escalation_doubles_then_unlimited() -> None:
    # A rank queueing beyond its free slots marks the cluster saturated: no hold, small
    # prompts go at once, a long lone prefill waits for the quorum with a doubling floor.
    params = BalanceParams(min_chunk=512, saturated_escalate_steps=8)
    got = []
    for age in (0, 7, 8, 16, 24, 32, 39, 40):
        loads = [lv(decode=0, run_pf=7000, starve=age)] + [lv(waiting=5, free=0)] + [lv()] * 6
        got.append(compute_plan(loads, params, BUDGET)[0].prefill_allowance)
    assert got == [0, 0, 512, 1024, 2048, 4096, 4096, None]
    short = [lv(decode=128, wait_pf=300)] + [lv(waiting=5, free=0)] + [lv(decode=128)] * 6
    assert compute_plan(short, params, BUDGET)[0] == RankPlan(512, True)


def test_held_ranks_fill_a_step_that_someone_prefills() -> None:
    params = BalanceParams(min_chunk=512, escalate_steps=6, hold_steps=3, quorum=0.875)
    # Rank 0 is past its hold (floor 2000); the others hold fresh prefill, but since the
    # step is padded to rank 0's batch anyway, every rank may fill up to the same level.
    loads = [lv(decode=100, wait_pf=6000, starve=3)] + [lv(decode=100, wait_pf=900)] * 6 + [lv(decode=300)]
    plan = compute_plan(loads, params, BUDGET)
    assert plan[0] == RankPlan(2000, True)
    assert all(p == RankPlan(2000, True) for p in plan[1:7])
    assert plan[7] == RankPlan(1800, True)  # level 2100 minus its 300 decode tokens


def test_quorum_level_without_hold() -> None:
    # No hold: 8 ranks, 6 with 3000 pending, one 5000, one none; quorum 3/4 -> level is the
    # 6th largest total (100 + 3000); the 5000 rank is chunked to it (its floor, 5000/6
    # rounded up, is lower), the empty rank may admit up to it.
    params = BalanceParams(quorum=0.75, hold_steps=0, escalate_steps=6)
    loads = [lv(decode=100, wait_pf=3000)] * 6 + [lv(decode=100, wait_pf=5000), lv(decode=100)]
    assert [p.prefill_allowance for p in compute_plan(loads, params, BUDGET)] == [3000] * 8


def test_skew_release_lets_every_rank_fill_the_step() -> None:
    # Rank 0 has more pending than one step can run (a burst of long prompts): no quorum
    # will ever match it, so it runs as vLLM would and the others may fill that step.
    loads = [lv(decode=100, wait_pf=28000)] + [lv(decode=100, wait_pf=300)] * 7
    plan = compute_plan(loads, BalanceParams(), BUDGET)
    assert plan[0] == UNLIMITED
    assert all(p.prefill_allowance == BUDGET - 100 for p in plan[1:])
    # The same backlog on most ranks is saturation, not skew: the quorum level applies.
    busy = [lv(decode=100, wait_pf=28000)] * 7 + [lv(decode=100, wait_pf=300)]
    assert all(p.prefill_allowance is not None for p in compute_plan(busy, BalanceParams(), BUDGET))


def test_nothing_pending_without_hold_means_unlimited() -> None:
    loads = [lv(decode=50)] * 4
    assert compute_plan(loads, BalanceParams(hold_steps=0), BUDGET) == [UNLIMITED] * 4
    # With a hold, fresh arrivals (not in the snapshot yet) wait for a shared step.
    assert compute_plan(loads, BalanceParams(hold_steps=3), BUDGET) == [RankPlan(0, True)] * 4


def test_gate_blocks_admission_while_any_rank_is_full() -> None:
    params = BalanceParams(mode="gate", max_num_seqs=4)
    full = [lv(running=4), lv(running=1, wait_pf=100)]
    assert compute_plan(full, params, BUDGET) == [RankPlan(None, False)] * 2
    free = [lv(running=3), lv(running=1, wait_pf=100)]
    assert compute_plan(free, params, BUDGET) == [UNLIMITED] * 2


def test_delay_mode_is_sglang_prefill_delayer() -> None:
    params = BalanceParams(mode="delay", delay_passes=30)
    # All ranks or no rank prefillable: prefill allowed.
    assert compute_plan([lv(wait_pf=10)] * 3, params, BUDGET) == [UNLIMITED] * 3
    assert compute_plan([lv()] * 3, params, BUDGET) == [UNLIMITED] * 3
    # Mixed: nobody prefills, until the delayed passes reach the maximum.
    mixed = [lv(wait_pf=10, starve=29), lv(), lv(wait_pf=5, starve=3)]
    assert compute_plan(mixed, params, BUDGET) == [HOLD] * 3
    timeout = [lv(wait_pf=10, starve=30), lv(), lv(wait_pf=5, starve=3)]
    assert compute_plan(timeout, params, BUDGET) == [UNLIMITED] * 3
    # Low token-usage watermark: a prefillable rank with little KV in use forces prefill.
    wm = BalanceParams(mode="delay", delay_watermark=0.5, kv_capacity_tokens=1000)
    assert compute_plan([lv(wait_pf=10, ctx=400), lv(ctx=900)], wm, BUDGET) == [UNLIMITED] * 2
    assert compute_plan([lv(wait_pf=10, ctx=600), lv(ctx=100)], wm, BUDGET) == [HOLD] * 2


def test_params_validation() -> None:
    for bad in (
        {"mode": "nope"},
        {"min_chunk": 0},
        {"quorum": 0.0},
        {"escalate_steps": 0},
        {"escalate_steps": 3, "hold_steps": 3},
        {"hold_steps": -1},
        {"skew_ratio": 0.5},
        {"saturated_escalate_steps": 0},
        {"delay_passes": 0},
        {"delay_watermark": 1.5},
        {"kv_capacity_tokens": -1},
    ):
        with pytest.raises(ValueError):
            BalanceParams(**bad)


def test_a_skew_released_prefill_keeps_running() -> None:
    # Rank 0 ran the first budget-sized chunk of a long prompt (skew release, so not held:
    # age 0); its remainder is below one step's room and still 4x the quorum's pending.
    params = BalanceParams()
    loads = [lv(decode=100, run_pf=6000)] + [lv(decode=100)] * 7
    assert compute_plan(loads, params, BUDGET)[0] == UNLIMITED
    # Without the continuation the remainder is held like fresh prefill ...
    off = dataclasses.replace(params, continue_skewed=False)
    assert compute_plan(loads, off, BUDGET)[0].prefill_allowance == 0
    # ... and the continuation applies only to a started, skewed remainder the plan is not
    # already holding: a held one (age 1), fresh (waiting) prefill, one below min_chunk, or a
    # cluster where most ranks have as much pending keep the hold.
    assert compute_plan([lv(decode=100, run_pf=6000, starve=1)] + loads[1:], params, BUDGET)[0] != UNLIMITED
    assert compute_plan([lv(decode=100, wait_pf=6000)] + loads[1:], params, BUDGET)[0].prefill_allowance == 0
    assert compute_plan([lv(decode=100, run_pf=400)] + loads[1:], params, BUDGET)[0].prefill_allowance == 0
    busy = [lv(decode=100, run_pf=6000)] + [lv(decode=100, wait_pf=3000)] * 7
    assert compute_plan(busy, params, BUDGET)[0] != UNLIMITED


def _unseen_loads(allowance_level: int) -> list[LoadVector]:
    # Rank 0 looked idle in the snapshot; the other ranks run a level of decode + prefill.
    busy = LoadVector(8, allowance_level, 0, 9, 0, 119, 0, 4000, 20)
    return [LoadVector(8, 0, 0, 8, 0, 120, 0, 4000, 20)] + [busy] * 7


def test_unseen_release_needs_a_high_level_and_a_prompt_that_fills_the_room() -> None:
    from vllm_ascend_triton.scheduler.plan import unseen_release

    params = BalanceParams(max_num_seqs=128)
    budget = 8192
    room = budget - 8
    # A 16K prompt arrived after the snapshot, the level already runs over half a step.
    assert unseen_release(_unseen_loads(0), params, budget, 0, 16000, room - 800)
    # A low level: the lone full step would pad every rank, so the next plan decides.
    assert not unseen_release(_unseen_loads(0), params, budget, 0, 16000, room // 2 - 1)
    # The new prompt does not fill the room on its own.
    assert not unseen_release(_unseen_loads(0), params, budget, 0, room - 1, room - 800)
    # The quorum has as much pending: no skew, no release.
    assert not unseen_release(_unseen_loads(8000), params, budget, 0, 16000, room - 800)
    # Saturated cluster, or the switch off.
    sat = _unseen_loads(0)
    sat[3] = sat[3]._replace(num_waiting=200)
    assert not unseen_release(sat, params, budget, 0, 16000, room - 800)
    off = BalanceParams(max_num_seqs=128, release_unseen=False)
    assert not unseen_release(_unseen_loads(0), off, budget, 0, 16000, room - 800)
