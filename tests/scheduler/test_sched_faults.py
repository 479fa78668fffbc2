"""Balance mode at DP=2 in the real engine under faults (slow: each server start is ~1 min).

The cases live in benchmarks/balance_faults.py (also runnable as a script, with the soak that
is too long for CI); these tests run the three short ones against fresh servers and check
what the issue asks: structured output mixed with plain requests completes; clients dropping
a fifth of the streams leave 0 running, 0 waiting and an empty KV cache; killing one engine
core makes the server exit with an error within a bound, and its whole process group is gone
within 60 s of that exit (no orphan)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# The server must exit within this long after an engine core dies (measured 5.7 s here:
# vLLM's engine monitor notices the dead process; the shared-memory exchange names a dead
# peer within about a second; well under the exchange's 300 s hang timeout).
KILL_EXIT_BOUND_S = 60.0


def _faults():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(
        "vat_benchmarks_balance_faults", BENCHMARKS / "balance_faults.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(900)
def test_dp2_balance_structured_output_and_client_disconnects(tmp_path: Path) -> None:
    faults = _faults()
    server = faults.start(tmp_path, "mixed")
    try:
        structured = faults.case_structured(server)
        disconnect = faults.case_disconnect(server)
        log = server.log()
    finally:
        server.stop()
    print(f"\nstructured: {structured}\ndisconnect: {disconnect}")
    assert "DP balance scheduling: vllm-ascend-triton BalanceScheduler runs" in log
    # The ranks timed their steps in the running engine: the step-cost hold had a fit.
    fits = [(int(f), int(t)) for f, t in re.findall(r"step fit (\d+) us \+ (\d+) ns/token", log)]
    assert any(t > 0 for _, t in fits), fits
    assert structured["completed"] == structured["requests"]
    assert structured["structured_valid"] == structured["structured"], structured["invalid_samples"]
    assert disconnect["dropped_mid_stream"] == disconnect["requests"] // 5
    assert disconnect["completed_full"] == disconnect["expected_full"]
    assert disconnect["metrics_after"] == {
        "vllm:num_requests_running": 0.0,
        "vllm:num_requests_waiting": 0.0,
        "vllm:kv_cache_usage_perc": 0.0,
    }


@pytest.mark.timeout(900)
def test_dp2_balance_engine_core_killed_server_exits_no_orphans(tmp_path: Path) -> None:
    faults = _faults()
    server = faults.start(tmp_path, "kill")
    try:
        res = faults.case_kill(server)
    finally:
        server.stop()
    print(f"\nkill: {res}")
    assert res["processes_before"] >= 4  # API server, coordinator, two engine cores
    assert res["server_exit_s"] is not None and res["server_exit_s"] < KILL_EXIT_BOUND_S, res
    # vLLM's API server shuts down gracefully after an engine death (exit status 0 in 0.32):
    # the failure is told by the EngineDeadError line, not by the status.
    assert res["server_returncode"] is not None
    assert res["survivors"] == [], res  # every process of the group gone within 60 s of the exit
    assert res["error_lines"], "no log line names the dead engine"
