"""Our kernels as torch custom ops (plugin/custom_ops.py): each compiles as one opaque node
(`torch.compile(fullgraph=True)`, through the fake impls and functionalization) and gives the
eager result; registration is idempotent; input checks run inside the op under compile."""

import pytest
import torch

from vllm_ascend_triton.kernels.attention.reference import make_paged_case
from vllm_ascend_triton.plugin import custom_ops
from vllm_ascend_triton.runtime import launch

OPS = custom_ops.register_all()
vat = torch.ops.vat


def _compiled(fn):
    torch._dynamo.reset()
    # aot_eager runs Dynamo, the fake impls and functionalization (auto_functionalize of the
    # in-place ops), without Inductor's C++ step.
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def _rope_inputs(tokens=5, heads=3, kv_heads=1, head=16, max_pos=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, max_pos, (tokens,), generator=g)
    q = torch.randn(tokens, heads * head, generator=g)
    k = torch.randn(tokens, kv_heads * head, generator=g)
    cache = torch.randn(max_pos, head, generator=g)
    return pos, q, k, cache


def test_every_kernel_family_has_ops():
    assert {
        "rotary_embedding",
        "mrope_rotary_embedding",
        "fused_topk",
        "grouped_topk",
        "fused_experts",
        "reshape_and_cache",
        "kv_cache_update",
        "unified_attention",
        "paged_attention",
    } <= set(OPS)


def test_register_op_is_idempotent_and_needs_fake_for_outputs():
    def _twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    with pytest.raises(ValueError, match="fake"):
        custom_ops.register_op("test_twice_nofake", _twice)
    op = custom_ops.register_op("test_twice", _twice, fake=lambda x: torch.empty_like(x))
    assert custom_ops.register_op("test_twice", _twice, fake=lambda x: torch.empty_like(x)) is op
    with pytest.raises(ValueError, match="another implementation"):
        custom_ops.register_op("test_twice", lambda x: x)
    assert torch.equal(op(torch.ones(3)), torch.full((3,), 2.0))
    assert custom_ops.register_all() == custom_ops.registered_ops()


@pytest.mark.parametrize("with_key", [True, False])
def test_rope_compiles_to_the_eager_result(with_key):
    pos, q, k, cache = _rope_inputs()
    k = k if with_key else None

    def fn(pos, q, k, cache):
        vat.rotary_embedding(pos, q, k, 16, cache, True)
        return q * 1.0, (k * 1.0 if k is not None else None)

    q_e, k_e = q.clone(), k.clone() if k is not None else None
    want = fn(pos, q_e, k_e, cache)
    q_c, k_c = q.clone(), k.clone() if k is not None else None
    got = _compiled(fn)(pos, q_c, k_c, cache)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(q_c, q_e, rtol=0, atol=0)  # the input was rotated in place
    assert not torch.equal(q_c, q)
    if with_key:
        torch.testing.assert_close(k_c, k_e, rtol=0, atol=0)


def test_mrope_compiles_to_the_eager_result():
    tokens, head = 4, 16
    g = torch.Generator().manual_seed(1)
    pos = torch.randint(0, 30, (3, tokens), generator=g)
    q = torch.randn(tokens, 2 * head, generator=g)
    k = torch.randn(tokens, head, generator=g)
    cache = torch.randn(30, head, generator=g)

    def fn(pos, q, k, cache):
        vat.mrope_rotary_embedding(pos, q, k, head, cache, True, [2, 3, 3], False)
        return q + 0, k + 0

    want = fn(pos, q.clone(), k.clone(), cache)
    got = _compiled(fn)(pos, q.clone(), k.clone(), cache)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("grouped", [False, True])
def test_routing_compiles_to_the_eager_result(grouped):
    logits = torch.randn(6, 16)
    bias = torch.randn(16)

    def fn(logits, bias):
        if grouped:
            w, ids = vat.grouped_topk(logits, 4, True, 4, 2, "sigmoid", bias, 2.5)
        else:
            w, ids = vat.fused_topk(logits, 4, True)
        return w * 1.0, ids + 0

    want = fn(logits, bias)
    got = _compiled(fn)(logits, bias)
    assert got[1].dtype == torch.int32 and got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    assert torch.equal(got[1], want[1])


def test_experts_compile_to_the_eager_result():
    m, e, k, h, i = 5, 4, 2, 32, 24
    x = torch.randn(m, h)
    w13 = torch.randn(e, 2 * i, h) * 0.1
    w2 = torch.randn(e, h, i) * 0.1
    logits = torch.randn(m, e)

    def fn(x, w13, w2, logits):
        w, ids = vat.fused_topk(logits, k, True)
        return vat.fused_experts(x, w13, w2, w, ids) + 0

    want = fn(x, w13, w2, logits)
    got = _compiled(fn)(x, w13, w2, logits)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _paged(block=16):
    return make_paged_case([1, 1, 3], [20, 7, 33], 4, 2, 16, block, torch.float32, seed=2)


def test_cache_write_and_attention_compile_to_the_eager_result():
    c = _paged()
    n = 5
    g = torch.Generator().manual_seed(3)
    key = torch.randn(n, 2, 16, generator=g)
    value = torch.randn(n, 2, 16, generator=g)
    slots = torch.tensor([3, 17, -1, 40, 41], dtype=torch.int64)

    def fn(q, kc, vc, key, value, slots, cu, seqused, table):
        vat.reshape_and_cache(key, value, kc, vc, slots)
        out = torch.zeros_like(q)
        vat.unified_attention(q, kc, vc, out, cu, 3, seqused, 33, 0.25, True, -1, -1, table, 0.0)
        return out * 1.0

    args = lambda: (  # noqa: E731
        c["q"], c["k_cache"].clone(), c["v_cache"].clone(), key, value, slots, c["cu_seqlens_q"],
        c["seqused_k"], c["block_table"],
    )  # fmt: skip
    eager_args, compiled_args = args(), args()
    want = fn(*eager_args)
    got = _compiled(fn)(*compiled_args)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(compiled_args[1], eager_args[1], rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(got).all()


def test_packed_cache_ops_compile_to_the_eager_result():
    """The backend's ops on vLLM 0.32's packed [blocks, kv_heads, block, 2 * head] cache."""
    c = _paged()
    num_blocks, block, kv_heads, head = c["k_cache"].shape
    packed = torch.cat([c["k_cache"], c["v_cache"]], dim=-1).transpose(1, 2).contiguous()
    key = torch.randn(2, kv_heads, head)
    value = torch.randn(2, kv_heads, head)
    slots = torch.tensor([5, 60], dtype=torch.int32)

    def fn(q, kv, key, value, slots, cu, seqused, table):
        vat.kv_cache_update(key, value, kv, slots)
        out = torch.empty_like(q)
        vat.paged_attention(q, kv, out, cu, 3, seqused, 33, 0.25, True, -1, -1, table, 0.0)
        return out + 0

    eager_kv, compiled_kv = packed.clone(), packed.clone()
    common = (c["cu_seqlens_q"], c["seqused_k"], c["block_table"])
    want = fn(c["q"], eager_kv, key, value, slots, *common)
    got = _compiled(fn)(c["q"], compiled_kv, key, value, slots, *common)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(compiled_kv, eager_kv, rtol=0, atol=0, equal_nan=True)
    k_view, _ = custom_ops.split_kv_cache(eager_kv, head)
    torch.testing.assert_close(k_view[0, 5], key[0], rtol=0, atol=0)


def test_input_checks_run_inside_the_compiled_op(monkeypatch):
    """A data-dependent check is not traced (no guard on data): it raises at run time."""
    monkeypatch.setattr(launch, "INPUT_CHECKS", True)
    pos, q, k, cache = _rope_inputs(max_pos=40)

    def fn(pos, q, k, cache):
        vat.rotary_embedding(pos, q, k, 16, cache, True)
        return q + 0

    compiled = _compiled(fn)
    compiled(pos, q.clone(), k.clone(), cache)
    bad = pos.clone()
    bad[2] = 40
    with pytest.raises(ValueError, match="positions"):
        compiled(bad, q.clone(), k.clone(), cache)


def test_hot_path_reads_no_environment(monkeypatch):
    """With the shapes planned once, a call of each op (checks off, Triton's launcher excluded by a
    dry run) reads no environment variable: the switches were read once."""
    import os

    from vllm_ascend_triton.plugin import counters, mutate
    from vllm_ascend_triton.runtime.launch import record_launches

    monkeypatch.setattr(launch, "INPUT_CHECKS", False)
    pos, q, k, cache = _rope_inputs()
    logits = torch.randn(4, 8)
    x, w13, w2 = torch.randn(4, 16), torch.randn(8, 32, 16), torch.randn(8, 16, 16)
    c = _paged()
    key, value, slots = torch.randn(2, 2, 16), torch.randn(2, 2, 16), torch.tensor([1, 2])

    def calls():
        vat.rotary_embedding(pos, q, k, 16, cache, True)
        w, ids = vat.fused_topk(logits, 2, True)
        vat.grouped_topk(logits, 2, True, 4, 2)
        vat.fused_experts(x, w13, w2, w, ids)
        vat.reshape_and_cache(key, value, c["k_cache"], c["v_cache"], slots)
        out = torch.empty_like(c["q"])
        vat.unified_attention(
            c["q"], c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], 3, c["seqused_k"], 33, 0.25,
            True, -1, -1, c["block_table"], 0.0,
        )  # fmt: skip

    with record_launches(execute=False) as specs:
        calls()  # plans every shape (reads config files and, once, the switches)
        planned = len(specs)

        def no_env(self, name):
            raise AssertionError(f"environment read on the hot path: {name}")

        monkeypatch.setattr(type(os.environ), "__getitem__", no_env)
        assert counters._folder is None and not mutate.ACTIVE
        calls()
    monkeypatch.undo()
    assert len(specs) == 2 * planned


@pytest.mark.parametrize("target", ["attention", "moe", "rope"])
def test_mutation_hook_scales_only_its_op(target):
    """The test hook inside the ops (what the e2e mutation tests switch on in vLLM's processes)."""
    from vllm_ascend_triton.plugin import mutate

    c = _paged()
    pos, q, k, cache = _rope_inputs()
    logits, x = torch.randn(4, 8), torch.randn(4, 16)
    w13, w2 = torch.randn(8, 32, 16) * 0.1, torch.randn(8, 16, 16) * 0.1

    def outputs():
        out = torch.zeros_like(c["q"])
        vat.unified_attention(
            c["q"], c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], 3, c["seqused_k"], 33, 0.25,
            True, -1, -1, c["block_table"], 0.0,
        )  # fmt: skip
        w, ids = vat.fused_topk(logits, 2, True)
        q2 = q.clone()
        vat.rotary_embedding(pos, q2, None, 16, cache, True)
        return {"attention": out, "moe": vat.fused_experts(x, w13, w2, w, ids), "rope": q2}

    plain = outputs()
    try:
        mutate.configure(f"{target}:0.5")
        mutated = outputs()
    finally:
        mutate.configure("")
    for name in plain:
        want = plain[name] * 0.5 if name == target else plain[name]
        torch.testing.assert_close(mutated[name], want, rtol=0, atol=1e-6)
