"""Representative MLA calls (DeepSeek-V3 / R1 and Kimi-K2 shapes) for `vat compile` and `vat tune`.

Each call goes through the public host API in a dry run, so its specs are what the runtime
launches for that shape. What changes constexprs: the dtype, latent and rope widths (512 + 64 on
both models), the cache block (128 on NPU), query tokens per sequence (1, or 2 with one MTP
draft token), the head count per rank (DeepSeek-V3 128 heads, Kimi-K2 64: 128/64/32/16 after
tensor parallelism; it bounds BLOCK_H) and split-KV (a decode batch too small to fill the cube
cores), and for prefill the qk / v head sizes (192 / 128) and causal (new tokens) vs not (a
context chunk).
"""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels._variants import Variant, device
from vllm_ascend_triton.kernels.mla import concat_and_cache_mla, mla_decode, mla_prefill

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
LORA, ROPE, BLOCK = 512, 64, 128


def _decode_call(dtype, heads, *, num_seqs=2, context=128, query_len=1, block=BLOCK, lse=False):
    def call() -> None:
        dev = device()
        blocks_per_seq = -(-context // block)
        cache = torch.zeros(num_seqs * blocks_per_seq, block, LORA + ROPE, dtype=dtype, device=dev)
        q = torch.zeros(num_seqs * query_len, heads, LORA + ROPE, dtype=dtype, device=dev)
        table = torch.arange(num_seqs * blocks_per_seq, dtype=torch.int32, device=dev).reshape(num_seqs, -1)
        lens = torch.full((num_seqs,), context, dtype=torch.int32, device=dev)
        out = torch.empty(num_seqs * query_len, heads, LORA, dtype=dtype, device=dev)
        lse_t = torch.empty(num_seqs * query_len, heads, dtype=F32, device=dev) if lse else None
        mla_decode(q, cache, out, table, lens, context, 0.1, LORA, query_len=query_len, lse=lse_t)

    return call


def _prefill_call(dtype, heads, *, causal=True, num_seqs=1, q_len=16, ctx=0):
    def call() -> None:
        dev = device()
        k_len = q_len + ctx if causal else ctx
        q = torch.zeros(num_seqs * q_len, heads, 192, dtype=dtype, device=dev)
        k = torch.zeros(num_seqs * k_len, heads, 192, dtype=dtype, device=dev)
        kv_nope = torch.zeros(
            num_seqs * k_len, heads, 128 + 128, dtype=dtype, device=dev
        )  # vLLM's k_nope | v
        v = kv_nope[..., 128:]
        cq = torch.arange(num_seqs + 1, dtype=torch.int32, device=dev) * q_len
        ck = torch.arange(num_seqs + 1, dtype=torch.int32, device=dev) * k_len
        out = torch.empty(num_seqs * q_len, heads, 128, dtype=dtype, device=dev)
        lse = torch.empty(heads, num_seqs * q_len, dtype=F32, device=dev)
        mla_prefill(q, k, v, out, cq, ck, q_len, k_len, 192**-0.5, causal, lse=lse)

    return call


def _cache_call(dtype, act_dtype=None):
    def call() -> None:
        dev = device()
        tokens = 64
        cache = torch.zeros(4, BLOCK, LORA + ROPE, dtype=dtype, device=dev)
        # kv_a_proj output [tokens, 512 + 64]: kv_c (normed) and k_pe are views of it in vLLM.
        fused = torch.zeros(tokens, LORA + ROPE, dtype=act_dtype or dtype, device=dev)
        slots = torch.arange(tokens, dtype=torch.int64, device=dev)
        concat_and_cache_mla(fused[:, :LORA], fused[:, LORA:].unsqueeze(1), cache, slots)

    return call


VARIANTS = (
    # Decode, DeepSeek-V3 / R1: 128 heads (TP1), 64 (TP2, also Kimi-K2 at TP1), 32, 16 (TP8).
    Variant("mla", "dsv3_decode_h128_bf16", _decode_call(BF16, 128), (BF16,)),
    Variant("mla", "dsv3_decode_h64_bf16", _decode_call(BF16, 64, num_seqs=3), (BF16,)),
    Variant("mla", "dsv3_decode_h32_bf16", _decode_call(BF16, 32, num_seqs=5), (BF16,)),
    Variant("mla", "dsv3_decode_h16_fp16", _decode_call(F16, 16, num_seqs=10), (F16,)),
    # A single long sequence at TP8: split-KV segments + the reduction kernel (with lse for DCP).
    Variant(
        "mla",
        "dsv3_decode_h16_split_bf16",
        _decode_call(BF16, 16, num_seqs=1, context=1024, lse=True),
        (BF16,),
    ),
    # MTP (one draft token): two query tokens per sequence share the tile.
    Variant("mla", "dsv3_decode_mtp2_h128_bf16", _decode_call(BF16, 128, num_seqs=1, query_len=2), (BF16,)),
    # Kimi-K2: 64 heads, latent 512 + rope 64, block 64 (vLLM's default on some platforms).
    Variant(
        "mla",
        "kimi_k2_decode_h64_b64_bf16",
        _decode_call(BF16, 64, num_seqs=3, context=64, block=64),
        (BF16,),
    ),
    # fp32 (the interpreter's dtype): block 16, as vLLM's CPU MLA needs.
    Variant("mla", "decode_h16_b16_fp32", _decode_call(F32, 16, num_seqs=4, context=64, block=16), (F32,)),
    # Prefill over decompressed heads, qk 192 (nope 128 + rope 64), v 128 (a strided view).
    Variant("mla", "dsv3_prefill_h128_bf16", _prefill_call(BF16, 128), (BF16,)),
    Variant("mla", "dsv3_prefill_h16_fp16", _prefill_call(F16, 16), (F16,)),
    Variant("mla", "dsv3_prefill_ctx_chunk_h32_bf16", _prefill_call(BF16, 32, causal=False, ctx=64), (BF16,)),
    Variant("mla", "prefill_h16_fp32", _prefill_call(F32, 16), (F32,)),
    # Latent cache writes: bf16 cache, and fp32 activations into an fp16 cache.
    Variant("mla", "cache_dsv3_bf16", _cache_call(BF16), (BF16,)),
    Variant("mla", "cache_dsv3_fp32_to_fp16", _cache_call(F16, F32), (F16, F32)),
)
