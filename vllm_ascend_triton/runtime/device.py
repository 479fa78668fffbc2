"""Which device we run on and what it offers kernels.

- On an NPU (torch_npu importable, a device visible, backend "npu"): the SKU comes from
  `torch.npu.get_device_name()`, the core counts from triton-ascend's driver.
- Anywhere: `VAT_SKU=<name>` plans for that SKU (grids, tile sizes, tuned configs) without
  needing the chip, which is how the interpreter, lowering and tuning pick their targets.
- Otherwise there is no device; planning falls back to `sku.DEFAULT_PLANNING_SKU`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

from vllm_ascend_triton.runtime.backend import Backend, current_backend, npu_visible
from vllm_ascend_triton.runtime.sku import DEFAULT_PLANNING_SKU, AscendSKU, get_sku

logger = logging.getLogger(__name__)

SKU_ENV = "VAT_SKU"


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    sku: AscendSKU  # the SKU kernels are planned for
    source: str  # "npu" (detected), "env" (VAT_SKU) or "default" (no device, no override)
    npu_present: bool
    device_name: str | None  # what torch_npu reported, if an NPU is present
    cube_cores: int  # driver-reported on an NPU, else the table's
    vector_cores: int
    ub_bytes: int

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sku"] = self.sku.as_dict()
        return d


def _npu_name_and_cores() -> tuple[str, int | None, int | None]:
    import torch
    import torch_npu  # noqa: F401  (registers torch.npu)

    dev = torch.npu.current_device()
    name = torch.npu.get_device_name(dev)
    try:
        import triton

        props = triton.runtime.driver.active.utils.get_device_properties(dev)
        return name, int(props["num_aicore"]), int(props["num_vectorcore"])
    except Exception as exc:  # driver without the query: keep the table's figures
        logger.warning(
            "could not read core counts from the triton-ascend driver (%s); using the SKU table", exc
        )
        return name, None, None


@functools.cache
def _detect(sku_override: str | None, backend: Backend) -> DeviceInfo:
    npu = backend is Backend.NPU and npu_visible()
    name, cube, vector = _npu_name_and_cores() if npu else (None, None, None)
    if sku_override:
        sku, source = get_sku(sku_override), "env"
    elif name is not None:
        sku, source = get_sku(name), "npu"
    else:
        sku, source = get_sku(DEFAULT_PLANNING_SKU), "default"
    if not sku.triton_supported:
        logger.warning("%s: %s", sku.name, sku.unsupported_reason)
    return DeviceInfo(
        sku=sku,
        source=source,
        npu_present=npu,
        device_name=name,
        cube_cores=cube if cube and source == "npu" else sku.cube_cores,
        vector_cores=vector if vector and source == "npu" else sku.vector_cores,
        ub_bytes=sku.ub_bytes,
    )


def current_device() -> DeviceInfo:
    """The device kernels are planned for (cached per VAT_SKU value)."""
    return _detect(os.environ.get(SKU_ENV) or None, current_backend())
