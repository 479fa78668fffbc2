"""`vat compile`: lower every kernel variant the runtime launches for a SKU through triton-ascend
(front end + Ascend adapter; the NPU binary too where CANN is installed), through the artifact
cache, and report what the adapter IR says of each (static, modelled, not measured)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from vllm_ascend_triton.kernels import FAMILIES
from vllm_ascend_triton.runtime.sku import get_sku, supported_skus


def _skus(values: list[str] | None) -> list[str]:
    from vllm_ascend_triton.runtime.device import current_device

    if not values:
        return [current_device().sku.name]
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            if part.strip().lower() == "all":
                names.extend(supported_skus())
                continue
            sku = get_sku(part)  # an unknown name: UnknownSKUError -> one line, exit 2
            if not sku.triton_supported:
                raise ValueError(f"cannot compile for {sku.name}: {sku.unsupported_reason}")
            names.append(sku.name)
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.cli import console, emit_json, progress_bar, select_kernel_backend
    from vllm_ascend_triton.codegen.cache import ArtifactCache
    from vllm_ascend_triton.codegen.compile import compile_variants, summary_markdown

    skus = _skus(args.sku)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    # The variants are built by the host APIs themselves (dry run): they need a backend for
    # their tensors; the lowering runs in compiled-mode worker processes whatever it is.
    select_kernel_backend(args)
    families = tuple(args.family) if args.family else FAMILIES
    cache = ArtifactCache(args.cache_dir)
    started = time.perf_counter()
    with progress_bar("compile", disable=args.json or args.quiet) as progress:
        task = progress.add_task(", ".join(skus), total=None)
        rows = compile_variants(
            skus,
            families,
            args.kernel,
            jobs=args.jobs,
            cache=cache,
            on_planned=lambda n: progress.update(task, total=n),
            on_result=lambda _res: progress.advance(task),
        )
    elapsed = time.perf_counter() - started
    lowered = sum(1 for r in rows if not r["cached"])
    summary = {
        "skus": skus,
        "variants": len(rows),
        "lowered_now": lowered,
        "from_cache": len(rows) - lowered,
        "failed": sum(1 for r in rows if not r["ok"]),
        "seconds": round(elapsed, 2),
        "cache_dir": str(cache.root),
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
        (args.out / "report.md").write_text(summary_markdown(rows) + "\n")
    if args.json:
        emit_json({"summary": summary, "rows": rows})
    elif args.markdown:
        print(summary_markdown(rows))
    else:
        table = Table(title="static lowering report (from the Ascend adapter IR; modelled, not measured)")
        for column in (
            "sku",
            "variant",
            "stage",
            "mix",
            "UB bytes (buffered) / UB",
            "discrete",
            "grid/cores",
        ):
            table.add_column(column)
        for r in rows:
            stage = r["stage"] + (" (cached)" if r["cached"] else "")
            if r["stage"] == "failed":
                table.add_row(
                    r["sku"],
                    escape(r["label"]),
                    "[red]failed[/red]",
                    "",
                    (r["error"] or "").splitlines()[-1][:90],
                    "",
                    "",
                )
                continue
            ub = f"{r['ub_bytes']:,} ({r['ub_bytes_buffered']:,}) / {r['sku_ub_bytes']:,}"
            table.add_row(
                r["sku"],
                escape(r["label"]),
                stage,
                r["mix_mode"],
                ub if r["fits_ub"] else f"[red]{ub} OVERFLOW[/red]",
                str(r["discrete_accesses"]),
                f"{r['grid'][0]}/{r['cores']}",
            )
        console().print(table)
        print(
            f"{summary['variants']} variants for {', '.join(skus)}: {lowered} lowered now, "
            f"{summary['from_cache']} unchanged (from the cache {cache.root}), {summary['failed']} failed "
            f"or not fitting, in {elapsed:.1f} s"
        )
        for r in rows:
            if not r["ok"]:
                print(f"error: {r['sku']} {r['label']}: {(r['error'] or '').strip().splitlines()[-1]}")
    return 0 if rows and all(r["ok"] for r in rows) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    from vllm_ascend_triton.cli import add_backend_argument

    parser = subparsers.add_parser(
        "compile",
        help="lower every kernel variant for Ascend SKUs into the artifact cache, with a static report",
        description="Lower every launch spec the runtime builds for a SKU (each kernel x its shipped "
        "configs x the representative shapes) through triton-ascend's front end and Ascend adapter "
        "(and the NPU binary where CANN is installed), into the artifact cache (VAT_CACHE_DIR), "
        "incrementally. Exit status 1 when a variant fails to lower or does not fit the SKU's "
        "Unified Buffer.",
    )
    parser.add_argument(
        "--sku",
        action="append",
        default=None,
        metavar="SKU|all",
        help="target SKU, repeatable or comma-separated; 'all' = every supported SKU "
        f"({', '.join(supported_skus())}); default: this device's, or VAT_SKU, or Ascend910B3",
    )
    parser.add_argument(
        "--family", action="append", choices=FAMILIES, help="only this kernel family (repeatable)"
    )
    parser.add_argument(
        "--kernel",
        action="append",
        metavar="K",
        help="only launch specs named K, e.g. rope, mrope (repeatable)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="parallel lowering worker processes (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="write report.json and report.md here")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="artifact cache (default: VAT_CACHE_DIR or ~/.cache/vllm-ascend-triton)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the summary table as Markdown (the README's)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_backend_argument(parser)
    parser.set_defaults(func=run)
