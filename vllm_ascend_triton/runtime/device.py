"""Which device we run on and what it offers kernels.

- On an NPU (torch_npu importable, a device visible, backend "npu"): the SKU comes from
  `torch.npu.get_device_name()`, the core counts from triton-ascend's driver.
- Anywhere: `VAT_SKU=<name>` plans for that SKU (grids, tile sizes, tuned configs) without
  needing the chip, which is how the interpreter, lowering and tuning pick their targets.
- On the cuda backend (benchmarks of the same kernel bodies on an NVIDIA GPU): the planning SKU
  sizes tiles, and persistent grids use the GPU's SM count as their core count.
- Otherwise there is no device; planning falls back to `sku.DEFAULT_PLANNING_SKU`.

Asking for the device never chooses a backend: it plans with the selected one, or the one the
environment and host would give (`backend.decide_backend`), or none.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
from collections.abc import Iterator

from vllm_ascend_triton.runtime.backend import Backend, decide_backend, npu_visible, selected_backend
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


def _cuda_sm_count() -> int:
    import torch

    return int(torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count)


@functools.cache
def _detect(sku_override: str | None, backend: Backend | None) -> DeviceInfo:
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
    if backend is Backend.CUDA:
        cube = vector = _cuda_sm_count()
    elif source != "npu":
        cube = vector = None
    return DeviceInfo(
        sku=sku,
        source=source,
        npu_present=npu,
        device_name=name,
        cube_cores=cube or sku.cube_cores,
        vector_cores=vector or sku.vector_cores,
        ub_bytes=sku.ub_bytes,
    )


_planning_sku: contextvars.ContextVar[str | None] = contextvars.ContextVar("vat_planning_sku", default=None)


def current_device() -> DeviceInfo:
    """The device kernels are planned for (cached per planning SKU / VAT_SKU value)."""
    planning = _planning_sku.get()
    if planning is not None:
        # Planning for a named SKU (codegen, tuning): its table figures, whatever this host is.
        return _detect(planning, None)
    return _detect(os.environ.get(SKU_ENV) or None, selected_backend() or decide_backend())


def planning_sku() -> str | None:
    """The SKU named by an enclosing `plan_for` block, or None."""
    return _planning_sku.get()


@contextlib.contextmanager
def plan_for(sku: str) -> Iterator[DeviceInfo]:
    """Plan launches (grids, tiles, tuned configs) for `sku` inside the block, on any host: how
    codegen and the tuner build the specs of a SKU that is not the one installed."""
    token = _planning_sku.set(get_sku(sku).name)
    try:
        yield current_device()
    finally:
        _planning_sku.reset(token)
