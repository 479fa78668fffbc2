"""The load exchange through one POSIX shared-memory segment, for DP ranks on one host.

The segment layout and the round protocol are in :class:`ShmLoadExchange`; a dead peer is told
from a slow one by its pid (within about a second), a hung one by ``timeout_s``.
"""

from __future__ import annotations

import mmap
import os
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vllm_ascend_triton.scheduler.exchange.base import LoadExchange
from vllm_ascend_triton.scheduler.exchange.gloo import _allgather_int64
from vllm_ascend_triton.scheduler.plan import LOAD_VECTOR_LEN, LoadVector

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
