"""Our MLA backend (``VAT_TRITON_MLA``) inside vLLM 0.32.

Fast tests: the backend's pieces against the kernels' references (the prefill backend's two entry
points with vLLM's metadata fields, the custom ops and their fake implementations, the platform's
choice for MLA layers and for the MLA prefill backend).

End to end (slow: engine starts): a tiny DeepSeek-V3 (``models/deepseek_v3_tiny``: MLA with
q_lora_rank 96, kv_lora_rank 512, rope 64 / nope 64 / v 64 dims, YaRN rope with mscale, MoE with
grouped top-k, sigmoid scores, a correction bias and a shared expert; random weights of std 0.2)
greedy-decodes four prompts of 3-70 tokens. Stock vLLM CPU with its ``CPU_MLA`` backend (which
turns chunked prefill off) is the reference; ours runs on the interpreter platform with chunked
prefill and a 32-token step budget, so the long prompts prefill over their cached context in
chunks while the short ones decode. Tokens must match, the counters must show our cache write,
decode, prefill and context-chunk prefill ran, vLLM's compile mode must give the eager tokens, and
a perturbed MLA output must fail the comparison.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.plugin._engine import IN_PROCESS, compare_greedy, engine_env, offline_run, run_engine
from tests.plugin._models import MLA_MAX_TOKENS, MLA_PROMPTS
from vllm_ascend_triton.kernels.mla.reference import mla_prefill_reference
from vllm_ascend_triton.plugin import counters

MODEL = "deepseek_v3_tiny"
# Stock vLLM CPU's MLA decode kernel supports block 16 only.
MLA_LLM = {"max_model_len": 128, "block_size": 16, "enable_prefix_caching": False}
# Chunked prefill with a 32-token step budget (the long prompts prefill over their cached context).
CHUNKED = {**MLA_LLM, "enable_chunked_prefill": True, "max_num_batched_tokens": 32}
OURS = {**IN_PROCESS, "VAT_PLATFORM": "interpreter", "TRITON_INTERPRET": "1", "VAT_BACKEND": "interpreter",
        "VLLM_CPU_CI_ENV": "1", "TORCH_LOGS": "graph_code"}  # fmt: skip


# --- fast tests ------------------------------------------------------------------------------------


def _prefill_backend():
    from vllm_ascend_triton.plugin.mla_backend import VatMLAPrefillBackend

    return VatMLAPrefillBackend(
        num_heads=2, scale=0.2, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=24,
        vllm_config=None,
    )  # fmt: skip


def test_prefill_backend_new_tokens_and_context_chunk_match_the_reference() -> None:
    g = torch.Generator().manual_seed(0)
    backend = _prefill_backend()
    q, k, v = (
        torch.randn(9, 2, 48, generator=g),
        torch.randn(9, 2, 48, generator=g),
        torch.randn(9, 2, 24, generator=g),
    )
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    backend.prepare_metadata(SimpleNamespace(query_start_loc=cu, max_query_len=5))
    out, lse = backend.run_prefill_new_tokens(q, k, v, return_softmax_lse=True)
    ref, ref_lse = mla_prefill_reference(q, k, v, cu, cu, 0.2, True)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=0)
    only = backend.run_prefill_new_tokens(q, k, v, return_softmax_lse=False)
    torch.testing.assert_close(only, out)
    kc, vc = torch.randn(11, 2, 48, generator=g), torch.randn(11, 2, 24, generator=g)
    ck = torch.tensor([0, 0, 11], dtype=torch.int32)  # the first request has no context in this chunk
    chunk = SimpleNamespace(query_start_loc=cu, cu_seq_lens=ck, max_query_len=5, max_seq_len=11)
    out, lse = backend.run_prefill_context_chunk(chunk, q, kc, vc)
    ref, ref_lse = mla_prefill_reference(q, kc, vc, cu, ck, 0.2, False)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=0)
    assert bool(torch.isinf(lse[:, :4]).all())  # no context: no weight in vLLM's merge


def test_mla_ops_are_registered_with_fake_implementations() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vllm_ascend_triton.plugin import mla_backend

    ops = mla_backend._ops()
    before = counters.snapshot().get("mla_decode", 0)
    q, cache = torch.randn(2, 3, 80), torch.randn(2, 16, 80)
    out, lse = torch.empty(2, 3, 64), torch.empty(2, 3)
    table, lens = torch.tensor([[0], [1]], dtype=torch.int32), torch.tensor([5, 16], dtype=torch.int32)
    ops.mla_decode(q, cache, out, lse, table, lens, 16, 0.1, 64, 1)
    assert counters.snapshot()["mla_decode"] == before + 1
    with FakeTensorMode() as mode:  # what Dynamo sees: shapes only, no kernel runs
        fq, fc = mode.from_tensor(q), mode.from_tensor(cache)
        ops.mla_decode(fq, fc, torch.empty(2, 3, 64), torch.empty(2, 3), mode.from_tensor(table),
                       mode.from_tensor(lens), 16, 0.1, 64, 1)  # fmt: skip
        ops.concat_and_cache_mla(
            torch.empty(2, 64), torch.empty(2, 1, 16), fc, torch.empty(2, dtype=torch.int64)
        )
    assert counters.snapshot()["mla_decode"] == before + 1


def test_platform_picks_our_mla_backend_and_prefill_backend() -> None:
    from vllm.v1.attention.backends.mla.prefill.selector import MLAPrefillSelectorConfig
    from vllm.v1.attention.selector import AttentionSelectorConfig

    from vllm_ascend_triton.plugin.mla_backend import (
        BACKEND_PATH,
        VatMLAPrefillBackend,
        mla_unsupported_reason,
    )
    from vllm_ascend_triton.plugin.platform import InterpreterPlatform

    cfg = AttentionSelectorConfig(
        head_size=576, dtype=torch.float32, kv_cache_dtype="auto", block_size=16, use_mla=True
    )
    assert mla_unsupported_reason(cfg) is None
    assert InterpreterPlatform.get_attn_backend_cls(None, cfg) == BACKEND_PATH
    assert (
        InterpreterPlatform.get_mla_prefill_backend_cls(MLAPrefillSelectorConfig(torch.float32))
        is VatMLAPrefillBackend
    )
    for bad, why in (
        (cfg._replace(use_sparse=True), "sparse"),
        (cfg._replace(kv_cache_dtype="fp8"), "quantized"),
        (cfg._replace(head_size=1024), "latent cache row"),
    ):
        assert why in mla_unsupported_reason(bad)
    # An MLA layer we do not serve keeps vLLM's CPU MLA backend.
    assert InterpreterPlatform.get_attn_backend_cls(None, cfg._replace(head_size=1024)) != BACKEND_PATH


def test_platform_keeps_chunked_prefill_for_mla_on_our_backend() -> None:
    """vLLM's CPU platform turns chunked prefill and prefix caching off for MLA models (without
    AMX); for layers our MLA backend serves the interpreter platform puts them back."""
    from vllm_ascend_triton.plugin.platform import mla_chunking_settings, restore_mla_chunking

    def config(**model):
        return SimpleNamespace(
            model_config=SimpleNamespace(
                **{"use_mla": True, "dtype": torch.float32, "hf_text_config": None, **model}
            ),
            scheduler_config=SimpleNamespace(enable_chunked_prefill=True, max_num_batched_tokens=32),
            cache_config=SimpleNamespace(cache_dtype="auto", enable_prefix_caching=True),
        )

    cfg = config()
    kept = mla_chunking_settings(cfg)
    assert kept == (True, 32, True)
    cfg.scheduler_config.enable_chunked_prefill, cfg.scheduler_config.max_num_batched_tokens = False, 8192
    cfg.cache_config.enable_prefix_caching = False  # what vLLM's CPU platform does for MLA
    restore_mla_chunking(cfg, kept)
    assert (cfg.scheduler_config.enable_chunked_prefill, cfg.scheduler_config.max_num_batched_tokens) == (
        True,
        32,
    )
    assert cfg.cache_config.enable_prefix_caching
    assert mla_chunking_settings(config(use_mla=False)) is None
    assert (
        mla_chunking_settings(config(hf_text_config=SimpleNamespace(index_topk=2048))) is None
    )  # sparse MLA
    fp8 = config()
    fp8.cache_config.cache_dtype = "fp8"
    assert mla_chunking_settings(fp8) is None


# --- end to end ------------------------------------------------------------------------------------


class _Runs:
    def __init__(self, tmp: Path) -> None:
        import tests.plugin._models as models

        self.model = models.materialize(MODEL, tmp / "model")

        def run(label: str, llm: dict, **spec) -> dict:
            return offline_run(
                label, self.model, prompts=MLA_PROMPTS, max_tokens=MLA_MAX_TOKENS, llm=llm, **spec
            )

        # vLLM turns chunked prefill off for its CPU MLA backend: no step budget there.
        stock = run("stock", {**MLA_LLM, "attention_backend": "CPU_MLA", "max_num_batched_tokens": None})
        self.stock = run_engine(engine_env(**IN_PROCESS), [stock], tmp)["stock"]
        ours = [
            run("ours", CHUNKED),
            run("compiled", {**CHUNKED, "enforce_eager": False}),
            run("mutated", CHUNKED, mutate="attention:0.5"),
        ]
        self.runs = run_engine(engine_env(**OURS), ours, tmp)
        self.ours = self.runs["ours"]
        self.counts = self.ours["counts"]
        print(
            f"\n{MODEL}: stock {self.stock['generate_s']} s, ours {self.ours['generate_s']} s, {self.counts}"
        )


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory) -> _Runs:
    return _Runs(tmp_path_factory.mktemp("deepseek"))


@pytest.mark.slow
def test_tiny_deepseek_v3_matches_stock_vllm_cpu_mla(deepseek) -> None:
    MAX_TOKENS = MLA_MAX_TOKENS
    assert [len(t) for t in deepseek.ours["tokens"]] == [MAX_TOKENS] * len(MLA_PROMPTS)
    assert compare_greedy(deepseek.stock, deepseek.ours) == []
    c = deepseek.counts
    # 2 MLA layers: every step writes the latent cache; decode steps ran our MQA decode; the
    # prompts' first chunks ran our causal prefill and the later chunks our context-chunk prefill.
    assert c.get("concat_and_cache_mla", 0) >= 2 * MAX_TOKENS, c
    assert c.get("mla_decode", 0) >= 2 * (MAX_TOKENS - 1), c
    assert c.get("mla_prefill", 0) >= 2, c
    assert c.get("mla_prefill_context_chunk", 0) >= 2, c
    assert "VAT_TRITON_MLA" in deepseek.ours["log"]
    assert "CPU_MLA" in deepseek.stock["log"]


@pytest.mark.slow
def test_tiny_deepseek_v3_compile_mode_gives_the_eager_tokens(deepseek) -> None:
    compiled = deepseek.runs["compiled"]
    # Dynamo traced the model with our rope and routing as opaque nodes (attention runs between
    # vLLM's piecewise graphs).
    for node in ("TRACED GRAPH", "torch.ops.vat.rotary_embedding", "torch.ops.vat.grouped_topk"):
        assert node in compiled["log"], (node, compiled["log"][-3000:])
    assert compiled["tokens"] == deepseek.ours["tokens"]
    assert compare_greedy(deepseek.ours, compiled) == []
    for op in ("concat_and_cache_mla", "mla_decode", "mla_prefill", "mla_prefill_context_chunk"):
        assert compiled["counts"].get(op, 0) > 0, compiled["counts"]


@pytest.mark.slow
def test_tiny_deepseek_v3_perturbed_mla_output_fails_the_comparison(deepseek) -> None:
    mutated = deepseek.runs["mutated"]
    assert mutated["counts"].get("mla_decode", 0) > 0
    assert compare_greedy(deepseek.stock, mutated) != []
