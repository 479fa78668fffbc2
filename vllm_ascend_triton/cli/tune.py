"""`vat tune`: choose launch configs (block sizes, multibuffer) per Ascend SKU and shape, and write
the config files the runtime reads. Ranked by measurement only on an NPU of that SKU, elsewhere by
the roofline cost model; the method is written into every file."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from vllm_ascend_triton.kernels import FAMILIES


def default_out_dir() -> Path:
    from vllm_ascend_triton.runtime.configs import PACKAGED_CONFIG_DIR, TUNED_CONFIG_FOLDER_ENV

    folder = os.environ.get(TUNED_CONFIG_FOLDER_ENV)
    return Path(folder) if folder else PACKAGED_CONFIG_DIR


def run(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.autotune.tuner import tune
    from vllm_ascend_triton.cli import console, emit_json, progress_bar, select_kernel_backend
    from vllm_ascend_triton.cli.compile import _skus
    from vllm_ascend_triton.codegen.cache import ArtifactCache
    from vllm_ascend_triton.workloads.shapes import load_shapes

    if not args.sku:
        raise ValueError("--sku is required (a SKU name, or 'all' for every supported SKU)")
    skus = _skus(args.sku)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    shapes = None if args.no_shapes else load_shapes(args.shapes)
    # The candidates are applied through the host APIs in dry runs: they need a backend for their
    # tensors (the interpreter on a CPU); lowering runs in compiled-mode worker processes.
    select_kernel_backend(args)
    out_dir = args.out or default_out_dir()
    families = tuple(args.family) if args.family else FAMILIES
    started = time.perf_counter()
    with progress_bar("tune", disable=args.json or args.quiet) as progress:
        tasks: dict[str, int] = {}

        def on_progress(p) -> None:
            if p.sku not in tasks:
                tasks[p.sku] = progress.add_task(p.sku, total=p.total)
            progress.update(tasks[p.sku], completed=p.done, total=p.total, description=f"{p.sku} ({p.phase})")

        try:
            summaries = tune(
                skus,
                out_dir,
                kernels=args.kernel,
                families=families,
                shapes=shapes,
                method=args.method,
                resume=args.resume,
                jobs=args.jobs,
                cache=ArtifactCache(args.cache_dir),
                on_progress=on_progress,
            )
        except KeyboardInterrupt:
            progress.stop()
            print(
                "vat tune: interrupted; finished items are in the journal: rerun with --resume",
                file=sys.stderr,
            )
            return 130
    elapsed = time.perf_counter() - started
    results = [r for s in summaries for r in s["results"]]
    missing = [r for r in results if r["config"] is None]
    if args.kernel and not results:
        raise ValueError(f"no kernel named {', '.join(args.kernel)} was looked up by any tuning case")
    if args.json:
        emit_json({"seconds": round(elapsed, 2), "out_dir": str(out_dir), "skus": summaries})
    else:
        table = Table(title="vat tune (times are modelled unless the method says measured)")
        for column in ("sku", "kernel", "key", "config", "method", "time us", "default us", "lowered/pruned"):
            table.add_column(column)
        for s in summaries:
            for r in s["results"]:
                key = ",".join(f"{k}={v}" for k, v in r["key"].items())
                config = (
                    ",".join(f"{k}={v}" for k, v in (r["config"] or {}).items())
                    or f"[red]{r['reason']}[/red]"
                )
                shown = r["measured_us"] if r["method"] == "measured" else r["modelled_us"]
                table.add_row(
                    s["sku"], r["kernel"], escape(key), escape(config), r["method"],
                    f"{shown:.2f}" if shown is not None else "-",
                    f"{r['default_modelled_us']:.2f}" if r["default_modelled_us"] is not None else "-",
                    f"{r.get('lowered', 0)}/{r.get('pruned', 0)}",
                )  # fmt: skip
        console().print(table)
        files = sum(len(s["files"]) for s in summaries)
        resumed = sum(s["resumed"] for s in summaries)
        print(
            f"{len(results)} configs for {', '.join(skus)} ({summaries[0]['method'] if summaries else '-'}), "
            f"{resumed} from an interrupted run, {files} files written under {out_dir} in {elapsed:.1f} s"
        )
        for s in summaries:
            for case in s["skipped_cases"]:
                print(f"warning: {s['sku']}: case {case['case']} skipped: {case['error']}")
        for r in missing:
            print(f"error: {r['kernel']} {r['key']}: {r['reason']}")
    return 1 if missing or not results else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from vllm_ascend_triton.cli import add_backend_argument
    from vllm_ascend_triton.runtime.sku import supported_skus

    parser = subparsers.add_parser(
        "tune",
        help="tune launch configs per Ascend SKU and write the config files the runtime reads",
        description="For every kernel config the host APIs look up (over the families' variants and "
        "the real-model shapes file), try the search space (block sizes, multibuffer), prune what "
        "does not lower or fit the SKU's Unified Buffer (codegen report, artifact cache), rank by "
        "do_bench on an NPU of that SKU or else by the roofline cost model, and write one JSON per "
        "(SKU, kernel, shape key), atomically, recording the method.",
    )
    parser.add_argument(
        "--sku", action="append", metavar="SKU|all",
        help=f"target SKU, repeatable or comma-separated; 'all' = {', '.join(supported_skus())}",
    )  # fmt: skip
    parser.add_argument(
        "--kernel", action="append", metavar="K", help="only this kernel (config or spec name)"
    )
    parser.add_argument("--family", action="append", choices=FAMILIES, help="only this family (repeatable)")
    parser.add_argument(
        "--shapes", type=Path, default=None, help="real-model shapes file (TOML; default: ours)"
    )
    parser.add_argument("--no-shapes", action="store_true", help="tune the families' variants only")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run (its journal)")
    parser.add_argument(
        "--method", choices=("auto", "model", "measured"), default="auto",
        help="auto: measured on an NPU of the SKU, else model; measured is refused without that device",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None,
        help="config folder (default: VAT_TUNED_CONFIG_FOLDER, else the package's shipped configs)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="parallel lowering worker processes (default 2)")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="artifact cache (default: VAT_CACHE_DIR)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_backend_argument(parser)
    parser.set_defaults(func=run)
