"""``compute_plan`` cost per step at several DP sizes (MEASURED on the host that runs it).

Every rank computes the plan once per lockstep step from the exchanged snapshot, so its
cost is added to every step. Snapshots are drawn at random in the ranges a 128-slot,
8192-token rank produces (decode 0-128 tokens, pending prefill 0-20K, deferral age 0-39,
arrivals 0-15 per window), a third each not saturated, saturated (some rank queues up to
20 beyond its free slots) and over capacity (every rank backlogged), so every regime of
the plan is timed. The simulator also records the cost on the snapshots
of its own runs (``plan_us_mean`` of balance rows).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vllm_ascend_triton.scheduler.plan import BalanceParams, LoadVector, compute_plan


def _snapshot(rng: np.random.Generator, dp: int, regime: int) -> list[LoadVector]:
    """Regime 0: not saturated; 1: saturated (queues up to 20 beyond the slots); 2: over
    capacity (every rank backlogged beyond a quarter of max_num_seqs)."""
    loads = []
    for _ in range(dp):
        running = int(rng.integers(0, 129))
        free = 128 - running
        if regime == 2:
            waiting = free + int(rng.integers(33, 200))
        elif regime == 1:
            waiting = int(rng.integers(0, 21))
        else:
            waiting = int(rng.integers(0, free + 1))
        loads.append(
            LoadVector(
                decode_tokens=running,
                running_prefill=int(rng.integers(0, 4000)) if rng.random() < 0.3 else 0,
                waiting_prefill=int(rng.integers(0, 16000)) if rng.random() < 0.5 else 0,
                num_running=running,
                num_waiting=waiting,
                free_slots=free,
                starve_steps=int(rng.integers(0, 40)),
                context_tokens=int(rng.integers(0, 600_000)),
                recent_arrivals=int(rng.integers(0, 16)),
                scheduled_tokens=int(rng.integers(0, 8192)),
                step_fixed_us=int(rng.integers(10_000, 40_000)),  # a step-time fit on every rank
                step_token_ns=int(rng.integers(50_000, 300_000)),
            )
        )
    return loads


def measure_plan_cost(
    dp_sizes: Sequence[int] = (8, 16, 32, 64), steps: int = 2000, seed: int = 0, token_budget: int = 8192
) -> dict[str, Any]:
    """Mean, p50 and p99 microseconds of one ``compute_plan`` call per DP size."""
    if steps < 1 or not dp_sizes or min(dp_sizes) < 1:
        raise ValueError(f"need steps >= 1 and dp sizes >= 1, got {steps}, {list(dp_sizes)}")
    params = BalanceParams()
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"measured": True, "steps": steps, "per_dp": {}}
    for dp in dp_sizes:
        snaps = [_snapshot(rng, dp, regime=i % 3) for i in range(steps)]
        for s in snaps[:50]:  # warm-up
            compute_plan(s, params, token_budget)
        ns = np.empty(steps)
        for i, s in enumerate(snaps):
            t0 = time.perf_counter_ns()
            compute_plan(s, params, token_budget)
            ns[i] = time.perf_counter_ns() - t0
        us = ns / 1e3
        out["per_dp"][str(dp)] = {
            "mean_us": float(us.mean()),
            "p50_us": float(np.percentile(us, 50)),
            "p99_us": float(np.percentile(us, 99)),
        }
    return out
