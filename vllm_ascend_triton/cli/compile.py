"""`vat compile`: lower every kernel variant for a SKU through triton-ascend (front end + Ascend
adapter; the NPU binary too where CANN is installed) and print the static report of each."""

from __future__ import annotations

import argparse

from rich.table import Table

from vllm_ascend_triton.codegen.lower import lower_many
from vllm_ascend_triton.codegen.report import parse_adapter_ir
from vllm_ascend_triton.kernels import FAMILIES, family_module
from vllm_ascend_triton.runtime.device import current_device
from vllm_ascend_triton.runtime.sku import get_sku, supported_skus


def compile_report(sku_name: str, families: tuple[str, ...]) -> list[dict]:
    sku = get_sku(sku_name)
    requests = [req for family in families for req in family_module(family).lowering_requests(sku.name)]
    rows = []
    for result in lower_many(requests):
        row = {"kernel": result.request.label, "sku": sku.name, "stage": result.stage, "ok": result.ok}
        if result.ttadapter:
            report = parse_adapter_ir(result.ttadapter)
            row.update(report.as_dict())
            row["fits_ub"] = report.fits_ub(sku.ub_bytes)
        else:
            row["error"] = result.error
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.cli import console, emit_json

    families = tuple(args.family) if args.family else FAMILIES
    skus = args.sku or [current_device().sku.name]
    rows = [row for sku in skus for row in compile_report(sku, families)]
    if args.json:
        emit_json(rows)
    else:
        table = Table(title="static lowering report (from the Ascend adapter IR; modelled, not measured)")
        for column in ("sku", "kernel", "stage", "mix mode", "UB bytes (x2 buffered)", "discrete", "fits UB"):
            table.add_column(column)
        for r in rows:
            if r["ok"]:
                table.add_row(
                    r["sku"],
                    r["kernel"],
                    r["stage"],
                    r["mix_mode"],
                    f"{r['ub_bytes']} ({2 * r['ub_bytes']})",
                    str(r["discrete_accesses"]),
                    "yes" if r["fits_ub"] else "[red]NO[/red]",
                )
            else:
                table.add_row(
                    r["sku"], r["kernel"], "[red]failed[/red]", "", "", "", r["error"].splitlines()[-1][:80]
                )
        console().print(table)
    return 0 if rows and all(r["ok"] and r["fits_ub"] for r in rows) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compile", help="lower every kernel variant for an Ascend SKU, with a static report"
    )
    parser.add_argument(
        "--sku",
        action="append",
        choices=supported_skus(),
        default=None,
        help="target SKU (repeatable; default: this device's, or VAT_SKU, or Ascend910B3)",
    )
    parser.add_argument("--family", action="append", choices=FAMILIES, help="only this family (repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
