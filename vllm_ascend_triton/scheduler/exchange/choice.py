"""The collective choice of the load exchange's transport (shared memory on one host, else gloo).

``VAT_BALANCE_EXCHANGE=auto|shm|gloo`` forces one; ``VAT_BALANCE_EXCHANGE_TIMEOUT_S`` bounds the
shared-memory wait for a peer. Both are read when the exchange is built, never per step.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from typing import Any

from vllm_ascend_triton.scheduler.exchange.base import LoadExchange
from vllm_ascend_triton.scheduler.exchange.gloo import GlooLoadExchange, _allgather_int64
from vllm_ascend_triton.scheduler.exchange.shm import _SHM_DIR, ShmLoadExchange, _setup_shm

# A child of vLLM's "vllm" logger: this code runs inside the engine core, which only
# configures handlers for that tree.
logger = logging.getLogger(f"vllm.{__name__}")

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
