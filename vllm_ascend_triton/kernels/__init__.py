"""Public kernel API. Each family lives in its own module (host wrapper + @triton.jit kernels +
torch reference); names are resolved lazily so importing one family does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

from vllm_ascend_triton.runtime.backend import apply_requested_backend

# Before any family imports triton: an interpreter asked for in the environment (VAT_BACKEND)
# must be on when Triton defines its own jit helpers (tl.cumsum, tl.zeros, ...) and ours.
# With nothing asked for, this does nothing.
apply_requested_backend()

_EXPORTS = {
    "rotary_embedding": "rope",
    "mrope_rotary_embedding": "rope",
    "fused_topk": "moe_routing",
    "grouped_topk": "moe_routing",
    "moe_align_block_size": "moe_routing",
    "moe_permute": "fused_moe",
    "moe_unpermute": "fused_moe",
    "fused_experts": "fused_moe",
    "dynamic_per_token_quant": "fused_moe.w8a8",
    "fused_experts_w8a8": "fused_moe.w8a8",
    "reshape_and_cache": "attention",
    "unified_attention": "attention",
    "concat_and_cache_mla": "mla",
    "mla_decode": "mla",
    "mla_prefill": "mla",
}

# Kernel families, for tools that walk all of them (`vat check`, lowering reports, tests).
FAMILIES = ("rope", "moe_routing", "fused_moe", "attention", "mla")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
