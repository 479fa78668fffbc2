"""End to end: `--scheduler-cls vllm_ascend_triton.scheduler.BalanceScheduler` inside vLLM's real
engine on a CPU (tiny dummy-weight Llama), balance switched on by the environment variable.
With DP=1 balance mode degrades to vLLM's scheduler, so the greedy tokens must be identical to
those of vLLM's own scheduler (chosen explicitly in the same process, so the plugin keeps it)."""

from pathlib import Path

import pytest

from tests.plugin._engine import IN_PROCESS, engine_env, offline_run, run_engine
from vllm_ascend_triton.scheduler.sim.vllm_setup import tiny_model_dir

# max_num_batched_tokens 64 forces chunked prefill and queueing with 6 prompts.
LLM = {"load_format": "dummy", "max_model_len": 512, "max_num_batched_tokens": 64}
PROMPTS = [list(range(10 + i, 50 + 18 * i)) for i in range(6)]


def probe(llm, counts: dict[str, int]) -> dict:
    """The scheduler the in-process engine core runs."""
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    return {
        "scheduler": type(scheduler).__name__,
        "balance_enabled": getattr(scheduler, "balance_enabled", None),
    }


@pytest.mark.slow
def test_balance_scheduler_runs_in_vllm_engine(tmp_path: Path) -> None:
    model = tiny_model_dir()

    def run(label: str, scheduler_cls: str) -> dict:
        llm = {**LLM, "scheduler_cls": scheduler_cls}
        return offline_run(label, model, prompts=PROMPTS, max_tokens=8, logprobs=None, llm=llm,
                           probe="tests.scheduler.test_sched_engine:probe")  # fmt: skip

    env = engine_env(**IN_PROCESS, VLLM_ASCEND_BALANCE_SCHEDULING="1")
    runs = [
        run("ours", "vllm_ascend_triton.scheduler.BalanceScheduler"),
        run("upstream", "vllm.v1.core.sched.scheduler.Scheduler"),
    ]
    out = run_engine(env, runs, tmp_path)
    ours, upstream = out["ours"], out["upstream"]
    assert ours["probe"] == {"scheduler": "BalanceScheduler", "balance_enabled": True}
    assert upstream["probe"]["scheduler"] == "Scheduler"
    assert len(ours["tokens"]) == 6 and all(len(t) == 8 for t in ours["tokens"])
    assert ours["tokens"] == upstream["tokens"]
