"""The simulator's load exchange: every rank in one process, stepped in lockstep by one driver."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from vllm_ascend_triton.scheduler.exchange.base import LoadExchange
from vllm_ascend_triton.scheduler.plan import LoadVector


class InProcessExchangeGroup:
    """The exchange for ranks living in one process and stepped in lockstep by one driver
    (the simulator). Each round every rank posts its vector through its member's
    :meth:`InProcessExchange.all_gather`; the returned list is shared by all ranks and is
    complete once the last rank has posted. Reading it earlier is a driver bug and raises.
    """

    def __init__(self, world_size: int) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self._lock = threading.Lock()
        self._round: _Round = _Round(world_size)

    def member(self, rank: int) -> InProcessExchange:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {rank}")
        return InProcessExchange(self, rank)

    def _post(self, rank: int, local: LoadVector) -> _Round:
        with self._lock:
            rnd = self._round
            if rnd.slots[rank] is not None:
                raise RuntimeError(f"rank {rank} posted twice in one exchange round")
            rnd.slots[rank] = LoadVector(*local)
            rnd.posted += 1
            if rnd.posted == self.world_size:
                self._round = _Round(self.world_size)
            return rnd


class _Round(Sequence[LoadVector]):
    def __init__(self, world_size: int) -> None:
        self.slots: list[LoadVector | None] = [None] * world_size
        self.posted = 0

    def _complete(self) -> list[LoadVector]:
        if self.posted != len(self.slots):
            raise RuntimeError(
                f"exchange round read before every rank posted ({self.posted}/{len(self.slots)})"
            )
        return self.slots  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i):  # type: ignore[override]
        return self._complete()[i]

    def __iter__(self):
        return iter(self._complete())


class InProcessExchange(LoadExchange):
    completes_later = True

    def __init__(self, group: InProcessExchangeGroup, rank: int) -> None:
        self.group = group
        self.rank = rank
        self.world_size = group.world_size

    def all_gather(self, local: LoadVector) -> Sequence[LoadVector]:
        return self.group._post(self.rank, local)
