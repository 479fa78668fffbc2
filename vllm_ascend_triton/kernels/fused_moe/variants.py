"""Representative permute / expert-MLP calls (real models' MoE layers) for `vat compile` and `vat tune`.

Weights are the models' true expert counts and widths where that changes a constexpr (experts set
BLOCK_E of the sort and the GEMMs) but tiny elsewhere: hidden and intermediate sizes change no
constexpr beyond the tile clamps, which already sit at their defaults at 128."""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels._variants import Variant, device
from vllm_ascend_triton.kernels.fused_moe import fused_experts, moe_permute, moe_unpermute

_TOKENS = 64
# Expert-MLP variants: fewer tokens (the GEMM grid still fills the cube cores) so that executing a
# variant on the interpreter (the spec-equals-launch test) stays quick at 512 experts.
_EXPERT_TOKENS = 8


def _routing(experts: int, topk: int, dev: str, tokens: int = _TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    ids = (torch.arange(tokens * topk, device=dev) % experts).to(torch.int32).view(tokens, topk)
    return torch.full((tokens, topk), 1.0 / topk, device=dev), ids


def _expert_map(experts: int, local: int, dev: str) -> torch.Tensor:
    emap = torch.full((experts,), -1, dtype=torch.int32, device=dev)
    emap[:local] = torch.arange(local, dtype=torch.int32, device=dev)
    return emap


def _permute_call(dtype, experts, topk, hidden, local=None):
    def call():
        dev = device()
        weights, ids = _routing(experts, topk, dev)
        x = torch.zeros(_TOKENS, hidden, dtype=dtype, device=dev)
        emap = _expert_map(experts, local, dev) if local else None
        moe_permute(x, ids, experts, emap, local)
        # A dry run executes nothing: unpermute gets inputs of its own, not permute's unwritten outputs.
        permuted = torch.zeros(_TOKENS * topk, hidden, dtype=dtype, device=dev)
        inv = torch.arange(_TOKENS * topk, dtype=torch.int32, device=dev).view(_TOKENS, topk)
        moe_unpermute(permuted, weights, inv)

    return call


def _experts_call(dtype, experts, topk, hidden, inter, local=None):
    def call():
        dev = device()
        weights, ids = _routing(experts, topk, dev, _EXPERT_TOKENS)
        num_local = local or experts
        x = torch.zeros(_EXPERT_TOKENS, hidden, dtype=dtype, device=dev)
        w13 = torch.zeros(num_local, 2 * inter, hidden, dtype=dtype, device=dev)
        w2 = torch.zeros(num_local, hidden, inter, dtype=dtype, device=dev)
        emap = _expert_map(experts, local, dev) if local else None
        fused_experts(x, w13, w2, weights, ids, expert_map=emap)

    return call


VARIANTS = (
    # Mixtral-8x7B: 8 experts top-2 (hidden 4096 in the model).
    Variant(
        "fused_moe", "mixtral_8x2_permute_fp16", _permute_call(torch.float16, 8, 2, 4096), (torch.float16,)
    ),
    # Qwen3-30B-A3B with expert parallelism: 128 experts top-8, 64 local, hidden 2048.
    Variant(
        "fused_moe",
        "qwen3_128x8_ep64_permute_bf16",
        _permute_call(torch.bfloat16, 128, 8, 2048, 64),
        (torch.bfloat16,),
    ),
    # 512 experts top-16 (hidden 2048), fp32.
    Variant(
        "fused_moe", "e512_k16_permute_fp32", _permute_call(torch.float32, 512, 16, 2048), (torch.float32,)
    ),
    # Expert MLPs: Mixtral (fp16), Qwen3-30B-A3B (bf16, 128 experts), DeepSeek-V3 EP (256 experts,
    # 32 local, fp16), 512 experts (fp16), fp32.
    Variant(
        "fused_moe",
        "mixtral_8x2_experts_fp16",
        _experts_call(torch.float16, 8, 2, 128, 128),
        (torch.float16,),
    ),
    Variant(
        "fused_moe",
        "qwen3_128x8_experts_bf16",
        _experts_call(torch.bfloat16, 128, 8, 128, 128),
        (torch.bfloat16,),
    ),
    Variant(
        "fused_moe",
        "dsv3_256x8_ep32_experts_fp16",
        _experts_call(torch.float16, 256, 8, 128, 128, 32),
        (torch.float16,),
    ),
    Variant(
        "fused_moe",
        "e512_k16_experts_fp16",
        _experts_call(torch.float16, 512, 16, 128, 128),
        (torch.float16,),
    ),
    Variant(
        "fused_moe", "e8_k2_experts_fp32", _experts_call(torch.float32, 8, 2, 128, 128), (torch.float32,)
    ),
)


# --- W8A8 (issue 23): dynamic per-token int8 activations, per-channel int8 weights -----------------
# Real expert counts and top-k (they set BLOCK_E and the sort's constexprs); hidden 512 and
# intermediate 256 are the smallest widths at which no default tile is clamped (BLOCK_K 256 on both
# GEMMs, BLOCK_N 64 / 128), so the lowered tiles are those of the real models' shapes.
_W8A8_HIDDEN, _W8A8_INTER = 512, 256


def _w8a8_experts_call(dtype, experts, topk, local=None):
    def call():
        from vllm_ascend_triton.kernels.fused_moe.w8a8 import fused_experts_w8a8

        dev = device()
        weights, ids = _routing(experts, topk, dev, _EXPERT_TOKENS)
        num_local = local or experts
        h, i = _W8A8_HIDDEN, _W8A8_INTER
        x = torch.zeros(_EXPERT_TOKENS, h, dtype=dtype, device=dev)
        w13 = torch.zeros(num_local, 2 * i, h, dtype=torch.int8, device=dev)
        w2 = torch.zeros(num_local, h, i, dtype=torch.int8, device=dev)
        s13 = torch.ones(num_local, 2 * i, 1, dtype=torch.float32, device=dev)
        s2 = torch.ones(num_local, h, 1, dtype=torch.float32, device=dev)
        emap = _expert_map(experts, local, dev) if local else None
        fused_experts_w8a8(x, w13, w2, s13, s2, weights, ids, expert_map=emap)

    return call


def _w8a8_quant_call(dtype, hidden):
    def call():
        from vllm_ascend_triton.kernels.fused_moe.w8a8 import dynamic_per_token_quant

        dynamic_per_token_quant(torch.zeros(_TOKENS, hidden, dtype=dtype, device=device()))

    return call


VARIANTS = VARIANTS + (
    # DeepSeek-V3 (256 experts, top-8; hidden 7168, expert 2048 in the model), served W8A8 on A2.
    Variant(
        "fused_moe",
        "dsv3_256x8_w8a8_experts_bf16",
        _w8a8_experts_call(torch.bfloat16, 256, 8),
        (torch.bfloat16,),
    ),
    # DeepSeek-V3 under EP (32 local experts of 256).
    Variant(
        "fused_moe",
        "dsv3_256x8_ep32_w8a8_experts_fp16",
        _w8a8_experts_call(torch.float16, 256, 8, 32),
        (torch.float16,),
    ),
    # Qwen3-235B-A22B and Qwen3-30B-A3B: 128 experts top-8 (hidden 4096 / 2048, expert 1536 / 768).
    Variant(
        "fused_moe",
        "qwen3_128x8_w8a8_experts_bf16",
        _w8a8_experts_call(torch.bfloat16, 128, 8),
        (torch.bfloat16,),
    ),
    Variant(
        "fused_moe",
        "qwen3_128x8_ep16_w8a8_experts_fp16",
        _w8a8_experts_call(torch.float16, 128, 8, 16),
        (torch.float16,),
    ),
    Variant(
        "fused_moe", "e8_k2_w8a8_experts_fp32", _w8a8_experts_call(torch.float32, 8, 2), (torch.float32,)
    ),
    # The standalone per-token quant at DeepSeek-V3's hidden size.
    Variant("fused_moe", "w8a8_quant_7168_bf16", _w8a8_quant_call(torch.bfloat16, 7168), (torch.bfloat16,)),
)
