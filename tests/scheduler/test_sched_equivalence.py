"""With balance off (or no DP snapshot) BalanceScheduler makes exactly vLLM's decisions."""

from __future__ import annotations

import random

import pytest
from sched_helpers import add, canonical, step
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from vllm_ascend_triton.scheduler import AsyncBalanceScheduler, BalanceScheduler
from vllm_ascend_triton.scheduler.sim.vllm_setup import SchedulerShape, make_scheduler, make_vllm_config

# A tiny KV cache (60 blocks of 16 tokens) forces preemptions; prefix caching is on and
# some prompts share prefixes; a small token budget forces chunked prefill.
SHAPE = SchedulerShape(
    max_num_seqs=8,
    max_num_batched_tokens=256,
    max_model_len=2048,
    block_size=16,
    num_blocks=60,
    enable_prefix_caching=True,
    long_prefill_token_threshold=96,
)


def _drive_pair(ref, cand, seed: int, steps: int = 160) -> int:
    """Identical random streams (arrivals, aborts, throttled steps) into both; every
    SchedulerOutput must match. Returns how many preemptions the stream caused."""
    rng = random.Random(seed)
    live: list[str] = []
    n = 0
    preempted = 0
    for i in range(steps):
        for _ in range(rng.choice([0, 0, 1, 2])):
            rid = f"r{n}"
            plen, out = rng.randint(1, 300), rng.randint(1, 200)
            offset = rng.choice([0, 0, n])  # shared prefixes for prefix-cache hits
            for s in (ref, cand):
                add(s, rid, plen, out, offset)
            live.append(rid)
            n += 1
        if live and rng.random() < 0.08:
            victim = live.pop(rng.randrange(len(live)))
            for s in (ref, cand):
                s.finish_requests(victim, _aborted())
        throttle = rng.random() < 0.3
        so_r, _ = step(ref, throttle)
        so_c, _ = step(cand, throttle)
        assert canonical(so_c) == canonical(so_r), f"diverged at step {i}"
        preempted += len(so_r.preempted_req_ids or ())
    return preempted


def _aborted():
    from vllm.v1.request import RequestStatus

    return RequestStatus.FINISHED_ABORTED


def test_balance_off_matches_vllm() -> None:
    cfg = make_vllm_config(SHAPE)
    preempted = 0
    for seed in (0, 1, 2):
        ref = make_scheduler(Scheduler, SHAPE, cfg)
        cand = make_scheduler(BalanceScheduler, SHAPE, cfg, balance=False)
        preempted += _drive_pair(ref, cand, seed)
        assert ref.get_request_counts() == cand.get_request_counts()
    # The comparison covers preemption only if the streams preempted.
    assert preempted > 0


def test_balance_on_without_snapshot_matches_vllm() -> None:
    # Balance switched on but DP=1 / no exchange: no plan, so vLLM's decisions.
    cfg = make_vllm_config(SHAPE)
    ref = make_scheduler(Scheduler, SHAPE, cfg)
    cand = make_scheduler(BalanceScheduler, SHAPE, cfg, balance=True)
    assert cand.balance_enabled
    _drive_pair(ref, cand, seed=5)


def test_async_variant_off_matches_vllm_async() -> None:
    cfg = make_vllm_config(SHAPE)
    ref = make_scheduler(AsyncScheduler, SHAPE, cfg)
    cand = make_scheduler(AsyncBalanceScheduler, SHAPE, cfg, balance=False)
    _drive_pair(ref, cand, seed=7, steps=80)


def test_async_config_selects_async_variant() -> None:
    shape = SchedulerShape(
        max_num_seqs=8, max_num_batched_tokens=256, max_model_len=2048, block_size=16, num_blocks=60
    )
    cfg = make_vllm_config(shape)
    # vLLM's CPU platform turns async scheduling off; an Ascend platform keeps it on.
    cfg.scheduler_config.async_scheduling = True
    sched = make_scheduler(BalanceScheduler, shape, cfg, balance=True)
    assert isinstance(sched, AsyncBalanceScheduler) and sched.balance_enabled
    ref = make_scheduler(AsyncScheduler, shape, cfg)
    _drive_pair(ref, make_scheduler(BalanceScheduler, shape, cfg, balance=False), seed=3, steps=40)
    sync = make_scheduler(BalanceScheduler, SHAPE, make_vllm_config(SHAPE))
    assert type(sync) is BalanceScheduler


def test_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm_ascend_triton.scheduler import resolve_balance_params

    cfg = make_vllm_config(SHAPE)
    monkeypatch.delenv("VLLM_ASCEND_BALANCE_SCHEDULING", raising=False)
    assert resolve_balance_params(cfg).mode == "off"
    monkeypatch.setenv("VLLM_ASCEND_BALANCE_SCHEDULING", "1")
    assert resolve_balance_params(cfg).mode == "balance"
    cfg_gate = make_vllm_config(SHAPE, additional_config={"balance_scheduling": {"mode": "gate"}})
    assert resolve_balance_params(cfg_gate).mode == "gate"  # config wins over env
    assert resolve_balance_params(cfg_gate, balance=False).mode == "off"  # keyword wins
    p = resolve_balance_params(make_vllm_config(SHAPE, {"balance_scheduling": {"min_chunk": 64}}))
    assert (p.mode, p.min_chunk, p.max_num_seqs) == ("balance", 64, SHAPE.max_num_seqs)
    with pytest.raises(ValueError):
        resolve_balance_params(cfg, balance="sideways")
