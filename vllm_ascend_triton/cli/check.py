"""`vat check`: run every kernel family's correctness cases against its torch reference on this
process's backend (Triton's interpreter on a CPU, the compiled kernels on an NPU)."""

from __future__ import annotations

import argparse
import time

from rich.table import Table

from vllm_ascend_triton.kernels import FAMILIES
from vllm_ascend_triton.kernels._check import run_all_checks
from vllm_ascend_triton.runtime.backend import current_backend


def run(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.cli import console, emit_json, select_kernel_backend

    select_kernel_backend(args)
    families = tuple(args.family) if args.family else FAMILIES
    started = time.perf_counter()
    results = run_all_checks(families)
    elapsed = time.perf_counter() - started
    failed = [r for r in results if not r.ok]
    if args.json:
        emit_json(
            {
                "backend": current_backend().value,
                "seconds": round(elapsed, 2),
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "results": [r.as_dict() for r in results],
            }
        )
    else:
        table = Table(title=f"kernel correctness vs torch references ({current_backend().value} backend)")
        for column in ("kernel", "case", "max |err|", "tolerance", "result"):
            table.add_column(column)
        for r in results:
            table.add_row(
                r.kernel,
                r.case,
                f"{r.max_abs_err:.2e}",
                f"{r.atol:.0e}",
                "[green]ok[/green]" if r.ok else "[red]FAIL[/red]",
            )
        out = console()
        out.print(table)
        out.print(f"{len(results) - len(failed)} passed, {len(failed)} failed in {elapsed:.1f} s")
    return 1 if failed or not results else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from vllm_ascend_triton.cli import add_backend_argument

    parser = subparsers.add_parser("check", help="kernel correctness against torch references")
    parser.add_argument("--family", action="append", choices=FAMILIES, help="only this family (repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_backend_argument(parser)
    parser.set_defaults(func=run)
