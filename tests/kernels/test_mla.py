"""MLA kernels against their torch references (interpreter; fp32/fp16; bf16 through the shim),
input validation, and the launch specs' Ascend-relevant choices."""

from __future__ import annotations

import pytest
import torch

from vllm_ascend_triton.kernels import concat_and_cache_mla, mla_decode, mla_prefill
from vllm_ascend_triton.kernels.limits import MLA_MAX_KV_LORA_RANK, MLA_MAX_QUERY_LEN
from vllm_ascend_triton.kernels.mla import decode_ub_estimate
from vllm_ascend_triton.kernels.mla.reference import (
    concat_and_cache_mla_reference,
    make_latent_case,
    mla_decode_reference,
    mla_prefill_reference,
)
from vllm_ascend_triton.runtime.launch import record_launches

TOL = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def run_decode(c, lora, *, query_len=1, splits=None, scale=0.07, dtype=None):
    q = c["q"]
    rows, heads, _ = q.shape
    out = torch.full((rows, heads, lora), 123.0, dtype=q.dtype)
    lse = torch.full((rows, heads), 123.0)
    mla_decode(
        q, c["kv_cache"], out, c["block_table"], c["seq_lens"], int(c["seq_lens"].max()), scale, lora,
        query_len=query_len, lse=lse, num_kv_splits=splits,
    )  # fmt: skip
    ref, ref_lse = mla_decode_reference(
        q, c["kv_cache"], c["block_table"], c["seq_lens"], scale, lora, query_len
    )
    return out, lse, ref, ref_lse


@pytest.mark.parametrize(
    "lens, heads, lora, rope, bs, dtype, ql, splits",
    [
        ([5, 33, 16], 4, 64, 16, 16, torch.float32, 1, None),  # decode, three block counts
        ([40, 7], 3, 64, 16, 16, torch.float32, 1, 3),  # odd heads, forced split-KV
        ([9, 40], 5, 32, 16, 32, torch.float16, 2, None),  # speculative decode: 2 tokens/seq
        ([50], 2, 48, 24, 16, torch.float32, 3, 2),  # latent / rope not powers of two, split
        ([20], 2, 512, 64, 16, torch.float32, 1, 2),  # DeepSeek-V3 latent 512 + rope 64
        ([17, 1], 16, 64, 32, 64, torch.bfloat16, 1, None),  # bf16 shim, block 64
    ],
)
def test_mla_decode_matches_reference(lens, heads, lora, rope, bs, dtype, ql, splits) -> None:
    c = make_latent_case(lens, heads, lora, rope, bs, dtype, query_len=ql, extra_blocks=1)
    out, lse, ref, ref_lse = run_decode(c, lora, query_len=ql, splits=splits)
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-4, rtol=1e-4)


def test_mla_decode_split_and_unsplit_agree_and_lse_is_optional() -> None:
    c = make_latent_case([70, 3], 4, 64, 16, 16, torch.float32)
    a, _, ref, _ = run_decode(c, 64, splits=1)
    b, _, _, _ = run_decode(c, 64, splits=5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    out = torch.zeros(2, 4, 64)
    mla_decode(c["q"], c["kv_cache"], out, c["block_table"], c["seq_lens"], 70, 0.07, 64)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)


def test_mla_kernels_take_the_cache_with_a_head_axis_of_one() -> None:
    c = make_latent_case([20, 5], 4, 64, 16, 16, torch.float32)
    a, b = torch.zeros(2, 4, 64), torch.zeros(2, 4, 64)
    mla_decode(c["q"], c["kv_cache"], a, c["block_table"], c["seq_lens"], 20, 0.1, 64)
    mla_decode(c["q"], c["kv_cache"].unsqueeze(2), b, c["block_table"], c["seq_lens"], 20, 0.1, 64)
    assert torch.equal(a, b)
    cache = torch.zeros(2, 16, 1, 80)
    concat_and_cache_mla(torch.ones(1, 64), torch.full((1, 16), 2.0), cache, torch.tensor([17]))
    assert bool((cache[1, 1, 0, :64] == 1).all()) and bool((cache[1, 1, 0, 64:] == 2).all())


def test_mla_decode_speculative_rows_are_causal() -> None:
    """Row i of a 3-token block sees one key fewer than row i + 1: changing the last key changes
    only the last row."""
    c = make_latent_case([20], 2, 32, 16, 16, torch.float32, query_len=3)
    out1, _, _, _ = run_decode(c, 32, query_len=3)
    blk = int(c["block_table"][0, 1])
    c["kv_cache"][blk, 3] += 5.0  # key 19: the last one
    out2, _, _, _ = run_decode(c, 32, query_len=3)
    assert torch.equal(out1[:2], out2[:2])
    assert not torch.allclose(out1[2], out2[2])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "q_lens, k_lens, heads, dqk, dv, dtype",
    [
        ([4, 0, 6], [5, 2, 7], 3, 48, 24, torch.float32),
        ([1, 17], [20, 33], 2, 192, 128, torch.float16),  # DeepSeek-V3 heads 192 / 128
        ([5], [5], 4, 24, 16, torch.bfloat16),
        ([3, 2], [3, 9], 1, 16, 80, torch.float32),
    ],
)
def test_mla_prefill_matches_reference(q_lens, k_lens, heads, dqk, dv, dtype, causal) -> None:
    g = torch.Generator().manual_seed(1)
    tq, tk = sum(q_lens), sum(k_lens)
    q = torch.randn(tq, heads, dqk, generator=g).to(dtype)
    kv = torch.randn(tk, heads, dqk + dv, generator=g).to(dtype)  # k and v as strided views
    k, v = kv[..., :dqk], kv[..., dqk:]
    cq = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    ck = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int64)
    out = torch.full((tq + 2, heads, dv), 77.0, dtype=dtype)[:tq]
    lse = torch.full((heads, tq), 77.0)
    scale = dqk**-0.5
    mla_prefill(q, k, v, out, cq, ck, max(q_lens), max(k_lens), scale, causal, lse=lse)
    ref, ref_lse = mla_prefill_reference(q, k, v, cq, ck, scale, causal)
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-3, rtol=1e-3)


def test_mla_prefill_chunks_merge_to_the_full_context() -> None:
    """vLLM's chunked prefill: attention over context chunks (non-causal) and the new tokens
    (causal), merged with the returned lse, equals attention over everything at once."""
    g = torch.Generator().manual_seed(4)
    heads, dqk, dv, ctx, new = 2, 32, 16, 21, 6
    q = torch.randn(new, heads, dqk, generator=g)
    k = torch.randn(ctx + new, heads, dqk, generator=g)
    v = torch.randn(ctx + new, heads, dv, generator=g)
    parts = []
    for lo, hi, causal in ((0, 10, False), (10, ctx, False), (ctx, ctx + new, True)):
        out, lse = torch.zeros(new, heads, dv), torch.zeros(heads, new)
        cq = torch.tensor([0, new], dtype=torch.int32)
        ck = torch.tensor([0, hi - lo], dtype=torch.int32)
        mla_prefill(q, k[lo:hi], v[lo:hi], out, cq, ck, new, hi - lo, 0.2, causal, lse=lse)
        parts.append((out.double(), lse.double()))
    lses = torch.stack([p[1] for p in parts])  # [3, H, T]
    total = torch.logsumexp(lses, 0)
    merged = sum(p[0] * torch.exp(p[1] - total).transpose(0, 1)[..., None] for p in parts)
    full, full_lse = mla_prefill_reference(
        q, k, v, torch.tensor([0, new]), torch.tensor([0, ctx + new]), 0.2, True
    )
    torch.testing.assert_close(merged, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(total, full_lse, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_concat_and_cache_mla_matches_reference(dtype) -> None:
    g = torch.Generator().manual_seed(2)
    cache = torch.randn(3, 16, 512 + 64, generator=g).to(dtype)
    fused = torch.randn(6, 512 + 64 + 32, generator=g)  # kv_c and k_pe as views of one projection
    kv_c, k_pe = fused[:, :512], fused[:, 512 : 512 + 64].unsqueeze(1)
    slots = torch.tensor([0, -1, 47, 16, 5], dtype=torch.int32)  # 5 slots for 6 rows (padding)
    expect = cache.clone()
    concat_and_cache_mla_reference(kv_c[:5], k_pe[:5], expect, slots)
    concat_and_cache_mla(kv_c, k_pe, cache, slots)
    assert torch.equal(cache, expect)


def test_concat_and_cache_mla_strided_cache_view() -> None:
    big = torch.zeros(4, 32, 96 + 8)
    cache = big[:, :16, :96]  # rows dense, blocks and slots strided
    kv_c, k_pe = torch.randn(3, 64), torch.randn(3, 32)
    concat_and_cache_mla(kv_c, k_pe, cache, torch.tensor([63, 0, 20]))
    assert torch.equal(cache[3, 15, :64], kv_c[0]) and torch.equal(cache[1, 4, 64:], k_pe[2])
    assert bool((big[:, 16:] == 0).all()) and bool((big[..., 96:] == 0).all())


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _decode_args(**over):
    c = make_latent_case([20, 5], 4, 64, 16, 16, torch.float32)
    args = dict(
        q=c["q"], kv_cache=c["kv_cache"], out=torch.zeros(2, 4, 64), block_table=c["block_table"],
        seq_lens=c["seq_lens"], max_seq_len=20, softmax_scale=0.1, kv_lora_rank=64,
    )  # fmt: skip
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over, exc, match",
    [
        (dict(q=torch.zeros(2, 4, 80, dtype=torch.float16)), TypeError, "dtype"),
        (dict(out=torch.zeros(2, 4, 63)), ValueError, "out must be"),
        (dict(kv_lora_rank=70), ValueError, "out must be"),
        (dict(kv_cache=torch.zeros(3, 8, 80)), ValueError, "block_size"),
        (dict(q=torch.zeros(3, 4, 80), out=torch.zeros(3, 4, 64)), ValueError, "rows"),
        (dict(softmax_scale=float("nan")), ValueError, "finite"),
        (dict(max_seq_len=10), ValueError, "max_seq_len"),
        (dict(query_len=MLA_MAX_QUERY_LEN + 1), ValueError, "query_len"),
        (dict(seq_lens=torch.tensor([20.0, 5.0])), TypeError, "seq_lens"),
        (dict(lse=torch.zeros(2, 3)), ValueError, "lse"),
        (dict(num_kv_splits=0), ValueError, "num_kv_splits"),
        (dict(block_table=torch.tensor([[0, 99], [2, -1]], dtype=torch.int32)), ValueError, "block_table"),
        (dict(seq_lens=torch.tensor([40, 5], dtype=torch.int32), max_seq_len=40), ValueError, "block_table"),
    ],
)
def test_mla_decode_rejects_bad_input(over, exc, match) -> None:
    with pytest.raises(exc, match=match):
        mla_decode(**_decode_args(**over))


def test_mla_limits_are_enforced() -> None:
    lora = MLA_MAX_KV_LORA_RANK + 16
    with pytest.raises(ValueError, match="kv_lora_rank"):
        concat_and_cache_mla(
            torch.zeros(1, lora), torch.zeros(1, 16), torch.zeros(1, 16, lora + 16), torch.tensor([0])
        )
    with pytest.raises(ValueError, match="kv_c/k_pe need"):
        concat_and_cache_mla(
            torch.zeros(1, 64), torch.zeros(1, 16), torch.zeros(1, 16, 80), torch.tensor([0, 1])
        )
    with pytest.raises(ValueError, match="80"):
        concat_and_cache_mla(torch.zeros(1, 64), torch.zeros(1, 8), torch.zeros(1, 16, 80), torch.tensor([0]))
    with pytest.raises(ValueError, match="slot_mapping values"):
        concat_and_cache_mla(
            torch.zeros(1, 64), torch.zeros(1, 16), torch.zeros(1, 16, 80), torch.tensor([16])
        )


@pytest.mark.parametrize(
    "over, exc, match",
    [
        (dict(causal=1), TypeError, "causal"),
        (dict(v=torch.zeros(9, 2, 300)), ValueError, "head size"),
        (dict(lse=torch.zeros(4, 2)), ValueError, "lse"),
        (dict(cu_seqlens_k=torch.tensor([0, 9], dtype=torch.int32)), ValueError, "num_seqs"),
        (dict(cu_seqlens_q=torch.tensor([0, 3, 5], dtype=torch.int32)), ValueError, "cu_seqlens_q"),
        (dict(cu_seqlens_k=torch.tensor([0, 1, 6], dtype=torch.int32)), ValueError, "causal"),
        (dict(k=torch.zeros(9, 2, 24, dtype=torch.float16)), TypeError, "dtype"),
    ],
)
def test_mla_prefill_rejects_bad_input(over, exc, match) -> None:
    args = dict(
        q=torch.zeros(4, 2, 24), k=torch.zeros(9, 2, 24), v=torch.zeros(9, 2, 16), out=torch.zeros(4, 2, 16),
        cu_seqlens_q=torch.tensor([0, 2, 4], dtype=torch.int32),
        cu_seqlens_k=torch.tensor([0, 4, 9], dtype=torch.int32), max_seqlen_q=2, max_seqlen_k=5,
        softmax_scale=0.2, causal=True,
    )  # fmt: skip
    args.update(over)
    with pytest.raises(exc, match=match):
        mla_prefill(**args)


# ---------------------------------------------------------------------------------------------
# Launch specs
# ---------------------------------------------------------------------------------------------


def test_decode_specs_fit_the_modelled_budget_and_split_small_batches() -> None:
    c = make_latent_case([300], 16, 512, 64, 128, torch.float16)
    with record_launches(execute=False) as specs:
        mla_decode(c["q"], c["kv_cache"], torch.zeros(1, 16, 512, dtype=torch.float16), c["block_table"],
                   c["seq_lens"], 300, 0.1, 512)  # fmt: skip
    names = [s.name for s in specs]
    assert names == ["mla_decode", "mla_decode_reduce"], names  # one sequence cannot fill the cores
    k = specs[0].constexprs
    assert k["BLOCK_M"] >= 16 and 128 % k["TILE_N"] == 0 and k["DV"] < 512
    assert decode_ub_estimate(k["BLOCK_M"], k["TILE_N"], k["KC"], k["DV"], k["ROPE_PAD"], 2) <= 72 * 1024
    assert specs[0].uses_cube and specs[0].args["num_segments"] > 1


def test_cached_plans_are_keyed_on_strides_and_still_check_per_call_values() -> None:
    """The per-shape plan (issue 20's host cost) is keyed on every static fact: a strided q of
    the same shape gets its own plan and the right result; per-call values and a bool where an
    int is wanted are still refused after a plan exists."""
    c = make_latent_case([20, 5], 4, 64, 16, 16, torch.float32, seed=3)
    q, cache, table, lens = c["q"], c["kv_cache"], c["block_table"], c["seq_lens"]
    ref, _ = mla_decode_reference(q, cache, table, lens, 0.1, 64, 1)
    out = torch.zeros(2, 4, 64)
    mla_decode(q, cache, out, table, lens, 20, 0.1, 64)
    big = torch.zeros(2, 8, q.shape[2])
    big[:, 2:6] = q
    strided = big[:, 2:6]  # same shape and dtype, other strides and storage offset
    out2 = torch.zeros(2, 4, 64)
    mla_decode(strided, cache, out2, table, lens, 20, 0.1, 64)
    torch.testing.assert_close(out2.double(), ref, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="softmax_scale"):
        mla_decode(q, cache, out, table, lens, 20, float("nan"), 64)
    with pytest.raises(ValueError, match="max_seq_len"):
        mla_decode(q, cache, out, table, lens, -1, 0.1, 64)
    with pytest.raises(TypeError, match="query_len"):
        mla_decode(q, cache, out, table, lens, 20, 0.1, 64, query_len=True)
    gapped = torch.zeros(2, 4, 2 * q.shape[2])[:, :, ::2]  # q's shape, a non-dense last dim
    with pytest.raises(ValueError, match="contiguous in its last dim"):
        mla_decode(gapped, cache, out, table, lens, 20, 0.1, 64)


def test_cached_plans_keep_no_caller_tensor() -> None:
    """Plans and their launch templates hold placeholders, never a caller's tensors: a cache and
    its queries are freed once the caller drops them."""
    import gc
    import weakref

    c = make_latent_case([20, 5], 4, 64, 16, 16, torch.float32, seed=4)
    refs = [weakref.ref(c["kv_cache"]), weakref.ref(c["q"])]
    out = torch.zeros(2, 4, 64)
    mla_decode(c["q"], c["kv_cache"], out, c["block_table"], c["seq_lens"], 20, 0.1, 64, num_kv_splits=2)
    del c
    gc.collect()
    assert all(r() is None for r in refs)
