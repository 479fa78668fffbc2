"""`vat info`: the device, backend, planning SKU and its properties, the stack's versions, and which
of our parts vLLM would run beside vllm-ascend on this host (and why)."""

from __future__ import annotations

import argparse

from vllm_ascend_triton.runtime.info import collect_info


def format_info(info: dict) -> str:
    dev, sku = info["device"], info["device"]["sku"]
    source = {"npu": "detected", "env": "from VAT_SKU", "default": "default planning SKU"}[info["sku_source"]]
    hbm_gib = sku["hbm_bytes"] / 1024**3
    support = "supported" if sku["triton_supported"] else "NOT supported: " + sku["unsupported_reason"]
    lines = [
        f"device         : {info['npu'] or 'no NPU'}",
        f"backend        : {info['backend'] or 'none chosen (set VAT_BACKEND to run kernels)'}",
        f"sku            : {sku['name']} ({sku['family']}, {source})",
        f"cube cores     : {dev['cube_cores']}",
        f"vector cores   : {dev['vector_cores']}",
        f"unified buffer : {dev['ub_bytes']} bytes per core",
        f"hbm            : {hbm_gib:.0f} GiB, ~{sku['hbm_bandwidth_gbps']:.0f} GB/s (sourced)",
        f"peak fp16      : ~{sku['peak_fp16_tflops']:.0f} TFLOP/s (sourced)",
        f"triton-ascend  : {support}",
    ]
    lines += [f"{name:<15}: {version or 'not installed'}" for name, version in info["versions"].items()]
    lines += format_vllm(info["vllm"])
    return "\n".join(lines)


def format_vllm(plan: dict) -> list[str]:
    """The ``vllm`` section of :func:`vllm_plan` as text lines."""
    if not plan["vllm_ascend_installed"]:
        head = "vllm-ascend not installed (VAT_PLATFORM=interpreter: the CPU test platform; docs/vllm.md)"
    else:
        switch = "on" if plan["opted_in"] else "off: vllm-ascend runs exactly as without this package"
        head = f"vllm-ascend installed, VAT_ASCEND {switch}"
    lines = [f"{'with vLLM':<15}: {head}"]
    for part, state in plan["parts"].items():
        lines.append(f"  {part:<13}: {'active' if state['active'] else 'inactive'} ({state['why']})")
    return lines


def vllm_plan() -> dict:
    """Which of our parts a vLLM process would run on this host beside vllm-ascend, and why."""
    from vllm_ascend_triton.plugin.ascend import integration_plan

    return integration_plan()


def run(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.cli import emit_json

    info = collect_info()
    info["vllm"] = vllm_plan()
    if args.json:
        emit_json(info)
    else:
        print(format_info(info))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info", help="device, backend, SKU properties, versions, parts active beside vllm-ascend"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
