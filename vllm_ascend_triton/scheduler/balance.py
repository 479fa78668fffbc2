"""BalanceScheduler: vLLM 0.32's v1 scheduler with a data-parallel balance mode.

What: under DP + expert parallelism every rank steps in lockstep and is padded to the largest
batch, so one rank's long prefill makes every rank's step as slow. Once per step every rank
publishes a :class:`~vllm_ascend_triton.scheduler.plan.LoadVector`, the vectors are
all-gathered at the step boundary (:mod:`~vllm_ascend_triton.scheduler.engine_hook`,
:mod:`~vllm_ascend_triton.scheduler.exchange`), every rank computes the same plan
(:func:`~vllm_ascend_triton.scheduler.plan.compute_plan`), and this class enforces the rank's
prefill allowance from inside vLLM's own ``schedule()`` through the
``_reserve_prefill_lookahead`` hook (prefill chunks cut to the allowance; decodes untouched),
so preemption, prefix caching, KV connectors, structured output and encoder inputs stay
upstream's code. With balance off, DP=1 or no snapshot for a step, ``schedule()`` is exactly
vLLM's. Modes ``gate`` and ``delay`` reproduce vllm-ascend's and SGLang's policies for
comparison. Switches: :func:`~vllm_ascend_triton.scheduler.compat.balance_spec`.

The algorithm, its bounds, the switches, the cost per step and the observability are
explained once, in docs/scheduler.md.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import vllm.envs as vllm_envs
from vllm.logger import init_logger
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.metrics.stats import SchedulerStats
from vllm.v1.request import Request, RequestStatus

from vllm_ascend_triton.scheduler import compat
from vllm_ascend_triton.scheduler.compat import CONFIG_KEY, ENV_SWITCH, balance_enabled
from vllm_ascend_triton.scheduler.engine_hook import install_dp_engine_hook
from vllm_ascend_triton.scheduler.exchange import LoadExchange
from vllm_ascend_triton.scheduler.plan import (
    MODES,
    BalanceParams,
    LoadVector,
    RankPlan,
    compute_plan,
    unseen_release,
)
from vllm_ascend_triton.scheduler.stats import BalanceStats, estimated_padding_saved
from vllm_ascend_triton.scheduler.stepcost import StepCostFit

# A child of vLLM's "vllm" logger, so our lines show up in the engine core's log with vLLM's.
logger = init_logger(f"vllm.{__name__}")

# Upstream's own class, even if vllm-ascend replaced the module attribute with its subclass.
Scheduler = compat.original_vllm_scheduler()

__all__ = [
    "CONFIG_KEY",
    "ENV_SWITCH",
    "AsyncBalanceScheduler",
    "BalanceScheduler",
    "BalanceSchedulerStats",
    "balance_enabled",
    "resolve_balance_params",
]

_RUNNING = RequestStatus.RUNNING


def resolve_balance_params(vllm_config: Any, balance: Any = None) -> BalanceParams:
    """Balance settings from the constructor keyword, else ``additional_config``, else env."""
    max_num_seqs = vllm_config.scheduler_config.max_num_seqs
    spec = balance if balance is not None else compat.balance_spec(vllm_config)
    if isinstance(spec, BalanceParams):
        return spec
    if isinstance(spec, bool):
        return BalanceParams(mode="balance" if spec else "off", max_num_seqs=max_num_seqs)
    if isinstance(spec, str):
        if spec not in MODES:
            raise ValueError(f"{CONFIG_KEY} must be one of {MODES}, got {spec!r}")
        return BalanceParams(mode=spec, max_num_seqs=max_num_seqs)
    if isinstance(spec, dict):
        kwargs = dict(spec)
        kwargs.setdefault("mode", "balance")
        kwargs.setdefault("max_num_seqs", max_num_seqs)
        return BalanceParams(**kwargs)
    raise TypeError(f"{CONFIG_KEY}: expected bool, str, dict or BalanceParams, got {type(spec)}")


@dataclasses.dataclass
class BalanceSchedulerStats(SchedulerStats):
    """vLLM's ``SchedulerStats`` plus the balance counters of this rank (cumulative)."""

    balance: dict[str, int] | None = None


class BalanceMixin:
    """The balance logic, mixed in front of vLLM's ``Scheduler`` or ``AsyncScheduler``."""

    def __init__(self, *args: Any, balance: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.balance_params = resolve_balance_params(self.vllm_config, balance)
        self.balance_enabled = self.balance_params.mode != "off"
        data_parallel = self.parallel_config.data_parallel_size > 1
        if self.balance_enabled:
            compat.check_balance_hooks(self, data_parallel=data_parallel)
        # vllm-ascend's patched Scheduler (if it sits in our MRO) runs its own copied
        # schedule() while this flag is set: ours is the one mechanism, so clear it.
        neutralized = getattr(self, "_balance_enabled", False) is True
        self._balance_enabled = False
        foreign = compat.foreign_balance()
        if self.balance_enabled or foreign.present:
            compat.announce_mechanism(self.balance_params.mode, foreign, neutralized)
        # Per-step state; None allowance and admit_new=True mean "exactly vLLM".
        self._prefill_allowance: int | None = None
        self._admit_new = True
        self._cut = False
        self._starve_steps = 0
        self._snapshot: Sequence[LoadVector] | None = None  # last exchanged snapshot
        self._pending_plan = False  # a snapshot arrived that no schedule() has used yet
        self._plan: RankPlan | None = None  # this rank's plan, once computed
        self._own: LoadVector | None = None  # this rank's vector in the snapshot
        self._dp_rank = 0
        self.last_plan: RankPlan | None = None
        # Overlapped exchange (see exchange.py): post the vector after schedule(), collect
        # it at the boundary. False: post and collect at the boundary.
        self.exchange_overlap = True
        self._overlap_exchange: LoadExchange | None = None
        self._inflight: tuple[LoadExchange, LoadVector, Any] | None = None
        self.overlapped_exchanges = 0  # boundaries that collected a vector posted earlier
        # Arrivals per exchanged step over the plan's arrival window (LoadVector.recent_arrivals).
        self._arrivals_now = 0
        self._arrival_window: deque[int] = deque(maxlen=self.balance_params.arrival_window_steps)
        self._recent_arrivals = 0
        # The step-time fit the plan's hold follows (scheduler/stepcost.py): a step is timed
        # from schedule() to its boundary; the simulator replaces the clock with its own.
        self.step_clock = time.perf_counter
        self._step_fit = StepCostFit()
        self._step_started: float | None = None
        self._step_seconds: float | None = None
        self._scheduled_tokens = 0
        # Running requests still prefilling, by id (kept from each step's admissions).
        self._prefilling: dict[str, Request] = {}
        self._balance_counters = BalanceStats()
        self._log_interval_s = float(vllm_envs.VLLM_LOG_STATS_INTERVAL)
        self._upstream_reserve = getattr(super(), "_reserve_prefill_lookahead", None)
        if self.balance_enabled and data_parallel:
            install_dp_engine_hook()
        if self.balance_enabled:
            logger.info("DP balance scheduling on: %s", self.balance_params)

    # ---- vllm-ascend compatibility -------------------------------------------------
    def balance_gather(self) -> None:
        """vllm-ascend's engine-core hook calls this every step; our exchange replaces it."""

    # ---- exchange side -------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        super().add_request(request)
        self._arrivals_now += 1

    def _exchange_vector(self) -> LoadVector:
        """The vector this rank posts for a step: closes the step's arrival count first
        (called exactly once per loop iteration, on either exchange path)."""
        window = self._arrival_window
        if len(window) == window.maxlen:
            self._recent_arrivals -= window[0]
        window.append(self._arrivals_now)
        self._recent_arrivals += self._arrivals_now
        self._arrivals_now = 0
        vector = self.load_vector()
        self._scheduled_tokens = 0
        return vector

    def load_vector(self) -> LoadVector:
        """This rank's load, O(prefilling + free slots): no scan of the running list."""
        running_prefill = 0
        prefilling = self._prefilling
        done = []
        for rid, req in prefilling.items():
            left = req.num_tokens - req.num_computed_tokens
            if req.status == _RUNNING and left > 1:
                running_prefill += left
            else:
                done.append(rid)
        for rid in done:
            del prefilling[rid]
        num_running, num_waiting = self.get_request_counts()
        decode = (len(self.running) - len(prefilling)) * (1 + self.num_spec_tokens)
        free = max(0, self.max_num_running_reqs - len(self.running))
        return LoadVector(
            decode,
            running_prefill,
            self._waiting_prefill(free),
            num_running,
            num_waiting,
            free,
            self._starve_steps,
            self._kv_tokens_in_use(),
            self._recent_arrivals,
            self._scheduled_tokens,
            *self._step_fit.estimate(),
        )

    def _waiting_prefill(self, free: int) -> int:
        """Prompt tokens of the waiting requests that fit ``free`` slots, in queue order."""
        waiting_prefill = 0
        taken = 0
        for queue in (self.kv_holding_waiting, self.waiting):
            for req in queue:
                if taken >= free:
                    return waiting_prefill
                waiting_prefill += max(0, req.num_tokens - req.num_computed_tokens)
                taken += 1
        return waiting_prefill

    def _kv_tokens_in_use(self) -> int:
        """Tokens of KV blocks held by requests (block granular), read from the pool."""
        pool = getattr(self.kv_cache_manager, "block_pool", None)
        if pool is None:
            return 0
        used = pool.num_gpu_blocks - 1 - pool.get_num_free_blocks()  # block 0 is the null block
        return max(0, used) * self.block_size

    def on_step_boundary(self, exchange: LoadExchange) -> None:
        """Called once per lockstep step on every rank (busy or idle): a collective."""
        if not self.balance_enabled:
            return
        self._dp_rank = exchange.rank
        started, self._step_started = self._step_started, None
        self._step_seconds = None if started is None else self.step_clock() - started
        inflight, self._inflight = self._inflight, None
        if inflight is not None and inflight[0] is exchange:
            self.overlapped_exchanges += 1
            self._own = inflight[1]
            self._snapshot = exchange.finish(inflight[2])
        else:
            # inflight is not None here only if the group was replaced (elastic EP): that
            # round can never complete (an idle rank posted nothing on the old group), so
            # its handle is dropped rather than waited on.
            self._own = self._exchange_vector()
            self._snapshot = exchange.all_gather(self._own)
        self._overlap_exchange = exchange if self.exchange_overlap and exchange.supports_overlap else None
        self._pending_plan = True
        self._plan = None
        if not exchange.completes_later:
            self._plan = self._compute_plan()

    def _compute_plan(self) -> RankPlan | None:
        snapshot = self._snapshot
        if snapshot is None or len(snapshot) <= 1:
            return None
        if self._step_seconds is not None:
            self._step_fit.observe(max(lv.scheduled_tokens for lv in snapshot), self._step_seconds)
            self._step_seconds = None
        budget = self.max_num_scheduled_tokens
        plan = compute_plan(snapshot, self.balance_params, budget)
        self._balance_counters.padding_saved_tokens_est += estimated_padding_saved(snapshot, plan, budget)
        return plan[self._dp_rank]

    def _take_plan(self) -> RankPlan | None:
        if not self._pending_plan:
            return None
        self._pending_plan = False
        plan, self._plan = self._plan, None
        return plan if plan is not None else self._compute_plan()

    def _plan_can_cut(self, plan: RankPlan) -> bool:
        """Whether the plan could limit anything this rank would schedule now: an upper
        bound of its prefill (running prefill at the boundary, which can only shrink,
        plus every waiting prompt) against the allowance."""
        if not plan.admit_new and (self.waiting or self.kv_holding_waiting):
            return True
        allowance = plan.prefill_allowance
        if allowance is None:
            return False
        if self._own is None:
            return True
        left = allowance - self._own.running_prefill
        if left < 0:
            return True
        for queue in (self.kv_holding_waiting, self.waiting):
            for req in queue:
                left -= req.num_tokens - req.num_computed_tokens
                if left < 0:
                    return True
        return False

    def _unseen_release(self, plan: RankPlan) -> bool:
        """Prompts that arrived after this rank's vector was taken get the skew release the
        plan would have given them (plan.unseen_release); only checked when there are some."""
        own, snapshot, allowance = self._own, self._snapshot, plan.prefill_allowance
        if not self._arrivals_now or own is None or snapshot is None or allowance is None:
            return False
        free = max(0, self.max_num_running_reqs - len(self.running))
        pending = own.running_prefill + self._waiting_prefill(free)
        if pending <= own.prefill_pending or not unseen_release(
            snapshot, self.balance_params, self.max_num_scheduled_tokens, self._dp_rank, pending, allowance
        ):
            return False
        self._balance_counters.unseen_releases += 1
        return True

    # ---- scheduling side -----------------------------------------------------------
    def schedule(self, *args: Any, **kwargs: Any) -> SchedulerOutput:
        if not self.balance_enabled:
            return super().schedule(*args, **kwargs)
        self._step_started = self.step_clock()
        plan = self._take_plan()
        self.last_plan = plan
        if plan is None:
            out = super().schedule(*args, **kwargs)
            self._track_admissions(out)
            self._post_after_schedule()
            return out
        self._cut = False
        if self._plan_can_cut(plan) and not self._unseen_release(plan):
            self._prefill_allowance = plan.prefill_allowance
            self._admit_new = plan.admit_new
            # An instance attribute shadows the class method for this one call.
            self._reserve_prefill_lookahead = self._balance_reserve
            try:
                out = super().schedule(*args, **kwargs)
            finally:
                del self._reserve_prefill_lookahead
                self._prefill_allowance = None
                self._admit_new = True
        else:
            out = super().schedule(*args, **kwargs)
        self._track_admissions(out)
        self._starve_steps = self._starve_steps + 1 if self._cut else 0
        counters = self._balance_counters
        counters.steps_planned += 1
        if self._cut:
            counters.steps_cut += 1
            counters.record_deferral(self._starve_steps)
        if counters.due(self._log_interval_s):
            line = counters.interval_line()
            if line is not None:
                fixed_us, token_ns = self._step_fit.estimate()
                logger.info("%s; step fit %d us + %d ns/token", line, fixed_us, token_ns)
        self._post_after_schedule()
        return out

    def _post_after_schedule(self) -> None:
        """Busy rank, overlap on: post the vector now (once per loop iteration)."""
        exchange = self._overlap_exchange
        if exchange is not None and self._inflight is None:
            own = self._exchange_vector()
            self._inflight = (exchange, own, exchange.start(own))

    def _track_admissions(self, out: SchedulerOutput) -> None:
        """After each schedule(): this step's token count (for the step-cost fit) and the
        requests it started prefilling."""
        self._scheduled_tokens = out.total_num_scheduled_tokens
        requests = self.requests
        prefilling = self._prefilling
        for new in out.scheduled_new_reqs:
            req = requests.get(new.req_id)
            if req is not None and req.num_tokens - req.num_computed_tokens > 1:
                prefilling[new.req_id] = req
        for rid in out.scheduled_cached_reqs.resumed_req_ids:
            req = requests.get(rid)
            if req is not None and req.num_tokens - req.num_computed_tokens > 1:
                prefilling[rid] = req

    def _balance_all_or_nothing(self, request: Request) -> bool:
        return (
            request.has_encoder_inputs
            or self.need_mamba_block_aligned_split
            or not self.scheduler_config.enable_chunked_prefill
        )

    def _balance_reserve(self, request: Request, num_computed_tokens: int, num_new_tokens: int) -> int:
        """``_reserve_prefill_lookahead`` while a plan limits this rank's prefill."""
        n = self._upstream_reserve(request, num_computed_tokens, num_new_tokens)
        if n == 0 or request.num_tokens - num_computed_tokens <= 1:
            return n  # nothing to schedule, or a decode (or the last prompt token)
        counters = self._balance_counters
        if not self._admit_new and request.status != _RUNNING:
            self._cut = True
            counters.prefill_tokens_deferred += n
            counters.requests_held += 1
            return 0
        allowance = self._prefill_allowance
        if allowance is None or n <= allowance:
            if allowance is not None:
                self._prefill_allowance = allowance - n
            return n
        cut = 0
        if allowance > 0 and not self._balance_all_or_nothing(request):
            # Re-apply upstream's rule so the cut chunk still respects the MTP lookahead.
            cut = self._upstream_reserve(request, num_computed_tokens, allowance)
        self._prefill_allowance = allowance - cut
        self._cut = True
        counters.prefill_tokens_deferred += n - cut
        counters.requests_held += cut == 0
        return cut

    # ---- observability -------------------------------------------------------------
    def balance_stats(self) -> dict[str, int]:
        """Cumulative counters of what the plan did on this rank, and its current step-time
        fit (``step_fixed_us``, ``step_token_ns``; 0 before it has one): JSON-safe ints."""
        stats = self._balance_counters.as_dict()
        stats["step_fixed_us"], stats["step_token_ns"] = self._step_fit.estimate()
        return stats

    def make_stats(self, *args: Any, **kwargs: Any) -> SchedulerStats | None:
        stats = super().make_stats(*args, **kwargs)
        if stats is None or not self.balance_enabled:
            return stats
        fields = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
        return BalanceSchedulerStats(**fields, balance=self.balance_stats())


class BalanceScheduler(BalanceMixin, Scheduler):
    """vLLM's ``Scheduler`` plus the DP balance mode (off unless switched on).

    With ``async_scheduling`` on, vLLM would otherwise run this synchronous scheduler
    under its async engine loop; constructing ``BalanceScheduler`` then returns an
    :class:`AsyncBalanceScheduler`, so ``--scheduler-cls ...BalanceScheduler`` is right
    in both modes.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        cfg = kwargs.get("vllm_config", args[0] if args else None)
        if cls is BalanceScheduler and getattr(
            getattr(cfg, "scheduler_config", None), "async_scheduling", False
        ):
            obj = object.__new__(AsyncBalanceScheduler)
            # Not a BalanceScheduler instance, so Python will not call __init__ for us.
            obj.__init__(*args, **kwargs)
            return obj
        return super().__new__(cls)


class AsyncBalanceScheduler(BalanceMixin, AsyncScheduler):
    """vLLM's ``AsyncScheduler`` (async scheduling) plus the DP balance mode."""
