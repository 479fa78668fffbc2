"""Lower a kernel for an Ascend SKU through triton-ascend's compiler, in a subprocess.

triton-ascend's real front end turns the kernel into TTIR, then its bundled
`triton-adapter-opt` into the Ascend adapter IR ("ttadapter": Linalg/HIVM), and finally
`bishengir-compile` (part of CANN) into an NPU binary. Without CANN the last stage fails with
"ASCEND_HOME_PATH is not set"; the TTIR and adapter IR are then already in the Triton cache and
are what we return (stage "adapter"). A kernel the front end or the adapter rejects returns the
compiler's error (stage "failed"). With CANN installed the binary is built too (stage "binary").

Why a subprocess: under TRITON_INTERPRET (our CPU backend) `@triton.jit` yields interpreter
objects that cannot be compiled, and a compile after an interpreted launch in the same process
was seen to fail; a child process also isolates compiler crashes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from vllm_ascend_triton.runtime.sku import get_sku

_TRITON_TYPE_NAMES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}


def triton_type_name(dtype: torch.dtype) -> str:
    """Triton's name of a torch dtype in a lowering signature ("*" + name for a pointer)."""
    try:
        return _TRITON_TYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"no Triton signature type for {dtype}") from None


@dataclasses.dataclass(frozen=True)
class LoweringRequest:
    kernel: str  # "package.module:kernel_name", importable in a fresh process
    signature: dict[str, str]  # non-constexpr args: "*fp16", "*i32", "i32", "fp32", ...
    constants: dict[str, Any]  # constexpr args
    sku: str = "Ascend910B3"
    name: str = ""  # label for reports (defaults to the kernel name)

    @property
    def label(self) -> str:
        return self.name or self.kernel.rsplit(":", 1)[-1]


@dataclasses.dataclass(frozen=True)
class LoweringResult:
    request: LoweringRequest
    stage: str  # "binary" | "adapter" | "failed"
    ttir: str | None
    ttadapter: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.stage in ("binary", "adapter")


def kernel_ref(jit_fn: Any) -> str:
    """'module:name' of a @triton.jit kernel (compiled or interpreted flavour)."""
    fn = getattr(jit_fn, "fn", jit_fn)
    return f"{fn.__module__}:{fn.__name__}"


def lower_many(requests: Sequence[LoweringRequest], timeout: float = 600.0) -> list[LoweringResult]:
    """Lower each request in one child process (amortizes the triton import)."""
    for req in requests:
        sku = get_sku(req.sku)
        if not sku.triton_supported:
            raise ValueError(f"cannot lower for {sku.name}: {sku.unsupported_reason}")
    payload = [
        {"kernel": r.kernel, "signature": r.signature, "constants": r.constants, "sku": get_sku(r.sku).name}
        for r in requests
    ]
    # The child compiles: no interpreter, and no backend choice of ours inherited from this process.
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VAT_BACKEND")}
    # The child imports kernels by module name: let it see every module this process sees.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    with tempfile.TemporaryDirectory(prefix="vat-lower-") as cache_dir:
        env["TRITON_CACHE_DIR"] = cache_dir
        proc = subprocess.run(
            [sys.executable, "-m", "vllm_ascend_triton.codegen._lower_worker"],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"lowering worker died (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    # The worker writes one JSON document on its last stdout line (the compiler prints noise).
    answers = json.loads(proc.stdout.strip().splitlines()[-1])
    return [
        LoweringResult(req, a["stage"], a["ttir"], a["ttadapter"], a["error"])
        for req, a in zip(requests, answers, strict=True)
    ]


def lower(
    kernel: Any, signature: dict[str, str], constants: dict[str, Any], sku: str = "Ascend910B3"
) -> LoweringResult:
    """Lower one kernel (a jit function or a 'module:name' reference) for `sku`."""
    ref = kernel if isinstance(kernel, str) else kernel_ref(kernel)
    return lower_many([LoweringRequest(ref, signature, constants, sku)])[0]
