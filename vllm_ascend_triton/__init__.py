"""vllm-ascend-triton: Triton-Ascend kernels, runtime, AOT lowering, autotuning and a DP-balanced
scheduler for vLLM on Huawei Ascend NPUs.

Importing this package does nothing: no environment changes, no patches, no device probing (it
is imported into every vLLM process as a plugin). The execution backend is chosen explicitly,
see `vllm_ascend_triton.runtime.backend`; kernels live in `vllm_ascend_triton.kernels`.
"""

__version__ = "0.1.0"
