"""vLLM plugin: our kernels, attention backend and scheduler inside vLLM's engine.

Entry points (pyproject.toml), both called by vLLM, never at import time:

- ``vllm.general_plugins``: :func:`vllm_ascend_triton.plugin.register.register`, run once in
  every vLLM process; registers the custom-op replacements, the MoE method, the attention
  backend and the scheduler choice where they can run (see ``register.py``).
- ``vllm.platform_plugins``: :func:`vllm_ascend_triton.plugin.register.interpreter_platform`,
  returns the interpreter platform's class path when ``VAT_PLATFORM=interpreter`` and None
  otherwise (``platform.py``).

Importing this package (or ``register``) imports neither vLLM nor Triton and changes nothing.
"""
