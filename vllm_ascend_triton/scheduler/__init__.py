"""vLLM-compatible scheduler with a DP balance mode, and the lockstep DP simulator.

``BalanceScheduler`` / ``AsyncBalanceScheduler`` import vLLM; they are resolved lazily so
that ``import vllm_ascend_triton.scheduler`` (e.g. for the pure plan or the CLI's --help)
stays cheap. Use ``--scheduler-cls vllm_ascend_triton.scheduler.BalanceScheduler``.

For a vLLM plugin: :func:`balance_enabled` (``vllm_config`` -> bool) says whether the balance
switch is on (our ``additional_config["balance_scheduling"]``, vllm-ascend's
``scheduler_config.enable_balance_scheduling`` / ``enable_balance_scheduling`` keys, or
``VLLM_ASCEND_BALANCE_SCHEDULING``); select ``BalanceScheduler`` then. With balance on, its
constructor raises :class:`UnsupportedVLLMError` on a vLLM that lacks a hook it needs.
"""

from __future__ import annotations

from typing import Any

from vllm_ascend_triton.scheduler.compat import SUPPORTED_VLLM, UnsupportedVLLMError, balance_enabled
from vllm_ascend_triton.scheduler.plan import BalanceParams, LoadVector, RankPlan, compute_plan

__all__ = [
    "AsyncBalanceScheduler",
    "BalanceParams",
    "BalanceScheduler",
    "LoadVector",
    "RankPlan",
    "SUPPORTED_VLLM",
    "UnsupportedVLLMError",
    "balance_enabled",
    "compute_plan",
]

_LAZY = {"BalanceScheduler", "AsyncBalanceScheduler", "BalanceSchedulerStats", "resolve_balance_params"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from vllm_ascend_triton.scheduler import balance

        return getattr(balance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
