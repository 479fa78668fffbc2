"""One DP rank of the coexistence test (run as a script by test_sched_compat.py).

The vllm-ascend stand-in patches vLLM before our scheduler module is imported, and the
balance switch is set. Phase "ours": our BalanceScheduler is selected, so ours must be the
only balance mechanism and our exchange must run once per step on every rank. Phase
"theirs": vLLM's (patched) Scheduler is selected, so only theirs runs. Writes a JSON file.
"""

import json
import logging
import os
import sys
from datetime import timedelta


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _loop(sched, engine, rank, prefix):
    from sched_helpers import add, step

    if rank == 0:  # rank 1 never gets a request: it only runs the boundary (dummy batches)
        for i in range(3):
            add(sched, f"{prefix}{i}", 300 + 100 * i, 5, i)
    engine.step_counter = 0
    iterations = busy = 0
    running = True
    while running and iterations < 300:
        if sched.has_requests():
            step(sched)
            busy += 1
        running = engine._has_global_unfinished_reqs(sched.has_unfinished_requests())
        iterations += 1
    return iterations, busy, not running


def main(rank, port, out_path):

    os.environ["VLLM_ASCEND_BALANCE_SCHEDULING"] = "1"
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    import _fake_ascend_balance as fake
    import vllm.v1.core.sched.scheduler as sched_mod
    import vllm.v1.engine.core as engine_core

    from vllm_ascend_triton.scheduler import BalanceScheduler
    from vllm_ascend_triton.scheduler.engine_hook import install_dp_engine_hook
    from vllm_ascend_triton.scheduler.sim.vllm_setup import SchedulerShape, make_scheduler, make_vllm_config

    capture = _Capture()  # after vLLM configured its loggers
    logging.getLogger("vllm").addHandler(capture)
    logging.getLogger("vllm").setLevel(logging.INFO)  # the engine core configures this in vLLM
    shape = SchedulerShape(
        max_num_seqs=4, max_num_batched_tokens=256, max_model_len=2048, block_size=16, num_blocks=200
    )
    cfg = make_vllm_config(shape)
    cfg.parallel_config.data_parallel_size = 2  # DP on: the scheduler installs the engine hook
    result = {"rank": rank}

    # Phase "ours": our class selected.
    ours = make_scheduler(BalanceScheduler, shape, cfg)
    exchanges = []
    original = ours.on_step_boundary
    ours.on_step_boundary = lambda ex: (exchanges.append(1), original(ex))
    engine = object.__new__(engine_core.DPEngineCoreProc)  # the stand-in's subclass
    engine.__dict__.update(
        scheduler=ours,
        dp_group=dist.group.WORLD,
        dp_sync_interval=1,
        pending_pause=False,
        ignore_start_dp_wave=False,
        step_counter=0,
    )
    plans = []
    orig_schedule = ours.schedule

    def schedule(*a, **k):
        out = orig_schedule(*a, **k)
        plans.append(ours.last_plan is not None)
        return out

    ours.schedule = schedule
    iterations, busy, finished = _loop(ours, engine, rank, "o")
    result["ours"] = {
        "balance_enabled": ours.balance_enabled,
        "inherits_fake": isinstance(ours, fake.FakeAscendBalanceScheduler),
        "fake_flag": ours._balance_enabled,
        "engine_class": type(engine).__name__,
        "iterations": iterations,
        "exchanges": len(exchanges),
        "busy": busy,
        "planned_steps": sum(plans),
        "finished": finished,
    }
    # Phase "theirs": vLLM's Scheduler attribute (the stand-in) selected, not ours.
    theirs = make_scheduler(sched_mod.Scheduler, shape, cfg)
    assert install_dp_engine_hook()
    engine.scheduler = theirs
    iterations, busy, finished = _loop(theirs, engine, rank, "t")
    result["theirs"] = {
        "class": type(theirs).__name__,
        "iterations": iterations,
        "fake_gathers": theirs.fake_gathers,
        "fake_schedules": theirs.fake_schedules,
        "busy": busy,
        "finished": finished,
    }
    result["log"] = [line for line in capture.lines if line.startswith("DP balance scheduling:")]
    with open(out_path, "w") as f:
        json.dump(result, f)
    # Both ranks are done with the group. Leave without tearing gloo down: its destructor raced
    # the peer's shutdown on a loaded 2-core host ("terminate called without an active
    # exception", exit -6) after every result had been written.
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
