"""MLA kernels under hostile input with input checks off (VAT_CHECK_INPUTS=0): the defined results
of the mla package docstring, nothing written outside the outputs (canaries around every output)
and nothing read outside the inputs (inputs are views inside larger buffers poisoned with NaN, or
with wild ids / lengths for the metadata, so a stray read shows up in the result or as a crash).

The interpreter dereferences raw addresses (FACTS.md): each case that could store or load far
outside a tensor runs in a child process (this file as a script), so a crash fails only that test.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch

from vllm_ascend_triton.kernels import concat_and_cache_mla, mla_decode, mla_prefill
from vllm_ascend_triton.kernels.mla.reference import (
    concat_and_cache_mla_reference,
    make_latent_case,
    mla_decode_reference,
    mla_prefill_reference,
)
from vllm_ascend_triton.runtime.launch import CHECK_ENV

CANARY = 7777.0
WILD = 1 << 30
NAN = float("nan")
LORA, ROPE, BS, HEADS = 32, 16, 16, 3


@contextlib.contextmanager
def checks(enabled: bool):
    """Input checks on/off inside the block: the runtime's switch where it has one (it reads
    VAT_CHECK_INPUTS once per process), else the environment variable it reads per call."""
    from vllm_ascend_triton.runtime import launch

    switch = getattr(launch, "input_checks", None)
    old = os.environ.get(CHECK_ENV)
    os.environ[CHECK_ENV] = "1" if enabled else "0"
    try:
        with switch(enabled) if switch is not None else contextlib.nullcontext():
            yield
    finally:
        if old is None:
            os.environ.pop(CHECK_ENV, None)
        else:
            os.environ[CHECK_ENV] = old


def checks_off():
    return checks(False)


def inside(t: torch.Tensor, fill: float):
    """(big, view, where): `t` as a strided view inside a larger buffer filled with `fill`."""
    if t.dim() == 1:
        shape, where = [t.shape[0] + 2], (slice(1, t.shape[0] + 1),)
    else:
        shape = [t.shape[0] + 2] + [n + 1 for n in t.shape[1:-1]] + [t.shape[-1] + 8]
        where = (slice(1, t.shape[0] + 1),) + tuple(slice(0, n) for n in t.shape[1:])
    big = torch.full(shape, fill, dtype=t.dtype)
    view = big[where]
    view.copy_(t)
    return big, view, where


def untouched_outside(big: torch.Tensor, where, fill: float) -> None:
    region = torch.zeros_like(big, dtype=torch.bool)
    region[where] = True
    assert bool((big[~region] == fill).all()), "a write landed outside the output tensor"


def run_decode(c, *, seq_lens=None, block_table=None, splits=None, query_len=1):
    seq_lens = c["seq_lens"] if seq_lens is None else seq_lens
    block_table = c["block_table"] if block_table is None else block_table
    _, q, _ = inside(c["q"], NAN)
    cache_big = torch.full((c["kv_cache"].shape[0] + 2, BS, LORA + ROPE), NAN)  # poisoned blocks around
    cache_big[1:-1] = c["kv_cache"]
    cache = cache_big[1:-1]
    _, bt, _ = inside(block_table, WILD)
    _, lens, _ = inside(seq_lens, WILD)
    rows = c["q"].shape[0]
    out_big, out, out_where = inside(torch.full((rows, HEADS, LORA), CANARY), CANARY)
    lse_big = torch.full((rows + 2, HEADS), CANARY)
    lse = lse_big[1:-1]
    with checks_off():
        mla_decode(q, cache, out, bt, lens, max(int(seq_lens.max()), 0), 0.1, LORA,
                   query_len=query_len, lse=lse, num_kv_splits=splits)  # fmt: skip
    untouched_outside(out_big, out_where, CANARY)
    assert bool((lse_big[[0, -1]] == CANARY).all())
    ref, ref_lse = mla_decode_reference(c["q"], c["kv_cache"], block_table, seq_lens, 0.1, LORA, query_len)
    return out.double(), lse.double(), ref, ref_lse


def case_decode_block_ids_outside_cache() -> None:
    c = make_latent_case([40, 33], HEADS, LORA, ROPE, BS, torch.float32)
    n = c["kv_cache"].shape[0]
    for bad in ((n, -1), (WILD, -(10**6))):
        bt = c["block_table"].clone()
        bt[0, 1], bt[1, 0] = bad
        for splits in (None, 3):
            out, lse, ref, ref_lse = run_decode(c, block_table=bt, splits=splits)
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
            torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=0)


def case_decode_seq_lens_past_block_table_and_negative() -> None:
    c = make_latent_case([40, 9, 20], HEADS, LORA, ROPE, BS, torch.float32)
    width = c["block_table"].shape[1]
    lens = torch.tensor([width * BS * 5, -7, 20], dtype=torch.int32)
    bt = c["block_table"].clone()
    bt[bt < 0] = 0  # the reference reads in-table columns only; the kernel must too
    for splits in (None, 2):
        out, lse, ref, ref_lse = run_decode(c, seq_lens=lens, block_table=bt, splits=splits)
        assert bool((out[1] == 0).all()) and bool(torch.isinf(lse[1]).all())  # no key: 0 / -inf
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def case_decode_spec_rows_with_short_context() -> None:
    """seq_lens < query_len: rows before the first key see nothing (0 / -inf)."""
    c = make_latent_case([2, 30], HEADS, LORA, ROPE, BS, torch.float32, query_len=4)
    lens = torch.tensor([2, 30], dtype=torch.int32)
    out, _, ref, _ = run_decode(c, seq_lens=lens, query_len=4)
    assert bool((out[:2] == 0).all())
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def _cache_case(slots: list[int]) -> None:
    g = torch.Generator().manual_seed(5)
    cache = torch.randn(4, BS, LORA + ROPE, generator=g)
    expect = cache.clone()
    kv_c, k_pe = torch.randn(len(slots), LORA, generator=g), torch.randn(len(slots), 1, ROPE, generator=g)
    slot_t = torch.tensor(slots, dtype=torch.int64)
    concat_and_cache_mla_reference(kv_c, k_pe, expect, slot_t)
    c_big, c_view, c_where = inside(cache, CANARY)
    _, kvc_v, _ = inside(kv_c, NAN)
    _, kpe_v, _ = inside(k_pe, NAN)
    _, slot_v, _ = inside(slot_t, WILD)
    with checks_off():
        concat_and_cache_mla(kvc_v, kpe_v, c_view, slot_v)
    untouched_outside(c_big, c_where, CANARY)
    assert torch.equal(c_view, expect)


def case_cache_slots_past_and_below() -> None:
    _cache_case([3, 64, 5, 79, 63, 10**9, 1 << 40, -2, -(10**6), 0])


def case_prefill_cu_seqlens_past_tensors() -> None:
    """cu_seqlens claiming more rows than q / k hold: nothing outside is touched and the
    well-formed sequence is exact."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(5, 2, 24, generator=g),
        torch.randn(7, 2, 24, generator=g),
        torch.randn(7, 2, 16, generator=g),
    )
    _, qv, _ = inside(q, NAN)
    _, kv, _ = inside(k, NAN)
    _, vv, _ = inside(v, NAN)
    out_big, out, where = inside(torch.full((5, 2, 16), CANARY), CANARY)
    lse_big = torch.full((2, 5 + 4), CANARY)
    lse = lse_big[:, 2:7]
    for causal in (True, False):
        cq = torch.tensor([0, 2, 2 + WILD], dtype=torch.int32)
        ck = torch.tensor([0, 3, 3 + WILD], dtype=torch.int32)
        with checks_off():
            mla_prefill(qv, kv, vv, out, cq, ck, 3, 4, 0.2, causal, lse=lse)
        untouched_outside(out_big, where, CANARY)
        assert bool((lse_big[:, :2] == CANARY).all()) and bool((lse_big[:, 7:] == CANARY).all())
        ref, _ = mla_prefill_reference(
            q[:2], k[:3], v[:3], torch.tensor([0, 2]), torch.tensor([0, 3]), 0.2, causal
        )
        torch.testing.assert_close(out[:2].double(), ref, atol=1e-5, rtol=0)


CHILD_CASES = {n.removeprefix("case_"): fn for n, fn in dict(globals()).items() if n.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CHILD_CASES))
def test_hostile_metadata_with_checks_off(name: str) -> None:
    code = (
        "import runpy; from vllm_ascend_triton.runtime.backend import select_backend; "
        "select_backend('interpreter'); "
        f"mod = runpy.run_path({__file__!r}); mod['CHILD_CASES'][{name!r}](); print('CASE-OK')"
    )
    env = {**os.environ, CHECK_ENV: "0", "VAT_BACKEND": "interpreter"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "CASE-OK" in proc.stdout, (
        f"case {name} failed in its child process (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def test_nan_in_q_poisons_only_its_row_and_nan_in_a_key_only_rows_that_see_it() -> None:
    c = make_latent_case([20, 33], HEADS, LORA, ROPE, BS, torch.float32, query_len=2)
    clean, _, _, _ = run_decode(c, query_len=2)
    c["q"] = c["q"].clone()
    c["q"][1, 2, 5] = NAN
    out, _, _, _ = run_decode(c, query_len=2)
    keep = torch.ones(out.shape[:2], dtype=torch.bool)
    keep[1, 2] = False
    assert torch.isnan(out[1, 2]).all()
    torch.testing.assert_close(out[keep], clean[keep], atol=1e-6, rtol=0)
    # A NaN in a cached key: decode rows (one token per sequence) that see it get NaN, others
    # not; with several tokens per sequence the value column reaches the sequence's other rows
    # of the tile too (one P.V product serves the tile: documented).
    c = make_latent_case([20, 33], HEADS, LORA, ROPE, BS, torch.float32)
    lens = torch.tensor([19, 33], dtype=torch.int32)  # key 19 of sequence 0 exists but is unseen
    blk = int(c["block_table"][0, 1])
    c["kv_cache"][blk, 3, 7] = NAN
    for splits in (None, 2):
        out, _, ref, _ = run_decode(c, seq_lens=lens, splits=splits)
        assert not torch.isnan(out).any()
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        out, _, _, _ = run_decode(c, splits=splits)
        assert torch.isnan(out[0]).all() and not torch.isnan(out[1]).any()


def test_hostile_metadata_raises_with_checks_on() -> None:
    with checks(True):
        _raises_with_checks_on()


def _raises_with_checks_on() -> None:
    c = make_latent_case([40, 5], HEADS, LORA, ROPE, BS, torch.float32)
    bt = c["block_table"].clone()
    bt[0, 1] = c["kv_cache"].shape[0]
    out = torch.zeros(2, HEADS, LORA)
    with pytest.raises(ValueError, match="block_table entries"):
        mla_decode(c["q"], c["kv_cache"], out, bt, c["seq_lens"], 40, 0.1, LORA)
    with pytest.raises(ValueError, match="query_len"):
        mla_decode(c["q"][:2], c["kv_cache"], out, c["block_table"][:1], torch.tensor([1]), 40, 0.1, LORA,
                   query_len=2)  # fmt: skip
    with pytest.raises(ValueError, match="slot_mapping values"):
        concat_and_cache_mla(torch.zeros(1, LORA), torch.zeros(1, ROPE), c["kv_cache"], torch.tensor([-2]))
