"""vLLM-compatible scheduler with a DP balance mode, and the lockstep DP simulator.

``BalanceScheduler`` / ``AsyncBalanceScheduler`` import vLLM; they are resolved lazily so
that ``import vllm_ascend_triton.scheduler`` (e.g. for the pure plan or the CLI's --help)
stays cheap. Use ``--scheduler-cls vllm_ascend_triton.scheduler.BalanceScheduler``.
"""

from __future__ import annotations

from typing import Any

from vllm_ascend_triton.scheduler.plan import BalanceParams, LoadVector, RankPlan, compute_plan

__all__ = [
    "AsyncBalanceScheduler",
    "BalanceParams",
    "BalanceScheduler",
    "LoadVector",
    "RankPlan",
    "compute_plan",
]

_LAZY = {"BalanceScheduler", "AsyncBalanceScheduler", "resolve_balance_params"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from vllm_ascend_triton.scheduler import balance

        return getattr(balance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
