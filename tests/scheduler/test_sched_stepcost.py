"""The step-time fit each rank publishes for the plan's step-cost hold."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_ascend_triton.scheduler.sim.runner import Policy, run_simulation
from vllm_ascend_triton.scheduler.sim.stepmodel import StepModel
from vllm_ascend_triton.scheduler.sim.vllm_setup import SchedulerShape
from vllm_ascend_triton.scheduler.sim.workloads import make_workload
from vllm_ascend_triton.scheduler.stepcost import StepCostFit


def test_fit_recovers_a_noisy_linear_step_time() -> None:
    rng = np.random.default_rng(0)
    fit = StepCostFit()
    assert fit.estimate() == (0, 0)
    for _ in range(400):
        tokens = int(rng.integers(20, 2048))
        fit.observe(tokens, 0.015 + 0.25e-3 * tokens + rng.normal(0, 0.002))
    fixed_us, token_ns = fit.estimate()
    assert fixed_us == pytest.approx(15_000, rel=0.1)
    assert token_ns == pytest.approx(250_000, rel=0.05)


def test_fit_follows_a_change_and_ignores_what_it_cannot_use() -> None:
    fit = StepCostFit()
    for i in range(300):
        fit.observe(100 + 10 * (i % 50), 0.010 + 1e-4 * (100 + 10 * (i % 50)))
    for i in range(300):  # the deployment's per-token cost doubles
        fit.observe(100 + 10 * (i % 50), 0.010 + 2e-4 * (100 + 10 * (i % 50)))
    assert fit.estimate()[1] == pytest.approx(200_000, rel=0.02)
    before = fit.estimate()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        fit.observe(500, bad)
    fit.observe(-5, 0.01)
    assert fit.estimate() == before
    # Equal batches do not determine a slope: no estimate rather than noise.
    flat = StepCostFit()
    for _ in range(100):
        flat.observe(128, 0.03)
    assert flat.estimate() == (0, 0)
    with pytest.raises(ValueError):
        StepCostFit(decay=1.0)


def test_ranks_fit_the_simulated_step_model() -> None:
    # The simulator hands the schedulers its clock, so the fit the ranks publish is the step
    # model's (the attention part is folded into the fixed part).
    shape = SchedulerShape(max_num_seqs=16, max_num_batched_tokens=2048, num_blocks=800)
    model = StepModel(fixed_ms=15.0, per_token_ms=0.25, per_kv_token_us=0.0)
    res = run_simulation(
        make_workload("conv", 2, 16, 0),
        Policy.parse("balance"),
        2,
        shape=shape,
        step_model=model,
        max_steps=None,
        horizon_s=20.0,
        warmup_s=2.0,
    )
    for sched in res._schedulers:  # type: ignore[attr-defined]
        fixed_us, token_ns = sched._step_fit.estimate()
        assert token_ns == pytest.approx(250_000, rel=0.02)
        assert fixed_us == pytest.approx(15_000, rel=0.05)
