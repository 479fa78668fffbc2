"""reshape_and_cache and unified_attention under hostile input with input checks off
(VAT_CHECK_INPUTS=0): the defined results of the attention package docstring, nothing written
outside the outputs (canaries around every output) and nothing read outside the inputs (every
input is a view inside a larger buffer poisoned with NaN, or with wild block ids / lengths for
the metadata, so a stray read shows up in the result or as a crash).

Triton's interpreter dereferences raw addresses: a stray store corrupts the heap or kills the
process (FACTS.md). Every case that could do that runs in a child process (this file run as a
script), so such a failure fails its own test, not the suite. The NaN/inf cases only read inside
their tensors and run in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vllm_ascend_triton.kernels import reshape_and_cache, unified_attention
from vllm_ascend_triton.kernels.attention.reference import (
    make_paged_case,
    reshape_and_cache_reference,
    unified_attention_reference,
)
from vllm_ascend_triton.runtime import launch
from vllm_ascend_triton.runtime.launch import CHECK_ENV

CANARY = 7777.0
WILD = 1 << 30  # what poisoned metadata memory holds: a block id / length far outside anything
NAN = float("nan")


def checks_off():
    return launch.input_checks(False)


def inside(t: torch.Tensor, fill: float) -> tuple[torch.Tensor, torch.Tensor, tuple[slice, ...]]:
    """(big, view, where): `t`'s values in a strided view inside a larger buffer filled with `fill`:
    one slice before and after along dim 0, one more entry on the middle dims, 8 on the last."""
    if t.dim() == 1:
        shape, where = [t.shape[0] + 2], (slice(1, t.shape[0] + 1),)
    else:
        shape = [t.shape[0] + 2] + [n + 1 for n in t.shape[1:-1]] + [t.shape[-1] + 8]
        where = (slice(1, t.shape[0] + 1),) + tuple(slice(0, n) for n in t.shape[1:])
    big = torch.full(shape, fill, dtype=t.dtype)
    view = big[where]
    view.copy_(t)
    return big, view, where


def assert_outside_untouched(big: torch.Tensor, where: tuple[slice, ...], fill: float) -> None:
    region = torch.zeros_like(big, dtype=torch.bool)
    region[where] = True
    assert bool((big[~region] == fill).all()), "a write landed outside the output tensor"


def finite_cache(c: dict) -> dict:
    """make_paged_case marks unowned cache rows NaN; hostile metadata makes some of them keys, so
    give them finite values here (stray reads are caught by the poisoned margins instead)."""
    g = torch.Generator().manual_seed(99)
    for name in ("k_cache", "v_cache"):
        cache = c[name]
        fresh = torch.randn(cache.shape, generator=g).to(cache.dtype)
        c[name] = torch.where(torch.isnan(cache), fresh, cache)
    return c


def run_attention(c: dict, *, seqused=None, block_table=None, cu=None, splits=None, window=(-1, -1),
                  sinks=None, causal=True, with_reference=True):  # fmt: skip
    """unified_attention with checks off on poisoned views of every input and a canary-framed
    `out`; returns (out view as float64, reference or None)."""
    seqused = c["seqused_k"] if seqused is None else seqused
    block_table = c["block_table"] if block_table is None else block_table
    cu = c["cu_seqlens_q"] if cu is None else cu
    _, q, _ = inside(c["q"], NAN)
    _, k_cache, _ = inside(c["k_cache"], NAN)
    _, v_cache, _ = inside(c["v_cache"], NAN)
    _, bt, _ = inside(block_table, WILD)
    _, cu_v, _ = inside(cu, WILD)
    _, used_v, _ = inside(seqused, WILD)
    out_big, out, out_where = inside(torch.full_like(c["q"], CANARY), CANARY)
    q_lens = (cu[1:] - cu[:-1]).tolist()
    scale = c["q"].shape[-1] ** -0.5
    with checks_off():
        unified_attention(
            q, k_cache, v_cache, out, cu_v, max(q_lens), used_v, max(max(seqused.tolist()), 0),
            scale, causal, window, bt, 0.0, sinks=sinks, num_kv_splits=splits,
        )  # fmt: skip
    assert_outside_untouched(out_big, out_where, CANARY)
    if not with_reference:
        return out.double(), None
    ref = unified_attention_reference(
        c["q"], c["k_cache"], c["v_cache"], cu, seqused, scale, causal, window, block_table, 0.0, None, sinks
    )
    return out.double(), ref


def paged(q_lens, kv_lens, hq=4, hkv=2, d=64, bs=16, dtype=torch.float32, extra_blocks=1, seed=0):
    return finite_cache(make_paged_case(q_lens, kv_lens, hq, hkv, d, bs, dtype, extra_blocks=extra_blocks,
                                        seed=seed))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Cases that could write or read far outside a tensor on the old kernels: child processes
# ---------------------------------------------------------------------------------------------


def case_ua_block_id_just_outside_cache() -> None:
    """Block ids num_blocks and -1: the tile is masked out of the softmax (old kernels read the
    poisoned blocks next to the cache)."""
    c = paged([2, 1, 3], [40, 33, 20])
    num_blocks = c["k_cache"].shape[0]
    bt = c["block_table"].clone()
    bt[0, 1] = num_blocks
    bt[1, 0] = -1
    for splits in (None, 3):
        out, ref = run_attention(c, block_table=bt, splits=splits)
        assert not torch.isnan(ref[:6]).any()
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def case_ua_block_id_far_outside_cache() -> None:
    """Block ids 2^30 and -10^6: masked, never addressed (old kernels read wild addresses)."""
    c = paged([2, 1, 3], [40, 33, 20])
    bt = c["block_table"].clone()
    bt[2, 0] = WILD
    bt[0, 2] = -(10**6)
    for splits in (None, 2):
        out, ref = run_attention(c, block_table=bt, splits=splits)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def case_ua_seqused_past_block_table() -> None:
    """seqused_k beyond block_table.shape[1] * block_size: keys past the table are never looked up
    (old kernels read the table past its row: the poisoned WILD ids next to it)."""
    c = paged([2, 1, 1], [40, 33, 20], extra_blocks=0)
    width, bs = c["block_table"].shape[1], 16
    used = c["seqused_k"].clone()
    used[0] = width * bs + 20  # a prefill chunk whose context runs past the table
    used[1] = width * bs * 3  # a decode row whose context runs past the table
    for splits in (None, 2):
        out, ref = run_attention(c, seqused=used, splits=splits)
        assert not torch.isnan(ref).any()
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def case_ua_seqused_below_query_length() -> None:
    """seqused_k < the query length (negative context): rows with no visible key get 0."""
    c = paged([3, 1, 2], [20, 9, 17])
    used = torch.tensor([1, 0, 17], dtype=torch.int32)
    out, ref = run_attention(c, seqused=used)
    assert bool((ref[[0, 1, 3]] == 0).all())  # positions -2, -1 and the 0-key sequence
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def case_ua_cu_seqlens_past_q_rows() -> None:
    """cu_seqlens_q ending past q's rows: rows of q/out past the end are never touched."""
    c = paged([2, 1, 1], [10, 20, 8])
    cu = torch.tensor([0, 2, 3, 9], dtype=torch.int32)  # q has 4 rows; the last sequence claims 6
    out, _ = run_attention(c, cu=cu, with_reference=False)
    ref = unified_attention_reference(
        c["q"], c["k_cache"], c["v_cache"], c["cu_seqlens_q"], c["seqused_k"], 64**-0.5, True, (-1, -1),
        c["block_table"], 0.0,
    )  # fmt: skip
    torch.testing.assert_close(out[:3], ref[:3], atol=1e-4, rtol=0)  # the well-formed sequences


def _cache_case(slots: list[int], dtype=torch.float16):
    g = torch.Generator().manual_seed(5)
    num_blocks, bs, heads, d = 4, 16, 2, 64
    kv = torch.randn(num_blocks, 2, bs, heads, d, generator=g).to(dtype)
    expect = kv.clone()
    key = torch.randn(len(slots), heads, d, generator=g).to(dtype)
    value = torch.randn(len(slots), heads, d, generator=g).to(dtype)
    slot_t = torch.tensor(slots, dtype=torch.int64)
    reshape_and_cache_reference(key, value, expect[:, 0], expect[:, 1], slot_t)
    # the caches as views inside canary-framed buffers; the inputs inside NaN-poisoned ones
    k_big, kc, k_where = inside(kv[:, 0], CANARY)
    v_big, vc, v_where = inside(kv[:, 1], CANARY)
    _, key_v, _ = inside(key, NAN)
    _, value_v, _ = inside(value, NAN)
    _, slot_v, _ = inside(slot_t, WILD)
    with checks_off():
        reshape_and_cache(key_v, value_v, kc, vc, slot_v)
    assert_outside_untouched(k_big, k_where, CANARY)
    assert_outside_untouched(v_big, v_where, CANARY)
    assert torch.equal(kc, expect[:, 0]) and torch.equal(vc, expect[:, 1])
    return num_blocks * bs


def case_rc_slot_just_past_cache() -> None:
    """Slots num_slots and num_slots + 15 (the block after the cache): skipped."""
    _cache_case([3, 64, 5, 79, 63])


def case_rc_slot_far_past_cache() -> None:
    """Slots 10^9 and 2^40: skipped (old kernels store to wild addresses)."""
    _cache_case([1, 10**9, 2, 1 << 40, 0])


def case_rc_slot_below_minus_one() -> None:
    """Slots -2 and -10^6: skipped like -1."""
    _cache_case([-2, 7, -(10**6), 8])


CHILD_CASES = {
    name.removeprefix("case_"): fn for name, fn in dict(globals()).items() if name.startswith("case_")
}


@pytest.mark.parametrize("name", sorted(CHILD_CASES))
def test_hostile_metadata_with_checks_off(name: str) -> None:
    """Runs the case in a child process: a crash there is this test's failure only."""
    code = (
        "import runpy, sys; from vllm_ascend_triton.runtime.backend import select_backend; "
        "select_backend('interpreter'); "
        f"mod = runpy.run_path({__file__!r}); mod['CHILD_CASES'][{name!r}](); print('CASE-OK')"
    )
    env = {**os.environ, CHECK_ENV: "0", "VAT_BACKEND": "interpreter"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "CASE-OK" in proc.stdout, (
        f"case {name} failed in its child process (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


# ---------------------------------------------------------------------------------------------
# NaN / inf data (reads stay inside the tensors): in-process
# ---------------------------------------------------------------------------------------------


def test_nan_and_inf_in_q_poison_only_their_own_rows() -> None:
    c = paged([3, 1, 2], [20, 33, 9])
    clean_out, clean_ref = run_attention(c)
    torch.testing.assert_close(clean_out, clean_ref, atol=1e-4, rtol=0)
    c["q"] = c["q"].clone()
    c["q"][1, 2, 5] = NAN
    c["q"][4, 0, 0] = float("inf")
    out, _ = run_attention(c)
    keep = torch.ones(out.shape[:2], dtype=torch.bool)
    keep[1, 2] = keep[4, 0] = False
    torch.testing.assert_close(out[keep], clean_ref[keep], atol=1e-4, rtol=0)


def test_nan_in_a_key_reaches_only_rows_that_see_it() -> None:
    c = paged([4, 1], [20, 33], hq=4, hkv=2)
    c["k_cache"] = c["k_cache"].clone()
    blk = int(c["block_table"][0, 1])
    c["k_cache"][blk, 1, 0, 3] = NAN  # key 17 of sequence 0, KV head 0 (query heads 0, 1)
    out, ref = run_attention(c)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0, equal_nan=True)
    # sequence 0: positions 16..19; key 17 is seen by tokens 1..3 of heads 0 and 1 only
    expect_nan = torch.zeros(out.shape[:2], dtype=torch.bool)
    expect_nan[1:4, 0:2] = True
    assert torch.equal(torch.isnan(out).any(dim=-1), expect_nan)


def test_nan_and_inf_in_values_outside_the_window_do_not_reach_decode_rows() -> None:
    """Decode row at position 39 with window 4 sees keys 36..39; keys 33 (same KV tile) and 30
    hold NaN / inf values. The old kernel loaded every key < seqused_k of the tile (0 * NaN)."""
    c = paged([1, 1], [40, 40], hq=2, hkv=1, bs=16)
    c["v_cache"] = c["v_cache"].clone()
    blk = int(c["block_table"][0, 2])
    c["v_cache"][blk, 1, 0, 7] = NAN  # key 33 of sequence 0
    c["v_cache"][int(c["block_table"][0, 1]), 14, 0, 0] = float("inf")  # key 30
    for splits in (None, 2):
        out, ref = run_attention(c, window=(3, 0), splits=splits)
        assert not torch.isnan(ref).any()
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_nan_value_of_a_visible_key_poisons_only_its_sequence() -> None:
    c = paged([1, 3, 1], [40, 12, 9], hq=2, hkv=1)
    c["v_cache"] = c["v_cache"].clone()
    c["v_cache"][int(c["block_table"][0, 0]), 3, 0, 0] = NAN  # key 3 of sequence 0: seen by its row
    out, ref = run_attention(c)
    assert torch.isnan(out[0]).any()
    torch.testing.assert_close(out[1:], ref[1:], atol=1e-4, rtol=0)


def test_sinks_nan_poisons_its_head_and_minus_inf_is_no_sink() -> None:
    c = paged([2, 1], [20, 33], hq=4, hkv=2)
    sinks = torch.tensor([0.5, NAN, -float("inf"), 1.0])
    for splits in (None, 2):
        out, ref = run_attention(c, sinks=sinks, splits=splits)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0, equal_nan=True)
        assert torch.isnan(out[:, 1]).all() and not torch.isnan(out[:, [0, 2, 3]]).any()
    no_sink_out, _ = run_attention(c)
    torch.testing.assert_close(out[:, 2], no_sink_out[:, 2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_reshape_and_cache_copies_nan_and_inf_as_they_are(dtype) -> None:
    g = torch.Generator().manual_seed(2)
    kv = torch.randn(3, 2, 16, 2, 64, generator=g).to(dtype)
    key = torch.randn(4, 2, 64, generator=g).to(dtype)
    value = torch.randn(4, 2, 64, generator=g).to(dtype)
    key[1, 0, 3], key[2, 1, 0], value[0, 1, 63] = NAN, float("inf"), -float("inf")
    slots = torch.tensor([0, 17, 47, -1])
    expect = kv.clone()
    reshape_and_cache_reference(key, value, expect[:, 0], expect[:, 1], slots)
    k_big, kc, k_where = inside(kv[:, 0], CANARY)
    v_big, vc, v_where = inside(kv[:, 1], CANARY)
    with checks_off():
        reshape_and_cache(key, value, kc, vc, slots)
    assert_outside_untouched(k_big, k_where, CANARY)
    assert_outside_untouched(v_big, v_where, CANARY)
    torch.testing.assert_close(kc, expect[:, 0], atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(vc, expect[:, 1], atol=0, rtol=0, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# The same data with checks on: clear errors
# ---------------------------------------------------------------------------------------------


def test_hostile_metadata_raises_with_checks_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "INPUT_CHECKS", True)
    c = paged([2, 1], [40, 20], extra_blocks=0)
    args = dict(
        q=c["q"], k_cache=c["k_cache"], v_cache=c["v_cache"], out=torch.zeros_like(c["q"]),
        cu_seqlens_q=c["cu_seqlens_q"], max_seqlen_q=2, seqused_k=c["seqused_k"], max_seqlen_k=40,
        softmax_scale=0.125, causal=True, window_size=(-1, -1), block_table=c["block_table"], softcap=0.0,
    )  # fmt: skip
    bt = c["block_table"].clone()
    bt[0, 1] = c["k_cache"].shape[0]
    with pytest.raises(ValueError, match="block_table entries"):
        unified_attention(**{**args, "block_table": bt})
    used = torch.tensor([40, 16 * c["block_table"].shape[1] + 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="block_table has"):
        unified_attention(**{**args, "seqused_k": used, "max_seqlen_k": int(used.max())})
    kv = torch.zeros(2, 16, 1, 64)
    with pytest.raises(ValueError, match="slot_mapping values"):
        reshape_and_cache(torch.zeros(2, 1, 64), torch.zeros(2, 1, 64), kv, kv.clone(), torch.tensor([0, 32]))
