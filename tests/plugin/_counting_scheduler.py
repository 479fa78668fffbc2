"""Test helper: ``BalanceScheduler`` that counts the balance exchange per DP rank.

Passed as ``--scheduler-cls tests.plugin._counting_scheduler.CountingBalanceScheduler`` (so it
also exercises "a user's scheduler class is kept"). Every lockstep step calls
``on_step_boundary`` on every rank; the counts (total, and steps where this rank had no request)
go to ``VAT_PLUGIN_COUNTS_DIR`` through the plugin's counters, labelled with the DP rank."""

from __future__ import annotations

from typing import Any

from vllm_ascend_triton.plugin import counters
from vllm_ascend_triton.scheduler import BalanceScheduler


class CountingBalanceScheduler(BalanceScheduler):
    def on_step_boundary(self, exchange: Any) -> None:
        counters.set_dp_rank(exchange.rank)
        idle = not self.running and not self.waiting
        super().on_step_boundary(exchange)
        if self.balance_enabled and self._snapshot is not None:
            counters.bump("balance_exchange")
            if idle:
                counters.bump("balance_exchange_idle")
