"""Which execution backend this process uses: compiled on an NPU, Triton's interpreter on the
CPU, or upstream Triton on an NVIDIA GPU (for measured benchmarks of the same kernel bodies).

Nothing is chosen at import time: a plugin is imported into every vLLM process, also on hosts
with a GPU and no NPU, and switching Triton to its interpreter there would turn every Triton
kernel of the process (vLLM's own included) into interpreted code. The choice is made
explicitly:

- `select_backend("interpreter" | "npu" | "cuda")`, called by `vat` subcommands that run
  kernels, by our interpreter platform for vLLM, and by the test suite;
- `VAT_BACKEND=<name>` in the environment, applied when a kernel module is imported (so the
  interpreter is switched on before the kernels are defined) or at the first launch;
- with neither, an NPU host (torch_npu installed, `/dev/davinci*` present) uses `npu`; any
  other host raises `BackendNotSelectedError` at the first launch, naming `VAT_BACKEND`.

Why the interpreter must be chosen before kernels are defined: Triton decides at decoration
time whether `@triton.jit` yields a compiled or an interpreted kernel (`TRITON_INTERPRET`), and
wrapping single kernels later breaks as soon as a kernel calls another jit function
(`tl.cumsum`, `tl.softmax`, ...). Selecting the interpreter therefore sets `TRITON_INTERPRET=1`
for this process (and its children) and installs our interpreter fixes; that is what the
caller asked for.

This module imports nothing heavy (no torch, no triton, no subprocess) until a backend is
selected.
"""

from __future__ import annotations

import enum
import functools
import glob
import importlib.util
import os
import sys


class Backend(enum.StrEnum):
    NPU = "npu"  # triton-ascend compiles and launches on the NPU
    INTERPRETER = "interpreter"  # Triton's interpreter runs kernels on CPU tensors
    CUDA = "cuda"  # upstream Triton on an NVIDIA GPU: only when chosen explicitly (benchmarks)


BACKEND_ENV = "VAT_BACKEND"

# Tensors live on this torch device type for each backend.
DEVICE_TYPES = {Backend.NPU: "npu", Backend.INTERPRETER: "cpu", Backend.CUDA: "cuda"}


class BackendNotSelectedError(RuntimeError):
    """A kernel was launched on a host without an NPU and no backend was chosen."""


@functools.lru_cache(maxsize=1)
def npu_visible() -> bool:
    """torch_npu is installed and the Ascend driver exposes at least one device."""
    return importlib.util.find_spec("torch_npu") is not None and bool(glob.glob("/dev/davinci[0-9]*"))


def parse_backend(name: str | Backend, source: str = BACKEND_ENV) -> Backend:
    """A backend from its name; an unknown name is a ValueError that lists the known ones."""
    try:
        return Backend(str(name).strip().lower())
    except ValueError:
        raise ValueError(
            f"{source}={name!r} is not a backend; expected one of {', '.join(b.value for b in Backend)}"
        ) from None


def requested_backend(environ: os._Environ | dict | None = None) -> Backend | None:
    """What the environment asks for: VAT_BACKEND, else TRITON_INTERPRET=1 (the interpreter was
    switched on by hand), else nothing."""
    env = os.environ if environ is None else environ
    forced = env.get(BACKEND_ENV, "").strip()
    if forced:
        return parse_backend(forced)
    if env.get("TRITON_INTERPRET", "0") == "1":
        return Backend.INTERPRETER
    return None


def decide_backend(environ: os._Environ | dict | None = None) -> Backend | None:
    """The backend a launch would use: the requested one, else npu on an NPU host, else None."""
    requested = requested_backend(environ)
    if requested is not None:
        return requested
    return Backend.NPU if npu_visible() else None


_selected: Backend | None = None


def _kernels_defined_compiled() -> bool:
    """Some of our kernel modules already defined compiled-mode kernels (`JITFunction`s)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    return any(
        type(value).__name__ == "JITFunction"
        for name, module in list(sys.modules.items())
        if name.startswith("vllm_ascend_triton.kernels") and module is not None
        for value in list(vars(module).values())
    )


def select_backend(backend: str | Backend) -> Backend:
    """Choose this process's backend (once; choosing the same one again is a no-op).

    The interpreter must be chosen before kernel modules are imported: it sets TRITON_INTERPRET=1
    and installs the interpreter fixes of `runtime.interpreter`."""
    global _selected
    chosen = parse_backend(backend, source="backend")
    if _selected is not None:
        if _selected is not chosen:
            raise RuntimeError(f"this process runs the {_selected} backend; cannot switch to {chosen}")
        return _selected
    if chosen is Backend.INTERPRETER:
        if _kernels_defined_compiled():
            raise RuntimeError(
                "the interpreter backend was selected after kernel modules were imported in compiled mode; "
                f"set {BACKEND_ENV}=interpreter in the environment (or call select_backend('interpreter')) "
                "before importing vllm_ascend_triton.kernels"
            )
        os.environ["TRITON_INTERPRET"] = "1"
        from vllm_ascend_triton.runtime.interpreter import patch_triton_interpreter

        patch_triton_interpreter()
    _selected = chosen
    return _selected


def apply_requested_backend() -> Backend | None:
    """Select what VAT_BACKEND (or TRITON_INTERPRET=1) asks for, if anything. Kernel modules call
    this before defining their kernels, so an interpreter chosen in the environment is in force
    when `@triton.jit` runs; with nothing requested it does nothing."""
    if _selected is not None:
        return _selected
    requested = requested_backend()
    return select_backend(requested) if requested is not None else None


def selected_backend() -> Backend | None:
    """The backend chosen so far, without deciding one."""
    return _selected


def current_backend() -> Backend:
    """The backend kernels launch on: the selected one, else what the environment asks for, else
    npu on an NPU host; on any other host a BackendNotSelectedError that says how to choose."""
    if _selected is not None:
        return _selected
    decided = decide_backend()
    if decided is None:
        raise BackendNotSelectedError(
            "no execution backend chosen and this host has no Ascend NPU (torch_npu + /dev/davinci*): "
            f"set {BACKEND_ENV}=interpreter to run the kernels in Triton's interpreter on the CPU, "
            f"or {BACKEND_ENV}=cuda for upstream Triton on an NVIDIA GPU"
        )
    return select_backend(decided)


def device_type() -> str:
    """The torch device type kernel tensors must live on for this process's backend."""
    return DEVICE_TYPES[current_backend()]
