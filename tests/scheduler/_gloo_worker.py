"""One DP rank of the 2-process gloo exchange test (run as a script by test_sched_gloo.py).
The transport is the hook's own choice (VAT_BALANCE_EXCHANGE, set by the test).

Drives a BalanceScheduler through a copy of DPEngineCoreProc's loop structure: busy ranks
step, idle ranks "run a dummy batch", then every rank calls the real (hooked)
DPEngineCoreProc._has_global_unfinished_reqs, which runs our exchange and upstream's own
all-reduce on the gloo group. Writes what it saw to a JSON file.
"""

import json
import os
import sys
import types
from datetime import timedelta


def main(rank: int, port: int, out_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    from sched_helpers import add, step
    from vllm.v1.engine.core import DPEngineCoreProc

    from vllm_ascend_triton.scheduler import BalanceScheduler
    from vllm_ascend_triton.scheduler.engine_hook import install_dp_engine_hook
    from vllm_ascend_triton.scheduler.plan import BalanceParams
    from vllm_ascend_triton.scheduler.sim.vllm_setup import SchedulerShape, make_scheduler

    shape = SchedulerShape(
        max_num_seqs=4, max_num_batched_tokens=256, max_model_len=2048, block_size=16, num_blocks=200
    )
    sched = make_scheduler(BalanceScheduler, shape, balance=BalanceParams(min_chunk=32, max_num_seqs=4))
    assert install_dp_engine_hook()
    engine = types.SimpleNamespace(
        scheduler=sched,
        dp_group=dist.group.WORLD,
        step_counter=0,
        dp_sync_interval=1,
        pending_pause=False,
        ignore_start_dp_wave=False,
    )
    if rank == 0:  # rank 1 never gets a request
        for i in range(3):
            add(sched, f"r{i}", 200 + 50 * i, 5, i)
    snapshots, plans, busy_steps = [], [], 0
    running = True
    while running and engine.step_counter < 500:
        if sched.has_requests():
            step(sched)
            busy_steps += 1
            plans.append(None if sched.last_plan is None else list(sched.last_plan))
        running = DPEngineCoreProc._has_global_unfinished_reqs(engine, sched.has_unfinished_requests())
        snapshots.append([list(v) for v in sched._snapshot])
    with open(out_path, "w") as f:
        json.dump(
            {
                "rank": rank,
                "iterations": engine.step_counter,
                "busy_steps": busy_steps,
                "snapshots": snapshots,
                "plans": plans,
                "finished": not running,
                "overlapped": sched.overlapped_exchanges,
                "exchange": type(engine._vat_load_exchange).__name__,
            },
            f,
        )
    # Both ranks are done with the group. Leave without tearing gloo down: its destructor raced
    # the peer's shutdown on a loaded 2-core host ("terminate called without an active
    # exception", exit -6) after every result had been written.
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
