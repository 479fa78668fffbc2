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
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from vllm_ascend_triton.runtime.backend import (
    Backend,
    apply_requested_backend,
    current_backend,
    device_type,
    selected_backend,
)
from vllm_ascend_triton.runtime.device import DeviceInfo, current_device
from vllm_ascend_triton.runtime.env import flag_or_none

CHECK_ENV = "VAT_CHECK_INPUTS"

# Every kernel module imports this one before it defines kernels: an interpreter asked for in the
# environment (VAT_BACKEND=interpreter) must be in force when `@triton.jit` runs. With nothing
# asked for, this does nothing.
apply_requested_backend()


# Compile options of triton-ascend that a config may carry next to its constexprs. The
# interpreter does not take them (they only shape the NPU binary).
COMPILE_OPTIONS = ("multibuffer",)
_OPTION_NAMES = frozenset(COMPILE_OPTIONS)


def kernel_ref(jit_fn: Any) -> str:
    """'module:name' of a @triton.jit kernel (compiled or interpreted flavour): a fresh process
    imports the kernel from it."""
    fn = getattr(jit_fn, "fn", jit_fn)
    return f"{fn.__module__}:{fn.__name__}"


@dataclasses.dataclass(frozen=True)
class KernelFacts:
    """What depends only on the kernel: its parameters as Triton sees them, computed once."""

    params: tuple[Any, ...]  # Triton's `KernelParam`s, in order
    runtime: frozenset[str]  # names of the runtime (non-constexpr) parameters
    constexprs: frozenset[str]  # names of the constexpr parameters
    ref: str  # 'module:name'


# id(kernel) -> (kernel, facts): the kernel is kept alive, so its id is never reused.
_facts: dict[int, tuple[Any, KernelFacts]] = {}


def kernel_facts(jit_fn: Any) -> KernelFacts:
    """The :class:`KernelFacts` of a @triton.jit kernel (either flavour), built on first use."""
    hit = _facts.get(id(jit_fn))
    if hit is not None:
        return hit[1]
    from triton.runtime.jit import KernelParam

    fn = getattr(jit_fn, "fn", jit_fn)
    params = tuple(
        KernelParam(i, p, False, False) for i, p in enumerate(inspect.signature(fn).parameters.values())
    )
    facts = KernelFacts(
        params=params,
        runtime=frozenset(p.name for p in params if not p.is_constexpr),
        constexprs=frozenset(p.name for p in params if p.is_constexpr),
        ref=kernel_ref(jit_fn),
    )
    _facts[id(jit_fn)] = (jit_fn, facts)
    return facts


def kernel_params(jit_fn: Any) -> list[Any]:
    """Triton's own view of a kernel's parameters (`KernelParam`: name, constexpr or not, type
    annotation), for either flavour of kernel object."""
    return list(kernel_facts(jit_fn).params)


def _signature_type(param: Any, value: Any) -> str:
    from triton.runtime.jit import mangle_type

    if param.annotation_type:
        return param.annotation_type
    mangled = mangle_type(value, param.is_const)
    return "*i8" if mangled == "none" else mangled  # None is a null pointer, as Triton's run() does


@dataclasses.dataclass(frozen=True, eq=False, init=False)
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

    def __init__(
        self,
        name: str,
        kernel: Any,
        grid: tuple[int, ...],
        args: Mapping[str, Any],
        constexprs: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        uses_cube: bool = False,
    ) -> None:
        # The dataclass's own __init__ of a frozen class sets each field through
        # object.__setattr__; one launch per op and layer makes that measurable.
        d = self.__dict__
        d["name"] = name
        d["kernel"] = kernel
        d["grid"] = grid
        d["args"] = args
        d["constexprs"] = constexprs
        d["config"] = {} if config is None else config
        d["options"] = {} if options is None else options
        d["uses_cube"] = uses_cube
        self.__post_init__()

    def __post_init__(self) -> None:
        facts = kernel_facts(self.kernel)
        if self.args.keys() != facts.runtime:
            raise ValueError(
                f"{self.name}: runtime arguments {sorted(self.args)} != the kernel's {sorted(facts.runtime)}"
            )
        if self.constexprs.keys() != facts.constexprs:
            want = sorted(facts.constexprs)
            raise ValueError(f"{self.name}: constexprs {sorted(self.constexprs)} != the kernel's {want}")
        # A tuned config may carry compile options (`multibuffer`) beside its block sizes: they go
        # with the launch, so what was tuned is what the NPU runs and what codegen lowers.
        config = self.config
        if config and not config.keys().isdisjoint(_OPTION_NAMES):
            carried = {k: config[k] for k in COMPILE_OPTIONS if k in config}
            object.__setattr__(self, "options", {**carried, **self.options})
        if self.options and not self.options.keys() <= _OPTION_NAMES:
            unknown = set(self.options) - _OPTION_NAMES
            raise ValueError(f"{self.name}: unknown compile options {sorted(unknown)} ({COMPILE_OPTIONS})")
        grid = self.grid
        if not grid:
            raise ValueError(f"{self.name}: grid must hold positive ints, got {grid}")
        for g in grid:
            if type(g) is not int or g < 1:
                raise ValueError(f"{self.name}: grid must hold positive ints, got {grid}")
        if grid[0] > 65535:
            raise ValueError(f"{self.name}: grid {grid} exceeds Ascend's coreDim limit of 65535")

    def with_args(self, args: Mapping[str, Any]) -> LaunchSpec:
        """This launch with other runtime arguments under the same names.

        How a host API reuses a spec it built and validated once per shape (a cached template,
        its tensors placeholders): per call only the tensors change, so the checks of
        `__post_init__` are not repeated.

        Args:
            args: every runtime argument, by the names of this spec's `args` (not checked again).

        Returns:
            A new `LaunchSpec` sharing this one's kernel, grid, constexprs, config and options.
        """
        spec = object.__new__(LaunchSpec)
        d = spec.__dict__
        d.update(self.__dict__)
        d["args"] = args
        return spec

    @property
    def kernel_ref(self) -> str:
        return kernel_facts(self.kernel).ref

    def signature(self) -> dict[str, str]:
        """Triton signature of the runtime arguments, as Triton's launcher derives it."""
        params = [p for p in kernel_facts(self.kernel).params if not p.is_constexpr]
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


def persistent_grid(work_items: int, uses_cube: bool = False, device: DeviceInfo | None = None) -> tuple[int]:
    """One program per core, never more programs than work items (at least one)."""
    if work_items < 0:
        raise ValueError(f"work_items must be >= 0, got {work_items}")
    dev = device or current_device()
    cores = dev.cube_cores if uses_cube else dev.vector_cores
    return (max(1, min(work_items, cores)),)


def expected_device_type() -> str:
    """Tensors must live here for this process's backend (fixed once a backend is selected)."""
    if _device_type:
        return _device_type[0]
    want = device_type()
    if selected_backend() is not None:
        _device_type.append(want)
    return want


_device_type: list[str] = []  # [the selected backend's device type] once known


# The process-wide input-check switch: None means VAT_CHECK_INPUTS (read once, at the first
# call), else the backend's default. Tests and benchmarks set it (or use `input_checks`).
INPUT_CHECKS: bool | None = None
_env_checks: list[bool | None] = []  # [VAT_CHECK_INPUTS] once read


def checks_enabled() -> bool:
    """Whether data-dependent input checks (e.g. positions within the cache) run. They cost a
    device sync on an NPU, so they are on by default only on the interpreter; VAT_CHECK_INPUTS
    overrides (read once per process, through `runtime.env`), and `INPUT_CHECKS` overrides that."""
    if INPUT_CHECKS is not None:
        return INPUT_CHECKS
    if not _env_checks:
        _env_checks.append(flag_or_none(CHECK_ENV))
    env = _env_checks[0]
    if env is not None:
        return env
    return current_backend() is Backend.INTERPRETER


@contextlib.contextmanager
def input_checks(enabled: bool | None) -> Iterator[None]:
    """Inside the block, data-dependent input checks are on (True), off (False) or as configured
    (None). Not thread-local: for tests and benchmarks."""
    global INPUT_CHECKS
    saved = INPUT_CHECKS
    INPUT_CHECKS = enabled
    try:
        yield
    finally:
        INPUT_CHECKS = saved


class Bf16Shim:
    """Triton's interpreter computes bf16 wrongly (it keeps bf16 as raw 16-bit integers), so on
    the interpreter backend bf16 tensors are swapped for fp32 copies; outputs are cast back
    into the caller's tensors when the shim closes. On an NPU it hands tensors through.

    A copy of a non-dense view (a slice of a fused qkv tensor, say) is contiguous, so its strides
    differ from the original's: read strides from the tensors the shim returns."""

    __slots__ = ("active", "_writebacks")

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

    def __enter__(self) -> Bf16Shim:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()


def bf16_shim() -> Bf16Shim:
    """A shim for one call (a context manager: outputs are written back when the block ends
    without an exception); active only on the interpreter backend and outside dry runs."""
    return Bf16Shim(active=current_backend() is Backend.INTERPRETER and not _dry_run.get())
