"""`vat check` cases of the moe_routing family: small inputs against the torch references."""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels._check import CheckResult, compare
from vllm_ascend_triton.kernels.moe_routing import fused_topk, grouped_topk, moe_align_block_size
from vllm_ascend_triton.kernels.moe_routing.reference import grouped_topk_ref, moe_align_block_size_ref


def self_check() -> list[CheckResult]:
    """Small cases against the torch references (a second or two on the interpreter)."""
    gen = torch.Generator().manual_seed(0)
    results = []
    for name, m, e, k, groups, topk_group, func, with_bias, scale in (
        ("mixtral_8x2", 5, 8, 2, 1, 1, "softmax", False, 1.0),
        ("qwen3_128x8", 3, 128, 8, 1, 1, "softmax", False, 1.0),
        ("dsv3_256x8_grouped", 3, 256, 8, 8, 4, "sigmoid", True, 2.5),
    ):
        logits = torch.randn(m, e, generator=gen)
        bias = torch.randn(e, generator=gen) * 0.1 if with_bias else None
        if groups > 1:
            out = grouped_topk(logits, k, True, groups, topk_group, func, bias, scale)
        else:
            out = fused_topk(logits, k, True, func, bias, scale)
        ref = grouped_topk_ref(logits, k, True, groups, topk_group, func, bias, scale)
        api = "grouped_topk" if groups > 1 else "fused_topk"
        results.append(compare(api, f"{name} weights", out[0], ref[0], 1e-5))
        results.append(compare(api, f"{name} ids", out[1], ref[1], 0.0))
    ids = torch.randint(0, 16, (37, 4), generator=gen, dtype=torch.int32)
    out = moe_align_block_size(ids, 16, 16)
    ref = moe_align_block_size_ref(ids, 16, 16)
    for what, a, b in zip(("sorted_token_ids", "expert_ids", "num_tokens_post_pad"), out, ref, strict=True):
        results.append(compare("moe_align_block_size", f"37x4 routes, 16 experts: {what}", a, b, 0.0))
    return results
