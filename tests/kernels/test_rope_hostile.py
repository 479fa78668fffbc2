"""Rope under hostile input with the data checks off: defined results, no access outside the
tensors (canaries around every output, poisoned memory around every input), and property tests
against the reference with checks on (clear errors) and off (defined results)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_ascend_triton.kernels import mrope_rotary_embedding, rotary_embedding
from vllm_ascend_triton.kernels.limits import ROPE_MAX_ROTARY_DIM
from vllm_ascend_triton.kernels.rope.reference import mrope_reference, rope_reference
from vllm_ascend_triton.runtime import launch

CANARY = 12345.0
PAD = 16  # elements of canary / poison on each side of every tensor


def _inside(shape: tuple[int, ...], fill: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A contiguous tensor of `shape` that is a view into a buffer with PAD `fill` elements each side."""
    n = 1
    for d in shape:
        n *= d
    backing = torch.full((n + 2 * PAD,), fill, dtype=dtype)
    return backing, backing[PAD : PAD + n].view(shape)


def _cache(rot_dim: int, max_pos: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    backing, cache = _inside((max_pos, rot_dim), float("nan"), dtype)  # poison around the cache
    inv = 1.0 / (10000.0 ** (torch.arange(0, rot_dim, 2, dtype=torch.float) / rot_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float), inv)
    cache.copy_(torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype))
    return backing, cache


def _expected(positions, q0, k0, head_size, cache, neox):
    """Reference on the valid tokens; invalid tokens unchanged."""
    valid = (positions >= 0) & (positions < cache.shape[0])
    eq, ek = q0.clone(), k0.clone()
    if valid.any():
        rq, rk = rope_reference(positions[valid], q0[valid], k0[valid], head_size, cache, neox)
        eq[valid], ek[valid] = rq, rk
    return eq, ek


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    tokens=st.integers(0, 5),
    heads=st.integers(1, 3),
    head_rot=st.sampled_from([(64, 64), (80, 32), (128, 64)]),
    neox=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    checks=st.booleans(),
    data=st.data(),
)
def test_rope_property(tokens, heads, head_rot, neox, dtype, checks, data):
    with pytest.MonkeyPatch.context() as mp:  # hypothesis runs many examples per test call
        mp.setattr(launch, "INPUT_CHECKS", checks)
        _rope_property_case(tokens, heads, head_rot, neox, dtype, checks, data)


def _rope_property_case(tokens, heads, head_rot, neox, dtype, checks, data):
    head_size, rot_dim = head_rot
    max_pos = 32
    positions = torch.tensor(
        data.draw(st.lists(st.integers(-40, 70) | st.just(1 << 40), min_size=tokens, max_size=tokens)),
        dtype=torch.long,
    )
    qb, q = _inside((tokens, heads * head_size), CANARY, dtype)
    kb, k = _inside((tokens, head_size), CANARY, dtype)
    g = torch.Generator().manual_seed(tokens * 7 + heads)
    q.copy_(torch.randn(q.shape, generator=g).to(dtype))
    k.copy_(torch.randn(k.shape, generator=g).to(dtype))
    q0, k0 = q.clone(), k.clone()
    _, cache = _cache(rot_dim, max_pos, dtype)
    invalid = bool(((positions < 0) | (positions >= max_pos)).any())
    if checks and invalid:
        with pytest.raises(ValueError, match="positions"):
            rotary_embedding(positions, q, k, head_size, cache, neox)
        assert torch.equal(q, q0) and torch.equal(k, k0)  # refused before any launch
    else:
        rotary_embedding(positions, q, k, head_size, cache, neox)
        eq, ek = _expected(positions, q0, k0, head_size, cache, neox)
        tol = 1e-5 if dtype == torch.float32 else 1e-3
        torch.testing.assert_close(q, eq, atol=tol, rtol=0)
        torch.testing.assert_close(k, ek, atol=tol, rtol=0)
    for backing in (qb, kb):
        assert torch.all(backing[:PAD] == CANARY) and torch.all(backing[-PAD:] == CANARY)


def test_non_finite_data_stays_in_its_token(monkeypatch):
    monkeypatch.setattr(launch, "INPUT_CHECKS", False)
    head_size, max_pos = 64, 16
    _, cache = _cache(head_size, max_pos, torch.float32)
    cache[3, 5] = float("nan")  # cos of pair 5 at position 3
    cache[4, 40] = float("inf")  # sin of pair 8 at position 4
    q = torch.randn(4, 2 * head_size)
    q[0, 7] = float("nan")
    k = torch.randn(4, head_size)
    k[1, 70 % head_size] = float("-inf")
    positions = torch.tensor([0, 1, 3, 4])
    q0, k0 = q.clone(), k.clone()
    rotary_embedding(positions, q, k, head_size, cache, True)
    eq, ek = rope_reference(positions, q0, k0, head_size, cache, True)
    torch.testing.assert_close(q, eq, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(k, ek, atol=1e-5, rtol=0, equal_nan=True)
    # Token 2's NaN cos touches only pair 5 (dims 5 and 37) of each head.
    nan_dims = torch.isnan(q[2].view(2, head_size)).any(0).nonzero().flatten().tolist()
    assert nan_dims == [5, 37]
    assert not torch.isnan(q[3]).all()


def test_mrope_hostile_positions_with_canaries(monkeypatch):
    monkeypatch.setattr(launch, "INPUT_CHECKS", False)
    _, cache = _cache(64, 16, torch.float32)
    positions = torch.tensor([[1, -5, 2, 3], [1, 2, 1 << 35, 3], [1, 2, 2, 16]])
    qb, q = _inside((4, 64), CANARY, torch.float32)
    q.copy_(torch.randn(4, 64))
    q0 = q.clone()
    mrope_rotary_embedding(positions, q, None, 64, cache, True, [8, 12, 12])
    eq, _ = mrope_reference(positions[:, :1], q0[:1], None, 64, cache, True, [8, 12, 12])
    torch.testing.assert_close(q[:1], eq, atol=1e-5, rtol=0)
    assert torch.equal(q[1:], q0[1:])  # any of T/H/W outside the cache: unchanged
    assert torch.all(qb[:PAD] == CANARY) and torch.all(qb[-PAD:] == CANARY)


def test_rotary_dim_limit_is_a_clear_error():
    rot = ROPE_MAX_ROTARY_DIM + 2
    with pytest.raises(ValueError, match=str(ROPE_MAX_ROTARY_DIM)):
        rotary_embedding(
            torch.zeros(1, dtype=torch.long), torch.zeros(1, rot), None, rot, torch.zeros(4, rot), True
        )
