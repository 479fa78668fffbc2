"""schedule() overhead of balance mode against vLLM's own scheduler (measured on this host).

The one benchmark of the per-step scheduling cost: one ``BalanceScheduler`` holding
``num_running`` decoding requests; steps alternate (ABBA) between upstream's
``Scheduler.schedule`` and ours after a step boundary with a DP-8 snapshot whose seven other
ranks carry pending prefill (so the per-request hook runs: the expensive path). Thread CPU
time, cyclic GC off while timing. ``--control`` is the A/A arm (upstream in both arms), the
yardstick; ``--repeats N`` runs N fresh processes per arm and reports the mean per-process
ratio with a Student t 95% interval. Outside the package: nothing here is imported when vLLM
serves. Results: docs/results/scheduler_overhead.json (see docs/scheduler.md).

Command (JSON on stdout)::

    python benchmarks/schedule_overhead.py --repeats 10 --steps 1500
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def measure_schedule_overhead(
    num_running: int = 256, steps: int = 400, warmup: int = 20, control: bool = False
) -> dict[str, Any]:
    """Balance mode's ``schedule()`` against upstream's on the same scheduler object.

    One ``BalanceScheduler`` holds ``num_running`` decoding requests; steps alternate between
    upstream's ``Scheduler.schedule`` and ours (after a boundary with a DP-8 snapshot whose
    seven other ranks carry pending prefill, so the plan gives this rank a finite allowance),
    in ABBA order, so both schedule the same requests from the same state and contention on a shared host
    hits both alike; cyclic GC is off while timing (as in ``timeit``).
    Times are this thread's CPU time (``time.thread_time_ns``), which other
    processes' load does not inflate. Ours does all upstream does plus the plan bookkeeping;
    its per-request hook is installed only when the allowance could cut this rank's prefill,
    which a decode-only rank never needs.

    ``control=True`` is the A/A run: the second arm calls upstream's ``schedule()`` as well,
    so its ratio is what the harness reports for two identical arms (its bias and noise in
    one process), the yardstick for the balance arm's ratio."""
    from vllm_ascend_triton.scheduler.balance import BalanceScheduler, Scheduler
    from vllm_ascend_triton.scheduler.plan import BalanceParams, LoadVector
    from vllm_ascend_triton.scheduler.sim.vllm_setup import (
        SchedulerShape,
        fake_model_output,
        make_request,
        make_scheduler,
    )

    class _Peers:
        rank, world_size, completes_later, supports_overlap = 0, 8, False, False

        def all_gather(self, local: LoadVector) -> list[LoadVector]:
            return [local, *[LoadVector(num_running, 0, 4096, num_running, 8, 0, 0, 0, 64)] * 7]

    # Every request must keep decoding for the whole run (two tokens per timed pair): enough
    # KV blocks for its prompt plus every token it will produce, so nothing is preempted.
    max_tokens = 2 * (steps + warmup) + 100
    blocks_per_request = -(-(264 + max_tokens + 64) // SchedulerShape.block_size) + 1
    shape = SchedulerShape(
        max_num_seqs=num_running,
        max_num_batched_tokens=8192,
        max_model_len=max(SchedulerShape.max_model_len, 264 + max_tokens + 64),
        num_blocks=num_running * blocks_per_request,
    )
    sched = make_scheduler(BalanceScheduler, shape, balance=BalanceParams(max_num_seqs=num_running))
    for i in range(num_running):
        sched.add_request(make_request(f"d{i}", 200 + i % 64, max_tokens, token_offset=i))
    for _ in range(64):
        so = sched.schedule()
        sched.update_from_output(so, fake_model_output(sched, so))
        if all(r.num_output_tokens > 0 for r in sched.running):
            break
    peers = _Peers()
    t_up: list[int] = []
    t_ours: list[int] = []
    planned = 0

    def upstream_step() -> int:
        # The same boundary work precedes both timed calls (its plan is then discarded), so
        # neither starts with caches the other one warmed.
        sched.on_step_boundary(peers)
        sched._pending_plan = False
        t0 = time.thread_time_ns()
        so = Scheduler.schedule(sched)
        dt = time.thread_time_ns() - t0
        sched.update_from_output(so, fake_model_output(sched, so))
        return dt

    def balance_step() -> int:
        nonlocal planned
        sched.on_step_boundary(peers)
        t0 = time.thread_time_ns()
        so = Scheduler.schedule(sched) if control else sched.schedule()
        dt = time.thread_time_ns() - t0
        if control:
            sched.last_plan = sched._take_plan()  # consumes the boundary's plan, as schedule() does
        sched.update_from_output(so, fake_model_output(sched, so))
        planned += sched.last_plan is not None and sched.last_plan.prefill_allowance is not None
        if so.total_num_scheduled_tokens != num_running:
            raise RuntimeError("expected every request to decode in the overhead run")
        return dt

    # As timeit does: no cyclic GC inside timed calls (a collection lands on whichever call
    # crosses the allocation threshold); reference counting still frees what they drop.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(warmup + steps):
            # ABBA order: whichever runs second in a pair gets the warmer caches.
            if i % 2:
                ours, up = balance_step(), upstream_step()
            else:
                up, ours = upstream_step(), balance_step()
            if i >= warmup:
                t_up.append(up)
                t_ours.append(ours)
    finally:
        if gc_was_enabled:
            gc.enable()
        gc.collect()
    if planned < warmup + steps:
        raise RuntimeError("the plan did not give a finite allowance: the run measures nothing")
    up, ours = np.array(t_up, dtype=np.float64), np.array(t_ours, dtype=np.float64)
    # 95% interval of the ratio of means, by resampling the (upstream, ours) pairs.
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(up), size=(2000, len(up)))
    boot = ours[idx].mean(axis=1) / up[idx].mean(axis=1)
    return {
        "measured": True,
        "clock": "thread CPU time",
        "arm": "control (upstream vs upstream)" if control else "balance",
        "num_running": num_running,
        "steps": steps,
        "vllm_schedule_mean_us": round(float(up.mean()) / 1e3, 1),
        # The second arm is balance mode, or upstream's schedule() again in the control run.
        "second_arm_schedule_mean_us": round(float(ours.mean()) / 1e3, 1),
        "ratio_mean": round(float(ours.mean() / up.mean()), 4),
        "ratio_median": round(float(np.median(ours) / np.median(up)), 4),
        "ratio_mean_ci95": [round(float(x), 4) for x in np.percentile(boot, [2.5, 97.5])],
    }


def measure_schedule_overhead_runs(
    repeats: int = 8,
    num_running: int = 256,
    steps: int = 1500,
    warmup: int = 20,
    timeout_s: float = 600.0,
    progress: Any = None,
) -> dict[str, Any]:
    """:func:`measure_schedule_overhead` in ``repeats`` fresh processes for each arm, balance
    and the A/A control, alternating. One process's ratio carries a bias of its own (code
    and heap layout, string-hash seed): the same harness gives two identical arms ratios
    ~0.5% apart from one process to the next, more than one process's bootstrap interval
    admits. So the overhead is the mean of the per-process ratios with a Student t 95%
    interval across processes, set beside the control's. ``progress(done, total)`` is called
    after each process."""
    from vllm_ascend_triton.scheduler.sim.runner import t_interval95

    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 (an interval across processes), got {repeats}")
    if steps < 1 or warmup < 0 or num_running < 1:
        raise ValueError(
            f"need steps >= 1, warmup >= 0, num_running >= 1; got {steps}, {warmup}, {num_running}"
        )
    cmd = [sys.executable, str(Path(__file__).resolve())]
    cmd += ["--num-running", str(num_running), "--steps", str(steps), "--warmup", str(warmup)]
    runs: dict[str, list[dict[str, Any]]] = {"balance": [], "control": []}
    order = [
        arm
        for i in range(repeats)
        for arm in (("balance", "control") if i % 2 == 0 else ("control", "balance"))
    ]
    for done, arm in enumerate(order, 1):
        proc = subprocess.run(
            cmd + (["--control"] if arm == "control" else []),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"schedule-overhead process ({arm}) failed:\n{proc.stderr[-2000:]}")
        runs[arm].append(json.loads(proc.stdout))
        if progress is not None:
            progress(done, len(order))
    summary = {}
    for arm, results in runs.items():
        ratios = np.array([r["ratio_mean"] for r in results], dtype=np.float64)
        summary[arm] = {
            "ratio_mean": round(float(ratios.mean()), 4),
            "ratio_ci95": [round(x, 4) for x in t_interval95(ratios)],
            "ratio_min": round(float(ratios.min()), 4),
            "ratio_max": round(float(ratios.max()), 4),
            "vllm_schedule_mean_us": round(float(np.mean([r["vllm_schedule_mean_us"] for r in results])), 1),
            "second_arm_schedule_mean_us": round(
                float(np.mean([r["second_arm_schedule_mean_us"] for r in results])), 1
            ),
        }
    return {
        "measured": True,
        "clock": "thread CPU time",
        "num_running": num_running,
        "steps_per_process": steps,
        "processes_per_arm": repeats,
        "summary": summary,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-running", type=int, default=256, help="decoding requests held")
    parser.add_argument("--steps", type=int, default=400, help="timed step pairs per process")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--control", action="store_true", help="the A/A run (upstream in both arms)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="fresh processes per arm (balance, A/A control); 1: this process",
    )
    args = parser.parse_args(argv)
    if args.repeats > 1:
        res = measure_schedule_overhead_runs(
            args.repeats,
            args.num_running,
            args.steps,
            args.warmup,
            progress=lambda done, total: print(
                f"schedule overhead: {done}/{total} processes", file=sys.stderr
            ),
        )
    else:
        res = measure_schedule_overhead(args.num_running, args.steps, args.warmup, control=args.control)
    sys.stdout.write(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
