"""`vat compile` as a library: every launch spec the runtime builds for a SKU, lowered (through the
artifact cache) and reported. Returns rows of data; the CLI renders them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vllm_ascend_triton.codegen.cache import ArtifactCache
from vllm_ascend_triton.codegen.lower import LoweringRequest, LoweringResult, lower_many
from vllm_ascend_triton.codegen.report import parse_adapter_ir
from vllm_ascend_triton.kernels import FAMILIES
from vllm_ascend_triton.kernels._variants import VariantSpec, collect_specs, family_variants
from vllm_ascend_triton.runtime.device import plan_for
from vllm_ascend_triton.runtime.sku import get_sku
from vllm_ascend_triton.runtime.ub import fits_ub


def variant_specs(
    sku: str, families: Sequence[str] = FAMILIES, kernels: Sequence[str] | None = None
) -> list[VariantSpec]:
    """The specs the host APIs build for every variant of `families` when planning for `sku`
    (its cores, its UB, its shipped tuned configs); `kernels` keeps only those spec names."""
    with plan_for(sku):
        specs = [vs for family in families for vs in collect_specs(family_variants(family))]
    if kernels:
        specs = [vs for vs in specs if vs.spec.name in kernels]
    return specs


def report_row(vs: VariantSpec, result: LoweringResult) -> dict[str, Any]:
    sku = get_sku(result.request.sku)
    spec = vs.spec
    row: dict[str, Any] = {
        "sku": sku.name,
        "family": vs.variant.family,
        "kernel": spec.name,
        "variant": vs.variant.label,
        "label": vs.label,
        "stage": result.stage,
        "cached": result.cached,
        "grid": list(spec.grid),
        "constexprs": {
            k: v if isinstance(v, bool | int | float | str) else repr(v) for k, v in spec.constexprs.items()
        },
        "config": dict(spec.config),
    }
    if not result.ok:
        row.update(ok=False, error=(result.error or "").strip())
        return row
    report = parse_adapter_ir(result.ttadapter or "")
    multibuffer = bool(spec.options.get("multibuffer", True))  # triton-ascend's default is on
    buffered = report.ub_bytes * (2 if multibuffer else 1)
    fits = fits_ub(report.ub_bytes, sku.ub_bytes, multibuffer)
    cores = sku.cube_cores if report.uses_cube else sku.vector_cores
    row.update(
        mix_mode=report.mix_mode,
        ub_bytes=report.ub_bytes,
        multibuffer=multibuffer,
        ub_bytes_buffered=buffered,
        sku_ub_bytes=sku.ub_bytes,
        fits_ub=fits,
        discrete_accesses=report.discrete_accesses,
        cores=cores,
        grid_within_cores=spec.grid[0] <= cores,
        ok=fits,
        error=None
        if fits
        else (
            f"UB overflow: {report.ub_bytes} bytes of on-chip buffers, {buffered} with "
            f"{'double buffering' if multibuffer else 'single buffering'}, > {sku.ub_bytes} bytes of "
            f"{sku.name}'s Unified Buffer"
        ),
    )
    return row


def compile_variants(
    skus: Sequence[str],
    families: Sequence[str] = FAMILIES,
    kernels: Sequence[str] | None = None,
    *,
    jobs: int = 1,
    cache: ArtifactCache | None = None,
    on_planned: Callable[[int], None] | None = None,
    on_result: Callable[[LoweringResult], None] | None = None,
) -> list[dict[str, Any]]:
    """Lower every variant for every SKU (cache first), one report row per variant."""
    planned = [
        (vs, LoweringRequest.from_spec(vs.spec, sku, vs.label))
        for sku in skus
        for vs in variant_specs(sku, families, kernels)
    ]
    if on_planned:
        on_planned(len(planned))
    results = lower_many([req for _, req in planned], jobs=jobs, cache=cache, on_result=on_result)
    return [report_row(vs, res) for (vs, _), res in zip(planned, results, strict=True)]


def summary_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The README's static-report table: one line per (family, kernel), from report rows."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["family"], row["kernel"]), []).append(row)
    skus = sorted({row["sku"] for row in rows})
    lines = [
        f"Static lowering report for {', '.join(skus)} (from the Ascend adapter IR; modelled, not measured)",
        "",
        "| family | kernel | variants | lowered | mix mode | UB bytes (single-buffered) "
        "| fits UB doubled | discrete accesses |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def span(values: list[int]) -> str:
        lo, hi = min(values), max(values)
        return f"{lo:,}" if lo == hi else f"{lo:,} - {hi:,}"

    for (family, kernel), group in groups.items():
        ok = [r for r in group if r["stage"] != "failed"]
        mixes = ", ".join(sorted({r["mix_mode"] for r in ok})) or "-"
        ub = span([r["ub_bytes"] for r in ok]) if ok else "-"
        disc = span([r["discrete_accesses"] for r in ok]) if ok else "-"
        fits = sum(1 for r in ok if r["fits_ub"])
        lines.append(
            f"| {family} | {kernel} | {len(group)} | {len(ok)}/{len(group)} | {mixes} | {ub} | "
            f"{fits}/{len(group)} | {disc} |"
        )
    return "\n".join(lines)
