"""The lockstep DP simulator: N real vLLM schedulers in one process.

One iteration mirrors one iteration of vLLM's ``DPEngineCoreProc.run_busy_loop``:

1. arrivals up to the current simulated time are routed: pinned ones to their rank, the
   rest to the least-loaded rank by vLLM's DP load-balancer score ``4 * waiting +
   running`` (ties to the lowest rank);
2. every rank with requests calls ``schedule()`` (``cadence:N`` passes upstream's
   ``throttle_prefills`` flag exactly as the DP engine core does); ranks without requests
   run a dummy batch;
3. the step lasts :meth:`StepModel.step_time` of the per-rank scheduled tokens and
   attended contexts; every scheduled request whose prompt is complete samples one token,
   and the ``ModelRunnerOutput`` goes back through ``update_from_output``;
4. ``balance`` and ``gate`` ranks call ``on_step_boundary`` with an in-process
   implementation of the load exchange (the same call the engine hook makes).

The run is bounded either by simulated time (``horizon_s``, metrics over
``[warmup_s, horizon_s)``: every policy sees the same arrivals in the same window, so
throughput below capacity is the offered load for all of them) or, for small tests, by
``max_steps`` lockstep steps (metrics after ``warmup_steps``). It also ends when no work
is left. With a time bound, TTFT is taken over the requests that *arrive* in the window;
one still without a first token at the end counts with ``horizon_s - arrival`` (a lower
bound), so a policy cannot hide starved requests. All times are simulated seconds.

Throughput. ``output_tok_s`` counts the tokens generated inside the window. For an open-loop
workload that count is the offered load plus the backlog a policy carries into the window
minus the backlog it leaves at the end, so below capacity a policy that fell behind during
the warm-up scores *higher*. ``served_tok_s`` (open-loop workloads, time-bounded runs) counts
only the tokens served, by the horizon, to the requests that arrived in the window: it is
the offered load less what a policy still owes them, and it cannot be raised by backlog. The
closed loop keeps a constant population in flight, so ``output_tok_s`` is its throughput.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vllm_ascend_triton.scheduler.sim.stepmodel import StepModel
from vllm_ascend_triton.scheduler.sim.vllm_setup import (
    SchedulerShape,
    fake_model_output,
    make_request,
    make_scheduler,
    make_vllm_config,
)
from vllm_ascend_triton.scheduler.sim.workloads import Workload

logger = logging.getLogger(__name__)

POLICY_HELP = "default | cadence:N | gate | delay[:PASSES[:WATERMARK]] | balance"


@dataclass(frozen=True)
class Policy:
    name: str
    mode: str  # "off" | "balance" | "gate" | "delay"
    cadence: int = 1
    balance_overrides: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def parse(text: str) -> Policy:
        text = text.strip()
        if text == "default":
            return Policy("default", "off")
        if text == "gate":
            return Policy("gate", "gate")
        if text == "balance":
            return Policy("balance", "balance")
        if text == "delay" or text.startswith("delay:"):
            # SGLang's PrefillDelayer: default 30 passes, no low watermark.
            parts = text.split(":")
            try:
                passes = int(parts[1]) if len(parts) > 1 else 30
                watermark = float(parts[2]) if len(parts) > 2 else None
            except ValueError:
                passes = 0
                watermark = None
            if len(parts) > 3 or passes < 1 or (watermark is not None and not 0 < watermark <= 1):
                raise ValueError(f"delay needs delay[:PASSES>=1[:WATERMARK in (0,1]]], got {text!r}")
            overrides: tuple[tuple[str, Any], ...] = (("delay_passes", passes),)
            if watermark is not None:
                overrides += (("delay_watermark", watermark),)
            return Policy(text, "delay", balance_overrides=overrides)
        if text.startswith("cadence:"):
            try:
                n = int(text.split(":", 1)[1])
            except ValueError:
                n = 0
            if n < 1:
                raise ValueError(f"cadence needs a positive integer, got {text!r}")
            return Policy(text, "off", cadence=n)
        raise ValueError(f"unknown policy {text!r}; expected {POLICY_HELP}")


@dataclass
class _Req:
    arrival: float
    rank: int
    prompt_len: int
    output_len: int
    first_token: float | None = None
    finish: float | None = None
    n_out: int = 0
    n_out_by_horizon: int = 0  # tokens from steps that started before the horizon


@dataclass
class RunResult:
    workload: str
    policy: str
    dp: int
    steps: int
    sim_seconds: float
    wall_seconds: float
    output_tok_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    idle_share: float
    requests_finished: int
    requests_measured_ttft: int
    preemptions: int
    seed: int | None = None
    plan_us_mean: float | None = None  # compute_plan per step, MEASURED on this host
    plan_us_p50: float | None = None
    plan_us_p99: float | None = None
    # Tokens served by the horizon to the requests that arrived in the window, per second of
    # window (open-loop workloads, time-bounded runs; see the module docstring).
    served_tok_s: float | None = None
    # Drain runs (``drain=True``): arrivals stop at the horizon and the run goes on until every
    # request has finished; ``drain_tok_s`` is all output tokens over the time that took (from
    # t=0), the "throughput to drain" of a benchmark client that sends a trace and waits.
    drain_tok_s: float | None = None
    drain_s: float | None = None
    # 95% sampling intervals of the headline metrics in this one run (time-bounded runs):
    # throughput by batch means over SUB_WINDOWS equal sub-windows, the percentiles by
    # bootstrap over requests. Verdicts use them to tell a difference this run resolves
    # from one inside its own sampling noise.
    output_tok_s_ci95: list[float] | None = None
    served_tok_s_ci95: list[float] | None = None  # batch means over arrival sub-windows
    ttft_p99_ci95: list[float] | None = None
    tpot_p99_ci95: list[float] | None = None
    series: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        """Plain data; NaN (no sample, e.g. no request finished) becomes None for JSON."""
        d = {k: v for k, v in self.__dict__.items() if k != "series" and not k.startswith("_")}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


class _SnapshotRecorder:
    """Wraps one rank's exchange member and keeps the last snapshot it returned."""

    def __init__(self, member: Any) -> None:
        self._member = member
        self.last: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._member, name)

    def all_gather(self, local: Any) -> Any:
        self.last = self._member.all_gather(local)
        return self.last


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


SUB_WINDOWS = 10
BOOTSTRAP_RESAMPLES = 1000
# Two-sided 95% Student t quantiles for 1..30 degrees of freedom (SciPy is not a dependency).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip


def t975(dof: int) -> float:
    """Student t quantile for a two-sided 95% interval with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def t_interval95(values: Any) -> tuple[float, float]:
    """Two-sided 95% Student t interval of the mean of ``values`` (at least two)."""
    arr = np.asarray(values, dtype=float)
    half = t975(len(arr) - 1) * float(arr.std(ddof=1)) / math.sqrt(len(arr))
    return float(arr.mean()) - half, float(arr.mean()) + half


def _bootstrap_ci(values: list[float], q: float, scale: float = 1.0) -> list[float] | None:
    """95% bootstrap interval of the q-th percentile (seeded: the same run, the same interval)."""
    if len(values) < 20:
        return None
    arr = np.asarray(values)
    rng = np.random.default_rng(0)
    stats = np.empty(BOOTSTRAP_RESAMPLES)
    for i in range(BOOTSTRAP_RESAMPLES):  # one resample at a time: bounded memory
        stats[i] = np.percentile(arr[rng.integers(0, len(arr), len(arr))], q)
    lo, hi = np.percentile(stats, [2.5, 97.5]) * scale
    return [float(lo), float(hi)]


def _batch_means_ci(tokens: list[int], sub_seconds: float) -> list[float] | None:
    if len(tokens) < 2:
        return None
    return list(t_interval95(np.asarray(tokens, dtype=float) / sub_seconds))


def run_simulation(
    workload: Workload,
    policy: Policy,
    dp: int,
    shape: SchedulerShape | None = None,
    step_model: StepModel | None = None,
    max_steps: int | None = 2000,
    warmup_steps: int = 0,
    horizon_s: float | None = None,
    warmup_s: float = 0.0,
    balance_overrides: dict[str, Any] | None = None,
    check_invariants: bool = False,
    drain: bool = False,
    drain_limit_s: float = 3600.0,
) -> RunResult:
    """Run one (workload, policy) pair; see the module docstring.

    With ``drain`` (time-bounded runs only) no request arriving at or after ``horizon_s`` is
    admitted and the run continues past the horizon until every admitted request has
    finished (at most ``drain_limit_s`` simulated seconds more); the window metrics are
    unchanged (tokens from steps that start before the horizon), and ``drain_tok_s`` /
    ``drain_s`` report the throughput to drain."""
    from vllm_ascend_triton.scheduler.balance import BalanceScheduler
    from vllm_ascend_triton.scheduler.plan import BalanceParams, compute_plan
    from vllm_ascend_triton.scheduler.sim.inprocess import InProcessExchangeGroup

    shape = shape or SchedulerShape()
    model = step_model or StepModel()
    if dp < 1:
        raise ValueError(f"dp must be >= 1, got {dp}")
    timed = horizon_s is not None
    if timed:
        if not 0.0 <= warmup_s < horizon_s:  # type: ignore[operator]
            raise ValueError(f"need 0 <= warmup_s < horizon_s, got {warmup_s}, {horizon_s}")
        warmup_steps = 0
    elif drain:
        raise ValueError("drain needs a time-bounded run (horizon_s)")
    elif max_steps is None or warmup_steps >= max_steps:
        raise ValueError("warmup_steps must be smaller than max_steps")
    cfg = make_vllm_config(shape)
    overrides = dict(balance_overrides or {}) if policy.mode == "balance" else {}
    overrides.update(policy.balance_overrides)
    params = BalanceParams(
        mode=policy.mode,
        max_num_seqs=shape.max_num_seqs,
        kv_capacity_tokens=shape.num_blocks * shape.block_size,
        **overrides,
    )
    scheds = [make_scheduler(BalanceScheduler, shape, cfg, balance=params) for _ in range(dp)]
    exchange = InProcessExchangeGroup(dp)
    members: list[Any] = [exchange.member(r) for r in range(dp)]
    exchanging = policy.mode != "off"
    # compute_plan cost, measured on this host: one extra call per step on the snapshot
    # rank 0 received (every rank computes the same plan from the same snapshot).
    recorder = _SnapshotRecorder(members[0])
    members[0] = recorder
    budget = shape.max_num_batched_tokens
    plan_ns: list[int] = []

    reqs: dict[str, _Req] = {}
    t = 0.0
    for s in scheds:
        s.step_clock = lambda: t  # the ranks time their steps (the plan's step-cost fit) in simulated seconds
    wall0 = time.perf_counter()
    step = 0
    wave_step = 0  # lockstep step counter of the current wave, as DPEngineCoreProc keeps it
    t_warm = 0.0
    out_tokens_window = 0
    sub_tokens = [0] * SUB_WINDOWS  # output tokens per sub-window (time-bounded runs)
    sub_seconds = (horizon_s - warmup_s) / SUB_WINDOWS if timed else 0.0  # type: ignore[operator]

    def sub_window(when: float) -> int:
        """Index of the equal sub-window of [warmup_s, horizon_s) that ``when`` falls in."""
        return min(SUB_WINDOWS - 1, int((when - warmup_s) / sub_seconds))

    idle_rank_time = 0.0
    window_end = 0.0
    total_rank_time = 0.0
    preemptions = 0
    series: dict[str, list[float]] = {"t": [], "step_ms": [], "max_tokens": [], "mean_tokens": []}
    next_id = 0

    def go_on() -> bool:
        if max_steps is not None and step >= max_steps:
            return False
        if not timed or t < horizon_s:  # type: ignore[operator]
            return True
        # Draining: until every admitted request has finished, within the limit.
        return drain and t < horizon_s + drain_limit_s and any(r.finish is None for r in reqs.values())  # type: ignore[operator]

    while go_on():
        for arr in workload.pop_until(t):
            if drain and arr.time >= horizon_s:  # type: ignore[operator]
                continue  # the trace ends at the horizon
            if arr.rank is not None:
                rank = arr.rank % dp
            else:
                scores = []
                for s in scheds:
                    running, waiting = s.get_request_counts()
                    scores.append(4 * waiting + running)
                rank = int(np.argmin(scores))
            rid = f"{workload.name}{next_id}"
            scheds[rank].add_request(
                make_request(rid, arr.prompt_len, arr.output_len, arr.time, token_offset=next_id)
            )
            reqs[rid] = _Req(arr.time, rank, arr.prompt_len, arr.output_len)
            next_id += 1

        if not any(s.has_requests() for s in scheds):
            nxt = workload.next_time()
            if nxt is None or (timed and nxt >= horizon_s):  # type: ignore[operator]
                if timed and t < horizon_s:  # type: ignore[operator]
                    t = window_end = horizon_s  # type: ignore[assignment]
                break
            # The cluster is idle until the next arrival: a new wave starts then.
            t = max(t, nxt)
            wave_step = 0
            continue

        throttle = policy.cadence > 1 and wave_step % policy.cadence != 0
        outputs: list[Any] = []
        tokens: list[int] = []
        contexts: list[int] = []
        for s in scheds:
            if s.has_requests():
                so = s.schedule(throttle)
                n = so.total_num_scheduled_tokens
                ctx = sum(s.requests[r].num_computed_tokens for r in so.num_scheduled_tokens)
                preemptions += len(so.preempted_req_ids or ())
            else:
                so, n, ctx = None, 0, 0
            outputs.append(so)
            tokens.append(n)
            contexts.append(ctx)

        dt = model.step_time(tokens, contexts)
        before_horizon = not timed or t < horizon_s  # type: ignore[operator]
        t += dt
        if before_horizon:
            window_end = t  # the window closes with the step that crosses the horizon
        step += 1
        wave_step += 1
        if timed:
            t_warm = warmup_s
            in_window = t > warmup_s and before_horizon
        else:
            if step == warmup_steps:
                t_warm = t
            in_window = step > warmup_steps
        if in_window:
            total_rank_time += dt * dp
            idle_rank_time += sum(
                dt - min(dt, model.rank_cost(n, c)) for n, c in zip(tokens, contexts, strict=True)
            )
        series["t"].append(t)
        series["step_ms"].append(dt * 1e3)
        series["max_tokens"].append(max(tokens))
        series["mean_tokens"].append(sum(tokens) / dp)

        for s, so in zip(scheds, outputs, strict=True):
            if so is None:
                continue
            eco = s.update_from_output(so, fake_model_output(s, so))
            for client_out in eco.values():
                for o in client_out.outputs:
                    rec = reqs[o.request_id]
                    k = len(o.new_token_ids)
                    if k and rec.first_token is None:
                        rec.first_token = t
                    rec.n_out += k
                    if before_horizon:
                        rec.n_out_by_horizon += k
                    if in_window:
                        out_tokens_window += k
                        if timed:
                            sub_tokens[sub_window(t)] += k
                    if o.finish_reason is not None:
                        rec.finish = t
                        workload.on_finish(t)
            if check_invariants:
                _check_scheduler(s)

        if exchanging:
            for s, m in zip(scheds, members, strict=True):
                s.on_step_boundary(m)
            snap = recorder.last
            if snap is not None and policy.mode == "balance":
                t0 = time.perf_counter_ns()
                compute_plan(snap, params, budget)
                plan_ns.append(time.perf_counter_ns() - t0)

    end = window_end if drain else t
    window = end - t_warm
    if timed:
        ttft = [
            (r.first_token if r.first_token is not None else t) - r.arrival
            for r in reqs.values()
            if r.arrival >= warmup_s
        ]
    else:
        ttft = [
            r.first_token - r.arrival
            for r in reqs.values()
            if r.first_token is not None and r.first_token > t_warm
        ]
    tpot = [
        (r.finish - r.first_token) / (r.n_out - 1)
        for r in reqs.values()
        if r.finish is not None and t_warm < r.finish <= end and r.n_out > 1
    ]
    served = served_ci = None
    if timed and workload.open_loop and window > 0:
        # The window's cohort: every token it got was generated inside the window.
        served_by_sub = [0] * SUB_WINDOWS
        for r in reqs.values():
            if r.arrival >= warmup_s:
                served_by_sub[sub_window(r.arrival)] += r.n_out_by_horizon
        served = sum(served_by_sub) / window
        served_ci = _batch_means_ci(served_by_sub, sub_seconds)
    drain_tok_s = drain_s = None
    if drain and reqs:
        # The last finish (or where the limit stopped the run, if something never finished).
        done = all(r.finish is not None for r in reqs.values())
        drain_s = max(r.finish for r in reqs.values()) if done else t  # type: ignore[type-var]
        drain_tok_s = sum(r.n_out for r in reqs.values()) / drain_s if drain_s > 0 else 0.0
    result = RunResult(
        workload=workload.name,
        policy=policy.name,
        dp=dp,
        steps=step,
        sim_seconds=t,
        wall_seconds=time.perf_counter() - wall0,
        output_tok_s=out_tokens_window / window if window > 0 else 0.0,
        ttft_p50_s=_pct(ttft, 50),
        ttft_p99_s=_pct(ttft, 99),
        tpot_p50_ms=_pct(tpot, 50) * 1e3,
        tpot_p99_ms=_pct(tpot, 99) * 1e3,
        idle_share=idle_rank_time / total_rank_time if total_rank_time else 0.0,
        requests_finished=sum(1 for r in reqs.values() if r.finish is not None),
        requests_measured_ttft=len(ttft),
        preemptions=preemptions,
        seed=getattr(workload, "seed", None),
        plan_us_mean=float(np.mean(plan_ns)) / 1e3 if plan_ns else None,
        plan_us_p50=float(np.percentile(plan_ns, 50)) / 1e3 if plan_ns else None,
        plan_us_p99=float(np.percentile(plan_ns, 99)) / 1e3 if plan_ns else None,
        served_tok_s=served,
        drain_tok_s=drain_tok_s,
        drain_s=drain_s,
        served_tok_s_ci95=served_ci,
        output_tok_s_ci95=_batch_means_ci(sub_tokens, sub_seconds) if timed else None,
        ttft_p99_ci95=_bootstrap_ci(ttft, 99) if timed else None,
        tpot_p99_ci95=_bootstrap_ci(tpot, 99, scale=1e3) if timed else None,
        series=series,
    )
    result._schedulers = scheds  # type: ignore[attr-defined]  # for tests' leak checks
    result._requests = reqs  # type: ignore[attr-defined]  # per-request records, for diagnostics
    logger.info("sim %s/%s: %d steps in %.1fs wall", workload.name, policy.name, step, result.wall_seconds)
    return result


def _check_scheduler(s: Any) -> None:
    """Cheap invariants after each step (tests): no more running than slots, block pool sane."""
    assert len(s.running) <= s.max_num_running_reqs
    pool = s.kv_cache_manager.block_pool
    assert 0 <= pool.get_num_free_blocks() <= pool.num_gpu_blocks
