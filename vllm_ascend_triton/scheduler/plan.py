"""The DP balance plan: a pure, deterministic function of the exchanged load vectors.

Every DP rank calls :func:`compute_plan` with the same snapshot (the all-gathered
:class:`LoadVector` of every rank, ``LOAD_VECTOR_LEN`` = 12 int64 each) and the same
:class:`BalanceParams`, so every rank derives the same plan without a second round of
communication; integer arithmetic and stable sorts, and floats only on the exchanged
integers in a fixed order. No vLLM import: the
simulator, the tests and the scheduler share it. Modes: ``off`` (exactly vLLM), ``balance``,
and the anchors ``gate`` (vllm-ascend) and ``delay`` (SGLang's prefill delayer). The
algorithm (token level, floors, the three regimes, the starvation bound) is explained once,
in docs/scheduler.md ("The algorithm").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

MODES = ("off", "balance", "gate", "delay")


class LoadVector(NamedTuple):
    """One rank's load, as exchanged once per step (all small non-negative ints)."""

    decode_tokens: int  # tokens the running decodes will need next step
    running_prefill: int  # prompt tokens still to compute for running (chunked) prefills
    waiting_prefill: int  # prompt tokens of waiting requests that fit the free slots
    num_running: int
    num_waiting: int
    free_slots: int  # max_num_seqs - running
    # Deferral age: consecutive steps in which the plan has held back prefill that vLLM
    # would have run on this rank (a step that runs all of it resets it), i.e. how long
    # the oldest request the plan deferred there has waited because of the plan.
    starve_steps: int
    context_tokens: int  # KV tokens in use (what the running requests attend to)
    # Requests that arrived on this rank over the last ``arrival_window_steps`` steps: the
    # plan only holds fresh prefill when the cluster's arrival rate makes a partner likely.
    recent_arrivals: int = 0
    # The step cost as this rank measured it (scheduler/stepcost.py): tokens it scheduled in
    # the step this vector follows, and its fit of the lockstep step time, fixed part (us)
    # and cost per token of the largest rank batch (ns); 0 = no estimate yet.
    scheduled_tokens: int = 0
    step_fixed_us: int = 0
    step_token_ns: int = 0

    @property
    def prefill_pending(self) -> int:
        return self.running_prefill + self.waiting_prefill


LOAD_VECTOR_LEN = len(LoadVector._fields)


@dataclass(frozen=True)
class BalanceParams:
    """Knobs of the plan. Defaults are the ones the simulator's tables were produced with.
    v1's were fixed on seed 0 of ``vat sim`` at DP=8 before seeds 1-4 were run; v2 (the
    arrival-rate hold and the over-capacity regime) was designed after seeing v1's misses on
    seeds 0-4, so seeds 5-9 were run only with these defaults frozen, as a held-out check
    (docs/scheduler.md)."""

    mode: str = "balance"
    # Prefill chunk unit: a rank whose pending prefill is at most this much may always
    # schedule it (small prompts cost little padding), and the escalation starts here.
    min_chunk: int = 512
    # The common token level is the one that at least this share of ranks can fill.
    quorum: float = 0.875
    # Deadline escalation on deferral age: a rank whose prefill the plan holds may always
    # run at least 1/(escalate_steps - age) of its pending prefill (and at least min_chunk),
    # so whatever is pending when the plan first holds it is done within escalate_steps
    # steps, and a rank held for escalate_steps steps runs exactly as vLLM would (see
    # starvation_bound()). The floor grows with the backlog *and* with its age, which are
    # what starves, not with how often one rank happened to be cut.
    escalate_steps: int = 6
    # Under pressure, pending prefill first waits up to this many steps (its deferral age)
    # for a step in which other ranks prefill too, so prefill steps are shared instead of
    # each rank padding a different step (what vLLM's prefill cadence does every N steps,
    # but only while there is something to gain and never past the deadline above).
    hold_steps: int = 3
    # ... but only while the cluster's recent arrival rate (LoadVector.recent_arrivals over
    # this many steps) makes at least ``hold_partners`` new arrivals expected within the
    # hold: waiting for a partner that is not coming only adds latency (low load), so
    # such a rank runs its prefill at once, as vLLM would.
    arrival_window_steps: int = 64
    hold_partners: float = 1.0
    # The hold follows the measured step cost (the fit the ranks publish, see cost_hold()):
    # a fresh prefill whose lone step would cost ``r`` times the step the quorum runs anyway
    # waits up to ``ceil(hold_cost_factor * r * w)`` steps (``w``: the decode capacity in
    # use), at least ``hold_steps`` and at most ``max_hold_steps``, and its deadline moves by
    # as much (the spreading window stays ``escalate_steps - hold_steps``). Where prefill is
    # cheap against a step the hold stays short; where one rank's prefill step costs several,
    # sharing it is worth a longer wait. 0 (or no fit yet) = the fixed ``hold_steps``.
    hold_cost_factor: float = 1.5
    max_hold_steps: int = 8
    # Saturated cluster (some rank queues more requests than it has free slots): queueing,
    # not placement, sets TTFT there, and floors that grow with the backlog would turn the
    # plan back into vLLM's padded steps. Then small prompts (up to min_chunk) go at once,
    # longer prefill fills the quorum level, and a rank held for this many steps gets a
    # floor of min_chunk, doubled every as many steps, then no limit.
    saturated_escalate_steps: int = 16
    # Over capacity: every rank has a backlog of more than ``backlog_share * max_num_seqs``
    # requests beyond its free slots (e.g. a closed loop at twice capacity). Queueing sets
    # TTFT and throughput is what is left to win: every rank will have prefill to run
    # within a few steps (a decode finishes), so the level is the *smallest* rank total
    # (quorum 1: no rank pads a step that others prefill in) and a long prefill waits for
    # it, at most ``backlog_hold_steps`` steps (then no limit, as SGLang's prefill delayer
    # does after its 30 passes); small prompts go at once. Escalating floors would start
    # misaligned partial prefill steps, which is the padding this regime exists to avoid.
    backlog_share: float = 0.25
    backlog_hold_steps: int = 30
    max_num_seqs: int = 128
    # Skew release: a rank whose pending prefill fills whole steps on its own (at least its
    # free token room) while the quorum's pending prefill is under 1/skew_ratio of it: no
    # quorum will match it soon, so waiting only starves it. It runs at once and the level
    # rises so every other rank fills that step. (When most ranks have such a backlog the
    # cluster is saturated and the quorum level already runs big, shared steps.)
    skew_ratio: float = 4.0
    # ... and a skew-released prefill keeps running: a rank at deferral age 0 (the plan has
    # not held it) with a started chunked prefill of at least half its free token room left
    # that is still skewed. (A smaller threshold, min_chunk, also released the remainders of
    # the coding workload's spread prompts: +12% on its TTFT p99 over 10 seeds.) Its remainder
    # is below one step's room (vLLM cut it at the budget), so
    # without this it would lose the release and be held and spread like fresh prefill,
    # delaying the first token of a long prompt whose other chunks every rank already paid
    # for (the burst workload's TTFT p99, issue 24).
    continue_skewed: bool = True
    # ... and a long prompt that reached a rank after the snapshot (vLLM adds requests between
    # the exchange and schedule(), so every arrival misses one plan) gets the skew release the
    # plan would give it had it seen it, where the level already runs over half a step
    # (unseen_release()), instead of the level's allowance its rank's stale vector earned.
    release_unseen: bool = True
    # ``delay`` mode (SGLang's PrefillDelayer): maximum delayed passes, and the KV
    # token-usage low watermark (share of kv_capacity_tokens; None = off) below which a
    # rank with prefill forces it for everyone.
    delay_passes: int = 30
    delay_watermark: float | None = None
    kv_capacity_tokens: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.min_chunk < 1:
            raise ValueError(f"min_chunk must be >= 1, got {self.min_chunk}")
        if not 0.0 < self.quorum <= 1.0:
            raise ValueError(f"quorum must be in (0, 1], got {self.quorum}")
        if self.escalate_steps < 1:
            raise ValueError(f"escalate_steps must be >= 1, got {self.escalate_steps}")
        if self.backlog_share < 0.0:
            raise ValueError(f"backlog_share must be >= 0, got {self.backlog_share}")
        if self.backlog_hold_steps < 1:
            raise ValueError(f"backlog_hold_steps must be >= 1, got {self.backlog_hold_steps}")
        if self.saturated_escalate_steps < 1:
            raise ValueError(f"saturated_escalate_steps must be >= 1, got {self.saturated_escalate_steps}")
        if not 0 <= self.hold_steps < self.escalate_steps:
            raise ValueError(
                f"hold_steps must be in [0, escalate_steps={self.escalate_steps}), got {self.hold_steps}"
            )
        if self.hold_cost_factor < 0.0:
            raise ValueError(f"hold_cost_factor must be >= 0, got {self.hold_cost_factor}")
        if self.max_hold_steps < self.hold_steps:
            raise ValueError(
                f"max_hold_steps must be >= hold_steps={self.hold_steps}, got {self.max_hold_steps}"
            )
        if self.arrival_window_steps < 1:
            raise ValueError(f"arrival_window_steps must be >= 1, got {self.arrival_window_steps}")
        if self.hold_partners < 0.0:
            raise ValueError(f"hold_partners must be >= 0, got {self.hold_partners}")
        if self.skew_ratio < 1.0:
            raise ValueError(f"skew_ratio must be >= 1, got {self.skew_ratio}")
        if self.delay_passes < 1:
            raise ValueError(f"delay_passes must be >= 1, got {self.delay_passes}")
        if self.delay_watermark is not None and not 0.0 < self.delay_watermark <= 1.0:
            raise ValueError(f"delay_watermark must be in (0, 1] or None, got {self.delay_watermark}")
        if self.kv_capacity_tokens < 0:
            raise ValueError(f"kv_capacity_tokens must be >= 0, got {self.kv_capacity_tokens}")


class RankPlan(NamedTuple):
    """What one rank may do this step. ``prefill_allowance`` None means unlimited."""

    prefill_allowance: int | None
    admit_new: bool


UNLIMITED = RankPlan(None, True)
HOLD = RankPlan(0, False)


def escalation_levels(params: BalanceParams, token_budget: int) -> int:
    """How many doublings of ``min_chunk`` reach the token budget (saturated escalation)."""
    levels = 0
    while params.min_chunk << levels < token_budget:
        levels += 1
    return levels


def starvation_bound(params: BalanceParams, token_budget: int) -> int:
    """Steps after which a rank whose prefill the plan keeps holding is scheduled without
    any limit, i.e. exactly as vLLM would: a waiting request that vLLM would admit is
    admitted at most this many steps after the plan first deferred it.

    The floor depends on the rank's deferral age ``a`` (``LoadVector.starve_steps``: the
    consecutive steps the plan has held prefill that vLLM would have run there, i.e. the
    age of the oldest request it deferred) and on its pending prefill ``P``:

    * not saturated: 0 while ``a < H`` (and a partner is expected; otherwise no limit),
      then ``max(ceil(P / (E - a)), min_chunk)``, and no limit once ``a >= E``: whatever was
      pending at the first hold is done by then. ``H`` is the step-cost hold
      (:func:`cost_hold`, from ``hold_steps`` to ``max_hold_steps``) and ``E`` is
      ``escalate_steps`` moved by as much. Bound ``escalate_steps + max_hold_steps -
      hold_steps + 1`` (the extra step covers a request that arrived after the snapshot the
      plan was computed from);
    * saturated: ``min_chunk << (a // S - 1)`` once ``a >= S = saturated_escalate_steps``,
      no limit once ``a // S`` exceeds :func:`escalation_levels`. Bound
      ``S * (levels + 1) + 1``;
    * over capacity: 0 for prefill above ``min_chunk`` (beyond the common level) until
      ``a >= B = backlog_hold_steps``, then no limit. Bound ``B + 1``.

    The regime is decided per step and the age carries over, so the bound is the largest
    of the three (12, 81 and 31 steps with the defaults and an 8192-token budget: 81). The
    skew release only ever raises a floor."""
    saturated = params.saturated_escalate_steps * (escalation_levels(params, token_budget) + 1) + 1
    return max(params.escalate_steps + hold_extension(params) + 1, params.backlog_hold_steps + 1, saturated)


def hold_extension(params: BalanceParams) -> int:
    """The most steps the step-cost hold adds to ``hold_steps`` (and to the deadline)."""
    return params.max_hold_steps - params.hold_steps if params.hold_cost_factor > 0 else 0


def _median(values: list[int]) -> int:
    values.sort()
    return values[(len(values) - 1) // 2]


def step_cost(loads: Sequence[LoadVector]) -> tuple[int, int] | None:
    """The cluster's step-time fit ``(fixed_us, token_ns)``: the lower median over the ranks
    that publish one (the same on every rank), None while none does."""
    fits = [(lv.step_fixed_us, lv.step_token_ns) for lv in loads if lv.step_token_ns > 0]
    if not fits:
        return None
    return _median([f for f, _ in fits]), _median([t for _, t in fits])


def cost_hold(
    params: BalanceParams, cost: tuple[int, int] | None, excess: int, level: int, decoding: float
) -> int:
    """Steps a fresh prefill waits for partners: ``hold_steps``, or ``ceil(hold_cost_factor *
    r * w)`` up to ``max_hold_steps``. ``r`` is what running it now adds to the step that the
    quorum runs anyway (``token_ns * excess``, ``excess`` its tokens above the ``level``) over
    what that step costs (``fixed_us + token_ns * level``); ``w`` is the share of the ranks'
    decode capacity in use (``decoding``: mean decode tokens per rank, against a quarter of
    ``max_num_seqs``, at most 1): the wait protects the decodes a lone prefill step would
    slow, so with few of them (short outputs) it buys little and only delays first tokens."""
    if cost is None or params.hold_cost_factor <= 0 or params.max_hold_steps == params.hold_steps:
        return params.hold_steps
    fixed_us, token_ns = cost
    step_ns = fixed_us * 1000 + token_ns * level
    if step_ns <= 0:
        return params.max_hold_steps
    weight = min(1.0, 4.0 * decoding / params.max_num_seqs)
    hold = math.ceil(params.hold_cost_factor * weight * token_ns * excess / step_ns)
    return min(params.max_hold_steps, max(params.hold_steps, hold))


def unseen_release(
    loads: Sequence[LoadVector],
    params: BalanceParams,
    token_budget: int,
    rank: int,
    pending: int,
    allowance: int,
) -> bool:
    """Whether ``rank`` runs its prefill without limit this step because of prompts the
    snapshot did not show. ``pending``: its pending prefill now (the snapshot's plus what
    arrived since); ``allowance``: what its plan lets it run. Released when the cluster is
    not saturated, the new prompts alone fill the rank's room, the plan would skew-release
    them (the quorum's pending prefill under ``1/skew_ratio`` of ``pending``) and the
    allowance is at least half the room. Only this rank knows of those prompts: the others
    keep the snapshot's level this one step, so the release pads them by ``room -
    allowance`` tokens. With a low level that lone full step is what the plan exists to
    avoid (the next plan, having seen the prompt, raises the level so every rank fills that
    step); with the level already over half a step it costs little, while the cut would cost
    the prompt a third step (a ~16K prompt against an 8K budget)."""
    n = len(loads)
    if not params.release_unseen or params.mode != "balance" or n <= 1:
        return False
    own = loads[rank]
    room = token_budget - own.decode_tokens
    if room <= 0 or pending - own.prefill_pending < room or 2 * allowance < room:
        return False
    if any(lv.num_waiting > lv.free_slots for lv in loads):
        return False
    k = max(1, math.ceil(n * params.quorum))
    pendings = [lv.prefill_pending for lv in loads]
    pendings[rank] = pending
    pendings.sort(reverse=True)
    return pending >= params.skew_ratio * pendings[k - 1]


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
    if params.mode == "delay":
        return _delay_plan(loads, params)
    return _balance_plan(loads, params, token_budget)


def _delay_plan(loads: Sequence[LoadVector], params: BalanceParams) -> list[RankPlan]:
    """SGLang's PrefillDelayer on our load vectors. Its delayed-pass counter is the
    largest deferral age in the snapshot: every rank with prefill is held while the
    cluster is delayed, and a pass that lets them prefill resets their ages."""
    n = len(loads)
    prefillable = [lv.prefill_pending > 0 for lv in loads]
    if all(prefillable) or not any(prefillable):
        return [UNLIMITED] * n
    if params.delay_watermark is not None and params.kv_capacity_tokens > 0:
        low = params.delay_watermark * params.kv_capacity_tokens
        if any(p and lv.context_tokens < low for p, lv in zip(prefillable, loads, strict=True)):
            return [UNLIMITED] * n
    delayed = max(lv.starve_steps for lv in loads)
    if delayed >= params.delay_passes:
        return [UNLIMITED] * n
    return [HOLD] * n


def _balance_plan(loads: Sequence[LoadVector], params: BalanceParams, token_budget: int) -> list[RankPlan]:
    n = len(loads)
    room = [max(0, token_budget - lv.decode_tokens) for lv in loads]
    demand = [min(r, lv.prefill_pending) for lv, r in zip(loads, room, strict=True)]
    saturated = any(lv.num_waiting > lv.free_slots for lv in loads)
    backlog = params.backlog_share * params.max_num_seqs
    over_capacity = all(lv.num_waiting > lv.free_slots + backlog for lv in loads)
    if not any(demand) and (params.hold_steps == 0 or saturated):
        # Nothing pending and no holding: new arrivals may be admitted as vLLM would.
        return [UNLIMITED] * n
    totals = sorted((lv.decode_tokens + d for lv, d in zip(loads, demand, strict=True)), reverse=True)
    k = n if over_capacity else max(1, math.ceil(n * params.quorum))
    # The step costs what the largest rank batch costs (DP ranks are padded to it): fill
    # every rank up to the level that a quorum of ranks reaches, and no rank above it.
    level = min(token_budget, totals[k - 1])
    quorum_pending = sorted((lv.prefill_pending for lv in loads), reverse=True)[k - 1]
    top = escalation_levels(params, token_budget)
    # Expected arrivals anywhere in the cluster within the hold, from the recent rate.
    partner_expected = (
        sum(lv.recent_arrivals for lv in loads) * params.hold_steps
        >= params.hold_partners * params.arrival_window_steps
    )
    cost = step_cost(loads) if not saturated else None
    decoding = sum(lv.decode_tokens for lv in loads) / n if cost is not None else 0.0
    floors = []
    for lv, r, d in zip(loads, room, demand, strict=True):
        pending = lv.prefill_pending
        age = lv.starve_steps
        if over_capacity:
            if age >= params.backlog_hold_steps:
                floor = token_budget  # held long enough: exactly vLLM here
            elif pending <= params.min_chunk:
                floor = params.min_chunk  # small prompts go now (their padding is cheap)
            else:
                floor = 0  # wait for a step in which every rank prefills
        elif saturated:
            doublings = age // params.saturated_escalate_steps
            if doublings > top:
                floor = token_budget  # starvation bound reached: exactly vLLM here
            elif doublings > 0:
                floor = params.min_chunk << (doublings - 1)
            elif pending <= params.min_chunk:
                floor = params.min_chunk  # small prompts go now (their padding is cheap)
            else:
                floor = 0  # a large prefill few ranks share waits for the quorum
        else:
            hold = params.hold_steps
            # A long prompt vLLM has started (at least half a step's room left) does not wait
            # longer: its earlier chunks are paid for, a longer hold only delays its first token.
            if cost is not None and 2 * lv.running_prefill < r:
                hold = cost_hold(params, cost, max(0, lv.decode_tokens + d - level), level, decoding)
            deadline = params.escalate_steps + hold - params.hold_steps
            if (
                age >= deadline
                or (
                    r
                    and pending >= params.skew_ratio * quorum_pending
                    and (
                        pending >= r or (params.continue_skewed and age == 0 and 2 * lv.running_prefill >= r)
                    )
                )
                or (age < hold and not partner_expected)
            ):
                # Deadline reached, skew, or nobody likely to share a held step: exactly vLLM.
                floor = token_budget
            elif age < hold:
                floor = 0  # wait a little for a step that other ranks prefill in too
            else:
                # Spread the backlog over the steps left before its deadline, at least a chunk.
                floor = max(-(-pending // (deadline - age)), params.min_chunk)
        floors.append(floor)
    # Whatever a floor forces one rank to run, every rank pays through padding: raise the
    # common level to it so that every rank with pending prefill fills the same step.
    for lv, floor, d in zip(loads, floors, demand, strict=True):
        if floor and d:
            level = max(level, min(token_budget, lv.decode_tokens + min(floor, d)))
    plan = []
    for lv, floor, r in zip(loads, floors, room, strict=True):
        if floor >= token_budget:
            plan.append(UNLIMITED)
            continue
        allowance = min(max(level - lv.decode_tokens, floor), r)
        plan.append(RankPlan(allowance, True))
    return plan
