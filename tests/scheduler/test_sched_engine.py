"""End to end: `--scheduler-cls vllm_ascend_triton.scheduler.BalanceScheduler` inside vLLM's real
engine on a CPU (tiny dummy-weight Llama), balance switched on by the environment variable.
With DP=1 balance mode degrades to vLLM's scheduler, so the greedy tokens must be identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_engine_worker.py")


def _run_engine(scheduler_cls: str, balance: bool) -> dict:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # engine core in this child
    env["VLLM_ASCEND_BALANCE_SCHEDULING"] = "1" if balance else "0"
    proc = subprocess.run(
        [sys.executable, str(WORKER), scheduler_cls], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"engine run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.slow
def test_balance_scheduler_runs_in_vllm_engine():
    ours = _run_engine("vllm_ascend_triton.scheduler.BalanceScheduler", balance=True)
    upstream = _run_engine("vllm", balance=False)
    assert ours["scheduler"] == "BalanceScheduler" and ours["balance_enabled"] is True
    assert upstream["scheduler"] in ("Scheduler", "AsyncScheduler")
    assert len(ours["tokens"]) == 6 and all(len(t) == 8 for t in ours["tokens"])
    assert ours["tokens"] == upstream["tokens"]
