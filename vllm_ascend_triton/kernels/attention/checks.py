"""`vat check` cases of the attention family: small inputs against the torch references."""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels._check import CheckResult, compare
from vllm_ascend_triton.kernels.attention import reshape_and_cache, unified_attention
from vllm_ascend_triton.kernels.attention.reference import (
    make_paged_case,
    reshape_and_cache_reference,
    unified_attention_reference,
)


def self_check() -> list[CheckResult]:
    """Small cases on this backend against the torch reference (fast on the interpreter)."""
    results = []
    cases = (
        ("mixed_gqa2_h64_b16_fp32", [3, 1, 0], [20, 33, 5], 4, 2, 64, 16, torch.float32, None, 1e-4),
        ("decode_split3_h80_b32_fp16", [1, 1], [70, 9], 2, 1, 80, 32, torch.float16, 3, 1e-2),
    )
    for name, q_lens, kv_lens, hq, hkv, d, bs, dtype, splits, atol in cases:
        c = make_paged_case(q_lens, kv_lens, hq, hkv, d, bs, dtype, extra_blocks=1)
        out = torch.zeros_like(c["q"])
        scale = d**-0.5
        unified_attention(
            c["q"], c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], max(q_lens), c["seqused_k"],
            max(kv_lens),
            scale, True, (-1, -1), c["block_table"], 0.0, num_kv_splits=splits,
        )  # fmt: skip
        ref = unified_attention_reference(
            c["q"],
            c["k_cache"],
            c["v_cache"],
            c["cu_seqlens_q"],
            c["seqused_k"],
            scale,
            True,
            (-1, -1),
            c["block_table"],
            0.0,
        )
        results.append(compare("unified_attention", name, out.double(), ref, atol))
    g = torch.Generator().manual_seed(3)
    kv = torch.zeros(6, 2, 16, 2, 96, dtype=torch.float16)  # vLLM 0.32's packed layout
    key, value = torch.randn(5, 2, 96, generator=g).half(), torch.randn(5, 2, 96, generator=g).half()
    slots = torch.tensor([17, -1, 0, 95, 40], dtype=torch.int64)
    expect = kv.clone()
    reshape_and_cache_reference(key, value, expect[:, 0], expect[:, 1], slots)
    reshape_and_cache(key, value, kv[:, 0], kv[:, 1], slots)
    results.append(compare("reshape_and_cache", "packed_h96_fp16", kv, expect, 0.0))
    return results
