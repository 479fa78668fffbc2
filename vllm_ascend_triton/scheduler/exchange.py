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

Transport: :func:`make_load_exchange` picks it once per group, collectively. When every DP
rank runs on one host (the common Ascend deployment: one process per rank on one server)
it is :class:`ShmLoadExchange`, a shared-memory segment polled by every rank (a few
microseconds per step instead of gloo's TCP ring, whose latency grows with the ranks on a
host); otherwise :class:`GlooLoadExchange`. ``VAT_BALANCE_EXCHANGE=auto|shm|gloo`` forces
one (read when the exchange is built).

The hook is installed by the scheduler's constructor (it runs inside the engine core
process, before the busy loop starts). All ranks share one config, so either every rank
exchanges or none does. If the wrapped method is missing (another vLLM version) the hook
is not installed, no snapshot ever arrives and the scheduler behaves like vLLM's.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import mmap
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

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


# ---- shared-memory exchange (every rank on one host) -------------------------------------

# Segment layout, all int64: a header, then one row per rank. A row holds three blocks:
# [pid, pid namespace] of the rank's process (for telling a dead peer from a slow one),
# then two slots (round parity), each [round, LOAD_VECTOR_LEN values]. Blocks are (a
# multiple of) 128 bytes, so no two ranks write one cache line (64 B on Kunpeng 920 and
# x86, 128 B on some aarch64 cores).
_SHM_MAGIC = 0x5641545F44505831  # "VAT_DPX1"
_SHM_VERSION = 1
_SHM_HEADER_WORDS = 16
_SHM_SLOT_WORDS = 16 * ((1 + LOAD_VECTOR_LEN + 15) // 16)  # 128 bytes while the vector fits
_SHM_ROW_WORDS = 3 * _SHM_SLOT_WORDS
_SHM_NAME_WORDS = 4  # the segment's name travels as 32 bytes of int64 words
_SHM_DIR = "/dev/shm"  # where Linux's shm_open keeps POSIX shared memory

# A full memory fence: an uncontended threading.Lock acquire + release (atomic
# read-modify-writes in the C library), as vLLM's shm_broadcast uses. It matters on
# aarch64 (Ascend hosts are Kunpeng), where plain stores may become visible to another core
# in a different order than they were made: a peer must never see a round number before
# the vector it announces. Aligned 8-byte loads and stores (numpy int64 elements) are
# single-copy atomic on x86-64 and aarch64, so a round number is never read torn.
_FENCE_LOCK = threading.Lock()


def _fence() -> None:
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()


class _ShmSegment:
    """A mapping of the exchange segment as an int64 array, created (rank 0) or attached."""

    def __init__(self, name: str, words: np.ndarray, closer: Any, unlinker: Any = None) -> None:
        self.name = name
        self.words = words
        self._closer = closer
        self._unlinker = unlinker

    @staticmethod
    def nbytes(world_size: int) -> int:
        return 8 * (_SHM_HEADER_WORDS + world_size * _SHM_ROW_WORDS)

    @classmethod
    def create(cls, world_size: int) -> _ShmSegment:
        from multiprocessing import shared_memory

        # The creator goes through multiprocessing's resource tracker on purpose: should this
        # process die between creating and unlinking (two collectives), the tracker unlinks the
        # name. unlink() then unregisters it.
        shm = shared_memory.SharedMemory(
            name=f"vat_dpx_{secrets.token_hex(8)}", create=True, size=cls.nbytes(world_size)
        )
        words = np.ndarray((cls.nbytes(world_size) // 8,), dtype=np.int64, buffer=shm.buf)
        words[:] = 0
        rows = words[_SHM_HEADER_WORDS:].reshape(world_size, 3, _SHM_SLOT_WORDS)
        rows[:, 1:, 0] = -1  # every slot's round: nothing posted
        words[1:4] = (_SHM_VERSION, world_size, _SHM_ROW_WORDS)
        _fence()
        words[0] = _SHM_MAGIC
        return cls(shm.name, words, shm.close, shm.unlink)

    @classmethod
    def attach(cls, name: str, world_size: int) -> _ShmSegment:
        # Not multiprocessing.shared_memory: on Python < 3.13 attaching registers the name with
        # the resource tracker, which then unlinks it (and warns of a "leak") when this
        # process exits. Unregistering afterwards is wrong too when the engine cores share
        # their parent's tracker (fork, or spawn's inherited tracker fd): the tracker keeps one
        # entry per name, so the creator's own unregister would then fail inside it. Opening
        # the file that shm_open would open keeps the tracker out of it.
        size = cls.nbytes(world_size)
        fd = os.open(os.path.join(_SHM_DIR, name), os.O_RDWR)
        try:
            if os.fstat(fd).st_size < size:
                raise ValueError(f"shared memory segment {name} is smaller than {size} bytes")
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        words = np.ndarray((size // 8,), dtype=np.int64, buffer=mapping)
        _fence()
        header = words[:4].tolist()
        if header != [_SHM_MAGIC, _SHM_VERSION, world_size, _SHM_ROW_WORDS]:
            del words
            mapping.close()
            raise ValueError(f"shared memory segment {name} has an unexpected header {header}")
        return cls(name, words, mapping.close)

    def unlink(self) -> None:
        """Remove the name (creator only); every mapping stays valid."""
        if self._unlinker is not None:
            unlinker, self._unlinker = self._unlinker, None
            unlinker()

    def close(self) -> None:
        self.words = np.empty(0, dtype=np.int64)  # drop our view before unmapping
        try:
            self._closer()
        except BufferError:  # a view is still alive elsewhere: the GC unmaps it later
            pass


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _pid_alive(pid: int) -> bool:
    """False once ``pid`` has exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True  # cannot tell: leave it to the timeout
    return state not in (b"Z", b"X")


def _encode_name(name: str) -> list[int]:
    raw = name.encode("ascii")
    if len(raw) > 8 * _SHM_NAME_WORDS:
        raise ValueError(f"shared memory name too long: {name!r}")
    return np.frombuffer(raw.ljust(8 * _SHM_NAME_WORDS, b"\0"), dtype=np.int64).tolist()


def _decode_name(words: Sequence[int]) -> str:
    return np.asarray(words, dtype=np.int64).tobytes().rstrip(b"\0").decode("ascii")


class ShmLoadExchange(LoadExchange):
    """The exchange through one shared-memory segment, for DP ranks on one host.

    Round ``r`` (the r-th exchange on this segment, counted alike on every rank because each
    rank exchanges exactly once per lockstep iteration): :meth:`start` writes this rank's
    vector into its slot ``r % 2``, then the round number; :meth:`finish` waits until every
    rank's slot ``r % 2`` carries ``r`` and copies the vectors out.

    Two slots per rank are enough. A rank overwrites slot ``r % 2`` with round ``r + 2`` only
    after its own :meth:`finish` of round ``r + 1``, which returns once every rank has posted
    ``r + 1``; and every rank posts ``r + 1`` only after its own :meth:`finish` of ``r`` has
    copied round ``r`` out (start/finish strictly alternate on a rank, checked). So no slot
    is overwritten while any rank may still read it, and a slot for ``r`` can only hold
    ``r - 2`` (not posted yet) or ``r`` (a later round there means ranks left lockstep:
    raises).

    Waiting: a short spin, then ``os.sched_yield()``, then sleeps growing to 1 ms, so a rank
    that waits long does not take the core a descheduled peer needs. A RuntimeError names
    the peers that did not post: within about a second once their process has exited (its
    pid, in this pid namespace, is gone or a zombie), else after ``timeout_s`` (hung).
    """

    supports_overlap = True

    def __init__(
        self,
        group: Any,
        segment: _ShmSegment,
        *,
        timeout_s: float = 300.0,
        spin_s: float = 20e-6,
        yield_s: float = 500e-6,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if spin_s < 0 or yield_s < spin_s:
            raise ValueError(f"need 0 <= spin_s <= yield_s, got spin_s={spin_s}, yield_s={yield_s}")
        self.group = group  # kept for the engine hook's "was the group replaced" check
        self.rank = group.rank()
        self.world_size = group.size()
        self.timeout_s = timeout_s
        self.spin_s = spin_s
        self.yield_s = yield_s
        self._segment = segment
        rows = segment.words[_SHM_HEADER_WORDS:].reshape(self.world_size, 3, _SHM_SLOT_WORDS)
        self._procs = rows[:, 0, :2]
        self._pid_ns = _pid_namespace()
        self._procs[self.rank] = (os.getpid(), self._pid_ns)
        # Per parity: every rank's round number (a strided view) and vectors; this rank's slot.
        self._rounds = [rows[:, 1 + p, 0] for p in (0, 1)]
        self._vectors = [rows[:, 1 + p, 1 : 1 + LOAD_VECTOR_LEN] for p in (0, 1)]
        self._mine = [rows[self.rank, 1 + p] for p in (0, 1)]
        self._next_round = 0
        self._posted: int | None = None

    @property
    def segment_name(self) -> str:
        return self._segment.name

    def start(self, local: LoadVector) -> int:
        """Post this rank's vector for the next round; returns the round (the handle)."""
        if self._posted is not None:
            raise RuntimeError(f"rank {self.rank} posted round {self._next_round} twice without finish()")
        r = self._next_round
        slot = self._mine[r & 1]
        _fence()  # our reads of round r - 1 complete before anything of round r is written
        slot[1 : 1 + LOAD_VECTOR_LEN] = local
        _fence()  # the vector is visible before the round number that announces it
        slot[0] = r
        self._posted = r
        return r

    def finish(self, handle: int) -> list[LoadVector]:
        if handle != self._posted:
            raise RuntimeError(f"finish() of round {handle} but rank {self.rank} posted {self._posted}")
        parity = handle & 1
        rounds = self._rounds[parity]
        # tolist() + count: a few hundred ns for 8 ranks, under numpy's compare-and-reduce.
        if rounds.tolist().count(handle) != self.world_size:
            self._wait(rounds, handle)
        _fence()  # the vectors are read only after every round number was seen
        rows = self._vectors[parity].tolist()
        self._posted = None
        self._next_round = handle + 1
        return [LoadVector(*row) for row in rows]

    def all_gather(self, local: LoadVector) -> list[LoadVector]:
        return self.finish(self.start(local))

    def _wait(self, rounds: np.ndarray, r: int) -> None:
        now = time.monotonic()
        spin_until, yield_until, deadline = now + self.spin_s, now + self.yield_s, now + self.timeout_s
        nap = 20e-6
        next_liveness_check = now + 1.0
        while True:
            if (rounds == r).all():
                return
            now = time.monotonic()
            if now < spin_until:
                continue
            if (rounds > r).any():
                raise RuntimeError(
                    f"DP load exchange out of lockstep: ranks {np.flatnonzero(rounds > r).tolist()} "
                    f"posted past round {r} (rounds seen: {rounds.tolist()})"
                )
            if now > deadline:
                missing = np.flatnonzero(rounds != r).tolist()
                raise RuntimeError(
                    f"DP load exchange (shared memory) timed out after {self.timeout_s:g} s in round "
                    f"{r} on rank {self.rank}: ranks {missing} did not post (engine core dead or hung?)"
                )
            if now > next_liveness_check:
                next_liveness_check = now + 1.0
                dead = self._dead_peers(np.flatnonzero(rounds != r).tolist())
                if dead:
                    raise RuntimeError(
                        f"DP load exchange (shared memory) in round {r} on rank {self.rank}: ranks "
                        f"{[rank for rank, _ in dead]} did not post and their engine core processes "
                        f"(pids {[pid for _, pid in dead]}) have exited"
                    )
            if now < yield_until:
                os.sched_yield()
            else:
                time.sleep(nap)
                nap = min(2 * nap, 1e-3)

    def _dead_peers(self, ranks: list[int]) -> list[tuple[int, int]]:
        """(rank, pid) of those ``ranks`` whose process is gone, as far as this process can
        see: only peers in its own pid namespace (else their pid means nothing here)."""
        dead = []
        for rank in ranks:
            pid, ns = self._procs[rank].tolist()
            if pid > 0 and ns != 0 and ns == self._pid_ns and not _pid_alive(pid):
                dead.append((rank, pid))
        return dead

    def close(self) -> None:
        """Unmap the segment (its name was removed at setup); the exchange is unusable after."""
        self._rounds = self._vectors = self._mine = []
        self._procs = np.empty((0, 2), dtype=np.int64)
        self._segment.close()


# ---- transport choice ------------------------------------------------------------------

ENV_TRANSPORT = "VAT_BALANCE_EXCHANGE"
ENV_TIMEOUT = "VAT_BALANCE_EXCHANGE_TIMEOUT_S"
TRANSPORTS = ("auto", "shm", "gloo")
DEFAULT_SHM_TIMEOUT_S = 300.0


def host_identity() -> int:
    """An int64 that two processes share iff they can share POSIX shared memory, as far as
    this host can tell: hostname, the kernel's boot id (differs across machines that share
    a hostname) and the device of /dev/shm (differs across containers with private ones).
    A mismatch the identity misses is still caught: attaching then fails on some rank and
    every rank falls back to gloo."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    except OSError:
        parts.append("")
    try:
        parts.append(str(os.stat(_SHM_DIR).st_dev))
    except OSError:
        parts.append("")
    digest = hashlib.blake2b("\n".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _allgather_int64(group: Any, values: Sequence[int]) -> np.ndarray:
    """One gloo all-gather of a small int64 vector per rank: shape (world, len(values))."""
    import torch

    mine = torch.tensor(list(values), dtype=torch.int64)
    rows = [torch.empty_like(mine) for _ in range(group.size())]
    group.allgather([rows], [mine]).wait()
    return torch.stack(rows).numpy()


def _setup_shm(group: Any, timeout_s: float) -> tuple[ShmLoadExchange | None, str]:
    """Collective: rank 0 creates the segment, the others attach, rank 0 unlinks the name once
    every rank has answered. Returns the exchange, or None and why (then on every rank)."""
    rank, world = group.rank(), group.size()
    segment: _ShmSegment | None = None
    error = ""
    created = [0] * (1 + _SHM_NAME_WORDS)
    if rank == 0:
        try:
            segment = _ShmSegment.create(world)
            created = [1, *_encode_name(segment.name)]
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
    try:
        offer = _allgather_int64(group, created)[0]
        if rank != 0 and offer[0] == 1:
            try:
                segment = _ShmSegment.attach(_decode_name(offer[1:].tolist()), world)
            except (OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        attached = _allgather_int64(group, [int(segment is not None)])[:, 0]
    finally:
        # Every rank that could attach has: the name is no longer needed, and a crash from here
        # on cannot leak a /dev/shm entry (the mappings stay valid).
        if segment is not None:
            segment.unlink()
    if offer[0] != 1:
        return None, "rank 0 could not create a shared memory segment" + (f" ({error})" if error else "")
    if not attached.all():
        if segment is not None:
            segment.close()
        failed = np.flatnonzero(attached == 0).tolist()
        return None, f"ranks {failed} could not attach the shared memory segment" + (
            f" ({error})" if error else ""
        )
    assert segment is not None
    return ShmLoadExchange(group, segment, timeout_s=timeout_s), ""


def make_load_exchange(
    group: Any,
    transport: str | None = None,
    *,
    timeout_s: float | None = None,
    host_id: int | None = None,
) -> LoadExchange:
    """The load exchange for ``group`` (a gloo ProcessGroup), chosen collectively: every rank
    must call this at the same point, and every rank gets the same transport.

    ``transport``: "auto" (shared memory when every rank is on this host, else gloo), "shm"
    (shared memory or a RuntimeError on every rank), "gloo"; None reads
    ``VAT_BALANCE_EXCHANGE`` (default "auto"). Should ranks ask for different transports,
    gloo wins if any rank asks for it (it always works), then shm. ``timeout_s``: how long
    the shared-memory exchange waits for a peer (None: ``VAT_BALANCE_EXCHANGE_TIMEOUT_S``,
    default 300 s). ``host_id``: this rank's host identity (tests; None: :func:`host_identity`).
    """
    where = "argument"
    if transport is None:
        transport, where = os.environ.get(ENV_TRANSPORT, "").strip().lower() or "auto", ENV_TRANSPORT
    if transport not in TRANSPORTS:
        raise ValueError(f"{where} transport must be one of {', '.join(TRANSPORTS)}; got {transport!r}")
    if timeout_s is None:
        raw = os.environ.get(ENV_TIMEOUT, "").strip()
        try:
            timeout_s = float(raw) if raw else DEFAULT_SHM_TIMEOUT_S
        except ValueError:
            raise ValueError(f"{ENV_TIMEOUT} must be a number of seconds, got {raw!r}") from None
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    hid = host_identity() if host_id is None else host_id
    asked = _allgather_int64(group, [TRANSPORTS.index(transport), hid])
    requested = {TRANSPORTS[i] for i in asked[:, 0].tolist()}
    hosts = len(set(asked[:, 1].tolist()))
    world = group.size()
    exchange: LoadExchange | None = None
    if "gloo" in requested:
        why = f"{ENV_TRANSPORT}=gloo" if requested == {"gloo"} else f"ranks asked for {sorted(requested)}"
    elif hosts > 1:
        why = f"the {world} ranks span {hosts} hosts"
        if "shm" in requested:
            raise RuntimeError(f"{ENV_TRANSPORT}=shm but {why}: shared memory needs one host")
    else:
        exchange, failure = _setup_shm(group, timeout_s)
        if exchange is None:
            if "shm" in requested:
                raise RuntimeError(f"{ENV_TRANSPORT}=shm but {failure}")
            why = f"fell back: {failure}"
        else:
            forced = f", {ENV_TRANSPORT}=shm" if "shm" in requested else ""
            why = f"all {world} ranks on one host{forced}"
    if exchange is None:
        exchange = GlooLoadExchange(group)
    # The choice is the same on every rank: rank 0 says it.
    logger.log(
        logging.INFO if group.rank() == 0 else logging.DEBUG,
        "DP balance load exchange: %s (%s)",
        "shared memory" if isinstance(exchange, ShmLoadExchange) else "gloo",
        why,
    )
    return exchange


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
