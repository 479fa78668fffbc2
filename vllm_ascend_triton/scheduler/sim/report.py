"""Table, JSON and PNG output of simulator runs (every figure is labelled simulated)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

COLUMNS = [
    ("workload", "wl", "{}"),
    ("policy", "policy", "{}"),
    ("output_tok_s", "out tok/s", "{:.0f}"),
    ("ttft_p50_s", "TTFT p50 s", "{:.2f}"),
    ("ttft_p99_s", "TTFT p99 s", "{:.2f}"),
    ("tpot_p50_ms", "TPOT p50 ms", "{:.1f}"),
    ("tpot_p99_ms", "TPOT p99 ms", "{:.1f}"),
    ("idle_share", "idle share", "{:.1%}"),
    ("steps", "steps", "{}"),
    ("requests_finished", "finished", "{}"),
]


def _fmt(fmt: str, v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return fmt.format(v)


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    header = [c[1] for c in COLUMNS]
    body = [[_fmt(c[2], r[c[0]]) for c in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(x.rjust(w) for x, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def verdicts(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per workload: does ``balance`` have the highest throughput of all policies, and a
    TTFT p99 no worse than the best other policy's? With the figures behind the answer."""
    out: dict[str, dict[str, Any]] = {}
    for wl in sorted({r["workload"] for r in rows}):
        wl_rows = [r for r in rows if r["workload"] == wl]
        bal = next((r for r in wl_rows if r["policy"] == "balance"), None)
        others = [r for r in wl_rows if r["policy"] != "balance"]
        if bal is None or not others:
            continue
        best_tput = max(others, key=lambda r: r["output_tok_s"])
        best_ttft = min(others, key=lambda r: r["ttft_p99_s"])
        out[wl] = {
            "balance_output_tok_s": bal["output_tok_s"],
            "best_other_output_tok_s": best_tput["output_tok_s"],
            "best_other_by_throughput": best_tput["policy"],
            "throughput_gain": bal["output_tok_s"] / best_tput["output_tok_s"] - 1.0
            if best_tput["output_tok_s"]
            else float("nan"),
            "balance_ttft_p99_s": bal["ttft_p99_s"],
            "best_other_ttft_p99_s": best_ttft["ttft_p99_s"],
            "best_other_by_ttft_p99": best_ttft["policy"],
            "highest_throughput": bal["output_tok_s"] > best_tput["output_tok_s"],
            "ttft_p99_no_worse": bal["ttft_p99_s"] <= best_ttft["ttft_p99_s"],
        }
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o)}")


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
        ("series", "step time (ms), last 400 steps"),
    ]
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
                vals = [
                    next((r[key] for r in rows if r["workload"] == wl and r["policy"] == p), 0.0)
                    for p in policies
                ]
                vals = [0.0 if (isinstance(v, float) and math.isnan(v)) else v for v in vals]
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
