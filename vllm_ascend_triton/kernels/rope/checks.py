"""`vat check` cases of the rope family: small inputs against the torch reference."""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels._check import CheckResult, compare
from vllm_ascend_triton.kernels.rope import mrope_rotary_embedding, rotary_embedding
from vllm_ascend_triton.kernels.rope.reference import mrope_reference, rope_reference


def _random_case(
    num_tokens: int, heads: int, kv_heads: int, head_size: int, rot_dim: int, max_pos: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    query = torch.randn(num_tokens, heads * head_size, generator=g).to(dtype)
    key = torch.randn(num_tokens, kv_heads * head_size, generator=g).to(dtype)
    cache = torch.randn(max_pos, rot_dim, generator=g).to(dtype)
    return query, key, cache


def self_check() -> list[CheckResult]:
    """Small cases on this backend against the torch reference (fast on the interpreter)."""
    results = []
    for name, dtype, head_size, rot_dim, neox, atol in (
        ("neox_h128_fp32", torch.float32, 128, 128, True, 1e-5),
        ("gptj_h80_partial_fp16", torch.float16, 80, 32, False, 1e-3),
    ):
        query, key, cache = _random_case(5, 3, 1, head_size, rot_dim, 64, dtype)
        positions = torch.randint(0, 64, (5,), generator=torch.Generator().manual_seed(7))
        eq, ek = rope_reference(positions, query, key, head_size, cache, neox)
        rotary_embedding(positions, query, key, head_size, cache, neox)
        results.append(compare("rotary_embedding", f"{name} query", query, eq, atol))
        results.append(compare("rotary_embedding", f"{name} key", key, ek, atol))
    for interleaved in (False, True):
        query, key, cache = _random_case(4, 2, 1, 64, 64, 32, torch.float32)
        positions = torch.randint(0, 32, (3, 4), generator=torch.Generator().manual_seed(8))
        eq, ek = mrope_reference(positions, query, key, 64, cache, True, [8, 12, 12], interleaved)
        mrope_rotary_embedding(positions, query, key, 64, cache, True, [8, 12, 12], interleaved)
        results.append(compare("mrope_rotary_embedding", f"interleaved={interleaved} query", query, eq, 1e-5))
    return results
