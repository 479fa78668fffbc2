"""Attention at production sizes: a KV cache of 32,768 blocks (vLLM's own unified-attention test
uses 32,768 to catch index overflow), 8K-token prefill chunks, 128 query heads, and the lowered
IR showing that every cache / q / out base address is computed in 64-bit arithmetic (element
offsets past 2^31 cannot wrap; a real >2^31-element cache would need > 8 GiB here).

Under the interpreter, so the caches stay small per block (block 16, 1 KV head, head 64, fp16) and
the sequences few; the largest cases are marked slow.
"""

from __future__ import annotations

import re
import time

import pytest
import torch

from vllm_ascend_triton.kernels import reshape_and_cache, unified_attention
from vllm_ascend_triton.kernels.attention.reference import make_paged_case, unified_attention_reference
from vllm_ascend_triton.runtime.launch import record_launches


def test_kv_cache_of_32768_blocks_with_tables_at_high_block_ids() -> None:
    num_blocks, bs, d = 32768, 16, 64
    g = torch.Generator().manual_seed(0)
    k_cache = torch.zeros(num_blocks, bs, 1, d, dtype=torch.float16)  # 64 MiB each
    v_cache = torch.zeros_like(k_cache)
    q_lens, kv_lens = [3, 1, 1], [40, 100, 17]
    tables = torch.tensor(
        [
            [32767, 32766, 32765, 0, 0, 0, 0],
            [32000, 32001, 32002, 32003, 32004, 32005, 32006],
            [16384, 32767 - 8, 0, 0, 0, 0, 0],
        ],
        dtype=torch.int32,
    )
    # Write every sequence's keys/values through reshape_and_cache, up to the cache's last slot.
    slots = torch.cat([tables[s, torch.arange(n) // bs].long() * bs + torch.arange(n) % bs
                       for s, n in enumerate(kv_lens)])  # fmt: skip
    assert int(slots.max()) == num_blocks * bs - 1  # the cache's last slot (sequence 0, key 15)
    keys = torch.randn(len(slots), 1, d, generator=g).half()
    values = torch.randn(len(slots), 1, d, generator=g).half()
    reshape_and_cache(keys, values, k_cache, v_cache, slots)
    assert torch.equal(k_cache[32767, 15, 0], keys[15, 0])
    assert torch.equal(v_cache[32006, 100 - 6 * bs - 1, 0], values[40 + 99, 0])

    q = torch.randn(sum(q_lens), 2, d, generator=g).half()
    cu = torch.tensor([0, 3, 4, 5], dtype=torch.int32)
    used = torch.tensor(kv_lens, dtype=torch.int32)
    ref = unified_attention_reference(q, k_cache, v_cache, cu, used, 0.125, True, (-1, -1), tables, 0.0)
    out = torch.empty_like(q)
    unified_attention(q, k_cache, v_cache, out, cu, 3, used, 100, 0.125, True, (-1, -1), tables, 0.0)
    torch.testing.assert_close(out.double(), ref, atol=1e-2, rtol=0)
    # decode rows only, split-KV (the wrapper splits by itself for so small a batch)
    out_dec = torch.empty_like(q[3:])
    with record_launches() as specs:
        unified_attention(q[3:], k_cache, v_cache, out_dec, cu[1:] - 3, 1, used[1:], 100, 0.125, True,
                          (-1, -1), tables[1:], 0.0)  # fmt: skip
    assert "unified_attention_split_reduce" in [spec.name for spec in specs]
    torch.testing.assert_close(out_dec.double(), ref[3:], atol=1e-2, rtol=0)


def _banded_reference(q, keys, values, ctx, window, scale):
    """Causal sliding-window attention of one sequence in float64, in row chunks (an 8K x 8K
    score matrix would take 0.5 GiB)."""
    q_len, heads, _ = q.shape
    out = torch.empty(q_len, heads, q.shape[-1], dtype=torch.float64)
    for start in range(0, q_len, 512):
        rows = torch.arange(start, min(start + 512, q_len)) + ctx
        k_lo = max(int(rows[0]) - window + 1, 0)
        k_pos = torch.arange(k_lo, int(rows[-1]) + 1)
        visible = (k_pos[None, :] <= rows[:, None]) & (rows[:, None] - k_pos[None, :] < window)
        for h in range(heads):
            scores = scale * q[rows - ctx, h].double() @ keys[k_pos].double().T
            probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=1)
            out[rows - ctx, h] = probs @ values[k_pos].double()
    return out


@pytest.mark.slow
def test_8k_token_prefill_chunk_with_a_decode_row() -> None:
    """An 8,192-token chunked-prefill chunk (context 256, sliding window 128 to keep the
    interpreter's work linear) batched with one decode row."""
    q_len, ctx, window, d, bs = 8192, 256, 128, 64, 64
    c = make_paged_case([q_len, 1], [ctx + q_len, 50], 1, 1, d, bs, torch.float16, seed=3)
    start = time.perf_counter()
    out = torch.empty_like(c["q"])
    unified_attention(
        c["q"], c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], q_len, c["seqused_k"], ctx + q_len,
        d**-0.5, True, (window - 1, 0), c["block_table"], 0.0,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    blocks = c["block_table"][0, : -(-(ctx + q_len) // bs)].long()
    keys = c["k_cache"][blocks].reshape(-1, d)
    values = c["v_cache"][blocks].reshape(-1, d)
    ref = _banded_reference(c["q"][:q_len], keys, values, ctx, window, d**-0.5)
    torch.testing.assert_close(out[:q_len].double(), ref, atol=1e-2, rtol=0)
    ref_dec = unified_attention_reference(
        c["q"][q_len:], c["k_cache"], c["v_cache"], torch.tensor([0, 1], dtype=torch.int32),
        c["seqused_k"][1:], d**-0.5, True, (window - 1, 0), c["block_table"][1:], 0.0,
    )  # fmt: skip
    torch.testing.assert_close(out[q_len:].double(), ref_dec, atol=1e-2, rtol=0)
    print(f"8K-token prefill chunk on the interpreter (this 2-core CPU machine): {elapsed:.1f} s")


@pytest.mark.parametrize("kv_heads", [8, 1], ids=["gqa16", "mqa"])
def test_128_query_heads(kv_heads: int) -> None:
    c = make_paged_case([3, 1], [40, 70], 128, kv_heads, 64, 16, torch.float16, extra_blocks=1, seed=4)
    out = torch.empty_like(c["q"])
    unified_attention(
        c["q"], c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], 3, c["seqused_k"], 70,
        0.125, True, (-1, -1), c["block_table"], 0.0,
    )  # fmt: skip
    ref = unified_attention_reference(
        c["q"], c["k_cache"], c["v_cache"], c["cu_seqlens_q"], c["seqused_k"], 0.125, True, (-1, -1),
        c["block_table"], 0.0,
    )  # fmt: skip
    torch.testing.assert_close(out.double(), ref, atol=1e-2, rtol=0)


# ---------------------------------------------------------------------------------------------
# 64-bit address arithmetic, read from the lowered TTIR
# ---------------------------------------------------------------------------------------------

# lowered variant -> the pointer arguments whose per-block / per-token base offsets must be i64
WIDE_POINTERS = {
    "unified_attention[llama3_8b_prefill_fp16]": ("q_ptr", "k_ptr", "v_ptr", "out_ptr"),
    "unified_attention[qwen3_gqa8_decode_split_bf16]": (
        "q_ptr",
        "k_ptr",
        "v_ptr",
        "ws_acc_ptr",
        "ws_m_ptr",
        "ws_l_ptr",
    ),
    "unified_attention_split_reduce[qwen3_gqa8_decode_split_bf16]": (
        "out_ptr",
        "ws_acc_ptr",
        "ws_m_ptr",
        "ws_l_ptr",
    ),
    "reshape_and_cache[cache_llama3_8b_fp16]": ("key_ptr", "value_ptr", "kc_ptr", "vc_ptr"),
}


@pytest.fixture(scope="module")
def lowered_ttir() -> dict[str, tuple[dict, str]]:
    from vllm_ascend_triton.codegen.compile import variant_specs
    from vllm_ascend_triton.codegen.lower import LoweringRequest, lower_many

    wanted = {"llama3_8b_prefill_fp16", "qwen3_gqa8_decode_split_bf16", "cache_llama3_8b_fp16"}
    specs = [vs for vs in variant_specs("Ascend910B3", ["attention"]) if vs.variant.label in wanted]
    results = lower_many(
        [LoweringRequest.from_spec(vs.spec, "Ascend910B3", vs.label) for vs in specs], jobs=2
    )
    out = {}
    for vs, res in zip(specs, results, strict=True):
        assert res.ok, f"{vs.label}: {res.error}"
        out[vs.label] = (vs.spec.signature(), res.ttir)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kernel", sorted(WIDE_POINTERS))
def test_lowered_ir_addresses_caches_with_64_bit_offsets(lowered_ttir, kernel: str) -> None:
    """Every scalar `tt.addptr` on the cache, q, out and workspace pointers takes an i64 offset
    (a block id times the block stride, a token times the token stride), so element offsets past
    2^31 cannot wrap; only the in-tile vector offsets (< one block / one token row) are i32."""
    signature, ttir = lowered_ttir[kernel]
    arg_of = {name: f"%arg{i}" for i, name in enumerate(signature)}
    for name in WIDE_POINTERS[kernel]:
        uses = re.findall(rf"tt\.addptr {arg_of[name]}, %\S+ : !tt\.ptr<\w+>, (\w+)", ttir)
        assert uses, f"{kernel}: no scalar address computed from {name}"
        assert set(uses) == {"i64"}, f"{kernel}: {name} offset types {uses}"
    if kernel.startswith("unified_attention["):
        # the block id loaded from the table is widened before it is multiplied by the block stride
        bt_loads = re.findall(r"(%\d+) = tt\.load %\d+ : !tt\.ptr<i32>", ttir)
        widened = [v for v in bt_loads if re.search(rf"arith\.extsi {v} : i32 to i64", ttir)]
        assert widened, "no i32 metadata load is widened to i64"
