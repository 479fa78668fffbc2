"""Representative routing / align calls (real models' expert layouts) for `vat compile` and `vat tune`."""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels._variants import Variant, device
from vllm_ascend_triton.kernels.moe_routing import fused_topk, grouped_topk, moe_align_block_size

_TOKENS = 64  # token counts change no constexpr (BLOCK_M is capped by them below 64 only)


def _topk_call(dtype, experts, topk, scoring, bias, renorm, groups=1, topk_group=1, scale=1.0):
    def call():
        dev = device()
        logits = torch.zeros(_TOKENS, experts, dtype=dtype, device=dev)
        b = torch.zeros(experts, dtype=dtype, device=dev) if bias else None
        if groups > 1:
            grouped_topk(logits, topk, renorm, groups, topk_group, scoring, b, scale)
        else:
            fused_topk(logits, topk, renorm, scoring, b, scale)

    return call


def _align_call(experts, topk, block_size, id_dtype, with_map):
    def call():
        dev = device()
        # 256 tokens: enough route tiles to give every vector core a run.
        ids = (torch.arange(256 * topk, device=dev) % experts).to(id_dtype).view(256, topk)
        emap = None
        if with_map:  # expert parallelism: this rank owns half of the experts
            emap = torch.full((experts,), -1, dtype=torch.int32, device=dev)
            emap[: experts // 2] = torch.arange(experts // 2, dtype=torch.int32, device=dev)
        moe_align_block_size(ids, block_size, experts, emap)

    return call


VARIANTS = (
    # Mixtral-8x7B: 8 experts top-2, softmax.
    Variant(
        "moe_routing",
        "mixtral_8x2_softmax_fp16",
        _topk_call(torch.float16, 8, 2, "softmax", False, True),
        (torch.float16,),
    ),
    # Qwen3-30B-A3B: 128 experts top-8.
    Variant(
        "moe_routing",
        "qwen3_128x8_softmax_bf16",
        _topk_call(torch.bfloat16, 128, 8, "softmax", False, True),
        (torch.bfloat16,),
    ),
    # 512 experts top-16, sigmoid with a correction bias (the largest supported pair of the suite).
    Variant(
        "moe_routing",
        "e512_k16_sigmoid_bias_fp32",
        _topk_call(torch.float32, 512, 16, "sigmoid", True, True),
        (torch.float32,),
    ),
    # DeepSeek-V3: 256 experts top-8, 8 groups keep 4, sigmoid + bias, scaling 2.5.
    Variant(
        "moe_routing",
        "dsv3_256x8_grouped_sigmoid_bias_bf16",
        _topk_call(torch.bfloat16, 256, 8, "sigmoid", True, True, 8, 4, 2.5),
        (torch.bfloat16,),
    ),
    # GLM-4.5: 160 experts top-8 (softmax groups: DeepSeek-V2 style 8 groups keep 3).
    Variant(
        "moe_routing",
        "glm45_160x8_grouped_softmax_fp16",
        _topk_call(torch.float16, 160, 8, "softmax", False, False, 8, 3),
        (torch.float16,),
    ),
    # Align: Mixtral (8 experts), DeepSeek-V3 with EP (256, int64 ids), 512 experts with EP.
    Variant("moe_routing", "align_e8_i32", _align_call(8, 2, 16, torch.int32, False), (torch.int32,)),
    Variant(
        "moe_routing", "align_dsv3_e256_i64_map", _align_call(256, 8, 64, torch.int64, True), (torch.int64,)
    ),
    Variant("moe_routing", "align_e512_i32_map", _align_call(512, 16, 64, torch.int32, True), (torch.int32,)),
)
