"""BalanceScheduler: vLLM 0.32's v1 scheduler with a data-parallel balance mode.

Why. With DP + expert parallelism every DP rank steps in lockstep and vLLM pads every
rank's batch to the largest one, so a step costs what the busiest rank costs. A rank that
prefills a long prompt alone makes every other rank's decode step as slow as that prefill.

Algorithm (balance mode). Once per step every rank publishes a small
:class:`~vllm_ascend_triton.scheduler.plan.LoadVector`: decode tokens it will run, prompt
tokens still to prefill for its running requests and for the waiting requests that fit
its free slots, running/waiting counts, free slots, a starvation counter and the context
its running requests attend to. The vectors are all-gathered over the engine core's gloo
``dp_group`` at the end of the step (see :mod:`~vllm_ascend_triton.scheduler.exchange` for
why there and not inside ``schedule()``), and every rank computes the same plan from the
same snapshot (:func:`~vllm_ascend_triton.scheduler.plan.compute_plan`):

1. each rank's *demand* is the prefill it would schedule unconstrained,
   ``min(budget - decode, pending prefill)``; if nobody has demand, nothing is limited;
2. the step's *token level* is the rank total (decode + demand) that a quorum of ranks
   (7/8 by default) reaches, capped by the token budget. The step costs what the
   largest rank batch costs, so filling every rank up to that level is nearly free,
   while going above it for a minority of ranks makes the whole cluster wait;
3. each rank has a *floor*: ``min_chunk`` if its pending prefill is that small (short
   prompts go at once; their padding is cheap), else 0 (a long prefill that only a few
   ranks have waits for the quorum), raised by step 4. Whatever a floor forces one rank
   to run, every rank pays through padding, so the level is raised to the largest
   ``decode + min(floor, demand)`` and every rank with pending prefill fills that step;
   each rank's *prefill allowance* is ``max(level - its decode tokens, its floor)``.
   Prefill work is *chunked* to the allowance (running chunks first, then admissions,
   in vLLM's order), never deferred all-or-nothing;
4. no starvation: a rank whose prefill the plan has cut (a chunk shortened or an
   admission refused) for ``escalate_steps`` consecutive steps gets a floor of
   ``min_chunk``, doubled every ``escalate_steps`` steps; once it would exceed the token
   budget the rank is not limited at all for that step. Hence a waiting request that
   vLLM would admit is admitted at most
   :func:`~vllm_ascend_triton.scheduler.plan.starvation_bound` steps
   (``escalate_steps * (ceil(log2(budget / min_chunk)) + 1) + 1``; 81 with the defaults
   -- 16 steps, 512 tokens -- and an 8192-token budget) after the plan first deferred it.
   Slow escalation lets more ranks join a prefill step (throughput); fast escalation
   caps the TTFT of prefills that only a few ranks have (see docs/scheduler.md).

The allowance is enforced from inside vLLM's own ``schedule()`` through the
``_reserve_prefill_lookahead`` hook, which upstream calls on every running and waiting
request right before it allocates KV slots: decodes pass through unchanged, prefill
chunks are cut to the remaining allowance. Everything else (preemption, pause states,
prefix caching, KV connectors, structured output, encoder cache, Mamba alignment) stays
upstream's code. Requests with encoder inputs, Mamba block-aligned splits or chunked
prefill disabled are cut all-or-nothing, since a partial chunk would break their
alignment. With balance off, DP=1, or no snapshot for this step (first step of a wave, no
hook), ``schedule()`` is exactly vLLM's.

``gate`` mode reproduces vllm-ascend's balance scheduling (no rank admits waiting
requests while any rank runs ``max_num_seqs`` requests) for comparisons.

Switches: ``VLLM_ASCEND_BALANCE_SCHEDULING=1`` (mode ``balance``), or
``additional_config={"balance_scheduling": true | "balance" | "gate" | {"mode": ...,
"min_chunk": ..., "quorum": ..., "escalate_steps": ...}}``, or the constructor
keyword ``balance`` (same forms; it wins over the config, which wins over the env).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from vllm.logger import init_logger
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from vllm_ascend_triton.scheduler.exchange import LoadExchange, install_dp_engine_hook
from vllm_ascend_triton.scheduler.plan import (
    MODES,
    BalanceParams,
    LoadVector,
    RankPlan,
    compute_plan,
)

# A child of vLLM's "vllm" logger, so our lines show up in the engine core's log with vLLM's.
logger = init_logger(f"vllm.{__name__}")

ENV_SWITCH = "VLLM_ASCEND_BALANCE_SCHEDULING"
CONFIG_KEY = "balance_scheduling"


def resolve_balance_params(vllm_config: Any, balance: Any = None) -> BalanceParams:
    """Balance settings from the constructor keyword, else ``additional_config``, else env."""
    max_num_seqs = vllm_config.scheduler_config.max_num_seqs
    spec = balance
    if spec is None:
        extra = getattr(vllm_config, "additional_config", None)
        if isinstance(extra, dict) and CONFIG_KEY in extra:
            spec = extra[CONFIG_KEY]
    if spec is None:
        spec = os.environ.get(ENV_SWITCH, "0").strip().lower() in ("1", "true", "yes", "on")
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


class BalanceMixin:
    """The balance logic, mixed in front of vLLM's ``Scheduler`` or ``AsyncScheduler``."""

    def __init__(self, *args: Any, balance: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.balance_params = resolve_balance_params(self.vllm_config, balance)
        self.balance_enabled = self.balance_params.mode != "off"
        # Per-step state; None allowance and admit_new=True mean "exactly vLLM".
        self._prefill_allowance: int | None = None
        self._admit_new = True
        self._cut = False
        self._starve_steps = 0
        self._snapshot: Sequence[LoadVector] | None = None
        self._dp_rank = 0
        self.last_plan: RankPlan | None = None
        if self.balance_enabled and self.parallel_config.data_parallel_size > 1:
            install_dp_engine_hook()
        if self.balance_enabled:
            logger.info("DP balance scheduling on: %s", self.balance_params)

    # ---- exchange side -------------------------------------------------------------
    def load_vector(self) -> LoadVector:
        """This rank's load, read from the scheduler's queues (O(running + free slots))."""
        decode = running_prefill = context = 0
        spec = 1 + self.num_spec_tokens
        for req in self.running:
            left = req.num_tokens - req.num_computed_tokens
            if left > 1:
                running_prefill += left
            else:
                decode += spec
            context += req.num_computed_tokens
        free = max(0, self.max_num_running_reqs - len(self.running))
        waiting_prefill = 0
        if free:
            taken = 0
            for queue in (self.kv_holding_waiting, self.waiting):
                for req in queue:
                    if taken >= free:
                        break
                    waiting_prefill += max(0, req.num_tokens - req.num_computed_tokens)
                    taken += 1
        num_running, num_waiting = self.get_request_counts()
        return LoadVector(
            decode,
            running_prefill,
            waiting_prefill,
            num_running,
            num_waiting,
            free,
            self._starve_steps,
            context,
        )

    def on_step_boundary(self, exchange: LoadExchange) -> None:
        """Called once per lockstep step on every rank (busy or idle): a collective."""
        if not self.balance_enabled:
            return
        self._dp_rank = exchange.rank
        self._snapshot = exchange.all_gather(self.load_vector())

    def _take_plan(self) -> RankPlan | None:
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None or len(snapshot) <= 1:
            return None
        plan = compute_plan(snapshot, self.balance_params, self.max_num_scheduled_tokens)
        return plan[self._dp_rank]

    # ---- scheduling side -----------------------------------------------------------
    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        plan = self._take_plan() if self.balance_enabled else None
        self.last_plan = plan
        if plan is None:
            return super().schedule(throttle_prefills)
        self._prefill_allowance = plan.prefill_allowance
        self._admit_new = plan.admit_new
        self._cut = False
        try:
            out = super().schedule(throttle_prefills)
        finally:
            self._prefill_allowance = None
            self._admit_new = True
        self._starve_steps = self._starve_steps + 1 if self._cut else 0
        return out

    def _balance_all_or_nothing(self, request: Request) -> bool:
        return (
            request.has_encoder_inputs
            or self.need_mamba_block_aligned_split
            or not self.scheduler_config.enable_chunked_prefill
        )

    def _reserve_prefill_lookahead(
        self, request: Request, num_computed_tokens: int, num_new_tokens: int
    ) -> int:
        n = super()._reserve_prefill_lookahead(request, num_computed_tokens, num_new_tokens)
        if n == 0 or (self._prefill_allowance is None and self._admit_new):
            return n
        if request.num_tokens - num_computed_tokens <= 1:
            return n  # a decode (or the last prompt token): never limited
        waiting = request.status != RequestStatus.RUNNING
        if waiting and not self._admit_new:
            self._cut = True
            return 0
        allowance = self._prefill_allowance
        if allowance is None or n <= allowance:
            if allowance is not None:
                self._prefill_allowance = allowance - n
            return n
        cut = 0
        if allowance > 0 and not self._balance_all_or_nothing(request):
            # Re-apply upstream's rule so the cut chunk still respects the MTP lookahead.
            cut = super()._reserve_prefill_lookahead(request, num_computed_tokens, allowance)
        self._prefill_allowance = allowance - cut
        self._cut = True
        return cut


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
