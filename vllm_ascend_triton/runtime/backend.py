"""Which execution backend this process uses: compiled on an NPU, or Triton's interpreter.

The choice must be made before any `@triton.jit` kernel is defined, because Triton decides at
decoration time whether a kernel is compiled or interpreted (TRITON_INTERPRET). Wrapping single
kernels at launch time breaks as soon as a kernel calls another jit function (tl.cumsum,
tl.softmax, ...), so this is a per-process decision, taken when `vllm_ascend_triton` is imported.

This module imports nothing heavy (no torch, no triton, no subprocess): it only reads the
environment and looks for the Ascend driver's device files.
"""

from __future__ import annotations

import enum
import functools
import glob
import importlib.util
import os


class Backend(enum.StrEnum):
    NPU = "npu"  # triton-ascend compiles and launches on the NPU
    INTERPRETER = "interpreter"  # Triton's interpreter runs kernels on CPU tensors


BACKEND_ENV = "VAT_BACKEND"


@functools.lru_cache(maxsize=1)
def npu_visible() -> bool:
    """torch_npu is installed and the Ascend driver exposes at least one device."""
    return importlib.util.find_spec("torch_npu") is not None and bool(glob.glob("/dev/davinci[0-9]*"))


def decide_backend(environ: os._Environ | dict | None = None) -> Backend:
    env = os.environ if environ is None else environ
    forced = env.get(BACKEND_ENV, "").strip().lower()
    if forced:
        try:
            return Backend(forced)
        except ValueError:
            raise ValueError(
                f"{BACKEND_ENV}={forced!r} is not a backend; expected one of "
                f"{', '.join(b.value for b in Backend)}"
            ) from None
    if env.get("TRITON_INTERPRET", "0") == "1":
        return Backend.INTERPRETER
    return Backend.NPU if npu_visible() else Backend.INTERPRETER


_selected: Backend | None = None


def select_backend() -> Backend:
    """Decide once per process and, for the interpreter, set TRITON_INTERPRET before kernels load."""
    global _selected
    if _selected is None:
        _selected = decide_backend()
        if _selected is Backend.INTERPRETER:
            os.environ["TRITON_INTERPRET"] = "1"
    return _selected


def current_backend() -> Backend:
    return select_backend()
