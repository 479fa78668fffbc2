"""vllm-ascend-triton: Triton-Ascend kernels, runtime, AOT lowering, autotuning and a DP-balanced
scheduler for vLLM on Huawei Ascend NPUs.

Importing this package does one thing: it chooses the execution backend for this process
(compiled on an NPU, or Triton's interpreter on a CPU; override with VAT_BACKEND=npu|interpreter),
because the interpreter must be switched on before any kernel module defines its kernels.
Nothing else happens at import time; kernels live in `vllm_ascend_triton.kernels`.
"""

from vllm_ascend_triton.runtime.backend import select_backend as _select_backend

BACKEND = _select_backend()

__version__ = "0.1.0"
