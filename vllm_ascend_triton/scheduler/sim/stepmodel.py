"""Step-time model of one lockstep DP step of a large MoE model (results are *simulated*).

``step = fixed + per_token * max_r(tokens_r) + per_context * max_r(context_r)``

* ``fixed``: per-step cost independent of batch (expert-parallel dispatch/combine
  latency, launch and sampling overhead, MoE weights read once per step);
* ``per_token``: linear cost per scheduled token of the *largest* rank batch, because vLLM
  pads every DP rank to the largest batch before the MoE collectives;
* ``per_context``: attention cost per attended KV token of the *slowest* rank.

Defaults are assumptions of the right order for a DeepSeek-V3-class MoE served with
DP8/EP on Ascend 910B-class NPUs (a 128-request decode step of ~4K context each is about
65 ms; a 3.5K-token prefill adds about 0.3 s), chosen from public TPOT/throughput figures of
such deployments, not measured here. Override them (``--fixed-ms``, ``--per-token-ms``,
``--per-kv-token-us``) to model another deployment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepModel:
    fixed_ms: float = 25.0
    per_token_ms: float = 0.08
    per_kv_token_us: float = 0.06

    def __post_init__(self) -> None:
        for name in ("fixed_ms", "per_token_ms", "per_kv_token_us"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def rank_cost(self, tokens: int, context: int) -> float:
        """Seconds one rank would need for its own batch if it ran alone (0 if empty)."""
        if tokens <= 0:
            return 0.0
        return (self.fixed_ms + self.per_token_ms * tokens + self.per_kv_token_us * 1e-3 * context) * 1e-3

    def step_time(self, tokens: Sequence[int], contexts: Sequence[int]) -> float:
        """Seconds the lockstep step takes: every rank waits for the padded, slowest one."""
        return (
            self.fixed_ms
            + self.per_token_ms * max(tokens, default=0)
            + self.per_kv_token_us * 1e-3 * max(contexts, default=0)
        ) * 1e-3
