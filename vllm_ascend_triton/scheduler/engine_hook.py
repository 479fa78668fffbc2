"""Where the load exchange runs inside vLLM's DP engine core (the engine hook).

vLLM 0.32's ``DPEngineCoreProc.run_busy_loop`` calls ``schedule()`` only on ranks that have
requests, so a collective inside ``schedule()`` would deadlock once a rank is idle. The one call
every rank makes exactly once per lockstep iteration, busy or idle, is
``DPEngineCoreProc._has_global_unfinished_reqs``: :func:`install_dp_engine_hook` wraps it so the
engine core calls ``scheduler.on_step_boundary(exchange)`` first. Details: docs/scheduler.md
("The exchange"). If the method is missing (another vLLM), balance mode is refused by
:mod:`.compat` before this runs.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from vllm_ascend_triton.scheduler.exchange.choice import make_load_exchange
from vllm_ascend_triton.scheduler.exchange.shm import ShmLoadExchange

logger = logging.getLogger(f"vllm.{__name__}")

_HOOK_LOCK = threading.Lock()
_HOOK_ATTR = "_vat_balance_exchange_hook"


def install_dp_engine_hook() -> bool:
    """Make vLLM's DP engine core call ``scheduler.on_step_boundary(exchange)`` once per
    lockstep iteration on every rank. Idempotent. Returns False (and logs) if this vLLM
    has no ``DPEngineCoreProc._has_global_unfinished_reqs`` to wrap."""
    try:
        from vllm.v1.engine import core as engine_core
    except ImportError:  # pragma: no cover - vLLM is a hard requirement of the scheduler
        logger.warning("vLLM engine core not importable; DP balance exchange disabled")
        return False
    cls = getattr(engine_core, "DPEngineCoreProc", None)
    original = getattr(cls, "_has_global_unfinished_reqs", None)
    if cls is None or original is None:
        logger.warning(
            "vLLM has no DPEngineCoreProc._has_global_unfinished_reqs; "
            "DP balance exchange disabled (plain vLLM scheduling)"
        )
        return False
    with _HOOK_LOCK:
        # Hooked here or on a base class (a subclass's override calls the base's method).
        if any(_HOOK_ATTR in vars(k) for k in cls.__mro__):
            return True

        def _has_global_unfinished_reqs(self: Any, local_unfinished: bool) -> bool:
            hook = getattr(self.scheduler, "on_step_boundary", None)
            group = getattr(self, "dp_group", None)
            # Re-entrancy guard: if both a subclass (e.g. vllm-ascend's DPEngineCoreProc)
            # and its base got wrapped, the exchange still runs once per iteration.
            if hook is not None and group is not None and not getattr(self, "_vat_in_exchange", False):
                exchange = getattr(self, "_vat_load_exchange", None)
                # The group is replaced on elastic-EP reconfiguration: rebuild then.
                if exchange is None or exchange.group is not group:
                    # The scheduler drops a round still in flight on the old group (it can
                    # never complete), so the old segment can be unmapped now.
                    if isinstance(exchange, ShmLoadExchange):
                        exchange.close()
                    # Collective: every rank reaches this in the same iteration.
                    exchange = make_load_exchange(group)
                    self._vat_load_exchange = exchange
                hook(exchange)
                self._vat_in_exchange = True
                try:
                    return original(self, local_unfinished)
                finally:
                    self._vat_in_exchange = False
            return original(self, local_unfinished)

        cls._has_global_unfinished_reqs = _has_global_unfinished_reqs
        setattr(cls, _HOOK_ATTR, True)
    logger.info("DP balance exchange hooked into DPEngineCoreProc")
    return True
