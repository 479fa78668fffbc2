"""``vat sim``: the lockstep DP scheduling simulator (results are simulated), and
``vat sim --overhead`` (schedule() cost of balance mode vs vLLM's scheduler, measured)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_POLICIES = "default,cadence:2,cadence:4,gate,balance"
# Lockstep steps simulated per workload, and how many of them are warm-up (not measured).
# Sized so that `--dp 8 --workload a,b,c` with the five default policies takes a few
# minutes on 2 cores (vLLM's schedule() + update_from_output dominate: ~2 ms per rank-step
# at 128 running). (a) needs more than one request lifetime (~1500 steps) to desynchronise.
DEFAULT_STEPS = {"a": 3000, "b": 2500, "c": 2500}
DEFAULT_WARMUP = {"a": 1300, "b": 500, "c": 500}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sim`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "sim",
        help="simulate DP scheduling policies in lockstep (results are simulated)",
        description=(
            "Run N data-parallel ranks in one process, each a real vLLM scheduler with "
            "vLLM's KV cache manager, against a step-time model of a lockstep MoE step, and "
            "compare scheduling policies (default, cadence:N, gate, balance). All timings "
            "are SIMULATED by the step-time model, except --overhead, which measures "
            "schedule() on this host."
        ),
    )
    p.add_argument("--dp", type=int, default=8, help="number of DP ranks (default 8)")
    p.add_argument("--workload", default="a,b,c", help="comma list of workloads a,b,c (default all)")
    p.add_argument(
        "--policy",
        default=DEFAULT_POLICIES,
        help=f"comma list of policies: default, cadence:N, gate, balance (default {DEFAULT_POLICIES})",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--out", type=Path, default=None, help="directory for sim.json and sim.png")
    p.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"lockstep steps per run (default per workload: {DEFAULT_STEPS})",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help=f"unmeasured warm-up steps (default per workload: {DEFAULT_WARMUP})",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="parallel worker processes (default min(2, cores))",
    )
    g = p.add_argument_group("step-time model (simulated; defaults: 910B-class MoE, DP8/EP)")
    g.add_argument("--fixed-ms", type=float, default=None, help="fixed cost per step")
    g.add_argument(
        "--per-token-ms", type=float, default=None, help="cost per token of the largest rank batch"
    )
    g.add_argument(
        "--per-kv-token-us", type=float, default=None, help="cost per attended KV token of the slowest rank"
    )
    s = p.add_argument_group("per-rank vLLM scheduler")
    s.add_argument("--max-num-seqs", type=int, default=128)
    s.add_argument("--max-num-batched-tokens", type=int, default=8192)
    s.add_argument("--num-blocks", type=int, default=6000, help="KV blocks per rank (block size 128)")
    b = p.add_argument_group("balance policy")
    b.add_argument("--min-chunk", type=int, default=None)
    b.add_argument("--quorum", type=float, default=None)
    b.add_argument("--escalate-steps", type=int, default=None)
    p.add_argument(
        "--overhead",
        action="store_true",
        help="instead: measure mean schedule() time, balance vs vLLM, with --overhead-running requests",
    )
    p.add_argument("--overhead-running", type=int, default=256)
    p.add_argument("--overhead-steps", type=int, default=200)
    p.set_defaults(func=run)
    return p


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (workload, policy) run; top-level so a worker process can import it."""
    logging.basicConfig(level=logging.WARNING)
    from vllm_ascend_triton.scheduler.sim.runner import Policy, run_simulation
    from vllm_ascend_triton.scheduler.sim.stepmodel import StepModel
    from vllm_ascend_triton.scheduler.sim.vllm_setup import SchedulerShape
    from vllm_ascend_triton.scheduler.sim.workloads import make_workload

    shape = SchedulerShape(**job["shape"])
    res = run_simulation(
        make_workload(job["workload"], job["dp"], shape.max_num_seqs, job["seed"]),
        Policy.parse(job["policy"]),
        job["dp"],
        shape=shape,
        step_model=StepModel(**job["step_model"]),
        max_steps=job["steps"],
        warmup_steps=job["warmup"],
        balance_overrides=job["balance"],
    )
    return {"summary": res.summary(), "series": {"step_ms": res.series["step_ms"]}}


def run(args: argparse.Namespace) -> int:
    try:
        if args.overhead:
            return _run_overhead(args)
        return _run_sim(args)
    except ValueError as e:
        print(f"vat sim: error: {e}", file=sys.stderr)
        return 2


def _run_overhead(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.scheduler.sim.overhead import measure_overhead

    res = measure_overhead(num_running=args.overhead_running, steps=args.overhead_steps)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"schedule() with {res['num_running']} running requests, {res['steps']} steps (measured here):")
        print(f"  vLLM Scheduler   {res['vllm_schedule_mean_us']:9.1f} us")
        print(f"  balance mode     {res['balance_schedule_mean_us']:9.1f} us  ratio {res['ratio']:.3f}")
        print(
            f"  + load_vector()  {res['load_vector_mean_us']:9.1f} us  "
            f"ratio incl. {res['ratio_including_load_vector']:.3f}"
        )
    return 0


def _run_sim(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.scheduler.plan import BalanceParams
    from vllm_ascend_triton.scheduler.sim import report
    from vllm_ascend_triton.scheduler.sim.runner import Policy
    from vllm_ascend_triton.scheduler.sim.stepmodel import StepModel
    from vllm_ascend_triton.scheduler.sim.workloads import WORKLOADS

    if args.dp < 1:
        raise ValueError(f"--dp must be >= 1, got {args.dp}")
    workloads = [w.strip() for w in args.workload.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            raise ValueError(f"unknown workload {w!r}; expected some of {','.join(WORKLOADS)}")
    policies = [Policy.parse(p).name for p in args.policy.split(",") if p.strip()]
    if not workloads or not policies:
        raise ValueError("need at least one workload and one policy")
    model_kw = {
        k: v
        for k, v in (
            ("fixed_ms", args.fixed_ms),
            ("per_token_ms", args.per_token_ms),
            ("per_kv_token_us", args.per_kv_token_us),
        )
        if v is not None
    }
    model = StepModel(**model_kw)
    bal_kw = {
        k: v
        for k, v in (
            ("min_chunk", args.min_chunk),
            ("quorum", args.quorum),
            ("escalate_steps", args.escalate_steps),
        )
        if v is not None
    }
    params = BalanceParams(max_num_seqs=args.max_num_seqs, **bal_kw)  # validates early
    shape = {
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "num_blocks": args.num_blocks,
    }
    jobs = []
    for w in workloads:
        steps = args.steps if args.steps is not None else DEFAULT_STEPS[w]
        warmup = args.warmup if args.warmup is not None else min(DEFAULT_WARMUP[w], steps // 2)
        if warmup >= steps:
            raise ValueError(f"--warmup ({warmup}) must be smaller than --steps ({steps})")
        for p in policies:
            jobs.append(
                {
                    "workload": w,
                    "policy": p,
                    "dp": args.dp,
                    "seed": args.seed,
                    "steps": steps,
                    "warmup": warmup,
                    "shape": shape,
                    "step_model": model.__dict__.copy(),
                    "balance": bal_kw,
                }
            )
    t0 = time.perf_counter()

    def progress(res: dict[str, Any]) -> None:
        s = res["summary"]
        print(
            f"[vat sim] {s['workload']}/{s['policy']}: {s['steps']} steps, {s['wall_seconds']:.0f}s wall",
            file=sys.stderr,
            flush=True,
        )

    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as ex:
            futures = [ex.submit(_run_one, j) for j in jobs]
            for f in futures:
                f.add_done_callback(lambda f: progress(f.result()) if not f.exception() else None)
            results = [f.result() for f in futures]
    else:
        results = []
        for j in jobs:
            results.append(_run_one(j))
            progress(results[-1])
    rows = [r["summary"] for r in results]
    series = {(r["summary"]["workload"], r["summary"]["policy"]): r["series"] for r in results}
    payload = {
        "simulated": True,
        "note": "Timings come from the step-time model (not measured); "
        "schedulers are real vLLM 0.32 objects.",
        "dp": args.dp,
        "step_model": model.__dict__,
        "balance_params": {k: v for k, v in params.__dict__.items() if k != "mode"},
        "scheduler": shape,
        "seed": args.seed,
        "wall_seconds": time.perf_counter() - t0,
        "results": rows,
        "verdicts": report.verdicts(rows),
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report.write_json(args.out / "sim.json", payload)
        report.plot(rows, series, args.out / "sim.png", f"vat sim, DP={args.dp}")
    if args.json:
        print(json.dumps(payload, indent=2, default=lambda o: None))
    else:
        print(f"SIMULATED lockstep DP={args.dp} (step-time model: {model})")
        print(report.format_table(rows))
        for wl, v in payload["verdicts"].items():
            f = report._fmt
            print(
                f"({wl}) balance {f('{:.0f}', v['balance_output_tok_s'])} tok/s vs best other "
                f"{f('{:.0f}', v['best_other_output_tok_s'])} ({v['best_other_by_throughput']}), "
                f"TTFT p99 {f('{:.2f}', v['balance_ttft_p99_s'])} s vs best "
                f"{f('{:.2f}', v['best_other_ttft_p99_s'])} s ({v['best_other_by_ttft_p99']})"
            )
        if args.out is not None:
            print(f"wrote {args.out / 'sim.json'} and {args.out / 'sim.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vat")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
