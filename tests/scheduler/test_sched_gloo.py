"""The load exchange on a real 2-process gloo group (over gloo itself, or the shared memory
set up over it), hooked into vLLM's DP engine-core loop function, does not hang when one
rank never has a request."""

from __future__ import annotations

from pathlib import Path

import pytest
from sched_helpers import run_two_ranks

from vllm_ascend_triton.scheduler.plan import LoadVector

HERE = Path(__file__).parent


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("transport", "kind"), [("gloo", "GlooLoadExchange"), ("auto", "ShmLoadExchange")])
def test_exchange_two_process_gloo_idle_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str, kind: str
) -> None:
    # The hook builds the exchange over the gloo dp_group: forced gloo, or auto (one host:
    # shared memory).
    monkeypatch.setenv("VAT_BALANCE_EXCHANGE", transport)
    r0, r1 = run_two_ranks(HERE / "_gloo_worker.py", tmp_path)
    assert r0["exchange"] == r1["exchange"] == kind
    assert r0["finished"] and r1["finished"]
    # Lockstep: both ranks went through the same iterations and saw identical snapshots.
    assert r0["iterations"] == r1["iterations"] > 1
    assert r0["snapshots"] == r1["snapshots"]
    assert r1["busy_steps"] == 0 and r0["busy_steps"] > 1
    # The busy rank posted its vector right after schedule() (overlapped with the step; not
    # on its first step, which precedes the first boundary), the idle rank at the boundary:
    # the collectives still paired up.
    assert r0["overlapped"] == r0["busy_steps"] - 1 and r1["overlapped"] == 0
    # The idle rank's vector is all zeros but for its free slots; rank 0 reported work.
    idle = LoadVector(0, 0, 0, 0, 0, 0, 0, 0)._replace(free_slots=4)
    assert r0["snapshots"][0][1] == list(idle)
    assert r0["snapshots"][0][0] != r0["snapshots"][0][1]
    # From the second step on, rank 0 scheduled under a plan computed from the exchange.
    assert any(p is not None for p in r0["plans"][1:])
