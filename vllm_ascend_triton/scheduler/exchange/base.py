"""The load exchange's interface: one all-gather of a :class:`LoadVector` per DP rank per step.

Why it runs once per lockstep iteration, where the engine calls it and how it overlaps the
forward pass: docs/scheduler.md ("The exchange"). Transports: :mod:`.gloo`, :mod:`.shm`;
the collective choice between them: :mod:`.choice`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from vllm_ascend_triton.scheduler.plan import LoadVector


class LoadExchange(abc.ABC):
    """All-gather of one :class:`LoadVector` per DP rank. A collective: every rank must call
    :meth:`all_gather` once per step, in the same order relative to other collectives."""

    rank: int
    world_size: int
    # True when the returned snapshot is only complete once every rank has posted (the
    # in-process exchange of the simulator): the plan is then computed lazily.
    completes_later: bool = False
    # True when start()/finish() can run the collective in the background (overlapped with
    # the model's forward pass): the scheduler then posts its vector right after schedule().
    supports_overlap: bool = False

    def start(self, local: LoadVector) -> Any:
        """Begin the all-gather; :meth:`finish` returns its result. Default: synchronous."""
        return self.all_gather(local)

    def finish(self, handle: Any) -> Sequence[LoadVector]:
        return handle

    @abc.abstractmethod
    def all_gather(self, local: LoadVector) -> Sequence[LoadVector]:
        """Every rank's vector, indexed by DP rank (identical on every rank)."""
