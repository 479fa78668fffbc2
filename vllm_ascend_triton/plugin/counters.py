"""Per-process call counters of our kernels inside vLLM, for tests that must prove our code ran.

Counting is always on (one dict increment per call, no lock: the GIL makes it safe enough for
a diagnostic count); the counts leave the process only when ``VAT_PLUGIN_COUNTS_DIR`` names a
folder, read once by :func:`configure` (the plugin's registration calls it). Each process then
writes
``<dir>/counts-<pid>.json`` (at most every ``_WRITE_EVERY_S`` seconds while counting, once more
``_WRITE_EVERY_S`` after the last count, and at exit), holding
``{"pid", "dp_rank", "counts": {op: n}}``. Engine processes are spawned and
may be terminated without running exit hooks, hence the periodic writes.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections import Counter

logger = logging.getLogger(f"vllm.{__name__}")

COUNTS_DIR_ENV = "VAT_PLUGIN_COUNTS_DIR"
_WRITE_EVERY_S = 0.2

_counts: Counter[str] = Counter()
_lock = threading.Lock()
_write_lock = threading.Lock()
_last_write = 0.0
_atexit_installed = False
_timer: threading.Timer | None = None
_dp_rank: int | None = None
_folder: str | None = None


def configure(folder: str | None = None) -> str | None:
    """Set where counts go: ``folder``, else ``VAT_PLUGIN_COUNTS_DIR`` (unset: nowhere)."""
    global _folder
    _folder = (folder if folder is not None else os.environ.get(COUNTS_DIR_ENV)) or None
    return _folder


def set_dp_rank(rank: int) -> None:
    """Label this process's counts with its data-parallel rank (engine cores)."""
    global _dp_rank
    _dp_rank = int(rank)


def label_dp_rank_from_vllm() -> None:
    """Label this process's counts with vLLM's data-parallel rank when data parallelism is on
    (workers; call after vLLM set up its process groups)."""
    try:
        from vllm.distributed import get_dp_group

        group = get_dp_group()
    except (ImportError, AssertionError):  # no DP group in this process
        return
    if group.world_size > 1:
        set_dp_rank(group.rank_in_group)


def bump(name: str, n: int = 1) -> None:
    """Count ``n`` calls of ``name`` in this process."""
    _counts[name] += n
    if _folder is None:
        return
    _bump_written(name, n)


def _bump_written(name: str, n: int) -> None:
    global _last_write, _atexit_installed, _timer
    with _lock:
        if not _atexit_installed:
            atexit.register(flush)
            _atexit_installed = True
        now = time.monotonic()
        if now - _last_write < _WRITE_EVERY_S and _counts[name] > n:
            # Throttled: make sure the latest counts still reach the file soon.
            if _timer is None:
                _timer = threading.Timer(_WRITE_EVERY_S, _timed_flush)
                _timer.daemon = True
                _timer.start()
            return
        _last_write = now
    flush()


def _timed_flush() -> None:
    global _timer, _last_write
    with _lock:
        _timer = None
        _last_write = time.monotonic()
    flush()


def snapshot() -> dict[str, int]:
    """This process's counts so far."""
    return dict(_counts)


def flush() -> None:
    """Write this process's counts to the configured folder (no-op when none). A failed
    write is logged, never raised: counting must not take the engine down."""
    folder = _folder
    if not folder:
        return
    with _write_lock:
        payload = {"pid": os.getpid(), "dp_rank": _dp_rank, "counts": snapshot()}
        path = os.path.join(folder, f"counts-{os.getpid()}.json")
        tmp = f"{path}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(payload, f)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("vllm-ascend-triton: could not write call counters to %s: %s", folder, exc)


def read_all(folder: str) -> list[dict]:
    """Every process's counts written under ``folder`` (for tests and tools)."""
    out = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("counts-") and name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                out.append(json.load(f))
    return out


def totals(folder: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for entry in read_all(folder):
        total.update(entry["counts"])
    return dict(total)
