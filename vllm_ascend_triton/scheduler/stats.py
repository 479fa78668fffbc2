"""Counters of what the balance plan did on one DP rank, and their periodic log line.

``BalanceScheduler.balance_stats()`` returns :meth:`BalanceStats.as_dict` (cumulative since
start); the scheduler logs :meth:`BalanceStats.interval_line` (the interval's deltas) at
vLLM's stats cadence (``VLLM_LOG_STATS_INTERVAL``, 10 s by default), and attaches the
cumulative dict to the ``SchedulerStats`` it returns from ``make_stats()`` (field
``balance``) when vLLM collects stats.

"Padding saved" is an estimate from each step's snapshot, not a measurement: the
lockstep padding of a step is ``sum over ranks of (largest rank batch - rank batch)``
tokens, with a rank's batch estimated as ``decode + prefill it would run`` (its demand
unconstrained, its allowance under the plan); the counter adds up
``padding(unplanned) - padding(planned)`` per step. The deferred prefill still runs
later, in a step where other ranks prefill too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from vllm_ascend_triton.scheduler.plan import LoadVector, RankPlan


def estimated_padding_saved(loads: Sequence[LoadVector], plan: Sequence[RankPlan], token_budget: int) -> int:
    """Lockstep padding tokens the plan removes in one step (estimate, see module doc)."""
    if len(loads) <= 1:
        return 0
    free = [
        lv.decode_tokens + max(0, min(token_budget - lv.decode_tokens, lv.prefill_pending)) for lv in loads
    ]
    planned = []
    for lv, p, unplanned in zip(loads, plan, free, strict=True):
        if p.prefill_allowance is None:
            planned.append(unplanned if p.admit_new else lv.decode_tokens + lv.running_prefill)
        else:
            planned.append(min(unplanned, lv.decode_tokens + p.prefill_allowance))
    pad_free = max(free) * len(free) - sum(free)
    pad_planned = max(planned) * len(planned) - sum(planned)
    return max(0, pad_free - pad_planned)


@dataclass
class BalanceStats:
    """Cumulative counters of one rank (all ints; JSON-safe)."""

    steps_planned: int = 0  # steps scheduled under a plan (DP > 1, snapshot present)
    steps_cut: int = 0  # of those, steps where the plan cut this rank's prefill
    prefill_tokens_deferred: int = 0  # prefill tokens vLLM would have run but the plan held
    requests_held: int = 0  # admissions refused or chunks cut to zero
    longest_deferral_steps: int = 0  # most consecutive cut steps seen
    padding_saved_tokens_est: int = 0  # estimated lockstep padding removed (see module doc)
    unseen_releases: int = 0  # steps a prompt the snapshot missed ran unlimited (skew release)
    _window_longest: int = field(default=0, repr=False)  # longest deferral this log interval
    _last: dict[str, int] = field(default_factory=dict, repr=False)
    _last_log: float = field(default_factory=time.monotonic, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def record_deferral(self, consecutive_steps: int) -> None:
        self.longest_deferral_steps = max(self.longest_deferral_steps, consecutive_steps)
        self._window_longest = max(self._window_longest, consecutive_steps)

    def due(self, interval_s: float, now: float | None = None) -> bool:
        """True once every ``interval_s`` seconds (and then restarts the interval)."""
        now = time.monotonic() if now is None else now
        if now - self._last_log < interval_s:
            return False
        self._last_log = now
        return True

    def interval_line(self) -> str | None:
        """One log line with the deltas since the previous call; None if nothing was planned."""
        cur = self.as_dict()
        delta = {k: v - self._last.get(k, 0) for k, v in cur.items()}
        longest, self._window_longest = self._window_longest, 0
        self._last = cur
        if not delta["steps_planned"]:
            return None
        return (
            f"DP balance: {delta['steps_cut']}/{delta['steps_planned']} steps cut, "
            f"{delta['prefill_tokens_deferred']} prefill tokens deferred "
            f"({delta['requests_held']} request holds), longest deferral {longest} steps, "
            f"~{delta['padding_saved_tokens_est']} padding tokens saved (estimate)"
        )
