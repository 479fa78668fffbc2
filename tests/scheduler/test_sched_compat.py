"""vLLM-version hook checks, vllm-ascend coexistence, the config switches, and the balance
counters' log line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sched_helpers import add, lockstep, run_two_ranks
from vllm.v1.core.sched.scheduler import Scheduler

from vllm_ascend_triton.scheduler import BalanceScheduler, compat
from vllm_ascend_triton.scheduler.plan import BalanceParams
from vllm_ascend_triton.scheduler.sim.inprocess import InProcessExchangeGroup
from vllm_ascend_triton.scheduler.sim.vllm_setup import SchedulerShape, make_scheduler, make_vllm_config
from vllm_ascend_triton.scheduler.stats import BalanceStats

HERE = Path(__file__).parent
SHAPE = SchedulerShape(
    max_num_seqs=4, max_num_batched_tokens=256, max_model_len=2048, block_size=16, num_blocks=200
)


def test_hooks_present_on_this_vllm() -> None:
    sched = make_scheduler(BalanceScheduler, SHAPE, balance=True)
    assert compat.missing_hooks(sched, data_parallel=True) == []


def test_missing_hook_refused_with_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm

    monkeypatch.delattr(Scheduler, "_reserve_prefill_lookahead")
    with pytest.raises(compat.UnsupportedVLLMError) as err:
        make_scheduler(BalanceScheduler, SHAPE, balance=True)
    msg = str(err.value)
    assert vllm.__version__ in msg and "Scheduler._reserve_prefill_lookahead" in msg
    assert compat.SUPPORTED_VLLM in msg
    # Balance off needs no hook: the scheduler is upstream's.
    assert make_scheduler(BalanceScheduler, SHAPE, balance=False).balance_enabled is False


def test_missing_engine_hook_refused_only_with_dp(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.v1.engine.core import DPEngineCoreProc

    monkeypatch.delattr(DPEngineCoreProc, "_has_global_unfinished_reqs")
    assert make_scheduler(BalanceScheduler, SHAPE, balance=True).balance_enabled  # DP = 1
    cfg = make_vllm_config(SHAPE)
    cfg.parallel_config.data_parallel_size = 2
    with pytest.raises(compat.UnsupportedVLLMError, match="DPEngineCoreProc._has_global_unfinished_reqs"):
        make_scheduler(BalanceScheduler, SHAPE, cfg, balance=True)


def test_schedule_not_calling_hook_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A vLLM whose schedule() never calls _reserve_prefill_lookahead (like 0.24's).
    def schedule(self, throttle_prefills=False):
        return None

    monkeypatch.setattr(Scheduler, "schedule", schedule)
    assert compat.missing_hooks() == ["Scheduler.schedule._reserve_prefill_lookahead"]


def test_switches_accept_vllm_ascend_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm_ascend_triton.scheduler import resolve_balance_params

    monkeypatch.delenv(compat.ENV_SWITCH, raising=False)
    nested = make_vllm_config(SHAPE, {"scheduler_config": {"enable_balance_scheduling": True}})
    top = make_vllm_config(SHAPE, {"enable_balance_scheduling": "true"})
    off = make_vllm_config(SHAPE, {"scheduler_config": {"enable_balance_scheduling": False}})
    assert resolve_balance_params(nested).mode == "balance" and compat.balance_enabled(nested)
    assert resolve_balance_params(top).mode == "balance"
    monkeypatch.setenv(compat.ENV_SWITCH, "1")
    assert resolve_balance_params(off).mode == "off"  # the config wins over the env
    ours = make_vllm_config(SHAPE, {"balance_scheduling": "gate", "enable_balance_scheduling": False})
    assert resolve_balance_params(ours).mode == "gate"  # our key wins over vllm-ascend's
    assert compat.balance_enabled(make_vllm_config(SHAPE))  # env
    assert not compat.balance_enabled(make_vllm_config(SHAPE, {"balance_scheduling": {"mode": "off"}}))


def test_switches_go_through_the_one_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # The env switch and vllm-ascend's keys accept runtime.env's spellings; anything else is
    # an error naming the switch (it used to read as "off").
    cfg = make_vllm_config(SHAPE)
    for raw, on in (("off", False), ("no", False), ("0", False), ("yes", True), ("ON", True), ("", False)):
        monkeypatch.setenv(compat.ENV_SWITCH, raw)
        assert compat.balance_enabled(cfg) is on, raw
    monkeypatch.setenv(compat.ENV_SWITCH, "enabled")
    with pytest.raises(ValueError, match=compat.ENV_SWITCH):
        compat.balance_enabled(cfg)
    monkeypatch.delenv(compat.ENV_SWITCH)
    bad = make_vllm_config(SHAPE, {"scheduler_config": {"enable_balance_scheduling": "maybe"}})
    with pytest.raises(ValueError, match="enable_balance_scheduling"):
        compat.balance_enabled(bad)
    assert not compat.balance_enabled(make_vllm_config(SHAPE, {"enable_balance_scheduling": "false"}))
    assert compat.balance_enabled(make_vllm_config(SHAPE, {"balance_scheduling": "yes"}))
    assert compat.balance_enabled(make_vllm_config(SHAPE, {"balance_scheduling": "Gate"}))
    with pytest.raises(ValueError, match="balance_scheduling"):
        compat.balance_enabled(make_vllm_config(SHAPE, {"balance_scheduling": "fast"}))


@pytest.mark.timeout(300)
def test_beside_vllm_ascend_exactly_one_mechanism(tmp_path: Path) -> None:
    r0, r1 = run_two_ranks(HERE / "_coexist_worker.py", tmp_path)
    for r in (r0, r1):
        ours, theirs = r["ours"], r["theirs"]
        # Ours selected: ours runs, theirs does not (not inherited, flag clear), and our
        # exchange ran once per loop iteration on every rank, busy or idle.
        assert ours["balance_enabled"] and not ours["inherits_fake"] and ours["fake_flag"] is False
        assert ours["engine_class"] == "FakeBalanceDPEngineCoreProc"
        assert ours["finished"] and ours["exchanges"] == ours["iterations"] > 1
        # Theirs selected: only theirs (its gather every iteration, its schedule body).
        assert theirs["class"] == "FakeAscendBalanceScheduler" and theirs["finished"]
        assert theirs["fake_gathers"] == theirs["iterations"] > 1
        # One log line says which mechanism runs.
        assert len(r["log"]) == 1
        assert "vllm-ascend-triton BalanceScheduler runs" in r["log"][0]
        assert "another balance patch is installed" in r["log"][0]
    assert r0["ours"]["iterations"] == r1["ours"]["iterations"]
    assert r0["ours"]["planned_steps"] > 0 and r1["ours"]["busy"] == 0
    assert r0["theirs"]["fake_schedules"] == r0["theirs"]["busy"] > 0


def test_balance_counters_logged_at_vllm_cadence(caplog: pytest.LogCaptureFixture) -> None:
    dp = 4
    params = BalanceParams(min_chunk=32, escalate_steps=4, max_num_seqs=4)
    cfg = make_vllm_config(SHAPE)
    scheds = [make_scheduler(BalanceScheduler, SHAPE, cfg, balance=params) for _ in range(dp)]
    group = InProcessExchangeGroup(dp)
    members = [group.member(r) for r in range(dp)]
    for i in range(12):
        add(scheds[1], f"w{i}", 16, 60, 1000 + i)  # saturates rank 1 (waiting > free slots)
    for i in range(4):
        add(scheds[0], f"a{i}", 180, 5, 300 * i)  # more than one step's budget: later steps plan
    scheds[0]._log_interval_s = 0.0  # log at every step for the test
    logger = logging.getLogger("vllm")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="vllm"):
            for _ in range(40):
                lockstep(scheds, members)
    finally:
        logger.removeHandler(caplog.handler)
    stats = scheds[0].balance_stats()
    assert stats["steps_cut"] > 0 and stats["prefill_tokens_deferred"] > 0
    assert stats["longest_deferral_steps"] >= 1 and stats["padding_saved_tokens_est"] > 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("DP balance: ")]
    assert lines and any("steps cut" in line and "prefill tokens deferred" in line for line in lines)
    assert stats["steps_planned"] >= stats["steps_cut"]


def test_stats_interval_line_reports_deltas() -> None:
    s = BalanceStats()
    assert s.interval_line() is None  # nothing planned yet
    s.steps_planned, s.steps_cut, s.prefill_tokens_deferred = 10, 4, 700
    s.record_deferral(3)
    line = s.interval_line()
    assert line is not None and "4/10 steps cut" in line and "700 prefill" in line and "3 steps" in line
    s.steps_planned += 5
    line = s.interval_line()
    assert line is not None and "0/5 steps cut" in line and "longest deferral 0 steps" in line
    assert s.due(0.0) and not s.due(3600.0)
