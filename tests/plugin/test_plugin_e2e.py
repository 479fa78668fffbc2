"""The plugin inside vLLM 0.32's real engine on this CPU (slow: each engine start is ~30 s).

Tiny models (configs in ``models/``, seeded random weights of std 0.2 written here) run greedy
decoding of four prompts of different lengths (3 to 30 tokens) for 16 tokens, with a 32-token
step budget, so the first steps mix chunked prefills and decodes:

- stock vLLM on its CPU platform (our plugin registers nothing there) is the reference;
- our interpreter platform (``VAT_PLATFORM=interpreter``): rope, MoE routing + experts and
  paged attention run our Triton kernels under Triton's interpreter, proven by the per-process
  call counters, and the tokens must match the reference (``compare_greedy``);
- one op deliberately perturbed (``VAT_PLUGIN_MUTATE``) must make the comparison fail;
- vLLM's compile mode (Dynamo, ``enforce_eager=False``; ``VLLM_CPU_CI_ENV=1`` so the CPU platform
  uses Dynamo's eager backend instead of building Inductor's C++) gives the eager run's tokens for
  the dense, the MoE and the Gemma-2-style model (soft-capped logits, sliding window), with our ops
  traced as ``vat::`` custom ops;
- the OpenAI API server with the plugin answers completions with the offline tokens;
- DP=2 with the MoE model and balance scheduling: every request completes with the offline
  tokens and the balance exchange runs on both ranks every step, idle steps included.

Engine runs are shared between the tests of a model (module-scoped fixtures)."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest

from tests.plugin._engine import ApiServer, compare_greedy, engine_env, run_offline
from tests.plugin._models import MAX_TOKENS, PROMPTS, materialize
from vllm_ascend_triton.plugin import counters

pytestmark = pytest.mark.slow

OURS = {"VAT_PLATFORM": "interpreter"}
# TORCH_LOGS=graph_code: Dynamo prints each graph it traced, so the test sees our ops in it.
COMPILE = {"VLLM_CPU_CI_ENV": "1", "TORCH_LOGS": "graph_code"}


def _ours_env(counts_dir: Path, **extra: str) -> dict[str, str]:
    return engine_env(**OURS, VAT_PLUGIN_COUNTS_DIR=str(counts_dir), **extra)


class _Runs:
    def __init__(self, name: str, tmp: Path) -> None:
        self.model = materialize(name, tmp / "model")
        self.counts_dir = tmp / "counts"
        self.stock = run_offline(self.model, engine_env())
        self.ours = run_offline(self.model, _ours_env(self.counts_dir))
        self.counts = counters.totals(str(self.counts_dir))
        print(f"\n{name}: stock {self.stock['wall_s']} s, ours {self.ours['wall_s']} s, counts {self.counts}")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> _Runs:
    return _Runs("llama_gqa", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def glm(tmp_path_factory) -> _Runs:
    return _Runs("glm4_moe", tmp_path_factory.mktemp("glm"))


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> _Runs:
    return _Runs("gemma2_tiny", tmp_path_factory.mktemp("gemma"))


def _compiled(runs: _Runs, tmp_path: Path) -> tuple[dict, dict[str, int]]:
    """One run of `runs.model` in vLLM's compile mode with our plugin; (result, call counts)."""
    counts_dir = tmp_path / "counts-compiled"
    run = run_offline(runs.model, _ours_env(counts_dir, **COMPILE), "--compile")
    counts = counters.totals(str(counts_dir))
    print(f"\ncompiled run {run['wall_s']} s, counts {counts}")
    # Dynamo really traced the model, with our rope as one opaque node of the graph.
    assert "TRACED GRAPH" in run["log"], run["log"][-3000:]
    assert "torch.ops.vat.rotary_embedding" in run["log"], run["log"][-3000:]
    return run, counts


def test_llama_gqa_matches_stock_vllm_cpu(llama):
    assert len(llama.ours["tokens"]) == len(PROMPTS)
    assert all(len(t) == MAX_TOKENS for t in llama.ours["tokens"])
    assert compare_greedy(llama.stock, llama.ours) == []
    # Our kernels ran in the engine (2 layers: one rope, one cache write, one attention each per step).
    for op in ("rotary_embedding", "reshape_and_cache", "unified_attention"):
        assert llama.counts.get(op, 0) >= 2 * MAX_TOKENS, llama.counts
    assert "vllm-ascend-triton registered on the interpreter platform" in llama.ours["log"]
    # The reference really is stock vLLM: on its CPU platform the plugin registers no kernel.
    assert "no kernels registered" in llama.stock["log"]
    assert "vllm-ascend-triton registered on" not in llama.stock["log"]


def test_llama_perturbed_attention_fails_the_comparison(llama, tmp_path):
    mutated = run_offline(llama.model, _ours_env(tmp_path / "counts", VAT_PLUGIN_MUTATE="attention:0.5"))
    print(f"\nmutated run {mutated['wall_s']} s")
    assert compare_greedy(llama.stock, mutated) != []


def test_unsupported_attention_layer_keeps_vllm_backend(llama, tmp_path):
    """An fp8 KV cache is outside our attention backend: the platform gives those layers vLLM's
    CPU backend with one log line, the request completes, and our rope still runs."""
    counts_dir = tmp_path / "counts"
    run = run_offline(llama.model, _ours_env(counts_dir), "--kv-cache-dtype", "fp8")
    counts = counters.totals(str(counts_dir))
    print(f"\nfp8 KV cache run {run['wall_s']} s, counts {counts}")
    assert all(len(t) == MAX_TOKENS for t in run["tokens"])
    assert run["log"].count("attention layer keeps vLLM's CPU backend: KV cache dtype fp8") == 1
    assert counts.get("unified_attention", 0) == 0 and counts.get("rotary_embedding", 0) > 0, counts


def test_llama_compile_mode_gives_the_eager_tokens(llama, tmp_path):
    compiled, counts = _compiled(llama, tmp_path)
    assert compiled["tokens"] == llama.ours["tokens"]
    assert compare_greedy(llama.ours, compiled) == []
    for op in ("rotary_embedding", "reshape_and_cache", "unified_attention"):
        assert counts.get(op, 0) >= 2 * MAX_TOKENS, counts


def test_gemma2_style_matches_stock_and_compiles_to_the_eager_tokens(gemma, tmp_path):
    """Gemma-2 style: attention logit soft-capping, a sliding window of 8 on layer 0, GeLU MLP."""
    assert compare_greedy(gemma.stock, gemma.ours) == []
    for op in ("rotary_embedding", "reshape_and_cache", "unified_attention"):
        assert gemma.counts.get(op, 0) >= 2 * MAX_TOKENS, gemma.counts
    compiled, counts = _compiled(gemma, tmp_path)
    assert compiled["tokens"] == gemma.ours["tokens"]
    assert compare_greedy(gemma.ours, compiled) == []
    assert counts.get("unified_attention", 0) >= 2 * MAX_TOKENS, counts


def test_glm4_moe_compile_mode_gives_the_eager_tokens(glm, tmp_path):
    compiled, counts = _compiled(glm, tmp_path)
    assert compiled["tokens"] == glm.ours["tokens"]
    assert compare_greedy(glm.ours, compiled) == []
    assert counts.get("grouped_topk", 0) >= MAX_TOKENS and counts.get("fused_experts", 0) >= MAX_TOKENS, (
        counts
    )


def test_glm4_moe_matches_stock_vllm_cpu(glm):
    assert compare_greedy(glm.stock, glm.ours) == []
    # Layer 0 is dense, layer 1 MoE with grouped sigmoid routing, correction bias, scaling factor.
    assert glm.counts.get("grouped_topk", 0) >= MAX_TOKENS, glm.counts
    assert glm.counts.get("fused_experts", 0) == glm.counts["grouped_topk"]
    for op in ("rotary_embedding", "reshape_and_cache", "unified_attention"):
        assert glm.counts.get(op, 0) >= 2 * MAX_TOKENS, glm.counts


def test_glm4_perturbed_moe_fails_the_comparison(glm, tmp_path):
    # The MoE comparison above can fail: with our expert output scaled, the tokens change.
    mutated = run_offline(glm.model, _ours_env(tmp_path / "counts", VAT_PLUGIN_MUTATE="moe:0.5"))
    print(f"\nmutated MoE run {mutated['wall_s']} s")
    assert all(len(t) == MAX_TOKENS for t in mutated["tokens"])
    assert compare_greedy(glm.stock, mutated) != []


def _server_tokens(server: ApiServer, prompts: list[list[int]]) -> list[list[int]]:
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        choices = list(pool.map(lambda p: server.complete(p, MAX_TOKENS), prompts))
    return [list(c["token_ids"]) for c in choices]


def test_api_server_answers_with_offline_tokens(llama, tmp_path):
    # Balance switch on and no --scheduler-cls: the plugin makes vLLM run BalanceScheduler (with
    # DP=1 it makes vLLM's decisions, so the tokens must not change), and vLLM knows the variable.
    env = _ours_env(tmp_path / "counts", VLLM_ASCEND_BALANCE_SCHEDULING="1")
    server = ApiServer(llama.model, env, tmp_path / "server.log")
    try:
        ready_s = server.wait_ready()
        start = time.monotonic()
        tokens = _server_tokens(server, PROMPTS)
        print(f"\napi server ready in {ready_s:.0f} s, 4 completions in {time.monotonic() - start:.0f} s")
        log = server.log()
    finally:
        server.stop()
    assert tokens == llama.ours["tokens"]
    assert counters.totals(str(tmp_path / "counts")).get("unified_attention", 0) > 0
    assert "scheduler class vllm_ascend_triton.scheduler.BalanceScheduler" in log
    assert "DP balance scheduling on" in log  # logged by BalanceScheduler in the engine core
    assert "keeping the user's scheduler class" not in log
    assert "Unknown vLLM environment variable" not in log


def test_dp2_moe_balance_scheduling(glm, tmp_path):
    counts_dir = tmp_path / "counts"
    env = _ours_env(counts_dir, VLLM_ASCEND_BALANCE_SCHEDULING="1")
    server = ApiServer(
        glm.model,
        env,
        tmp_path / "server.log",
        "--data-parallel-size", "2",
        "--scheduler-cls", "tests.plugin._counting_scheduler.CountingBalanceScheduler",
    )  # fmt: skip
    try:
        ready_s = server.wait_ready()
        start = time.monotonic()
        # One request alone first: one rank works while the other runs idle lockstep steps.
        first = _server_tokens(server, PROMPTS[:1])
        rest = _server_tokens(server, PROMPTS[1:])
        print(f"\nDP=2 server ready in {ready_s:.0f} s, requests in {time.monotonic() - start:.0f} s")
        log = server.log()
    finally:
        server.stop()
    time.sleep(1.0)  # the counters' last timed write (or exit flush) lands after the stop
    per_rank: dict[int, dict[str, int]] = {}
    for entry in counters.read_all(str(counts_dir)):  # engine core and worker of each rank
        if entry["dp_rank"] is not None:
            rank = per_rank.setdefault(entry["dp_rank"], {})
            for op, n in entry["counts"].items():
                rank[op] = rank.get(op, 0) + n
    print(f"per-rank counts: {per_rank}")
    tokens = first + rest
    mismatched = [i for i, (a, b) in enumerate(zip(tokens, glm.ours["tokens"], strict=True)) if a != b]
    assert not mismatched, f"DP=2 tokens differ from DP=1 for prompts {mismatched}: {tokens}"
    assert "keeping the user's scheduler class" in log
    assert sorted(per_rank) == [0, 1], per_rank
    exchanges = [per_rank[r].get("balance_exchange", 0) for r in (0, 1)]
    # Every lockstep step pairs one exchange per rank (a missed one would deadlock); the files
    # may miss the last step of one rank when the server stops mid-step.
    assert min(exchanges) > 0 and abs(exchanges[0] - exchanges[1]) <= 1, per_rank
    assert max(per_rank[r].get("balance_exchange_idle", 0) for r in (0, 1)) > 0, per_rank
    # Both ranks ran the MoE on our kernels (an idle rank runs dummy batches through them too).
    assert all(per_rank[r].get("fused_experts", 0) > 0 for r in (0, 1)), per_rank
