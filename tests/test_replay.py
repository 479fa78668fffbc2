"""Graph-capture (replay) rules, tested the way a replay runs (docs/serving.md).

A captured graph replays the launches of one batch size with new tensor contents. Each test
records the launch specs of one call, overwrites the input tensors in place with other valid data
of the same shapes (other positions, slots, routing logits, sequence lengths, block tables),
re-launches the recorded specs unchanged, and compares the outputs with the reference for the new
data. A launch choice that depended on the old values (a grid, a split count, a constexpr, a
workspace size) would show up here as a wrong result.
"""

import pytest
import torch

from vllm_ascend_triton.kernels import (
    fused_experts,
    fused_topk,
    grouped_topk,
    moe_align_block_size,
    reshape_and_cache,
    rotary_embedding,
    unified_attention,
)
from vllm_ascend_triton.kernels.attention.reference import (
    make_paged_case,
    reshape_and_cache_reference,
    unified_attention_reference,
)
from vllm_ascend_triton.kernels.fused_moe.reference import fused_experts_ref
from vllm_ascend_triton.kernels.moe_routing.reference import grouped_topk_ref, moe_align_block_size_ref
from vllm_ascend_triton.kernels.rope.reference import rope_reference
from vllm_ascend_triton.runtime.launch import record_launches


def _record(call):
    """Run `call` once (as the capture run does) and return the launch specs it issued."""
    with record_launches() as specs:
        result = call()
    assert specs, "the call launched nothing"
    return specs, result


def _replay(specs):
    for spec in specs:
        spec.launch()


def test_rope_replay_with_new_positions():
    g = torch.Generator().manual_seed(0)
    tokens, heads, head, max_pos = 6, 4, 32, 64
    pos = torch.randint(0, max_pos, (tokens,), generator=g)
    q = torch.randn(tokens, heads * head, generator=g)
    k = torch.randn(tokens, head, generator=g)
    cache = torch.randn(max_pos, head, generator=g)
    specs, _ = _record(lambda: rotary_embedding(pos, q, k, head, cache, True))
    # New step: other positions, fresh q/k written into the captured buffers.
    new_pos = torch.randint(0, max_pos, (tokens,), generator=g)
    new_q, new_k = torch.randn(q.shape, generator=g), torch.randn(k.shape, generator=g)
    pos.copy_(new_pos)
    q.copy_(new_q)
    k.copy_(new_k)
    _replay(specs)
    want_q, want_k = rope_reference(new_pos, new_q.clone(), new_k.clone(), head, cache, True)
    torch.testing.assert_close(q, want_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(k, want_k, atol=1e-5, rtol=0)


@pytest.mark.parametrize("grouped", [False, True])
def test_routing_replay_with_new_logits(grouped):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 16, generator=g)
    bias = torch.randn(16, generator=g)
    if grouped:
        call = lambda: grouped_topk(logits, 4, True, 4, 2, "sigmoid", bias, 2.5)  # noqa: E731
        ref = lambda x: grouped_topk_ref(x, 4, True, 4, 2, "sigmoid", bias, 2.5)  # noqa: E731
    else:
        call = lambda: fused_topk(logits, 3, True)  # noqa: E731
        ref = lambda x: grouped_topk_ref(x, 3, True)  # noqa: E731
    specs, (weights, ids) = _record(call)
    new = torch.randn(logits.shape, generator=g)
    logits.copy_(new)
    _replay(specs)
    want_w, want_ids = ref(new)
    assert torch.equal(ids, want_ids.to(ids.dtype))
    torch.testing.assert_close(weights, want_w, atol=1e-5, rtol=0)


def test_moe_align_replay_with_new_ids():
    g = torch.Generator().manual_seed(2)
    num_experts, block = 8, 4
    ids = torch.randint(0, num_experts, (9, 2), generator=g, dtype=torch.int32)
    specs, (sorted_ids, expert_ids, post_pad) = _record(lambda: moe_align_block_size(ids, block, num_experts))
    # All routes on one expert after the "capture": the most lopsided layout of the same size.
    ids.fill_(5)
    _replay(specs)
    want = moe_align_block_size_ref(ids, block, num_experts)
    assert torch.equal(post_pad, want[2])
    n = int(post_pad[0])
    assert torch.equal(sorted_ids[:n], want[0][:n])
    assert torch.equal(expert_ids[: n // block], want[1][: n // block])


def test_fused_experts_replay_with_new_routes_and_hidden_states():
    g = torch.Generator().manual_seed(3)
    m, e, k, h, i = 6, 4, 2, 32, 24
    x = torch.randn(m, h, generator=g)
    w13 = torch.randn(e, 2 * i, h, generator=g) * 0.1
    w2 = torch.randn(e, h, i, generator=g) * 0.1
    weights = torch.rand(m, k, generator=g)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(m)]).to(torch.int32)
    specs, out = _record(lambda: fused_experts(x, w13, w2, weights, ids))
    new_x = torch.randn(m, h, generator=g)
    new_w = torch.rand(m, k, generator=g)
    new_ids = torch.tensor([[3, 0]] * m, dtype=torch.int32)  # every token on the same two experts
    x.copy_(new_x)
    weights.copy_(new_w)
    ids.copy_(new_ids)
    _replay(specs)
    torch.testing.assert_close(out, fused_experts_ref(new_x, w13, w2, new_w, new_ids), atol=1e-4, rtol=0)


def test_cache_write_replay_with_new_slots():
    g = torch.Generator().manual_seed(4)
    blocks, block, heads, head = 6, 16, 2, 32
    kc = torch.zeros(blocks, block, heads, head)
    vc = torch.zeros_like(kc)
    key = torch.randn(5, heads, head, generator=g)
    value = torch.randn(5, heads, head, generator=g)
    slots = torch.tensor([0, 17, 33, 50, 95])
    specs, _ = _record(lambda: reshape_and_cache(key, value, kc, vc, slots))
    want_k, want_v = kc.clone(), vc.clone()
    slots.copy_(torch.tensor([94, -1, 1, 64, 18]))
    key.copy_(torch.randn(key.shape, generator=g))
    value.copy_(torch.randn(value.shape, generator=g))
    _replay(specs)
    reshape_and_cache_reference(key, value, want_k, want_v, slots)
    torch.testing.assert_close(kc, want_k, rtol=0, atol=0)
    torch.testing.assert_close(vc, want_v, rtol=0, atol=0)


def _attention_call(c, out, max_seqlen_k):
    q_lens = (c["cu_seqlens_q"][1:] - c["cu_seqlens_q"][:-1]).tolist()
    return lambda: unified_attention(
        c["q"], c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], max(q_lens), c["seqused_k"],
        max_seqlen_k, 0.125, True, (-1, -1), c["block_table"], 0.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "captured,replayed",
    [
        ([3, 5, 9], [700, 1, 333]),  # captured on short contexts (no split), replayed on long ones
        ([700, 650, 512], [1, 40, 17]),  # captured with a split-KV launch, replayed on short ones
    ],
    ids=["short-then-long", "long-then-short"],
)
def test_decode_attention_replay_with_new_lengths_and_blocks(captured, replayed):
    """A decode graph of 3 sequences: seqused_k, max_seqlen_k and the block table change per step."""
    block = 16
    capacity = [max(a, b) for a, b in zip(captured, replayed, strict=True)]
    c = make_paged_case([1, 1, 1], capacity, 4, 1, 32, block, torch.float32, seed=5)
    new_table = c["block_table"].flip(1).clone()  # other physical blocks (contents differ)
    new_cache = make_paged_case([1, 1, 1], capacity, 4, 1, 32, block, torch.float32, seed=6)
    c["seqused_k"].copy_(torch.tensor(captured, dtype=torch.int32))
    out = torch.zeros_like(c["q"])
    specs, _ = _record(_attention_call(c, out, max(captured)))
    splits = {s.args.get("num_segments") for s in specs if s.name == "unified_attention"}
    # Step 2: new lengths, new queries, a new block table over the same cache tensors.
    c["seqused_k"].copy_(torch.tensor(replayed, dtype=torch.int32))
    c["q"].copy_(torch.randn(c["q"].shape))
    c["k_cache"].copy_(torch.nan_to_num(new_cache["k_cache"], nan=0.0))
    c["v_cache"].copy_(torch.nan_to_num(new_cache["v_cache"], nan=0.0))
    c["block_table"].copy_(new_table)
    out.fill_(float("nan"))
    _replay(specs)
    want = unified_attention_reference(
        c["q"], c["k_cache"], c["v_cache"], c["cu_seqlens_q"], c["seqused_k"], 0.125, True, (-1, -1),
        c["block_table"], 0.0,
    )  # fmt: skip
    torch.testing.assert_close(out, want.to(out.dtype), atol=1e-4, rtol=0)
    # The capture on long contexts chose a split-KV launch (a workspace sized for its segments).
    assert splits == ({1} if max(captured) < 100 else splits - {1}) and splits


def test_mrope_replay_with_new_positions():
    from vllm_ascend_triton.kernels import mrope_rotary_embedding
    from vllm_ascend_triton.kernels.rope.reference import mrope_reference

    g = torch.Generator().manual_seed(7)
    tokens, head, max_pos = 5, 32, 40
    pos = torch.randint(0, max_pos, (3, tokens), generator=g)
    q = torch.randn(tokens, 2 * head, generator=g)
    k = torch.randn(tokens, head, generator=g)
    cache = torch.randn(max_pos, head, generator=g)
    specs, _ = _record(lambda: mrope_rotary_embedding(pos, q, k, head, cache, True, [4, 6, 6]))
    new_pos = torch.randint(0, max_pos, pos.shape, generator=g)
    new_q, new_k = torch.randn(q.shape, generator=g), torch.randn(k.shape, generator=g)
    pos.copy_(new_pos)
    q.copy_(new_q)
    k.copy_(new_k)
    _replay(specs)
    want_q, want_k = mrope_reference(new_pos, new_q.clone(), new_k.clone(), head, cache, True, [4, 6, 6])
    torch.testing.assert_close(q, want_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(k, want_k, atol=1e-5, rtol=0)


def test_mixed_batch_attention_replay_with_new_query_split():
    """Same token count, another split of the tokens into sequences (cu_seqlens_q), other lengths."""
    block = 16
    c = make_paged_case([1, 2, 3], [40, 50, 60], 4, 2, 32, block, torch.float32, seed=8)
    for name in ("k_cache", "v_cache"):
        c[name].copy_(torch.nan_to_num(c[name], nan=0.0))
    out = torch.zeros_like(c["q"])
    specs, _ = _record(_attention_call(c, out, 60))
    c["cu_seqlens_q"].copy_(torch.tensor([0, 3, 5, 6], dtype=torch.int32))
    c["seqused_k"].copy_(torch.tensor([45, 20, 33], dtype=torch.int32))
    c["q"].copy_(torch.randn(c["q"].shape))
    out.fill_(float("nan"))
    _replay(specs)
    want = unified_attention_reference(
        c["q"], c["k_cache"], c["v_cache"], c["cu_seqlens_q"], c["seqused_k"], 0.125, True, (-1, -1),
        c["block_table"], 0.0,
    )  # fmt: skip
    torch.testing.assert_close(out, want.to(out.dtype), atol=1e-4, rtol=0)
