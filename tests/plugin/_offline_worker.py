"""Child process: one offline vLLM run of a local model; prints ``RESULT <json>``.

usage: _offline_worker.py MODEL_DIR [--scheduler-cls CLS] [--kv-cache-dtype DTYPE] [--compile]
The platform and plugin switches come from the environment (VAT_PLATFORM, VAT_PLUGIN_*).
``--compile`` runs vLLM's compile mode (Dynamo) instead of ``enforce_eager``; on the CPU platform
the caller sets ``VLLM_CPU_CI_ENV=1`` (Dynamo with the eager backend, no Inductor C++ build)."""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.plugin._models import MAX_TOKENS, PROMPTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--scheduler-cls", default=None)
    parser.add_argument("--kv-cache-dtype", default=None)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    from vllm import LLM, SamplingParams

    kwargs = {}
    if args.scheduler_cls:
        kwargs["scheduler_cls"] = args.scheduler_cls
    if args.kv_cache_dtype:
        kwargs["kv_cache_dtype"] = args.kv_cache_dtype
    start = time.monotonic()
    llm = LLM(
        model=args.model,
        skip_tokenizer_init=True,
        dtype="float32",
        enforce_eager=not args.compile,
        max_model_len=128,
        max_num_batched_tokens=32,
        max_num_seqs=4,
        gpu_memory_utilization=0.2,
        seed=0,
        **kwargs,
    )
    ready = time.monotonic()
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    done = time.monotonic()
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "logprobs": [
            [{str(t): lp.logprob for t, lp in step.items()} for step in o.outputs[0].logprobs] for o in outs
        ],
        "startup_s": round(ready - start, 1),
        "generate_s": round(done - ready, 1),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
