"""The starvation bound of the deadline escalation (cluster not saturated), on real vLLM
schedulers stepped in lockstep: what the plan holds is admitted within
``escalate_steps + 1`` steps of the first deferral, whatever the other ranks do."""

from __future__ import annotations

import pytest
from sched_helpers import add, first_deferral_and_admission
from vllm.v1.core.sched.scheduler import Scheduler

from vllm_ascend_triton.scheduler import BalanceScheduler
from vllm_ascend_triton.scheduler.plan import BalanceParams, starvation_bound
from vllm_ascend_triton.scheduler.sim.inprocess import InProcessExchangeGroup
from vllm_ascend_triton.scheduler.sim.vllm_setup import SchedulerShape, make_scheduler, make_vllm_config


@pytest.mark.parametrize(("escalate", "hold"), [(4, 2), (6, 3)])
def test_deadline_bound_on_real_schedulers(escalate: int, hold: int) -> None:
    shape = SchedulerShape(
        max_num_seqs=8, max_num_batched_tokens=2048, max_model_len=32768, block_size=16, num_blocks=4000
    )
    # hold_partners=0: hold whatever the arrival rate (this test has only a few arrivals);
    # continue_skewed=False: rank 0's long prompt would otherwise keep its skew release and
    # nothing would be held (the continuation only ever lifts a limit); hold_cost_factor=0:
    # the fixed hold (these schedulers time their steps on the wall clock; the step-cost
    # hold and its longer bound are tested on fixed fits in test_sched_plan.py).
    params = BalanceParams(
        min_chunk=128,
        escalate_steps=escalate,
        hold_steps=hold,
        max_num_seqs=8,
        hold_partners=0,
        continue_skewed=False,
        hold_cost_factor=0.0,
    )
    assert starvation_bound(params, shape.max_num_batched_tokens) >= escalate + 1
    cfg = make_vllm_config(shape)
    scheds = [make_scheduler(BalanceScheduler, shape, cfg, balance=params) for _ in range(4)]
    group = InProcessExchangeGroup(4)
    members = [group.member(r) for r in range(4)]
    ref = make_scheduler(Scheduler, shape, make_vllm_config(shape))
    # Rank 0 prefills a long prompt A beside a decode C; nobody queues beyond its slots, so
    # the plan is in its deadline mode. Ranks 1-3 only decode, so no quorum ever matches A.
    for r in range(1, 4):
        add(scheds[r], f"d{r}", 16, 400, 3000 + r)
    first_deferred, admitted = first_deferral_and_admission(scheds, members, ref, 3000, 4 * escalate)
    assert first_deferred is not None, "balance never deferred B: the test proves nothing"
    assert admitted is not None and admitted - first_deferred <= escalate + 1
    # Every rank keeps decoding meanwhile (the plan never touches decodes).
    assert all(s.requests[f"d{r}"].num_output_tokens > 1 for r, s in enumerate(scheds) if r)
