"""Shared helpers for the scheduler tests: canonical SchedulerOutput and a stepping driver."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from vllm_ascend_triton.scheduler.sim.vllm_setup import fake_model_output, make_block_hasher, make_request


def canonical(so: Any) -> dict[str, Any]:
    """Every field of a SchedulerOutput that describes the scheduling decision, as plain data."""
    cached = so.scheduled_cached_reqs
    return {
        "new": [
            (r.req_id, list(r.prompt_token_ids or []), tuple(map(tuple, r.block_ids)), r.num_computed_tokens)
            for r in so.scheduled_new_reqs
        ],
        "cached": (
            list(cached.req_ids),
            sorted(cached.resumed_req_ids),
            [None if b is None else tuple(map(tuple, b)) for b in cached.new_block_ids],
            list(cached.num_computed_tokens),
            list(cached.num_output_tokens),
            [list(x) for x in cached.new_token_ids],
        ),
        "num_scheduled_tokens": dict(so.num_scheduled_tokens),
        "total": so.total_num_scheduled_tokens,
        "spec": dict(so.scheduled_spec_decode_tokens),
        "encoder": dict(so.scheduled_encoder_inputs),
        "finished": sorted(so.finished_req_ids),
        "preempted": sorted(so.preempted_req_ids or ()),
        "common_prefix": list(so.num_common_prefix_blocks),
        "zero": so.new_block_ids_to_zero,
    }


def step(sched: Any, throttle: bool = False) -> tuple[Any, dict]:
    so = sched.schedule(throttle)
    out = sched.update_from_output(so, fake_model_output(sched, so))
    return so, out


def add(sched: Any, rid: str, prompt_len: int, max_tokens: int, offset: int = 0) -> None:
    hasher = None
    if sched.cache_config.enable_prefix_caching:
        hasher = getattr(sched, "_test_hasher", None)
        if hasher is None:
            hasher = sched._test_hasher = make_block_hasher(sched.vllm_config)
    sched.add_request(make_request(rid, prompt_len, max_tokens, token_offset=offset, block_hasher=hasher))


def free_blocks_when_empty_ok(sched: Any) -> bool:
    """No KV block leaked: with no request left, every block but the null block is free."""
    pool = sched.kv_cache_manager.block_pool
    return pool.get_num_free_blocks() == pool.num_gpu_blocks - 1


def replace_fields(obj: Any, **kw: Any) -> Any:
    return dataclasses.replace(obj, **kw)


def lockstep(scheds: list[Any], members: list[Any]) -> list[Any]:
    """One DP engine iteration: busy ranks schedule + update (idle ranks would run a dummy
    batch), then every rank, busy or idle, takes part in the load exchange."""
    outs = []
    for s in scheds:
        outs.append(step(s) if s.has_requests() else None)
    for s, m in zip(scheds, members, strict=True):
        s.on_step_boundary(m)
    return outs


def first_deferral_and_admission(
    scheds: list[Any], members: list[Any], ref: Any, prompt_a: int, max_steps: int
) -> tuple[int | None, int | None]:
    """Rank 0 (and the plain vLLM scheduler ``ref``) prefills a long prompt A beside a decode C;
    after one step a short prompt B arrives. Checks that vLLM admits B at once, then steps the
    ranks in lockstep and returns (the first step that deferred B, the step that admitted it),
    None where that never happened within ``max_steps``."""
    for s in (scheds[0], ref):
        add(s, "A", prompt_a, 4)
        add(s, "C", 20, 400, 2000)
    lockstep(scheds, members)
    step(ref)
    add(scheds[0], "B", 300, 4)
    add(ref, "B", 300, 4)
    so_ref, _ = step(ref)
    assert "B" in so_ref.num_scheduled_tokens  # vLLM admits B at once
    first_deferred = None
    for i in range(1, max_steps):
        so = lockstep(scheds, members)[0][0]
        if "B" in so.num_scheduled_tokens:
            return first_deferred, i
        if first_deferred is None:
            first_deferred = i
    return first_deferred, None


def run_two_ranks(worker: Path, out_dir: Path, timeout: float = 240.0) -> list[dict[str, Any]]:
    """Run `worker rank port out.json` as two gloo ranks on a free loopback port; each must exit
    0. Returns the JSON each rank wrote."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = str(Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    outs = [out_dir / f"r{r}.json" for r in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(r), str(port), str(outs[r])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return [json.loads(path.read_text()) for path in outs]
