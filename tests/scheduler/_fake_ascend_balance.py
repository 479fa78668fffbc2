"""A stand-in for vllm-ascend's balance patch (``vllm_ascend/patch/platform/
patch_balance_schedule.py``), which cannot be imported without an NPU. Importing it patches
vLLM the same way: the module attribute ``vllm.v1.core.sched.scheduler.Scheduler`` becomes a
subclass whose ``schedule()`` runs its own body while ``_balance_enabled`` is set (the real
one runs a copy of upstream's ``schedule()``), and ``vllm.v1.engine.core.DPEngineCoreProc``
becomes a subclass whose ``_has_global_unfinished_reqs`` calls upstream's, then
``scheduler.balance_gather()`` (an all-gather of ``len(running)`` on the DP group). The switch
is the same environment variable. Written from the facts of that file, not copied."""

import os

import torch
import torch.distributed as dist
import vllm.v1.core.sched.scheduler as _sched_mod
import vllm.v1.engine.core as _engine_core_mod
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine.core import DPEngineCoreProc


class FakeAscendBalanceScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._balance_enabled = os.environ.get("VLLM_ASCEND_BALANCE_SCHEDULING", "0") == "1"
        self.dp_group = None
        self.fake_gathers = 0
        self.fake_schedules = 0

    def balance_gather(self):
        if not self._balance_enabled or self.dp_group is None:
            return
        world = dist.get_world_size(group=self.dp_group)
        rows = [torch.zeros(1, dtype=torch.int32) for _ in range(world)]
        dist.all_gather(rows, torch.tensor([len(self.running)], dtype=torch.int32), group=self.dp_group)
        self.fake_gathers += 1

    def schedule(self, throttle_prefills=False):
        if self._balance_enabled:
            self.fake_schedules += 1  # the real patch runs its copied schedule() body here
        return super().schedule(throttle_prefills)


class FakeBalanceDPEngineCoreProc(DPEngineCoreProc):
    def _has_global_unfinished_reqs(self, local_unfinished):
        result = super()._has_global_unfinished_reqs(local_unfinished)
        self.scheduler.dp_group = self.dp_group
        self.scheduler.balance_gather()
        return result


_sched_mod.Scheduler = FakeAscendBalanceScheduler
_engine_core_mod.DPEngineCoreProc = FakeBalanceDPEngineCoreProc
