"""`vat bench`: kernel microbenchmarks over real-model shapes, every figure labelled measured
(and where) or modelled. Writes bench.csv, bench.json, bench.md and bench.png into --out."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

DEFAULT_OUT = Path("out") / "bench"


def run(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.cli import console, emit_json, progress_bar, select_kernel_backend
    from vllm_ascend_triton.runtime.device import current_device
    from vllm_ascend_triton.runtime.sku import get_sku

    # Chosen before any kernel module is imported (the interpreter must be in force at definition).
    select_kernel_backend(args)
    from vllm_ascend_triton.bench.output import fmt, visible_columns, write_all
    from vllm_ascend_triton.bench.runner import failed_rows, run_bench
    from vllm_ascend_triton.codegen.cache import ArtifactCache
    from vllm_ascend_triton.workloads.ops import OPS
    from vllm_ascend_triton.workloads.shapes import load_shapes

    sku = get_sku(args.sku).name if args.sku else current_device().sku.name
    if not get_sku(sku).triton_supported:
        raise ValueError(f"cannot bench for {sku}: {get_sku(sku).unsupported_reason}")
    kernels = [k for value in args.kernels or [] for k in value.split(",") if k]
    unknown = sorted(set(kernels) - set(OPS))
    if unknown:
        raise ValueError(f"--kernels: unknown {unknown}; known: {', '.join(OPS)}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    shapes = load_shapes(args.shapes)
    started = time.perf_counter()
    with progress_bar("bench", disable=args.json or args.quiet) as progress:
        task = progress.add_task(sku, total=None)

        def on_progress(label: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=escape(label))

        result = run_bench(
            sku,
            kernels=kernels or None,
            quick=args.quick,
            shapes=shapes,
            lower=not args.no_lower,
            jobs=args.jobs,
            cache=ArtifactCache(args.cache_dir),
            on_progress=on_progress,
        )
    paths = write_all(result, args.out)
    elapsed = time.perf_counter() - started
    bad = failed_rows(result)
    if args.json:
        emit_json({**result, "files": [str(p) for p in paths], "seconds": round(elapsed, 2)})
        return 1 if bad else 0
    meta = result["meta"]
    table = Table(
        title=f"vat bench: {meta['sku']}, {meta['backend']} backend (measured on {meta['measured_on']})"
    )
    cols = visible_columns(result["rows"])
    for _, title in cols:
        table.add_column(title)
    for r in result["rows"]:
        cells = [fmt(c, r.get(c)) for c, _ in cols]
        style = "red" if r in bad else None
        table.add_row(*(escape(c) for c in cells), style=style)
    out = console()
    out.print(table)
    for name, label in meta["labels"].items():
        out.print(f"[dim]{name}: {escape(label)}[/dim]")
    files = ", ".join(map(str, paths))
    print(f"{len(result['rows'])} rows, {len(bad)} failing, in {elapsed:.1f} s; wrote {files}")
    for r in bad:
        print(
            f"error: {r['kernel']} {r['model']} T={r['tokens']}: {r.get('error') or 'error above tolerance'}"
        )
    return 1 if bad or not result["rows"] else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from vllm_ascend_triton.cli import add_backend_argument

    parser = subparsers.add_parser(
        "bench",
        help="kernel microbenchmarks over real-model shapes (error, lowering/UB, modelled and measured time)",
        description="Per kernel over the real-model shapes: max error against the torch reference on this "
        "backend, lowering status and UB use for the SKU (codegen report, artifact cache), modelled time "
        "and share of roofline; on a compiled backend (npu, or cuda: upstream Triton on an NVIDIA GPU, "
        "only when chosen) also measured time, GB/s, TFLOP/s, share of peak, launch overhead, and on "
        "cuda the comparison with torch implementations. Writes CSV, JSON, Markdown and a PNG plot.",
    )
    parser.add_argument(
        "--sku", default=None, help="SKU for lowering and the model (default: VAT_SKU / device)"
    )
    parser.add_argument("--kernels", nargs="+", metavar="K", help="only these kernels (e.g. rope fused_topk)")
    parser.add_argument("--quick", action="store_true", help="one model and a tiny batch per kernel")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.add_argument("--shapes", type=Path, default=None, help="real-model shapes file (TOML)")
    parser.add_argument("--no-lower", action="store_true", help="skip the lowering report")
    parser.add_argument("--jobs", type=int, default=2, help="parallel lowering worker processes (default 2)")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="artifact cache (default: VAT_CACHE_DIR)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_backend_argument(parser)
    parser.set_defaults(func=run)
