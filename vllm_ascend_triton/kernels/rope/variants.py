"""Representative rope / MRoPE calls (real models' head layouts) for `vat compile` and `vat tune`."""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels._variants import Variant, device
from vllm_ascend_triton.kernels.rope import mrope_rotary_embedding, rotary_embedding

_TOKENS = 64  # token counts change no constexpr; 64 fill every core's grid slot on A2/A3


def _rope_call(dtype, head_size, rot_dim, heads, kv_heads, neox, offsets=False, max_pos=64):
    def call():
        dev = device()
        q = torch.zeros(_TOKENS, heads * head_size, dtype=dtype, device=dev)
        k = torch.zeros(_TOKENS, kv_heads * head_size, dtype=dtype, device=dev)
        cache = torch.zeros(max_pos, rot_dim, dtype=dtype, device=dev)
        pos = torch.zeros(_TOKENS, dtype=torch.long, device=dev)
        off = torch.zeros_like(pos) if offsets else None
        rotary_embedding(pos, q, k, head_size, cache, neox, offsets=off)

    return call


def _mrope_call(interleaved: bool):
    def call():
        dev = device()
        q = torch.zeros(_TOKENS, 28 * 128, dtype=torch.bfloat16, device=dev)
        k = torch.zeros(_TOKENS, 4 * 128, dtype=torch.bfloat16, device=dev)
        cache = torch.zeros(64, 128, dtype=torch.float32, device=dev)
        pos = torch.zeros(3, _TOKENS, dtype=torch.long, device=dev)
        mrope_rotary_embedding(pos, q, k, 128, cache, True, [16, 24, 24], interleaved)

    return call


VARIANTS = (
    # Llama-3-8B: 32 query / 8 KV heads of 128, NeoX.
    Variant("rope", "llama3_8b_fp16", _rope_call(torch.float16, 128, 128, 32, 8, True), (torch.float16,)),
    Variant("rope", "llama3_8b_bf16", _rope_call(torch.bfloat16, 128, 128, 32, 8, True), (torch.bfloat16,)),
    # DeepSeek-V3 MLA rope part: 64-dim rotary, GPT-J pairs, YaRN offsets (128 heads).
    Variant(
        "rope",
        "deepseek_v3_rope64_bf16",
        _rope_call(torch.bfloat16, 64, 64, 128, 1, False, offsets=True),
        (torch.bfloat16,),
    ),
    # GLM-4.5: partial rotary (64 of 128 dims), 96 query / 8 KV heads.
    Variant(
        "rope", "glm45_partial64_bf16", _rope_call(torch.bfloat16, 128, 64, 96, 8, True), (torch.bfloat16,)
    ),
    # Head size 80 (Qwen-1.5 style), fp32.
    Variant("rope", "h80_fp32", _rope_call(torch.float32, 80, 80, 40, 40, True), (torch.float32,)),
    # The largest default tile: 64 fp32 heads of 128, GPT-J.
    Variant("rope", "gptj_h128_fp32", _rope_call(torch.float32, 128, 128, 64, 64, False), (torch.float32,)),
    # Qwen2.5-VL: MRoPE sections [16, 24, 24], 28 query / 4 KV heads; Qwen3-VL interleaved.
    Variant("rope", "qwen25_vl_mrope_bf16", _mrope_call(False), (torch.bfloat16,)),
    Variant("rope", "qwen3_vl_mrope_interleaved_bf16", _mrope_call(True), (torch.bfloat16,)),
)
