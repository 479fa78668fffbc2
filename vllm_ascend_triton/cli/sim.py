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

DEFAULT_POLICIES = "default,cadence:2,cadence:4,gate,delay,balance"
DEFAULT_WORKLOADS = "a,b,c,code,conv,low"
# Simulated seconds per workload: (horizon, warm-up); metrics over [warm-up, horizon), the
# same window for every policy. vLLM's schedule() + update_from_output dominate the wall
# time (~1.3 ms per rank-step at 128 running on this 2-core machine). (a) needs more than
# one request lifetime (~150-200 s) to desynchronise its closed loop; (c) has a burst every
# 20 s, so its window holds about 19 (quick: 7) bursts.
SIM_SECONDS = {
    "a": (700, 300),
    "b": (300, 60),
    "c": (400, 20),
    "code": (300, 30),
    "conv": (300, 30),
    "low": (600, 30),
}
# --quick: shorter windows so DP 64 runs in minutes; still past (a)'s first lifetime.
QUICK_SECONDS = {
    "a": (400, 200),
    "b": (100, 30),
    "c": (160, 20),
    "code": (120, 20),
    "conv": (120, 20),
    "low": (200, 20),
}


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
            "are SIMULATED by the step-time model, except --overhead, which measures "
            "schedule() on this host."
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
    p.add_argument("--overhead-running", type=int, default=256)
    p.add_argument("--overhead-steps", type=int, default=200)
    p.set_defaults(func=run)
    return p


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (workload, policy, seed) run; top-level so a worker process can import it."""
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
        horizon_s=job["horizon_s"],
        warmup_s=job["warmup_s"],
        balance_overrides=job["balance"],
    )
    return {"summary": res.summary(), "series": {"step_ms": res.series["step_ms"]}}


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


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,2,5"`` -> [0, 2, 5]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"--seeds expects e.g. 0-4 or 0,2,5, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds expects non-negative seeds, got {text!r}")
    return list(dict.fromkeys(seeds))


def run(args: argparse.Namespace) -> int:
    try:
        if args.overhead:
            return _run_overhead(args)
        if args.plan_cost:
            return _run_plan_cost(args)
        if args.render:
            return _run_render(args)
        return _run_sim(args)
    except ValueError as e:
        print(f"vat sim: error: {e}", file=sys.stderr)
        return 2


def _load_rows(paths: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Result rows and run headers from sim.json payloads or sim.partial.jsonl files."""
    rows: list[dict[str, Any]] = []
    headers: list[dict[str, Any]] = []
    for path in paths:
        text = path.read_text()
        if path.suffix == ".jsonl":
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
            headers.append({"file": str(path), "partial": True})
        else:
            payload = json.loads(text)
            if "results" not in payload:
                raise ValueError(f"{path}: not a vat sim JSON payload (no 'results')")
            # Rows remember the window size of their run (a merged payload keeps its own).
            rows += [{"quick": payload.get("quick"), **r} for r in payload["results"]]
            headers.append(
                {
                    "file": str(path),
                    "dp": payload.get("dp"),
                    "quick": payload.get("quick"),
                    "seeds": payload.get("seeds"),
                    "wall_seconds": payload.get("wall_seconds"),
                    "plan_cost": payload.get("plan_cost"),
                }
            )
    # A later file wins for the same (dp, window, workload, policy, seed).
    keyed = {(r["dp"], r.get("quick"), r["workload"], r["policy"], r.get("seed")): r for r in rows}
    return list(keyed.values()), headers


def _run_render(args: argparse.Namespace) -> int:
    import numpy as np

    from vllm_ascend_triton.scheduler.sim import report

    for path in args.render:
        if not path.is_file():
            raise ValueError(f"--render: no such file {path}")
    rows, headers = _load_rows(args.render)
    out: dict[str, Any] = {"simulated": True, "sources": headers, "by_dp": {}}
    groups = sorted({(r["dp"], r.get("quick")) for r in rows}, key=lambda g: (g[0], str(g[1])))
    for dp, quick in groups:
        dp_rows = [r for r in rows if r["dp"] == dp and r.get("quick") == quick]
        bal = [r for r in dp_rows if r["policy"] == "balance" and r.get("plan_us_mean") is not None]
        label = f"{dp}" + {True: " quick", False: " full", None: ""}[quick]
        out["by_dp"][label] = {
            "dp": dp,
            "quick": quick,
            "aggregate": report.aggregate(dp_rows),
            "verdicts": report.verdicts_by_seed(dp_rows),
            "sim_wall_seconds": sum(r["wall_seconds"] for r in dp_rows),
            "plan_us_mean": sum(r["plan_us_mean"] for r in bal) / len(bal) if bal else None,
            "plan_us_p50_median": float(np.median([r["plan_us_p50"] for r in bal if r.get("plan_us_p50")]))
            if any(r.get("plan_us_p50") for r in bal)
            else None,
        }
    out["results"] = rows
    out = report.json_safe(out)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report.write_json(args.out / "sim.json", out)
        first = min(r.get("seed") or 0 for r in rows)
        dp0 = min(r["dp"] for r in rows)
        plot_rows = [r for r in rows if r["dp"] == dp0 and (r.get("seed") or 0) == first]
        report.plot(plot_rows, {}, args.out / "sim.png", f"vat sim, DP={dp0}, seed {first}")
    if args.json:
        print(json.dumps(out, indent=2, allow_nan=False))
        return 0
    for d in out["by_dp"].values():
        seeds = sorted({r.get("seed") for r in rows if r["dp"] == d["dp"] and r.get("quick") == d["quick"]})
        size = {True: " (--quick windows)", False: " (full windows)", None: ""}[d["quick"]]
        print(f"SIMULATED lockstep DP={d['dp']}{size}, seeds {seeds}")
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
    from vllm_ascend_triton.scheduler.sim.workloads import DESCRIPTIONS, WORKLOADS

    if args.dp < 1:
        raise ValueError(f"--dp must be >= 1, got {args.dp}")
    if args.seed is not None and args.seeds is not None:
        raise ValueError("give --seed or --seeds, not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed or 0]
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
    sizes = QUICK_SECONDS if args.quick else SIM_SECONDS
    jobs = []
    windows: dict[str, Any] = {}
    for w in workloads:
        if args.steps is not None:
            warmup = args.warmup if args.warmup is not None else args.steps // 5
            if not 0 <= warmup < args.steps:
                raise ValueError(f"--warmup ({warmup}) must be in [0, --steps ({args.steps}))")
            bound = {"steps": args.steps, "warmup": warmup, "horizon_s": None, "warmup_s": 0.0}
            windows[w] = {"steps": args.steps, "warmup_steps": warmup}
        else:
            horizon, warm = sizes[w]
            bound = {"steps": None, "warmup": 0, "horizon_s": float(horizon), "warmup_s": float(warm)}
            windows[w] = {"horizon_s": horizon, "warmup_s": warm}
        for seed in seeds:
            for p in policies:
                jobs.append(
                    {
                        "workload": w,
                        "policy": p,
                        "dp": args.dp,
                        "seed": seed,
                        **bound,
                        "shape": shape,
                        "step_model": model.__dict__.copy(),
                        "balance": bal_kw,
                    }
                )
    t0 = time.perf_counter()

    partial = None
    if args.out is not None:
        # One line per finished run, so a run cut short (timeout) still leaves its results.
        args.out.mkdir(parents=True, exist_ok=True)
        partial = args.out / "sim.partial.jsonl"
        partial.write_text("")

    def progress(res: dict[str, Any]) -> None:
        s = res["summary"]
        if partial is not None:
            with partial.open("a") as fh:
                fh.write(json.dumps(report.json_safe(s), allow_nan=False) + "\n")
        print(
            f"[vat sim] {s['workload']}/{s['policy']}/seed {s['seed']}: {s['steps']} steps, "
            f"{s['wall_seconds']:.0f}s wall",
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
    first_seed = [r for r in results if r["summary"]["seed"] == seeds[0]]
    series = {(r["summary"]["workload"], r["summary"]["policy"]): r["series"] for r in first_seed}
    balance_rows = [r for r in rows if r["policy"] == "balance" and r["plan_us_mean"] is not None]
    plan_cost = None
    if balance_rows:
        plan_cost = {
            "measured_on": "this host (compute_plan once per simulated step, perf_counter_ns)",
            "mean_us": sum(r["plan_us_mean"] for r in balance_rows) / len(balance_rows),
            "max_p99_us": max(r["plan_us_p99"] for r in balance_rows),
        }
    wall = time.perf_counter() - t0
    payload = {
        "simulated": True,
        "note": "Timings come from the step-time model (not measured); schedulers are real vLLM "
        "0.32 objects. plan_us_* and wall_seconds are measured on the host that ran it.",
        "dp": args.dp,
        "quick": None if args.steps is not None else bool(args.quick),  # None: step-bounded
        "seeds": seeds,
        "windows": windows,
        "workloads": {w: DESCRIPTIONS[w] for w in workloads},
        "step_model": model.__dict__,
        "balance_params": {k: v for k, v in params.__dict__.items() if k != "mode"},
        "scheduler": shape,
        "wall_seconds": wall,
        "plan_cost": plan_cost,
        "results": rows,
        "aggregate": report.aggregate(rows),
        "verdicts": report.verdicts_by_seed(rows),
    }
    payload = report.json_safe(payload)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report.write_json(args.out / "sim.json", payload)
        first_rows = [r for r in rows if r["seed"] == seeds[0]]
        report.plot(first_rows, series, args.out / "sim.png", f"vat sim, DP={args.dp}, seed {seeds[0]}")
    if args.json:
        print(json.dumps(payload, indent=2, allow_nan=False))
    else:
        label = " (--quick sizes)" if args.quick else ""
        print(f"SIMULATED lockstep DP={args.dp}{label}, seeds {seeds} (step-time model: {model})")
        print(report.format_spread_table(payload["aggregate"]))
        _print_verdicts(payload["verdicts"])
        if plan_cost:
            print(
                f"compute_plan per step (measured here): mean {plan_cost['mean_us']:.1f} us, "
                f"worst p99 {plan_cost['max_p99_us']:.1f} us"
            )
        print(f"wall time {wall:.0f} s")
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
