"""`vat info`: the device, backend, planning SKU and its properties, and the stack's versions."""

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
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from vllm_ascend_triton.cli import emit_json

    info = collect_info()
    if args.json:
        emit_json(info)
    else:
        print(format_info(info))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="device, backend, SKU properties and versions")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
