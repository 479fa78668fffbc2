"""A scheduler that records every engine step and every arrival, for calibrating ``vat sim``.

``--scheduler-cls benchmarks.step_recorder.RecordingScheduler`` (the repository root on
``PYTHONPATH``) with ``VAT_STEP_LOG_DIR=<dir>``: each engine core appends JSON lines to
``<dir>/steps-<dp rank>-<pid>.jsonl``:

- ``{"kind": "step", "t": wall time at update_from_output, "tokens": scheduled tokens,
  "context": attended context (computed tokens, this step's included, of the scheduled
  requests), "reqs": n}`` (line-buffered, so a killed server loses at most one line)
- ``{"kind": "arrival", "t": wall time at add_request, "prompt": prompt tokens, "max_tokens": n}``

It is ``BalanceScheduler`` (balance on or off by the usual switch; off makes exactly vLLM's
decisions), so the recorded run is the policy under test plus a few microseconds per step.
Benchmark code only: nothing in the package imports it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from vllm_ascend_triton.scheduler.balance import AsyncBalanceScheduler, BalanceScheduler


class RecordingMixin:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        out = os.environ.get("VAT_STEP_LOG_DIR")
        if not out:
            raise RuntimeError("RecordingScheduler needs VAT_STEP_LOG_DIR")
        rank = self.vllm_config.parallel_config.data_parallel_rank
        self._rec_file = open(os.path.join(out, f"steps-{rank}-{os.getpid()}.jsonl"), "a", buffering=1)
        self._rec_rank = rank

    def add_request(self, request: Any) -> None:
        self._rec_file.write(
            json.dumps(
                {
                    "kind": "arrival",
                    "t": time.time(),
                    "rank": self._rec_rank,
                    "prompt": request.num_prompt_tokens,
                    "max_tokens": getattr(request.sampling_params, "max_tokens", None),
                }
            )
            + "\n"
        )
        return super().add_request(request)

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        t = time.time()
        tokens = scheduler_output.total_num_scheduled_tokens
        if tokens:
            # vLLM advanced num_computed_tokens right after schedule(): it includes this step's.
            context = 0
            for rid in scheduler_output.num_scheduled_tokens:
                req = self.requests.get(rid)
                if req is not None:
                    context += req.num_computed_tokens
            self._rec_file.write(
                json.dumps({"kind": "step", "t": t, "rank": self._rec_rank, "tokens": tokens,
                            "context": context, "reqs": len(scheduler_output.num_scheduled_tokens)})
                + "\n"
            )  # fmt: skip
        return super().update_from_output(scheduler_output, model_runner_output)


class AsyncRecordingScheduler(RecordingMixin, AsyncBalanceScheduler):
    pass


class RecordingScheduler(RecordingMixin, BalanceScheduler):
    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        cfg = kwargs.get("vllm_config", args[0] if args else None)
        if getattr(getattr(cfg, "scheduler_config", None), "async_scheduling", False):
            obj = object.__new__(AsyncRecordingScheduler)
            obj.__init__(*args, **kwargs)
            return obj
        return object.__new__(cls)
