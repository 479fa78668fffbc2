"""The load exchange on a real 2-process gloo group, hooked into vLLM's DP engine-core
loop function, does not hang when one rank never has a request."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_exchange_two_process_gloo_idle_rank(tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "_gloo_worker.py"), str(r), str(port), str(tmp_path / f"r{r}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=240)
            logs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2))
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
    assert r0["snapshots"][0][1] == [0, 0, 0, 0, 0, 4, 0, 0]
    assert r0["snapshots"][0][0] != r0["snapshots"][0][1]
    # From the second step on, rank 0 scheduled under a plan computed from the exchange.
    assert any(p is not None for p in r0["plans"][1:])
