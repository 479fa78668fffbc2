"""Run the benchmark: one row per (kernel, real model, batch size).

Every figure says what it is (the `LABELS` of each column, written into the JSON and the README):
- `max_abs_err`: our kernel against the family's torch reference, run on this process's backend
  (measured where it ran: the interpreter on this CPU, or the NPU/GPU);
- `stage`, `ub_bytes`, `fits_ub`: the codegen report of the launches for the SKU (static, from the
  Ascend adapter IR; through the artifact cache; "n/a" where triton-ascend is not installed);
- `modelled_us`, `modelled_roofline_share`: the roofline cost model for the SKU
  (`runtime.perf_model.estimate_op`: the op's minimum bytes and FLOPs over the SKU's bandwidth and
  peak, plus each launch's fixed and per-tile costs), never measured;
- `host_us` / `host_us_checks_on`: host-side time of one call of our own code without launching
  (validation, cached launch plans, launch specs: a dry run, so Triton's launcher is excluded),
  with data-dependent input checks off (the NPU default) and on; the median of
  `HOST_COST_CALLS` calls, measured on this machine (docs/serving.md);
- on a compiled backend only (`npu`, `cuda`): `measured_us` (`triton.testing.do_bench`, median),
  `measured_gbps` / `measured_tflops` (the op's minimum HBM bytes and useful FLOPs over that time),
  `measured_hbm_share` (of the device's HBM bandwidth), `launch_us` (host time to issue one call
  on an idle device: the launch overhead through the runtime), and on cuda `torch_us`
  and `speedup_vs_torch` (torch's time / ours) against the workload's torch implementation.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

from vllm_ascend_triton.runtime.backend import Backend, current_backend, device_type
from vllm_ascend_triton.runtime.launch import input_checks, record_launches
from vllm_ascend_triton.runtime.sku import get_sku
from vllm_ascend_triton.workloads.ops import Workload, workloads
from vllm_ascend_triton.workloads.shapes import ShapeSet, load_shapes

# HBM bandwidth of GPUs the cuda comparison may run on (vendor datasheets, GB/s; approximate).
GPU_HBM_GBPS = {"H200": 4800.0, "H100 80GB HBM3": 3350.0, "H100": 3350.0, "A100": 2039.0, "L40S": 864.0}

# Calls timed per host-cost figure (their median is reported).
HOST_COST_CALLS = 200
# The error against the reference is taken up to this batch size (references run on the host).
CHECK_MAX_TOKENS = 256
# How many experts' weights the interpreter keeps (the GEMM shapes stay the model's).
INTERPRETER_MAX_EXPERTS = 8

COLUMNS = (
    "kernel", "model", "tokens", "backend", "max_abs_err", "atol", "ok", "config_source", "stage", "launches",
    "ub_bytes", "sku_ub_bytes", "fits_ub", "modelled_us", "modelled_roofline_share", "host_us",
    "host_us_checks_on", "measured_us",
    "measured_gbps", "measured_tflops", "measured_hbm_share", "launch_us", "torch_us", "speedup_vs_torch",
    "torch_impl", "error",
)  # fmt: skip


def labels(sku: str, where: str, compiled: bool) -> dict[str, str]:
    """What each figure is: measured (and where) or modelled."""
    out = {
        "max_abs_err": f"measured: ours vs the torch reference on {where}",
        "stage": f"static: codegen report for {sku} (Ascend adapter IR), not measured",
        "ub_bytes": f"static: on-chip buffer bytes with multibuffering, from the adapter IR for {sku}",
        "modelled_us": f"modelled: roofline cost model of {sku} (runtime/perf_model.py), not measured",
        "modelled_roofline_share": f"modelled: roofline time / modelled time on {sku}",
        "host_us": (
            f"measured on {where}: host time per call of our code, input checks off, dry run "
            f"(no launch; median of {HOST_COST_CALLS} calls)"
        ),
        "host_us_checks_on": (
            f"measured on {where}: host time per call of our code, input checks on, dry run "
            f"(no launch; median of {HOST_COST_CALLS} calls)"
        ),
    }
    if compiled:
        out.update(
            measured_us=f"measured on {where}: triton.testing.do_bench median",
            measured_gbps=f"measured on {where}: the op's minimum HBM bytes / measured time",
            measured_tflops=f"measured on {where}: the op's useful FLOPs / measured time",
            measured_hbm_share=f"measured on {where}: measured GB/s / the device's HBM bandwidth",
            launch_us=f"measured on {where}: host time to issue one call on an idle device (median)",
            torch_us=f"measured on {where}: the torch implementation, do_bench median",
            speedup_vs_torch=f"measured on {where}: torch time / our time (>1: ours faster)",
        )
    return out


def where_measured() -> str:
    backend = current_backend()
    if backend is Backend.CUDA:
        import torch

        return f"{torch.cuda.get_device_name()} (cuda backend, upstream Triton)"
    if backend is Backend.NPU:
        from vllm_ascend_triton.runtime.device import current_device

        return f"{current_device().device_name} (NPU)"
    return f"this {os.cpu_count()}-core CPU machine ({platform.machine()}, Triton interpreter)"


def device_hbm_gbps() -> float | None:
    backend = current_backend()
    if backend is Backend.CUDA:
        import torch

        name = torch.cuda.get_device_name()
        return next((bw for key, bw in GPU_HBM_GBPS.items() if key in name), None)
    if backend is Backend.NPU:
        from vllm_ascend_triton.runtime.device import current_device

        return current_device().sku.hbm_bandwidth_gbps
    return None


def bench_workloads(
    shapes: ShapeSet, kernels: Sequence[str] | None = None, quick: bool = False
) -> list[Workload]:
    compiled = current_backend() is not Backend.INTERPRETER
    return workloads(
        shapes,
        "quick" if quick else "bench",
        ops=list(kernels) if kernels else None,
        one_model_per_op=quick,
        context="quick_context" if quick or not compiled else "context",
        max_experts=None if compiled and not quick else INTERPRETER_MAX_EXPERTS,
    )


def _dry_specs(w: Workload, sku: str, prepared_run: Callable[[], Any]) -> tuple[list, list]:
    from vllm_ascend_triton.runtime import configs
    from vllm_ascend_triton.runtime.device import plan_for

    with plan_for(sku), configs.record_lookups() as lookups, record_launches(execute=False) as specs:
        prepared_run()
    return list(specs), list(lookups)


def host_us(run: Callable[[], Any], checks: bool, calls: int | None = None) -> float:
    """Host time (us) of one call as a dry run, with input checks on or off: the median wall time
    of `calls` single calls (a call the OS preempts is an outlier the median ignores).

    Args:
        run: the call (a workload's prepared run).
        checks: data-dependent input checks on (True) or off (False, the NPU default).
        calls: timed calls (default `HOST_COST_CALLS`), after warm-up calls that fill the per-shape
            plan caches (the first call of a shape reads config files).

    Returns:
        Microseconds per call.
    """
    import statistics

    calls = calls or HOST_COST_CALLS
    times = []
    with input_checks(checks), record_launches(execute=False) as specs:
        for _ in range(5):
            run()
        for _ in range(calls):
            specs.clear()
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def host_cost(
    tokens: int = 64, kernels: Sequence[str] | None = None, shapes: ShapeSet | None = None
) -> list[dict[str, Any]]:
    """Host us/call of every op (one model per op, `tokens` tokens or decode sequences), input
    checks off and on: the figures of docs/results/*-host-cost.md, without the kernel checks and
    lowering of a full `vat bench` run.

    Args:
        tokens: the batch (a decode batch: one token per sequence for attention).
        kernels: only these ops (default: all).
        shapes: the real-model shapes (default: the shipped file).

    Returns:
        One row per op: `{"op", "model", "tokens", "host_us", "host_us_checks_on"}`.
    """
    import dataclasses

    shapes = shapes or load_shapes()
    shapes = dataclasses.replace(shapes, tokens={**shapes.tokens, "host_cost": [tokens]})
    items = workloads(
        shapes, "host_cost", ops=list(kernels) if kernels else None, one_model_per_op=True,
        context="quick_context", max_experts=INTERPRETER_MAX_EXPERTS,
    )  # fmt: skip
    rows = []
    for w in items:
        prepared = w.prepare(device_type(), fill=True)
        rows.append(
            {
                "op": w.op,
                "model": w.model.label,
                "tokens": w.tokens,
                "host_us": host_us(prepared.run, checks=False),
                "host_us_checks_on": host_us(prepared.run, checks=True),
            }
        )
    return rows


def _launch_us(run: Callable[[], Any], calls: int = 30) -> float:
    """Host time to issue one call with the device idle (synchronised before each call, not after):
    validation, config lookup, launch specs and Triton's launcher; the median of `calls`. A host
    API that waits for the device inside (a `.item()`) shows that wait here too."""
    import statistics

    import torch

    sync = torch.cuda.synchronize if current_backend() is Backend.CUDA else torch.npu.synchronize  # type: ignore[attr-defined]
    run()
    times = []
    for _ in range(calls):
        sync()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    sync()
    return statistics.median(times) * 1e6


def _do_bench_us(fn: Callable[[], Any]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")) * 1e3


def _lowering(
    planned: list[tuple[int, Any, Any]], sku: str, jobs: int, cache: Any
) -> dict[int, dict[str, Any]]:
    """Per row index: lowering stage, largest buffered UB bytes, fits, from the codegen report."""
    from vllm_ascend_triton.codegen.compile import report_row
    from vllm_ascend_triton.codegen.lower import LoweringRequest, lower_many, triton_ascend_version
    from vllm_ascend_triton.kernels._variants import Variant, VariantSpec

    if triton_ascend_version() == "not-installed":
        return {i: {"stage": "n/a (triton-ascend not installed)"} for i, _, _ in planned}
    unique: dict[str, Any] = {}
    rows = []
    for i, w, spec in planned:
        req = LoweringRequest.from_spec(spec, sku, f"{spec.name}[{w.model.name}]")
        unique.setdefault(req.cache_key(), req)
        rows.append((i, w, spec, req))
    results = dict(zip(unique, lower_many(list(unique.values()), jobs=jobs, cache=cache), strict=True))
    out: dict[int, dict[str, Any]] = {}
    for i, w, spec, req in rows:
        row = report_row(
            VariantSpec(Variant(w.family, w.label, lambda: None), spec), results[req.cache_key()]
        )
        agg = out.setdefault(i, {"stage": "adapter", "ub_bytes": 0, "fits_ub": True, "errors": []})
        if row["stage"] == "failed":
            agg["stage"] = "failed"
        elif row["stage"] == "binary" and agg["stage"] != "failed":
            agg["stage"] = "binary"
        agg["ub_bytes"] = max(agg["ub_bytes"], int(row.get("ub_bytes_buffered") or 0))
        agg["sku_ub_bytes"] = row.get("sku_ub_bytes")
        agg["fits_ub"] = agg["fits_ub"] and bool(row.get("fits_ub", False))
        if not row["ok"]:
            agg["errors"].append(f"{spec.name}: {(row.get('error') or '').strip().splitlines()[-1:]}")
    return out


def run_bench(
    sku: str,
    *,
    kernels: Sequence[str] | None = None,
    quick: bool = False,
    shapes: ShapeSet | None = None,
    lower: bool = True,
    jobs: int = 1,
    cache: Any = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """Benchmark every workload; returns {"meta": ..., "rows": [...]} (strict-JSON-able after
    `json_safe`)."""
    from vllm_ascend_triton.runtime.perf_model import estimate_op

    sku_info = get_sku(sku)
    shapes = shapes or load_shapes()
    backend = current_backend()
    compiled = backend is not Backend.INTERPRETER
    where = where_measured()
    peak_gbps = device_hbm_gbps()
    dev = device_type()
    items = bench_workloads(shapes, kernels, quick)
    rows: list[dict[str, Any]] = []
    planned = []
    started = time.perf_counter()
    for n, w in enumerate(items):
        if on_progress:
            on_progress(w.label, n, len(items))
        row: dict[str, Any] = {c: None for c in COLUMNS}
        row.update(kernel=w.op, model=w.model.label, tokens=w.tokens, backend=backend.value)
        if deadline_s is not None and time.perf_counter() - started > deadline_s:
            row.update(error=f"skipped: past the time budget of {deadline_s:.0f} s")
            rows.append(row)
            continue
        try:
            prepared = w.prepare(dev, fill=True)
            row.update(atol=prepared.atol, torch_impl=prepared.baseline_name)
            specs, lookups = _dry_specs(w, sku_info.name, prepared.run)
            row["launches"] = len(specs)
            row["config_source"] = ",".join(sorted({lk.source.split(":")[0] for lk in lookups})) or "-"
            if specs:
                est = estimate_op(specs, sku_info, prepared.hbm_bytes, prepared.flops)
                row.update(modelled_us=est.seconds * 1e6, modelled_roofline_share=est.share_of_roofline)
                planned.extend((len(rows), w, s) for s in specs)
            row["host_us"] = host_us(prepared.run, checks=False)
            row["host_us_checks_on"] = host_us(prepared.run, checks=True)
            if prepared.check is not None and w.tokens <= CHECK_MAX_TOKENS:
                err = prepared.check()
                row.update(max_abs_err=err, ok=err <= prepared.atol)
            if compiled:
                t_us = _do_bench_us(prepared.run)
                row.update(
                    measured_us=t_us,
                    measured_gbps=prepared.hbm_bytes / (t_us * 1e-6) / 1e9,
                    measured_tflops=prepared.flops / (t_us * 1e-6) / 1e12,
                    launch_us=_launch_us(prepared.run),
                )
                if peak_gbps:
                    row["measured_hbm_share"] = row["measured_gbps"] / peak_gbps
                if backend is Backend.CUDA and prepared.baseline is not None:
                    torch_us = _do_bench_us(prepared.baseline)
                    row.update(torch_us=torch_us, speedup_vs_torch=torch_us / t_us)
        except Exception as exc:  # one workload's failure is a row with its error, not a crash
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
        rows.append(row)
    if lower and planned:
        if on_progress:
            on_progress(f"lowering for {sku_info.name}", len(items), len(items))
        for i, info in _lowering(planned, sku_info.name, jobs, cache).items():
            rows[i].update(
                stage=info["stage"], ub_bytes=info.get("ub_bytes"), sku_ub_bytes=info.get("sku_ub_bytes")
            )
            rows[i]["fits_ub"] = info.get("fits_ub")
            if info.get("errors"):
                rows[i]["error"] = "; ".join(info["errors"])[:300]
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None if key != "max_abs_err" else float("inf")
    meta = {
        "sku": sku_info.name,
        "backend": backend.value,
        "measured_on": where,
        "device_hbm_gbps": peak_gbps,
        "quick": quick,
        "shapes_file": shapes.path,
        "seconds": round(time.perf_counter() - started, 2),
        "labels": labels(sku_info.name, where, compiled),
    }
    return {"meta": meta, "rows": rows}


def failed_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows whose kernel is wrong, failed to run, or does not lower/fit for the SKU (rows skipped
    for the time budget are not failures)."""
    bad = []
    for r in result["rows"]:
        if str(r.get("error") or "").startswith("skipped:"):
            continue
        lowered_bad = r.get("stage") == "failed" or r.get("fits_ub") is False
        if r.get("ok") is False or r.get("error") or lowered_bad:
            bad.append(r)
    return bad
