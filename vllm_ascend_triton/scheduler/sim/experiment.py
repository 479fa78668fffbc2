"""``vat sim``'s experiments: the runs of (workload, policy, seed) at one DP size, their payload,
and the merge of saved payloads. Returns data; the CLI (``cli/sim.py``) parses and renders.

Every timing in a payload is SIMULATED by the step-time model, except ``plan_us_*`` and
``wall_seconds`` (measured on the host that ran it). What the policies and workloads are:
docs/scheduler.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from vllm_ascend_triton.scheduler.plan import BalanceParams
from vllm_ascend_triton.scheduler.sim import report
from vllm_ascend_triton.scheduler.sim.runner import Policy
from vllm_ascend_triton.scheduler.sim.stepmodel import StepModel

DEFAULT_POLICIES = "default,cadence:2,cadence:4,gate,delay,balance"
DEFAULT_WORKLOADS = "a,b,c,code,conv,low,burst"
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
    "burst": (300, 30),
}
# --quick: shorter windows so DP 64 runs in minutes; still past (a)'s first lifetime.
QUICK_SECONDS = {
    "a": (400, 200),
    "b": (100, 30),
    "c": (160, 20),
    "code": (120, 20),
    "conv": (120, 20),
    "low": (200, 20),
    "burst": (120, 20),
}


def parse_seeds(text: str) -> list[int]:
    """Seeds from a range or list.

    Args:
        text: ``"0-4"`` or ``"0,2,5"`` (ranges and single seeds may be mixed).

    Returns:
        The seeds in order, duplicates dropped: ``"0-4"`` -> [0, 1, 2, 3, 4].

    Raises:
        ValueError: not a list of non-negative seeds or ranges.
    """
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


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (workload, policy, seed) run; top-level so a worker process can import it.

    Args:
        job: one entry of :attr:`Experiment.jobs`.

    Returns:
        ``{"summary": run summary, "series": {"step_ms": [...]}}``.
    """
    logging.basicConfig(level=logging.WARNING)
    from vllm_ascend_triton.scheduler.sim.runner import run_simulation
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
        drain=job.get("drain", False),
    )
    return {"summary": res.summary(), "series": {"step_ms": res.series["step_ms"]}}


@dataclass
class Experiment:
    """A validated ``vat sim`` experiment: every (workload, seed, policy) job at one DP size."""

    dp: int
    workloads: list[str]
    policies: list[str]
    seeds: list[int]
    model: StepModel
    params: BalanceParams
    balance_overrides: dict[str, Any]
    shape: dict[str, int]
    quick: bool | None  # None: step-bounded runs
    drain: bool = False
    windows: dict[str, Any] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)


def plan_experiment(
    dp: int,
    workloads: Sequence[str],
    policies: Sequence[str],
    seeds: Sequence[int],
    *,
    step_model: dict[str, float] | None = None,
    balance_overrides: dict[str, Any] | None = None,
    max_num_seqs: int = 128,
    max_num_batched_tokens: int = 8192,
    num_blocks: int = 6000,
    quick: bool = False,
    steps: int | None = None,
    warmup: int | None = None,
    drain: bool = False,
) -> Experiment:
    """Validate the settings and list the jobs.

    Args:
        dp: DP ranks (>= 1).
        workloads: names from :data:`~vllm_ascend_triton.scheduler.sim.workloads.WORKLOADS`.
        policies: policy specs (``default``, ``cadence:N``, ``gate``, ``delay[:P[:W]]``, ``balance``).
        seeds: workload seeds.
        step_model: overrides of :class:`StepModel`'s fields.
        balance_overrides: overrides of :class:`BalanceParams` for the balance policy.
        max_num_seqs, max_num_batched_tokens, num_blocks: each rank's vLLM scheduler.
        quick: the shorter simulated windows (:data:`QUICK_SECONDS`).
        steps, warmup: bound runs by lockstep steps instead of simulated time.
        drain: time-bounded open-loop runs end their trace at the horizon and run on until
            every request has finished (``drain_tok_s``: throughput to drain); the closed
            loop (a) never drains and ignores it.

    Returns:
        The :class:`Experiment`.

    Raises:
        ValueError: an unknown workload or policy, or sizes out of range.
    """
    from vllm_ascend_triton.scheduler.sim.workloads import WORKLOADS

    if dp < 1:
        raise ValueError(f"--dp must be >= 1, got {dp}")
    wls = [w.strip() for w in workloads if w.strip()]
    for w in wls:
        if w not in WORKLOADS:
            raise ValueError(f"unknown workload {w!r}; expected some of {','.join(WORKLOADS)}")
    pols = [Policy.parse(p).name for p in policies if p.strip()]
    if not wls or not pols:
        raise ValueError("need at least one workload and one policy")
    if drain and steps is not None:
        raise ValueError("--drain needs time-bounded runs (not --steps)")
    model = StepModel(**(step_model or {}))
    bal_kw = dict(balance_overrides or {})
    params = BalanceParams(max_num_seqs=max_num_seqs, **bal_kw)  # validates early
    shape = {
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
        "num_blocks": num_blocks,
    }
    exp = Experiment(
        dp,
        wls,
        pols,
        list(seeds),
        model,
        params,
        bal_kw,
        shape,
        None if steps is not None else bool(quick),
        drain,
    )
    sizes = QUICK_SECONDS if quick else SIM_SECONDS
    for w in wls:
        if steps is not None:
            warm = warmup if warmup is not None else steps // 5
            if not 0 <= warm < steps:
                raise ValueError(f"--warmup ({warm}) must be in [0, --steps ({steps}))")
            bound = {"steps": steps, "warmup": warm, "horizon_s": None, "warmup_s": 0.0}
            exp.windows[w] = {"steps": steps, "warmup_steps": warm}
        else:
            horizon, warm_s = sizes[w]
            bound = {"steps": None, "warmup": 0, "horizon_s": float(horizon), "warmup_s": float(warm_s)}
            exp.windows[w] = {"horizon_s": horizon, "warmup_s": warm_s}
        for seed in exp.seeds:
            for p in pols:
                exp.jobs.append(
                    {
                        "workload": w,
                        "policy": p,
                        "dp": dp,
                        "seed": seed,
                        **bound,
                        "shape": shape,
                        "step_model": model.__dict__.copy(),
                        "balance": bal_kw,
                        "drain": drain and w != "a",
                    }
                )
    return exp


def run_experiment(
    exp: Experiment,
    jobs: int = 1,
    out: Path | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every job of ``exp`` and build the payload (``sim.json``).

    Args:
        exp: from :func:`plan_experiment`.
        jobs: parallel worker processes (spawned).
        out: directory for ``sim.partial.jsonl`` (one line per finished run, so a run cut short
            keeps its results), ``sim.json`` and ``sim.png``; None writes nothing.
        on_result: called with each run's summary as it finishes (progress).

    Returns:
        The JSON-safe payload: results, aggregate, per-seed and seed-paired verdicts.
    """
    from vllm_ascend_triton.scheduler.sim.workloads import DESCRIPTIONS

    t0 = time.perf_counter()
    partial = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        partial = out / "sim.partial.jsonl"
        partial.write_text("")

    def progress(res: dict[str, Any]) -> None:
        if partial is not None:
            with partial.open("a") as fh:
                fh.write(json.dumps(report.json_safe(res["summary"]), allow_nan=False) + "\n")
        if on_result is not None:
            on_result(res["summary"])

    if jobs > 1 and len(exp.jobs) > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as ex:
            futures = [ex.submit(run_one, j) for j in exp.jobs]
            for f in futures:
                f.add_done_callback(lambda f: progress(f.result()) if not f.exception() else None)
            results = [f.result() for f in futures]
    else:
        results = []
        for j in exp.jobs:
            results.append(run_one(j))
            progress(results[-1])
    rows = [r["summary"] for r in results]
    first_seed = [r for r in results if r["summary"]["seed"] == exp.seeds[0]]
    series = {(r["summary"]["workload"], r["summary"]["policy"]): r["series"] for r in first_seed}
    balance_rows = [r for r in rows if r["policy"] == "balance" and r["plan_us_mean"] is not None]
    plan_cost = None
    if balance_rows:
        plan_cost = {
            "measured_on": "this host (compute_plan once per simulated step, perf_counter_ns)",
            "mean_us": sum(r["plan_us_mean"] for r in balance_rows) / len(balance_rows),
            "max_p99_us": max(r["plan_us_p99"] for r in balance_rows),
        }
    payload = {
        "simulated": True,
        "note": "Timings come from the step-time model (not measured); schedulers are real vLLM "
        "0.32 objects. plan_us_* and wall_seconds are measured on the host that ran it.",
        "dp": exp.dp,
        "quick": exp.quick,
        "seeds": exp.seeds,
        "windows": exp.windows,
        "drain": exp.drain,
        "workloads": {w: DESCRIPTIONS[w] for w in exp.workloads},
        "step_model": exp.model.__dict__,
        "balance_params": {k: v for k, v in exp.params.__dict__.items() if k != "mode"},
        "scheduler": exp.shape,
        "wall_seconds": time.perf_counter() - t0,
        "plan_cost": plan_cost,
        "results": rows,
        "aggregate": report.aggregate(rows),
        "verdicts": report.verdicts_by_seed(rows),
    }
    payload = report.json_safe(payload)
    if out is not None:
        report.write_json(out / "sim.json", payload)
        first_rows = [r for r in rows if r["seed"] == exp.seeds[0]]
        report.plot(first_rows, series, out / "sim.png", f"vat sim, DP={exp.dp}, seed {exp.seeds[0]}")
    return payload


def load_rows(paths: Sequence[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Result rows and run headers from ``sim.json`` payloads or ``sim.partial.jsonl`` files.

    Args:
        paths: files written by :func:`run_experiment` or :func:`merge_payloads`.

    Returns:
        (rows, headers); a later file wins for the same (dp, window, workload, policy, seed).

    Raises:
        ValueError: a file that is not a ``vat sim`` payload.
    """
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
    keyed = {(r["dp"], r.get("quick"), r["workload"], r["policy"], r.get("seed")): r for r in rows}
    return list(keyed.values()), headers


def merge_payloads(paths: Sequence[Path], out: Path | None = None) -> dict[str, Any]:
    """Merge saved payloads into one, grouped by (DP size, window).

    Args:
        paths: ``sim.json`` / ``sim.partial.jsonl`` files.
        out: directory for the merged ``sim.json`` and ``sim.png``; None writes nothing.

    Returns:
        ``{"simulated": True, "sources", "by_dp": {label: aggregate, verdicts, ...}, "results"}``.

    Raises:
        ValueError: a missing file or one that is not a payload.
    """
    for path in paths:
        if not path.is_file():
            raise ValueError(f"--render: no such file {path}")
    rows, headers = load_rows(paths)
    merged: dict[str, Any] = {"simulated": True, "sources": headers, "by_dp": {}}
    groups = sorted({(r["dp"], r.get("quick")) for r in rows}, key=lambda g: (g[0], str(g[1])))
    for dp, quick in groups:
        dp_rows = [r for r in rows if r["dp"] == dp and r.get("quick") == quick]
        bal = [r for r in dp_rows if r["policy"] == "balance" and r.get("plan_us_mean") is not None]
        p50s = [r["plan_us_p50"] for r in bal if r.get("plan_us_p50")]
        label = f"{dp}" + {True: " quick", False: " full", None: ""}[quick]
        merged["by_dp"][label] = {
            "dp": dp,
            "quick": quick,
            "seeds": sorted({r.get("seed") for r in dp_rows}, key=lambda s: -1 if s is None else s),
            "aggregate": report.aggregate(dp_rows),
            "verdicts": report.verdicts_by_seed(dp_rows),
            "sim_wall_seconds": sum(r["wall_seconds"] for r in dp_rows),
            "plan_us_mean": sum(r["plan_us_mean"] for r in bal) / len(bal) if bal else None,
            "plan_us_p50_median": float(np.median(p50s)) if p50s else None,
        }
    merged["results"] = rows
    merged = report.json_safe(merged)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(out / "sim.json", merged)
        first = min(r.get("seed") or 0 for r in rows)
        dp0 = min(r["dp"] for r in rows)
        plot_rows = [r for r in rows if r["dp"] == dp0 and (r.get("seed") or 0) == first]
        report.plot(plot_rows, {}, out / "sim.png", f"vat sim, DP={dp0}, seed {first}")
    return merged
