"""The per-step DP load exchange, and where it runs inside vLLM's DP engine core.

Where: vLLM 0.32's ``DPEngineCoreProc.run_busy_loop`` only calls ``scheduler.schedule()``
on ranks that have requests (``EngineCore.step`` returns early otherwise) and runs
``execute_dummy_batch()`` on the others, so a collective inside ``schedule()`` would
deadlock as soon as one rank is idle. The one call that every rank makes exactly once per
loop iteration while a wave is running, busy or idle, is
``DPEngineCoreProc._has_global_unfinished_reqs`` (it already hosts upstream's own
``dp_group`` all-reduce every ``dp_sync_interval`` steps, and it bumps the lockstep
``step_counter``). :func:`install_dp_engine_hook` wraps it so that, before upstream's
logic, the engine core calls ``scheduler.on_step_boundary(exchange)``; the exchange is one
``all_gather`` of a ``LOAD_VECTOR_LEN`` int64 vector per rank on the existing gloo
``dp_group``. The snapshot taken at the end of step N plans step N+1.

Overlap: a busy rank posts its vector right after ``schedule()`` of step N (the collective
then runs on gloo's thread while the model executes step N) and collects the result at
the boundary; an idle rank posts and collects at the boundary. Either way every rank
contributes exactly one all-gather per loop iteration, in the same order relative to
upstream's own ``dp_group`` all-reduce, so the pairing of collectives is the synchronous
one's; only the wait moves off the critical path (measured: ``exchange_bench``).

The hook is installed by the scheduler's constructor (it runs inside the engine core
process, before the busy loop starts). All ranks share one config, so either every rank
exchanges or none does. If the wrapped method is missing (another vLLM version) the hook
is not installed, no snapshot ever arrives and the scheduler behaves like vLLM's.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Sequence
from typing import Any

from vllm_ascend_triton.scheduler.plan import LOAD_VECTOR_LEN, LoadVector

# A child of vLLM's "vllm" logger: this code runs inside the engine core, which only
# configures handlers for that tree.
logger = logging.getLogger(f"vllm.{__name__}")


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


class GlooLoadExchange(LoadExchange):
    """Over a torch.distributed CPU (gloo) group, e.g. the engine core's ``dp_group``.

    One ``all_gather`` of an 8-int64 vector per rank into preallocated tensors: a ring
    all-gather takes ``world - 1`` hops where a SUM all-reduce of the zero-padded matrix
    (the first version) takes ``2 * (world - 1)``; the exchange is latency-bound (64 bytes
    per rank), so hops are what cost (measured: ``exchange_bench``)."""

    def __init__(self, group: Any) -> None:
        import torch

        self.group = group
        # The group's own rank/size: vLLM's engine-core dp_group is a stateless gloo group and
        # there is no default process group there, so dist.get_rank(group=...) would raise.
        self.rank = group.rank()
        self.world_size = group.size()
        self._local = torch.zeros(LOAD_VECTOR_LEN, dtype=torch.int64)
        self._rows = [torch.zeros(LOAD_VECTOR_LEN, dtype=torch.int64) for _ in range(self.world_size)]
        self._local_np = self._local.numpy()

    supports_overlap = True

    def start(self, local: LoadVector) -> Any:
        """Post this rank's vector; gloo runs the all-gather on its own thread. At most one
        may be in flight per exchange (the buffers are reused). Calls the ProcessGroup
        directly: torch.distributed's Python wrapper adds about 16 us of checks per call on
        the step's critical path (measured here, thread CPU time: 54 vs 38 us)."""
        self._local_np[:] = local
        return self.group.allgather([self._rows], [self._local])

    def finish(self, handle: Any) -> list[LoadVector]:
        handle.wait()
        return [LoadVector(*row.tolist()) for row in self._rows]

    def all_gather(self, local: LoadVector) -> list[LoadVector]:
        return self.finish(self.start(local))


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
                    exchange = GlooLoadExchange(group)
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
