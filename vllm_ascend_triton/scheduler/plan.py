"""The DP balance plan: a pure, deterministic function of the exchanged load vectors.

Every DP rank calls :func:`compute_plan` with the same snapshot (the all-gathered
:class:`LoadVector` of every rank) and the same :class:`BalanceParams`, so every rank
derives the same plan without a second round of communication. Only integer arithmetic
and stable sorts are used, so the result does not depend on the rank that computes it.

This module does not import vLLM: the simulator, the tests and the scheduler share it.
See :mod:`vllm_ascend_triton.scheduler.balance` for the algorithm in prose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

MODES = ("off", "balance", "gate")


class LoadVector(NamedTuple):
    """One rank's load, as exchanged once per step (all small non-negative ints)."""

    decode_tokens: int  # tokens the running decodes will need next step
    running_prefill: int  # prompt tokens still to compute for running (chunked) prefills
    waiting_prefill: int  # prompt tokens of waiting requests that fit the free slots
    num_running: int
    num_waiting: int
    free_slots: int  # max_num_seqs - running
    starve_steps: int  # consecutive steps in which the plan cut this rank's prefill
    context_tokens: int  # tokens the running requests attend to (KV in use)

    @property
    def prefill_pending(self) -> int:
        return self.running_prefill + self.waiting_prefill


LOAD_VECTOR_LEN = len(LoadVector._fields)


@dataclass(frozen=True)
class BalanceParams:
    """Knobs of the plan. Defaults are the ones the simulator's table was produced with."""

    mode: str = "balance"
    # Prefill chunk unit: a rank whose pending prefill is at most this much may always
    # schedule it (small prompts cost little padding), and the escalation starts here.
    min_chunk: int = 512
    # The common token level is the one that at least this share of ranks can fill.
    quorum: float = 0.875
    # A rank whose prefill the plan has cut for this many consecutive steps gets a floor
    # of min_chunk, doubled every as many steps again, up to no limit at all: this bounds
    # how long any request can be deferred (see starvation_bound()).
    escalate_steps: int = 16
    max_num_seqs: int = 128

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.min_chunk < 1:
            raise ValueError(f"min_chunk must be >= 1, got {self.min_chunk}")
        if not 0.0 < self.quorum <= 1.0:
            raise ValueError(f"quorum must be in (0, 1], got {self.quorum}")
        if self.escalate_steps < 1:
            raise ValueError(f"escalate_steps must be >= 1, got {self.escalate_steps}")


class RankPlan(NamedTuple):
    """What one rank may do this step. ``prefill_allowance`` None means unlimited."""

    prefill_allowance: int | None
    admit_new: bool


UNLIMITED = RankPlan(None, True)


def escalation_levels(params: BalanceParams, token_budget: int) -> int:
    """How many doublings of ``min_chunk`` reach the token budget."""
    levels = 0
    while params.min_chunk << levels < token_budget:
        levels += 1
    return levels


def starvation_bound(params: BalanceParams, token_budget: int) -> int:
    """Steps after which a rank whose prefill the plan keeps cutting is scheduled without
    any limit, i.e. exactly as vLLM would: a waiting request that vLLM would admit is
    admitted at most this many steps after the plan first deferred it."""
    return params.escalate_steps * (escalation_levels(params, token_budget) + 1) + 1


def compute_plan(loads: Sequence[LoadVector], params: BalanceParams, token_budget: int) -> list[RankPlan]:
    """The plan for every rank, from one snapshot. ``token_budget`` is the per-rank
    ``max_num_scheduled_tokens`` (the same on every rank)."""
    n = len(loads)
    if n <= 1 or params.mode == "off":
        return [UNLIMITED] * n
    if params.mode == "gate":
        # vllm-ascend's balance scheduling: nobody admits while any rank is full.
        admit = all(lv.num_running < params.max_num_seqs for lv in loads)
        return [RankPlan(None, admit)] * n

    demand = [max(0, min(token_budget - lv.decode_tokens, lv.prefill_pending)) for lv in loads]
    if not any(demand):
        # Nothing to balance: new arrivals may be admitted as vLLM would.
        return [UNLIMITED] * n
    totals = sorted((lv.decode_tokens + d for lv, d in zip(loads, demand, strict=True)), reverse=True)
    k = max(1, math.ceil(n * params.quorum))
    # The step costs what the largest rank batch costs (DP ranks are padded to it): fill
    # every rank up to the level that a quorum of ranks reaches, and no rank above it.
    level = min(token_budget, totals[k - 1])
    top = escalation_levels(params, token_budget)
    floors = []
    for lv in loads:
        doublings = lv.starve_steps // params.escalate_steps
        if doublings > top:
            floor = token_budget  # starvation bound reached: exactly vLLM for this rank
        elif doublings > 0:
            floor = params.min_chunk << (doublings - 1)
        elif lv.prefill_pending <= params.min_chunk:
            floor = params.min_chunk  # small prompts go now (and new arrivals up to a chunk)
        else:
            floor = 0  # a large lone prefill waits for the quorum (bounded by escalation)
        floors.append(floor)
    # Whatever a floor forces one rank to run, every rank pays through padding: raise the
    # common level to it so that every rank with pending prefill fills the same step.
    for lv, floor, d in zip(loads, floors, demand, strict=True):
        if floor and d:
            level = max(level, min(token_budget, lv.decode_tokens + min(floor, d)))
    plan = []
    for lv, floor in zip(loads, floors, strict=True):
        if floor >= token_budget:
            plan.append(UNLIMITED)
            continue
        allowance = max(level - lv.decode_tokens, floor)
        allowance = min(allowance, max(0, token_budget - lv.decode_tokens))
        plan.append(RankPlan(allowance, True))
    return plan
