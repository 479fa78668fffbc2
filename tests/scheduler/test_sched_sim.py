"""The simulator and `vat sim` at toy scale (the real scale is the acceptance command)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vllm_ascend_triton.cli.sim import main
from vllm_ascend_triton.scheduler.sim.runner import Policy, run_simulation
from vllm_ascend_triton.scheduler.sim.stepmodel import StepModel
from vllm_ascend_triton.scheduler.sim.vllm_setup import SchedulerShape
from vllm_ascend_triton.scheduler.sim.workloads import make_workload


def test_policy_parse() -> None:
    assert Policy.parse("cadence:4") == Policy("cadence:4", "off", cadence=4)
    assert Policy.parse("balance").mode == "balance"
    for bad in ("cadence:0", "cadence:x", "fastest"):
        with pytest.raises(ValueError):
            Policy.parse(bad)


def test_step_model() -> None:
    m = StepModel(fixed_ms=10, per_token_ms=1, per_kv_token_us=1000)
    # Largest batch and slowest context set the lockstep step: 10 + 5 + 7 ms.
    assert math.isclose(m.step_time([1, 5, 0], [7, 0, 2]), 0.022)
    assert m.rank_cost(0, 100) == 0.0
    with pytest.raises(ValueError):
        StepModel(fixed_ms=-1)


def test_workloads_are_seeded() -> None:
    a1, a2 = make_workload("b", 2, 8, seed=3), make_workload("b", 2, 8, seed=3)
    b = make_workload("b", 2, 8, seed=4)
    first = lambda w: [(x.time, x.prompt_len, x.output_len) for x in w.pop_until(5.0)]
    s1, s2, s3 = first(a1), first(a2), first(b)
    assert s1 == s2 and s1 != s3 and s1
    c = make_workload("c", 8, 8, seed=0)
    pinned = [x.rank for x in c.pop_until(60.0) if x.rank is not None]
    assert pinned and set(pinned) <= {0, 1}  # bursts go to the first quarter of 8 ranks
    a = make_workload("a", 2, 8, seed=0)
    start = a.pop_until(0.0)
    assert len(start) == 2 * 2 * 8 and all(3150 <= x.prompt_len <= 3850 for x in start)


@pytest.mark.parametrize("policy", ["default", "cadence:2", "gate", "balance"])
def test_run_small(policy: str) -> None:
    shape = SchedulerShape(max_num_seqs=8, max_num_batched_tokens=1024, num_blocks=3000)
    res = run_simulation(
        make_workload("a", 2, 8, seed=0),
        Policy.parse(policy),
        2,
        shape=shape,
        max_steps=80,
        warmup_steps=10,
        check_invariants=True,
    )
    assert res.steps == 80 and res.sim_seconds > 0
    assert res.output_tok_s > 0 and 0.0 <= res.idle_share < 1.0
    assert res.ttft_p50_s <= res.ttft_p99_s


def test_cli_json_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "sim",
            "--dp",
            "2",
            "--workload",
            "b,c",
            "--policy",
            "default,balance",
            "--steps",
            "60",
            "--warmup",
            "10",
            "--max-num-seqs",
            "8",
            "--num-blocks",
            "2000",
            "--jobs",
            "1",
            "--json",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["simulated"] is True
    assert {(r["workload"], r["policy"]) for r in payload["results"]} == {
        ("b", "default"),
        ("b", "balance"),
        ("c", "default"),
        ("c", "balance"),
    }
    assert set(payload["verdicts"]) == {"b", "c"}
    assert json.loads((tmp_path / "sim.json").read_text())["results"] == payload["results"]
    assert (tmp_path / "sim.png").stat().st_size > 10_000


def test_cli_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--policy", "fastest", "--jobs", "1"]) == 2
    assert main(["sim", "--workload", "z", "--jobs", "1"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["sim", "--help"])
    assert e.value.code == 0
    assert "SIMULATED" in capsys.readouterr().out


def test_overhead_measurement_runs_the_balance_path() -> None:
    from vllm_ascend_triton.scheduler.sim.overhead import measure_overhead

    res = measure_overhead(num_running=16, steps=5, warmup=2)
    assert res["balance_plan_allowance"] is not None  # a finite allowance: the hook path ran
    assert res["vllm_schedule_mean_us"] > 0 and res["ratio"] > 0
