"""Child process: one offline vLLM run of the tiny DeepSeek-V3 (MLA) model; prints ``RESULT <json>``.

usage: _deepseek_worker.py MODEL_DIR [--attention-backend NAME] [--chunked]
The platform and plugin switches come from the environment (VAT_PLATFORM, VAT_PLUGIN_*).
``--chunked``: chunked prefill with a 32-token step budget (the long prompts then prefill in
chunks over their cached context while the short ones decode); without it vLLM's CPU platform
rules for MLA apply (stock vLLM CPU turns chunked prefill off for its CPU MLA backend)."""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# Lengths 3 to 70: with --chunked the 40- and 70-token prompts prefill over 2-3 steps.
PROMPTS = [
    [1, 17, 300],
    [1, 45, 99, 310, 4, 77, 123, 8, 200],
    [1] + [(7 * i + 11) % 500 + 3 for i in range(39)],
    [1] + [(13 * i + 5) % 500 + 3 for i in range(69)],
]
MAX_TOKENS = 12


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--attention-backend", default=None)
    parser.add_argument("--chunked", action="store_true")
    args = parser.parse_args()
    from vllm import LLM, SamplingParams

    kwargs = {}
    if args.attention_backend:
        kwargs["attention_backend"] = args.attention_backend
    if args.chunked:
        kwargs.update(enable_chunked_prefill=True, max_num_batched_tokens=32)
    start = time.monotonic()
    llm = LLM(
        model=args.model,
        skip_tokenizer_init=True,
        dtype="float32",
        enforce_eager=True,
        max_model_len=128,
        max_num_seqs=4,
        block_size=16,  # stock vLLM CPU's MLA decode kernel supports block 16 only
        kv_cache_memory_bytes=64 << 20,
        enable_prefix_caching=False,
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
