"""The per-step DP load exchange: interface (:mod:`.base`), transports (:mod:`.gloo`,
:mod:`.shm`) and their collective choice (:mod:`.choice`). The engine hook that calls it is
:mod:`vllm_ascend_triton.scheduler.engine_hook`; the simulator's in-process exchange is
:mod:`vllm_ascend_triton.scheduler.sim.inprocess`. Explained in docs/scheduler.md."""

from vllm_ascend_triton.scheduler.exchange.base import LoadExchange
from vllm_ascend_triton.scheduler.exchange.choice import (
    DEFAULT_SHM_TIMEOUT_S,
    ENV_TIMEOUT,
    ENV_TRANSPORT,
    TRANSPORTS,
    host_identity,
    make_load_exchange,
)
from vllm_ascend_triton.scheduler.exchange.gloo import GlooLoadExchange
from vllm_ascend_triton.scheduler.exchange.shm import ShmLoadExchange

__all__ = [
    "DEFAULT_SHM_TIMEOUT_S",
    "ENV_TIMEOUT",
    "ENV_TRANSPORT",
    "TRANSPORTS",
    "GlooLoadExchange",
    "LoadExchange",
    "ShmLoadExchange",
    "host_identity",
    "make_load_exchange",
]
