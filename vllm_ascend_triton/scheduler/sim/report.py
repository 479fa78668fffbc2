"""Table, JSON and PNG output of simulator runs (every figure is labelled simulated)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vllm_ascend_triton.runtime.jsonsafe import json_safe  # noqa: F401  (part of this module's API)

logger = logging.getLogger(__name__)

COLUMNS = [
    ("workload", "wl", "{}"),
    ("policy", "policy", "{}"),
    ("output_tok_s", "out tok/s", "{:.0f}"),
    ("served_tok_s", "served tok/s", "{:.0f}"),
    ("drain_tok_s", "drain tok/s", "{:.0f}"),
    ("ttft_p50_s", "TTFT p50 s", "{:.2f}"),
    ("ttft_p99_s", "TTFT p99 s", "{:.2f}"),
    ("tpot_p50_ms", "TPOT p50 ms", "{:.1f}"),
    ("tpot_p99_ms", "TPOT p99 ms", "{:.1f}"),
    ("idle_share", "idle share", "{:.1%}"),
    ("steps", "steps", "{}"),
    ("requests_finished", "finished", "{}"),
]


TIE = 0.01  # relative difference that counts as a tie


def _fmt(fmt: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return fmt.format(v)


def _render_table(header: list[str], body: list[list[str]], markdown: bool) -> str:
    """A markdown table, or plain right-aligned columns."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(x.rjust(w) for x, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    header = [c[1] for c in COLUMNS]
    body = [[_fmt(c[2], r.get(c[0])) for c in COLUMNS] for r in rows]
    return _render_table(header, body, markdown)


def _unresolved(a: dict[str, Any], b: dict[str, Any] | None, metric: str) -> bool | None:
    """Whether the two runs' 95% sampling intervals of ``metric`` overlap (the difference
    is inside the noise of the runs themselves); None when either run has no interval."""
    if b is None:
        return None
    ia, ib = a.get(f"{metric}_ci95"), b.get(f"{metric}_ci95")
    if not ia or not ib:
        return None
    return ia[0] <= ib[1] and ib[0] <= ia[1]


def throughput_metric(rows: Sequence[dict[str, Any]]) -> str:
    """The throughput a workload's verdict uses: ``served_tok_s`` when every row has it (an
    open-loop workload in a time-bounded run: tokens served to the window's own arrivals,
    which backlog carried into the window cannot inflate), else ``output_tok_s``."""
    if rows and all(r.get("served_tok_s") is not None for r in rows):
        return "served_tok_s"
    return "output_tok_s"


def has_drain(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether every row is a drain run (``vat sim --drain``): then throughput to drain
    (``drain_tok_s``) is a second throughput criterion."""
    return bool(rows) and all(r.get("drain_tok_s") is not None for r in rows)


CRITERIA = ("throughput_ok", "drain_ok", "ttft_p99_ok", "tpot_p99_ok")


def verdicts(rows: Sequence[dict[str, Any]], tie: float = TIE) -> dict[str, dict[str, Any]]:
    """Per workload (one seed's rows): is ``balance`` Pareto-best? Throughput (see
    :func:`throughput_metric`) >= every other policy's, throughput to drain too in drain
    runs (:func:`has_drain`), TTFT p99 <= every other policy's, TPOT p99 <= default's, each
    with a relative tolerance ``tie`` (differences within it count as ties). With the figures
    behind it, and for a failed criterion whether the difference is within the runs'
    sampling noise (their 95% intervals overlap; None without intervals)."""
    out: dict[str, dict[str, Any]] = {}
    for wl in sorted({r["workload"] for r in rows}):
        wl_rows = [r for r in rows if r["workload"] == wl]
        bal = next((r for r in wl_rows if r["policy"] == "balance"), None)
        others = [r for r in wl_rows if r["policy"] != "balance"]
        if bal is None or not others:
            continue
        tput = throughput_metric(wl_rows)
        default = next((r for r in others if r["policy"] == "default"), None)
        best_tput = max(others, key=lambda r: r[tput])
        ttfts = [r for r in others if r["ttft_p99_s"] is not None]
        best_ttft = min(ttfts, key=lambda r: r["ttft_p99_s"]) if ttfts else None
        tput_ok = bal[tput] >= best_tput[tput] * (1 - tie)
        ttft_ok = best_ttft is None or (
            bal["ttft_p99_s"] is not None and bal["ttft_p99_s"] <= best_ttft["ttft_p99_s"] * (1 + tie)
        )
        tpot_ok = (
            default is None
            or default["tpot_p99_ms"] is None
            or (bal["tpot_p99_ms"] is not None and bal["tpot_p99_ms"] <= default["tpot_p99_ms"] * (1 + tie))
        )
        drain_ok = True
        if has_drain(wl_rows):
            best_drain = max(others, key=lambda r: r["drain_tok_s"])
            drain_ok = bal["drain_tok_s"] >= best_drain["drain_tok_s"] * (1 - tie)
        out[wl] = {
            "throughput_metric": tput,
            "balance_throughput": bal[tput],
            "best_other_throughput": best_tput[tput],
            "best_other_by_throughput": best_tput["policy"],
            "throughput_gain": bal[tput] / best_tput[tput] - 1.0 if best_tput[tput] else None,
            "balance_ttft_p99_s": bal["ttft_p99_s"],
            "best_other_ttft_p99_s": None if best_ttft is None else best_ttft["ttft_p99_s"],
            "best_other_by_ttft_p99": None if best_ttft is None else best_ttft["policy"],
            "balance_tpot_p99_ms": bal["tpot_p99_ms"],
            "default_tpot_p99_ms": None if default is None else default["tpot_p99_ms"],
            "throughput_ok": tput_ok,
            "ttft_p99_ok": ttft_ok,
            "tpot_p99_ok": tpot_ok,
            "drain_ok": drain_ok,
            "pareto": tput_ok and drain_ok and ttft_ok and tpot_ok,
            "within_noise": {
                "throughput_ok": None if tput_ok else _unresolved(bal, best_tput, tput),
                "drain_ok": None,
                "ttft_p99_ok": None if ttft_ok else _unresolved(bal, best_ttft, "ttft_p99"),
                "tpot_p99_ok": None if tpot_ok else _unresolved(bal, default, "tpot_p99"),
            },
        }
    return out


SPREAD_METRICS = (
    "output_tok_s",
    "served_tok_s",
    "drain_tok_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "idle_share",
)


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, standard deviation, min and max over seeds of each metric, per (workload,
    policy), in first-seen order. Missing values (None) are left out; all None gives None."""
    keys = list(dict.fromkeys((r["workload"], r["policy"]) for r in rows))
    out = []
    for wl, pol in keys:
        group = [r for r in rows if r["workload"] == wl and r["policy"] == pol]
        agg: dict[str, Any] = {"workload": wl, "policy": pol, "seeds": [r.get("seed") for r in group]}
        for m in SPREAD_METRICS:
            vals = [r.get(m) for r in group if r.get(m) is not None]
            if vals:
                arr = np.asarray(vals, dtype=float)
                agg[m] = {
                    "mean": float(arr.mean()),
                    "std": float(arr.std()),
                    "min": float(arr.min()),
                    "max": float(arr.max()),
                }
            else:
                agg[m] = None
        out.append(agg)
    return out


def _deficit(bal: float, other: float, higher_is_better: bool) -> float | None:
    """Balance's relative shortfall against ``other`` (positive: balance is worse); None
    when ``other`` is 0 (no ratio)."""
    if not other:
        return None
    return 1.0 - bal / other if higher_is_better else bal / other - 1.0


def paired_verdicts(rows: Sequence[dict[str, Any]], tie: float = TIE) -> dict[str, dict[str, Any]]:
    """Seed-paired verdicts: the per-seed criteria of :func:`verdicts`, decided on the mean
    over seeds of balance's relative shortfall against each policy, with a 95% Student t
    interval over the seeds (two policies of one seed see the same arrivals, so the pairs
    cancel the seed's own variation). A criterion holds when the mean shortfall is within
    ``tie``; ``significance`` says whether the interval excludes 0 ("better"/"worse") or not.
    Workloads with fewer than two seeds that have every policy are left out."""
    from vllm_ascend_triton.scheduler.sim.runner import t_interval95

    out: dict[str, dict[str, Any]] = {}
    for wl in sorted({r["workload"] for r in rows}):
        wl_rows = [r for r in rows if r["workload"] == wl]
        by_seed: dict[Any, dict[str, dict[str, Any]]] = {}
        for r in wl_rows:
            by_seed.setdefault(r.get("seed"), {})[r["policy"]] = r
        policies = {r["policy"] for r in wl_rows}
        seeds = [sd for sd, pols in by_seed.items() if set(pols) == policies and "balance" in pols]
        if len(seeds) < 2 or len(policies) < 2:
            continue
        tput = throughput_metric(wl_rows)
        checks = [("throughput_ok", tput, True, p) for p in sorted(policies - {"balance"})]
        if has_drain(wl_rows):
            checks += [("drain_ok", "drain_tok_s", True, p) for p in sorted(policies - {"balance"})]
        checks += [("ttft_p99_ok", "ttft_p99_s", False, p) for p in sorted(policies - {"balance"})]
        if "default" in policies:
            checks.append(("tpot_p99_ok", "tpot_p99_ms", False, "default"))
        criteria = []
        for crit, metric, higher, pol in checks:
            pairs = [(by_seed[sd]["balance"].get(metric), by_seed[sd][pol].get(metric)) for sd in seeds]
            shortfalls = [_deficit(b, o, higher) for b, o in pairs if b is not None and o is not None]
            d = np.asarray([x for x in shortfalls if x is not None], dtype=float)
            if len(d) < 2:
                continue
            mean = float(d.mean())
            lo, hi = t_interval95(d)
            criteria.append(
                {
                    "criterion": crit,
                    "metric": metric,
                    "against": pol,
                    "seeds": len(d),
                    "mean_shortfall": mean,
                    "shortfall_ci95": [lo, hi],
                    "ok": mean <= tie,
                    "significance": "better" if hi < 0 else "worse" if lo > 0 else "unresolved",
                }
            )
        if criteria:
            worst = max(criteria, key=lambda c: c["mean_shortfall"])
            out[wl] = {
                "seeds": len(seeds),
                "pareto": all(c["ok"] for c in criteria),
                "worst": worst,
                "criteria": criteria,
            }
    return out


def verdicts_by_seed(rows: Sequence[dict[str, Any]], tie: float = TIE) -> dict[str, Any]:
    """:func:`verdicts` for every seed, per workload the seeds where balance is not
    Pareto-best (with which criterion failed), and the :func:`paired_verdicts` over seeds."""
    seeds = sorted({r.get("seed") for r in rows}, key=lambda x: (x is None, x))
    per_seed = {str(sd): verdicts([r for r in rows if r.get("seed") == sd], tie) for sd in seeds}
    summary: dict[str, Any] = {}
    for sd, by_wl in per_seed.items():
        for wl, v in by_wl.items():
            s = summary.setdefault(wl, {"seeds": 0, "pareto": 0, "failures": []})
            s["seeds"] += 1
            s["pareto"] += bool(v["pareto"])
            for crit in CRITERIA:
                if not v[crit]:
                    s["failures"].append(
                        {
                            "seed": int(sd) if sd.isdigit() else sd,
                            "criterion": crit,
                            "within_noise": v["within_noise"][crit],
                        }
                    )
    return {"tie": tie, "per_seed": per_seed, "summary": summary, "paired": paired_verdicts(rows, tie)}


def format_spread_table(agg: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """One row per (workload, policy): mean and [min, max] over seeds (the drain column only
    when some row has it)."""
    cols = [
        ("output_tok_s", "out tok/s", "{:.0f}"),
        ("served_tok_s", "served tok/s", "{:.0f}"),
        ("drain_tok_s", "drain tok/s", "{:.0f}"),
        ("ttft_p50_s", "TTFT p50 s", "{:.2f}"),
        ("ttft_p99_s", "TTFT p99 s", "{:.2f}"),
        ("tpot_p99_ms", "TPOT p99 ms", "{:.1f}"),
        ("idle_share", "lockstep idle", "{:.1%}"),
    ]
    if not any(a.get("drain_tok_s") for a in agg):
        cols = [c for c in cols if c[0] != "drain_tok_s"]
    header = ["wl", "policy"] + [c[1] for c in cols]
    body = []
    for a in agg:
        cells = [a["workload"], a["policy"]]
        for key, _, fmt in cols:
            v = a.get(key)
            if v is None:
                cells.append("n/a")
            elif v["min"] == v["max"]:
                cells.append(fmt.format(v["mean"]))
            else:
                cells.append(f"{fmt.format(v['mean'])} [{fmt.format(v['min'])}, {fmt.format(v['max'])}]")
        body.append(cells)
    return _render_table(header, body, markdown)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=False, allow_nan=False))


def plot(
    rows: Sequence[dict[str, Any]],
    series: dict[tuple[str, str], dict[str, list[float]]],
    path: Path,
    title: str,
) -> None:
    """Bars of throughput / TTFT p99 / TPOT p99 per workload and policy, and the step-time
    trace of each policy on each workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r["workload"] for r in rows})
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    metrics = [
        ("output_tok_s", "output tok/s"),
        ("ttft_p99_s", "TTFT p99 (s)"),
        ("tpot_p99_ms", "TPOT p99 (ms)"),
        ("idle_share", "lockstep idle share"),
    ]
    if series:
        metrics.append(("series", "step time (ms), last 400 steps"))
    fig, axes = plt.subplots(
        len(workloads), len(metrics), figsize=(5 * len(metrics), 3.2 * len(workloads)), squeeze=False
    )
    for i, wl in enumerate(workloads):
        for j, (key, label) in enumerate(metrics):
            ax = axes[i][j]
            if key == "series":
                for p in policies:
                    s = series.get((wl, p))
                    if s:
                        n = min(len(s["step_ms"]), 400)
                        ax.plot(range(n), s["step_ms"][-n:], label=p, linewidth=0.7)
                ax.set_xlabel("last 400 steps")
                if i == 0:
                    ax.legend(fontsize=7)
            else:
                if key == "output_tok_s":  # the throughput the verdicts score
                    key = throughput_metric([r for r in rows if r["workload"] == wl])
                    label = key.replace("_tok_s", " tok/s").replace("_", " ")
                vals = [
                    next((r.get(key) for r in rows if r["workload"] == wl and r["policy"] == p), None)
                    for p in policies
                ]
                vals = [0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in vals]
                colors = ["tab:green" if p == "balance" else "tab:gray" for p in policies]
                ax.bar(range(len(policies)), vals, color=colors)
                ax.set_xticks(range(len(policies)))
                ax.set_xticklabels(policies, rotation=30, fontsize=7)
            ax.set_title(f"({wl}) {label}", fontsize=9)
    fig.suptitle(title + " (SIMULATED)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", path)
