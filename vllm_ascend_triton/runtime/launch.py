"""How host wrappers launch kernels: launch specs, grid sizing, the interpreter's bf16 shim,
input checks.

Launch specs. Every host API first builds `LaunchSpec`s (kernel, grid, runtime arguments,
constexprs, the config it chose, compile options) and then launches them. Codegen lowers the
very same specs (built by each family's `variants` module for a representative shape set), with
the Triton signature derived from the runtime arguments by Triton's own `KernelParam` and
`mangle_type`, so what `vat compile` proves is what the runtime launches, and no signature is
typed by hand anywhere.

Ascend maps every program of a grid onto a physical core and runs extra programs in further
rounds, so kernels are persistent: launch at most one program per core and loop over the work
inside (`for i in range(pid, n, tl.num_programs(0))`). Vector-only kernels use the vector
cores (AIV); kernels with `tl.dot` run on the cube cores (AIC).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from vllm_ascend_triton.runtime.backend import Backend, apply_requested_backend, current_backend, device_type
from vllm_ascend_triton.runtime.device import DeviceInfo, current_device

CHECK_ENV = "VAT_CHECK_INPUTS"

# Every kernel module imports this one before it defines kernels: an interpreter asked for in the
# environment (VAT_BACKEND=interpreter) must be in force when `@triton.jit` runs. With nothing
# asked for, this does nothing.
apply_requested_backend()


# Compile options of triton-ascend that a config may carry next to its constexprs. The
# interpreter does not take them (they only shape the NPU binary).
COMPILE_OPTIONS = ("multibuffer",)


def kernel_ref(jit_fn: Any) -> str:
    """'module:name' of a @triton.jit kernel (compiled or interpreted flavour): a fresh process
    imports the kernel from it."""
    fn = getattr(jit_fn, "fn", jit_fn)
    return f"{fn.__module__}:{fn.__name__}"


def kernel_params(jit_fn: Any) -> list[Any]:
    """Triton's own view of a kernel's parameters (`KernelParam`: name, constexpr or not, type
    annotation), for either flavour of kernel object."""
    from triton.runtime.jit import KernelParam

    fn = getattr(jit_fn, "fn", jit_fn)
    return [KernelParam(i, p, False, False) for i, p in enumerate(inspect.signature(fn).parameters.values())]


def _signature_type(param: Any, value: Any) -> str:
    from triton.runtime.jit import mangle_type

    if param.annotation_type:
        return param.annotation_type
    mangled = mangle_type(value, param.is_const)
    return "*i8" if mangled == "none" else mangled  # None is a null pointer, as Triton's run() does


@dataclasses.dataclass(frozen=True, eq=False)
class LaunchSpec:
    """One kernel launch, fully decided: what the runtime launches and what codegen lowers."""

    name: str  # variant label, e.g. "rope" or "moe_align_count"
    kernel: Any  # the @triton.jit object
    grid: tuple[int, ...]
    args: Mapping[str, Any]  # every runtime (non-constexpr) argument, by parameter name
    constexprs: Mapping[str, Any]  # every constexpr argument, by parameter name
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the tuned/default choice
    # Compile options (multibuffer); those the config carries are added (explicit ones win).
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    uses_cube: bool = False  # a tl.dot kernel: the grid counts cube cores

    def __post_init__(self) -> None:
        params = kernel_params(self.kernel)
        runtime = [p.name for p in params if not p.is_constexpr]
        constant = [p.name for p in params if p.is_constexpr]
        if sorted(self.args) != sorted(runtime):
            raise ValueError(
                f"{self.name}: runtime arguments {sorted(self.args)} != the kernel's {sorted(runtime)}"
            )
        if sorted(self.constexprs) != sorted(constant):
            raise ValueError(
                f"{self.name}: constexprs {sorted(self.constexprs)} != the kernel's {sorted(constant)}"
            )
        # A tuned config may carry compile options (`multibuffer`) beside its block sizes: they go
        # with the launch, so what was tuned is what the NPU runs and what codegen lowers.
        carried = {k: self.config[k] for k in COMPILE_OPTIONS if k in self.config}
        if carried:
            object.__setattr__(self, "options", {**carried, **self.options})
        unknown = set(self.options) - set(COMPILE_OPTIONS)
        if unknown:
            raise ValueError(f"{self.name}: unknown compile options {sorted(unknown)} ({COMPILE_OPTIONS})")
        if not self.grid or any(not isinstance(g, int) or g < 1 for g in self.grid):
            raise ValueError(f"{self.name}: grid must hold positive ints, got {self.grid}")
        if self.grid[0] > 65535:
            raise ValueError(f"{self.name}: grid {self.grid} exceeds Ascend's coreDim limit of 65535")

    @property
    def kernel_ref(self) -> str:
        return kernel_ref(self.kernel)

    def signature(self) -> dict[str, str]:
        """Triton signature of the runtime arguments, as Triton's launcher derives it."""
        params = [p for p in kernel_params(self.kernel) if not p.is_constexpr]
        return {p.name: _signature_type(p, self.args[p.name]) for p in params}

    def key(self) -> dict[str, Any]:
        """Everything that decides the compiled binary (not the tensor contents)."""
        return {
            "kernel": self.kernel_ref,
            "signature": self.signature(),
            "constexprs": dict(self.constexprs),
            "options": dict(self.options),
        }

    def launch(self) -> None:
        for recorder in _recorders.get():
            recorder.append(self)
        if _dry_run.get():
            return
        options = dict(self.options) if current_backend() is Backend.NPU else {}
        self.kernel[self.grid](**self.args, **self.constexprs, **options)


_recorders: contextvars.ContextVar[tuple[list[LaunchSpec], ...]] = contextvars.ContextVar(
    "vat_launch_recorders", default=()
)
_dry_run: contextvars.ContextVar[bool] = contextvars.ContextVar("vat_dry_run", default=False)


@contextlib.contextmanager
def record_launches(execute: bool = True) -> Iterator[list[LaunchSpec]]:
    """Collect every LaunchSpec that host APIs launch inside the block.

    With `execute=False` nothing runs (a dry run): host APIs build and "launch" their specs, which
    are only recorded, and the interpreter's bf16 shim stays off so the specs carry the caller's
    dtypes. Codegen builds its variants this way, from the host APIs themselves; tests compare them
    with what an executed call launches."""
    recorded: list[LaunchSpec] = []
    rec_token = _recorders.set((*_recorders.get(), recorded))
    dry_token = _dry_run.set(_dry_run.get() or not execute)
    try:
        yield recorded
    finally:
        _dry_run.reset(dry_token)
        _recorders.reset(rec_token)


def launch_all(specs: list[LaunchSpec]) -> None:
    for spec in specs:
        spec.launch()


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
    shim = Bf16Shim(active=current_backend() is Backend.INTERPRETER and not _dry_run.get())
    yield shim
    shim.close()
