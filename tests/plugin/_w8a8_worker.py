"""Child process: one offline vLLM run of the tiny W8A8 model in bf16 (stock vLLM's CPU int8 MoE
kernel takes bf16 activations only); prints ``RESULT <json>`` in the format of _offline_worker.

usage: _w8a8_worker.py MODEL_DIR. Platform and plugin switches come from the environment."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.plugin._models import MAX_TOKENS, PROMPTS  # noqa: E402


def main() -> None:
    from vllm import LLM, SamplingParams

    start = time.monotonic()
    llm = LLM(
        model=sys.argv[1],
        skip_tokenizer_init=True,
        dtype="bfloat16",
        enforce_eager=True,
        max_model_len=128,
        max_num_batched_tokens=32,
        max_num_seqs=4,
        gpu_memory_utilization=0.2,
        seed=0,
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
