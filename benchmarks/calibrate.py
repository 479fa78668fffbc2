"""Calibrate ``vat sim``'s step model against the engine and replay the engine's arrival trace.

Input: a directory written by ``engine_ab.py record`` (per policy, the step recorder's JSON lines
and vLLM's benchmark result). Output (JSON on stdout, ``calibration.json`` in the directory):

1. the engine's lockstep steps (the two ranks' step records matched by end time), and a
   least-squares fit of the step time against the largest scheduled tokens, the summed
   scheduled tokens and the largest attended context across ranks, with the error of the fit
   and of ``vat sim``'s form (max tokens + max context only);
2. the recorded arrival trace (time, prompt, output length) replayed in ``vat sim --dp 2``
   under the fitted step model, for vLLM's default and balance, with the simulator's
   predicted balance-vs-default differences beside the measured ones.

Labels: the step times and the benchmark figures are MEASURED on this host; the replayed
figures are SIMULATED.

Command::

    python benchmarks/calibrate.py DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def load(steps_dir: Path) -> tuple[dict[int, list[dict]], list[dict]]:
    steps: dict[int, list[dict]] = {}
    arrivals: list[dict] = []
    for f in sorted(steps_dir.glob("steps-*.jsonl")):
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec["kind"] == "step":
                steps.setdefault(rec["rank"], []).append(rec)
            else:
                arrivals.append(rec)
    for recs in steps.values():
        recs.sort(key=lambda r: r["t"])
    arrivals.sort(key=lambda r: r["t"])
    return steps, arrivals


def lockstep_steps(steps: dict[int, list[dict]], tol_s: float = 0.01) -> list[dict[str, Any]]:
    """Cluster the ranks' step records by end time into lockstep steps; a step's duration is
    the time since the previous cluster, kept only when that one ended at most ``max_gap_s``
    before (an idle gap between waves is not a step)."""
    events = sorted((r["t"], rank, r) for rank, recs in steps.items() for r in recs)
    clusters: list[dict[str, Any]] = []
    for t, rank, r in events:
        if clusters and t - clusters[-1]["t"] <= tol_s and rank not in clusters[-1]["ranks"]:
            c = clusters[-1]
        else:
            c = {"t": t, "ranks": {}}
            clusters.append(c)
        c["ranks"][rank] = r
    out = []
    for prev, cur in zip(clusters, clusters[1:], strict=False):
        dt = cur["t"] - prev["t"]
        tokens = [r["tokens"] for r in cur["ranks"].values()]
        ctx = [r["context"] for r in cur["ranks"].values()]
        out.append({"dt": dt, "max_tokens": max(tokens), "sum_tokens": sum(tokens), "max_ctx": max(ctx),
                    "busy_ranks": len(tokens)})  # fmt: skip
    return out


def fit(rows: list[dict[str, Any]], cols: list[str]) -> dict[str, Any]:
    x = np.array([[1.0] + [r[c] for c in cols] for r in rows])
    y = np.array([r["dt"] for r in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    pred = x @ coef
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "columns": ["fixed_s", *cols],
        "coef": [float(c) for c in coef],
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "median_abs_rel_err": float(np.median(np.abs(pred - y) / y)),
        "steps": len(rows),
    }


def replay(arrivals: list[dict], policy: str, model: Any, horizon_s: float) -> dict[str, Any]:
    from vllm_ascend_triton.scheduler.sim.runner import Policy, run_simulation
    from vllm_ascend_triton.scheduler.sim.vllm_setup import SchedulerShape
    from vllm_ascend_triton.scheduler.sim.workloads import Workload

    t0 = arrivals[0]["t"]

    class Replay(Workload):
        name = "replay"
        description = "the engine run's arrival trace"

        def __init__(self) -> None:
            super().__init__(2, 16, 0)
            for a in arrivals:
                self._push(a["t"] - t0, a["prompt"], a["max_tokens"])

    # The engine's per-rank settings: 16 sequences, 1024-token budget, 24,576 KV tokens.
    shape = SchedulerShape(max_num_seqs=16, max_num_batched_tokens=1024, max_model_len=3072, num_blocks=192)
    res = run_simulation(Replay(), Policy.parse(policy), 2, shape=shape, step_model=model, max_steps=None,
                         horizon_s=horizon_s, warmup_s=0.0)  # fmt: skip
    return res.summary()


def main(argv: list[str] | None = None) -> int:
    from vllm_ascend_triton.scheduler.sim.stepmodel import StepModel

    out = Path((argv or sys.argv[1:])[0])
    rec = json.loads((out / "record.json").read_text())
    result: dict[str, Any] = {"measured_on": "this host (2 shared CPUs), DP=2 API server", "policies": {}}
    all_rows = []
    traces = {}
    for policy in rec["results"]:
        steps, arrivals = load(out / f"steps_{policy.replace(':', '_')}")
        rows = lockstep_steps(steps)
        gap = np.percentile([r["dt"] for r in rows], 99) if rows else 1.0
        rows = [r for r in rows if r["dt"] <= max(gap, 0.5)]
        all_rows += rows
        traces[policy] = arrivals
        both = float(np.mean([r["busy_ranks"] == 2 for r in rows])) if rows else 0.0
        result["policies"][policy] = {
            "lockstep_steps": len(rows),
            "arrivals": len(arrivals),
            "busy_both_share": both,
        }
    result["fit_sim_form"] = fit(all_rows, ["max_tokens", "max_ctx"])
    result["fit_with_sum"] = fit(all_rows, ["max_tokens", "sum_tokens", "max_ctx"])
    f, t, c = result["fit_sim_form"]["coef"]
    model = StepModel(
        fixed_ms=max(0.0, f * 1e3), per_token_ms=max(0.0, t * 1e3), per_kv_token_us=max(0.0, c * 1e6)
    )
    result["fitted_step_model"] = model.__dict__
    trace = traces.get("default") or next(iter(traces.values()))
    horizon = trace[-1]["t"] - trace[0]["t"] + 120.0
    sim = {p: replay(trace, p, model, horizon) for p in ("default", "balance")}
    keys = {"output_tok_s": "output_throughput", "ttft_p50_s": "median_ttft_ms", "ttft_p99_s": "p99_ttft_ms",
            "tpot_p99_ms": "p99_tpot_ms"}  # fmt: skip
    compare = {}
    for sk, mk in keys.items():
        meas = {p: rec["results"][p][mk] for p in ("default", "balance") if p in rec["results"]}
        simv = {p: sim[p].get(sk) for p in sim}
        entry: dict[str, Any] = {"measured": meas, "simulated": simv}
        if len(meas) == 2 and all(v is not None for v in simv.values()):
            entry["measured_balance_vs_default"] = meas["balance"] / meas["default"] - 1
            entry["simulated_balance_vs_default"] = simv["balance"] / simv["default"] - 1
        compare[sk] = entry
    result["replay"] = {"label": "SIMULATED", "summaries": sim, "compare": compare}
    text = json.dumps(result, indent=2, default=float)
    (out / "calibration.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
