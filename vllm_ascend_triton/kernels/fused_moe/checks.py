"""`vat check` cases of the fused_moe family: small inputs against the torch references."""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels._check import CheckResult, compare
from vllm_ascend_triton.kernels.fused_moe import fused_experts, moe_permute, moe_unpermute
from vllm_ascend_triton.kernels.fused_moe.reference import (
    fused_experts_ref,
    moe_permute_ref,
    moe_unpermute_ref,
)


def self_check() -> list[CheckResult]:
    """Small cases against the torch references (fp32 and fp16, with and without expert_map)."""
    results: list[CheckResult] = []
    gen = torch.Generator().manual_seed(0)

    def routing(m: int, e: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        w, ids = torch.topk(torch.randn(m, e, generator=gen).softmax(-1), k)
        return w.float(), ids.to(torch.int32)

    w, ids = routing(13, 16, 4)
    x = torch.randn(13, 40, generator=gen)
    emap = torch.tensor([-1, 0, 1, -1, 2, 3, -1, 4, 5, 6, -1, 7, -1, -1, -1, -1], dtype=torch.int32)
    for label, m in (("e16_k4", None), ("e16_k4_expert_map", emap)):
        got, ref = moe_permute(x, ids, 16, m), moe_permute_ref(x, ids, 16, m)
        ok_idx = torch.equal(got.inv_permuted_idx, ref.inv_permuted_idx) and torch.equal(
            got.expert_first_token_offset, ref.expert_first_token_offset
        )
        results.append(
            compare(
                "moe_permute", f"{label} rows", got.permuted_hidden_states, ref.permuted_hidden_states, 0.0
            )
        )
        results.append(CheckResult("moe_permute", f"{label} indices", 0.0 if ok_idx else float("inf"), 0.0))
        un = moe_unpermute(got.permuted_hidden_states, w, got.inv_permuted_idx)
        results.append(
            compare(
                "moe_unpermute",
                label,
                un,
                moe_unpermute_ref(ref.permuted_hidden_states, w, ref.inv_permuted_idx),
                1e-5,
            )
        )
    w, ids = routing(9, 8, 2)
    for dtype, atol in ((torch.float32, 1e-5), (torch.float16, 1e-2)):
        x = torch.randn(9, 48, generator=gen).to(dtype)
        w13 = (torch.randn(8, 64, 48, generator=gen) / 48**0.5).to(dtype)
        w2 = (torch.randn(8, 48, 32, generator=gen) / 32**0.5).to(dtype)
        results.append(
            compare(
                "fused_experts",
                f"e8_k2_{str(dtype).removeprefix('torch.')}",
                fused_experts(x, w13, w2, w, ids),
                fused_experts_ref(x, w13, w2, w, ids),
                atol,
            )
        )
    return results + _w8a8_checks(gen)


def _w8a8_checks(gen: torch.Generator) -> list[CheckResult]:
    """W8A8 (issue 23): the per-token quant bit for bit (int8 values and scales, atol 0) and the
    expert MLP against the exact-int32 reference (fp32 and fp16, with and without expert_map)."""
    from vllm_ascend_triton.kernels.fused_moe.w8a8 import dynamic_per_token_quant, fused_experts_w8a8
    from vllm_ascend_triton.kernels.fused_moe.w8a8_reference import (
        dynamic_per_token_quant_ref,
        fused_experts_w8a8_ref,
        quantize_weight_per_channel,
    )

    results: list[CheckResult] = []
    x = torch.randn(11, 72, generator=gen) * 3
    x[0, :3] = torch.tensor([63.5, -0.5, 127.0])  # ties at scale 1 (absmax 127)
    x[1] = 0.0
    for dtype in (torch.float32, torch.float16):
        q, scale = dynamic_per_token_quant(x.to(dtype))
        ref_q, ref_scale = dynamic_per_token_quant_ref(x.to(dtype))
        label = str(dtype).removeprefix("torch.")
        results.append(compare("dynamic_per_token_quant", f"int8 {label}", q.float(), ref_q.float(), 0.0))
        results.append(compare("dynamic_per_token_quant", f"scale {label}", scale, ref_scale, 0.0))
    w, ids = torch.topk(torch.randn(9, 8, generator=gen).softmax(-1), 2)
    ids = ids.to(torch.int32)
    w13, s13 = quantize_weight_per_channel(torch.randn(8, 64, 48, generator=gen) / 48**0.5)
    w2, s2 = quantize_weight_per_channel(torch.randn(8, 48, 32, generator=gen) / 32**0.5)
    emap = torch.tensor([-1, 0, 1, -1, 2, 3, -1, 4], dtype=torch.int32)
    for dtype, atol in ((torch.float32, 1e-3), (torch.float16, 2e-2)):
        xd = torch.randn(9, 48, generator=gen).to(dtype)
        label = str(dtype).removeprefix("torch.")
        for case, m, sl in (("e8_k2", None, slice(None)), ("e8_k2_expert_map", emap, slice(0, 5))):
            results.append(
                compare(
                    "fused_experts_w8a8",
                    f"{case}_{label}",
                    fused_experts_w8a8(xd, w13[sl], w2[sl], s13[sl], s2[sl], w, ids, expert_map=m),
                    fused_experts_w8a8_ref(xd, w13[sl], w2[sl], s13[sl], s2[sl], w, ids, expert_map=m),
                    atol,
                )
            )
    return results
