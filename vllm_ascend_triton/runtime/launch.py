"""How host wrappers launch kernels: grid sizing, the interpreter's bf16 shim, input checks.

Ascend maps every program of a grid onto a physical core and runs extra programs in further
rounds, so kernels are persistent: launch at most one program per core and loop over the work
inside (`for i in range(pid, n, tl.num_programs(0))`). Vector-only kernels use the vector
cores (AIV); kernels with `tl.dot` run on the cube cores (AIC).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from vllm_ascend_triton.runtime.backend import Backend, apply_requested_backend, current_backend, device_type
from vllm_ascend_triton.runtime.device import DeviceInfo, current_device

CHECK_ENV = "VAT_CHECK_INPUTS"

# Every kernel module imports this one before it defines kernels: an interpreter asked for in the
# environment (VAT_BACKEND=interpreter) must be in force when `@triton.jit` runs. With nothing
# asked for, this does nothing.
apply_requested_backend()


def persistent_grid(work_items: int, uses_cube: bool = False, device: DeviceInfo | None = None) -> tuple[int]:
    """One program per core, never more programs than work items (at least one)."""
    if work_items < 0:
        raise ValueError(f"work_items must be >= 0, got {work_items}")
    dev = device or current_device()
    cores = dev.cube_cores if uses_cube else dev.vector_cores
    return (max(1, min(work_items, cores)),)


def expected_device_type() -> str:
    """Tensors must live here for this process's backend."""
    return device_type()


def checks_enabled() -> bool:
    """Data-dependent input checks (e.g. positions within the cache) cost a device sync on an
    NPU, so they are on by default only on the interpreter; VAT_CHECK_INPUTS=0/1 overrides."""
    value = os.environ.get(CHECK_ENV, "").strip()
    if value:
        return value not in ("0", "false", "False", "no")
    return current_backend() is Backend.INTERPRETER


class Bf16Shim:
    """Triton's interpreter computes bf16 wrongly (it keeps bf16 as raw 16-bit integers), so on
    the interpreter backend bf16 tensors are swapped for fp32 copies; outputs are cast back
    into the caller's tensors when the shim closes. On an NPU it hands tensors through.

    A copy of a non-dense view (a slice of a fused qkv tensor, say) is contiguous, so its strides
    differ from the original's: read strides from the tensors the shim returns."""

    def __init__(self, active: bool):
        self.active = active
        self._writebacks: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _needs_copy(self, t: torch.Tensor | None) -> bool:
        return self.active and t is not None and t.dtype == torch.bfloat16

    def input(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return t.float() if self._needs_copy(t) else t

    def output(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """A tensor the kernel writes (or reads and writes)."""
        if not self._needs_copy(t):
            return t
        work = t.float()
        self._writebacks.append((t, work))
        return work

    def close(self) -> None:
        for original, work in self._writebacks:
            original.copy_(work)
        self._writebacks.clear()


@contextlib.contextmanager
def bf16_shim() -> Iterator[Bf16Shim]:
    shim = Bf16Shim(active=current_backend() is Backend.INTERPRETER)
    yield shim
    shim.close()
