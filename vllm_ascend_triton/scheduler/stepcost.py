"""Each rank's running fit of the lockstep step time, which the plan's hold follows.

Under DP + EP a step costs about ``fixed + per_token * (largest rank batch)``: the fixed part
(dispatch/combine latency, weights read once, launch and sampling) and the per-token part of
the padded batch. How long a fresh prefill should wait for partners depends on their ratio
(``BalanceParams.hold_cost_factor``), which is a property of the model and the hardware, not of
the token counts the plan sees. So every rank fits it from what it measures: the seconds from
``schedule()`` to the step boundary against the largest batch any rank scheduled in that step
(from the exchanged snapshot), by exponentially weighted least squares, and publishes the fit in
its load vector (``step_fixed_us``, ``step_token_ns``). No vLLM import; a few float operations
per step.
"""

from __future__ import annotations

import math


class StepCostFit:
    """Exponentially weighted least-squares fit of ``seconds = fixed + per_token * tokens``.

    Args:
        decay: weight kept by the past per observation (0.98: a half-life of ~34 steps, so
            the fit follows a change of load or of the serving setup within ~100 steps).
        min_spread: the fit is published only once the observed token counts have at least
            this weighted standard deviation (a slope from nearly equal batches is noise).
    """

    def __init__(self, decay: float = 0.98, min_spread: float = 16.0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.min_spread = min_spread
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        """One step: the largest rank batch (tokens) and how long the step took."""
        if tokens < 0 or not math.isfinite(seconds) or seconds <= 0.0:
            return
        d = self.decay
        x = float(tokens)
        self._w = d * self._w + 1.0
        self._x = d * self._x + x
        self._y = d * self._y + seconds
        self._xx = d * self._xx + x * x
        self._xy = d * self._xy + x * seconds

    def estimate(self) -> tuple[int, int]:
        """``(fixed_us, token_ns)`` as non-negative ints for the load vector; ``(0, 0)`` while
        the batches seen so far do not determine a slope."""
        w = self._w
        if w <= 0.0:
            return 0, 0
        mean_x = self._x / w
        var_x = self._xx / w - mean_x * mean_x
        if var_x < self.min_spread * self.min_spread:
            return 0, 0
        slope = (self._xy / w - mean_x * self._y / w) / var_x
        if slope <= 0.0:
            return 0, 0
        fixed = max(0.0, self._y / w - slope * mean_x)
        return round(fixed * 1e6), max(1, round(slope * 1e9))
