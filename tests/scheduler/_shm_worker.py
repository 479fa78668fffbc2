"""One DP rank of the shared-memory exchange tests (run as a script by
test_sched_shm_exchange.py): ``_shm_worker.py SCENARIO RANK WORLD PORT OUT.json``, or
``_shm_worker.py --fork SCENARIO WORLD PORT OUTDIR`` to fork the ranks from one parent that
already runs multiprocessing's resource tracker (as vLLM's engine cores inherit theirs).

Every rank joins a gloo group over 127.0.0.1 (as the engine cores' ``dp_group``), runs its
scenario against ``make_load_exchange`` and writes what it saw to JSON. Vectors are a pure
function of (rank, round), so each rank checks every snapshot it collects by itself.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from datetime import timedelta
from typing import Any


def vector(rank: int, rnd: int) -> list[int]:
    from vllm_ascend_triton.scheduler.plan import LOAD_VECTOR_LEN

    # Distinct per rank and round in every field, one above 2**32.
    return [rank * 1000 + rnd + k for k in range(LOAD_VECTOR_LEN - 1)] + [1 << 40 | rank << 20 | rnd]


def _check(snapshot: Any, rnd: int, world: int) -> None:
    got = [list(v) for v in snapshot]
    want = [vector(i, rnd) for i in range(world)]
    if got != want:
        raise AssertionError(f"round {rnd}: got {got}, want {want}")


def _rounds(exchange: Any, rank: int, world: int, n: int, first: int = 0) -> int:
    """n rounds; rank 0 acts busy (posts, works, collects), the others idle (post and
    collect back to back) after random delays, so posts of round r + 1 race reads of r."""
    rng = random.Random(rank)
    for rnd in range(first, first + n):
        if rank == 0:
            handle = exchange.start(vector(rank, rnd))
            if rng.random() < 0.3:
                time.sleep(rng.random() * 1e-3)  # the "forward pass"
            snapshot = exchange.finish(handle)
        else:
            if rng.random() < 0.3:
                time.sleep(rng.random() * 1e-3)  # late to the boundary
            snapshot = exchange.finish(exchange.start(vector(rank, rnd)))
        _check(snapshot, rnd, world)
    return n


def _select(group: Any, rank: int, world: int) -> list[dict[str, Any]]:
    """Every transport choice, one collective make_load_exchange each, each followed by a
    few exchange rounds proving both ranks got the same working transport."""
    import vllm_ascend_triton.scheduler.exchange.choice as ex
    import vllm_ascend_triton.scheduler.exchange.shm as shm

    cases: list[dict[str, Any]] = []

    def attempt(name: str, env: str | None = None, **kw: Any) -> None:
        if env is None:
            os.environ.pop(ex.ENV_TRANSPORT, None)
        else:
            os.environ[ex.ENV_TRANSPORT] = env
        try:
            exchange = ex.make_load_exchange(group, **kw)
        except (RuntimeError, ValueError) as exc:
            cases.append({"case": name, "error": f"{type(exc).__name__}: {exc}"})
            return
        _rounds(exchange, rank, world, 5)
        cases.append({"case": name, "kind": type(exchange).__name__})

    attempt("auto")
    attempt("host_differs", host_id=rank + 1)
    attempt("env_gloo", env="gloo")
    attempt("env_shm", env="shm")
    attempt("env_shm_host_differs", env="shm", host_id=rank + 1)
    attempt("mixed_env", env="gloo" if rank == 0 else "shm")
    attempt("bad_env", env="tcp")  # refused before any collective
    attempt("arg_beats_env", env="shm", transport="gloo")
    # Attaching fails on the last rank only: every rank still falls back to gloo together.
    real_attach = shm._ShmSegment.attach
    if rank == world - 1:

        def refuse(name: str, world_size: int) -> Any:
            raise OSError(f"injected: cannot attach {name}")

        shm._ShmSegment.attach = refuse  # type: ignore[method-assign]
    attempt("attach_fails")
    attempt("attach_fails_shm_forced", env="shm")
    shm._ShmSegment.attach = real_attach  # type: ignore[method-assign]
    return cases


def _timed_round(exchange: Any, rank: int, round_: int) -> dict[str, Any]:
    """One more round that the peers never join: the error it raises and the time it took."""
    t0 = time.monotonic()
    try:
        exchange.finish(exchange.start(vector(rank, round_)))
        error = None
    except RuntimeError as exc:
        error = str(exc)
    return {"error": error, "waited_s": time.monotonic() - t0}


def run(scenario: str, rank: int, world: int, port: int, out_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    import vllm_ascend_triton.scheduler.exchange.choice as ex

    logs: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logs.append(record.getMessage())

    ex.logger.addHandler(Keep())
    ex.logger.setLevel(logging.INFO)
    group = dist.group.WORLD
    result: dict[str, Any] = {"rank": rank, "scenario": scenario}
    if scenario == "rounds":
        os.environ.pop(ex.ENV_TRANSPORT, None)
        exchange = ex.make_load_exchange(group)
        result["kind"] = type(exchange).__name__
        result["segment"] = exchange.segment_name
        result["rounds"] = _rounds(exchange, rank, world, 400)
        # Rank 0 unlinked the name before returning from setup, so before its first post.
        result["name_left_after_setup"] = os.path.exists(f"/dev/shm/{exchange.segment_name}")
        exchange.close()
    elif scenario == "timeout":
        exchange = ex.make_load_exchange(group, "shm", timeout_s=1.0)
        _rounds(exchange, rank, world, 3)
        if rank == 0:  # the others stop exchanging, as a dead engine core would
            result.update(_timed_round(exchange, rank, 3))
    elif scenario == "dead":
        exchange = ex.make_load_exchange(group, "shm", timeout_s=120.0)
        _rounds(exchange, rank, world, 3)
        if rank != 0:  # dies between rounds, as a crashed engine core would
            os._exit(0)
        result.update(_timed_round(exchange, rank, 3))
        result["peer_pid"] = int(exchange._procs[1, 0])
        with open(out_path, "w") as f:
            json.dump(result, f)
        os._exit(0)  # no gloo teardown with a dead peer
    elif scenario == "select":
        result["cases"] = _select(group, rank, world)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    result["logs"] = logs
    with open(out_path, "w") as f:
        json.dump(result, f)
    dist.barrier()
    if scenario == "timeout":
        # Rank 0 timed out; leave without gloo teardown (as _gloo_worker.py does).
        sys.stdout.flush()
        os._exit(0)
    dist.destroy_process_group()


def fork_all(scenario: str, world: int, port: int, out_dir: str) -> None:
    """Fork every rank from this process after starting its resource tracker: the ranks
    then share one tracker, as vLLM's engine cores share their parent's."""
    import multiprocessing as mp
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=run, args=(scenario, r, world, port, os.path.join(out_dir, f"r{r}.json")))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    codes = [p.exitcode for p in procs]
    if codes != [0] * world:
        raise SystemExit(f"rank exit codes {codes}")


if __name__ == "__main__":
    if sys.argv[1] == "--fork":
        fork_all(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
