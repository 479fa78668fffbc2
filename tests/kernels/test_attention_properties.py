"""Property tests (hypothesis, derandomized so CI is reproducible) of reshape_and_cache and
unified_attention against the torch references, over shapes, strided views, dtypes and hostile
values: with input checks on, hostile metadata is a clear ValueError; with checks off, the result
is the documented one (the references implement the contract), nothing outside the outputs is
written (canaries) and nothing outside the inputs is read (NaN-poisoned margins).

Small shapes: every example runs in Triton's interpreter. The examples include metadata that
made the previous kernels store to wild addresses, which under the interpreter corrupts or kills
the process (FACTS.md): each property runs in a child process (this file run through runpy), so
a crash fails that property's test only.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_ascend_triton.kernels import reshape_and_cache, unified_attention
from vllm_ascend_triton.kernels.attention.reference import (
    make_paged_case,
    reshape_and_cache_reference,
    unified_attention_reference,
)
from vllm_ascend_triton.runtime import launch

CANARY = 7777.0
NAN = float("nan")
SETTINGS = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def input_checks(on: bool):
    return launch.input_checks(on)


def inside(t: torch.Tensor, fill: float):
    """(big, view, where): t's values in a strided view framed by `fill` on every side."""
    if t.dim() == 1:
        shape, where = [t.shape[0] + 2], (slice(1, t.shape[0] + 1),)
    else:
        shape = [t.shape[0] + 2] + [n + 1 for n in t.shape[1:-1]] + [t.shape[-1] + 8]
        where = (slice(1, t.shape[0] + 1),) + tuple(slice(0, n) for n in t.shape[1:])
    big = torch.full(shape, fill, dtype=t.dtype)
    big[where].copy_(t)
    return big, big[where], where


def outside_untouched(big: torch.Tensor, where, fill: float) -> bool:
    region = torch.zeros_like(big, dtype=torch.bool)
    region[where] = True
    return bool((big[~region] == fill).all())


@SETTINGS
@given(
    num_blocks=st.integers(1, 4),
    block_size=st.sampled_from([1, 3, 16]),
    heads=st.integers(1, 3),
    head_size=st.sampled_from([8, 40, 64, 96]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    key_fp32=st.booleans(),  # activations in fp32 written into the cache's dtype
    checks=st.booleans(),
    data=st.data(),
)
def prop_reshape_and_cache(num_blocks, block_size, heads, head_size, dtype, key_fp32, checks, data):
    num_slots = num_blocks * block_size
    tokens = data.draw(st.integers(0, min(num_slots, 6)), label="tokens")
    slots = data.draw(st.permutations(range(num_slots)), label="slots")[:tokens]
    hostile_values = [-2, -(10**6), num_slots, num_slots + block_size, 1 << 40]
    for t in range(tokens):
        kind = data.draw(st.sampled_from(["valid", "skip", "hostile"]), label=f"slot {t}")
        if kind == "skip":
            slots[t] = -1
        elif kind == "hostile":
            slots[t] = data.draw(st.sampled_from(hostile_values), label=f"hostile slot {t}")
    hostile = any(s < -1 or s >= num_slots for s in slots)
    g = torch.Generator().manual_seed(len(slots) + head_size)
    in_dtype = torch.float32 if key_fp32 else dtype
    key = torch.randn(tokens + 1, heads, head_size, generator=g).to(in_dtype)  # one padding row
    value = torch.randn(tokens + 1, heads, head_size, generator=g).to(in_dtype)
    if tokens and data.draw(st.booleans(), label="non-finite data"):
        key[0, 0, 0], value[tokens - 1, heads - 1, head_size - 1] = NAN, float("inf")
    kv = torch.randn(num_blocks, 2, block_size, heads, head_size, generator=g).to(dtype)
    slot_t = torch.tensor(slots, dtype=torch.int64)
    expect = kv.clone()
    reshape_and_cache_reference(key, value, expect[:, 0], expect[:, 1], slot_t)
    k_big, kc, k_where = inside(kv[:, 0], CANARY)
    v_big, vc, v_where = inside(kv[:, 1], CANARY)
    _, key_v, _ = inside(key, NAN)
    _, value_v, _ = inside(value, NAN)
    with input_checks(checks):
        if checks and hostile:
            with pytest.raises(ValueError, match="slot_mapping values"):
                reshape_and_cache(key_v, value_v, kc, vc, slot_t)
            return
        reshape_and_cache(key_v, value_v, kc, vc, slot_t)
    assert outside_untouched(k_big, k_where, CANARY) and outside_untouched(v_big, v_where, CANARY)
    torch.testing.assert_close(kc, expect[:, 0], atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(vc, expect[:, 1], atol=0, rtol=0, equal_nan=True)


@SETTINGS
@given(
    q_lens=st.lists(st.integers(0, 3), min_size=1, max_size=3),
    extra=st.lists(st.integers(0, 40), min_size=3, max_size=3),
    kv_heads=st.integers(1, 2),
    qpk=st.integers(1, 3),
    head_size=st.sampled_from([16, 40, 64, 80]),
    block_size=st.sampled_from([16, 32]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    causal=st.booleans(),
    window=st.sampled_from([-1, 1, 7, 20]),
    softcap=st.sampled_from([0.0, 5.0]),
    sinks=st.booleans(),
    splits=st.sampled_from([None, 1, 3]),
    hostile=st.sampled_from(["none", "block_id", "seqused", "q_nan"]),
    checks=st.booleans(),
    data=st.data(),
)
def prop_unified_attention(q_lens, extra, kv_heads, qpk, head_size, block_size, dtype, causal,
                                    window, softcap, sinks, splits, hostile, checks, data):  # fmt: skip
    kv_lens = [q + e for q, e in zip(q_lens, extra, strict=False)]
    hq = kv_heads * qpk
    c = make_paged_case(q_lens, kv_lens, hq, kv_heads, head_size, block_size, dtype, extra_blocks=1,
                        seed=sum(kv_lens))  # fmt: skip
    g = torch.Generator().manual_seed(7)
    for name in ("k_cache", "v_cache"):  # hostile metadata can turn unowned (NaN) rows into keys
        fresh = torch.randn(c[name].shape, generator=g).to(dtype)
        c[name] = torch.where(torch.isnan(c[name]), fresh, c[name])
    table, used, q = c["block_table"].clone(), c["seqused_k"].clone(), c["q"].clone()
    num_blocks, width = c["k_cache"].shape[0], table.shape[1]
    owners = [s for s, n in enumerate(kv_lens) if n > 0]
    if hostile == "block_id" and owners:
        s = data.draw(st.sampled_from(owners), label="sequence")
        col = data.draw(st.integers(0, -(-kv_lens[s] // block_size) - 1), label="column")
        table[s, col] = data.draw(st.sampled_from([num_blocks, -1, 1 << 30]), label="block id")
    elif hostile == "seqused":
        s = data.draw(st.integers(0, len(q_lens) - 1), label="sequence")
        used[s] = width * block_size + data.draw(st.integers(1, 40), label="past the table")
    elif hostile == "q_nan" and q.shape[0]:
        q[data.draw(st.integers(0, q.shape[0] - 1), label="nan row"), hq - 1, 0] = NAN
    is_error = hostile in ("block_id", "seqused") and (hostile == "seqused" or bool(owners))
    sink_t = torch.randn(hq, generator=g) if sinks else None
    win = (window, 0) if window >= 0 else (-1, -1)
    scale = head_size**-0.5
    _, q_v, _ = inside(q, NAN)
    _, kc, _ = inside(c["k_cache"], NAN)
    _, vc, _ = inside(c["v_cache"], NAN)
    out_big, out, out_where = inside(torch.full_like(q, CANARY), CANARY)
    args = (q_v, kc, vc, out, c["cu_seqlens_q"], max(q_lens), used, int(used.max()), scale, causal, win,
            table, softcap)  # fmt: skip
    with input_checks(checks):
        if checks and is_error:
            with pytest.raises(ValueError, match="block_table"):
                unified_attention(*args, sinks=sink_t, num_kv_splits=splits)
            return
        unified_attention(*args, sinks=sink_t, num_kv_splits=splits)
    assert outside_untouched(out_big, out_where, CANARY)
    ref = unified_attention_reference(q, c["k_cache"], c["v_cache"], c["cu_seqlens_q"], used, scale, causal,
                                      win, table, softcap, None, sink_t)  # fmt: skip
    total = int(c["cu_seqlens_q"][-1])
    atol = 1e-4 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out[:total].double(), ref[:total], atol=atol, rtol=0, equal_nan=True)


PROPERTIES = {"reshape_and_cache": prop_reshape_and_cache, "unified_attention": prop_unified_attention}


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_property_in_child_process(name: str) -> None:
    code = (
        "from vllm_ascend_triton.runtime.backend import select_backend; select_backend('interpreter'); "
        f"import runpy; runpy.run_path({__file__!r})['PROPERTIES'][{name!r}](); print('PROPERTY-OK')"
    )
    env = {**os.environ, "VAT_BACKEND": "interpreter"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "PROPERTY-OK" in proc.stdout, (
        f"property {name} failed in its child process (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )
