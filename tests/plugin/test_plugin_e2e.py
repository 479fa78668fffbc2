"""The plugin inside vLLM 0.32's real engine on this CPU (slow: minutes in all).

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

Offline runs share processes (module-scoped fixtures): stock vLLM runs the three models in one
process, ours one process per model (eager, compile mode, the perturbed and fp8 variants), the
engine in that process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); the API server and the DP=2 run
use vLLM's spawned engine processes and report our calls through ``VAT_PLUGIN_COUNTS_DIR``."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest
import torch

from tests.plugin._engine import (
    IN_PROCESS,
    ApiServer,
    compare_greedy,
    engine_env,
    offline_run,
    run_engine,
)
from tests.plugin._models import MAX_TOKENS, PROMPTS, materialize
from vllm_ascend_triton.plugin import counters

pytestmark = pytest.mark.slow

OURS = {"VAT_PLATFORM": "interpreter"}
# VLLM_CPU_CI_ENV=1: Dynamo's eager backend (no Inductor C++ build) and no warm-up; TORCH_LOGS:
# Dynamo prints each graph it traced, so the test sees our ops in it.
COMPILE = {"VLLM_CPU_CI_ENV": "1", "TORCH_LOGS": "graph_code"}
# Offline runs keep the engine in the worker's process: the interpreter is on before Python starts.
OFFLINE_OURS = {**IN_PROCESS, **COMPILE, **OURS, "TRITON_INTERPRET": "1", "VAT_BACKEND": "interpreter"}
MODELS = ("llama_gqa", "gemma2_tiny", "glm4_moe")


def _ours_env(counts_dir: Path, **extra: str) -> dict[str, str]:
    return engine_env(**OURS, VAT_PLUGIN_COUNTS_DIR=str(counts_dir), **extra)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("models")
    return {name: materialize(name, tmp / name) for name in MODELS}


@pytest.fixture(scope="module")
def stock(models, tmp_path_factory) -> dict[str, dict]:
    """Stock vLLM on its CPU platform (our plugin registers nothing there), every model in one process."""
    runs = [offline_run(name, model) for name, model in models.items()]
    return run_engine(engine_env(**IN_PROCESS, **COMPILE), runs, tmp_path_factory.mktemp("stock"))


def _ours(model: Path, tmp: Path, *extra_runs: dict) -> dict[str, dict]:
    """Our interpreter platform: the eager run and the compile-mode run of one model (plus
    ``extra_runs``) in one process."""
    runs = [
        offline_run("eager", model),
        *extra_runs,
        offline_run("compiled", model, llm={"enforce_eager": False}),
    ]
    out = run_engine(engine_env(**OFFLINE_OURS), runs, tmp)
    print(
        f"\n{model.name}: "
        + ", ".join(f"{k} {v['startup_s'] + v['generate_s']:.0f} s" for k, v in out.items())
    )
    return out


# vLLM's CPU attention backend refuses an fp8 KV cache without AVX-512 or AMX (cpu_attn.py).
FP8_KV_ON_CPU = torch.cpu._is_avx512_supported() or torch.cpu._is_amx_tile_supported()


@pytest.fixture(scope="module")
def llama(models, tmp_path_factory) -> dict[str, dict]:
    model = models["llama_gqa"]
    runs = [offline_run("mutated", model, mutate="attention:0.5")]
    if FP8_KV_ON_CPU:
        runs.append(offline_run("fp8", model, llm={"kv_cache_dtype": "fp8"}))
    return _ours(model, tmp_path_factory.mktemp("llama"), *runs)


@pytest.fixture(scope="module")
def gemma(models, tmp_path_factory) -> dict[str, dict]:
    return _ours(models["gemma2_tiny"], tmp_path_factory.mktemp("gemma"))


@pytest.fixture(scope="module")
def glm(models, tmp_path_factory) -> dict[str, dict]:
    model = models["glm4_moe"]
    return _ours(model, tmp_path_factory.mktemp("glm"), offline_run("mutated", model, mutate="moe:0.5"))


def _check_compiled(runs: dict[str, dict], ops: tuple[str, ...], per_step: int) -> None:
    """The compile-mode run: Dynamo traced the model with our rope as one opaque node of the
    graph, our ops ran, and the tokens are the eager run's."""
    compiled = runs["compiled"]
    assert "TRACED GRAPH" in compiled["log"], compiled["log"][-3000:]
    assert "torch.ops.vat.rotary_embedding" in compiled["log"], compiled["log"][-3000:]
    assert compiled["tokens"] == runs["eager"]["tokens"]
    assert compare_greedy(runs["eager"], compiled) == []
    for op in ops:
        assert compiled["counts"].get(op, 0) >= per_step * MAX_TOKENS, compiled["counts"]


DENSE_OPS = ("rotary_embedding", "reshape_and_cache", "unified_attention")


def test_llama_gqa_matches_stock_vllm_cpu(llama, stock):
    ours = llama["eager"]
    assert len(ours["tokens"]) == len(PROMPTS)
    assert all(len(t) == MAX_TOKENS for t in ours["tokens"])
    assert compare_greedy(stock["llama_gqa"], ours) == []
    # Our kernels ran in the engine (2 layers: one rope, one cache write, one attention each per step).
    for op in DENSE_OPS:
        assert ours["counts"].get(op, 0) >= 2 * MAX_TOKENS, ours["counts"]
    assert "vat::unified_attention" in ours["registered"]["custom_ops"], ours["registered"]
    # The reference really is stock vLLM: on its CPU platform the plugin registers no kernel.
    for run in stock.values():
        assert "custom_ops" not in run["registered"] and not run["counts"], run["registered"]


def test_llama_perturbed_attention_fails_the_comparison(llama, stock):
    mutated = llama["mutated"]
    assert "TEST MUTATION ACTIVE, attention output scaled by 0.5" in mutated["log"]
    assert mutated["counts"].get("unified_attention", 0) > 0
    assert compare_greedy(stock["llama_gqa"], mutated) != []


def test_unsupported_attention_layer_keeps_vllm_backend(llama):
    """An fp8 KV cache is outside our attention backend: the platform gives those layers vLLM's
    CPU backend with one log line, the request completes, and our rope still runs."""
    if not FP8_KV_ON_CPU:
        pytest.skip("vLLM's CPU attention runs an fp8 KV cache only with AVX-512 or AMX")
    run = llama["fp8"]
    assert all(len(t) == MAX_TOKENS for t in run["tokens"])
    assert run["log"].count("attention layer keeps vLLM's CPU backend: KV cache dtype fp8") == 1
    assert run["counts"].get("unified_attention", 0) == 0 and run["counts"].get("rotary_embedding", 0) > 0


def test_llama_compile_mode_gives_the_eager_tokens(llama):
    _check_compiled(llama, DENSE_OPS, 2)


def test_gemma2_style_matches_stock_and_compiles_to_the_eager_tokens(gemma, stock):
    """Gemma-2 style: attention logit soft-capping, a sliding window of 8 on layer 0, GeLU MLP."""
    assert compare_greedy(stock["gemma2_tiny"], gemma["eager"]) == []
    for op in DENSE_OPS:
        assert gemma["eager"]["counts"].get(op, 0) >= 2 * MAX_TOKENS, gemma["eager"]["counts"]
    _check_compiled(gemma, ("unified_attention",), 2)


def test_glm4_moe_compile_mode_gives_the_eager_tokens(glm):
    _check_compiled(glm, ("grouped_topk", "fused_experts"), 1)


def test_glm4_moe_matches_stock_vllm_cpu(glm, stock):
    ours = glm["eager"]
    assert compare_greedy(stock["glm4_moe"], ours) == []
    # Layer 0 is dense, layer 1 MoE with grouped sigmoid routing, correction bias, scaling factor.
    assert ours["counts"].get("grouped_topk", 0) >= MAX_TOKENS, ours["counts"]
    assert ours["counts"].get("fused_experts", 0) == ours["counts"]["grouped_topk"]
    for op in DENSE_OPS:
        assert ours["counts"].get(op, 0) >= 2 * MAX_TOKENS, ours["counts"]


def test_glm4_perturbed_moe_fails_the_comparison(glm, stock):
    # The MoE comparison above can fail: with our expert output scaled, the tokens change.
    mutated = glm["mutated"]
    assert all(len(t) == MAX_TOKENS for t in mutated["tokens"])
    assert compare_greedy(stock["glm4_moe"], mutated) != []


def _server_tokens(server: ApiServer, prompts: list[list[int]]) -> list[list[int]]:
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        choices = list(pool.map(lambda p: server.complete(p, MAX_TOKENS), prompts))
    return [list(c["token_ids"]) for c in choices]


def test_api_server_answers_with_offline_tokens(models, llama, tmp_path):
    # Balance switch on and no --scheduler-cls: the plugin makes vLLM run BalanceScheduler (with
    # DP=1 it makes vLLM's decisions, so the tokens must not change), and vLLM knows the variable.
    env = _ours_env(tmp_path / "counts", VLLM_ASCEND_BALANCE_SCHEDULING="1")
    server = ApiServer(models["llama_gqa"], env, tmp_path / "server.log")
    try:
        ready_s = server.wait_ready()
        start = time.monotonic()
        tokens = _server_tokens(server, PROMPTS)
        print(f"\napi server ready in {ready_s:.0f} s, 4 completions in {time.monotonic() - start:.0f} s")
        log = server.log()
    finally:
        server.stop()
    assert tokens == llama["eager"]["tokens"]
    assert counters.totals(str(tmp_path / "counts")).get("unified_attention", 0) > 0
    assert "scheduler class vllm_ascend_triton.scheduler.BalanceScheduler" in log
    assert "DP balance scheduling on" in log  # logged by BalanceScheduler in the engine core
    assert "keeping the user's scheduler class" not in log
    assert "Unknown vLLM environment variable" not in log


def test_dp2_moe_balance_scheduling(models, glm, tmp_path):
    counts_dir = tmp_path / "counts"
    env = _ours_env(counts_dir, VLLM_ASCEND_BALANCE_SCHEDULING="1")
    server = ApiServer(
        models["glm4_moe"],
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
    mismatched = [i for i, (a, b) in enumerate(zip(tokens, glm["eager"]["tokens"], strict=True)) if a != b]
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
