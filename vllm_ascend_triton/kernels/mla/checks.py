"""`vat check` cases of the MLA family: small inputs against the torch references."""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels._check import CheckResult, compare
from vllm_ascend_triton.kernels.mla import concat_and_cache_mla, mla_decode, mla_prefill
from vllm_ascend_triton.kernels.mla.reference import (
    concat_and_cache_mla_reference,
    make_latent_case,
    mla_decode_reference,
    mla_prefill_reference,
)


def self_check() -> list[CheckResult]:
    """Small cases on this backend against the torch references (fast on the interpreter)."""
    results = []
    for name, lens, heads, lora, rope, ql, splits, dtype, atol in (
        ("decode_h4_l64_r16_fp32", [5, 33], 4, 64, 16, 1, None, torch.float32, 1e-4),
        ("decode_mtp2_split3_h3_fp16", [40, 9], 3, 32, 16, 2, 3, torch.float16, 2e-2),
    ):
        c = make_latent_case(lens, heads, lora, rope, 16, dtype, query_len=ql, extra_blocks=1)
        out = torch.zeros(c["q"].shape[0], heads, lora, dtype=dtype)
        mla_decode(c["q"], c["kv_cache"], out, c["block_table"], c["seq_lens"], max(lens), 0.1, lora,
                   query_len=ql, num_kv_splits=splits)  # fmt: skip
        ref, _ = mla_decode_reference(c["q"], c["kv_cache"], c["block_table"], c["seq_lens"], 0.1, lora, ql)
        results.append(compare("mla_decode", name, out.double(), ref, atol))
    g = torch.Generator().manual_seed(7)
    q, k, v = (
        torch.randn(7, 2, 48, generator=g),
        torch.randn(12, 2, 48, generator=g),
        torch.randn(12, 2, 32, generator=g),
    )
    cq, ck = torch.tensor([0, 3, 7], dtype=torch.int32), torch.tensor([0, 5, 12], dtype=torch.int32)
    for causal in (True, False):
        out = torch.zeros(7, 2, 32)
        mla_prefill(q, k, v, out, cq, ck, 4, 7, 0.15, causal)
        ref, _ = mla_prefill_reference(q, k, v, cq, ck, 0.15, causal)
        results.append(compare("mla_prefill", f"qk48_v32_causal={causal}_fp32", out.double(), ref, 1e-4))
    cache = torch.zeros(3, 16, 80, dtype=torch.float16)
    kv_c, k_pe = torch.randn(4, 64, generator=g).half(), torch.randn(4, 1, 16, generator=g).half()
    slots = torch.tensor([17, -1, 0, 47])
    expect = cache.clone()
    concat_and_cache_mla_reference(kv_c, k_pe, expect, slots)
    concat_and_cache_mla(kv_c, k_pe, cache, slots)
    results.append(compare("concat_and_cache_mla", "l64_r16_fp16", cache, expect, 0.0))
    return results
