"""The scheduler benchmarks in benchmarks/ (outside the package): the DP exchange measurement runs
real gloo processes, the schedule() overhead A/B runs the balance path; both return sane data."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"vat_benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


exchange_bench = _load("dp_exchange")
overhead_bench = _load("schedule_overhead")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="world"):
        exchange_bench.measure_exchange_once(1)
    with pytest.raises(ValueError, match="steps"):
        exchange_bench.measure_exchange_once(2, steps=0)
    with pytest.raises(ValueError, match="forward_ms"):
        exchange_bench.measure_exchange_once(2, forward_ms=-1.0)
    with pytest.raises(ValueError, match="decode_step_ms"):
        exchange_bench.measure_exchange(decode_step_ms=0.0)
    with pytest.raises(ValueError, match="transport"):
        exchange_bench.measure_exchange_once(2, transport="nccl")
    with pytest.raises(ValueError, match="transports"):
        exchange_bench.measure_exchange(transports=("gloo", "tcp"))


def test_load_vector_timing_counts_every_decode() -> None:
    res = exchange_bench.measure_load_vector(num_running=16, calls=20)
    assert res["num_running"] == 16 and res["calls"] == 20
    assert 0 < res["load_vector_p50_us"] <= res["load_vector_p99_us"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_process_exchange_measured() -> None:
    res = exchange_bench.measure_exchange(procs=(2,), steps=40, warmup=5, num_running=0, decode_step_ms=5.0)
    json.dumps(res, allow_nan=False)  # valid JSON for machines
    assert res["measured"] is True and res["decode_step_is_modelled"] is True
    assert len(res["host_load_avg_before"]) == 3
    # One row per transport (the workers checked that they built the exchange asked for).
    assert [(row["processes"], row["transport"]) for row in res["rows"]] == [(2, "gloo"), (2, "shm")]
    for row in res["rows"]:
        assert row["steps"] == 40
        for key in ("exchange_p50_us", "exchange_p99_us", "overlapped_p50_us", "plan_p50_us"):
            assert math.isfinite(row[key]) and row[key] > 0
        assert row["exchange_p50_us"] <= row["exchange_p99_us"]
        assert row["share_of_decode_step_pct"] > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_schedule_overhead_ab_runs_the_plan() -> None:
    res = overhead_bench.measure_schedule_overhead(num_running=32, steps=30, warmup=5)
    assert res["measured"] is True and res["num_running"] == 32
    assert res["vllm_schedule_mean_us"] > 0 and res["second_arm_schedule_mean_us"] > 0
    assert 0.5 < res["ratio_mean"] < 2.0  # same work on the same object: close to 1
    lo, hi = res["ratio_mean_ci95"]
    assert 0.5 < lo <= hi < 2.0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_schedule_overhead_across_processes_sets_balance_beside_the_control() -> None:
    res = overhead_bench.measure_schedule_overhead_runs(repeats=2, num_running=16, steps=20, warmup=2)
    assert res["measured"] is True and res["processes_per_arm"] == 2
    assert [r["arm"] for r in res["runs"]["balance"]] == ["balance"] * 2
    assert [r["arm"] for r in res["runs"]["control"]] == ["control (upstream vs upstream)"] * 2
    for arm in ("balance", "control"):
        s = res["summary"][arm]
        ratios = [r["ratio_mean"] for r in res["runs"][arm]]
        assert s["ratio_min"] == min(ratios) and s["ratio_max"] == max(ratios)
        assert s["ratio_ci95"][0] <= s["ratio_mean"] <= s["ratio_ci95"][1]
    with pytest.raises(ValueError, match="repeats"):
        overhead_bench.measure_schedule_overhead_runs(repeats=1)


def test_schedule_overhead_quick_run_takes_the_planned_path() -> None:
    # Small and fast (not marked slow): the balance arm must run under a finite allowance.
    res = overhead_bench.measure_schedule_overhead(num_running=8, steps=4, warmup=1)
    assert res["arm"] == "balance" and res["num_running"] == 8 and res["ratio_mean"] > 0


def test_calibration_fit_recovers_a_known_step_model(tmp_path) -> None:
    # Two ranks' step records with end times in lockstep and durations from a known model:
    # the clustering pairs them and the least-squares fit gets the coefficients back.
    import random

    calibrate = _load("calibrate")
    rng = random.Random(0)
    t = 1000.0
    lines = {0: [], 1: []}
    for _ in range(300):
        tok = [rng.randint(1, 1024), rng.choice([0, rng.randint(1, 1024)])]
        ctx = [rng.randint(100, 20000), rng.randint(100, 20000) if tok[1] else 0]  # idle: no context
        t += 0.020 + 0.0002 * max(tok) + 1e-6 * max(ctx)
        for rank in (0, 1):
            if tok[rank]:
                end = t + rng.uniform(0, 0.002)
                lines[rank].append(
                    {"kind": "step", "t": end, "rank": rank, "tokens": tok[rank], "context": ctx[rank]}
                )
    for rank, recs in lines.items():
        (tmp_path / f"steps-{rank}-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    steps, arrivals = calibrate.load(tmp_path)
    rows = calibrate.lockstep_steps(steps)
    assert arrivals == [] and 290 <= len(rows) <= 299
    res = calibrate.fit(rows, ["max_tokens", "max_ctx"])
    fixed, per_token, per_ctx = res["coef"]
    assert abs(fixed - 0.020) < 0.002 and abs(per_token - 0.0002) < 2e-5 and abs(per_ctx - 1e-6) < 2e-7
    assert res["r2"] > 0.95
