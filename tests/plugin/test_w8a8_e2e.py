"""W8A8 int8 MoE inside vLLM 0.32 (issue 23): the plugin's compressed-tensors method, its custom
ops, per-layer agreement with stock vLLM's CPU int8 MoE kernel, and the end-to-end run.

The model: a tiny Qwen3-MoE (2 MoE layers, 8 experts top-2, hidden 128, expert 64) whose
compressed-tensors W8A8 int8 checkpoint the test writes (``_w8a8_model.py``: seeded random weights
of std 0.2, every Linear but the router and lm_head int8 per channel, dynamic per-token int8
activations). Stock vLLM runs its MoE layers with ``CPUExpertsInt8`` (sgl-kernel's int8 MoE, bf16
activations only: it refuses fp32 and aborts on fp16), so both runs are bf16. Our run uses the
interpreter platform with only the MoE part on (``VAT_PLUGIN_ROPE=0``, ``VAT_PLUGIN_ATTENTION=0``):
the two runs differ exactly in the W8A8 expert MLP.

Per layer, ours equals our torch reference bit for bit and differs from stock vLLM's kernel by at
most ~1% of the layer's output scale (1-2 bf16 steps at the largest outputs; about half of the
elements are bit-equal): the two round the intermediate and the combine differently. The greedy
tokens are compared with ``compare_greedy`` widened to bf16 (a logprob tolerance and a near-tie
gap of 0.1 nats instead of 1e-3)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.plugin import _engine
from tests.plugin._engine import IN_PROCESS, engine_env, offline_run, run_engine
from tests.plugin._models import MAX_TOKENS, PROMPTS
from tests.plugin._w8a8_model import expert_tensors, write_checkpoint
from vllm_ascend_triton.kernels.fused_moe.w8a8_reference import (
    fused_experts_w8a8_ref,
    quantize_weight_per_channel,
)
from vllm_ascend_triton.plugin import counters

# The engine in the worker's process (V1 multiprocessing off): the interpreter must then be on
# before Python starts (the platform refuses it otherwise). VLLM_CPU_CI_ENV: compile mode with
# Dynamo's eager backend; TORCH_LOGS: Dynamo prints each graph it traced.
OURS = {
    **IN_PROCESS, "TRITON_INTERPRET": "1", "VAT_BACKEND": "interpreter", "VAT_PLATFORM": "interpreter",
    "VAT_PLUGIN_ROPE": "0", "VAT_PLUGIN_ATTENTION": "0", "VLLM_CPU_CI_ENV": "1", "TORCH_LOGS": "graph_code",
}  # fmt: skip
BF16 = {"dtype": "bfloat16"}
# bf16 runs: a chosen token's logprob may move by this much, and a reference top-2 gap below
# BF16_TIE is a near tie where the greedy choice may flip (the rest of that sequence is skipped).
BF16_LOGPROB_TOLERANCE = 0.1
BF16_TIE = 0.1


def compare_greedy_bf16(ref: dict, got: dict) -> list[str]:
    saved = (_engine.TIE_TOLERANCE, _engine.LOGPROB_TOLERANCE)
    _engine.TIE_TOLERANCE, _engine.LOGPROB_TOLERANCE = BF16_TIE, BF16_LOGPROB_TOLERANCE
    try:
        return _engine.compare_greedy(ref, got)
    finally:
        _engine.TIE_TOLERANCE, _engine.LOGPROB_TOLERANCE = saved


# --- units (no engine) ---------------------------------------------------------------------------


def test_custom_ops_trace_as_one_node_and_count():
    from vllm_ascend_triton.plugin import moe_w8a8

    moe_w8a8.register_custom_ops()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=gen)
    w13, s13 = quantize_weight_per_channel(torch.randn(4, 64, 64, generator=gen) / 8)
    w2, s2 = quantize_weight_per_channel(torch.randn(4, 64, 32, generator=gen) / 6)
    w, ids = torch.topk(torch.randn(5, 4, generator=gen).softmax(-1), 2)
    ids = ids.to(torch.int32)
    before = counters.snapshot()
    out = torch.ops.vat.fused_experts_w8a8(x, w13, w2, s13, s2, w, ids, "silu", None, -1)
    torch.testing.assert_close(out, fused_experts_w8a8_ref(x, w13, w2, s13, s2, w, ids), atol=1e-3, rtol=1e-3)
    q, scale = torch.ops.vat.dynamic_per_token_quant(x)
    assert q.dtype == torch.int8 and scale.shape == (5, 1)
    after = counters.snapshot()
    assert after.get("fused_experts_w8a8", 0) - before.get("fused_experts_w8a8", 0) == 1
    assert after.get("dynamic_per_token_quant", 0) - before.get("dynamic_per_token_quant", 0) == 3
    # The fake implementations give Dynamo shapes and dtypes without running the kernels.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        fake_out = torch.ops.vat.fused_experts_w8a8(
            fx, mode.from_tensor(w13), mode.from_tensor(w2), mode.from_tensor(s13), mode.from_tensor(s2),
            mode.from_tensor(w), mode.from_tensor(ids), "silu", None, -1,
        )  # fmt: skip
        fq, fs = torch.ops.vat.dynamic_per_token_quant(fx)
    assert fake_out.shape == x.shape and fake_out.dtype == x.dtype
    assert fq.dtype == torch.int8 and fs.shape == (5, 1)


def test_install_makes_vllm_build_our_method():
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors_moe import (
        compressed_tensors_moe_w8a8_int8 as ct_int8,
    )

    from vllm_ascend_triton.plugin import moe_w8a8

    original = getattr(ct_int8, "_vat_original_method", ct_int8.CompressedTensorsW8A8Int8MoEMethod)
    try:
        assert moe_w8a8.install() == ["CompressedTensorsW8A8Int8MoEMethod"]
        cls = ct_int8.CompressedTensorsW8A8Int8MoEMethod
        assert cls is moe_w8a8.make_method_class() and issubclass(cls, original)
        moe_w8a8.install()  # idempotent: no subclass of our subclass
        assert ct_int8.CompressedTensorsW8A8Int8MoEMethod is cls and cls.__mro__[1] is original
    finally:
        ct_int8.CompressedTensorsW8A8Int8MoEMethod = original


def _layer(**overrides):
    w13 = torch.zeros(4, 64, 32, dtype=torch.int8)
    w2 = torch.zeros(4, 32, 32, dtype=torch.int8)
    base = dict(
        w13_weight=w13, w2_weight=w2, w13_weight_scale=torch.ones(4, 64, 1),
        w2_weight_scale=torch.ones(4, 32, 1), apply_router_weight_on_input=False, swiglu_limit=None,
        swiglu_alpha=None, swiglu_beta=None,
    )  # fmt: skip
    base.update(overrides)
    return SimpleNamespace(**base)


@pytest.mark.parametrize(
    "overrides,reason",
    [
        ({}, None),
        ({"apply_router_weight_on_input": True}, "router weights applied on the input"),
        ({"swiglu_limit": 7.0}, "swiglu_limit"),
        ({"w13_weight": torch.zeros(4, 64, 32)}, "int8"),
        ({"w2_weight_scale": torch.ones(4, 32)}, "w2_weight_scale"),
        ({"w13_weight_scale": torch.ones(4, 64, 1, dtype=torch.float16)}, "w13_weight_scale"),
    ],
)
def test_layer_support_decisions(overrides, reason):
    from vllm_ascend_triton.plugin.moe_w8a8 import layer_unsupported

    got = layer_unsupported(_layer(**overrides))
    assert (got is None) if reason is None else (reason in got), got


def test_config_support_decisions():
    from vllm_ascend_triton.plugin.moe_w8a8 import moe_config_unsupported

    def moe(**parallel):
        par = SimpleNamespace(
            **{"enable_eplb": False, "use_all2all_kernels": False, "dp_size": 1, **parallel}
        )
        return SimpleNamespace(
            activation="silu", has_bias=False, is_lora_enabled=False, in_dtype=torch.bfloat16,
            moe_parallel_config=par,
        )  # fmt: skip

    assert moe_config_unsupported(moe()) is None
    assert "all-to-all" in moe_config_unsupported(moe(use_all2all_kernels=True))
    assert "data-parallel" in moe_config_unsupported(moe(dp_size=2))
    bad = moe()
    bad.activation = "gelu"
    assert "activation" in moe_config_unsupported(bad)


def test_per_layer_agreement_with_stock_vllm_cpu_int8_moe(tmp_path):
    """Each MoE layer of the checkpoint on the same bf16 inputs and routing: ours equals our
    reference exactly; stock vLLM's CPU int8 MoE kernel (what CPUExpertsInt8 runs) agrees to ~1%
    of the output scale."""
    ops = pytest.importorskip("vllm._custom_ops")
    if not (hasattr(torch.ops._C, "fused_experts_cpu") and torch.cpu._is_amx_tile_supported()):
        pytest.skip("stock vLLM's CPU int8 MoE kernel needs AMX")
    from vllm_ascend_triton.kernels import fused_experts_w8a8

    model = write_checkpoint(tmp_path / "model")
    for layer in (0, 1):
        w13, w2, s13, s2, gate = expert_tensors(model, layer)
        gen = torch.Generator().manual_seed(layer)
        x = torch.randn(40, w13.shape[2], generator=gen).to(torch.bfloat16)
        w, ids = torch.topk((x.float() @ gate.float().t()).softmax(-1), 2)
        w, ids = (w / w.sum(-1, keepdim=True)).float(), ids.to(torch.int32)
        stock = torch.empty_like(x)
        packed13, packed2 = torch.ops._C.convert_weight_packed(w13), torch.ops._C.convert_weight_packed(w2)
        ops.fused_experts_cpu(stock, x, packed13, packed2, w, ids, ops.CPUQuantMethod.INT8_W8A8, s13, s2,
                              None, None, None, None, None, None, None, True)  # fmt: skip
        ours = fused_experts_w8a8(x, w13, w2, s13, s2, w, ids)
        assert torch.equal(ours, fused_experts_w8a8_ref(x, w13, w2, s13, s2, w, ids))
        diff = (ours.float() - stock.float()).abs()
        scale = stock.float().abs().max()
        print(f"\nlayer {layer}: max |stock| {scale:.3g}, max diff {diff.max():.3g}, "
              f"mean diff {diff.mean():.3g}, bit-equal {(ours == stock).float().mean():.0%}")  # fmt: skip
        assert diff.max() <= 0.015 * scale
        assert diff.mean() <= 0.002 * scale
        assert (ours == stock).float().mean() > 0.3


# --- end to end (vLLM engine runs) ---------------------------------------------------------------


class _Runs:
    def __init__(self, tmp: Path) -> None:
        self.model = write_checkpoint(tmp / "model")
        # Compile mode runs vLLM's native torch norms and activations instead of its CPU custom ops,
        # which round differently in bf16: each mode has its own stock reference.
        stock = [
            offline_run("stock", self.model, llm=BF16),
            offline_run("stock_compiled", self.model, llm={**BF16, "enforce_eager": False}),
        ]
        self.stock_runs = run_engine(engine_env(**IN_PROCESS, VLLM_CPU_CI_ENV="1"), stock, tmp)
        self.stock = self.stock_runs["stock"]
        ours = [
            offline_run("ours", self.model, llm=BF16),
            offline_run("compiled", self.model, llm={**BF16, "enforce_eager": False}),
            offline_run("mutated", self.model, llm=BF16, mutate="moe:0.5"),
        ]
        self.runs = run_engine(engine_env(**OURS), ours, tmp)
        self.ours = self.runs["ours"]
        self.counts = self.ours["counts"]
        print(
            f"\nW8A8 MoE: stock {self.stock['generate_s']} s, ours {self.ours['generate_s']} s, {self.counts}"
        )


@pytest.fixture(scope="module")
def w8a8_runs(tmp_path_factory) -> _Runs:
    if not torch.cpu._is_amx_tile_supported():
        pytest.skip("the reference, stock vLLM's CPU int8 MoE backend (CPUExpertsInt8), needs AMX")
    return _Runs(tmp_path_factory.mktemp("w8a8"))


@pytest.mark.slow
def test_w8a8_moe_matches_stock_vllm_cpu_int8(w8a8_runs):
    runs = w8a8_runs
    assert all(len(t) == MAX_TOKENS for t in runs.ours["tokens"]) and len(runs.ours["tokens"]) == len(PROMPTS)
    assert compare_greedy_bf16(runs.stock, runs.ours) == []
    # Our int8 kernels ran: 2 MoE layers per forward step, each with two quant launches.
    assert runs.counts.get("fused_experts_w8a8", 0) >= 2 * MAX_TOKENS, runs.counts
    assert runs.counts.get("dynamic_per_token_quant", 0) == 2 * runs.counts["fused_experts_w8a8"], runs.counts
    # Only the MoE part is ours; the stock run really is vLLM's int8 MoE backend.
    assert runs.counts.get("unified_attention", 0) == 0 and runs.counts.get("rotary_embedding", 0) == 0
    assert "keeps vLLM's method" not in runs.ours["log"]
    assert "Using CPU Int8 MoE backend" in runs.stock["log"] or "CPU Int8" in runs.stock["log"]


@pytest.mark.slow
def test_w8a8_compile_mode_matches_stock_vllm_compile_mode(w8a8_runs):
    compiled = w8a8_runs.runs["compiled"]
    assert "TRACED GRAPH" in compiled["log"], compiled["log"][-3000:]  # Dynamo traced the model
    assert compare_greedy_bf16(w8a8_runs.stock_runs["stock_compiled"], compiled) == []
    assert compiled["counts"].get("fused_experts_w8a8", 0) >= 2 * MAX_TOKENS, compiled["counts"]


@pytest.mark.slow
def test_w8a8_perturbed_moe_fails_the_comparison(w8a8_runs):
    mutated = w8a8_runs.runs["mutated"]
    assert mutated["counts"].get("fused_experts_w8a8", 0) > 0
    assert compare_greedy_bf16(w8a8_runs.stock, mutated) != []
