"""Lower launch specs for an Ascend SKU through triton-ascend's compiler, in worker processes.

triton-ascend's real front end turns the kernel into TTIR, then its bundled
`triton-adapter-opt` into the Ascend adapter IR ("ttadapter": Linalg/HIVM), and finally
`bishengir-compile` (part of CANN) into an NPU binary. Without CANN the last stage fails with
"ASCEND_HOME_PATH is not set"; the TTIR and adapter IR are then already in the Triton cache and
are what we return (stage "adapter"). A kernel the front end or the adapter rejects returns the
compiler's error (stage "failed"). With CANN installed the binary is built too (stage "binary";
that code path is real but untested here: no CANN on the build machines).

What is lowered is a `LaunchSpec` (runtime.launch): the kernel, its constexprs and compile
options exactly as the host API chose them, and the signature Triton derives from the runtime
arguments. Nothing is typed by hand.

Why subprocesses: under TRITON_INTERPRET (our CPU backend) `@triton.jit` yields interpreter
objects that cannot be compiled, and a compile after an interpreted launch in the same process
was seen to fail; a child process also isolates compiler crashes, and several run in parallel.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vllm_ascend_triton.runtime.launch import LaunchSpec
from vllm_ascend_triton.runtime.sku import get_sku


@dataclasses.dataclass(frozen=True)
class LoweringRequest:
    kernel: str  # "package.module:kernel_name", importable in a fresh process
    signature: dict[str, str]  # runtime args: "*fp16", "*i32", "i32", "fp32", ...
    constants: dict[str, Any]  # constexpr args
    sku: str = "Ascend910B3"
    name: str = ""  # label for reports (defaults to the kernel name)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # compile options (multibuffer)

    @classmethod
    def from_spec(cls, spec: LaunchSpec, sku: str, name: str | None = None) -> LoweringRequest:
        return cls(
            spec.kernel_ref,
            spec.signature(),
            dict(spec.constexprs),
            get_sku(sku).name,
            name or spec.name,
            dict(spec.options),
        )

    @property
    def label(self) -> str:
        return self.name or self.kernel.rsplit(":", 1)[-1]

    def cache_key(self) -> str:
        """Content address: kernel source, signature, constexprs, options, SKU, compiler version."""
        payload = {
            "source": _module_source_hash(self.kernel.split(":")[0]),
            "kernel": self.kernel,
            "signature": self.signature,
            "constants": {k: repr(v) for k, v in sorted(self.constants.items())},
            "options": {k: repr(v) for k, v in sorted(self.options.items())},
            "sku": self.sku,
            "triton_ascend": triton_ascend_version(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class LoweringResult:
    request: LoweringRequest
    stage: str  # "binary" | "adapter" | "failed"
    ttir: str | None
    ttadapter: str | None
    error: str | None
    cached: bool = False  # taken from the artifact cache, not lowered in this run
    npubin: bytes | None = None  # the NPU binary (stage "binary", only where CANN is installed)

    @property
    def ok(self) -> bool:
        return self.stage in ("binary", "adapter")


@functools.cache
def triton_ascend_version() -> str:
    try:
        return importlib.metadata.version("triton-ascend")
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


@functools.cache
def _module_source_hash(module_name: str) -> str:
    # The whole module: a kernel's jit helpers live beside it, and any edit there changes the binary.
    source = inspect.getsource(importlib.import_module(module_name))
    return hashlib.sha256(source.encode()).hexdigest()


def _check_skus(requests: Sequence[LoweringRequest]) -> None:
    for req in requests:
        sku = get_sku(req.sku)
        if not sku.triton_supported:
            raise ValueError(f"cannot lower for {sku.name}: {sku.unsupported_reason}")


def _run_worker(requests: Sequence[LoweringRequest], timeout: float) -> list[LoweringResult]:
    """Lower `requests` in one child process (amortizes the triton import)."""
    payload = [
        {
            "kernel": r.kernel,
            "signature": r.signature,
            "constants": r.constants,
            "sku": r.sku,
            "options": r.options,
        }
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
        LoweringResult(
            req,
            a["stage"],
            a["ttir"],
            a["ttadapter"],
            a["error"],
            npubin=base64.b64decode(a["npubin_b64"]) if a.get("npubin_b64") else None,
        )
        for req, a in zip(requests, answers, strict=True)
    ]


def lower_many(
    requests: Sequence[LoweringRequest],
    *,
    jobs: int = 1,
    cache: Any = None,
    timeout: float = 600.0,
    on_result: Callable[[LoweringResult], None] | None = None,
) -> list[LoweringResult]:
    """Lower every request, `jobs` worker processes in parallel; with an `ArtifactCache`, requests
    already in it are not lowered again (and new results are stored). Results keep the order of
    `requests`; `on_result` is called as each one is known (progress bars)."""
    _check_skus(requests)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    results: list[LoweringResult | None] = [None] * len(requests)
    # Identical requests (same content address) are lowered once and share the result.
    pending: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
        hit = cache.get(req) if cache is not None else None
        if hit is not None:
            results[i] = hit
            if on_result:
                on_result(hit)
        else:
            pending.setdefault(req.cache_key(), []).append(i)
    todo = [indices[0] for indices in pending.values()]
    # Small batches keep every worker busy and the progress bar moving; each batch pays one
    # triton import (~2 s) in its process.
    batch = max(1, min(8, -(-len(todo) // jobs))) if todo else 1
    chunks = [todo[i : i + batch] for i in range(0, len(todo), batch)]

    def run_chunk(chunk: list[int]) -> None:
        for first, res in zip(chunk, _run_worker([requests[i] for i in chunk], timeout), strict=True):
            if cache is not None:
                cache.put(res)
            for i in pending[requests[first].cache_key()]:
                results[i] = dataclasses.replace(res, request=requests[i])
                if on_result:
                    on_result(results[i])

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(run_chunk, chunk) for chunk in chunks]:
            future.result()
    return [r for r in results if r is not None]


def lower_spec(spec: LaunchSpec, sku: str = "Ascend910B3") -> LoweringResult:
    """Lower one launch spec for `sku` (no cache)."""
    return lower_many([LoweringRequest.from_spec(spec, sku)])[0]
