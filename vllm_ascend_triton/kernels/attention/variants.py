"""Representative reshape_and_cache / unified_attention calls (real models' attention layouts) for
`vat compile` and `vat tune`.

Each call goes through the public host API in a dry run, so its specs are what the runtime
launches for that shape. Token and sequence counts change no constexpr; what does is the dtype,
head size (-> HEAD_PAD), query heads per KV head (-> QPK_PAD, BLOCK_Q), cache block size
(-> TILE_N), decode vs prefill (-> BLOCK_M), the features (window, softcap, ALiBi, sinks) and
split-KV (decode batches too small to fill the cube cores).
"""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels._variants import Variant, device
from vllm_ascend_triton.kernels.attention import reshape_and_cache, unified_attention

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


def _attention_call(
    dtype: torch.dtype,
    heads: int,
    kv_heads: int,
    head_size: int,
    block_size: int,
    *,
    decode: bool = False,
    num_seqs: int = 4,
    context: int = 64,
    window: int = -1,
    softcap: float = 0.0,
    alibi: bool = False,
    sinks: bool = False,
):
    """A batch of `num_seqs` sequences with `context` keys each: prefill chunks of 16 query
    tokens, or one token each (decode). Metadata is consistent, so input checks pass. Contexts
    are short (they change no constexpr; `vat compile` and the spec tests execute nothing heavy)
    except where they decide split-KV."""

    def call() -> None:
        dev = device()
        q_len = 1 if decode else 16
        blocks_per_seq = -(-context // block_size)
        num_blocks = num_seqs * blocks_per_seq
        q = torch.zeros(num_seqs * q_len, heads, head_size, dtype=dtype, device=dev)
        k_cache = torch.zeros(num_blocks, block_size, kv_heads, head_size, dtype=dtype, device=dev)
        v_cache = torch.zeros_like(k_cache)
        cu = torch.arange(0, num_seqs + 1, dtype=torch.int32, device=dev) * q_len
        seqused = torch.full((num_seqs,), context, dtype=torch.int32, device=dev)
        table = torch.arange(num_blocks, dtype=torch.int32, device=dev).reshape(num_seqs, blocks_per_seq)
        unified_attention(
            q, k_cache, v_cache, torch.empty_like(q), cu, q_len, seqused, context,
            head_size**-0.5, True, (window - 1, 0) if window > 0 else (-1, -1), table, softcap,
            alibi_slopes=torch.zeros(heads, dtype=F32, device=dev) if alibi else None,
            sinks=torch.zeros(heads, dtype=F32, device=dev) if sinks else None,
        )  # fmt: skip

    return call


def _cache_call(dtype: torch.dtype, kv_heads: int, head_size: int, block_size: int, key_dtype=None):
    """vLLM 0.32's packed KV tensor [blocks, 2, block_size, H, D]; key/value slices of a fused qkv."""

    def call() -> None:
        dev = device()
        tokens = 64  # fills the vector cores' grid on A2/A3
        kv = torch.zeros(8, 2, block_size, kv_heads, head_size, dtype=dtype, device=dev)
        qkv = torch.zeros(tokens, 3 * kv_heads, head_size, dtype=key_dtype or dtype, device=dev)
        slots = torch.arange(tokens, dtype=torch.int64, device=dev)
        reshape_and_cache(qkv[:, kv_heads : 2 * kv_heads], qkv[:, 2 * kv_heads :], kv[:, 0], kv[:, 1], slots)

    return call


VARIANTS = (
    # Llama-3-8B: 32 query / 8 KV heads of 128 (GQA 4), block 128; prefill and decode.
    Variant("attention", "llama3_8b_prefill_fp16", _attention_call(F16, 32, 8, 128, 128), (F16,)),
    Variant("attention", "llama3_8b_prefill_bf16", _attention_call(BF16, 32, 8, 128, 128), (BF16,)),
    Variant(
        "attention",
        "llama3_8b_decode_bf16",
        _attention_call(BF16, 32, 8, 128, 128, decode=True, num_seqs=4),
        (BF16,),
    ),
    # Qwen3-30B-A3B: 32 query / 4 KV heads of 128 (GQA 8): a decode batch of 2 leaves cube cores
    # idle, so the wrapper splits the context (split-KV + reduction); sinks as in gpt-oss.
    Variant(
        "attention",
        "qwen3_gqa8_decode_split_bf16",
        _attention_call(BF16, 32, 4, 128, 128, decode=True, num_seqs=2, context=1024),
        (BF16,),
    ),
    Variant(
        "attention",
        "qwen3_gqa8_decode_split_sinks_fp16",
        _attention_call(F16, 32, 4, 128, 64, decode=True, num_seqs=1, context=1024, sinks=True),
        (F16,),
    ),
    # GLM-4.5: 96 query / 8 KV heads of 128 (GQA 12 -> QPK_PAD 16), block 64.
    Variant(
        "attention", "glm45_gqa12_prefill_bf16", _attention_call(BF16, 96, 8, 128, 64, num_seqs=2), (BF16,)
    ),
    # Head 64 (gpt-oss style), block 16, sliding window 128 with sinks.
    Variant(
        "attention",
        "h64_b16_window_sinks_bf16",
        _attention_call(BF16, 64, 8, 64, 16, num_seqs=2, window=128, sinks=True),
        (BF16,),
    ),
    # Head 80 (Qwen-1.5 / Phi style) MHA, block 64, fp16, logit softcap (Gemma-2 style).
    Variant(
        "attention", "h80_mha_b64_softcap_fp16", _attention_call(F16, 16, 16, 80, 64, softcap=50.0), (F16,)
    ),
    # Head 256 (Gemma-2 / Gemma-3), GQA 2, softcap + window, bf16; and ALiBi (BLOOM/MPT style).
    Variant(
        "attention",
        "h256_gqa2_window_softcap_bf16",
        _attention_call(BF16, 16, 8, 256, 16, window=4096, softcap=50.0),
        (BF16,),
    ),
    Variant(
        "attention",
        "h128_mha_alibi_fp16",
        _attention_call(F16, 32, 32, 128, 16, num_seqs=2, alibi=True),
        (F16,),
    ),
    # fp32 reference path (the interpreter's dtype), head 64, block 16.
    Variant("attention", "h64_gqa4_b16_fp32", _attention_call(F32, 8, 2, 64, 16), (F32,)),
    # KV-cache writes: Llama-3-8B (8 x 128, block 128), GLM-4.5 bf16, head 80, head 256 fp32 with a
    # cast from fp32 activations into an fp16 cache.
    Variant("attention", "cache_llama3_8b_fp16", _cache_call(F16, 8, 128, 128), (F16,)),
    Variant("attention", "cache_glm45_bf16", _cache_call(BF16, 8, 128, 64), (BF16,)),
    Variant("attention", "cache_h80_bf16", _cache_call(BF16, 2, 80, 16), (BF16,)),
    Variant("attention", "cache_h256_fp32_to_fp16", _cache_call(F16, 4, 256, 16, key_dtype=F32), (F16, F32)),
)
