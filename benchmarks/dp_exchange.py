"""Measure the per-step DP load exchange and the whole step-boundary cost on this host.

Outside the package (nothing here is imported when vLLM serves); results:
docs/results/ (see docs/scheduler.md). The schedule() overhead is benchmarks/schedule_overhead.py.

``measure_exchange()`` starts N real processes (one gloo group over TCP on 127.0.0.1, as the
engine cores' ``dp_group``), and every process runs, per step, exactly what a rank runs at
the step boundary after building its load vector: the exchange's ``all_gather`` and
:func:`compute_plan` on the snapshot. Each transport is measured in its own group:
``gloo`` (:class:`GlooLoadExchange`, one gloo ``all_gather`` of the int64 load vector per
rank) and ``shm`` (:class:`ShmLoadExchange`, built by ``make_load_exchange`` over the gloo
group, as the engine hook builds it on a one-host DP deployment). A ``barrier`` before each
timed step aligns the ranks, as the lockstep forward pass aligns them in the engine; a
step's exchange cost is the slowest rank's. Loads change every step (seeded random draws),
so the plan does real work.
``measure_load_vector()`` times ``BalanceScheduler.load_vector()`` on a real vLLM scheduler
holding ``num_running`` decoding requests. The step-boundary cost is their sum, stated as
a share of a modelled decode step (30 ms by default: a DeepSeek-V3-class MoE decode step
on 910B-class NPUs, the step model's ``fixed`` term plus a small batch; an assumption, not
a measurement).

Every figure returned is measured here (``"measured": true``) except ``decode_step_ms``,
which is the model. On a shared 2-core host, 4 or 8 processes oversubscribe the cores, so
those rows include scheduler (OS) wait time that a real DP host (one core per rank) has not.

Command (JSON on stdout)::

    python benchmarks/dp_exchange.py --procs 2,4,8 --steps 300 --transport gloo,shm
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from vllm_ascend_triton.scheduler.plan import LOAD_VECTOR_LEN

DEFAULT_DECODE_STEP_MS = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loads_for_step(rng: random.Random, rank: int, step: int) -> Any:
    from vllm_ascend_triton.scheduler.plan import LoadVector

    decode = rng.randint(32, 128)
    prefill = rng.choice([0, 0, 512, 3500, 8000])
    return LoadVector(
        decode, prefill // 2, prefill - prefill // 2, decode, rng.randint(0, 16), 0, step % 40, 0
    )


TRANSPORTS = ("gloo", "shm")


def _worker(
    rank: int,
    world: int,
    port: int,
    steps: int,
    warmup: int,
    forward_ms: float,
    out_path: str,
    transport: str = "gloo",
) -> None:
    import torch.distributed as dist

    from vllm_ascend_triton.scheduler.exchange import make_load_exchange
    from vllm_ascend_triton.scheduler.plan import BalanceParams, compute_plan

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    exchange = make_load_exchange(dist.group.WORLD, transport)
    params = BalanceParams(max_num_seqs=128)
    rng = random.Random(1000 + rank)
    result: dict[str, list[int]] = {
        "sync_ns": [],
        "plan_ns": [],
        "overlap_ns": [],
        "post_ns": [],
        "wait_ns": [],
    }
    # Synchronous: post and collect at the boundary (what an idle rank does).
    for i in range(warmup + steps):
        local = _loads_for_step(rng, rank, i)
        dist.barrier()
        t0 = time.perf_counter_ns()
        snapshot = exchange.all_gather(local)
        t1 = time.perf_counter_ns()
        compute_plan(snapshot, params, 8192)
        t2 = time.perf_counter_ns()
        if i >= warmup:
            result["sync_ns"].append(t1 - t0)
            result["plan_ns"].append(t2 - t1)
    # Overlapped: post after schedule(), the forward pass runs (modelled by a sleep: the
    # engine core's thread waits on the workers), collect at the boundary. Only the post
    # and the final wait are on the step's critical path.
    if forward_ms > 0:
        for i in range(warmup + steps):
            local = _loads_for_step(rng, rank, i)
            dist.barrier()
            t0 = time.perf_counter_ns()
            handle = exchange.start(local)
            t1 = time.perf_counter_ns()
            time.sleep(forward_ms / 1e3)
            t2 = time.perf_counter_ns()
            exchange.finish(handle)
            t3 = time.perf_counter_ns()
            if i >= warmup:
                result["overlap_ns"].append((t1 - t0) + (t3 - t2))
                result["post_ns"].append(t1 - t0)
                result["wait_ns"].append(t3 - t2)
    dist.destroy_process_group()
    kind = type(exchange).__name__
    Path(out_path).write_text(json.dumps({"rank": rank, "exchange": kind, **result}))


def _pct(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)) / 1e3, 1)


def measure_exchange_once(
    world: int,
    steps: int = 300,
    warmup: int = 30,
    forward_ms: float = DEFAULT_DECODE_STEP_MS,
    timeout_s: float = 120.0,
    transport: str = "gloo",
) -> dict[str, Any]:
    """One gloo group of ``world`` processes exchanging over ``transport`` ("gloo" or
    "shm"); per-step times in microseconds.

    Per step, the exchange cost is the slowest rank's (ranks wait for each other anyway).
    ``exchange_*``: posted and collected at the boundary; ``overlapped_*``: posted before a
    modelled forward pass of ``forward_ms`` (0: skip) and collected after it (the time
    spent posting plus waiting at the boundary)."""
    if forward_ms < 0:
        raise ValueError(f"forward_ms must be >= 0, got {forward_ms}")
    if world < 2:
        raise ValueError(f"world must be >= 2, got {world}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps}, {warmup}")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="vat-exchange-") as tmp:
        outs = [os.path.join(tmp, f"r{r}.json") for r in range(world)]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        procs = [
            subprocess.Popen(
                [
                    *cmd,
                    *(str(a) for a in (r, world, port, steps, warmup, forward_ms)),
                    outs[r],
                    transport,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(world)
        ]
        deadline = time.monotonic() + timeout_s
        errors = []
        try:
            for p in procs:
                _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
                if p.returncode != 0:
                    errors.append(err[-2000:])
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if errors:
            raise RuntimeError(f"exchange worker failed:\n{errors[0]}")
        data = [json.loads(Path(o).read_text()) for o in outs]
    kinds = {d["exchange"] for d in data}
    expected = {"gloo": "GlooLoadExchange", "shm": "ShmLoadExchange"}[transport]
    if kinds != {expected}:
        raise RuntimeError(f"asked for the {transport} exchange, the ranks built {sorted(kinds)}")
    ex = np.array([d["sync_ns"] for d in data], dtype=np.float64).max(axis=0)  # slowest rank
    plan = np.array([d["plan_ns"] for d in data], dtype=np.float64).ravel()
    row: dict[str, Any] = {
        "processes": world,
        "transport": transport,
        "steps": steps,
        "exchange_p50_us": _pct(ex, 50),
        "exchange_p99_us": _pct(ex, 99),
        "exchange_mean_us": round(float(ex.mean()) / 1e3, 1),
        "plan_p50_us": _pct(plan, 50),
        "plan_p99_us": _pct(plan, 99),
        "bytes_per_rank": 8 * LOAD_VECTOR_LEN,
    }
    if forward_ms > 0:
        ov_ranks = np.array([d["overlap_ns"] for d in data], dtype=np.float64)
        ov = ov_ranks.max(axis=0)
        row.update(
            forward_ms_modelled=forward_ms,
            overlapped_p50_us=_pct(ov, 50),
            overlapped_p99_us=_pct(ov, 99),
            overlapped_mean_us=round(float(ov.mean()) / 1e3, 1),
            # Each rank's own median (no max over ranks): what one rank pays per step when
            # it is not descheduled by the host (cores oversubscribed here).
            overlapped_rank_p50_us=_pct(ov_ranks.ravel(), 50),
            overlapped_post_rank_p50_us=_pct(
                np.array([d["post_ns"] for d in data], dtype=np.float64).ravel(), 50
            ),
            overlapped_wait_rank_p50_us=_pct(
                np.array([d["wait_ns"] for d in data], dtype=np.float64).ravel(), 50
            ),
        )
    return row


def measure_load_vector(num_running: int = 256, calls: int = 200) -> dict[str, Any]:
    """``load_vector()`` of a balance scheduler holding ``num_running`` decoding requests."""
    from vllm_ascend_triton.scheduler.balance import BalanceScheduler
    from vllm_ascend_triton.scheduler.plan import BalanceParams
    from vllm_ascend_triton.scheduler.sim.vllm_setup import (
        SchedulerShape,
        fake_model_output,
        make_request,
        make_scheduler,
    )

    shape = SchedulerShape(max_num_seqs=num_running, max_num_batched_tokens=8192, num_blocks=num_running * 40)
    sched = make_scheduler(BalanceScheduler, shape, balance=BalanceParams(max_num_seqs=num_running))
    for i in range(num_running):
        sched.add_request(make_request(f"d{i}", 200 + i % 64, 10_000, token_offset=i))
    for _ in range(64):
        so = sched.schedule()
        sched.update_from_output(so, fake_model_output(sched, so))
        if all(r.num_output_tokens > 0 for r in sched.running):
            break
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        vec = sched.load_vector()
        times.append(time.perf_counter_ns() - t0)
    if vec.decode_tokens != num_running:
        raise RuntimeError(f"expected {num_running} decodes in the load vector, got {vec}")
    arr = np.array(times, dtype=np.float64)
    return {
        "num_running": num_running,
        "calls": calls,
        "load_vector_p50_us": _pct(arr, 50),
        "load_vector_p99_us": _pct(arr, 99),
    }


def measure_exchange(
    procs: tuple[int, ...] = (2, 4, 8),
    steps: int = 300,
    warmup: int = 30,
    num_running: int = 256,
    decode_step_ms: float = DEFAULT_DECODE_STEP_MS,
    timeout_s: float = 120.0,
    overlap: bool = True,
    transports: tuple[str, ...] = TRANSPORTS,
) -> dict[str, Any]:
    """The exchange table and the step-boundary cost as a share of a modelled step
    (synchronous, and overlapped with a modelled forward pass of ``decode_step_ms``): one
    row per process count and transport."""
    if decode_step_ms <= 0:
        raise ValueError(f"decode_step_ms must be > 0, got {decode_step_ms}")
    bad = [t for t in transports if t not in TRANSPORTS]
    if bad or not transports:
        raise ValueError(f"transports must be a non-empty subset of {TRANSPORTS}, got {transports}")
    load_before = [round(x, 2) for x in os.getloadavg()]
    vec = measure_load_vector(num_running) if num_running > 0 else None
    vec_us = vec["load_vector_p50_us"] if vec else 0.0
    rows = []
    for world, transport in [(w, t) for w in procs for t in transports]:
        fwd = decode_step_ms if overlap else 0.0
        row = measure_exchange_once(world, steps, warmup, fwd, timeout_s, transport)
        step_us = decode_step_ms * 1e3
        boundary = vec_us + row["exchange_p50_us"] + row["plan_p50_us"]
        row["step_boundary_p50_us"] = round(boundary, 1)
        row["share_of_decode_step_pct"] = round(100.0 * boundary / step_us, 3)
        if overlap:
            # Overlapped: the vector is built and posted after schedule(), the plan is
            # computed after collecting; the collective's flight time hides behind the step.
            crit = vec_us + row["overlapped_p50_us"] + row["plan_p50_us"]
            row["step_boundary_overlapped_p50_us"] = round(crit, 1)
            row["share_of_decode_step_overlapped_pct"] = round(100.0 * crit / step_us, 3)
        rows.append(row)
    return {
        "measured": True,
        "where": f"this host, {os.cpu_count()} CPUs; gloo over TCP on 127.0.0.1, shm: POSIX shared memory",
        # Other processes' load shares the cores with the ranks: 1/5/15-minute load averages.
        "host_load_avg_before": load_before,
        "host_load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "decode_step_ms": decode_step_ms,
        "decode_step_is_modelled": True,
        "load_vector": vec,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="2,4,8", help="comma-separated process counts")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--num-running", type=int, default=256, help="requests for the load-vector timing (0: skip)"
    )
    parser.add_argument("--decode-step-ms", type=float, default=DEFAULT_DECODE_STEP_MS)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--no-overlap", action="store_true", help="skip the overlapped timing")
    parser.add_argument(
        "--transport", default=",".join(TRANSPORTS), help="comma-separated exchange transports (gloo, shm)"
    )
    parser.add_argument(
        "--worker",
        nargs=8,
        metavar=("RANK", "WORLD", "PORT", "STEPS", "WARMUP", "FWD_MS", "OUT", "TRANSPORT"),
    )
    args = parser.parse_args(argv)
    if args.worker:
        rank, world, port, steps, warmup, fwd, out, transport = args.worker
        _worker(int(rank), int(world), int(port), int(steps), int(warmup), float(fwd), out, transport)
        return 0
    procs = tuple(int(p) for p in args.procs.split(",") if p.strip())
    transports = tuple(t.strip() for t in args.transport.split(",") if t.strip())
    result = measure_exchange(
        procs,
        args.steps,
        args.warmup,
        args.num_running,
        args.decode_step_ms,
        args.timeout_s,
        overlap=not args.no_overlap,
        transports=transports,
    )
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
