"""Beside vllm-ascend, through vLLM 0.32's real engine on this CPU (slow: each engine start ~30 s).

The stand-in ``vllm_ascend`` (``tests/ascend_standin``: vllm-ascend's entry points and
registration mechanics over vLLM's CPU platform) is installed into a folder of its own and seen
only by the engine processes started here. The tiny models of ``tests/plugin`` (seeded random
weights of a real scale) run greedy decoding of four prompts:

- stand-in only (our plugins not loaded: ``VLLM_PLUGINS`` names the stand-in's) is the reference;
- off: our package installed, ``VAT_ASCEND`` unset: tokens, vLLM's out-of-tree op registry, the
  attention backend of every layer, the MoE layers' classes and quant methods, the scheduler and
  worker classes and the platform class are exactly the reference's;
- on (``VAT_ASCEND=1``, our kernels under Triton's interpreter): the reference's greedy tokens
  (``compare_greedy``) with our per-op counters > 0 for rope, cache write, attention, routing and
  experts and none of the stand-in's own calls for those ops; a perturbed attention output
  (``VAT_PLUGIN_MUTATE``) makes the comparison fail;
- the same in vLLM's compile mode (``VLLM_CPU_CI_ENV=1``, not ``enforce_eager``).

Probed runs keep the engine core and worker in the worker's process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the probe (``tests/ascend_standin/_probe.py``) can read
vLLM's objects, and one process serves every run of one environment (reference, off, on); one
opt-in run uses vLLM's spawned engine processes (where our general plugin runs again in each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ascend_standin._install import STANDIN_ONLY, install_standin, standin_env
from tests.plugin._engine import IN_PROCESS, compare_greedy, offline_run, run_engine, run_offline
from tests.plugin._models import MAX_TOKENS, PROMPTS, materialize
from vllm_ascend_triton.plugin import counters

pytestmark = pytest.mark.slow

PROBE = "tests.ascend_standin._probe:probe"
OURS = {"VAT_ASCEND": "1", "TRITON_INTERPRET": "1", "VAT_BACKEND": "interpreter"}
# Every process may run compile mode (Dynamo's eager backend on the CPU platform, no warm-up).
COMPILE = {"VLLM_CPU_CI_ENV": "1"}
# What our package may change when it is on, and what only exists with it installed.
OURS_ONLY_KEYS = ("our_counts", "our_plugin")


def _without_ours(probe: dict) -> dict:
    return {k: v for k, v in probe.items() if k not in OURS_ONLY_KEYS}


class _Runs:
    """The probed runs of one model in one mode (eager or compile): the stand-in alone, off, on."""

    def __init__(self, model: Path, site: Path, reference: dict, off: dict | None, on: dict) -> None:
        self.model, self.site, self.reference, self.off, self.on = model, site, reference, off, on


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return install_standin(tmp_path_factory.mktemp("standin"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, site) -> dict:
    """Every probed run: one process for the stand-in alone, one with our package off, one on."""
    tmp = tmp_path_factory.mktemp("ascend")
    models = {name: materialize(name, tmp / name) for name in ("llama_gqa", "glm4_moe")}

    def run(label: str, model: str, compiled: bool = False, **spec) -> dict:
        llm = {"enforce_eager": False} if compiled else {}
        return offline_run(label, models[model], probe=PROBE, llm=llm, **spec)

    both = [run("llama", "llama_gqa"), run("llama_compiled", "llama_gqa", True), run("glm", "glm4_moe")]
    on = [
        *both,
        run("llama_mutated", "llama_gqa", mutate="attention:0.5"),
        run("glm_compiled", "glm4_moe", True),
    ]
    return {
        "models": models,
        "reference": run_engine(
            standin_env(site, VLLM_PLUGINS=STANDIN_ONLY, **IN_PROCESS, **COMPILE), both, tmp
        ),
        "off": run_engine(standin_env(site, **IN_PROCESS, **COMPILE), both, tmp),
        "on": run_engine(standin_env(site, **IN_PROCESS, **COMPILE, **OURS), on, tmp),
    }


def _view(runs: dict, model: str, label: str, site: Path, *, reference: str | None = None) -> _Runs:
    return _Runs(
        runs["models"][model],
        site,
        runs["reference"][reference or label],
        runs["off"].get(label),
        runs["on"][label],
    )


@pytest.fixture(scope="module")
def llama(runs, site) -> _Runs:
    return _view(runs, "llama_gqa", "llama", site)


@pytest.fixture(scope="module")
def glm(runs, site) -> _Runs:
    return _view(runs, "glm4_moe", "glm", site)


def _check_off(runs: _Runs) -> None:
    ref, off = runs.reference["probe"], runs.off["probe"]
    assert ref["our_plugin"] == {"ran": False, "registered": {}}  # the reference really is without us
    assert off["our_plugin"] == {"ran": True, "registered": {}}  # we ran, and registered nothing
    assert _without_ours(off) == _without_ours(ref)
    assert runs.off["tokens"] == runs.reference["tokens"]
    assert off["our_counts"] == {}
    assert ref["platform"] == "vllm_ascend.platform.NPUPlatform"
    assert ref["worker_cls"] == "vllm_ascend.worker.worker.NPUWorker"
    assert set(ref["attention_backends"].values()) == {
        "vllm_ascend.attention.attention_v1.AscendAttentionBackend"
    }


# Calls per greedy step: 2 layers of rope / cache write / attention; 1 MoE layer (GLM: layer 0 dense).
DENSE_OPS = {"rotary_embedding": 2, "reshape_and_cache": 2, "unified_attention": 2}
MOE_OPS = {**DENSE_OPS, "grouped_topk": 1, "fused_experts": 1}


def _check_on(runs: _Runs, ops: dict[str, int], standin_ops: tuple[str, ...]) -> dict:
    on = runs.on["probe"]
    assert on["platform"] == "vllm_ascend_triton.plugin.ascend.VatAscendPlatform"
    assert set(on["attention_backends"].values()) == {
        "vllm_ascend_triton.plugin.ascend.VatAscendAttentionBackend"
    }
    assert all(len(t) == MAX_TOKENS for t in runs.on["tokens"]) and len(runs.on["tokens"]) == len(PROMPTS)
    assert compare_greedy(runs.reference, runs.on) == []
    for op, per_step in ops.items():
        assert on["our_counts"].get(op, 0) >= per_step * MAX_TOKENS, on["our_counts"]
    print(f"\nour counts {on['our_counts']}, stand-in counts {on['standin_counts']}")
    for op in standin_ops:  # the stand-in's own implementations did not run
        assert on["standin_counts"].get(op, 0) == 0, on["standin_counts"]
    return on


def test_dense_off_path_is_the_stand_in_alone(llama):
    _check_off(llama)
    assert llama.reference["probe"]["standin_counts"]["attention"] > 0  # its own ops ran there


def test_dense_opt_in_runs_our_rope_cache_write_and_attention(llama):
    on = _check_on(llama, DENSE_OPS, ("rope", "attention"))
    assert on["rope_classes"] == [
        "vllm.model_executor.layers.rotary_embedding.common.ApplyRotaryEmb",
        "vllm_ascend_triton.plugin.ascend.VatAscendRotaryEmbedding",
    ]
    assert on["worker_cls"] == (
        "vllm_ascend_triton.plugin.ascend.VatWorker_over_vllm_ascend_DOT_worker_DOT_worker_DOT_NPUWorker"
    )


def test_dense_perturbed_attention_fails_the_comparison(llama, runs):
    mutated = runs["on"]["llama_mutated"]
    assert mutated["probe"]["our_counts"].get("unified_attention", 0) > 0
    assert compare_greedy(llama.reference, mutated) != []


def test_dense_opt_in_with_spawned_engine_processes(llama, tmp_path):
    counts_dir = tmp_path / "counts"
    got = run_offline(
        llama.model, standin_env(llama.site, **OURS, VAT_PLUGIN_COUNTS_DIR=str(counts_dir)), tmp_path
    )
    assert compare_greedy(llama.reference, got) == []
    totals = counters.totals(str(counts_dir))
    for op in ("rotary_embedding", "reshape_and_cache", "unified_attention"):
        assert totals.get(op, 0) >= 2 * MAX_TOKENS, totals
    assert "vllm-ascend-triton registered beside vllm-ascend (VAT_ASCEND=1)" in got["log"]
    assert "ops installed after vllm-ascend's registration" in got["log"]


def test_moe_off_path_is_the_stand_in_alone(glm):
    _check_off(glm)
    ref = glm.reference["probe"]
    assert {m["method"] for m in ref["moe_layers"].values()} == {
        "vllm_ascend.ops.fused_moe.routed_experts.AscendUnquantizedFusedMoEMethod"
    }
    assert ref["standin_counts"]["experts"] > 0 and ref["standin_counts"]["routing"] > 0


def test_moe_opt_in_runs_our_routing_and_experts(glm):
    on = _check_on(
        glm,
        MOE_OPS,
        ("rope", "attention", "routing", "experts"),
    )
    # Layer 1 is the MoE layer: vllm-ascend's routed-experts class under ours, our unquantized method.
    assert list(on["moe_layers"].values()) == [
        {
            "layer": "vllm_ascend_triton.plugin.ascend.VatAscendRoutedExperts",
            "method": "vllm_ascend_triton.plugin.ascend.VatAscendUnquantizedFusedMoEMethod",
        }
    ]


@pytest.fixture(scope="module")
def llama_compiled(runs, site) -> _Runs:
    return _view(runs, "llama_gqa", "llama_compiled", site)


@pytest.fixture(scope="module")
def glm_compiled(runs, site) -> _Runs:
    # The off path in compile mode is checked on the dense model; here our compiled run against
    # the eager stand-in reference (fp32: same greedy tokens within compare_greedy's tolerance).
    return _view(runs, "glm4_moe", "glm_compiled", site, reference="glm")


def test_dense_compile_mode(llama_compiled):
    assert llama_compiled.reference["probe"]["compilation_mode"] != "0"
    _check_off(llama_compiled)
    _check_on(llama_compiled, DENSE_OPS, ("rope", "attention"))
    assert (
        llama_compiled.on["probe"]["compilation_mode"]
        == llama_compiled.reference["probe"]["compilation_mode"]
    )


def test_moe_compile_mode(glm_compiled):
    assert glm_compiled.on["probe"]["compilation_mode"] != "0"
    _check_on(
        glm_compiled,
        MOE_OPS,
        ("rope", "attention", "routing", "experts"),
    )
