"""W8A8 MoE (dynamic per-token int8 activations, per-channel int8 weights) under the interpreter:
the quant against vLLM's own int8 quant bit for bit, the int8 tl.dot exact in int32, the expert MLP
against the torch reference with exact int32 accumulation (and near the float MLP it quantizes)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._moe_inputs import expert_map as _expert_map
from tests.kernels._moe_inputs import routing as _routing
from vllm_ascend_triton.kernels import dynamic_per_token_quant, fused_experts_w8a8
from vllm_ascend_triton.kernels.fused_moe import w8a8 as w8
from vllm_ascend_triton.kernels.fused_moe.reference import fused_experts_ref
from vllm_ascend_triton.kernels.fused_moe.w8a8_reference import (
    dynamic_per_token_quant_ref,
    fused_experts_w8a8_ref,
    quantize_weight_per_channel,
)
from vllm_ascend_triton.runtime.launch import record_launches

TIES = [63.5, -63.5, 0.5, -0.5, 1.5, 2.5, -2.5, 126.5, 127.0, 0.49999997]


def _activations(rows: int, hidden: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random rows at several magnitudes, exact .5 ties (row 0: absmax 127, so x * 1/scale = x), a
    zero row and a row with one huge outlier."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=gen) * torch.logspace(-3, 2, rows)[:, None]
    x[0] = 0.25
    x[0, : min(hidden, len(TIES))] = torch.tensor(TIES[:hidden])
    x[0, -1] = 127.0
    if rows > 2:
        x[1] = 0.0
        x[2, hidden // 2] = 3e4
    return x.to(dtype)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,hidden", [(1, 1), (7, 33), (40, 200), (3, 2100)])
def test_quant_is_bit_exact_with_vllm(dtype, rows, hidden):
    ops = pytest.importorskip("vllm._custom_ops")
    x = _activations(rows, hidden, dtype, seed=rows + hidden)
    q, scale = dynamic_per_token_quant(x)
    vq, vscale, vazp = ops.scaled_int8_quant(x)
    assert vazp is None
    assert q.dtype == torch.int8 and q.shape == x.shape and scale.shape == (rows, 1)
    assert torch.equal(scale, vscale)
    # An all-zero row (scale 0): ours writes zeros; vLLM's AVX2 build divides by the zero scale
    # and writes -128 there (its AVX-512 build writes zeros), so those rows are ours alone.
    zero = (vscale == 0).squeeze(1)
    assert torch.equal(q[~zero], vq[~zero]), (q[~zero] != vq[~zero]).sum()
    assert not q[zero].any()
    ref_q, ref_scale = dynamic_per_token_quant_ref(x)
    assert torch.equal(q, ref_q) and torch.equal(scale, ref_scale)


def test_quant_ties_round_to_even_and_specials():
    x = torch.zeros(4, 16)
    x[0, :10] = torch.tensor(TIES)
    x[0, 15] = 127.0  # scale 1: the ties are exactly representable in x * (1 / scale)
    x[2, 3] = float("nan")
    x[3, 0] = -1000.0
    q, scale = dynamic_per_token_quant(x)
    assert q[0, :10].tolist() == [64, -64, 0, 0, 2, 2, -2, 126, 127, 0]
    assert scale[0].item() == 1.0
    assert scale[1].item() == 0.0 and not q[1].any()  # an all-zero row
    assert torch.isnan(scale[2]).all() and not q[2].any()  # NaN row: NaN scale, zeros
    assert q[3, 0].item() == -127 and scale[3].item() == pytest.approx(1000.0 / 127)
    ref_q, ref_scale = dynamic_per_token_quant_ref(x)
    assert torch.equal(q, ref_q) and _bits_equal(scale, ref_scale)


def test_quant_keeps_leading_dims_and_empty_rows():
    x = torch.randn(2, 3, 24)
    q, scale = dynamic_per_token_quant(x)
    assert q.shape == x.shape and scale.shape == (6, 1)
    ref_q, ref_scale = dynamic_per_token_quant_ref(x)
    assert torch.equal(q, ref_q) and torch.equal(scale, ref_scale)
    q0, s0 = dynamic_per_token_quant(torch.empty(0, 24))
    assert q0.shape == (0, 24) and s0.shape == (0, 1)


def test_int8_dot_accumulates_exactly_in_int32():
    """Partial sums pass 2^24 (fp32 accumulation would lose the small terms) and cancel to a small
    exact total: the interpreter's int8 tl.dot (numpy, int32) and the dequant keep it exact."""
    k, rows, n = 4096, 16, 16
    a = torch.full((rows, k), 127, dtype=torch.int8)
    a[:, k // 2 :] = -127
    b = torch.full((n, k), 127, dtype=torch.int8)
    b[:, 7] = 126  # each row's total: -127 (one term 127 * 126 instead of 127 * 127)
    a[:, 9] = torch.arange(rows, dtype=torch.int8)  # + (j - 127) * 127: distinct rows
    exact = a.long() @ b.long().t()
    # fp32 accumulation in this order loses terms: the check below is meaningful.
    fp32_sum = torch.zeros(rows, n)
    for j in range(0, k, 256):
        fp32_sum += a[:, j : j + 256].float() @ b[:, j : j + 256].float().t()
    big = torch.cumsum(a[0].float() * b[0].float(), 0).abs().max()
    assert big > 2**24
    out = torch.empty(rows, n, dtype=torch.float32)
    offsets = torch.tensor([0, rows], dtype=torch.int32)
    ones_r, ones_n = torch.ones(rows), torch.ones(1, n)
    w8._launch_gemm(a, ones_r, b[None], ones_n, offsets, out, w8.GEMM2_KERNEL, w8.DEFAULT_W8A8_GEMM2_CONFIG,
                    torch.float32)  # fmt: skip
    assert torch.equal(out, exact.float()), (out - exact.float()).abs().max()
    assert exact.abs().max() < 2**24  # so the fp32 output itself is exact


def quantized_weights(e: int, h: int, i: int, seed: int = 2):
    """Float weights at a real init scale and their per-channel int8 (w13, w2, s13, s2, floats)."""
    gen = torch.Generator().manual_seed(seed)
    w13f = torch.randn(e, 2 * i, h, generator=gen) / h**0.5
    w2f = torch.randn(e, h, i, generator=gen) / i**0.5
    w13, s13 = quantize_weight_per_channel(w13f)
    w2, s2 = quantize_weight_per_channel(w2f)
    return w13, w2, s13, s2, w13f, w2f


# (M, E, k, H, I, num_local or None, dtype): Mixtral-like 8x2, Qwen3-style 128x8 under EP, odd sizes,
# one token, more rows than a row tile per expert, several K tiles, bf16 through the shim.
CASES = [
    pytest.param(9, 8, 2, 96, 64, None, torch.float32, id="e8_k2_fp32"),
    pytest.param(10, 128, 8, 64, 48, 40, torch.float16, id="qwen3_ep_fp16"),
    pytest.param(1, 5, 3, 40, 24, None, torch.float32, id="m1_odd_fp32"),
    pytest.param(70, 4, 2, 32, 32, 3, torch.float32, id="multi_tile_ep_fp32"),
    pytest.param(3, 4, 2, 600, 40, None, torch.float16, id="k_tiles_fp16"),
    pytest.param(6, 8, 2, 32, 16, None, torch.bfloat16, id="bf16_shim"),
]


@pytest.mark.parametrize("m,e,k,h,i,num_local,dtype", CASES)
def test_fused_experts_w8a8_matches_reference(m, e, k, h, i, num_local, dtype):
    weights, ids = _routing(m, e, k, seed=m)
    x = torch.randn(m, h).to(dtype)
    emap = _expert_map(e, num_local) if num_local else None
    w13, w2, s13, s2, _, _ = quantized_weights(num_local or e, h, i)
    out = fused_experts_w8a8(x, w13, w2, s13, s2, weights, ids, expert_map=emap)
    expected = fused_experts_w8a8_ref(x, w13, w2, s13, s2, weights, ids, expert_map=emap)
    assert out.dtype == dtype and out.shape == (m, h)
    tol = 1e-3 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


def test_reference_is_near_the_float_mlp_it_quantizes():
    """The W8A8 error itself (both int8 quantizations) stays at the percent level: the scales are
    applied on the right axes (a transposed scale would be far off)."""
    weights, ids = _routing(16, 8, 2)
    x = torch.randn(16, 128)
    w13, w2, s13, s2, w13f, w2f = quantized_weights(8, 128, 64)
    out = fused_experts_w8a8(x, w13, w2, s13, s2, weights, ids)
    dense = fused_experts_ref(x, w13f, w2f, weights, ids)
    rel = (out - dense).norm() / dense.norm()
    assert rel < 0.03, rel


def test_scale_layouts_and_int64_ids_agree():
    weights, ids = _routing(5, 8, 2)
    x = torch.randn(5, 64)
    w13, w2, s13, s2, _, _ = quantized_weights(8, 64, 32)
    a = fused_experts_w8a8(x, w13, w2, s13, s2, weights, ids)
    b = fused_experts_w8a8(x, w13, w2, s13[..., 0], s2[..., 0], weights, ids.long())
    assert torch.equal(a, b)
    # 16-bit scales (vllm-ascend keeps them in the model dtype) are widened to fp32.
    s13h, s2h = s13.to(torch.bfloat16), s2.to(torch.bfloat16)
    c = fused_experts_w8a8(x, w13, w2, s13h, s2h, weights, ids)
    assert torch.equal(c, fused_experts_w8a8(x, w13, w2, s13h.float(), s2h.float(), weights, ids))


def test_nan_stays_in_its_token_and_empty_batch():
    weights, ids = _routing(4, 8, 2)
    x = torch.randn(4, 32)
    x[2, 5] = float("nan")
    w13, w2, s13, s2, _, _ = quantized_weights(8, 32, 16)
    out = fused_experts_w8a8(x, w13, w2, s13, s2, weights, ids)
    assert torch.isnan(out[2]).all()
    assert torch.isfinite(out[[0, 1, 3]]).all()
    empty = fused_experts_w8a8(x[:0], w13, w2, s13, s2, weights[:0], ids[:0])
    assert empty.shape == (0, 32)


def test_no_local_expert_chosen_gives_zeros():
    ids = torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)
    emap = torch.tensor([-1, -1, 0, 1], dtype=torch.int32)
    w13, w2, s13, s2, _, _ = quantized_weights(2, 32, 16)
    out = fused_experts_w8a8(torch.randn(2, 32), w13, w2, s13, s2, torch.rand(2, 2), ids, expert_map=emap)
    assert torch.equal(out, torch.zeros(2, 32))


def test_launches_quant_fused_with_permute_and_cube_gemms():
    weights, ids = _routing(6, 8, 2)
    w13, w2, s13, s2, _, _ = quantized_weights(8, 64, 32)
    with record_launches(execute=False) as specs:
        fused_experts_w8a8(torch.randn(6, 64, dtype=torch.float16), w13, w2, s13, s2, weights, ids)
    names = [s.name for s in specs]
    assert names == [
        "moe_sort_count", "moe_permute_layout", "moe_sort_scatter", w8.QUANT_KERNEL, w8.GEMM1_KERNEL,
        w8.QUANT_KERNEL, w8.GEMM2_KERNEL, "moe_unpermute",
    ]  # fmt: skip
    quant1, gemm1, quant2, gemm2 = specs[3:7]
    assert quant1.constexprs["GATHER"] and quant1.constexprs["HAS_IDX"]
    assert not quant2.constexprs["GATHER"] and quant2.constexprs["HAS_IDX"]
    for gemm in (gemm1, gemm2):
        assert gemm.uses_cube and w8.fractal_aligned(gemm.config)
        assert gemm.args["a_ptr"].dtype == torch.int8 and gemm.args["b_ptr"].dtype == torch.int8


def test_default_tiles_fit_every_sku_and_are_whole_fractals():
    from vllm_ascend_triton.runtime.device import plan_for
    from vllm_ascend_triton.runtime.sku import SKUS
    from vllm_ascend_triton.runtime.ub import ub_budget_bytes

    for sku in SKUS:
        with plan_for(sku):
            budget = ub_budget_bytes(multibuffer=False)
            for kernel, default in ((w8.GEMM1_KERNEL, w8.DEFAULT_W8A8_GEMM1_CONFIG),
                                    (w8.GEMM2_KERNEL, w8.DEFAULT_W8A8_GEMM2_CONFIG)):  # fmt: skip
                cfg = w8._default_gemm_config(default, kernel == w8.GEMM1_KERNEL)
                assert w8.fractal_aligned(cfg), (sku, cfg)
                assert w8.w8a8_gemm_ub_bytes(cfg, kernel == w8.GEMM1_KERNEL) <= budget, (sku, cfg)


def test_unaligned_tuned_config_is_refused(monkeypatch):
    from vllm_ascend_triton.runtime import configs

    with configs.override_configs({w8.GEMM1_KERNEL: {"BLOCK_M": 8}}):
        with pytest.raises(ValueError, match="fractal"):
            w8._gemm_config(w8.GEMM1_KERNEL, 64, 64, torch.float16, w8.DEFAULT_W8A8_GEMM1_CONFIG)


def _bad():
    weights, ids = _routing(4, 8, 2)
    x = torch.randn(4, 32)
    w13, w2, s13, s2, _, _ = quantized_weights(8, 32, 16)
    return x, w13, w2, s13, s2, weights, ids


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: {**a, "w13": a["w13"].float()}, TypeError, "w13"),
        (lambda a: {**a, "w2": a["w2"][:, :, :8]}, ValueError, "w2"),
        (lambda a: {**a, "w13_scale": a["w13_scale"].to(torch.int32)}, TypeError, "w13_scale"),
        (lambda a: {**a, "w13_scale": a["w13_scale"][:, :5]}, ValueError, "w13_scale"),
        (lambda a: {**a, "w2_scale": a["w2_scale"][:1]}, ValueError, "w2_scale"),
        (lambda a: {**a, "hidden_states": a["hidden_states"][:, :16]}, ValueError, "hidden_states"),
        (lambda a: {**a, "hidden_states": a["hidden_states"].to(torch.int8)}, TypeError, "hidden_states"),
        (lambda a: {**a, "topk_weights": a["topk_weights"][:, :1]}, ValueError, "topk_weights"),
        (lambda a: {**a, "topk_ids": a["topk_ids"] + 8}, ValueError, "topk_ids"),
        (lambda a: {**a, "activation": "gelu"}, ValueError, "activation"),
        (lambda a: {**a, "global_num_experts": 16}, ValueError, "global_num_experts"),
        (
            lambda a: {
                **a,
                "w13": a["w13"][:4],
                "w2": a["w2"][:4],
                "w13_scale": a["w13_scale"][:4],
                "w2_scale": a["w2_scale"][:4],
                "expert_map": torch.arange(8, dtype=torch.int32),
            },
            ValueError,
            "expert_map values",
        ),  # fmt: skip
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, exc, match):
    x, w13, w2, s13, s2, weights, ids = _bad()
    args = dict(
        hidden_states=x, w13=w13, w2=w2, w13_scale=s13, w2_scale=s2, topk_weights=weights, topk_ids=ids
    )
    with pytest.raises(exc, match=match):
        fused_experts_w8a8(**mutate(args))


def test_quant_bad_inputs():
    with pytest.raises(TypeError, match="x"):
        dynamic_per_token_quant(torch.zeros(2, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="x"):
        dynamic_per_token_quant(torch.zeros(2, 0))
    with pytest.raises(TypeError, match="x"):
        dynamic_per_token_quant([[1.0]])


def test_k_limit_is_checked():
    big = w8.W8A8_MAX_K + 16
    w13 = torch.zeros(1, 2, big, dtype=torch.int8)
    w2 = torch.zeros(1, big, 1, dtype=torch.int8)
    with pytest.raises(ValueError, match="int32 accumulator"):
        fused_experts_w8a8(torch.zeros(1, big), w13, w2, torch.ones(1, 2, 1), torch.ones(1, big, 1),
                           torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.int32))  # fmt: skip


def test_replay_with_new_routes_and_hidden_states():
    """A recorded W8A8 call re-launched on new contents of its inputs (as a captured graph replays):
    the quant rows, scales and float rows its two halves share are rewritten in launch order."""
    m, e, k, h, i = 6, 4, 2, 32, 48  # I > H: the shared buffers are sized by the wider of the two
    weights, ids = _routing(m, e, k, seed=5)
    w13, w2, s13, s2, _, _ = quantized_weights(e, h, i)
    x = torch.randn(m, h, generator=torch.Generator().manual_seed(6))
    with record_launches() as specs:
        out = fused_experts_w8a8(x, w13, w2, s13, s2, weights, ids)
    new_x = torch.randn(m, h, generator=torch.Generator().manual_seed(7)) * 3
    new_w, new_ids = torch.rand(m, k), torch.tensor([[3, 0]] * m, dtype=torch.int32)
    x.copy_(new_x)
    weights.copy_(new_w)
    ids.copy_(new_ids)
    for spec in specs:
        spec.launch()
    want = fused_experts_w8a8_ref(new_x, w13, w2, s13, s2, new_w, new_ids)
    torch.testing.assert_close(out, want, atol=1e-3 * want.abs().max().item(), rtol=0)
