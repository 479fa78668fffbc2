"""Upstream scheduler features kept with balance mode on and the plan actually cutting.

Each test runs real vLLM schedulers as DP ranks in lockstep with the in-process exchange.
Rank 1 is flooded with small requests (more waiting than free slots: the cluster is
saturated, so the plan limits prefill) and the ranks that get no request keep the quorum
level low, so the plan cuts rank 0's prefill. Every test asserts that it did (otherwise
the test would prove nothing) and then checks the feature's own rule.
"""

from __future__ import annotations

import random
from typing import Any

from sched_helpers import add, free_blocks_when_empty_ok, lockstep
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.interface import PauseState
from vllm.v1.request import Request

from vllm_ascend_triton.scheduler import AsyncBalanceScheduler, BalanceScheduler
from vllm_ascend_triton.scheduler.plan import BalanceParams
from vllm_ascend_triton.scheduler.sim.inprocess import InProcessExchangeGroup
from vllm_ascend_triton.scheduler.sim.vllm_setup import (
    SchedulerShape,
    make_block_hasher,
    make_scheduler,
    make_vllm_config,
)

SHAPE = SchedulerShape(
    max_num_seqs=4,
    max_num_batched_tokens=256,
    max_model_len=4096,
    block_size=16,
    num_blocks=400,
    long_prefill_token_threshold=0,
)
PARAMS = BalanceParams(min_chunk=32, escalate_steps=4, max_num_seqs=4)


def _cluster(
    shape: SchedulerShape = SHAPE, dp: int = 4, cls: type = BalanceScheduler, cfg: Any = None, **kwargs: Any
):
    cfg = cfg if cfg is not None else make_vllm_config(shape)
    scheds = [make_scheduler(cls, shape, cfg, balance=PARAMS, **kwargs) for _ in range(dp)]
    group = InProcessExchangeGroup(dp)
    return scheds, [group.member(r) for r in range(dp)]


def _flood(sched: Any, step: int, rng: random.Random) -> None:
    """Keep rank 1 saturated with short requests (waiting > free slots)."""
    if step < 100:
        add(sched, f"f{step}", rng.randint(8, 24), rng.randint(4, 12), 5000 + step)
        if step % 2 == 0:
            add(sched, f"g{step}", rng.randint(8, 24), rng.randint(4, 12), 7000 + step)


def _finished(eco: dict) -> set[str]:
    return {o.request_id for out in eco.values() for o in out.outputs if o.finish_reason is not None}


def _drain(scheds: list[Any], members: list[Any], start: int, limit: int = 2000) -> set[str]:
    """Step until every rank is empty; the ids that finished meanwhile."""
    finished: set[str] = set()
    for _ in range(start, limit):
        if not any(s.has_requests() for s in scheds):
            return finished
        for res in lockstep(scheds, members):
            if res is not None:
                finished |= _finished(res[1])
    raise AssertionError("requests left after the step limit")


def _no_leak(scheds: list[Any]) -> None:
    for s in scheds:
        assert s.get_request_counts() == (0, 0)
        assert free_blocks_when_empty_ok(s)


def test_paused_states_hold_with_balance() -> None:
    scheds, members = _cluster()
    rng = random.Random(0)
    rank0 = scheds[0]
    for i in range(6):
        add(rank0, f"a{i}", 180, 30, i * 300)
    seen_new_while_paused = 0
    tokens_while_paused_all = 0
    for step in range(120):
        _flood(scheds[1], step, rng)
        if step == 10:
            rank0.set_pause_state(PauseState.PAUSED_NEW)
            add(rank0, "late", 60, 5, 9000)  # must wait until unpaused
        if step == 30:
            rank0.set_pause_state(PauseState.PAUSED_ALL)
        if step == 40:
            rank0.set_pause_state(PauseState.UNPAUSED)
        outs = lockstep(scheds, members)
        if outs[0] is None:
            continue
        so, _ = outs[0]
        if 10 <= step < 40:
            seen_new_while_paused += len(so.scheduled_new_reqs)
        if 30 <= step < 40:
            tokens_while_paused_all += so.total_num_scheduled_tokens
    _drain(scheds, members, 120)
    stats = rank0.balance_stats()
    assert stats["steps_cut"] > 0 and stats["prefill_tokens_deferred"] > 0
    assert seen_new_while_paused == 0
    assert tokens_while_paused_all == 0
    _no_leak(scheds)


def test_mamba_block_aligned_splits_with_balance() -> None:
    scheds, members = _cluster()
    for s in scheds:
        # Upstream's flag for hybrid Mamba models in "align" cache mode: prefill chunks end
        # on block boundaries. Balance must then cut all-or-nothing, never mid-block.
        s.need_mamba_block_aligned_split = True
    rng = random.Random(1)
    rank0 = scheds[0]
    for i in range(6):
        add(rank0, f"m{i}", 200 + 7 * i, 8, i * 300)
    misaligned = []
    chunks = 0
    for step in range(150):
        _flood(scheds[1], step, rng)
        before = {r.request_id: r.num_computed_tokens for r in rank0.running}
        before.update({r.request_id: r.num_computed_tokens for r in rank0.waiting})
        outs = lockstep(scheds, members)
        if outs[0] is None:
            continue
        so, _ = outs[0]
        for rid, n in so.num_scheduled_tokens.items():
            req = rank0.requests.get(rid)
            if req is None or not rid.startswith("m"):
                continue
            start = before.get(rid, 0)
            if start >= req.num_prompt_tokens - 1:
                continue  # decode
            end = start + n
            chunks += 1
            if end < req.num_prompt_tokens and end % SHAPE.block_size:
                misaligned.append((rid, start, n))
    _drain(scheds, members, 150)
    assert rank0.balance_stats()["steps_cut"] > 0
    assert chunks > 6  # prompts were split into several chunks
    assert not misaligned, misaligned
    _no_leak(scheds)


def _streaming_request(rid: str, tokens: list[int], max_tokens: int) -> Request:
    return Request(
        request_id=rid,
        prompt_token_ids=list(tokens),
        sampling_params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        pooling_params=None,
        arrival_time=0.0,
        resumable=True,
    )


def test_streaming_input_requests_with_balance() -> None:
    scheds, members = _cluster()
    rng = random.Random(2)
    rank0 = scheds[0]
    rank0.add_request(_streaming_request("s", list(range(100, 400)), 4))
    for i in range(3):
        add(rank0, f"b{i}", 150, 20, 1000 + 200 * i)
    chunks_sent = 1
    finished: set[str] = set()
    for step in range(400):
        _flood(scheds[1], step, rng)
        session = rank0.requests.get("s")
        if session is not None and session.status.name == "WAITING_FOR_STREAMING_REQ":
            if chunks_sent < 3:
                rank0.add_request(
                    _streaming_request(
                        "s", list(range(2000 + 100 * chunks_sent, 2150 + 100 * chunks_sent)), 4
                    )
                )
                chunks_sent += 1
            else:
                # The streaming session's end: a non-resumable request with the same id.
                end = Request("s", [1], SamplingParams(max_tokens=1), None, arrival_time=0.0)
                rank0.add_request(end)
        outs = lockstep(scheds, members)
        if outs[0] is not None:
            finished |= _finished(outs[0][1])
        if "s" not in rank0.requests and chunks_sent == 3:
            break
    finished |= _drain(scheds, members, 0)
    assert chunks_sent == 3
    assert "s" not in rank0.requests  # the session ended
    assert rank0.balance_stats()["steps_cut"] > 0
    assert {"b0", "b1", "b2"} <= finished
    _no_leak(scheds)


def test_preemption_under_tiny_kv_cache_with_balance() -> None:
    shape = SchedulerShape(
        max_num_seqs=4, max_num_batched_tokens=256, max_model_len=2048, block_size=16, num_blocks=40
    )
    scheds, members = _cluster(shape, dp=2)
    rng = random.Random(3)
    finished: set[str] = set()
    preempted = 0
    owner = {}
    for step in range(1500):
        if step < 60:
            for r in (0, 1):
                rid = f"p{step}_{r}"
                n = rng.randint(60, 200) if r == 0 else rng.randint(8, 30)
                add(scheds[r], rid, n, rng.randint(30, 90), 3 * step + r)
                owner[rid] = r
        for res in lockstep(scheds, members):
            if res is None:
                continue
            so, eco = res
            preempted += len(so.preempted_req_ids or ())
            finished |= _finished(eco)
        if step >= 60 and not any(s.has_requests() for s in scheds):
            break
    assert preempted > 0
    assert sum(s.balance_stats()["steps_cut"] for s in scheds) > 0
    assert finished == set(owner)
    _no_leak(scheds)


def test_prefix_caching_with_balance() -> None:
    shape = SchedulerShape(
        max_num_seqs=4,
        max_num_batched_tokens=256,
        max_model_len=4096,
        block_size=16,
        num_blocks=400,
        enable_prefix_caching=True,
    )
    scheds, members = _cluster(shape)
    rng = random.Random(4)
    rank0 = scheds[0]
    hasher = make_block_hasher(rank0.vllm_config)
    hits = 0
    for step in range(300):
        _flood(scheds[1], step, rng)
        if step % 10 == 0 and step < 100:
            # The same 160-token prefix, a distinct 150-token tail.
            tail = list(range(20000 + 200 * step, 20150 + 200 * step))
            rank0.add_request(
                Request(
                    f"x{step}",
                    list(range(100, 260)) + tail,
                    SamplingParams(max_tokens=6, ignore_eos=True),
                    None,
                    arrival_time=0.0,
                    block_hasher=hasher,
                )
            )
        outs = lockstep(scheds, members)
        if outs[0] is not None:
            hits += sum(1 for r in outs[0][0].scheduled_new_reqs if r.num_computed_tokens > 0)
        if step >= 100 and not any(s.has_requests() for s in scheds):
            break
    _drain(scheds, members, 300)
    assert hits > 0  # later requests reused the cached prefix
    assert rank0.balance_stats()["steps_cut"] > 0
    _no_leak(scheds)


def test_async_scheduling_with_balance() -> None:
    shape = SchedulerShape(**{**SHAPE.__dict__, "async_scheduling": True})
    cfg = make_vllm_config(shape)
    cfg.scheduler_config.async_scheduling = True  # the CPU platform turns it off
    scheds, members = _cluster(shape, cls=BalanceScheduler, cfg=cfg)
    assert all(isinstance(s, AsyncBalanceScheduler) for s in scheds)
    rng = random.Random(5)
    rank0 = scheds[0]
    for i in range(6):
        add(rank0, f"y{i}", 180, 25, i * 300)
    # vLLM's async loop: schedule step N+1 before step N's output is applied.
    inflight: list[Any] = [None] * len(scheds)
    finished: set[str] = set()
    for step in range(800):
        _flood(scheds[1], step, rng)
        for r, s in enumerate(scheds):
            so = None
            if s.has_requests():
                so = s.schedule()
                # Which requests sample a token in this step (prompt complete after it).
                so._samples = {
                    rid
                    for rid in so.num_scheduled_tokens
                    if s.requests[rid].num_computed_tokens >= s.requests[rid].num_prompt_tokens
                }
            prev, inflight[r] = inflight[r], so
            if prev is not None:
                eco = s.update_from_output(prev, _model_output(prev))
                if r == 0:
                    finished |= _finished(eco)
        for s, m in zip(scheds, members, strict=True):
            s.on_step_boundary(m)
        if step > 150 and not any(s.has_requests() for s in scheds) and not any(inflight):
            break
    assert rank0.balance_stats()["steps_cut"] > 0
    assert {f"y{i}" for i in range(6)} <= finished
    _no_leak(scheds)


def _model_output(so: Any) -> Any:
    from vllm.v1.outputs import ModelRunnerOutput

    req_ids = list(so.num_scheduled_tokens)
    return ModelRunnerOutput(
        req_ids=req_ids,
        req_id_to_index={rid: i for i, rid in enumerate(req_ids)},
        sampled_token_ids=[[7] if rid in so._samples else [] for rid in req_ids],
    )


def test_make_stats_carries_balance_counters() -> None:
    scheds, members = _cluster(dp=2, log_stats=True)
    add(scheds[0], "q", 200, 4)
    lockstep(scheds, members)
    stats = scheds[0].make_stats()
    assert stats is not None and stats.num_running_reqs == 1
    assert stats.balance == scheds[0].balance_stats()
    assert set(stats.balance) >= {"steps_cut", "prefill_tokens_deferred", "longest_deferral_steps"}
    # vLLM's engine-core -> front-end transport still works with our subclass (it keeps
    # vLLM's fields; the extra one is dropped there).
    from vllm.v1.engine import EngineCoreOutputs
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    wire = MsgpackEncoder().encode(EngineCoreOutputs(outputs=[], scheduler_stats=stats))
    back = MsgpackDecoder(EngineCoreOutputs).decode(wire)
    assert back.scheduler_stats.num_running_reqs == 1
