"""Mean ``schedule()`` time of balance mode vs vLLM's own scheduler (measured on this host).

Both schedulers hold the same ``num_running`` decoding requests. Calls are interleaved
(vLLM, balance, vLLM, ...) so that drift of the host hits both alike. The balance
scheduler gets a fresh snapshot before every step from a DP-8 exchange whose seven other
ranks carry pending prefill, so its plan yields a finite prefill allowance and the
per-request hook runs on every request (the expensive path, not the "nothing to
balance" shortcut). The exchange-side ``load_vector()`` cost is timed separately: in the
engine it runs at the step boundary, outside ``schedule()``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vllm_ascend_triton.scheduler.exchange import LoadExchange
from vllm_ascend_triton.scheduler.plan import LoadVector


class _StaticPeersExchange(LoadExchange):
    """This rank's vector plus fixed peers (stands in for a real DP group)."""

    def __init__(self, peers: Sequence[LoadVector]) -> None:
        self.peers = list(peers)
        self.rank = 0
        self.world_size = 1 + len(self.peers)

    def all_gather(self, local: LoadVector) -> list[LoadVector]:
        return [local, *self.peers]


def measure_overhead(num_running: int = 256, steps: int = 200, warmup: int = 20) -> dict[str, Any]:
    from vllm.v1.core.sched.scheduler import Scheduler

    from vllm_ascend_triton.scheduler.balance import BalanceScheduler
    from vllm_ascend_triton.scheduler.plan import BalanceParams
    from vllm_ascend_triton.scheduler.sim.vllm_setup import (
        SchedulerShape,
        fake_model_output,
        make_request,
        make_scheduler,
        make_vllm_config,
    )

    shape = SchedulerShape(max_num_seqs=num_running, max_num_batched_tokens=8192, num_blocks=num_running * 40)
    cfg = make_vllm_config(shape)
    ref = make_scheduler(Scheduler, shape, cfg)
    bal = make_scheduler(
        BalanceScheduler, shape, cfg, balance=BalanceParams(mode="balance", max_num_seqs=num_running)
    )
    total_steps = warmup + steps + 64
    for s in (ref, bal):
        for i in range(num_running):
            s.add_request(make_request(f"o{i}", 200 + i % 64, total_steps + 10, token_offset=i))
    # Bring both to steady decode: all prompts computed.
    for _ in range(64):
        for s in (ref, bal):
            so = s.schedule()
            s.update_from_output(so, fake_model_output(s, so))
        if all(
            len(s.running) == num_running and all(r.num_output_tokens > 0 for r in s.running)
            for s in (ref, bal)
        ):
            break
    peers = [LoadVector(num_running, 0, 4096, num_running, 8, 0, 0, 0, 64)] * 7
    exchange = _StaticPeersExchange(peers)
    t_ref: list[int] = []
    t_bal: list[int] = []
    t_vec: list[int] = []
    allowances = []
    for i in range(warmup + steps):
        t0 = time.perf_counter_ns()
        so = ref.schedule()
        t1 = time.perf_counter_ns()
        ref.update_from_output(so, fake_model_output(ref, so))

        t2 = time.perf_counter_ns()
        bal.on_step_boundary(exchange)
        t3 = time.perf_counter_ns()
        so_b = bal.schedule()
        t4 = time.perf_counter_ns()
        bal.update_from_output(so_b, fake_model_output(bal, so_b))
        if i >= warmup:
            t_ref.append(t1 - t0)
            t_vec.append(t3 - t2)
            t_bal.append(t4 - t3)
            allowances.append(bal.last_plan.prefill_allowance if bal.last_plan else None)
        if so.total_num_scheduled_tokens != so_b.total_num_scheduled_tokens:
            raise RuntimeError("reference and balance schedulers diverged in the overhead run")
    ref_us = float(np.mean(t_ref)) / 1e3
    bal_us = float(np.mean(t_bal)) / 1e3
    vec_us = float(np.mean(t_vec)) / 1e3
    return {
        "measured": True,
        "num_running": num_running,
        "steps": steps,
        "vllm_schedule_mean_us": ref_us,
        "balance_schedule_mean_us": bal_us,
        "ratio": bal_us / ref_us,
        "load_vector_mean_us": vec_us,
        "ratio_including_load_vector": (bal_us + vec_us) / ref_us,
        "balance_plan_allowance": allowances[-1] if allowances else None,
        "within_10_percent": bal_us / ref_us <= 1.10,
    }
