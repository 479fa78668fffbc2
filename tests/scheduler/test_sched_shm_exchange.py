"""The shared-memory DP load exchange on real processes: snapshots over many rounds with
overlapped (busy) and back-to-back (idle) ranks, the dead-peer timeout, the collective
transport choice (host identity, VAT_BALANCE_EXCHANGE, fallback), and no /dev/shm entry or
resource-tracker complaint left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vllm_ascend_triton.scheduler import exchange as ex
from vllm_ascend_triton.scheduler.plan import LOAD_VECTOR_LEN, LoadVector

HERE = Path(__file__).parent
WORKER = HERE / "_shm_worker.py"


def _shm_entries() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("vat_dpx_")}


def _launch(scenario: str, world: int, out_dir: Path, fork: bool = False) -> tuple[list[dict[str, Any]], str]:
    """Run the worker's scenario as ``world`` gloo ranks (separate interpreters, or forked
    from one parent with fork=True); every process must exit 0. Returns each rank's JSON and
    the combined output (which includes any resource-tracker process's stderr)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env.pop(ex.ENV_TRANSPORT, None)
    outs = [out_dir / f"r{r}.json" for r in range(world)]
    if fork:
        cmds = [[sys.executable, str(WORKER), "--fork", scenario, str(world), str(port), str(out_dir)]]
    else:
        cmds = [
            [sys.executable, str(WORKER), scenario, str(r), str(world), str(port), str(outs[r])]
            for r in range(world)
        ]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in cmds
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    log = "\n".join(logs)
    for p in procs:
        assert p.returncode == 0, log[-3000:]
    return [json.loads(path.read_text()) for path in outs], log


def _assert_clean_exit(log: str) -> None:
    # The resource tracker complains with "leaked shared_memory" (an attached name it was
    # told about) or a KeyError traceback (a name unregistered twice in a shared tracker).
    for bad in ("leaked", "Traceback", "KeyError", "resource_tracker"):
        assert bad not in log, log[-3000:]


@pytest.mark.timeout(180)
def test_shm_rounds_three_ranks_busy_and_idle(tmp_path: Path) -> None:
    before = _shm_entries()
    ranks, log = _launch("rounds", 3, tmp_path)
    # auto picked shared memory: every rank checked all 400 snapshots itself (row i is rank
    # i's vector of that round) while rank 0 overlapped and the others posted late.
    assert [r["kind"] for r in ranks] == ["ShmLoadExchange"] * 3
    assert [r["rounds"] for r in ranks] == [400] * 3
    assert len({r["segment"] for r in ranks}) == 1
    # The name was gone once every rank had posted, and nothing is left now.
    assert not any(r["name_left_after_setup"] for r in ranks)
    assert _shm_entries() <= before
    assert ranks[0]["logs"] == ["DP balance load exchange: shared memory (all 3 ranks on one host)"]
    assert ranks[1]["logs"] == ranks[2]["logs"] == []  # the others log at debug level
    _assert_clean_exit(log)


@pytest.mark.timeout(180)
def test_shm_ranks_sharing_a_resource_tracker(tmp_path: Path) -> None:
    """Forked ranks share their parent's resource tracker (vLLM's engine cores do): the
    creator's register/unregister pair is the only traffic, so the tracker stays quiet."""
    before = _shm_entries()
    ranks, log = _launch("rounds", 2, tmp_path, fork=True)
    assert [r["rounds"] for r in ranks] == [400, 400]
    assert _shm_entries() <= before
    _assert_clean_exit(log)


@pytest.mark.timeout(180)
def test_shm_timeout_names_the_missing_rank(tmp_path: Path) -> None:
    r0, r1 = _launch("timeout", 2, tmp_path)[0]
    assert r1.get("error") is None
    assert "timed out after 1 s in round 3 on rank 0: ranks [1] did not post" in r0["error"]
    assert 0.9 < r0["waited_s"] < 10.0


@pytest.mark.timeout(180)
def test_shm_dead_peer_named_within_seconds(tmp_path: Path) -> None:
    (tmp_path / "r1.json").write_text("{}")  # rank 1 dies before writing its result
    r0 = _launch("dead", 2, tmp_path)[0][0]
    # Not the 120 s timeout: the peer's process is gone (a zombie of the launcher here).
    assert f"ranks [1] did not post and their engine core processes (pids [{r0['peer_pid']}])" in r0["error"]
    assert r0["waited_s"] < 10.0


@pytest.mark.timeout(180)
def test_transport_choice_is_collective(tmp_path: Path) -> None:
    before = _shm_entries()
    ranks, _ = _launch("select", 2, tmp_path)
    cases = [{c["case"]: c for c in r["cases"]} for r in ranks]
    # Every case ended alike on both ranks (a working exchange of the same kind, or an error).
    assert list(cases[0]) == list(cases[1])
    for name in cases[0]:
        assert cases[0][name].get("kind") == cases[1][name].get("kind"), name
        assert ("error" in cases[0][name]) == ("error" in cases[1][name]), name
    kind = {name: c.get("kind") for name, c in cases[0].items()}
    assert kind["auto"] == "ShmLoadExchange"
    assert kind["host_differs"] == "GlooLoadExchange"
    assert kind["env_gloo"] == "GlooLoadExchange"
    assert kind["env_shm"] == "ShmLoadExchange"
    assert kind["mixed_env"] == "GlooLoadExchange"
    assert kind["arg_beats_env"] == "GlooLoadExchange"
    assert kind["attach_fails"] == "GlooLoadExchange"
    err = {name: c.get("error", "") for name, c in cases[0].items()}
    assert "span 2 hosts" in err["env_shm_host_differs"]
    assert "ValueError" in err["bad_env"] and "VAT_BALANCE_EXCHANGE" in err["bad_env"]
    assert "ranks [1] could not attach" in err["attach_fails_shm_forced"]
    logs = ranks[0]["logs"]
    assert "DP balance load exchange: gloo (the 2 ranks span 2 hosts)" in logs
    assert "DP balance load exchange: gloo (VAT_BALANCE_EXCHANGE=gloo)" in logs
    assert any(
        line.startswith("DP balance load exchange: gloo (fell back: ranks [1] could not attach")
        for line in logs
    )
    assert _shm_entries() <= before  # the failed setups unlinked their segments too


class _OneRank:
    """A one-rank group: enough for the checks that need no peer."""

    def rank(self) -> int:
        return 0

    def size(self) -> int:
        return 1

    def allgather(self, outs: list[list[Any]], ins: list[Any]) -> Any:
        outs[0][0].copy_(ins[0])
        return self

    def wait(self) -> bool:
        return True


def test_one_rank_strict_alternation_and_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    exchange = ex.make_load_exchange(_OneRank(), "shm")
    assert isinstance(exchange, ex.ShmLoadExchange)
    for rnd in range(5):  # both slots reused several times
        assert [list(v) for v in exchange.all_gather(LoadVector(*range(rnd, rnd + LOAD_VECTOR_LEN)))] == [
            list(range(rnd, rnd + LOAD_VECTOR_LEN))
        ]
    handle = exchange.start(LoadVector(*[0] * LOAD_VECTOR_LEN))
    with pytest.raises(RuntimeError, match="twice"):
        exchange.start(LoadVector(*[0] * LOAD_VECTOR_LEN))
    with pytest.raises(RuntimeError, match="finish"):
        exchange.finish(handle + 1)
    exchange.finish(handle)
    exchange.close()
    monkeypatch.setenv(ex.ENV_TRANSPORT, "nccl")
    with pytest.raises(ValueError, match="VAT_BALANCE_EXCHANGE"):
        ex.make_load_exchange(_OneRank())
    monkeypatch.setenv(ex.ENV_TRANSPORT, "auto")
    monkeypatch.setenv(ex.ENV_TIMEOUT, "soon")
    with pytest.raises(ValueError, match=ex.ENV_TIMEOUT):
        ex.make_load_exchange(_OneRank())
    with pytest.raises(ValueError, match="timeout_s"):
        ex.make_load_exchange(_OneRank(), timeout_s=0.0)


def test_host_identity_is_stable_int64() -> None:
    a, b = ex.host_identity(), ex.host_identity()
    assert a == b and -(2**63) <= a < 2**63
