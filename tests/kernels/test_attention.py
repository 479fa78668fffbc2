"""reshape_and_cache and unified_attention on the interpreter against plain torch references,
bad inputs, out-of-bounds poisoning, and lowering for Ascend910B3 / Ascend910_9392.

The axes (dtype, head size, block size, GQA ratio, features, batch shape, split-KV) are covered
pairwise by the case table below rather than as a full product: the interpreter is slow.
"""

from __future__ import annotations

import time

import pytest
import torch

from vllm_ascend_triton.codegen.compile import variant_specs
from vllm_ascend_triton.codegen.lower import LoweringRequest, lower_many
from vllm_ascend_triton.codegen.report import parse_adapter_ir
from vllm_ascend_triton.kernels import reshape_and_cache, unified_attention
from vllm_ascend_triton.kernels.attention import _choose_splits
from vllm_ascend_triton.kernels.attention.checks import self_check
from vllm_ascend_triton.kernels.attention.reference import (
    make_paged_case,
    reshape_and_cache_reference,
    unified_attention_reference,
)
from vllm_ascend_triton.runtime.sku import get_sku

POISON = 12345.0
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
ATOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _poisoned_out(num_tokens: int, num_heads: int, head_size: int, dtype: torch.dtype, pad_tokens: int = 0):
    """`out` as a strided view inside a poisoned buffer: a margin of rows, heads and dims around
    the valid region (plus `pad_tokens` padding rows at the end that no sequence owns)."""
    big = torch.full((num_tokens + pad_tokens + 2, num_heads + 1, head_size + 8), POISON, dtype=dtype)
    return big, big[1 : num_tokens + pad_tokens + 1, :num_heads, :head_size]


def _check_poison(big: torch.Tensor, num_valid: int, num_heads: int, head_size: int) -> None:
    region = torch.zeros_like(big, dtype=torch.bool)
    region[1 : num_valid + 1, :num_heads, :head_size] = True
    assert bool((big[~region] == POISON).all()), "a write landed outside the valid output region"


def _run(
    q_lens, kv_lens, hq, hkv, d, bs, dtype, *, causal=True, window=(-1, -1), softcap=0.0, alibi=False,
    sinks=False, splits=None, extra_blocks=1, pad_tokens=0, seed=0, fused_q=False, packed_kv=False,
    extra_rows=0, int64_meta=False,
):  # fmt: skip
    c = make_paged_case(q_lens, kv_lens, hq, hkv, d, bs, dtype, extra_blocks=extra_blocks, seed=seed)
    k_cache, v_cache, block_table = c["k_cache"], c["v_cache"], c["block_table"]
    if packed_kv:  # vLLM 0.32: one [blocks, 2, block_size, H, D] tensor, K and V strided views
        kv = torch.stack([k_cache, v_cache], dim=1)
        k_cache, v_cache = kv[:, 0], kv[:, 1]
    cu, seqused = c["cu_seqlens_q"], c["seqused_k"]
    if int64_meta:
        cu, seqused, block_table = cu.long(), seqused.long(), block_table.long()
    if extra_rows:  # vLLM's persistent block table has rows for more requests than scheduled
        block_table = torch.cat(
            [block_table, torch.full((extra_rows, block_table.shape[1]), -7, dtype=block_table.dtype)]
        )
    g = torch.Generator().manual_seed(seed + 1)
    slopes = (torch.rand(hq, generator=g) * 0.5).float() if alibi else None
    # sinks in the data dtype for bf16 (vLLM keeps them in the model dtype), else fp32
    sink_t = torch.randn(hq, generator=g).to(BF16 if dtype == BF16 else F32) if sinks else None
    total = c["q"].shape[0]
    q = c["q"]
    if pad_tokens:  # vLLM pads q past cu_seqlens_q[-1]; those rows must stay untouched
        q = torch.cat([q, torch.randn(pad_tokens, hq, d, generator=g).to(dtype)])
    if fused_q:  # q as the first heads of a fused qkv tensor (token stride > Hq * D)
        qkv = torch.randn(q.shape[0], hq + 2 * hkv, d, generator=g).to(dtype)
        qkv[:, :hq] = q
        q = qkv[:, :hq]
    big, out = _poisoned_out(total, hq, d, dtype, pad_tokens)
    scale = d**-0.5
    unified_attention(
        q, k_cache, v_cache, out, cu, max(q_lens), seqused, max(kv_lens),
        scale, causal, window, block_table, softcap, alibi_slopes=slopes, sinks=sink_t, num_kv_splits=splits,
    )  # fmt: skip
    ref = unified_attention_reference(
        c["q"], c["k_cache"], c["v_cache"], c["cu_seqlens_q"], c["seqused_k"], scale, causal, window,
        c["block_table"], softcap, slopes, sink_t,
    )  # fmt: skip
    _check_poison(big, total, hq, d)
    return out[:total].double(), ref


# (id, q_lens, kv_lens, hq, hkv, head, block, dtype, options)
# fmt: off
CASES = [
    ("decode1_mha_h64_b16_fp32", [1], [1], 1, 1, 64, 16, F32, {}),
    ("mqa_qpk20_fused_q_packed_kv_h64_b16_fp16", [3, 1], [12, 20], 20, 1, 64, 16, F16,
     {"fused_q": True, "packed_kv": True, "extra_rows": 2}),
    ("mixed_zero_tokens_gqa2_h64_b16_fp32", [4, 0, 1, 3], [9, 7, 30, 3], 4, 2, 64, 16, F32, {}),
    ("prefill_gqa4_h128_b32_fp16", [17, 5], [17, 40], 8, 2, 128, 32, F16, {}),
    ("chunked_odd_gqa3_h80_b16_fp32_window", [6, 2], [37, 20], 6, 2, 80, 16, F32, {"window": (7, 0)}),
    ("window_larger_than_seq_h96_b64_fp16", [5, 1], [12, 50], 2, 1, 96, 64, F16, {"window": (127, 0)}),
    ("softcap_mqa_h256_b16_fp32_i64", [3, 1], [19, 33], 4, 1, 256, 16, F32,
     {"softcap": 5.0, "int64_meta": True}),
    ("alibi_gqa2_h64_b128_fp16", [4, 1], [140, 9], 4, 2, 64, 128, F16, {"alibi": True}),
    ("sinks_gqa8_h128_b16_fp32", [2, 1], [21, 18], 8, 1, 128, 16, F32, {"sinks": True}),
    ("noncausal_window_h64_b32_fp32", [5, 3], [5, 40], 2, 2, 64, 32, F32,
     {"causal": False, "window": (4, 4)}),
    ("noncausal_h80_b64_fp16_softcap", [6], [70], 3, 1, 80, 64, F16, {"causal": False, "softcap": 10.0}),
    ("bf16_gqa2_h128_b16_sinks", [3, 1], [20, 45], 4, 2, 128, 16, BF16, {"sinks": True}),
    ("padded_q_rows_h64_b16_fp16", [2, 1], [10, 17], 2, 1, 64, 16, F16, {"pad_tokens": 3}),
    ("no_trailing_blocks_h96_b32_fp32", [1, 2], [64, 33], 2, 1, 96, 32, F32, {"extra_blocks": 0}),
    # split-KV (forced) on decode and on a mixed batch, with the features that touch the reduction
    ("split3_decode_gqa4_h128_b16_fp16_packed", [1, 1], [70, 9], 4, 1, 128, 16, F16,
     {"splits": 3, "packed_kv": True, "fused_q": True}),
    ("split4_sinks_alibi_h64_b32_fp32", [1, 1, 1], [90, 1, 33], 2, 2, 64, 32, F32,
     {"splits": 4, "sinks": True, "alibi": True}),
    ("split2_mixed_window_h80_b16_fp32", [3, 0, 1], [25, 4, 40], 2, 1, 80, 16, F32,
     {"splits": 2, "window": (9, 0)}),
    ("split5_softcap_bf16_h256_b64", [1], [200], 2, 1, 256, 64, BF16, {"splits": 5, "softcap": 3.0}),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_unified_attention_matches_reference(case):
    _, q_lens, kv_lens, hq, hkv, d, bs, dtype, opts = case
    out, ref = _run(q_lens, kv_lens, hq, hkv, d, bs, dtype, **opts)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, ref, atol=ATOL[dtype], rtol=0)


def test_sixty_four_sequences_tiny():
    q_lens = [1 if s % 3 else 2 for s in range(64)]
    kv_lens = [1 + (s * 7) % 19 for s in range(64)]
    kv_lens = [max(k, q) for k, q in zip(kv_lens, q_lens, strict=True)]
    out, ref = _run(q_lens, kv_lens, 2, 1, 64, 16, torch.float16)
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=0)


def test_tuned_config_with_tiles_inside_blocks(tmp_path, monkeypatch, request):
    """A tuned config (through VAT_TUNED_CONFIG_FOLDER) with KV tiles smaller than a cache block and a
    taller query tile: the per-tile block lookup must find the offset inside the block."""
    import json

    from vllm_ascend_triton.runtime import configs
    from vllm_ascend_triton.runtime.device import current_device

    sku = current_device().sku.name
    key = {"head_size": 64, "block_size": 64, "qpk": 2, "dtype": "float32", "decode": False}
    path = configs.config_file_path(tmp_path, sku, "unified_attention", key)
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps({"kernel": "unified_attention", "sku": sku, "method": "model", "shape_key": key,
                    "configs": [{"key": key, "config": {"BLOCK_M": 32, "TILE_N": 16}}]})
    )  # fmt: skip
    monkeypatch.setenv(configs.TUNED_CONFIG_FOLDER_ENV, str(tmp_path))
    configs.clear_caches()  # the folder variable is read once
    request.addfinalizer(configs.clear_caches)
    from vllm_ascend_triton.kernels.attention import _attention_launch_config

    cfg = _attention_launch_config(sku, 64, 64, torch.float32, 2, decode=False)
    assert (cfg["TILE_N"], cfg["BLOCK_Q"], cfg["BLOCK_M"]) == (16, 16, 32)
    out, ref = _run([20, 1], [150, 71], 4, 2, 64, 64, torch.float32, window=(40, 0))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_split_and_unsplit_agree():
    c = make_paged_case([1, 1], [150, 77], 4, 2, 64, 16, torch.float32, seed=5)
    outs = []
    for splits in (1, 6):
        out = torch.zeros_like(c["q"])
        unified_attention(
            c["q"], c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], 1, c["seqused_k"], 150,
            0.125, True, (-1, -1), c["block_table"], 0.0, num_kv_splits=splits,
        )  # fmt: skip
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


def test_long_context_split_kv_4k():
    """4K-token decode, 1 sequence, 1 KV head: the wrapper must choose split-KV by itself."""
    sku = get_sku("Ascend910B3")
    assert _choose_splits(1, 1, 1, 4096, 64, sku.cube_cores) > 1
    assert _choose_splits(64, 8, 1, 4096, 64, sku.cube_cores) == 1  # full batch: no split
    assert _choose_splits(1, 1, 7, 4096, 64, sku.cube_cores) == 1  # prefill: no split
    start = time.perf_counter()
    out, ref = _run([1], [4096], 1, 1, 64, 128, torch.float32, extra_blocks=0)
    elapsed = time.perf_counter() - start
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    print(f"4K split-KV decode on the interpreter: {elapsed:.2f} s")


def test_empty_batch_and_zero_query_tokens_write_nothing():
    c = make_paged_case([0, 0], [5, 3], 2, 1, 64, 16, torch.float32)
    q = torch.randn(2, 2, 64)  # padding rows only
    out = torch.full_like(q, POISON)
    unified_attention(
        q, c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], 0, c["seqused_k"], 5,
        0.1, True, (-1, -1), c["block_table"], 0.0,
    )  # fmt: skip
    assert bool((out == POISON).all())
    empty_q = torch.empty(0, 2, 64)
    unified_attention(
        empty_q, c["k_cache"], c["v_cache"], empty_q.clone(), torch.zeros(1, dtype=torch.int32), 0,
        torch.zeros(0, dtype=torch.int32), 0, 0.1, True, (-1, -1), c["block_table"][:0], 0.0,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _good_args():
    c = make_paged_case([2, 1], [10, 20], 4, 2, 64, 16, torch.float32)
    return dict(
        q=c["q"], k_cache=c["k_cache"], v_cache=c["v_cache"], out=torch.zeros_like(c["q"]),
        cu_seqlens_q=c["cu_seqlens_q"], max_seqlen_q=2, seqused_k=c["seqused_k"], max_seqlen_k=20,
        softmax_scale=0.125, causal=True, window_size=(-1, -1), block_table=c["block_table"], softcap=0.0,
    )  # fmt: skip


def _bad_cases():
    def mismatched_heads(a):
        a["q"] = torch.randn(3, 3, 64)
        a["out"] = torch.zeros(3, 3, 64)

    def short_block_table(a):
        a["block_table"] = a["block_table"][:, :1]  # seqused_k 20 needs 2 blocks of 16

    def out_of_range_block_id(a):
        a["block_table"] = a["block_table"].clone()
        a["block_table"][1, 1] = 10_000

    def seqused_below_query_len(a):
        a["seqused_k"] = torch.tensor([1, 20], dtype=torch.int32)

    def cu_len(a):
        a["cu_seqlens_q"] = a["cu_seqlens_q"][:2]

    return [
        ("mismatched head counts", mismatched_heads, ValueError, "multiple"),
        ("block table too short", short_block_table, ValueError, "block_table has 1 entries"),
        ("block id out of range", out_of_range_block_id, ValueError, "block_table entries"),
        ("seqused_k < query len", seqused_below_query_len, ValueError, "seqused_k"),
        ("cu_seqlens_q length", cu_len, ValueError, "cu_seqlens_q"),
        (
            "float cu_seqlens_q",
            lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"].float()),
            TypeError,
            "cu_seqlens_q",
        ),
        ("fp16 cache with fp32 q", lambda a: a.update(k_cache=a["k_cache"].half()), TypeError, "k_cache"),
        ("int q", lambda a: a.update(q=a["q"].int()), TypeError, "q"),
        (
            "float block_table",
            lambda a: a.update(block_table=a["block_table"].float()),
            TypeError,
            "block_table",
        ),
        ("out shape", lambda a: a.update(out=a["out"][:, :2]), ValueError, "out"),
        (
            "head size 512",
            lambda a: a.update(q=torch.randn(3, 4, 512), out=torch.zeros(3, 4, 512)),
            ValueError,
            "head_size",
        ),
        ("window not a pair", lambda a: a.update(window_size=(3,)), ValueError, "window_size"),
        ("negative softcap", lambda a: a.update(softcap=-1.0), ValueError, "softcap"),
        ("sinks length", lambda a: a.update(sinks=torch.zeros(3)), ValueError, "sinks"),
        (
            "alibi dtype",
            lambda a: a.update(alibi_slopes=torch.zeros(4, dtype=torch.float16)),
            TypeError,
            "alibi_slopes",
        ),
        ("max_seqlen_q too small", lambda a: a.update(max_seqlen_q=1), ValueError, "max_seqlen_q"),
        ("causal not bool", lambda a: a.update(causal=1), TypeError, "causal"),
        ("num_kv_splits zero", lambda a: a.update(num_kv_splits=0), ValueError, "num_kv_splits"),
        # contract gaps closed by issue 12: one error type per kind of mistake
        ("out dtype", lambda a: a.update(out=a["out"].half()), TypeError, "out must have q's dtype"),
        ("softmax_scale inf", lambda a: a.update(softmax_scale=float("inf")), ValueError, "softmax_scale"),
        ("softmax_scale str", lambda a: a.update(softmax_scale="0.1"), TypeError, "softmax_scale"),
        ("softcap None", lambda a: a.update(softcap=None), TypeError, "softcap"),
        ("softcap nan", lambda a: a.update(softcap=float("nan")), ValueError, "softcap"),
        ("window float", lambda a: a.update(window_size=(1.5, 0)), TypeError, "window_size"),
        ("window below -1", lambda a: a.update(window_size=(-2, 0)), ValueError, "window_size"),
        ("window int", lambda a: a.update(window_size=5), TypeError, "window_size"),
        (
            "strided seqused_k",
            lambda a: a.update(seqused_k=torch.stack([a["seqused_k"]] * 2, 1)[:, 0]),
            ValueError,
            "seqused_k must be contiguous",
        ),
        (
            "block size 8",
            lambda a: a.update(k_cache=torch.zeros(8, 8, 2, 64), v_cache=torch.zeros(8, 8, 2, 64)),
            ValueError,
            "multiple of 16",
        ),
        ("num_kv_splits 65", lambda a: a.update(num_kv_splits=65), ValueError, "num_kv_splits"),
        ("max_seqlen_k 2^24", lambda a: a.update(max_seqlen_k=2**24), ValueError, "max_seqlen_k"),
    ]


@pytest.mark.parametrize("name,mutate,exc,match", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_unified_attention_bad_input(name, mutate, exc, match):
    args = _good_args()
    mutate(args)
    with pytest.raises(exc, match=match):
        unified_attention(**args)


# ---------------------------------------------------------------------------------------------
# reshape_and_cache
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,key_dtype,heads,head_size,block_size",
    [
        (torch.float32, torch.float32, 2, 64, 16),
        (torch.float16, torch.float16, 3, 80, 32),
        (torch.bfloat16, torch.bfloat16, 1, 128, 16),
        (torch.float16, torch.float32, 4, 256, 128),  # cast on write
    ],
)
def test_reshape_and_cache_packed_layout(dtype, key_dtype, heads, head_size, block_size):
    g = torch.Generator().manual_seed(11)
    num_blocks, num_slots_used = 5, 7
    # vLLM 0.32: one [num_blocks, 2, block_size, H, D] tensor; K and V are strided views of it.
    kv = torch.randn(num_blocks, 2, block_size, heads, head_size, generator=g).to(dtype)
    # key/value as slices of a fused qkv tensor with 2 padding rows past slot_mapping
    qkv = torch.randn(num_slots_used + 2, 3 * heads, head_size, generator=g).to(key_dtype)
    key, value = qkv[:, heads : 2 * heads], qkv[:, 2 * heads :]
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_slots_used]
    slots[2] = -1
    slots[5] = num_blocks * block_size - 1  # last slot of the cache
    expect = kv.clone()
    reshape_and_cache_reference(key, value, expect[:, 0], expect[:, 1], slots)
    reshape_and_cache(key, value, kv[:, 0], kv[:, 1], slots.to(torch.int32))
    assert torch.equal(kv, expect)


def test_reshape_and_cache_empty_and_all_skipped():
    kv = torch.randn(2, 2, 16, 1, 64)
    before = kv.clone()
    key = torch.randn(3, 1, 64)
    reshape_and_cache(key, key, kv[:, 0], kv[:, 1], torch.full((3,), -1, dtype=torch.int64))
    reshape_and_cache(key, key, kv[:, 0], kv[:, 1], torch.empty(0, dtype=torch.int64))
    assert torch.equal(kv, before)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(slot_mapping=torch.tensor([0, 32, 1])), ValueError, "slot_mapping values"),
        (lambda a: a.update(slot_mapping=torch.tensor([0, -2, 1])), ValueError, "slot_mapping values"),
        (lambda a: a.update(slot_mapping=torch.tensor([0.0, 1.0, 2.0])), TypeError, "slot_mapping"),
        (lambda a: a.update(key=torch.randn(3, 2, 64)), ValueError, "key must be"),
        (lambda a: a.update(value=torch.randn(2, 1, 64)), ValueError, "rows"),
        (lambda a: a.update(value_cache=torch.zeros(2, 16, 1, 32)), ValueError, "value_cache shape"),
        (lambda a: a.update(key_cache=torch.zeros(2, 16, 64)), ValueError, "key_cache"),
        (lambda a: a.update(slot_mapping=torch.tensor([0, 1, 2, 3])[::2][:3]), ValueError, "slot_mapping"),
    ],
    ids=[
        "slot_too_big",
        "slot_below_minus_one",
        "float_slots",
        "head_mismatch",
        "too_few_rows",
        "cache_shape",
        "cache_rank",
        "strided_slots",
    ],
)
def test_reshape_and_cache_bad_input(mutate, exc, match):
    args = dict(
        key=torch.randn(3, 1, 64), value=torch.randn(3, 1, 64), key_cache=torch.zeros(2, 16, 1, 64),
        value_cache=torch.zeros(2, 16, 1, 64), slot_mapping=torch.tensor([0, 5, 31]),
    )  # fmt: skip
    mutate(args)
    with pytest.raises(exc, match=match):
        reshape_and_cache(**args)


def test_head_size_limit_is_one_for_the_family():
    """reshape_and_cache and unified_attention refuse the same head sizes (kernels/limits.py)."""
    from vllm_ascend_triton.kernels.limits import ATTENTION_MAX_HEAD_SIZE

    d = ATTENTION_MAX_HEAD_SIZE + 8
    kv = torch.zeros(2, 16, 1, d)
    with pytest.raises(ValueError, match=f"head_size must be in \\[1, {ATTENTION_MAX_HEAD_SIZE}\\]"):
        reshape_and_cache(torch.zeros(1, 1, d), torch.zeros(1, 1, d), kv, kv.clone(), torch.tensor([0]))
    args = _good_args()
    args.update(q=torch.zeros(3, 4, d), out=torch.zeros(3, 4, d), k_cache=torch.zeros(4, 16, 2, d),
                v_cache=torch.zeros(4, 16, 2, d))  # fmt: skip
    with pytest.raises(ValueError, match=f"head_size must be in \\[1, {ATTENTION_MAX_HEAD_SIZE}\\]"):
        unified_attention(**args)


def test_query_group_too_large_for_the_ub_is_refused():
    """128 query heads on one KV head of 256 fp32 need a 128 KB query tile (160 KB of buffers in
    the adapter IR): refused with the figure; in bf16 (64 KB) it is accepted."""
    for dtype in (torch.float32, torch.bfloat16):
        c = make_paged_case([1], [5], 128, 1, 256, 16, dtype)
        out = torch.zeros_like(c["q"])
        args = (c["q"], c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], 1, c["seqused_k"], 5,
                0.0625, True, (-1, -1), c["block_table"], 0.0)  # fmt: skip
        if dtype == torch.float32:
            with pytest.raises(ValueError, match="131072-byte query tile"):
                unified_attention(*args)
            with pytest.raises(ValueError, match="query tile"):  # a static limit: an empty batch too
                unified_attention(c["q"][:0], *args[1:3], out[:0], torch.zeros(1, dtype=torch.int32), 0,
                                  c["seqused_k"][:0], 0, *args[8:])  # fmt: skip
        else:
            unified_attention(*args)
            ref = unified_attention_reference(
                c["q"], c["k_cache"], c["v_cache"], c["cu_seqlens_q"], c["seqused_k"], 0.0625, True, (-1, -1),
                c["block_table"], 0.0,
            )  # fmt: skip
            torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=0)


def test_launched_specs_equal_the_variants_that_vat_compile_lowers():
    """For variants covering all three kernels, the specs built in `vat compile`'s dry run equal
    what the executed host API launches (bf16 runs as fp32 through the interpreter's shim, so only
    the pointer dtypes differ there)."""
    from vllm_ascend_triton.kernels._variants import collect_specs
    from vllm_ascend_triton.kernels.attention.variants import VARIANTS
    from vllm_ascend_triton.runtime.launch import record_launches

    labels = {"qwen3_gqa8_decode_split_sinks_fp16", "h64_gqa4_b16_fp32", "cache_h256_fp32_to_fp16",
              "cache_glm45_bf16"}  # fmt: skip
    chosen = [v for v in VARIANTS if v.label in labels]
    assert len(chosen) == len(labels)
    dry = collect_specs(chosen)
    executed = []
    for variant in chosen:
        with record_launches() as specs:
            variant.call()
        executed.extend(specs)
    assert [vs.spec.name for vs in dry] == [s.name for s in executed]
    assert "unified_attention_split_reduce" in [s.name for s in executed]
    for vs, spec in zip(dry, executed, strict=True):
        d = vs.spec
        assert (d.grid, dict(d.constexprs), dict(d.config), dict(d.options), d.uses_cube) == (
            spec.grid, dict(spec.constexprs), dict(spec.config), dict(spec.options), spec.uses_cube
        ), vs.label  # fmt: skip
        dry_sig = {k: v.replace("bf16", "fp32") for k, v in d.signature().items()}
        assert dry_sig == spec.signature(), vs.label


def test_self_check_passes():
    results = self_check()
    assert results and all(r.ok for r in results), [r for r in results if not r.ok]


# ---------------------------------------------------------------------------------------------
# Lowering for Ascend (subprocess, no CANN: stops after the adapter)
# ---------------------------------------------------------------------------------------------

LOWER_SKUS = ("Ascend910B3", "Ascend910_9392")


@pytest.fixture(scope="module")
def lowered():
    reqs = [
        LoweringRequest.from_spec(vs.spec, sku, vs.label)
        for sku in LOWER_SKUS
        for vs in variant_specs(sku, ["attention"])
    ]
    return lower_many(reqs, jobs=2)


@pytest.mark.slow
def test_lowering_all_variants(lowered):
    assert {r.request.sku for r in lowered} == set(LOWER_SKUS)
    for res in lowered:
        assert res.ok, f"{res.request.label} on {res.request.sku}: {res.error}"
        report = parse_adapter_ir(res.ttadapter)
        ub = get_sku(res.request.sku).ub_bytes
        assert report.fits_ub(ub), f"{res.request.label}: {report.ub_bytes} B of buffers"
        # Per-tile scalar block-id lookup and per-axis q/out addressing: no scalarized accesses.
        assert report.discrete_accesses == 0, (
            f"{res.request.label}: {report.discrete_accesses} discrete accesses"
        )
        if res.request.label.startswith("unified_attention["):
            assert report.mix_mode != "aiv", f"{res.request.label} must use the cube cores"
        else:
            assert report.mix_mode == "aiv", f"{res.request.label} should be vector-only"


def test_cached_plans_are_keyed_on_strides_and_still_check_per_call_values():
    """The per-shape plan (issue 20's host cost) is keyed on every static fact: a strided q of the
    same shape gets its own plan and the right result; per-call values and a non-bool causal are
    still refused after a plan exists."""
    c = make_paged_case([1, 1], [40, 9], 4, 2, 32, 16, F32, seed=9)
    q, kc, vc, bt = c["q"], c["k_cache"], c["v_cache"], c["block_table"]
    cu, used = c["cu_seqlens_q"], c["seqused_k"]

    def call(q_, out_, *, scale=0.2, window=(-1, -1), causal=True, max_k=40):
        return unified_attention(q_, kc, vc, out_, cu, 1, used, max_k, scale, causal, window, bt, 0.0)

    ref = unified_attention_reference(q, kc, vc, cu, used, 0.2, True, (-1, -1), bt, 0.0)
    call(q, torch.zeros_like(q))
    big = torch.zeros(2, 9, 32)
    big[:, 3:7] = q
    out = torch.zeros_like(q)
    call(big[:, 3:7], out)  # same shape and dtype, other strides and storage offset
    torch.testing.assert_close(out, ref.to(out.dtype), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="softmax_scale"):
        call(q, out, scale=float("inf"))
    with pytest.raises(ValueError, match="window_size"):
        call(q, out, window=(-2, 0))
    with pytest.raises(ValueError, match="max_seqlen_k"):
        call(q, out, max_k=-3)
    with pytest.raises(TypeError, match="causal"):
        call(q, out, causal=1)
    with pytest.raises(ValueError, match="contiguous in its last dim"):
        call(torch.zeros(2, 4, 64)[:, :, ::2], out)


def test_cached_plans_keep_no_caller_tensor():
    """Plans and their launch templates hold placeholders, never a caller's tensors."""
    import gc
    import weakref

    c = make_paged_case([1, 3], [40, 9], 4, 2, 32, 16, F32, seed=10)
    refs = [weakref.ref(c["k_cache"]), weakref.ref(c["q"])]
    out = torch.zeros_like(c["q"])
    unified_attention(
        c["q"], c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], 3, c["seqused_k"], 40, 0.2, True,
        (-1, -1), c["block_table"], 0.0,
    )  # fmt: skip
    key, value = torch.randn(2, 2, 32), torch.randn(2, 2, 32)
    reshape_and_cache(key, value, c["k_cache"], c["v_cache"], torch.tensor([3, -1]))
    del c, out
    gc.collect()
    assert all(r() is None for r in refs)
