"""Child process of the end-to-end tests: offline vLLM runs, one after another in this process.

usage: _engine_worker.py RUNS_JSON_FILE

The file holds a list of runs: ``{"label", "model", "prompts", "max_tokens", "logprobs",
"llm": {LLM keyword arguments over DEFAULT_LLM}, "mutate": "<op>:<factor>" or null,
"probe": "module:function" or null}``. Each run prints ``RESULT <json>`` (its label, greedy
tokens, logprobs, our call counts during the run, the probe's dict) between marker lines, so the
caller can cut the shared log per run.

Why one process for several runs: importing vLLM costs ~10-15 s of CPU here, and by default a run
spawns an engine core and a worker that import it again. With ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
(set by the caller) the engine core and worker live in this process, and a process serves every
run that shares its environment (platform, plugin switches). The environment decides what is read
once per process; what differs per run is in the run's spec. The test mutation is set between
engine start-up and generation (``mutate.configure``), since the plugin's registration resets it
from the environment when the first engine starts.
"""

import gc
import importlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

DEFAULT_LLM = {
    "skip_tokenizer_init": True,
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 128,
    "max_num_batched_tokens": 32,
    "max_num_seqs": 4,
    "kv_cache_memory_bytes": 64 << 20,
    "seed": 0,
}
START = "VAT-RUN-START "
END = "VAT-RUN-END "


def _call(ref: str, *args):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)(*args)


def _release() -> None:
    """After an in-process engine was shut down and dropped: free what it held, so the next run
    starts clean."""
    import torch
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    gc.collect()
    cleanup_dist_env_and_memory()
    torch._dynamo.reset()


def run_one(spec: dict, in_process: bool) -> dict:
    from vllm import LLM, SamplingParams

    from vllm_ascend_triton.plugin import counters, mutate, register

    if spec.get("mutate") and not in_process:
        raise SystemExit("a mutated run needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (engine in this process)")
    before = counters.snapshot()
    start = time.monotonic()
    llm = LLM(model=spec["model"], **{**DEFAULT_LLM, **spec.get("llm", {})})
    ready = time.monotonic()
    if spec.get("mutate"):
        mutate.configure(spec["mutate"])
    params = SamplingParams(
        max_tokens=spec["max_tokens"], temperature=0.0, logprobs=spec.get("logprobs"), ignore_eos=True
    )
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params)
    finally:
        if spec.get("mutate"):
            mutate.configure("")
    done = time.monotonic()
    after = counters.snapshot()
    result = {
        "label": spec["label"],
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "logprobs": [
            [{str(t): lp.logprob for t, lp in step.items()} for step in (o.outputs[0].logprobs or [])]
            for o in outs
        ],
        "counts": {op: n - before.get(op, 0) for op, n in after.items() if n != before.get(op, 0)},
        "registered": register.registered(),  # what our plugin registered in this process
        "startup_s": round(ready - start, 1),
        "generate_s": round(done - ready, 1),
    }
    if spec.get("probe"):
        result["probe"] = _call(spec["probe"], llm, result["counts"])
    if in_process:
        llm.llm_engine.engine_core.shutdown()
        del llm
        _release()
    return result


def main() -> None:
    with open(sys.argv[1]) as f:
        runs = json.load(f)
    in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
    if len(runs) > 1 and not in_process:
        raise SystemExit("several runs in one process need VLLM_ENABLE_V1_MULTIPROCESSING=0")
    for spec in runs:
        print(START + spec["label"], flush=True)
        result = run_one(spec, in_process)
        print("RESULT " + json.dumps(result), flush=True)
        print(END + spec["label"], flush=True)


if __name__ == "__main__":
    main()
