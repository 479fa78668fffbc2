"""Property tests of the MLA kernels: random small shapes (heads, latent/rope widths, block sizes,
sequence lengths, tokens per sequence, split counts) against the float64 references."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_ascend_triton.kernels import concat_and_cache_mla, mla_decode, mla_prefill
from vllm_ascend_triton.kernels.mla.reference import (
    concat_and_cache_mla_reference,
    make_latent_case,
    mla_decode_reference,
    mla_prefill_reference,
)

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    lens=st.lists(st.integers(4, 70), min_size=1, max_size=3),
    heads=st.integers(1, 9),
    lora=st.sampled_from([16, 40, 64]),
    rope=st.sampled_from([8, 16, 24]),
    bs=st.sampled_from([16, 32]),
    ql=st.integers(1, 4),
    splits=st.sampled_from([None, 1, 2, 5]),
    seed=st.integers(0, 1000),
)
def test_mla_decode_property(lens, heads, lora, rope, bs, ql, splits, seed) -> None:
    c = make_latent_case(lens, heads, lora, rope, bs, torch.float32, query_len=ql, extra_blocks=1, seed=seed)
    rows = c["q"].shape[0]
    out, lse = torch.zeros(rows, heads, lora), torch.zeros(rows, heads)
    mla_decode(c["q"], c["kv_cache"], out, c["block_table"], c["seq_lens"], max(lens), 0.05, lora,
               query_len=ql, lse=lse, num_kv_splits=splits)  # fmt: skip
    ref, ref_lse = mla_decode_reference(
        c["q"], c["kv_cache"], c["block_table"], c["seq_lens"], 0.05, lora, ql
    )
    torch.testing.assert_close(out.double(), ref, atol=5e-5, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=5e-5, rtol=1e-5)


@SETTINGS
@given(
    q_lens=st.lists(st.integers(0, 20), min_size=1, max_size=3),
    ctx=st.lists(st.integers(0, 20), min_size=3, max_size=3),
    heads=st.integers(1, 4),
    dqk=st.sampled_from([16, 24, 48, 80]),
    dv=st.sampled_from([8, 16, 40]),
    causal=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_mla_prefill_property(q_lens, ctx, heads, dqk, dv, causal, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    k_lens = [q + c for q, c in zip(q_lens, ctx, strict=False)]
    tq, tk = sum(q_lens), sum(k_lens)
    q = torch.randn(tq, heads, dqk, generator=g)
    k, v = torch.randn(tk, heads, dqk, generator=g), torch.randn(tk, heads, dv, generator=g)
    cq = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    ck = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32)
    out, lse = torch.zeros(tq, heads, dv), torch.zeros(heads, tq)
    mla_prefill(q, k, v, out, cq, ck, max(q_lens), max(k_lens), dqk**-0.5, causal, lse=lse)
    ref, ref_lse = mla_prefill_reference(q, k, v, cq, ck, dqk**-0.5, causal)
    torch.testing.assert_close(out.double(), ref, atol=5e-5, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=5e-5, rtol=1e-5)


@SETTINGS
@given(
    slots=st.lists(st.integers(-1, 63), min_size=1, max_size=12, unique=True),
    lora=st.sampled_from([16, 40, 512]),
    rope=st.sampled_from([8, 64]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
)
def test_concat_and_cache_mla_property(slots, lora, rope, dtype) -> None:
    g = torch.Generator().manual_seed(len(slots))
    cache = torch.randn(4, 16, lora + rope, generator=g).to(dtype)
    kv_c, k_pe = torch.randn(len(slots), lora, generator=g), torch.randn(len(slots), rope, generator=g)
    slot_t = torch.tensor(slots)
    expect = cache.clone()
    concat_and_cache_mla_reference(kv_c, k_pe, expect, slot_t)
    concat_and_cache_mla(kv_c, k_pe, cache, slot_t)
    assert torch.equal(cache, expect)
