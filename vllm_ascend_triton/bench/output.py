"""Bench outputs: CSV, strict JSON, a PNG plot (matplotlib, optional), and a text table. Every
figure keeps its label (measured where, or modelled). rich and matplotlib are optional here so the
GPU script runs with only torch, triton and numpy."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from vllm_ascend_triton.bench.runner import COLUMNS
from vllm_ascend_triton.runtime.jsonsafe import json_safe

# Columns of the short table (the README excerpt and the terminal).
TABLE_COLUMNS = (
    ("kernel", "kernel"),
    ("model", "model"),
    ("tokens", "T"),
    ("max_abs_err", "max err (measured)"),
    ("stage", "lowering (static)"),
    ("ub_bytes", "UB bytes (static)"),
    ("modelled_us", "time us (modelled)"),
    ("modelled_roofline_share", "roofline share (modelled)"),
    ("host_us", "host us/call, checks off (measured)"),
    ("host_us_checks_on", "host us/call, checks on (measured)"),
    ("measured_us", "time us (measured)"),
    ("measured_gbps", "GB/s (measured)"),
    ("measured_tflops", "TFLOP/s (measured)"),
    ("measured_hbm_share", "HBM share (measured)"),
    ("launch_us", "launch us (measured)"),
    ("torch_us", "torch us (measured)"),
    ("speedup_vs_torch", "vs torch (measured)"),
)


def fmt(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if column == "max_abs_err":
            return "inf" if math.isinf(value) else f"{value:.1e}"
        if column.endswith("share"):
            return f"{value:.0%}"
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    if isinstance(value, int) and column == "ub_bytes":
        return f"{value:,}"
    return str(value)


def visible_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The table's columns that have at least one value (no empty measured columns on a CPU)."""
    return [(c, t) for c, t in TABLE_COLUMNS if any(r.get(c) is not None for r in rows)]


def markdown_table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    cols = visible_columns(rows)
    lines = ["| " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(c, r.get(c)) for c, _ in cols) + " |")
    return "\n".join(lines)


def write_csv(result: dict[str, Any], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for r in result["rows"]:
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in COLUMNS})


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n")


def write_png(result: dict[str, Any], path: Path) -> bool:
    """Modelled (and, where present, measured) time per workload; False when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if r.get("modelled_us") or r.get("measured_us")]
    meta = result["meta"]
    names = [f"{r['kernel']}\n{r['model']} T={r['tokens']}" for r in rows]
    fig, (ax_t, ax_s) = plt.subplots(2, 1, figsize=(max(8, 0.7 * len(rows) + 3), 8), constrained_layout=True)
    x = range(len(rows))
    ax_t.bar([i - 0.2 for i in x], [r.get("modelled_us") or 0 for r in rows], 0.4,
             label=f"modelled ({meta['sku']} roofline model)")  # fmt: skip
    if any(r.get("measured_us") for r in rows):
        ax_t.bar([i + 0.2 for i in x], [r.get("measured_us") or 0 for r in rows], 0.4,
                 label=f"measured ({meta['measured_on']})")  # fmt: skip
    if any(r.get("torch_us") for r in rows):
        ax_t.plot(list(x), [r.get("torch_us") or float("nan") for r in rows], "k_", markersize=14,
                  label=f"torch, measured ({meta['measured_on']})")  # fmt: skip
    ax_t.set_yscale("log")
    ax_t.set_ylabel("time per call (us)")
    ax_t.set_xticks(list(x), names, rotation=60, ha="right", fontsize=7)
    ax_t.legend(fontsize=8)
    ax_t.set_title(f"vat bench: {meta['sku']}, {meta['backend']} backend")
    ax_s.bar([i - 0.2 for i in x], [r.get("modelled_roofline_share") or 0 for r in rows], 0.4,
             label="modelled share of roofline")  # fmt: skip
    if any(r.get("measured_hbm_share") for r in rows):
        ax_s.bar([i + 0.2 for i in x], [r.get("measured_hbm_share") or 0 for r in rows], 0.4,
                 label="measured share of HBM bandwidth")  # fmt: skip
    ax_s.set_ylim(0, 1)
    ax_s.set_ylabel("share")
    ax_s.set_xticks(list(x), names, rotation=60, ha="right", fontsize=7)
    ax_s.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(result: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "bench.csv", out_dir / "bench.json", out_dir / "bench.md"]
    write_csv(result, paths[0])
    write_json(result, paths[1])
    labels = "\n".join(f"- `{k}`: {v}" for k, v in result["meta"]["labels"].items())
    paths[2].write_text(markdown_table(result) + "\n\n" + labels + "\n")
    if write_png(result, out_dir / "bench.png"):
        paths.append(out_dir / "bench.png")
    return paths
