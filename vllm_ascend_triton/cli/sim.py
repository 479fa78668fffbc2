"""``vat sim``: the lockstep DP scheduling simulator (results are simulated). The experiments
themselves live in :mod:`vllm_ascend_triton.scheduler.sim.experiment`; this module parses
arguments and renders. The schedule() overhead benchmark is benchmarks/schedule_overhead.py."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from vllm_ascend_triton.scheduler.sim.experiment import (
    DEFAULT_POLICIES,
    DEFAULT_WORKLOADS,
    QUICK_SECONDS,
    parse_seeds,
)

logger = logging.getLogger(__name__)

__all__ = ["main", "parse_seeds", "register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sim`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "sim",
        help="simulate DP scheduling policies in lockstep (results are simulated)",
        description=(
            "Run N data-parallel ranks in one process, each a real vLLM scheduler with "
            "vLLM's KV cache manager, against a step-time model of a lockstep MoE step, and "
            "compare scheduling policies (default, cadence:N, gate, delay, balance), with 95% "
            "sampling intervals per run. Verdicts score open-loop workloads on served tok/s "
            "(tokens served by the horizon to the window's own arrivals). All timings "
            "are SIMULATED by the step-time model."
        ),
    )
    p.add_argument("--dp", type=int, default=8, help="number of DP ranks (default 8)")
    p.add_argument(
        "--workload",
        default=DEFAULT_WORKLOADS,
        help=f"comma list of workloads (default all: {DEFAULT_WORKLOADS})",
    )
    p.add_argument(
        "--policy",
        default=DEFAULT_POLICIES,
        help="comma list of policies: default, cadence:N, gate, delay[:PASSES[:WATERMARK]], balance "
        f"(default {DEFAULT_POLICIES})",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--out", type=Path, default=None, help="directory for sim.json and sim.png")
    p.add_argument("--seed", type=int, default=None, help="one workload seed (default 0)")
    p.add_argument(
        "--seeds",
        default=None,
        help="seeds to run, e.g. 0-4 or 0,2,5; reports mean and [min, max] per policy, verdicts "
        "per seed, and seed-paired verdicts (mean shortfall over seeds with a 95%% t interval)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"shorter simulated windows (s, horizon/warm-up): {QUICK_SECONDS}",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="bound runs by lockstep steps instead of simulated time (tests, debugging)",
    )
    p.add_argument("--warmup", type=int, default=None, help="unmeasured warm-up steps (with --steps)")
    p.add_argument(
        "--drain",
        action="store_true",
        help="open-loop workloads: end the trace at the horizon, run until every request has "
        "finished and also score throughput to drain (all output tokens / time of the last finish)",
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
    b.add_argument("--hold-steps", type=int, default=None, help="must stay below --escalate-steps")
    b.add_argument(
        "--hold-cost-factor",
        type=float,
        default=None,
        help="how far the hold follows the measured step cost (0: the fixed --hold-steps)",
    )
    b.add_argument("--max-hold-steps", type=int, default=None, help="longest step-cost hold")
    p.add_argument(
        "--plan-cost",
        action="store_true",
        help="instead: measure compute_plan per step at DP 8/16/32/64 on random snapshots (measured)",
    )
    p.add_argument(
        "--render",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="instead: merge saved sim.json / sim.partial.jsonl files and print their tables "
        "(markdown with --markdown; merged payload with --json; --out writes sim.json/sim.png)",
    )
    p.add_argument("--markdown", action="store_true", help="with --render: markdown tables")
    p.set_defaults(func=run)
    return p


_NOISE_NOTE = {True: " (within the runs' sampling noise)", False: " (resolved)", None: ""}


def _failures_text(failures: list[dict[str, Any]]) -> str:
    """``seed 4: ttft_p99_ok (within the runs' sampling noise), ...`` or ``none``."""
    parts = [f"seed {f['seed']}: {f['criterion']}{_NOISE_NOTE[f.get('within_noise')]}" for f in failures]
    return ", ".join(parts) or "none"


def _paired_text(wl: str, v: dict[str, Any]) -> str:
    """One line for a workload's seed-paired verdict (see report.paired_verdicts)."""
    w = v["worst"]
    lo, hi = w["shortfall_ci95"]
    verdict = "best or tied on the seed means" if v["pareto"] else "NOT best on the seed means"
    return (
        f"({wl}) seed-paired over {v['seeds']} seeds: balance {verdict}; largest mean shortfall "
        f"{w['metric']} against {w['against']} {w['mean_shortfall']:+.1%} "
        f"[{lo:+.1%}, {hi:+.1%}] ({w['significance']})"
    )


def _print_verdicts(verdicts: dict[str, Any]) -> None:
    for wl, v in verdicts["summary"].items():
        fails = _failures_text(v["failures"])
        print(f"({wl}) balance Pareto-best or tied on {v['pareto']}/{v['seeds']} seeds; failed: {fails}")
    for wl, v in verdicts["paired"].items():
        print(_paired_text(wl, v))


def run(args: argparse.Namespace) -> int:
    try:
        if args.plan_cost:
            return _run_plan_cost(args)
        if args.render:
            return _run_render(args)
        return _run_sim(args)
    except ValueError as e:
        print(f"vat sim: error: {e}", file=sys.stderr)
        return 2


def _run_render(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.scheduler.sim import report
    from vllm_ascend_triton.scheduler.sim.experiment import merge_payloads

    out = merge_payloads(args.render, args.out)
    if args.json:
        print(json.dumps(out, indent=2, allow_nan=False))
        return 0
    for d in out["by_dp"].values():
        size = {True: " (--quick windows)", False: " (full windows)", None: ""}[d["quick"]]
        print(f"SIMULATED lockstep DP={d['dp']}{size}, seeds {d['seeds']}")
        print(report.format_spread_table(d["aggregate"], markdown=args.markdown))
        _print_verdicts(d["verdicts"])
        plan, p50 = d["plan_us_mean"], d["plan_us_p50_median"]
        plan_text = "n/a" if plan is None else f"mean {plan:.1f} us"
        if p50 is not None:
            plan_text += f", p50 {p50:.1f} us"
        print(f"compute_plan per step in the balance runs (measured here): {plan_text}")
        print(f"simulator wall time, all runs summed: {d['sim_wall_seconds']:.0f} s")
        print()
    return 0


def _run_plan_cost(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.scheduler.sim.plancost import measure_plan_cost

    res = measure_plan_cost()
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"compute_plan per call, {res['steps']} random snapshots per DP size (measured here):")
        for dp, r in res["per_dp"].items():
            print(
                f"  DP {dp:>3}: mean {r['mean_us']:7.1f} us, p50 {r['p50_us']:7.1f}, p99 {r['p99_us']:7.1f}"
            )
    return 0


def _run_sim(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.scheduler.sim import report
    from vllm_ascend_triton.scheduler.sim.experiment import plan_experiment, run_experiment

    if args.seed is not None and args.seeds is not None:
        raise ValueError("give --seed or --seeds, not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed or 0]
    model_kw = {
        k: v
        for k, v in (
            ("fixed_ms", args.fixed_ms),
            ("per_token_ms", args.per_token_ms),
            ("per_kv_token_us", args.per_kv_token_us),
        )
        if v is not None
    }
    bal_kw = {
        k: v
        for k, v in (
            ("min_chunk", args.min_chunk),
            ("quorum", args.quorum),
            ("escalate_steps", args.escalate_steps),
            ("hold_steps", args.hold_steps),
            ("hold_cost_factor", args.hold_cost_factor),
            ("max_hold_steps", args.max_hold_steps),
        )
        if v is not None
    }
    exp = plan_experiment(
        args.dp,
        args.workload.split(","),
        args.policy.split(","),
        seeds,
        step_model=model_kw,
        balance_overrides=bal_kw,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_blocks=args.num_blocks,
        quick=args.quick,
        steps=args.steps,
        warmup=args.warmup,
        drain=args.drain,
    )

    def progress(s: dict[str, Any]) -> None:
        print(
            f"[vat sim] {s['workload']}/{s['policy']}/seed {s['seed']}: {s['steps']} steps, "
            f"{s['wall_seconds']:.0f}s wall",
            file=sys.stderr,
            flush=True,
        )

    payload = run_experiment(exp, args.jobs, args.out, progress)
    if args.json:
        print(json.dumps(payload, indent=2, allow_nan=False))
    else:
        label = " (--quick sizes)" if args.quick else ""
        print(f"SIMULATED lockstep DP={args.dp}{label}, seeds {seeds} (step-time model: {exp.model})")
        print(report.format_spread_table(payload["aggregate"]))
        _print_verdicts(payload["verdicts"])
        plan_cost = payload["plan_cost"]
        if plan_cost:
            print(
                f"compute_plan per step (measured here): mean {plan_cost['mean_us']:.1f} us, "
                f"worst p99 {plan_cost['max_p99_us']:.1f} us"
            )
        print(f"wall time {payload['wall_seconds']:.0f} s")
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
